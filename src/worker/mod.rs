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

use pgrx::bgworkers::{BackgroundWorkerBuilder, BgWorkerStartTime};
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
