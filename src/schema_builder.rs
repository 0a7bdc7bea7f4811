//! Builds a tenant schema from a template, in the caller's transaction.
//! A failing statement aborts the whole transaction (nothing is left), and
//! its error keeps its own SQLSTATE with the template and statement added.

use crate::catalog::{extension_schema, Template};
use crate::error::{raise, raise_with, OrRaise};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::panic::AssertUnwindSafe;
use tenancy_core::ident::{qualified, quote_ident};
use tenancy_core::TenancyError;

/// Runs one template statement; on error re-raises it with `context` (which
/// template, version and statement) in the detail, keeping its SQLSTATE.
pub fn run_statement(context: &str, sql: &str) {
    PgTryBuilder::new(AssertUnwindSafe(|| Spi::run(sql).or_raise()))
        .catch_others(|e| {
            let report = match &e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { .. } => e.rethrow(),
            };
            let mut preview: String = sql.chars().take(200).collect();
            if preview.len() < sql.len() {
                preview.push_str("...");
            }
            let mut detail = format!("{context}: {preview}");
            if let Some(d) = report.detail() {
                detail = format!("{d}\n{detail}");
            }
            raise_with(
                report.sql_error_code(),
                report.message().to_string(),
                Some(detail),
                report.hint().map(str::to_string),
            )
        })
        .execute()
}

/// Fails with 55000 before anything is built when the template needs
/// TimescaleDB and it is not installed; returns its schema otherwise.
pub fn check_prerequisites(template: &Template) -> Option<String> {
    if template.spec.timescale_tables.is_empty() {
        return None;
    }
    match extension_schema("timescaledb") {
        Some(schema) => Some(schema),
        None => raise(TenancyError::MissingExtension {
            template: template.name.clone(),
            extension: "timescaledb".into(),
        }),
    }
}

/// Creates an empty schema owned by the tenancy owner role: a fixed
/// statement, run with the extension's rights (the owner role may not
/// create schemas in the database).
pub fn create_owned_schema(schema: &str) {
    if crate::roles::legacy_catalog() {
        Spi::run(&format!("CREATE SCHEMA {}", quote_ident(schema))).or_raise();
        return;
    }
    Spi::run(&format!(
        "CREATE SCHEMA {} AUTHORIZATION {}",
        quote_ident(schema),
        quote_ident(&crate::roles::owner_role())
    ))
    .or_raise();
}

/// Creates `schema` and every object of the template in it. With a tenant
/// role, the role gets the schema first (default privileges), so the objects
/// are its to use as they are made, without a GRANT over the schema after.
/// Everything of the template runs as the owner role (src/roles.rs).
pub fn build_schema(
    template: &Template,
    schema: &str,
    timescale_schema: Option<&str>,
    role: Option<&str>,
) {
    create_owned_schema(schema);
    if let Some(role) = role {
        crate::roles::setup_tenant_role(schema, role, false, false);
    }
    let statements = template.spec.schema_statements();
    // Template SQL uses unqualified names: they land in the tenant schema.
    crate::roles::as_owner(&crate::roles::owner_search_path(schema), None, || {
        let total = statements.len();
        for s in &statements {
            let context = format!(
                "template {:?} version {}, statement {} of {total} ({})",
                template.name, template.version, s.number, s.origin
            );
            run_statement(&context, &s.sql);
        }
        if let Some(ts) = timescale_schema {
            for t in &template.spec.timescale_tables {
                let sql = format!(
                    "SELECT {}.create_hypertable($1::regclass, $2::name, chunk_time_interval => $3::interval)",
                    quote_ident(ts)
                );
                Spi::run_with_args(
                    &sql,
                    &[
                        qualified(schema, &t.name).into(),
                        t.time_column.as_str().into(),
                        t.chunk_interval.as_str().into(),
                    ],
                )
                .or_raise();
            }
        }
        // the partitions maintenance keeps, made now by the same function
        for p in &template.spec.partitioned_tables {
            Spi::run_with_args(
                "SELECT tenancy._maintain_partitions($1::regclass, $2, $3)",
                &[
                    qualified(schema, &p.name).into(),
                    p.unit.as_str().into(),
                    (p.premake as i32).into(),
                ],
            )
            .or_raise();
        }
    });
}
