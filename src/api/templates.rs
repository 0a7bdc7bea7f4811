//! Templates: registering versions, loading the shipped ones, showing DDL.

use crate::catalog::{self, AuditEntry};
use crate::error::OrRaise;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use tenancy_core::slug::validate_slug;
use tenancy_core::template::{parse_spec, validate_template_name, SHIPPED};

fn register(name: &str, spec: &Value, shipped: bool) -> i32 {
    validate_template_name(name).or_raise();
    let parsed = parse_spec(name, spec).or_raise();
    // Two sessions registering one template must not pick the same version.
    // (a table lock, which no session without privileges can take or hold
    // up, unlike an advisory lock; registering is rare)
    Spi::run("LOCK TABLE tenancy.templates IN SHARE ROW EXCLUSIVE MODE").or_raise();
    // (a shipped version is found among all shipped ones: loading the
    // shipped list again, at an upgrade, adds only the versions not there)
    let latest = Spi::get_two_with_args::<i32, bool>(
        "SELECT version, spec = $2 FROM tenancy.templates WHERE name = $1 \
         ORDER BY $3 AND shipped AND spec = $2 DESC, version DESC LIMIT 1",
        &[name.into(), JsonB(spec.clone()).into(), shipped.into()],
    );
    let next = match latest {
        // The same spec again is the same version: loading twice is harmless.
        Ok((Some(version), Some(true))) => return version,
        Ok((Some(version), _)) => version + 1,
        _ => 1,
    };
    Spi::run_with_args(
        "INSERT INTO tenancy.templates (name, version, spec, description, shipped) VALUES ($1, $2, $3, $4, $5)",
        &[
            name.into(),
            next.into(),
            JsonB(spec.clone()).into(),
            parsed.description.as_deref().into(),
            shipped.into(),
        ],
    )
    .or_raise();
    // Shipped ones are loaded by CREATE EXTENSION: an audit row there would
    // sit in the default partition when pg_restore attaches the month
    // partitions of the dumped audit log (and fail it).
    if !shipped {
        catalog::audit(AuditEntry {
            action: "register_template",
            tenant_id: None,
            tenant_slug: None,
            details: json!({"template": name, "version": next, "shipped": shipped}),
            duration_ms: None,
        });
    }
    next
}

/// Adds a version of a template and returns its number. A spec equal to the
/// newest version's returns that version instead of adding one.
#[pg_extern]
fn register_template(name: &str, spec: JsonB) -> i32 {
    register(name, &spec.0, false)
}

/// Loads `templates/*.json` (compiled into the library) at CREATE EXTENSION.
#[pg_extern(name = "_load_shipped_templates")]
fn load_shipped_templates() -> i32 {
    let mut loaded = 0;
    for (name, text) in SHIPPED {
        let spec: Value = serde_json::from_str(text).expect("shipped template is valid JSON");
        register(name, &spec, true);
        loaded += 1;
    }
    loaded
}

/// The DDL that `provision` runs for a tenant, as a client would send it in
/// one transaction: to read, to review, or to measure against.
#[pg_extern]
fn template_ddl(template: &str, slug: &str) -> SetOfIterator<'static, String> {
    let slug = validate_slug(Some(slug)).or_raise();
    let t = catalog::latest_template(template);
    let ts = catalog::extension_schema("timescaledb")
        .map(|s| format!("{}.create_hypertable", tenancy_core::ident::quote_ident(&s)));
    let script = t
        .spec
        .client_script(&t.spec.schema_name(slug), ts.as_deref());
    SetOfIterator::new(script)
}

/// The schema of a template version's shared tables, for SQL
/// (`tenancy._access_schema`): the rule is tenancy_core's.
#[pg_extern(immutable, parallel_safe, name = "_shared_schema_name")]
fn shared_schema_name(template: &str, spec: JsonB) -> String {
    let named = spec.0.get("shared_schema").and_then(Value::as_str);
    tenancy_core::template::shared_schema_name(named, template)
}

/// A template version's partitioned tables as the template parser reads
/// them (unit spelled as `date_trunc` does, premake's default filled in):
/// maintenance keeps what provisioning made, by the same reading.
#[pg_extern(immutable, parallel_safe, name = "_partitioned_tables")]
fn partitioned_tables(
    template: &str,
    spec: JsonB,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(unit, String),
        name!(premake, i32),
        name!(retention, Option<String>),
    ),
> {
    let parsed = parse_spec(template, &spec.0).or_raise();
    TableIterator::new(parsed.partitioned_tables.into_iter().map(|p| {
        (
            p.name,
            p.unit.as_str().to_string(),
            p.premake as i32,
            p.retention,
        )
    }))
}
