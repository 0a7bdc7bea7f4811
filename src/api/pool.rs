//! The warm pool: schemas built ahead by the worker (`_pool_build`) and
//! claimed by `provision` (`claim`), each in one transaction with its row in
//! `tenancy.pool`, so a pooled schema never exists without its row.

use crate::catalog::{self, one_or_none, Template};
use crate::error::OrRaise;
use crate::schema_builder::{build_schema, check_prerequisites};
use pgrx::prelude::*;
use tenancy_core::ident::quote_ident;

/// Builds one pooled schema of the newest version of `template`.
#[pg_extern(name = "_pool_build")]
fn pool_build(template: &str) -> String {
    let t = catalog::latest_template(template);
    let ts = check_prerequisites(&t);
    let schema = one_or_none(Spi::get_one::<String>(
        "SELECT 'tenancy_pool_' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)",
    ))
    .expect("a name");
    build_schema(&t, &schema, ts.as_deref(), None);
    Spi::run_with_args(
        "INSERT INTO tenancy.pool (schema_name, template, template_version) VALUES ($1, $2, $3)",
        &[
            schema.as_str().into(),
            t.name.as_str().into(),
            t.version.into(),
        ],
    )
    .or_raise();
    schema
}

/// Takes a ready schema of this template version out of the pool and renames
/// it to `schema`; false when the pool has none (the caller builds instead).
pub fn claim(template: &Template, schema: &str) -> bool {
    let pooled = one_or_none(Spi::get_one_with_args::<String>(
        "DELETE FROM tenancy.pool WHERE schema_name = (\
             SELECT schema_name FROM tenancy.pool WHERE template = $1 AND template_version = $2 \
             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING schema_name::text",
        &[template.name.as_str().into(), template.version.into()],
    ));
    let Some(pooled) = pooled else {
        return false;
    };
    Spi::run(&format!(
        "ALTER SCHEMA {} RENAME TO {}",
        quote_ident(&pooled),
        quote_ident(schema)
    ))
    .or_raise();
    crate::worker::wake_on_commit(); // the worker refills the pool
    true
}
