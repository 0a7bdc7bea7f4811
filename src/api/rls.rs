//! Shared-table tenants: the tenant context (`set_tenant`) that RLS
//! policies read. (A template's shared schema is built by schema_builder.rs.)

use crate::error::{raise, raise_with, sqlstate};
use crate::guc_scope::{set_option, GucScope};
use pgrx::prelude::*;
use pgrx::Uuid;
use tenancy_core::ident::quote_ident;
use tenancy_core::TenancyError;

/// Sets a GUC for the session or, with `local`, the transaction; with the
/// privileges of this code (`tenancy.tenant_id` is superuser-only, so no
/// one sets it but `set_tenant`).
fn set_guc(name: &str, value: &str, local: bool) {
    let action = if local {
        pg_sys::GucAction::GUC_ACTION_LOCAL
    } else {
        pg_sys::GucAction::GUC_ACTION_SET
    };
    set_option(name, value, pg_sys::GucContext::PGC_SUSET, action);
}

/// The current tenant, or NULL: RLS policies compare their tenant column
/// with it, so they deny every row when it is unset. A function of the
/// library, not SQL over `current_setting`: calling it loads the library,
/// which defines `tenancy.tenant_id` as a superuser setting, so a value a
/// session set itself before (a placeholder anyone may set) is thrown away.
/// A tenant that is no longer active (suspended, archived, dropped since the
/// session set it) is NULL too. STABLE: an index scan evaluates it once.
#[pg_extern(stable, parallel_safe)]
fn current_tenant_id() -> Option<Uuid> {
    let Some(value) = crate::gucs::TENANT_ID.get() else {
        // a Citus worker node: the tenant the coordinator sent, if this
        // node's key signed it (the coordinator checked it was active)
        return crate::citus::tenant_context::on_worker().map(|c| Uuid::from_bytes(c.tenant));
    };
    let bytes = tenancy_core::slug::uuid_bytes(value.to_str().ok()?)?;
    let id = Uuid::from_bytes(bytes);
    // the extension's own work on a tenant that is not active (drop_tenant
    // deleting a suspended tenant's rows) runs as the owner role
    if crate::roles::in_owner_scope() {
        return Some(id);
    }
    if !active_tenant(bytes) {
        return None;
    }
    // a move of this tenant (move_tenant) holds it exclusively: the policy
    // waits for the move to commit rather than see half of it
    lock_tenant(bytes, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
    Some(id)
}

thread_local! {
    /// The tenant this transaction holds its lock on already (the policy
    /// calls current_tenant_id for every statement, an INSERT's check for
    /// every row): forgotten when the transaction ends or a subtransaction
    /// that may have taken it aborts (its locks go with it).
    static LOCKED: std::cell::Cell<Option<[u8; 16]>> = const { std::cell::Cell::new(None) };
}

/// The heavyweight lock that stands for one tenant: an object lock of this
/// database under the class of `tenancy.tenants`, keyed by the first six
/// bytes of the tenant's id (two tenants that share them only wait for each
/// other's moves). No SQL command takes such a lock, so only the library
/// holds it: sessions acting as the tenant in share mode, move_tenant
/// exclusively.
pub fn lock_tenant(bytes: [u8; 16], mode: pg_sys::LOCKMODE) {
    let shared = mode == pg_sys::AccessShareLock as pg_sys::LOCKMODE;
    if shared && LOCKED.with(|l| l.get()) == Some(bytes) {
        return;
    }
    let class = unsafe {
        let nsp = pg_sys::get_namespace_oid(c"tenancy".as_ptr(), true);
        pg_sys::get_relname_relid(c"tenants".as_ptr(), nsp)
    };
    if class == pg_sys::InvalidOid {
        return;
    }
    let tag = pg_sys::LOCKTAG {
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: class.to_u32(),
        locktag_field3: u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        locktag_field4: u16::from_be_bytes([bytes[4], bytes[5]]),
        locktag_type: pg_sys::LockTagType::LOCKTAG_OBJECT as u8,
        locktag_lockmethodid: pg_sys::DEFAULT_LOCKMETHOD as u8,
    };
    if !shared {
        unsafe { pg_sys::LockAcquire(&tag, mode, false, false) };
        return;
    }
    let got = unsafe { pg_sys::LockAcquire(&tag, mode, false, true) };
    if got == pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL {
        // a move of this tenant held it: this statement was planned (its
        // privileges checked, its tables chosen) before the tenant moved,
        // so it must not go on; the next attempt sees where the tenant is
        unsafe { pg_sys::LockAcquire(&tag, mode, false, false) };
        raise_with(
            sqlstate("40001"),
            "the tenant of this session was moved while this statement waited".to_string(),
            Some("tenancy.move_tenant held the tenant; what the statement read or wrote is no longer where it looked.".into()),
            Some("Run the transaction again, after tenancy.set_tenant.".into()),
        );
    }
    LOCKED.with(|l| l.set(Some(bytes)));
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_lock_at_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
            | XACT_EVENT_PREPARE
    ) {
        LOCKED.with(|l| l.set(None));
        crate::citus::tenant_context::forget_at_end();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_lock_at_sub_abort(
    event: pg_sys::SubXactEvent::Type,
    _mine: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        LOCKED.with(|l| l.set(None));
    }
}

/// The tenants whose status this backend has looked up (is each active?),
/// and the OID of `tenancy.tenants`: forgotten when that table's relcache
/// entry is invalidated, which suspend, resume and drop do for it when they
/// commit (`tenancy._tenants_changed`). Bounded: a pooler's connection that
/// serves many tenants keeps at most `KNOWN_MAX` of them.
struct Known {
    tenants_rel: pg_sys::Oid,
    status: std::collections::HashMap<[u8; 16], bool>,
}

const KNOWN_MAX: usize = 4096;

thread_local! {
    static KNOWN: std::cell::RefCell<Known> = std::cell::RefCell::new(Known {
        tenants_rel: pg_sys::InvalidOid,
        status: std::collections::HashMap::new(),
    });
}

/// Records what this backend just read of a tenant (set_tenant reads its
/// status anyway: the policy's first query then needs no look-up).
fn know_tenant(bytes: [u8; 16], active: bool) {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if k.status.len() >= KNOWN_MAX {
            k.status.clear();
        }
        k.status.insert(bytes, active);
    });
}

fn active_tenant(bytes: [u8; 16]) -> bool {
    if let Some(active) = KNOWN.with(|k| k.borrow().status.get(&bytes).copied()) {
        return active;
    }
    let (active, rel) = crate::roles::as_superuser(|| {
        let active = crate::catalog::one_or_none(Spi::get_one_with_args::<bool>(
            "SELECT status OPERATOR(pg_catalog.=) 'active' FROM tenancy.tenants \
             WHERE id OPERATOR(pg_catalog.=) $1",
            &[Uuid::from_bytes(bytes).into()],
        ))
        .unwrap_or(false);
        let rel = crate::catalog::one_or_none(Spi::get_one::<pg_sys::Oid>(
            "SELECT pg_catalog.to_regclass('tenancy.tenants')::pg_catalog.oid",
        ))
        .unwrap_or(pg_sys::InvalidOid);
        (active, rel)
    });
    KNOWN.with(|k| k.borrow_mut().tenants_rel = rel);
    know_tenant(bytes, active);
    active
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_known_tenant(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    KNOWN.with(|k| {
        let mut k = k.borrow_mut();
        if relid == pg_sys::InvalidOid || relid == k.tenants_rel {
            k.status.clear();
        }
    });
}

/// Called from `_PG_init`: every backend that loads the library forgets
/// what it knew of tenants' status when the catalog changes, and which
/// tenant lock it holds when its transaction ends.
pub fn register_invalidation() {
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(Some(forget_known_tenant), pg_sys::Datum::from(0));
        pg_sys::RegisterXactCallback(Some(forget_lock_at_end), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(forget_lock_at_sub_abort), std::ptr::null_mut());
    };
}

/// Tells every session, when this transaction commits, that a tenant's
/// status changed (they look it up again before trusting their context).
#[pg_extern(name = "_tenants_changed")]
fn tenants_changed() {
    let oid = crate::catalog::one_or_none(Spi::get_one::<pg_sys::Oid>(
        "SELECT 'tenancy.tenants'::pg_catalog.regclass::pg_catalog.oid",
    ));
    if let Some(oid) = oid {
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(oid) };
    }
}

/// Sets the tenant of this transaction (or, with `is_local => false`, of
/// the session): what `tenancy.current_tenant_id()` returns and RLS policies
/// compare with; for a schema tenant also the `search_path`. The caller must
/// be a member of the tenant's role or of this database's admin role; a
/// suspended, archived or dropped tenant cannot be set. NULL clears the context.
#[pg_extern(name = "set_tenant")]
fn set_tenant(tenant: Option<&str>, is_local: default!(bool, true)) -> Option<Uuid> {
    let Some(tenant) = tenant else {
        crate::citus::tenant_context::send(None);
        set_guc("tenancy.tenant_id", "", is_local);
        return None;
    };
    let caller = unsafe { pg_sys::GetOuterUserId() };
    let admin = crate::roles::admin_role();
    let found = {
        // our own queries run with a safe path; the caller's comes back after
        let scope = GucScope::new();
        scope.set("search_path", "pg_catalog, pg_temp");
        // planned once per backend (src/kept_plans.rs): a pooler's client
        // calls this at the start of every transaction
        crate::kept_plans::run(
            "SELECT t.id, t.slug, t.status::text, t.isolation, t.schema_name::text, \
                    (EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = $3) AND pg_has_role($2, $3, 'MEMBER')) \
                    OR (t.role_name IS NOT NULL AND EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = t.role_name) \
                        AND pg_has_role($2, t.role_name, 'MEMBER')) \
             FROM tenancy.tenants t WHERE t.id = $1",
            &[
                crate::catalog::tenant_id_of(tenant).into(),
                caller.into(),
                admin.as_str().into(),
            ],
            |rows| {
                if rows.is_empty() {
                    return Ok(None);
                }
                let r = rows.first();
                Ok(Some((
                    r.get::<Uuid>(1).ok().flatten(),
                    r.get::<String>(2).ok().flatten().unwrap_or_default(),
                    r.get::<String>(3).ok().flatten().unwrap_or_default(),
                    r.get::<String>(4).ok().flatten().unwrap_or_default(),
                    r.get::<String>(5).ok().flatten(),
                    r.get::<bool>(6).ok().flatten().unwrap_or(false),
                )))
            },
        )
    };
    // Who may not act as the tenant learns nothing of it: not its slug (from
    // an id), not whether it exists (the same 42501 either way).
    let denied = || -> ! {
        raise_with(
            sqlstate("42501"),
            format!("permission denied to act as tenant {tenant:?}"),
            None,
            Some(format!(
                "Grant the tenant's role (tenancy.tenants.role_name) or {admin} to the role that calls set_tenant."
            )),
        )
    };
    let Some((Some(id), slug, status, isolation, schema, allowed)) = found else {
        if may_see_every_tenant(caller, &admin) {
            raise(TenancyError::UnknownTenant(tenant.to_string()));
        }
        denied()
    };
    if !allowed {
        denied();
    }
    if status != "active" {
        raise(TenancyError::WrongStatus {
            slug,
            status,
            action: "setting it as the current tenant".into(),
        });
    }
    if isolation == "shared" && crate::citus::installed() {
        // the shared tables are on Citus's workers: the context goes there
        // with the transaction (src/citus/tenant_context.rs)
        if !is_local {
            crate::citus::tenant_context::refuse_session_context(&slug);
        }
        let may_write = crate::quota::shared_may_write(*id.as_bytes());
        crate::citus::tenant_context::send(Some((id, may_write)));
    } else {
        crate::citus::tenant_context::send(None);
    }
    set_guc("tenancy.tenant_id", &id.to_string(), is_local);
    // only once the table's OID is known can an invalidation of it be told
    // from others: until then current_tenant_id looks the tenant up itself
    if KNOWN.with(|k| k.borrow().tenants_rel != pg_sys::InvalidOid) {
        know_tenant(*id.as_bytes(), true);
    }
    if isolation == "schema" {
        if let Some(schema) = schema {
            set_guc(
                "search_path",
                &format!("{}, public", quote_ident(&schema)),
                is_local,
            );
        }
    }
    Some(id)
}

/// A superuser or a member of this database's admin role.
fn may_see_every_tenant(caller: pg_sys::Oid, admin: &str) -> bool {
    // set_tenant runs with the caller's search_path: not for our queries
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    crate::catalog::one_or_none(Spi::get_one_with_args::<bool>(
        "SELECT r.rolsuper OR (EXISTS (SELECT 1 FROM pg_catalog.pg_roles a WHERE a.rolname = $2) \
                               AND pg_catalog.pg_has_role($1, $2, 'MEMBER')) \
         FROM pg_catalog.pg_roles r WHERE r.oid = $1",
        &[caller.into(), admin.into()],
    ))
    .unwrap_or(false)
}
