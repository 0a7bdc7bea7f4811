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
use tenancy_core::ident::{quote_ident, quote_literal};

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
    as_role(&owner_role(), search_path, tenant, f)
}

/// As `as_owner`, as another of this database's roles: `all_tenants`
/// (BYPASSRLS) for a copy between two shared tenants' rows, which no one
/// tenant context can both read and write.
pub fn as_role<R>(name: &str, search_path: &str, tenant: Option<Uuid>, f: impl FnOnce() -> R) -> R {
    if legacy_catalog() {
        let scope = crate::guc_scope::GucScope::new();
        scope.set(
            "search_path",
            &search_path.replace("pg_catalog, pg_temp", "public"),
        );
        return f();
    }
    let Some(owner) = role_oid(name) else {
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
    // on Citus the shared tables' rows are on the workers: the context too
    let citus_before = tenant.and_then(crate::citus::tenant_context::send_for_own_work);
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
    if let Some(before) = citus_before {
        crate::citus::tenant_context::set_proof(&before);
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
    as_role_sql(&owner_role(), sql, tenant)
}

/// As `_as_owner`, as `tenancy_all_tenants_<db oid>` (BYPASSRLS): for a
/// statement the extension wrote that reads every shared tenant's rows at
/// once (refresh_metrics' counts). Never with the superuser's rights:
/// planning it loads the table's index expressions and partition key, which
/// a template wrote. Not on Citus: that role (NOLOGIN) does not reach the
/// workers.
#[pg_extern(name = "_as_all_tenants")]
fn as_all_tenants_sql(sql: &str) -> JsonB {
    as_role_sql(&db_role("all_tenants"), sql, None)
}

fn as_role_sql(role: &str, sql: &str, tenant: Option<Uuid>) -> JsonB {
    as_role(role, "pg_catalog, pg_temp", tenant, || {
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

/// The comment that marks a role as tenancy's for this database (what
/// `tenancy._is_own_role` and `tenancy._orphan_roles` read): what it is
/// for, after the database's OID. SQL calls it as `tenancy._role_comment`.
pub fn role_comment(what: &str) -> String {
    let name = unsafe {
        let p = pg_sys::get_database_name(pg_sys::MyDatabaseId);
        std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned()
    };
    format!(
        "tenancy role of database {}: {what} (made in database {name})",
        db_oid()
    )
}

#[pg_extern(stable, name = "_role_comment")]
fn role_comment_sql(what: &str) -> String {
    role_comment(what)
}

/// Makes a tenant's role (never an existing one: a role tenancy did not make
/// for this tenant must not be handed its data) and gives it its schema:
/// USAGE, and default privileges for what the owner role makes there later
/// (a migration), so that it is the tenant's to use without a GRANT. With
/// `existing_objects`, also grants on what the schema already holds (a
/// schema claimed from the warm pool). A shared tenant's role instead joins
/// the role that holds the grants on the shared tables that have a policy.
/// Fixed statements, sent as one.
pub fn setup_tenant_role(schema: &str, role: &str, existing_objects: bool, shared: bool) {
    if legacy_catalog() {
        Spi::run_with_args(
            "SELECT tenancy._setup_tenant_role($1, $2, $3)",
            &[schema.into(), role.into(), existing_objects.into()],
        )
        .or_raise();
        return;
    }
    refuse_existing_role(role);
    let r = quote_ident(role);
    let mut sql = format!(
        "CREATE ROLE {r} NOLOGIN; {}",
        role_comment_sql_text(role, schema)
    );
    sql += &access_sql(schema, role, existing_objects, shared);
    Spi::run(&sql).or_raise();
}

/// The statement that marks a tenant's role as tenancy's, naming the schema
/// it uses (its own, or the template's shared schema).
fn role_comment_sql_text(role: &str, schema: &str) -> String {
    format!(
        "COMMENT ON ROLE {} IS {};",
        quote_ident(role),
        quote_literal(&role_comment(&format!("tenant, schema {schema}")))
    )
}

/// What a tenant's role is given (see setup_tenant_role): the statements.
fn access_sql(schema: &str, role: &str, existing_objects: bool, shared: bool) -> String {
    let r = quote_ident(role);
    let s = quote_ident(schema);
    let mut sql = String::new();
    if shared {
        sql += &format!("GRANT {} TO {r};", quote_ident(&db_role("shared")));
    } else {
        let owner = quote_ident(&owner_role());
        sql += &format!(
            "GRANT USAGE ON SCHEMA {s} TO {r}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {s} GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {r}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {s} GRANT USAGE ON SEQUENCES TO {r}; \
             ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {s} GRANT EXECUTE ON ROUTINES TO {r};"
        );
    }
    if existing_objects && !shared {
        sql += &grants_on_existing_objects(schema, &r);
    }
    sql
}

/// A tenant's existing role moves to another kind of access (move_tenant):
/// its schema's (everything the schema holds) or the shared tables', and
/// loses the one it had: the shared tables' membership, or USAGE on its old
/// schema (which is about to go). Its comment names the new schema.
pub fn move_tenant_role(role: &str, schema: &str, to_shared: bool, old_schema: Option<&str>) {
    let r = quote_ident(role);
    let mut sql = role_comment_sql_text(role, schema);
    sql += &access_sql(schema, role, true, to_shared);
    match old_schema {
        Some(old) if to_shared => {
            sql += &format!("REVOKE ALL ON SCHEMA {} FROM {r};", quote_ident(old))
        }
        _ => sql += &format!("REVOKE {} FROM {r};", quote_ident(&db_role("shared"))),
    }
    Spi::run(&sql).or_raise();
}

/// The role a pooled schema is built with, until a tenant claims it: this
/// database's (its OID in the name), and never a tenant's name (those start
/// `t<oid>_`).
pub fn pool_role(id: &str) -> String {
    format!("tenancy_pool_{}_{id}", db_oid())
}

/// A pooled schema's role is as the pool built it: under its name, this
/// database's pool's, no superuser, no login or other attribute, a member
/// of nothing and with no member, and the comment it was made with.
pub fn pool_role_untouched(pooled_role: &str, pooled_schema: &str) -> bool {
    pooled_role.starts_with(&pool_role(""))
        && crate::kept_plans::get_one::<bool>(
            // the comment read directly: shobj_description is a SQL function,
            // planned anew on each call
            "SELECT NOT (r.rolsuper OR r.rolcanlogin OR r.rolcreaterole OR r.rolcreatedb \
                         OR r.rolreplication OR r.rolbypassrls) \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m \
                                    WHERE m.roleid OPERATOR(pg_catalog.=) r.oid \
                                       OR m.member OPERATOR(pg_catalog.=) r.oid) \
                    AND EXISTS (SELECT 1 FROM pg_catalog.pg_shdescription d \
                                WHERE d.objoid OPERATOR(pg_catalog.=) r.oid \
                                  AND d.classoid OPERATOR(pg_catalog.=) 'pg_catalog.pg_authid'::pg_catalog.regclass \
                                  AND d.description OPERATOR(pg_catalog.=) $2) \
             FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) $1",
            &[
                pooled_role.into(),
                role_comment(&format!("tenant, schema {pooled_schema}")).into(),
            ],
        )
        .unwrap_or(false)
}

/// Renames a pooled schema's role (untouched, see above) to its tenant's,
/// with the comment that names the tenant's schema. The tenant's name taken
/// is refused as setup_tenant_role refuses it.
pub fn take_pool_role(pooled: &str, role: &str, schema: &str) {
    refuse_existing_role(role);
    let r = quote_ident(role);
    Spi::run(&format!(
        "ALTER ROLE {} RENAME TO {r}; COMMENT ON ROLE {r} IS {};",
        quote_ident(pooled),
        quote_literal(&role_comment(&format!("tenant, schema {schema}")))
    ))
    .or_raise();
}

/// A role of that name exists: tenancy never hands a tenant an existing role.
fn refuse_existing_role(role: &str) {
    let exists = crate::kept_plans::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1)",
        &[role.into()],
    );
    if exists == Some(true) {
        raise_with(
            sqlstate("42710"),
            format!("role \"{role}\" already exists"),
            Some("tenancy makes a new role for each tenant and never hands a tenant an existing role.".into()),
            Some("Drop or rename that role first.".into()),
        );
    }
}

/// The privileges a tenant's role has on what its schema holds already (a
/// schema claimed from the warm pool): reading and writing rows, never
/// TRUNCATE, TRIGGER, REFERENCES or setval; USAGE on the schema is
/// suspend's to take and resume's to give back. The objects GRANT ... ON
/// ALL ... IN SCHEMA would find, found through pg_depend's index and granted
/// by name: ON ALL scans the whole of pg_class and pg_proc, 150 ms a claim
/// at 10,000 tenants.
fn grants_on_existing_objects(schema: &str, role: &str) -> String {
    // names printed qualified, operators ours
    let scope = crate::guc_scope::GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    let lists = Spi::connect(|c| {
        let row = c
            .select(
                "WITH nsp AS (SELECT to_regnamespace(quote_ident($1)) AS oid), \
                      rel AS (SELECT c.oid, c.relkind FROM pg_depend d JOIN pg_class c ON c.oid = d.objid, nsp \
                              WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_namespace'::regclass \
                                AND d.refobjid = nsp.oid AND d.deptype = 'n' AND c.relnamespace = nsp.oid) \
                 SELECT (SELECT string_agg(oid::regclass::text, ', ') FROM rel WHERE relkind IN ('r', 'p', 'v', 'm', 'f')), \
                        (SELECT string_agg(oid::regclass::text, ', ') FROM rel WHERE relkind = 'S'), \
                        (SELECT string_agg(p.oid::regprocedure::text, ', ') \
                         FROM pg_depend d JOIN pg_proc p ON p.oid = d.objid, nsp \
                         WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_namespace'::regclass \
                           AND d.refobjid = nsp.oid AND d.deptype = 'n' AND p.pronamespace = nsp.oid)",
                Some(1),
                &[schema.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>([
            row.get::<String>(1)?,
            row.get::<String>(2)?,
            row.get::<String>(3)?,
        ])
    })
    .or_raise();
    let [tables, sequences, routines] = lists;
    let mut sql = String::new();
    if let Some(t) = tables {
        sql += &format!("GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE {t} TO {role};");
    }
    if let Some(s) = sequences {
        sql += &format!("GRANT USAGE ON SEQUENCE {s} TO {role};");
    }
    if let Some(f) = routines {
        sql += &format!("GRANT EXECUTE ON ROUTINE {f} TO {role};");
    }
    sql
}
