//! An item worker: provisions queued items, one per transaction, until the
//! queue has nothing ready or it has done `tenancy.worker_recycle_after`
//! items; then it exits so that no backend's relation cache grows without
//! bound. SIGTERM (pg_terminate_backend, DROP DATABASE) kills it at once; its
//! item then stays queued, with nothing of the tenant made.

use crate::gucs;
use pgrx::bgworkers::*;
use pgrx::prelude::*;

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_item_worker_main(_arg: pg_sys::Datum) {
    // only SIGHUP: the default SIGTERM handler ends the process mid-item
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP);
    let db: u32 = BackgroundWorker::get_extra().parse().unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);

    let mut done = 0;
    while done < gucs::RECYCLE_AFTER.get() {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let processed = BackgroundWorker::transaction(|| {
            Spi::get_one::<bool>("SELECT tenancy._process_next()")
                .ok()
                .flatten()
                .unwrap_or(false)
        });
        if !processed {
            break;
        }
        done += 1;
    }
    BackgroundWorker::transaction(|| {
        let _ = Spi::run("SELECT tenancy._finalize_batches()");
    });
}
