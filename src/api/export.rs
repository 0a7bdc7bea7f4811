//! One tenant out of a database and into another: `export_tenant` writes a
//! psql script (the tenant's catalog row, its template and version, and its
//! rows as COPY blocks); replaying it calls `import_begin`, which makes the
//! tenant and a staging table per table for the COPY blocks to fill, and
//! `import_finish`, which moves the staged rows into the tenant's tables.
//! Either mode; the script replays into the other database's tenant in the
//! mode it had. All in one transaction: an error makes nothing.

use crate::api::mobility::{
    advance_sequences, lock_tenant_row, place_of, tables_to_copy, Place, TableCopy,
};
use crate::catalog::{self, AuditEntry};
use crate::error::{raise, raise_with, sqlstate, OrRaise};
use crate::guc_scope::GucScope;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Map, Value};
use std::time::Instant;
use tenancy_core::ident::{qualified, quote_ident, quote_literal};
use tenancy_core::TenancyError;

/// What the first line of the header says: the script's format.
const FORMAT: &str = "tenancy-export 1";

/// The staging table of the `n`th table of an import, in the session's
/// temporary schema, dropped at commit.
fn staging(n: usize) -> String {
    format!("pg_temp.tenancy_import_{n}")
}

/// One column as COPY's text format writes it: its text form with
/// backslash, newline, carriage return and tab escaped, `\N` for NULL.
fn copy_text(column: &str) -> String {
    format!(
        r"CASE WHEN {column} IS NULL THEN E'\\N' ELSE pg_catalog.replace(pg_catalog.replace(pg_catalog.replace(pg_catalog.replace({column}::pg_catalog.text, E'\\', E'\\\\'), E'\n', E'\\n'), E'\r', E'\\r'), E'\t', E'\\t') END"
    )
}

/// The settings under which values are written and read back the same:
/// dates and intervals in ISO form, floats exact, bytea in hex.
const PORTABLE_SETTINGS: [(&str, &str); 4] = [
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
];

#[pg_extern]
fn export_tenant(tenant: &str) -> SetOfIterator<'static, String> {
    let t = lock_tenant_row(tenant);
    if t.status != "active" && t.status != "suspended" {
        raise(TenancyError::WrongStatus {
            slug: t.slug.clone(),
            status: t.status.clone(),
            action: "exporting it".into(),
        });
    }
    let template = catalog::template_version(&t.template, Some(t.template_version));
    let place = place_of(&t, &template);
    let tables: Vec<TableCopy> = tables_to_copy(None, &place, &place)
        .into_iter()
        .filter(|t| !t.column_names.is_empty())
        .collect();
    let row = catalog::one_or_none(Spi::get_one_with_args::<JsonB>(
        "SELECT to_jsonb(t) FROM tenancy.tenants t WHERE t.id = $1",
        &[t.id.into()],
    ))
    .map_or(Value::Null, |j| j.0);
    let database = catalog::one_or_none(Spi::get_one::<String>(
        "SELECT pg_catalog.current_database()::text",
    ))
    .unwrap_or_default();
    let header = json!({
        "format": FORMAT,
        "tenant": row,
        "tables": tables.iter().map(|t| json!({"name": t.name, "columns": t.column_names})).collect::<Vec<_>>(),
        "database": database,
    });

    // every table's rows by one statement: one snapshot, so the rows of a
    // table and those they reference agree; read as the owner role in the
    // tenant's context
    let parts: Vec<String> = tables
        .iter()
        .enumerate()
        .map(|(i, table)| {
            let exprs: Vec<String> = table
                .column_names
                .iter()
                .map(|c| copy_text(&quote_ident(c)))
                .collect();
            let filter = if place.is_shared() {
                " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
            } else {
                ""
            };
            format!(
                "SELECT {i} AS o, pg_catalog.concat_ws(E'\\t', {}) AS line FROM {}{filter}",
                exprs.join(", "),
                qualified(place.schema(), &table.name)
            )
        })
        .collect();
    let mut rows: Vec<(usize, String)> = Vec::new();
    if !parts.is_empty() {
        let sql = format!(
            "SELECT x.o, x.line FROM ({}) x ORDER BY x.o",
            parts.join(" UNION ALL ")
        );
        rows = crate::roles::as_owner("pg_catalog, pg_temp", Some(t.id), || {
            let scope = GucScope::new();
            for (name, value) in PORTABLE_SETTINGS {
                scope.set(name, value);
            }
            Spi::connect(|c| {
                let mut out = Vec::new();
                for r in c.select(&sql, None, &[t.id.into()])? {
                    out.push((
                        r.get::<i32>(1)?.unwrap_or(0) as usize,
                        r.get::<String>(2)?.unwrap_or_default(),
                    ));
                }
                Ok::<_, pgrx::spi::Error>(out)
            })
            .or_raise()
        });
    }

    let total = rows.len();
    let mut script = vec![
        format!(
            "-- tenancy export of tenant {:?}: template {:?} version {}, {} isolation, {} tables, {total} rows, from database {:?}",
            t.slug, t.template, t.template_version, t.isolation, tables.len(), database
        ),
        "-- replay with: psql -X -f <this file> <database with the tenancy extension and this template version>".into(),
        "\\set ON_ERROR_STOP on".into(),
        "BEGIN;".into(),
    ];
    for (name, value) in PORTABLE_SETTINGS {
        script.push(format!("SET LOCAL {name} = {};", quote_literal(value)));
    }
    script.push(format!(
        "SELECT tenancy.import_begin({}::jsonb);",
        quote_literal(&header.to_string())
    ));
    let mut rows = rows.into_iter().peekable();
    for (i, table) in tables.iter().enumerate() {
        script.push(format!(
            "COPY {} ({}) FROM stdin;",
            staging(i + 1),
            table.columns
        ));
        while let Some((_, line)) = rows.next_if(|(o, _)| *o == i) {
            script.push(line);
        }
        script.push("\\.".into());
    }
    script.push("SELECT slug, isolation, status FROM tenancy.import_finish();".into());
    script.push("COMMIT;".into());
    SetOfIterator::new(script)
}

/// A value of the header, or 22023 naming what is wrong with the script.
fn header_field<'a>(header: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = header;
    for key in path {
        v = v.get(key).unwrap_or(&Value::Null);
    }
    v
}

fn bad_script(what: &str) -> ! {
    raise(TenancyError::InvalidArgument(format!(
        "not a tenancy export ({what}): import_begin takes the header that export_tenant wrote"
    )))
}

/// Makes the exported tenant (same id, slug, template version, isolation,
/// settings) and an empty staging table for each of its tables, which the
/// script's COPY blocks fill; import_finish moves their rows in.
#[pg_extern]
fn import_begin(header: JsonB) -> String {
    let started = Instant::now();
    let header = header.0;
    if header_field(&header, &["format"]).as_str() != Some(FORMAT) {
        bad_script("no format line");
    }
    if crate::roles::legacy_catalog() {
        raise(TenancyError::NotSupported(
            "import needs the catalog of 0.4.0: run ALTER EXTENSION tenancy UPDATE first".into(),
        ));
    }
    let tenant = header_field(&header, &["tenant"]);
    let text = |key: &str| tenant.get(key).and_then(Value::as_str).map(str::to_string);
    let (Some(id), Some(slug), Some(template_name), Some(version)) = (
        text("id").and_then(|s| tenancy_core::slug::uuid_bytes(&s)),
        text("slug"),
        text("template"),
        tenant.get("template_version").and_then(Value::as_i64),
    ) else {
        bad_script("the tenant's id, slug, template or version is missing")
    };
    let id = Uuid::from_bytes(id);
    let slug = tenancy_core::slug::validate_slug(Some(&slug))
        .or_raise()
        .to_string();
    let have_version = catalog::one_or_none(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM tenancy.templates WHERE name = $1 AND version = $2)",
        &[template_name.as_str().into(), (version as i32).into()],
    ));
    if have_version != Some(true) {
        raise_with(
            sqlstate("42704"),
            format!("template {template_name:?} version {version} is not in this database"),
            Some(format!("Tenant {slug:?} was exported from that version of its template.")),
            Some(format!(
                "Register the template here first (tenancy.register_template({}, ...)) up to version {version}.",
                quote_literal(&template_name)
            )),
        );
    }
    if let Some(holder) = catalog::one_or_none(Spi::get_one_with_args::<String>(
        "SELECT slug FROM tenancy.tenants WHERE id = $1",
        &[id.into()],
    )) {
        raise_with(
            sqlstate("23505"),
            format!("tenant id {id} is already tenant {holder:?} in this database"),
            None,
            Some("An import keeps the tenant's id; drop or rename nothing to make room, import into another database.".into()),
        );
    }
    let template = catalog::template_version(&template_name, Some(version as i32));
    // provision's own options, from the catalog row: the keys that are its
    // columns (a header's if_not_exists or pool is not the catalog's)
    let mut options = Map::new();
    for &key in tenancy_core::options::OPTION_KEYS {
        if key == "if_not_exists" || key == "pool" {
            continue;
        }
        if let Some(v) = tenant.get(key).filter(|v| !v.is_null()) {
            options.insert(key.into(), v.clone());
        }
    }
    let opts =
        tenancy_core::options::parse_provision_options(Some(&Value::Object(options))).or_raise();
    let name = text("name");
    crate::api::provision::provision_from(
        Some(id),
        &slug,
        name.as_deref(),
        &template,
        &opts,
        started,
    );
    let place = Place::of(
        &template,
        &slug,
        opts.isolation == tenancy_core::options::Isolation::Shared,
    );

    let Some(tables) = header_field(&header, &["tables"]).as_array() else {
        bad_script("no list of tables")
    };
    let caller = catalog::one_or_none(Spi::get_one_with_args::<String>(
        "SELECT rolname::text FROM pg_catalog.pg_roles WHERE oid = $1",
        &[unsafe { pg_sys::GetOuterUserId() }.into()],
    ))
    .unwrap_or_default();
    let owner = crate::roles::owner_role();
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    Spi::run(
        "CREATE TEMPORARY TABLE tenancy_import_plan (n integer, tenant_id uuid, table_name text, \
         columns text[], suspended boolean) ON COMMIT DROP",
    )
    .or_raise();
    // row 0: the tenant itself
    Spi::run_with_args(
        "INSERT INTO pg_temp.tenancy_import_plan VALUES (0, $1, NULL, NULL, $2)",
        &[
            id.into(),
            (text("status").as_deref() == Some("suspended")).into(),
        ],
    )
    .or_raise();
    for (i, table) in tables.iter().enumerate() {
        let name = table.get("name").and_then(Value::as_str);
        let columns: Option<Vec<String>> =
            table.get("columns").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_string))
                    .collect()
            });
        let (Some(name), Some(columns)) = (name, columns) else {
            bad_script("a table without its name or columns")
        };
        check_import_table(&place, name, &columns);
        let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
        // the staging table has the target's column types (WITH NO DATA
        // reads nothing); the caller may only insert into it
        let stage = staging(i + 1);
        Spi::run(&format!(
            "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA; \
             GRANT INSERT ON {stage} TO {}; GRANT SELECT ON {stage} TO {};",
            stage.trim_start_matches("pg_temp."),
            quoted.join(", "),
            qualified(place.schema(), name),
            quote_ident(&caller),
            quote_ident(&owner)
        ))
        .or_raise();
        Spi::run_with_args(
            "INSERT INTO pg_temp.tenancy_import_plan VALUES ($1, $2, $3, $4, $5)",
            &[
                ((i + 1) as i32).into(),
                id.into(),
                name.into(),
                columns.into(),
                (text("status").as_deref() == Some("suspended")).into(),
            ],
        )
        .or_raise();
    }
    format!(
        "importing tenant {slug:?} ({} isolation, {} tables)",
        opts.isolation.as_str(),
        tables.len()
    )
}

/// An exported table has a table of its name here with every column (the
/// shared tables' `tenant_id` for a shared tenant): otherwise 0A000, before
/// a row is read.
fn check_import_table(place: &Place, name: &str, columns: &[String]) {
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    let found = Spi::connect(|c| {
        let row = c
            .select(
                "SELECT x.oid IS NOT NULL AND (NOT $3 OR x.oid IN (SELECT t::oid FROM tenancy._shared_tables($1) t)), \
                        (SELECT string_agg(col, ', ') FROM unnest($4::text[]) col \
                         WHERE NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = x.oid AND a.attname = col \
                                           AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
                                           AND a.attname <> 'tenant_id')) \
                 FROM (SELECT (SELECT c.oid FROM pg_class c WHERE c.relnamespace = to_regnamespace(quote_ident($1)) \
                               AND c.relname = $2 AND c.relkind IN ('r', 'p')) AS oid) x",
                Some(1),
                &[
                    place.schema().into(),
                    name.into(),
                    place.is_shared().into(),
                    columns.to_vec().into(),
                ],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((row.get::<bool>(1)?.unwrap_or(false), row.get::<String>(2)?))
    })
    .or_raise();
    match found {
        (false, _) => raise(TenancyError::NotSupported(format!(
            "the export has table {name}, which schema {} does not have{}",
            place.schema(),
            if place.is_shared() {
                " with a uuid tenant_id column"
            } else {
                ""
            }
        ))),
        (true, Some(missing)) => raise(TenancyError::NotSupported(format!(
            "table {}.{name} has no column {missing}, which the export has",
            place.schema()
        ))),
        _ => {}
    }
}

/// Moves the staged rows into the imported tenant's tables (as the owner
/// role, in the tenant's context), moves its sequences past them, and
/// returns the tenant's id.
#[pg_extern(name = "_import_finish")]
fn import_finish() -> Uuid {
    let started = Instant::now();
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    // the plan import_begin wrote: a table of this function's own role
    let plan = Spi::connect(|c| {
        let ours = c
            .select(
                "SELECT c.relowner = $1 AND c.relkind = 'r' FROM pg_class c \
                 WHERE c.oid = pg_catalog.to_regclass('pg_temp.tenancy_import_plan')",
                Some(1),
                &[unsafe { pg_sys::GetUserId() }.into()],
            )?
            .next()
            .and_then(|r| r.get::<bool>(1).ok().flatten());
        if ours != Some(true) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for r in c.select(
            "SELECT n, tenant_id, table_name, columns, suspended FROM pg_temp.tenancy_import_plan ORDER BY n",
            None,
            &[],
        )? {
            out.push((
                r.get::<i32>(1)?.unwrap_or(0),
                r.get::<Uuid>(2)?,
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<Vec<String>>(4)?.unwrap_or_default(),
                r.get::<bool>(5)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(Some(out))
    })
    .or_raise();
    let Some(plan) = plan else {
        raise_with(
            sqlstate("55000"),
            "no import in progress in this transaction".into(),
            None,
            Some(
                "import_finish follows import_begin and the COPY blocks of an export script."
                    .into(),
            ),
        )
    };
    let Some((_, Some(id), _, _, suspended)) = plan.first().cloned() else {
        bad_script("import_begin wrote no tenant")
    };
    let plan: Vec<_> = plan.into_iter().filter(|p| p.0 > 0).collect();
    drop(scope);
    let t = lock_tenant_row(&id.to_string());
    let template = catalog::template_version(&t.template, Some(t.template_version));
    let place = place_of(&t, &template);
    let mut counts = Map::new();
    let mut tables = Vec::new();
    crate::roles::as_owner("pg_catalog, pg_temp", Some(id), || {
        for (n, _, name, columns, _) in &plan {
            let quoted: Vec<String> = columns.iter().map(|c| quote_ident(c)).collect();
            let cols = quoted.join(", ");
            let (into, select) = if place.is_shared() {
                ("tenant_id, ", "$1, ")
            } else {
                ("", "")
            };
            let sql = format!(
                "INSERT INTO {} ({into}{cols}) OVERRIDING SYSTEM VALUE SELECT {select}{cols} FROM {}",
                qualified(place.schema(), name),
                staging(*n as usize)
            );
            let done = Spi::connect_mut(|c| {
                Ok::<_, pgrx::spi::Error>(c.update(&sql, None, &[id.into()])?.len())
            })
            .or_raise();
            counts.insert(name.clone(), json!(done));
            tables.push(TableCopy {
                name: name.clone(),
                columns: cols,
                column_names: columns.clone(),
            });
        }
    });
    advance_sequences(id, &place, &tables);
    let mut drops: Vec<String> = plan.iter().map(|p| staging(p.0 as usize)).collect();
    drops.push("pg_temp.tenancy_import_plan".into());
    Spi::run(&format!("DROP TABLE {}", drops.join(", "))).or_raise();
    if suspended {
        Spi::run_with_args("SELECT tenancy.suspend($1::text)", &[id.to_string().into()]).or_raise();
    }
    catalog::audit(AuditEntry {
        action: "import",
        tenant_id: Some(id),
        tenant_slug: Some(&t.slug),
        details: json!({"rows": counts, "isolation": t.isolation}),
        duration_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
    });
    id
}
