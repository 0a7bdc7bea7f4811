//! Storage quotas enforced. `refresh_metrics` marks a tenant whose measured
//! size is over its `max_storage_bytes` (`tenancy.tenants.over_quota_since`)
//! and clears the mark when a later refresh finds it under; while marked, its
//! writes are refused (53400), its reads and deletes still work.
//!
//! - A schema tenant: where PostgreSQL checks a statement's privileges,
//!   before any row is touched (`ExecutorCheckPerms_hook`, which COPY FROM
//!   passes through too), an INSERT, an UPDATE of columns or a MERGE into a
//!   table of its schema.
//! - A shared tenant: the shared tables' policy, for each row written, in
//!   the tenant context that row is checked in (`tenant_may_write`).
//!
//! The extension's own work and the cascades of foreign keys (both as the
//! owner role), superusers, and roles that bypass row level security are
//! not refused. Each backend keeps the marked tenants it read, forgotten
//! when `tenancy.tenants` is invalidated (`_tenants_changed`).

use crate::error::{raise_with, sqlstate, OrRaise};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

/// A marked tenant, as its error tells it.
#[derive(Clone)]
struct Marked {
    slug: String,
    size: Option<i64>,
    max: Option<i64>,
    since: String,
}

#[derive(Default)]
struct State {
    /// schema tenants, by their schema's OID
    schemas: HashMap<pg_sys::Oid, Marked>,
    /// shared tenants, by id
    shared: HashMap<[u8; 16], Marked>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// STATE is what the catalog says: cleared by an invalidation (which can
    /// arrive while STATE is being read, hence apart from it)
    static LOADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// counts the invalidations: one during a load makes it stale at once
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// the OID of tenancy.tenants when read: its invalidation forgets all
    static TENANTS_REL: std::cell::Cell<pg_sys::Oid> = const { std::cell::Cell::new(pg_sys::InvalidOid) };
    /// set while this module reads the catalog (its own queries pass the hook)
    static READING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

static mut PREV_CHECK_PERMS: pg_sys::ExecutorCheckPerms_hook_type = None;

/// Called from `_PG_init`, preloaded or loaded by a session.
pub fn install() {
    unsafe {
        PREV_CHECK_PERMS = pg_sys::ExecutorCheckPerms_hook;
        pg_sys::ExecutorCheckPerms_hook = Some(check_perms);
        pg_sys::CacheRegisterRelcacheCallback(Some(forget), pg_sys::Datum::from(0));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    if relid == pg_sys::InvalidOid || relid == TENANTS_REL.with(|r| r.get()) {
        LOADED.with(|l| l.set(false));
        GENERATION.with(|g| g.set(g.get().wrapping_add(1)));
    }
}

/// The marked tenants of this database (none where the extension, or the
/// column of this release, is not there).
fn load() -> State {
    let mut state = State::default();
    let rel = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        pg_sys::get_relname_relid(c"tenants".as_ptr(), nsp)
    };
    TENANTS_REL.with(|r| r.set(rel));
    let has_column = rel != pg_sys::InvalidOid
        && unsafe { pg_sys::get_attnum(rel, c"over_quota_since".as_ptr()) }
            != pg_sys::InvalidAttrNumber as i16;
    if !has_column {
        return state;
    }
    let rows = crate::roles::as_superuser(|| {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(
                "SELECT t.id, t.slug, t.isolation, \
                        to_regnamespace(quote_ident(CASE WHEN t.isolation = 'shared' \
                                                         THEN tenancy._access_schema(t) ELSE t.schema_name END))::oid, \
                        t.max_storage_bytes, t.over_quota_since::text, \
                        (SELECT m.total_bytes FROM tenancy.tenant_metrics m WHERE m.tenant_id = t.id \
                         ORDER BY m.collected_at DESC LIMIT 1) \
                 FROM tenancy.tenants t \
                 WHERE t.over_quota_since IS NOT NULL AND t.status IN ('active', 'suspended')",
                None,
                &[],
            )? {
                out.push((
                    r.get::<pgrx::Uuid>(1)?,
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<String>(3)?.unwrap_or_default(),
                    r.get::<pg_sys::Oid>(4)?,
                    r.get::<i64>(5)?,
                    r.get::<String>(6)?.unwrap_or_default(),
                    r.get::<i64>(7)?,
                ));
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
    });
    // an error reading the list fails the statement: never an empty list
    let rows = rows.or_raise();
    for (id, slug, isolation, schema, max, since, size) in rows {
        let marked = Marked {
            slug,
            size,
            max,
            since,
        };
        match (isolation.as_str(), id, schema) {
            ("shared", Some(id), _) => {
                state.shared.insert(*id.as_bytes(), marked);
            }
            (_, _, Some(schema)) => {
                state.schemas.insert(schema, marked);
            }
            _ => {}
        }
    }
    state
}

/// What a statement does to one relation: does it write rows there?
fn writes(perms: pg_sys::AclMode, updated_cols: *mut pg_sys::Bitmapset) -> bool {
    perms & pg_sys::ACL_INSERT as pg_sys::AclMode != 0
        // UPDATE of columns; SELECT ... FOR UPDATE asks for the privilege
        // but changes nothing
        || (perms & pg_sys::ACL_UPDATE as pg_sys::AclMode != 0 && !updated_cols.is_null())
}

/// Refuses (53400) a statement that writes into a marked schema tenant's
/// tables (the relations it writes, as the version's hook lists them).
fn check_writes(targets: Vec<pg_sys::Oid>) {
    if !targets.is_empty() && !exempt() {
        targets.into_iter().for_each(check_relation);
    }
}

/// Refuses (53400) a write into `relid` when it is in a marked schema
/// tenant's schema.
fn check_relation(relid: pg_sys::Oid) {
    let nsp = unsafe { pg_sys::get_rel_namespace(relid) };
    if let Some(m) = STATE.with(|s| s.borrow().schemas.get(&nsp).cloned()) {
        refuse(&m);
    }
}

/// The current tenant may write: true, or 53400 when it is a marked shared
/// tenant. The shared tables' policy calls it in its `WITH CHECK`, for each
/// row written, in the very context the row is checked in: a statement that
/// changes its tenant as it runs (a `set_tenant` in a subquery) is held to
/// the tenant its rows end up with. Not `SECURITY DEFINER`: who writes
/// decides whether the quota applies.
#[pg_extern(stable, parallel_safe)]
fn tenant_may_write() -> bool {
    if exempt() {
        return true;
    }
    if crate::gucs::TENANT_ID.get().is_none() {
        // a Citus worker node: whether the tenant was under its quota when
        // the coordinator sent its context
        if let Some(c) = crate::citus::tenant_context::on_worker() {
            if !c.may_write {
                refuse_on_worker(c.tenant);
            }
        }
        return true;
    }
    let marked = STATE.with(|s| {
        let id = crate::gucs::TENANT_ID.get()?;
        let bytes = tenancy_core::slug::uuid_bytes(id.to_str().ok()?)?;
        s.borrow().shared.get(&bytes).cloned()
    });
    if let Some(m) = marked {
        refuse(&m);
    }
    true
}

/// Whether a shared tenant's rows may be written now by this session: what
/// the coordinator sends to Citus's workers with the tenant's context.
pub fn shared_may_write(tenant: [u8; 16]) -> bool {
    exempt() || STATE.with(|s| !s.borrow().shared.contains_key(&tenant))
}

/// On a Citus worker node, which has no catalog: the tenant by its id.
fn refuse_on_worker(tenant: [u8; 16]) -> ! {
    raise_with(
        sqlstate("53400"),
        format!(
            "tenant {} is over its storage quota: writes are refused",
            pgrx::Uuid::from_bytes(tenant)
        ),
        Some("The coordinator marked it over its quota when the transaction set the tenant (refresh_metrics).".into()),
        Some("Delete rows, or raise max_storage_bytes (tenancy.bulk_update) on the coordinator.".into()),
    );
}

fn refuse(m: &Marked) -> ! {
    let pretty = |v: Option<i64>| v.map_or("?".to_string(), |b| format!("{b} bytes"));
    raise_with(
        sqlstate("53400"),
        format!(
            "tenant {:?} is over its storage quota: writes are refused",
            m.slug
        ),
        Some(format!(
            "It measured {} against max_storage_bytes {} (refresh_metrics, since {}).",
            pretty(m.size),
            pretty(m.max),
            m.since
        )),
        Some("Delete rows, or raise max_storage_bytes (tenancy.bulk_update); the next tenancy.refresh_metrics() that finds it under allows writes again.".into()),
    );
}

/// Nothing to check: no marked tenant, or a user the quotas do not apply to.
fn exempt() -> bool {
    if READING.with(|r| r.get()) {
        return true;
    }
    // the usual case, decided without a catalog look-up: nobody is marked
    if LOADED.with(|l| l.get()) && STATE.with(|s| no_one_marked(&s.borrow())) {
        return true;
    }
    // the owner role: the extension's own work, and the foreign keys'
    // cascades of a delete (PostgreSQL runs them as the table's owner)
    if unsafe { pg_sys::superuser() }
        || crate::roles::role_oid(&crate::roles::owner_role())
            == Some(unsafe { pg_sys::GetUserId() })
    {
        return true;
    }
    if !LOADED.with(|l| l.get()) {
        // only inside a transaction can the catalog be read
        if !unsafe { pg_sys::IsTransactionState() } {
            return true;
        }
        let generation = GENERATION.with(|g| g.get());
        // READING lets this module's own query through the hook; put back
        // whatever happens to the query (an error inside it, a cancel, the
        // stack's depth): a flag left set would exempt the session for good
        READING.with(|r| r.set(true));
        let state = PgTryBuilder::new(load)
            .finally(|| READING.with(|r| r.set(false)))
            .execute();
        STATE.with(|s| *s.borrow_mut() = state);
        LOADED.with(|l| l.set(GENERATION.with(|g| g.get()) == generation));
    }
    STATE.with(|s| no_one_marked(&s.borrow()))
}

fn no_one_marked(s: &State) -> bool {
    s.schemas.is_empty() && s.shared.is_empty()
}

#[cfg(feature = "pg15")]
#[pg_guard]
unsafe extern "C-unwind" fn check_perms(range_table: *mut pg_sys::List, ereport: bool) -> bool {
    if let Some(prev) = PREV_CHECK_PERMS {
        if !prev(range_table, ereport) {
            return false;
        }
    }
    if !ereport {
        return true;
    }
    let rtes = pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg(range_table);
    let targets: Vec<pg_sys::Oid> = rtes
        .iter_ptr()
        .filter(|rte| {
            let rte = &**rte;
            rte.rtekind == pg_sys::RTEKind::RTE_RELATION
                && writes(rte.requiredPerms, rte.updatedCols)
        })
        .map(|rte| (*rte).relid)
        .collect();
    check_writes(targets);
    true
}

#[cfg(not(feature = "pg15"))]
#[pg_guard]
unsafe extern "C-unwind" fn check_perms(
    range_table: *mut pg_sys::List,
    perm_infos: *mut pg_sys::List,
    ereport: bool,
) -> bool {
    if let Some(prev) = PREV_CHECK_PERMS {
        if !prev(range_table, perm_infos, ereport) {
            return false;
        }
    }
    if !ereport {
        return true;
    }
    let infos = pgrx::PgList::<pg_sys::RTEPermissionInfo>::from_pg(perm_infos);
    let targets: Vec<pg_sys::Oid> = infos
        .iter_ptr()
        .filter(|p| writes((**p).requiredPerms, (**p).updatedCols))
        .map(|p| (*p).relid)
        .collect();
    check_writes(targets);
    true
}
