//! Shared state of the launcher, the schedulers and the backends that wake them.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock};
use std::sync::atomic::{AtomicBool, Ordering};

pub const MAX_DATABASES: usize = 128;

/// Whether a database has `CREATE EXTENSION tenancy`, as its scheduler saw.
#[derive(Copy, Clone, Default, PartialEq, Eq, Debug)]
pub enum Extension {
    #[default]
    Unknown,
    Installed,
    /// Not there: the launcher leaves the database alone until a CREATE
    /// EXTENSION (or any wake) says otherwise.
    Absent,
}

#[derive(Copy, Clone, Default)]
pub struct DbSlot {
    pub db_oid: u32,
    /// Latch of this database's scheduler while it runs (a pointer into
    /// shared memory, valid in every backend), or 0.
    pub scheduler_latch: usize,
    pub scheduler_pid: i32,
    pub extension: Extension,
    /// Work arrived; the launcher starts a scheduler if none runs.
    pub wake: bool,
    /// Unix ms until which no worker may start here (a DROP DATABASE is on).
    pub paused_until_ms: i64,
    /// Unix ms of the scheduler's last pass over the queue.
    pub last_run_ms: i64,
}

#[derive(Copy, Clone)]
pub struct WorkerShared {
    pub launcher_latch: usize,
    pub slots: [DbSlot; MAX_DATABASES],
}

impl Default for WorkerShared {
    fn default() -> Self {
        WorkerShared {
            launcher_latch: 0,
            slots: [DbSlot::default(); MAX_DATABASES],
        }
    }
}

unsafe impl PGRXSharedMemory for WorkerShared {}

pub static SHARED: PgLwLock<WorkerShared> = unsafe { PgLwLock::new(c"tenancy_worker") };
static READY: AtomicBool = AtomicBool::new(false);

pub fn init() {
    pg_shmem_init!(SHARED);
    READY.store(true, Ordering::Relaxed);
}

/// Shared memory exists only when the library was preloaded.
pub fn ready() -> bool {
    READY.load(Ordering::Relaxed)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn set_latch(latch: usize) {
    if latch != 0 {
        unsafe { pg_sys::SetLatch(latch as *mut pg_sys::Latch) };
    }
}

/// This process's latch, to publish in shared memory.
pub fn my_latch() -> usize {
    unsafe { pg_sys::MyLatch as usize }
}

/// The slot of a database, made if missing (None when all are taken).
pub fn slot_index(s: &mut WorkerShared, db: u32, create: bool) -> Option<usize> {
    if let Some(i) = s.slots.iter().position(|x| x.db_oid == db) {
        return Some(i);
    }
    if !create {
        return None;
    }
    let free = s.slots.iter().position(|x| x.db_oid == 0)?;
    s.slots[free] = DbSlot {
        db_oid: db,
        ..DbSlot::default()
    };
    Some(free)
}

/// Work for a database: wake its scheduler, or the launcher to start one.
/// What `health()` shows of the worker in this database.
pub struct WorkerView {
    pub launcher_running: bool,
    pub scheduler_pid: i32,
    pub last_run_ms: i64,
}

pub fn view(db: pg_sys::Oid) -> Option<WorkerView> {
    if !ready() {
        return None;
    }
    let s = SHARED.share();
    let slot = s
        .slots
        .iter()
        .find(|x| x.db_oid == db.to_u32())
        .copied()
        .unwrap_or_default();
    Some(WorkerView {
        launcher_running: s.launcher_latch != 0,
        scheduler_pid: slot.scheduler_pid,
        last_run_ms: slot.last_run_ms,
    })
}

pub fn wake_database(db: pg_sys::Oid) {
    let db = db.to_u32();
    let (scheduler, launcher) = {
        let mut s = SHARED.exclusive();
        let launcher = s.launcher_latch;
        match slot_index(&mut s, db, true) {
            Some(i) => {
                let slot = &mut s.slots[i];
                slot.wake = true;
                slot.paused_until_ms = 0;
                if slot.extension == Extension::Absent {
                    slot.extension = Extension::Unknown;
                }
                (slot.scheduler_latch, launcher)
            }
            None => (0, launcher),
        }
    };
    if scheduler != 0 {
        set_latch(scheduler);
    } else {
        set_latch(launcher);
    }
}
