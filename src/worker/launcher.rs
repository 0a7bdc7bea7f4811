//! The launcher: connected to no database (so it never stands in the way of
//! a DROP DATABASE), it lists databases from the shared catalog and keeps a
//! scheduler running in each one that has the extension.

use super::shmem::{self, SHARED};
use super::{LAUNCHER_TYPE, SCHEDULER_TYPE};
use crate::gucs;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

/// Databases that accept connections, read with a catalog scan: SPI needs a
/// database, and connecting to one would block dropping it.
fn list_databases() -> Vec<pg_sys::Oid> {
    let mut out = Vec::new();
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let data = (*tup).t_data;
            let form = (data as *const u8).add((*data).t_hoff as usize)
                as *const pg_sys::FormData_pg_database;
            if (*form).datallowconn && !(*form).datistemplate {
                out.push((*form).oid);
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::CommitTransactionCommand();
    }
    out
}

fn start_scheduler(db: pg_sys::Oid) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("{SCHEDULER_TYPE} {}", db.to_u32()))
        .set_type(SCHEDULER_TYPE)
        .set_function("tenancy_scheduler_main")
        .set_library("tenancy")
        .enable_spi_access()
        .set_extra(&db.to_u32().to_string())
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .set_restart_time(None)
        .load_dynamic()
        .ok()
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    SHARED.exclusive().launcher_latch = shmem::my_latch();
    log!("{LAUNCHER_TYPE} started");

    let mut schedulers: HashMap<u32, DynamicBackgroundWorker> = HashMap::new();
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        let databases = list_databases();
        let now = shmem::now_ms();
        let mut to_start = Vec::new();
        {
            let mut s = SHARED.exclusive();
            // forget databases that are gone
            for slot in s.slots.iter_mut() {
                if slot.db_oid != 0 && !databases.iter().any(|d| d.to_u32() == slot.db_oid) {
                    *slot = shmem::DbSlot::default();
                }
            }
            for db in &databases {
                let oid = db.to_u32();
                let Some(i) = shmem::slot_index(&mut s, oid, true) else {
                    continue;
                };
                let slot = &mut s.slots[i];
                let running = schedulers.get(&oid).is_some_and(super::alive);
                if running || slot.paused_until_ms > now {
                    continue;
                }
                // a database known to lack the extension waits for CREATE EXTENSION
                if slot.extension == shmem::Extension::Absent && !slot.wake {
                    continue;
                }
                slot.wake = false;
                to_start.push(*db);
            }
        }
        for db in to_start {
            match start_scheduler(db) {
                Some(h) => {
                    schedulers.insert(db.to_u32(), h);
                }
                None => break, // no free worker slot: try again next round
            }
        }
        schedulers.retain(|_, h| super::alive(h));
        let nap = Duration::from_millis(gucs::NAPTIME_MS.get().max(100) as u64);
        if !BackgroundWorker::wait_latch(Some(nap)) {
            break;
        }
    }
    SHARED.exclusive().launcher_latch = 0;
}
