//! Who runs what: the extension's roles in this database, and running code
//! that a tenant or an admin could have a hand in as the tenancy owner role.
//!
//! Every role the extension makes belongs to one database and carries that
//! database's OID in its name, so that no role ever serves two databases:
//!
//! | role                          | what it is                                              |
//! |-------------------------------|---------------------------------------------------------|
//! | `tenancy_admin_<db oid>`      | runs the lifecycle functions of this database            |
//! | `tenancy_all_tenants_<db oid>`| BYPASSRLS, every shared tenant's rows, by `SET ROLE`     |
//! | `tenancy_owner_<db oid>`      | owns tenant schemas and their objects; runs template SQL |
//! | `tenancy_shared_<db oid>`     | holds the grants on shared tables that have a policy     |
//! | `t<db oid>_<slug>`            | one tenant                                              |
//!
//! Template SQL, migrations and maintenance inside tenant schemas run as the
//! owner role in a security-restricted operation, the way PostgreSQL runs
//! VACUUM or an index expression as the table's owner: a trigger or function
//! planted there gets the owner's rights (no superuser, no `SET ROLE`, no
//! temporary objects) and any setting it changes is undone.

use crate::error::{raise_with, sqlstate, OrRaise};
use crate::guc_scope::set_option;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use std::ffi::CString;

fn db_oid() -> u32 {
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

/// One of this database's own roles: `admin`, `all_tenants`, `owner`, `shared`.
pub fn db_role(kind: &str) -> String {
    format!("tenancy_{kind}_{}", db_oid())
}

pub fn admin_role() -> String {
    db_role("admin")
}

pub fn owner_role() -> String {
    db_role("owner")
}

/// The role of a tenant of this database (slugs are at most 48 characters:
/// `t` + 10 digits + `_` + 48 fits in PostgreSQL's 63).
pub fn tenant_role(slug: &str) -> String {
    format!("t{}_{}", db_oid(), slug)
}

/// The catalog is of a release before 0.3.0 (`ALTER EXTENSION tenancy
/// UPDATE` not run yet, and `health()` says so): there is no owner role, and
/// the library does what that release did until the update moves it over.
pub fn legacy_catalog() -> bool {
    // once current, a database's catalog stays so for this backend (only
    // DROP EXTENSION and CREATE EXTENSION VERSION '0.2.0' in this very
    // session could go back): asked once, not on every provision
    if CURRENT_CATALOG.with(|c| c.get()) {
        return false;
    }
    let legacy = crate::catalog::one_or_none(Spi::get_one::<bool>(
        "SELECT extversion OPERATOR(pg_catalog.=) ANY ('{0.1.0,0.2.0}'::text[]) \
         FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'tenancy'",
    ));
    if legacy == Some(false) {
        CURRENT_CATALOG.with(|c| c.set(true));
    }
    legacy.unwrap_or(false)
}

thread_local! {
    static CURRENT_CATALOG: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The OID of a role, or `None`.
pub fn role_oid(name: &str) -> Option<pg_sys::Oid> {
    let c = CString::new(name).ok()?;
    let oid = unsafe { pg_sys::get_role_oid(c.as_ptr(), true) };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// The search path of code run as the owner in a tenant's schema (the
/// template's rule, `TemplateSpec::search_path`).
pub fn owner_search_path(schema: &str) -> String {
    tenancy_core::template::TemplateSpec::search_path(schema)
}

/// Runs `f` as the tenancy owner role, in a security-restricted operation,
/// with `search_path` (and, for a shared tenant, the tenant context) set
/// for its duration; every setting changed inside is undone after. On an
/// ERROR the (sub)transaction abort restores the user and the settings.
pub fn as_owner<R>(search_path: &str, tenant: Option<Uuid>, f: impl FnOnce() -> R) -> R {
    if legacy_catalog() {
        let scope = crate::guc_scope::GucScope::new();
        scope.set(
            "search_path",
            &search_path.replace("pg_catalog, pg_temp", "public"),
        );
        return f();
    }
    let name = owner_role();
    let Some(owner) = role_oid(&name) else {
        raise_with(
            sqlstate("55000"),
            format!("role {name} does not exist"),
            None,
            Some(
                "ALTER EXTENSION tenancy UPDATE, or DROP and CREATE EXTENSION tenancy, makes it."
                    .into(),
            ),
        )
    };
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    // the tenant context is a superuser setting: set it before switching
    if let Some(t) = tenant {
        set_option(
            "tenancy.tenant_id",
            &t.to_string(),
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucAction::GUC_ACTION_SAVE,
        );
    }
    set_option(
        "search_path",
        search_path,
        pg_sys::GucContext::PGC_USERSET,
        pg_sys::GucAction::GUC_ACTION_SAVE,
    );
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            owner,
            sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                as i32,
        );
    }
    let r = f();
    unsafe {
        pg_sys::SetUserIdAndSecContext(user, sec);
        // false: what the code changed is not kept (as for an index build)
        pg_sys::AtEOXact_GUC(false, nest);
    }
    r
}

/// Code is running inside `as_owner` (the owner role, restricted): the
/// only way into that role, which no one is granted.
pub fn in_owner_scope() -> bool {
    let restricted = unsafe { pg_sys::InSecurityRestrictedOperation() };
    restricted && role_oid(&owner_role()) == Some(unsafe { pg_sys::GetUserId() })
}

/// Runs a fixed, read-only look-up of the extension's (one whose SQL names
/// nothing a user can define) with the bootstrap superuser's rights, for
/// code any session calls (`current_tenant_id`) that must read the catalog.
pub fn as_superuser<R>(f: impl FnOnce() -> R) -> R {
    // the caller's search_path is not for the superuser's queries
    let scope = crate::guc_scope::GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(
            pg_sys::Oid::from(pg_sys::BOOTSTRAP_SUPERUSERID),
            sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let r = f();
    unsafe { pg_sys::SetUserIdAndSecContext(user, sec) };
    r
}

/// Runs one statement that the extension wrote (identifiers quoted, the
/// tenant's id as `$1`) as the owner role; for plpgsql code that must not
/// touch tenant tables with the superuser's rights (a DELETE fires the
/// template's triggers, an INSERT its defaults and index expressions).
/// Returns the first column of the first row when the statement returns
/// rows, else the number of rows it processed.
#[pg_extern(name = "_as_owner")]
fn as_owner_sql(sql: &str, tenant: Option<Uuid>) -> JsonB {
    as_owner("pg_catalog, pg_temp", tenant, || {
        Spi::connect_mut(|c| {
            let args: Vec<pgrx::datum::DatumWithOid> = match tenant {
                Some(t) if sql.contains("$1") => vec![t.into()],
                _ => vec![],
            };
            let table = c.update(sql, None, &args)?;
            let processed = table.len();
            if table.columns().is_ok() {
                if let Some(row) = table.into_iter().next() {
                    return Ok::<_, pgrx::spi::Error>(
                        row.get::<JsonB>(1)?
                            .unwrap_or(JsonB(serde_json::Value::Null)),
                    );
                }
            }
            Ok(JsonB(serde_json::json!(processed)))
        })
        .or_raise()
    })
}

/// The role the session acts as (after `SET ROLE`), which a `SECURITY
/// DEFINER` function does not change: who is really calling.
#[pg_extern(stable, name = "_caller")]
fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetOuterUserId() }
}

/// The name of this database's admin role: `GRANT` it to whoever manages
/// this database's tenants.
#[pg_extern(stable, parallel_safe, name = "admin_role")]
fn admin_role_name() -> String {
    admin_role()
}

/// Makes a tenant's role and gives it its schema (tenancy._setup_tenant_role).
pub fn setup_tenant_role(schema: &str, role: &str, existing_objects: bool, shared: bool) {
    if legacy_catalog() {
        Spi::run_with_args(
            "SELECT tenancy._setup_tenant_role($1, $2, $3)",
            &[schema.into(), role.into(), existing_objects.into()],
        )
        .or_raise();
        return;
    }
    Spi::run_with_args(
        "SELECT tenancy._setup_tenant_role($1, $2, $3, $4)",
        &[
            schema.into(),
            role.into(),
            existing_objects.into(),
            shared.into(),
        ],
    )
    .or_raise();
}
