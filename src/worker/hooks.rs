//! Keeps the worker out of a DBA's way: before `DROP DATABASE` runs, the
//! workers connected to that database are stopped (and kept from starting
//! again for a while), so a plain DROP DATABASE works without `WITH (FORCE)`.

use super::shmem::{self, SHARED};
use pgrx::prelude::*;

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// How long after a DROP DATABASE began no worker starts in that database.
const PAUSE_MS: i64 = 60_000;

pub fn install() {
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// Stops the scheduler of a database; it terminates its item workers (which
/// die at once on SIGTERM) as it exits. Returns without waiting: DROP DATABASE itself waits (up to 5 s)
/// for the backends of the database to be gone.
fn stop_workers_of(db: pg_sys::Oid) {
    let pid = {
        let mut s = SHARED.exclusive();
        let Some(i) = shmem::slot_index(&mut s, db.to_u32(), true) else {
            return;
        };
        s.slots[i].paused_until_ms = shmem::now_ms() + PAUSE_MS;
        s.slots[i].scheduler_pid
    };
    if pid != 0 {
        unsafe { libc_kill(pid) };
    }
}

unsafe fn libc_kill(pid: i32) {
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    kill(pid, 15);
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    unsafe {
        let stmt = (*pstmt).utilityStmt;
        if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_DropdbStmt {
            let drop = stmt as *mut pg_sys::DropdbStmt;
            let db = pg_sys::get_database_oid((*drop).dbname, true);
            if db != pg_sys::InvalidOid {
                stop_workers_of(db);
            }
        }
        match PREV_PROCESS_UTILITY {
            Some(prev) => prev(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
            None => pg_sys::standard_ProcessUtility(
                pstmt,
                query_string,
                read_only_tree,
                context,
                params,
                query_env,
                dest,
                qc,
            ),
        }
    }
}
