//! A shared tenant's context on Citus's worker nodes.
//!
//! The shared tables are distributed by `tenant_id` (mod.rs), so a shared
//! tenant's statements run on the workers, over connections Citus opens as
//! the user running them, where the shards' policies call
//! `tenancy.current_tenant_id()`. That reads `tenancy.tenant_id`, which only
//! `set_tenant` sets and Citus does not send. So `set_tenant` also sets
//! `tenancy.tenant_proof` with a `SET LOCAL` that Citus propagates to the
//! workers of the transaction (`citus.propagate_set_commands = local`, for
//! that statement only): the tenant's id and whether it may write, with a
//! MAC for each worker group made with that node's own key
//! (`tenancy.node_key`, made by `CREATE EXTENSION` on each node and fetched
//! by the coordinator into `tenancy.citus_node_keys`). A worker believes a
//! proof only with a MAC its key made, so no session can name a tenant there
//! that it could not set on the coordinator. On the coordinator no session
//! sets the proof itself, whatever it calls itself (the check hook below),
//! nor reads it (`GUC_SUPERUSER_ONLY`).

use crate::error::{raise_with, sqlstate, OrRaise};
use crate::guc_scope::GucScope;
use pgrx::prelude::*;
use pgrx::Uuid;
use std::cell::{Cell, RefCell};
use tenancy_core::proof::{self, Context};

thread_local! {
    /// Our own `SET LOCAL tenancy.tenant_proof` is running: the check hook lets it.
    static SETTING: Cell<bool> = const { Cell::new(false) };
    /// The last proof this backend checked and what it said, for this
    /// transaction only (a policy calls current_tenant_id per statement).
    static CHECKED: RefCell<Option<(String, Option<Context>)>> = const { RefCell::new(None) };
    /// This node's Citus group and key, once read.
    static NODE: RefCell<Option<(i32, Vec<u8>)>> = const { RefCell::new(None) };
}

/// The workers' keys the coordinator has (none without Citus, or before
/// `_citus_sync_keys` ran).
fn worker_keys() -> Vec<(i32, String)> {
    crate::roles::as_superuser(|| {
        Spi::connect(|c| {
            c.select(
                "SELECT groupid, key FROM tenancy.citus_node_keys ORDER BY groupid",
                None,
                &[],
            )
            .map(|rows| {
                rows.filter_map(|r| Some((r.get::<i32>(1).ok()??, r.get::<String>(2).ok()??)))
                    .collect()
            })
        })
        .or_raise()
    })
}

/// Sends the context of `tenant` (None: no tenant) to the worker nodes of
/// this transaction, and of its connections opened later, where Citus holds
/// this database's shared tables. Nothing without Citus.
pub fn send(tenant: Option<(Uuid, bool)>) {
    if !super::installed() {
        return;
    }
    let keys = worker_keys();
    if keys.is_empty() {
        return;
    }
    let value = tenant.map_or_else(String::new, |(id, w)| {
        proof::make(&id.to_string(), w, &keys)
    });
    set_proof(&value);
}

/// For the extension's own work on a tenant's rows (as the owner role, in
/// that tenant's context): sends the tenant's context to the workers and
/// returns the proof to put back (`set_proof`) when the work is done; None
/// where nothing was sent.
pub fn send_for_own_work(tenant: Uuid) -> Option<String> {
    if !super::installed() {
        return None;
    }
    let keys = worker_keys();
    if keys.is_empty() {
        return None;
    }
    let before = current_proof();
    set_proof(&proof::make(&tenant.to_string(), true, &keys));
    Some(before)
}

/// The proof this session holds now ('' for none), to put back with
/// `set_proof` after code that acted as another tenant.
pub fn current_proof() -> String {
    crate::gucs::TENANT_PROOF
        .get()
        .and_then(|v| v.to_str().ok().map(str::to_string))
        .unwrap_or_default()
}

/// `SET LOCAL tenancy.tenant_proof`, run so that Citus sees it and sends it
/// on (only a statement reaches its utility hook, not set_config_option).
/// It sends it to the connections of the transaction and to those it opens
/// later in it, and forgets it when the transaction ends.
pub fn set_proof(proof: &str) {
    struct Setting;
    impl Drop for Setting {
        fn drop(&mut self) {
            SETTING.with(|s| s.set(false));
        }
    }
    let scope = GucScope::new();
    scope.set("citus.propagate_set_commands", "local");
    SETTING.with(|s| s.set(true));
    let guard = Setting;
    // Citus sends a SET LOCAL on only inside what it takes for a
    // multi-statement transaction: a transaction block, a procedure, a DO
    // block; not a function an autocommit statement calls (health(tenant),
    // drop_tenant). Hence the DO block. The value is ours: hex digits, a
    // uuid, ':', '=' and ','.
    Spi::run(&format!(
        "DO $tenancy$ BEGIN SET LOCAL tenancy.tenant_proof = {}; END $tenancy$",
        tenancy_core::ident::quote_literal(proof)
    ))
    .or_raise();
    drop(guard);
    drop(scope);
    if !proof.is_empty() {
        use_coordinated_transaction();
    }
}

/// Has Citus run the rest of this transaction's work on the workers inside
/// remote transactions, which begin with the SET LOCALs it holds: a
/// one-statement read outside a transaction block would otherwise go
/// without one, and without the proof. Citus's C function for that
/// (UseCoordinatedTransaction) is not exported; its SQL function
/// create_intermediate_result calls it first, and an empty result of this
/// name, in the transaction's own directory, goes with the transaction.
fn use_coordinated_transaction() {
    Spi::run(
        "SELECT pg_catalog.create_intermediate_result('tenancy_context', 'SELECT 1 WHERE false')",
    )
    .or_raise();
}

/// On a worker node: the tenant the session's proof names, if this node's
/// key made its MAC. None without a proof, or with one this node did not
/// sign (forged, or for another node's key): the policies then see no
/// tenant and let no row through.
pub fn on_worker() -> Option<Context> {
    let held = current_proof();
    if held.is_empty() {
        return None;
    }
    if let Some(known) = CHECKED.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(p, _)| *p == held)
            .map(|(_, ctx)| *ctx)
    }) {
        return known;
    }
    let (group, key) = node()?;
    let ctx = proof::read(&held, group, &key);
    CHECKED.with(|c| *c.borrow_mut() = Some((held, ctx)));
    ctx
}

/// This node's Citus group and key (None on a node that is no Citus
/// worker: the coordinator, group 0, acts on `tenancy.tenant_id` alone).
fn node() -> Option<(i32, Vec<u8>)> {
    if let Some(n) = NODE.with(|n| n.borrow().clone()) {
        return Some(n);
    }
    if !super::installed() {
        return None;
    }
    let (group, key) = crate::roles::as_superuser(|| {
        let group = Spi::get_one::<i32>("SELECT groupid FROM pg_catalog.pg_dist_local_group")
            .ok()
            .flatten();
        let key = Spi::get_one::<String>("SELECT key FROM tenancy.node_key")
            .ok()
            .flatten();
        (group, key)
    });
    let n = (group.filter(|g| *g != 0)?, key?.into_bytes());
    NODE.with(|c| *c.borrow_mut() = Some(n.clone()));
    Some(n)
}

/// Forgets the checked proof when the transaction ends (the next one sets
/// its own).
pub fn forget_at_end() {
    CHECKED.with(|c| *c.borrow_mut() = None);
}

/// The check hook of `tenancy.tenant_proof`: a session sets it only through
/// `set_tenant` on the coordinator, or on a worker node over a connection
/// of Citus's, which sends the coordinator's `SET LOCAL`, in a transaction.
/// Not on the coordinator, whatever its application_name: Citus would send
/// it on to the workers, and a tenant that saw its own proof (Citus's
/// `log_remote_commands`) could set it again in a later transaction. An
/// empty value (none) is always allowed.
#[pg_guard]
pub unsafe extern "C-unwind" fn check_proof(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let empty = newval.is_null() || (*newval).is_null() || *(*newval) == 0;
    if empty
        || SETTING.with(|s| s.get())
        || (citus_connection() && pg_sys::IsTransactionState() && node().is_some())
    {
        return true;
    }
    pg_sys::GUC_check_errcode(pgrx::PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE as i32);
    pg_sys::GUC_check_errdetail_string = pg_sys::pstrdup(
        c"tenancy.tenant_proof is set by tenancy.set_tenant on the Citus coordinator, which Citus sends to the worker nodes."
            .as_ptr(),
    );
    false
}

/// The session is one Citus opened to this node (its application_name says
/// so; Citus's own internal functions trust the same sign). That alone gives
/// nothing: a proof is believed only with this node's MAC, and only on a
/// worker node.
fn citus_connection() -> bool {
    let name = unsafe { pg_sys::application_name };
    !name.is_null()
        && unsafe { std::ffi::CStr::from_ptr(name) }
            .to_bytes()
            .starts_with(b"citus_internal gpid=")
}

/// Fails with 0A000: on Citus a shared tenant's context reaches the workers
/// only with the transaction's `SET LOCAL`, which Citus sends; a session's
/// `SET` it does not.
pub fn refuse_session_context(slug: &str) -> ! {
    raise_with(
        sqlstate("0A000"),
        format!("on Citus the shared tenant {slug:?} is set per transaction"),
        Some("Citus sends a transaction's SET LOCAL to the worker nodes that hold the shared tables, not a session's SET.".into()),
        Some("Call tenancy.set_tenant(tenant) inside the transaction (BEGIN; SELECT tenancy.set_tenant(...); ...; COMMIT), as with a pooler in transaction mode.".into()),
    )
}
