//! The background worker: a launcher (one per cluster, connected to no
//! database) starts a scheduler in every database where the extension is
//! created; a scheduler starts item workers that process the queue.
//!
//! ```text
//! launcher ──> scheduler (per database) ──> item workers (≤ tenancy.max_workers)
//! ```
//!
//! They meet in shared memory: a slot per database holds the scheduler's
//! latch, so a committed batch wakes it at once (backends cannot NOTIFY a
//! worker), and whether the database has the extension, so the launcher does
//! not keep connecting to databases without it.

mod hooks;
mod item;
mod launcher;
mod scheduler;
pub mod shmem;

use pgrx::bgworkers::{BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime};
use pgrx::prelude::*;
use std::time::Duration;

pub const LAUNCHER_TYPE: &str = "tenancy launcher";
pub const SCHEDULER_TYPE: &str = "tenancy scheduler";
pub const ITEM_WORKER_TYPE: &str = "tenancy item worker";

/// A dynamic worker that runs or is about to.
pub fn alive(h: &pgrx::bgworkers::DynamicBackgroundWorker) -> bool {
    matches!(
        h.pid(),
        Ok(_) | Err(pgrx::bgworkers::BackgroundWorkerStatus::NotYetStarted)
    )
}

/// Called from `_PG_init` when loaded by `shared_preload_libraries`.
pub fn init_preloaded() {
    shmem::init();
    hooks::install();
    BackgroundWorkerBuilder::new(LAUNCHER_TYPE)
        .set_type(LAUNCHER_TYPE)
        .set_function("tenancy_launcher_main")
        .set_library("tenancy")
        .enable_shmem_access(None)
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Wakes this database's scheduler when the current transaction commits
/// (a new batch, a new extension). Does nothing without the preloaded worker.
pub fn wake_on_commit() {
    if !shmem::ready() {
        return;
    }
    let db = unsafe { pg_sys::MyDatabaseId };
    pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
        shmem::wake_database(db);
    });
}

/// The settings of every worker session, over whatever the database or a
/// role set: a database owner's `ALTER DATABASE ... SET` (a search_path
/// ahead of an operator of its own, `application_name = pg_restore`, a
/// tablespace it cannot use) must neither reach code that runs as the
/// superuser nor stop it. Every setting that came from the database or a
/// role goes back to the server's own value; then a search path of the
/// system catalog alone, and a lock timeout so that the worker gives way to
/// a DBA (a lock it waits for longer than this makes its statement fail and
/// the work is retried later, well before the 1 s deadlock check could pick
/// a DROP EXTENSION as its victim).
pub fn session_settings() {
    let from_database = BackgroundWorker::transaction(|| {
        Spi::connect(|c| {
            let rows = c.select(
                "SELECT s.name::text, coalesce((SELECT f.setting FROM pg_catalog.pg_file_settings f \
                     WHERE f.name OPERATOR(pg_catalog.=) s.name AND f.applied \
                     ORDER BY f.seqno DESC LIMIT 1), s.boot_val)::text \
                 FROM pg_catalog.pg_settings s \
                 WHERE s.source OPERATOR(pg_catalog.=) ANY ('{database,user,database user}'::text[])",
                None,
                &[],
            )?;
            let mut out = Vec::new();
            for r in rows {
                if let (Some(n), Some(v)) = (r.get::<String>(1)?, r.get::<String>(2)?) {
                    out.push((n, v));
                }
            }
            Ok::<_, pgrx::spi::Error>(out)
        })
        .unwrap_or_default()
    });
    for (name, value) in &from_database {
        crate::guc_scope::set_option(
            name,
            value,
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucAction::GUC_ACTION_SET,
        );
    }
    for (name, value) in [
        ("search_path", "pg_catalog, pg_temp"),
        ("application_name", "tenancy worker"),
        ("lock_timeout", "500ms"),
        ("statement_timeout", "0"),
        ("idle_in_transaction_session_timeout", "0"),
        ("default_transaction_read_only", "off"),
        ("default_transaction_isolation", "read committed"),
        ("default_tablespace", ""),
        ("temp_tablespaces", ""),
        ("default_table_access_method", "heap"),
        ("row_security", "on"),
    ] {
        crate::guc_scope::set_option(
            name,
            value,
            pg_sys::GucContext::PGC_SUSET,
            pg_sys::GucAction::GUC_ACTION_SET,
        );
    }
}

/// One unit of queued work in a transaction of its own: a claim of batch
/// items first (src/queue.rs), then a warm-pool schema, then a chunk of a
/// dropped tenant's schema.
/// False when there was nothing to do (or the transaction failed).
pub fn do_queued_work(what: &str) -> bool {
    try_transaction(what, || {
        // a database not yet updated from a version before 0.4.0 has the
        // PL/pgSQL runner, one item per call: served as it is until then
        let runner = Spi::get_one::<bool>(
            "SELECT pg_catalog.to_regprocedure('tenancy._process_next(integer)') IS NOT NULL",
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        let sql = if runner {
            "SELECT tenancy._process_next(NULL) > 0 OR tenancy._pool_work() OR tenancy._trash_work()"
        } else {
            "SELECT tenancy._process_next() OR tenancy._pool_work() OR tenancy._trash_work()"
        };
        Spi::get_one::<bool>(sql).ok().flatten().unwrap_or(false)
    })
    .unwrap_or(false)
}

/// The worker fence: a lock taken by every worker transaction, and
/// exclusively by `DROP EXTENSION tenancy` and `ALTER EXTENSION tenancy
/// UPDATE` (see hooks.rs), that keeps either from starting while a worker
/// transaction is under way. A table lock, not an advisory one: a session
/// without privileges cannot take it (LOCK TABLE checks them first).
const WORKER_FENCE_SHARED: &str = "LOCK TABLE tenancy.jobs IN ROW SHARE MODE";
const WORKER_FENCE_EXCLUSIVE: &str = "LOCK TABLE tenancy.jobs IN ACCESS EXCLUSIVE MODE";

/// Taken by the drop or update before it takes any lock of its own.
pub fn take_worker_fence() {
    Spi::run(WORKER_FENCE_EXCLUSIVE).unwrap_or_else(|e| pgrx::error!("tenancy: worker fence: {e}"));
}

/// Worker transactions take the fence first: a DROP EXTENSION or an
/// update waits for the one under way, and makes the next one wait, then
/// fail on lock_timeout and retry later, instead of the two taking each
/// other's locks in opposite orders (a deadlock).
fn hold_off_extension_changes() {
    let installed =
        Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('tenancy.jobs') IS NOT NULL")
            .ok()
            .flatten()
            .unwrap_or(false);
    if installed {
        Spi::run(WORKER_FENCE_SHARED)
            .unwrap_or_else(|e| pgrx::error!("tenancy: worker fence: {e}"));
    }
}

/// Runs `f` in a transaction of its own; an ERROR inside aborts that
/// transaction and is logged instead of ending the process.
pub fn try_transaction<R, F>(what: &str, f: F) -> Option<R>
where
    F: FnOnce() -> R + std::panic::UnwindSafe + std::panic::RefUnwindSafe,
{
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let result = PgTryBuilder::new(|| {
        hold_off_extension_changes();
        Some(f())
    })
    .catch_others(|e| {
        let msg = match &e {
            pgrx::pg_sys::panic::CaughtError::PostgresError(r)
            | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
            pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                ereport.message().to_string()
            }
        };
        log!("tenancy: {what} skipped: {msg}");
        None
    })
    .execute();
    unsafe {
        if result.is_some() {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        } else {
            pg_sys::AbortCurrentTransaction();
        }
    }
    result
}
