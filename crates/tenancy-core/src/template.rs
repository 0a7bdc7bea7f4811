//! Template specs: the JSON a template is registered with, checked as a whole
//! (every problem listed, not just the first) and turned into the ordered DDL
//! that builds one tenant schema.

use crate::error::Problem;
use crate::ident::{is_simple_name, quote_ident};
use crate::TenancyError;
use serde_json::Value;

pub const DEFAULT_SCHEMA_PREFIX: &str = "tenant_";

const SPEC_KEYS: &[&str] = &[
    "description",
    "schema_prefix",
    "tables",
    "indexes",
    "functions",
    "timescale_tables",
    "partitioned_tables",
    "shared_tables",
    "shared_schema",
    "migrations",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimescaleTable {
    pub name: String,
    pub time_column: String,
    pub chunk_interval: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionUnit {
    Day,
    Week,
    Month,
    Year,
}

impl PartitionUnit {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "day" | "daily" | "1 day" => Some(PartitionUnit::Day),
            "week" | "weekly" | "1 week" => Some(PartitionUnit::Week),
            "month" | "monthly" | "1 month" => Some(PartitionUnit::Month),
            "year" | "yearly" | "1 year" => Some(PartitionUnit::Year),
            _ => None,
        }
    }

    /// The unit as `date_trunc` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionUnit::Day => "day",
            PartitionUnit::Week => "week",
            PartitionUnit::Month => "month",
            PartitionUnit::Year => "year",
        }
    }
}

/// Schema names a template may not give its tenants' schemas (as a prefix)
/// or its shared tables: PostgreSQL's, tenancy's own (`tenancy`,
/// `tenancy_trash_*`, `tenancy_arch_*`, `tenancy_saved`, ...), and those the
/// superuser's code reads (TimescaleDB's, the information schema). A
/// template's schema of such a name would be taken for theirs.
pub fn is_reserved_schema_name(name: &str) -> bool {
    ["pg_", "tenancy", "timescaledb", "_timescaledb"]
        .iter()
        .any(|p| name.starts_with(p))
        || name == "information_schema"
}

const RESERVED_SCHEMA_NAMES: &str =
    "not starting with pg_, tenancy, timescaledb or _timescaledb, nor information_schema";

/// The schema of a template's shared tables: the one its spec names
/// (`shared_schema`), or `shared_<template>`. SQL reads it through
/// `tenancy._shared_schema_name`.
pub fn shared_schema_name(named: Option<&str>, template: &str) -> String {
    named.map_or_else(|| format!("shared_{template}"), str::to_string)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionedTable {
    pub name: String,
    pub column: String,
    pub unit: PartitionUnit,
    /// Partitions kept ahead of the current one.
    pub premake: u32,
    /// Partitions entirely older than this interval are dropped by maintenance.
    pub retention: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TemplateSpec {
    pub description: Option<String>,
    pub schema_prefix: String,
    pub tables: Vec<String>,
    pub indexes: Vec<String>,
    pub functions: Vec<String>,
    pub timescale_tables: Vec<TimescaleTable>,
    pub partitioned_tables: Vec<PartitionedTable>,
    pub shared_tables: Vec<String>,
    /// Where the shared tables live (`shared_<template>` by default).
    pub shared_schema: Option<String>,
    pub migrations: Vec<String>,
}

/// One statement of a template, with where it came from for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// 1-based position among all the statements that build a schema.
    pub number: usize,
    /// e.g. `tables[2]`.
    pub origin: String,
    pub sql: String,
}

impl TemplateSpec {
    /// The statements that build a tenant schema, in order: tables, indexes,
    /// then functions. They are run with the tenant schema first on the
    /// search_path, so they use unqualified names.
    pub fn schema_statements(&self) -> Vec<Statement> {
        let sections: [(&str, &Vec<String>); 3] = [
            ("tables", &self.tables),
            ("indexes", &self.indexes),
            ("functions", &self.functions),
        ];
        let mut out = Vec::new();
        for (section, list) in sections {
            for (i, sql) in list.iter().enumerate() {
                out.push(Statement {
                    number: out.len() + 1,
                    origin: format!("{section}[{i}]"),
                    sql: sql.clone(),
                });
            }
        }
        out
    }

    /// The schema of the template's shared tables.
    pub fn shared_schema_name(&self, template: &str) -> String {
        shared_schema_name(self.shared_schema.as_deref(), template)
    }

    /// The schema a tenant with this slug gets.
    pub fn schema_name(&self, slug: &str) -> String {
        format!("{}{}", self.schema_prefix, slug)
    }

    /// The search path template SQL runs with: the tenant's schema first,
    /// then only the system catalog (no other schema can plant an operator
    /// or function that the statements would pick up).
    pub fn search_path(schema: &str) -> String {
        format!("{}, pg_catalog, pg_temp", quote_ident(schema))
    }

    /// The whole DDL a client would send to build the schema by hand, one
    /// transaction. `hypertable_fn` is the qualified `create_hypertable` when
    /// the template has TimescaleDB tables.
    pub fn client_script(&self, schema: &str, hypertable_fn: Option<&str>) -> Vec<String> {
        let q = quote_ident(schema);
        let mut out = vec![
            format!("CREATE SCHEMA {q}"),
            format!(
                "SELECT set_config('search_path', '{}', true)",
                Self::search_path(schema).replace('\'', "''")
            ),
        ];
        out.extend(self.schema_statements().into_iter().map(|s| s.sql));
        if let Some(f) = hypertable_fn {
            for t in &self.timescale_tables {
                out.push(format!(
                    "SELECT {f}('{}'::regclass, '{}', chunk_time_interval => interval '{}')",
                    crate::ident::qualified(schema, &t.name).replace('\'', "''"),
                    t.time_column.replace('\'', "''"),
                    t.chunk_interval.replace('\'', "''"),
                ));
            }
        }
        out
    }
}

/// A template name: a plain lowercase identifier.
pub fn validate_template_name(name: &str) -> Result<(), TenancyError> {
    if is_simple_name(name) && name.len() <= 63 {
        Ok(())
    } else {
        Err(TenancyError::InvalidArgument(format!(
            "invalid template name {name:?}: use lowercase letters, digits and underscores, starting with a letter"
        )))
    }
}

fn strings(spec: &Value, key: &str, problems: &mut Vec<Problem>) -> Vec<String> {
    match spec.get(key) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) if !s.trim().is_empty() => out.push(s.to_string()),
                    Some(_) => problems.push(Problem::new(format!("{key}[{i}]"), "is empty")),
                    None => problems.push(Problem::new(
                        format!("{key}[{i}]"),
                        "must be a string of SQL",
                    )),
                }
            }
            out
        }
        Some(_) => {
            problems.push(Problem::new(key, "must be an array of SQL strings"));
            Vec::new()
        }
    }
}

/// Accepts intervals like `1 day`, `7 days`, `12 hours`, `1 month`.
pub fn is_simple_interval(s: &str) -> bool {
    let mut parts = s.split_whitespace();
    let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let unit = unit.strip_suffix('s').unwrap_or(unit);
    n.parse::<u32>().is_ok_and(|n| n > 0)
        && matches!(
            unit,
            "second" | "minute" | "hour" | "day" | "week" | "month" | "year"
        )
}

fn object_field<'a>(
    obj: &'a Value,
    at: &str,
    key: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a str> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        _ => {
            problems.push(Problem::new(
                format!("{at}.{key}"),
                "must be a non-empty string",
            ));
            None
        }
    }
}

/// The name a `CREATE TABLE` statement creates, and its body, lowercased.
fn created_table(sql: &str) -> Option<(String, String)> {
    let lower = sql.to_lowercase();
    let words: Vec<&str> = lower.split_whitespace().collect();
    if words.first() != Some(&"create") {
        return None;
    }
    let mut i = 1;
    while i < words.len() && matches!(words[i], "unlogged" | "temp" | "temporary") {
        i += 1;
    }
    if words.get(i) != Some(&"table") {
        return None;
    }
    i += 1;
    if words.get(i..i + 3) == Some(&["if", "not", "exists"]) {
        i += 3;
    }
    let raw = words.get(i)?;
    let name: String = raw
        .split('(')
        .next()
        .unwrap_or("")
        .trim_matches('"')
        .to_string();
    Some((name, lower))
}

/// The column lists of every primary key and unique constraint in a
/// `CREATE TABLE` body (lowercased), column-level ones included.
fn unique_keys(create_sql: &str) -> Vec<Vec<String>> {
    let Some(open) = create_sql.find('(') else {
        return Vec::new();
    };
    let body = &create_sql[open + 1..];
    // split the column list at top-level commas
    let mut elems = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in body.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => {
                elems.push(&body[start..i]);
                break;
            }
            ')' => depth -= 1,
            ',' if depth == 0 => {
                elems.push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    let cols = |s: &str| -> Vec<String> {
        s.split('(')
            .nth(1)
            .and_then(|r| r.split(')').next())
            .map(|list| {
                list.split(',')
                    .map(|c| {
                        c.split_whitespace()
                            .next()
                            .unwrap_or("")
                            .trim_matches('"')
                            .to_string()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut keys = Vec::new();
    for elem in elems {
        let e = elem.trim();
        let table_level =
            e.starts_with("primary key") || e.starts_with("unique") || e.starts_with("constraint");
        if table_level {
            if e.contains("primary key") || e.contains("unique") {
                let after = e
                    .find("primary key")
                    .or_else(|| e.find("unique"))
                    .map(|p| &e[p..])
                    .unwrap_or(e);
                keys.push(cols(after));
            }
        } else if e.contains(" primary key") || e.contains(" unique") {
            let col = e.split_whitespace().next().unwrap_or("").trim_matches('"');
            keys.push(vec![col.to_string()]);
        }
    }
    keys
}

/// A schema-qualified reference to a tenant schema (`tenant_x.t`) in template
/// SQL: templates must use unqualified names, or pooled and renamed schemas
/// would point at the wrong place.
fn spells_tenant_schema(sql: &str, prefix: &str) -> bool {
    let lower = sql.to_lowercase();
    let mut from = 0;
    while let Some(pos) = lower[from..].find(prefix) {
        let start = from + pos;
        let boundary = start == 0 || {
            let b = lower.as_bytes()[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let rest = &lower[start + prefix.len()..];
        let ident_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let after = rest[ident_len..].trim_start_matches('"').trim_start();
        if boundary && ident_len > 0 && after.starts_with('.') {
            return true;
        }
        from = start + prefix.len();
    }
    false
}

fn forbidden_statement(sql: &str) -> Option<&'static str> {
    let lower = sql.trim_start().to_lowercase();
    let first = lower.split_whitespace().next().unwrap_or("");
    if matches!(
        first,
        "begin" | "commit" | "rollback" | "start" | "savepoint" | "release" | "end" | "abort"
    ) {
        return Some(
            "must not control the transaction (provisioning runs in the caller's transaction)",
        );
    }
    let squeezed: String = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    if squeezed.contains("set search_path")
        || squeezed.contains("set local search_path")
        || squeezed.contains("set_config('search_path'")
    {
        return Some("must not change search_path (statements run with the tenant schema first)");
    }
    None
}

/// Parses and checks a template spec. The error lists every problem found.
pub fn parse_spec(name: &str, spec: &Value) -> Result<TemplateSpec, TenancyError> {
    let mut problems = Vec::new();
    let fail = |problems: Vec<Problem>| TenancyError::InvalidTemplateSpec {
        name: name.to_string(),
        problems,
    };
    let Value::Object(map) = spec else {
        return Err(fail(vec![Problem::new("spec", "must be a JSON object")]));
    };
    for key in map.keys() {
        if !SPEC_KEYS.contains(&key.as_str()) {
            problems.push(Problem::new(
                key.clone(),
                format!("unknown key (allowed: {})", SPEC_KEYS.join(", ")),
            ));
        }
    }
    let description = match spec.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            problems.push(Problem::new("description", "must be a string"));
            None
        }
    };
    let schema_prefix = match spec.get("schema_prefix") {
        None | Some(Value::Null) => DEFAULT_SCHEMA_PREFIX.to_string(),
        Some(Value::String(p))
            if is_simple_name(p) && p.len() <= 15 && !is_reserved_schema_name(p) =>
        {
            p.clone()
        }
        Some(_) => {
            problems.push(Problem::new(
                "schema_prefix",
                format!("must be a lowercase identifier of at most 15 characters, {RESERVED_SCHEMA_NAMES}"),
            ));
            DEFAULT_SCHEMA_PREFIX.to_string()
        }
    };
    let tables = strings(spec, "tables", &mut problems);
    let indexes = strings(spec, "indexes", &mut problems);
    let functions = strings(spec, "functions", &mut problems);
    let shared_tables = strings(spec, "shared_tables", &mut problems);
    let migrations = strings(spec, "migrations", &mut problems);
    let shared_schema = match spec.get("shared_schema") {
        None | Some(Value::Null) => None,
        Some(Value::String(p))
            if is_simple_name(p)
                && !is_reserved_schema_name(p)
                && !p.starts_with(&schema_prefix) =>
        {
            Some(p.clone())
        }
        Some(_) => {
            problems.push(Problem::new(
                "shared_schema",
                format!("must be a lowercase identifier, not starting with the tenant schema prefix, {RESERVED_SCHEMA_NAMES}"),
            ));
            None
        }
    };
    let listed = |key: &str| {
        spec.get(key)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if !listed("tables") && !listed("shared_tables") {
        problems.push(Problem::new(
            "tables",
            "a template needs at least one statement in tables or shared_tables",
        ));
    }

    for key in [
        "tables",
        "indexes",
        "functions",
        "migrations",
        "shared_tables",
    ] {
        let list = spec
            .get(key)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        // positions as written, so a problem points at the right entry
        for (i, sql) in list
            .iter()
            .enumerate()
            .filter_map(|(i, v)| Some((i, v.as_str()?)))
        {
            if spells_tenant_schema(sql, &schema_prefix) {
                problems.push(Problem::new(
                    format!("{key}[{i}]"),
                    format!("names a tenant schema ({schema_prefix}...); use unqualified names"),
                ));
            }
            if let Some(why) = forbidden_statement(sql) {
                problems.push(Problem::new(format!("{key}[{i}]"), why));
            }
        }
    }

    let created: Vec<(String, String)> = tables.iter().filter_map(|s| created_table(s)).collect();
    for (tname, _) in &created {
        if tname.contains('.') {
            problems.push(Problem::new(
                "tables",
                format!("table {tname} is schema-qualified; use unqualified names"),
            ));
        }
    }
    let find_table = |n: &str| {
        created
            .iter()
            .find(|(t, _)| t == n)
            .map(|(_, sql)| sql.clone())
    };

    let timescale_tables = parse_timescale_tables(spec, &find_table, &mut problems);
    let partitioned_tables = parse_partitioned_tables(spec, &find_table, &mut problems);

    if problems.is_empty() {
        Ok(TemplateSpec {
            description,
            schema_prefix,
            tables,
            indexes,
            functions,
            timescale_tables,
            partitioned_tables,
            shared_tables,
            shared_schema,
            migrations,
        })
    } else {
        Err(fail(problems))
    }
}

/// `timescale_tables`: each a table of `tables`, with its time column and
/// chunk interval.
fn parse_timescale_tables(
    spec: &Value,
    find_table: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Vec<TimescaleTable> {
    let mut timescale_tables = Vec::new();
    match spec.get("timescale_tables") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("timescale_tables[{i}]");
                if !item.is_object() {
                    problems.push(Problem::new(
                        at,
                        "must be an object with name, time_column, chunk_interval",
                    ));
                    continue;
                }
                let n = object_field(item, &at, "name", problems);
                let col = object_field(item, &at, "time_column", problems);
                let chunk = match item.get("chunk_interval") {
                    None | Some(Value::Null) => Some("7 days"),
                    Some(Value::String(s)) if is_simple_interval(s) => Some(s.as_str()),
                    Some(_) => {
                        problems.push(Problem::new(
                            format!("{at}.chunk_interval"),
                            "must be an interval such as \"1 day\"",
                        ));
                        None
                    }
                };
                if let Some(obj) = item.as_object() {
                    for k in obj.keys() {
                        if !matches!(k.as_str(), "name" | "time_column" | "chunk_interval") {
                            problems.push(Problem::new(format!("{at}.{k}"), "unknown key"));
                        }
                    }
                }
                let (Some(n), Some(col)) = (n, col) else {
                    continue;
                };
                match find_table(&n.to_lowercase()) {
                    None => problems.push(Problem::new(
                        format!("{at}.name"),
                        format!("no statement in tables creates {n}"),
                    )),
                    Some(sql) => {
                        let col_l = col.to_lowercase();
                        if !sql.contains(&col_l) {
                            problems.push(Problem::new(
                                format!("{at}.time_column"),
                                format!("table {n} has no column {col}"),
                            ));
                        }
                        for key in unique_keys(&sql) {
                            if !key.contains(&col_l) {
                                problems.push(Problem::new(
                                    at.clone(),
                                    format!(
                                        "table {n} has a unique key ({}) without its time column {col}: TimescaleDB refuses to make it a hypertable",
                                        key.join(", ")
                                    ),
                                ));
                            }
                        }
                    }
                }
                if let Some(chunk) = chunk {
                    timescale_tables.push(TimescaleTable {
                        name: n.to_string(),
                        time_column: col.to_string(),
                        chunk_interval: chunk.to_string(),
                    });
                }
            }
        }
        Some(_) => problems.push(Problem::new(
            "timescale_tables",
            "must be an array of objects",
        )),
    }
    timescale_tables
}

/// `partitioned_tables`: each a table of `tables` declared PARTITION BY
/// RANGE, with its unit, the partitions made ahead (3 unless said) and a
/// retention.
fn parse_partitioned_tables(
    spec: &Value,
    find_table: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> Vec<PartitionedTable> {
    let mut partitioned_tables = Vec::new();
    match spec.get("partitioned_tables") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let at = format!("partitioned_tables[{i}]");
                if !item.is_object() {
                    problems.push(Problem::new(
                        at,
                        "must be an object with name, column, interval",
                    ));
                    continue;
                }
                let n = object_field(item, &at, "name", problems);
                let col = object_field(item, &at, "column", problems);
                let unit = match item
                    .get("interval")
                    .and_then(Value::as_str)
                    .and_then(PartitionUnit::parse)
                {
                    Some(u) => Some(u),
                    None => {
                        problems.push(Problem::new(
                            format!("{at}.interval"),
                            "must be one of day, week, month, year",
                        ));
                        None
                    }
                };
                let premake = match item.get("premake") {
                    None | Some(Value::Null) => Some(3),
                    Some(v) => match v.as_u64() {
                        Some(p) if p <= 366 => Some(p as u32),
                        _ => {
                            problems.push(Problem::new(
                                format!("{at}.premake"),
                                "must be an integer from 0 to 366",
                            ));
                            None
                        }
                    },
                };
                let retention = match item.get("retention") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) if is_simple_interval(s) => Some(s.clone()),
                    Some(_) => {
                        problems.push(Problem::new(
                            format!("{at}.retention"),
                            "must be an interval such as \"90 days\"",
                        ));
                        None
                    }
                };
                if let Some(obj) = item.as_object() {
                    for k in obj.keys() {
                        if !matches!(
                            k.as_str(),
                            "name" | "column" | "interval" | "premake" | "retention"
                        ) {
                            problems.push(Problem::new(format!("{at}.{k}"), "unknown key"));
                        }
                    }
                }
                let (Some(n), Some(col), Some(unit), Some(premake)) = (n, col, unit, premake)
                else {
                    continue;
                };
                match find_table(&n.to_lowercase()) {
                    Some(sql) if sql.contains("partition by range") => {}
                    Some(_) => problems.push(Problem::new(
                        format!("{at}.name"),
                        format!("table {n} is not declared PARTITION BY RANGE"),
                    )),
                    None => problems.push(Problem::new(
                        format!("{at}.name"),
                        format!("no statement in tables creates {n}"),
                    )),
                }
                partitioned_tables.push(PartitionedTable {
                    name: n.to_string(),
                    column: col.to_string(),
                    unit,
                    premake,
                    retention,
                });
            }
        }
        Some(_) => problems.push(Problem::new(
            "partitioned_tables",
            "must be an array of objects",
        )),
    }
    partitioned_tables
}

/// Templates shipped with the extension and loaded at `CREATE EXTENSION`,
/// each name's versions in order: an earlier version of a shipped template
/// stays (in templates/history/) so that tenants made from it keep their
/// reference and a fresh install numbers versions as an upgraded one does.
pub const SHIPPED: &[(&str, &str)] = &[
    ("default", include_str!("../../../templates/default.json")),
    ("trading", include_str!("../../../templates/trading.json")),
    (
        "timeseries",
        include_str!("../../../templates/history/timeseries.1.json"),
    ),
    (
        "timeseries",
        include_str!("../../../templates/timeseries.json"),
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(spec: Value) -> Vec<Problem> {
        match parse_spec("t", &spec) {
            Err(TenancyError::InvalidTemplateSpec { problems, .. }) => problems,
            other => panic!("accepted: {other:?}"),
        }
    }

    #[test]
    fn shipped_templates_are_valid() {
        for (name, text) in SHIPPED {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let spec =
                parse_spec(name, &v).unwrap_or_else(|e| panic!("{name}: {e} {:?}", e.detail()));
            assert!(!spec.tables.is_empty(), "{name}");
        }
    }

    #[test]
    fn reserved_schema_names_are_refused() {
        for (key, name) in [
            ("shared_schema", "tenancy"),
            ("shared_schema", "tenancy_saved"),
            ("shared_schema", "timescaledb_information"),
            ("shared_schema", "_timescaledb_internal"),
            ("shared_schema", "information_schema"),
            ("shared_schema", "pg_x"),
            ("schema_prefix", "tenancy_"),
            ("schema_prefix", "pg_t"),
        ] {
            let p = problems(json!({"tables": ["CREATE TABLE a (id int)"], key: name}));
            assert!(p.iter().any(|p| p.at == key), "{key} {name}: {p:?}");
        }
        let ok = json!({"tables": ["CREATE TABLE a (id int)"], "shared_schema": "app_shared",
                        "schema_prefix": "org_"});
        assert!(parse_spec("t", &ok).is_ok());
    }

    #[test]
    fn timeseries_has_hypertables() {
        let (_, text) = SHIPPED.iter().rfind(|(n, _)| *n == "timeseries").unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        let spec = parse_spec("timeseries", &v).unwrap();
        // TimescaleDB warns of varchar columns at each provision
        assert!(spec.tables.iter().all(|t| !t.contains("varchar")));
        let names: Vec<&str> = spec
            .timescale_tables
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(names, ["trades", "market_data"]);
    }

    #[test]
    fn lists_every_problem() {
        let p = problems(json!({
            "tables": ["CREATE TABLE a (id int)", 5, ""],
            "indexes": "CREATE INDEX",
            "colour": 1,
            "timescale_tables": [{"name": "missing", "time_column": "ts"}]
        }));
        let at: Vec<&str> = p.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(
            at,
            [
                "colour",
                "tables[1]",
                "tables[2]",
                "indexes",
                "timescale_tables[0].name"
            ],
            "{p:?}"
        );
    }

    #[test]
    fn not_an_object_or_empty() {
        assert_eq!(problems(json!([1]))[0].at, "spec");
        assert_eq!(problems(json!({}))[0].at, "tables");
    }

    #[test]
    fn refuses_qualified_tenant_schema() {
        let p = problems(
            json!({"tables": ["CREATE TABLE a (id int)"], "indexes": ["CREATE INDEX ON tenant_acme.a (id)"]}),
        );
        assert_eq!(p[0].at, "indexes[0]");
        let p = problems(json!({"tables": ["CREATE TABLE \"tenant_x\" . a (id int)"]}));
        assert!(p[0].reason.contains("unqualified"), "{p:?}");
        // the prefix inside another word is fine
        parse_spec(
            "t",
            &json!({"tables": ["CREATE TABLE a (my_tenant_id int, retenant_x int)"]}),
        )
        .unwrap();
    }

    #[test]
    fn refuses_transaction_control_and_search_path() {
        let p = problems(
            json!({"tables": ["CREATE TABLE a (id int)", "COMMIT", "SET search_path = public"]}),
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(
            (p[0].at.as_str(), p[1].at.as_str()),
            ("tables[1]", "tables[2]")
        );
    }

    #[test]
    fn positions_survive_bad_entries() {
        let p = problems(json!({"tables": ["CREATE TABLE a (id int)", 42, "COMMIT"]}));
        let at: Vec<&str> = p.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(at, ["tables[1]", "tables[2]"]);
    }

    #[test]
    fn hypertable_unique_keys_need_time_column() {
        let p = problems(json!({
            "tables": ["CREATE TABLE trades (id uuid PRIMARY KEY, ts timestamptz NOT NULL)"],
            "timescale_tables": [{"name": "trades", "time_column": "ts", "chunk_interval": "1 day"}]
        }));
        assert!(p[0].reason.contains("without its time column"), "{p:?}");
        let p = problems(json!({
            "tables": ["CREATE TABLE t (id uuid, ts timestamptz, CONSTRAINT k UNIQUE (id))"],
            "timescale_tables": [{"name": "t", "time_column": "ts"}]
        }));
        assert!(p[0].reason.contains("(id)"), "{p:?}");
        parse_spec("t", &json!({
            "tables": ["CREATE TABLE t (id uuid, ts timestamptz NOT NULL, PRIMARY KEY (id, ts))"],
            "timescale_tables": [{"name": "t", "time_column": "ts", "chunk_interval": "7 days"}]
        })).unwrap();
    }

    #[test]
    fn partitioned_tables() {
        let spec = parse_spec("t", &json!({
            "tables": ["CREATE TABLE ev (at timestamptz NOT NULL) PARTITION BY RANGE (at)"],
            "partitioned_tables": [{"name": "ev", "column": "at", "interval": "month", "premake": 2, "retention": "6 months"}]
        })).unwrap();
        assert_eq!(spec.partitioned_tables[0].unit, PartitionUnit::Month);
        let p = problems(json!({
            "tables": ["CREATE TABLE ev (at timestamptz NOT NULL)"],
            "partitioned_tables": [{"name": "ev", "column": "at", "interval": "fortnight", "retention": "soon"}]
        }));
        assert_eq!(p.len(), 2, "{p:?}");
    }

    #[test]
    fn statements_numbered_in_order() {
        let spec = parse_spec(
            "t",
            &json!({
                "tables": ["CREATE TABLE a (id int)", "CREATE TABLE b (id int)"],
                "indexes": ["CREATE INDEX ON a (id)"]
            }),
        )
        .unwrap();
        let s = spec.schema_statements();
        assert_eq!(s.len(), 3);
        assert_eq!((s[2].number, s[2].origin.as_str()), (3, "indexes[0]"));
        assert_eq!(spec.schema_name("acme"), "tenant_acme");
        let script = spec.client_script("tenant_acme", None);
        assert_eq!(script[0], "CREATE SCHEMA \"tenant_acme\"");
        assert_eq!(script.len(), 5);
    }

    #[test]
    fn intervals() {
        assert!(is_simple_interval("1 day"));
        assert!(is_simple_interval("7 days"));
        assert!(!is_simple_interval("1 day'; drop"));
        assert!(!is_simple_interval("0 days"));
        assert!(!is_simple_interval("day"));
    }

    #[test]
    fn template_names() {
        assert!(validate_template_name("trading").is_ok());
        assert!(validate_template_name("Trading").is_err());
        assert!(validate_template_name("a b").is_err());
    }
}
