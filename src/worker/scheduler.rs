//! The scheduler of one database: checks that the extension is there (and
//! exits when it is not, or when it is dropped), starts item workers while
//! the queue has ready items, and gives finished batches their status.

use super::shmem::{self, SHARED};
use super::ITEM_WORKER_TYPE;
use crate::gucs;
use pgrx::bgworkers::*;
use pgrx::prelude::*;
use std::time::Duration;

fn extension_installed() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'tenancy')",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// pg_restore is filling this database: the worker must not make partitions,
/// pool schemas or tenants that the dump is about to create itself. Only a
/// superuser's client session counts (restoring the extension takes one):
/// anyone can name their session pg_restore. And not when a setting of the
/// database (or a role in it) names every session: its owner could so make
/// the superuser's own sessions look like a restore.
fn being_restored() -> bool {
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a \
         JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.usesysid AND r.rolsuper \
         WHERE a.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() \
           AND a.backend_type OPERATOR(pg_catalog.=) 'client backend' \
           AND a.application_name OPERATOR(pg_catalog.=) 'pg_restore') \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c \
                         WHERE s.setdatabase OPERATOR(pg_catalog.=) ANY (ARRAY[0::oid, (SELECT d.oid FROM pg_catalog.pg_database d \
                                   WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())]) \
                           AND c OPERATOR(pg_catalog.~*) '^application_name=')",
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// A database restored from another database's dump: what the source's
/// roles own and hold here becomes this database's roles'
/// (`tenancy.after_restore`), so that the code run as the owner role can
/// reach the restored tenants. Nothing to do, almost always: a look at the
/// tenancy roles' dependencies in this database. A catalog older than the
/// function is left alone.
fn adopt_restored_objects() {
    let present = Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regprocedure('tenancy.after_restore()') IS NOT NULL",
    );
    if present.ok().flatten() != Some(true) {
        return;
    }
    let moved = Spi::get_one::<String>(
        "SELECT pg_catalog.string_agg(pg_catalog.format('%s to %s: %s owned, %s granted', \
                source_role, this_role, owned, grants), '; ') FROM tenancy.after_restore()",
    );
    if let Ok(Some(moved)) = moved {
        log!("tenancy: restored from another database's dump, roles moved: {moved}");
    }
}

fn start_item_worker(db: u32) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(&format!("{ITEM_WORKER_TYPE} {db}"))
        .set_type(ITEM_WORKER_TYPE)
        .set_function("tenancy_item_worker_main")
        .set_library("tenancy")
        .enable_spi_access()
        .set_extra(&db.to_string())
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .set_restart_time(None)
        .load_dynamic()
        .ok()
}

fn publish(db: u32, extension: shmem::Extension, latch: usize) {
    let mut s = SHARED.exclusive();
    if let Some(i) = shmem::slot_index(&mut s, db, true) {
        let slot = &mut s.slots[i];
        slot.extension = extension;
        slot.scheduler_latch = latch;
        slot.scheduler_pid = if latch != 0 {
            unsafe { pg_sys::MyProcPid }
        } else {
            0
        };
        if latch != 0 {
            slot.wake = false;
        }
    }
}

/// After a pass failed on a lock (a DROP EXTENSION or a DBA's ALTER waiting
/// for its turn), hold nothing for a while so that it goes first; false when
/// the scheduler should stop.
fn give_way() -> bool {
    BackgroundWorker::wait_latch(Some(Duration::from_secs(2)))
}

/// Up to 10 units of queued work in the scheduler itself (no worker slot was
/// free); returns how many it did.
fn run_items_here() -> i32 {
    let mut done = 0;
    while done < 10 && super::do_queued_work("queue item (in the scheduler)") {
        done += 1;
    }
    done
}

/// One look at the queue, after the batches' final status is written: how
/// many units of work are ready now (queued items, plus one if the pool or
/// a dropped tenant's tables want work) and how many items wait for a
/// retry. None when the transaction failed (a lock not had in time).
fn queue_demand() -> Option<(i32, i32)> {
    super::try_transaction("queue pass", || {
        Spi::connect_mut(|c| {
            c.update("SELECT tenancy._finalize_batches()", None, &[])?;
            let row = c.select(
                "SELECT d.ready + least(tenancy._pool_deficit() \
                     + (SELECT count(*) FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner \
                        WHERE n.nspname LIKE 'tenancy\\_trash\\_%' AND (r.rolsuper \
                          OR r.rolname = 'tenancy_owner_' || (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())::text))::int, 1), \
                        d.waiting \
                 FROM tenancy._queue_demand() d",
                None,
                &[],
            )?;
            let row = row.first();
            Ok::<_, pgrx::spi::Error>((
                row.get::<i32>(1)?.unwrap_or(0),
                row.get::<i32>(2)?.unwrap_or(0),
            ))
        })
        .unwrap_or((0, 0))
    })
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn tenancy_scheduler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let db: u32 = BackgroundWorker::get_extra().parse().unwrap_or(0);
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(db)), None);
    super::session_settings();

    if !BackgroundWorker::transaction(extension_installed) {
        publish(db, shmem::Extension::Absent, 0);
        return;
    }
    publish(db, shmem::Extension::Installed, shmem::my_latch());

    let mut workers: Vec<DynamicBackgroundWorker> = Vec::new();
    let mut done_inline = 0;
    let mut recycle = false;
    // looked at when the scheduler starts and after each restore, and again
    // a while after it failed (a session holding a lock on a restored table
    // past lock_timeout): when, if it is still to do
    let mut adopt_due: Option<std::time::Instant> = Some(std::time::Instant::now());
    // the Citus workers' keys (src/citus/tenant_context.rs): at start, then
    // every few minutes for a node added since
    let mut keys_due = std::time::Instant::now();
    loop {
        if BackgroundWorker::sighup_received() {
            unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
        }
        // DROP EXTENSION: stop here, and let the launcher know not to restart us
        // a Citus worker node: tenants are kept from the coordinator (its
        // catalog here is an empty copy), so no pass runs here
        let check = || {
            let installed = extension_installed();
            (
                installed,
                installed && (being_restored() || crate::citus::on_worker_node()),
            )
        };
        match super::try_transaction("extension check", check) {
            Some((false, _)) => {
                publish(db, shmem::Extension::Absent, 0);
                break;
            }
            Some((true, true)) => {
                adopt_due = Some(std::time::Instant::now());
                if !give_way() {
                    break;
                }
                continue;
            }
            Some((true, false)) => {
                if adopt_due.is_some_and(|t| t <= std::time::Instant::now()) {
                    adopt_due = match super::try_transaction(
                        "adopting a restore",
                        adopt_restored_objects,
                    ) {
                        Some(()) => None,
                        None => Some(std::time::Instant::now() + Duration::from_secs(30)),
                    };
                }
                if keys_due <= std::time::Instant::now() {
                    let fetched =
                        super::try_transaction("fetching the Citus workers' keys", || {
                            crate::citus::sync_worker_keys()
                        });
                    keys_due = std::time::Instant::now()
                        + Duration::from_secs(if fetched.is_some() { 300 } else { 30 });
                }
            }
            None => {
                // a lock we could not get in time (DROP EXTENSION under way?)
                if !give_way() {
                    break;
                }
                continue;
            }
        }
        let pass = queue_demand();
        let Some((ready, waiting)) = pass else {
            if !give_way() {
                break;
            }
            continue;
        };
        // periodic jobs (maintenance, metrics), each in its own transaction
        let Some(jobs_ran) = super::try_transaction("periodic jobs", || {
            Spi::get_one::<i32>("SELECT tenancy._run_due_jobs()")
                .ok()
                .flatten()
                .unwrap_or(0)
        }) else {
            if !give_way() {
                break;
            }
            continue;
        };
        if jobs_ran > 0 {
            // they may have opened every tenant table: hand over to a fresh
            // scheduler (the launcher starts it at once) rather than keep
            // that relation cache; running item workers carry on
            recycle = true;
            break;
        }
        {
            let mut s = SHARED.exclusive();
            if let Some(i) = shmem::slot_index(&mut s, db, false) {
                s.slots[i].last_run_ms = shmem::now_ms();
            }
        }
        workers.retain(super::alive);
        let want =
            (ready.min(gucs::MAX_WORKERS.get()).max(0) as usize).saturating_sub(workers.len());
        for _ in 0..want {
            match start_item_worker(db) {
                Some(h) => workers.push(h),
                None => break, // out of worker slots: run fewer, try again later
            }
        }
        // No free slot at all (every one taken by other workers, or by the
        // schedulers of many databases): do a few items here, so the queue
        // always moves. The scheduler exits after as many items as an item
        // worker would, to bound its memory; the launcher starts a fresh one.
        if workers.is_empty() && ready > 0 {
            done_inline += run_items_here();
            if done_inline >= gucs::RECYCLE_AFTER.get() {
                recycle = true;
                break;
            }
            continue;
        }
        // Item workers exiting wake us (notify pid); items waiting for a retry
        // need a look sooner than the nap.
        let nap = gucs::NAPTIME_MS.get().max(100) as u64;
        let nap = if waiting > 0 { nap.min(250) } else { nap };
        if !BackgroundWorker::wait_latch(Some(Duration::from_millis(nap))) {
            break;
        }
    }
    if !recycle {
        for w in workers {
            let _ = w.terminate();
        }
    }
    let mut s = SHARED.exclusive();
    if let Some(i) = shmem::slot_index(&mut s, db, false) {
        s.slots[i].scheduler_latch = 0;
        s.slots[i].scheduler_pid = 0;
    }
}
