//! Builds a tenant schema from a template, in the caller's transaction.
//! A failing statement aborts the whole transaction (nothing is left), and
//! its error keeps its own SQLSTATE with the template and statement added.

use crate::catalog::{self, extension_schema, Template};
use crate::error::{raise, raise_with, sqlstate, OrRaise};
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
    if crate::citus::installed() {
        // the two extensions do not work in one database
        raise_with(
            sqlstate("0A000"),
            format!(
                "template {:?} has timescale_tables, and Citus is installed in this database",
                template.name
            ),
            Some("TimescaleDB and Citus cannot be used in the same database.".into()),
            Some("Use a template without timescale_tables here (partitioned_tables keeps time partitions without TimescaleDB).".into()),
        )
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
    // on Citus a regular schema, distributed once it has its tables
    crate::citus::regular_schema(|| create_schema(schema))
}

fn create_schema(schema: &str) {
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
    crate::citus::ensure_owner_reaches_workers();
    build_local_schema(template, schema, timescale_schema, role);
    crate::citus::distribute_schema(schema);
}

/// As `build_schema`, left local on Citus: the reference `health(tenant)`
/// builds and rolls back.
pub fn build_local_schema(
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
        let _local = crate::citus::local_ddl();
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

/// Creates the template's shared schema and tables, with RLS on every table
/// that has a `tenant_id` column, the first time a shared tenant needs them.
pub fn ensure_shared_schema(template: &Template) -> String {
    let schema = template.spec.shared_schema_name(&template.name);
    if template.spec.shared_tables.is_empty() {
        raise(TenancyError::InvalidArgument(format!(
            "template {:?} has no shared_tables: it cannot provision shared tenants",
            template.name
        )));
    }
    // an existing schema of that name is used only if tenancy made it (the
    // owner role's, or a superuser's in a catalog still before 0.3.0): a
    // database owner's schema made ahead of the first shared tenant would
    // get its rows, and another extension's (tenancy's own, pg_cron's) would
    // have its tables taken for shared tables
    let legacy = crate::roles::legacy_catalog();
    let usable = || {
        let owner_ok = catalog::one_or_none(Spi::get_one_with_args::<bool>(
            "SELECT r.rolname = $2 OR (r.rolsuper AND $3) FROM pg_catalog.pg_namespace n \
             JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner WHERE n.nspname = $1",
            &[
                schema.as_str().into(),
                crate::roles::owner_role().as_str().into(),
                legacy.into(),
            ],
        ));
        match owner_ok {
            Some(true) => true,
            Some(false) => raise_with(
                sqlstate("42501"),
                format!("schema {schema} exists and was not made by tenancy"),
                Some(format!(
                    "The shared tables of template {:?} live in {schema}; this one belongs to another role.",
                    template.name
                )),
                Some("Rename or drop that schema, or give the template another shared_schema.".into()),
            ),
            None => false,
        }
    };
    if usable() {
        return schema;
    }
    // two first shared tenants of one template must not both create it: a
    // row lock on the template (no session without privileges can hold one,
    // as it could an advisory lock); NO KEY UPDATE leaves the tenants'
    // foreign keys to it free
    Spi::run_with_args(
        "SELECT 1 FROM tenancy.templates WHERE name = $1 ORDER BY version DESC LIMIT 1 FOR NO KEY UPDATE",
        &[template.name.as_str().into()],
    )
    .or_raise();
    if usable() {
        return schema;
    }
    crate::schema_builder::create_owned_schema(&schema);
    crate::roles::as_owner(&crate::roles::owner_search_path(&schema), None, || {
        let total = template.spec.shared_tables.len();
        for (i, sql) in template.spec.shared_tables.iter().enumerate() {
            let context = format!(
                "template {:?} version {}, shared statement {} of {total} (shared_tables[{i}])",
                template.name,
                template.version,
                i + 1
            );
            run_statement(&context, sql);
        }
    });
    if crate::roles::legacy_catalog() {
        // as 0.2.0 did, until ALTER EXTENSION tenancy UPDATE
        let q = quote_ident(&schema);
        Spi::run_with_args(
            "SELECT tenancy.enable_rls(c.oid::regclass) FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped \
             WHERE c.relnamespace = to_regnamespace(quote_ident($1)) AND c.relkind IN ('r', 'p') AND NOT c.relispartition",
            &[schema.as_str().into()],
        )
        .or_raise();
        Spi::run(&format!(
            "GRANT USAGE ON SCHEMA {q} TO tenancy_all_tenants; \
             GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {q} TO tenancy_all_tenants"
        ))
        .or_raise();
        return schema;
    }
    // the policies first; then the shared tenants' role gets the tables
    // that have one (tenancy._enable_rls), and the schema
    Spi::run_with_args(
        "SELECT tenancy._enable_rls(tbl) FROM tenancy._shared_tables($1) tbl",
        &[schema.as_str().into()],
    )
    .or_raise();
    let q = quote_ident(&schema);
    for kind in ["shared", "all_tenants"] {
        let role = quote_ident(&crate::roles::db_role(kind));
        Spi::run(&format!("GRANT USAGE ON SCHEMA {q} TO {role}")).or_raise();
    }
    // on Citus: by tenant_id over the workers, with the policies and grants
    crate::citus::distribute_shared_schema(&schema);
    schema
}
