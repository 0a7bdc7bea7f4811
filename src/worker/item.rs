//! An item worker: provisions queued items, one per transaction, until the
//! queue has nothing ready or it has done `tenancy.worker_recycle_after`
//! items; then it exits so that no backend's relation cache grows without
//! bound. SIGTERM (pg_terminate_backend, DROP DATABASE) ends it mid-item; its
//! item then stays queued, with nothing of the tenant made.

use crate::gucs;
use pgrx::bgworkers::*;
use pgrx::prelude::*;

extern "C-unwind" {
    /// PostgreSQL's own SIGTERM handler of client backends (`die`), by its
    /// C symbol: pgrx's `pg_sys::die` is a Rust wrapper, not a signal handler.
    #[link_name = "die"]
    fn postgres_die(signal: std::ffi::c_int);
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_item_worker_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    // SIGTERM as for a client backend: FATAL at the next interrupt check, so
    // the item's transaction aborts (bgworker_die, the default, would exit
    // from inside the signal handler, wherever the process happens to be)
    // (PostgreSQL 18 renamed the backend's pqsignal to pqsignal_be)
    #[cfg(not(feature = "pg18"))]
    unsafe {
        pg_sys::pqsignal(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    #[cfg(feature = "pg18")]
    unsafe {
        pg_sys::pqsignal_be(pg_sys::SIGTERM as i32, Some(postgres_die));
    }
    let db: u32 = BackgroundWorker::get_extra().parse().unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    super::session_settings();

    let mut done = 0;
    while done < gucs::RECYCLE_AFTER.get() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let processed = super::do_queued_work("queue item");
        if !processed {
            break;
        }
        done += 1;
    }
    super::try_transaction("batch finalization", || {
        let _ = Spi::run("SELECT tenancy._finalize_batches()");
    });
}
