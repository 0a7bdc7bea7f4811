//! The warm pool: schemas built ahead by the worker (`_pool_build`) and
//! claimed by `provision` (`claim`), each in one transaction with its row in
//! `tenancy.pool`, so a pooled schema never exists without its row.

use crate::catalog::{self, one_or_none, Template};
use crate::error::OrRaise;
use crate::schema_builder::{build_schema, check_prerequisites};
use pgrx::prelude::*;
use tenancy_core::ident::quote_ident;

/// Builds one pooled schema of the newest version of `template`, with the
/// role its tenant will have: made as a tenant's is (its grants and default
/// privileges in place), under a name of this database's pool, renamed to
/// the tenant's at the claim. A claim is then a rename of each.
#[pg_extern(name = "_pool_build")]
fn pool_build(template: &str) -> String {
    let t = catalog::latest_template(template);
    let ts = check_prerequisites(&t);
    let id = one_or_none(Spi::get_one::<String>(
        "SELECT substr(replace(gen_random_uuid()::text, '-', ''), 1, 16)",
    ))
    .expect("a name");
    let schema = format!("tenancy_pool_{id}");
    // (a catalog not yet updated to 0.4.0 has no place for the role)
    let role = pool_has_roles().then(|| crate::roles::pool_role(&id));
    build_schema(&t, &schema, ts.as_deref(), role.as_deref());
    let columns = if role.is_some() { ", role_name" } else { "" };
    let values = if role.is_some() { ", $4" } else { "" };
    let mut args = vec![
        schema.as_str().into(),
        t.name.as_str().into(),
        t.version.into(),
    ];
    if let Some(r) = &role {
        args.push(r.as_str().into());
    }
    Spi::run_with_args(
        &format!(
            "INSERT INTO tenancy.pool (schema_name, template, template_version{columns}) VALUES ($1, $2, $3{values})"
        ),
        &args,
    )
    .or_raise();
    schema
}

thread_local! {
    static POOL_HAS_ROLES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// This database's `tenancy.pool` has the role column (0.4.0 on): asked
/// until it is so, then known for the rest of this backend's life.
fn pool_has_roles() -> bool {
    if POOL_HAS_ROLES.with(|c| c.get()) {
        return true;
    }
    let has = one_or_none(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
         WHERE attrelid OPERATOR(pg_catalog.=) 'tenancy.pool'::pg_catalog.regclass \
           AND attname OPERATOR(pg_catalog.=) 'role_name' AND NOT attisdropped)",
    ))
    .unwrap_or(false);
    POOL_HAS_ROLES.with(|c| c.set(has));
    has
}

/// What a claim found in the pool.
pub enum Claim {
    /// Nothing ready: the caller builds.
    Empty,
    /// A schema, renamed to the tenant's; its role still to be made.
    Schema,
    /// A schema and its role, both renamed to the tenant's.
    SchemaAndRole,
}

/// Takes a ready schema of this template version out of the pool and renames
/// it to `schema`, and its role (when it was built with one, for this
/// database) to `role`.
pub fn claim(template: &Template, schema: &str, role: &str) -> Claim {
    // the oldest ready schema of this version, with its role when the pool
    // table has that column (a database whose SQL is older than its library)
    let query = if pool_has_roles() {
        "DELETE FROM tenancy.pool WHERE schema_name = (\
             SELECT schema_name FROM tenancy.pool WHERE template = $1 AND template_version = $2 \
             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING schema_name::text, role_name::text"
    } else {
        "DELETE FROM tenancy.pool WHERE schema_name = (\
             SELECT schema_name FROM tenancy.pool WHERE template = $1 AND template_version = $2 \
             ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING schema_name::text, NULL::text"
    };
    let pooled = crate::kept_plans::run(
        query,
        &[template.name.as_str().into(), template.version.into()],
        |rows| {
            Ok(if rows.is_empty() {
                None
            } else {
                let row = rows.first();
                Some((row.get::<String>(1)?, row.get::<String>(2)?))
            })
        },
    );
    let Some((Some(pooled), pooled_role)) = pooled else {
        return Claim::Empty;
    };
    crate::worker::wake_on_commit(); // the worker refills the pool
    if let Some(r) = &pooled_role {
        if !crate::roles::pool_role_untouched(r, &pooled) {
            // Its role was renamed, given a member, a login or another
            // comment since it was built (a CREATEROLE user can): neither is
            // handed to a tenant. The schema goes, and every right on it with
            // it; the role is left as it is (it may be someone's now).
            Spi::run(&format!("DROP SCHEMA {} CASCADE", quote_ident(&pooled))).or_raise();
            return Claim::Empty;
        }
    }
    Spi::run(&format!(
        "ALTER SCHEMA {} RENAME TO {}",
        quote_ident(&pooled),
        quote_ident(schema)
    ))
    .or_raise();
    match pooled_role {
        Some(r) => {
            crate::roles::take_pool_role(&r, role, schema);
            Claim::SchemaAndRole
        }
        None => Claim::Schema,
    }
}
