//! Per-tenant activity (`tenancy.tenant_activity`): for each tenant, the
//! statements run in its context in the current and the previous period
//! (`tenancy.activity_period`), their total and longest execution time and
//! the rows they returned or changed.
//!
//! Kept in shared memory by the preloaded library: the executor hooks time
//! each top-level statement of a client backend (the `Instrumentation` that
//! pg_stat_statements uses) and add it, at its end, to the entry of its
//! tenant. The tenant is `tenancy.tenant_id` (set by `set_tenant`, either
//! mode) or else the first schema of the `search_path`, kept as a schema
//! OID: which schema is which tenant is the view's join, at read time, so
//! the hot path never reads the catalog. One exclusive lock per statement,
//! held for a hash probe and four additions.

use pgrx::prelude::*;
use pgrx::{pg_shmem_init, PGRXSharedMemory, PgLwLock, Uuid};
use std::sync::atomic::{AtomicBool, Ordering};

/// Entries in shared memory: tenants (and other first schemas) active in the
/// current or the previous period. Past it, statements of new tenants are
/// counted in `dropped` only.
pub const SLOTS: usize = 4096;

#[derive(Copy, Clone, Default, PartialEq, Eq)]
struct Key {
    db: u32,
    /// 1: `id` is a tenant's uuid; 2: its first 4 bytes are a schema OID
    kind: u8,
    id: [u8; 16],
}

#[derive(Copy, Clone, Default)]
struct Counters {
    statements: u64,
    total_us: u64,
    max_us: u64,
    rows: u64,
}

impl Counters {
    fn merge(&mut self, other: &Counters) {
        self.statements += other.statements;
        self.total_us += other.total_us;
        self.max_us = self.max_us.max(other.max_us);
        self.rows += other.rows;
    }

    fn add(&mut self, us: u64, rows: u64) {
        self.statements += 1;
        self.total_us += us;
        self.max_us = self.max_us.max(us);
        self.rows += rows;
    }
}

#[derive(Copy, Clone, Default)]
struct Entry {
    key: Key,
    /// start (unix seconds) of the period `current` counts
    period_start: i64,
    current: Counters,
    previous: Counters,
}

impl Entry {
    /// Moves the counters on to the period starting at `start`.
    fn roll(&mut self, start: i64, length: i64) {
        if self.period_start == start {
            return;
        }
        self.previous = if start - self.period_start == length {
            self.current
        } else {
            Counters::default()
        };
        self.current = Counters::default();
        self.period_start = start;
    }

    /// Nothing in the current or the previous period: the slot may be reused.
    fn idle(&self, start: i64, length: i64) -> bool {
        self.period_start < start - length
    }
}

#[derive(Copy, Clone)]
pub struct Activity {
    used: [bool; SLOTS],
    entries: [Entry; SLOTS],
    /// statements not counted because every slot was taken
    dropped: u64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            used: [false; SLOTS],
            entries: [Entry::default(); SLOTS],
            dropped: 0,
        }
    }
}

unsafe impl PGRXSharedMemory for Activity {}

static SHARED: PgLwLock<Activity> = unsafe { PgLwLock::new(c"tenancy_activity") };
static READY: AtomicBool = AtomicBool::new(false);

fn slot_of(key: &Key) -> usize {
    // FNV-1a over the key's bytes
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key
        .db
        .to_le_bytes()
        .iter()
        .chain([key.kind].iter())
        .chain(key.id.iter())
    {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (h % SLOTS as u64) as usize
}

impl Activity {
    /// The entry of `key`, made in the first free or idle slot of its probe
    /// sequence if it has none. An idle slot keeps its place in the probe
    /// sequences of others (slots are never emptied), so a look-up that
    /// passes it still finds what lies beyond.
    fn entry(&mut self, key: &Key, start: i64, length: i64) -> Option<&mut Entry> {
        let home = slot_of(key);
        let mut reuse = None;
        for step in 0..SLOTS {
            let i = (home + step) % SLOTS;
            if !self.used[i] {
                let i = reuse.unwrap_or(i);
                self.used[i] = true;
                self.entries[i] = Entry {
                    key: *key,
                    period_start: start,
                    ..Default::default()
                };
                return Some(&mut self.entries[i]);
            }
            if self.entries[i].key == *key {
                return Some(&mut self.entries[i]);
            }
            if reuse.is_none() && self.entries[i].idle(start, length) {
                reuse = Some(i);
            }
        }
        let i = reuse?;
        self.entries[i] = Entry {
            key: *key,
            period_start: start,
            ..Default::default()
        };
        Some(&mut self.entries[i])
    }
}

/// Called from `_PG_init` when preloaded: the shared memory and the hooks.
pub fn init_preloaded() {
    pg_shmem_init!(SHARED);
    READY.store(true, Ordering::Relaxed);
    unsafe {
        PREV_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        PREV_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_PLANNER = pg_sys::planner_hook;
        pg_sys::planner_hook = Some(planner);
        pg_sys::RegisterXactCallback(Some(on_xact), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subxact), std::ptr::null_mut());
    }
}

static mut PREV_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_FINISH: pg_sys::ExecutorFinish_hook_type = None;
static mut PREV_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_PLANNER: pg_sys::planner_hook_type = None;

thread_local! {
    /// Executor runs under way in this backend: a statement started while
    /// one runs (a function's, a trigger's) is part of that one.
    static NESTING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

// The standard executor functions without pgrx's guard: an error inside
// them goes on to PostgreSQL's handler as raised (pgrx's guard would catch
// and raise it again, without fields such as the constraint's name). No
// frame of ours holds anything to drop when that happens; the nesting count
// is put back by the transaction callbacks below.
extern "C-unwind" {
    fn standard_ExecutorStart(query: *mut pg_sys::QueryDesc, eflags: i32);
    #[cfg(not(feature = "pg18"))]
    fn standard_ExecutorRun(
        query: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
        execute_once: bool,
    );
    #[cfg(feature = "pg18")]
    fn standard_ExecutorRun(
        query: *mut pg_sys::QueryDesc,
        direction: pg_sys::ScanDirection::Type,
        count: u64,
    );
    fn standard_ExecutorFinish(query: *mut pg_sys::QueryDesc);
    fn standard_ExecutorEnd(query: *mut pg_sys::QueryDesc);
    fn standard_planner(
        parse: *mut pg_sys::Query,
        query_string: *const std::ffi::c_char,
        cursor_options: i32,
        bound_params: pg_sys::ParamListInfo,
    ) -> *mut pg_sys::PlannedStmt;
}

thread_local! {
    /// NESTING when each open subtransaction began: its abort puts it back.
    static NESTING_AT_SUBXACT: std::cell::RefCell<Vec<(pg_sys::SubTransactionId, u32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

fn nesting_add(delta: i32) {
    NESTING.with(|n| n.set(n.get().saturating_add_signed(delta)));
}

#[pg_guard]
unsafe extern "C-unwind" fn on_xact(_event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    // no statement runs across a transaction's end
    NESTING.with(|n| n.set(0));
    NESTING_AT_SUBXACT.with(|s| s.borrow_mut().clear());
    STARTED.with(|s| s.borrow_mut().clear());
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subxact(
    event: pg_sys::SubXactEvent::Type,
    sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    NESTING_AT_SUBXACT.with(|s| {
        let mut s = s.borrow_mut();
        match event {
            pg_sys::SubXactEvent::SUBXACT_EVENT_START_SUB => {
                s.push((sub, NESTING.with(|n| n.get())))
            }
            pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB
            | pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
                if let Some(at) = s.iter().position(|(id, _)| *id == sub) {
                    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
                        NESTING.with(|n| n.set(s[at].1));
                    }
                    s.truncate(at);
                }
            }
            _ => {}
        }
    });
}

/// A top-level statement of a client's backend, with tracking on.
fn tracked() -> bool {
    READY.load(Ordering::Relaxed)
        && crate::gucs::TRACK_ACTIVITY.get()
        && NESTING.with(|n| n.get()) == 0
        && unsafe {
            pg_sys::MyBackendType == pg_sys::BackendType::B_BACKEND
                && pg_sys::ParallelWorkerNumber < 0
        }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query: *mut pg_sys::QueryDesc, eflags: i32) {
    match PREV_START {
        Some(prev) => prev(query, eflags),
        None => standard_ExecutorStart(query, eflags),
    }
    // EXPLAIN without ANALYZE starts and ends a plan it never runs
    let explain_only = eflags as u32 & pg_sys::EXEC_FLAG_EXPLAIN_ONLY != 0;
    if tracked() && !explain_only {
        if (*query).totaltime.is_null() {
            // as pg_stat_statements: standard_ExecutorRun and _Finish time it
            let old = pg_sys::MemoryContextSwitchTo((*(*query).estate).es_query_cxt);
            (*query).totaltime =
                pg_sys::InstrAlloc(1, pg_sys::InstrumentOption::INSTRUMENT_TIMER as i32, false);
            pg_sys::MemoryContextSwitchTo(old);
        }
        // whose it is, decided as it starts: a context changed inside the
        // statement (set_tenant(NULL) in its select list) does not move it
        let key = context(Some(query));
        STARTED.with(|s| s.borrow_mut().push((query as usize, key)));
    }
}

thread_local! {
    /// The tenant of each top-level statement under way, by its QueryDesc
    /// (more than one: cursors). Cleared at each transaction's end.
    static STARTED: std::cell::RefCell<Vec<(usize, Option<Key>)>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(not(feature = "pg18"))]
#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    nesting_add(1);
    match PREV_RUN {
        Some(prev) => prev(query, direction, count, execute_once),
        None => standard_ExecutorRun(query, direction, count, execute_once),
    }
    nesting_add(-1);
}

#[cfg(feature = "pg18")]
#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
) {
    nesting_add(1);
    match PREV_RUN {
        Some(prev) => prev(query, direction, count),
        None => standard_ExecutorRun(query, direction, count),
    }
    nesting_add(-1);
}

/// Planning is nested too: the planner runs stable functions to estimate
/// (a policy's tenant look-up), and their statements are not the client's.
#[pg_guard]
unsafe extern "C-unwind" fn planner(
    parse: *mut pg_sys::Query,
    query_string: *const std::ffi::c_char,
    cursor_options: i32,
    bound_params: pg_sys::ParamListInfo,
) -> *mut pg_sys::PlannedStmt {
    nesting_add(1);
    let plan = match PREV_PLANNER {
        Some(prev) => prev(parse, query_string, cursor_options, bound_params),
        None => standard_planner(parse, query_string, cursor_options, bound_params),
    };
    nesting_add(-1);
    plan
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_finish(query: *mut pg_sys::QueryDesc) {
    nesting_add(1);
    match PREV_FINISH {
        Some(prev) => prev(query),
        None => standard_ExecutorFinish(query),
    }
    nesting_add(-1);
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query: *mut pg_sys::QueryDesc) {
    let explain_only =
        (*(*query).estate).es_top_eflags as u32 & pg_sys::EXEC_FLAG_EXPLAIN_ONLY != 0;
    if !(*query).totaltime.is_null() && !explain_only && tracked() {
        pg_sys::InstrEndLoop((*query).totaltime);
        let us = ((*(*query).totaltime).total * 1_000_000.0) as u64;
        let rows = (*(*query).estate).es_processed;
        let started = STARTED.with(|s| {
            let mut s = s.borrow_mut();
            let at = s.iter().position(|(q, _)| *q == query as usize)?;
            Some(s.swap_remove(at).1)
        });
        // a cursor held past its transaction is no longer in STARTED
        match started.unwrap_or_else(|| context(None)) {
            Some(key) => record(&key, us, rows),
            None => flush_if_due(),
        }
    }
    match PREV_END {
        Some(prev) => prev(query),
        None => standard_ExecutorEnd(query),
    }
}

/// Whose statement this is: the tenant set by `set_tenant`; or else the
/// tenant whose schema holds the first table the plan reads or writes; or
/// else the first schema of the search path other than pg_catalog. A schema
/// is a tenant's only when this database's owner role owns it: a schema
/// anyone else made gets no slot, so it can neither take the slots of
/// tenants nor pass for a tenant whose name it copies.
unsafe fn context(query: Option<*mut pg_sys::QueryDesc>) -> Option<Key> {
    let db = pg_sys::MyDatabaseId.to_u32();
    if let Some(value) = crate::gucs::TENANT_ID.get() {
        if let Ok(id) = uuid_of(value.to_bytes()) {
            return Some(Key { db, kind: 1, id });
        }
    }
    let schema_key = |nsp: pg_sys::Oid| {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&nsp.to_u32().to_le_bytes());
        Key { db, kind: 2, id }
    };
    // the tables of the plan: a schema tenant's session that names its
    // tables with their schema under another search_path is still counted
    if let Some(query) = query {
        let rtable = (*(*query).plannedstmt).rtable;
        if !rtable.is_null() {
            for i in 0..(*rtable).length as usize {
                let rte = (*(*rtable).elements.add(i)).ptr_value as *mut pg_sys::RangeTblEntry;
                if (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION {
                    let nsp = namespace_of((*rte).relid);
                    if nsp != pg_sys::InvalidOid && tenant_schema(nsp) {
                        return Some(schema_key(nsp));
                    }
                }
            }
        }
    }
    let mut path = [pg_sys::InvalidOid; 4];
    let n = pg_sys::fetch_search_path_array(path.as_mut_ptr(), path.len() as i32);
    let first = *path
        .iter()
        .take(n.max(0) as usize)
        .find(|oid| oid.to_u32() != pg_sys::PG_CATALOG_NAMESPACE)?;
    tenant_schema(first).then(|| schema_key(first))
}

thread_local! {
    /// Schemas this backend has looked at: whether each is a tenant schema.
    /// Forgotten when any schema changes (a syscache invalidation).
    static SCHEMA_IS_TENANT: std::cell::RefCell<std::collections::HashMap<u32, bool>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
    static OWNER_ROLE: std::cell::Cell<Option<pg_sys::Oid>> = const { std::cell::Cell::new(None) };
    static CALLBACK: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The last schema and relation looked up, before the map and the syscache.
    static LAST_SCHEMA: std::cell::Cell<(pg_sys::Oid, bool)> =
        const { std::cell::Cell::new((pg_sys::InvalidOid, false)) };
    static LAST_RELATION: std::cell::Cell<(pg_sys::Oid, pg_sys::Oid)> =
        const { std::cell::Cell::new((pg_sys::InvalidOid, pg_sys::InvalidOid)) };
}

/// The schema of a relation, remembered for the last one asked (a session
/// mostly reads the same tables again; this runs for every statement).
fn namespace_of(relid: pg_sys::Oid) -> pg_sys::Oid {
    register_callbacks();
    let (last, nsp) = LAST_RELATION.with(|l| l.get());
    if last == relid && last != pg_sys::InvalidOid {
        return nsp;
    }
    let nsp = unsafe { pg_sys::get_rel_namespace(relid) };
    LAST_RELATION.with(|l| l.set((relid, nsp)));
    nsp
}

fn register_callbacks() {
    if CALLBACK.with(|c| c.replace(true)) {
        return;
    }
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::NAMESPACEOID as i32,
            Some(forget_schemas),
            pg_sys::Datum::from(0),
        );
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::AUTHOID as i32,
            Some(forget_schemas),
            pg_sys::Datum::from(0),
        );
        pg_sys::CacheRegisterRelcacheCallback(Some(forget_relation), pg_sys::Datum::from(0));
    }
}

fn tenant_schema(nsp: pg_sys::Oid) -> bool {
    let (last, known) = LAST_SCHEMA.with(|l| l.get());
    if last == nsp && last != pg_sys::InvalidOid {
        return known;
    }
    if let Some(known) = SCHEMA_IS_TENANT.with(|m| m.borrow().get(&nsp.to_u32()).copied()) {
        LAST_SCHEMA.with(|l| l.set((nsp, known)));
        return known;
    }
    register_callbacks();
    let owner = OWNER_ROLE.with(|o| match o.get() {
        Some(oid) => oid,
        None => {
            let name = std::ffi::CString::new(crate::roles::owner_role()).unwrap_or_default();
            let oid = unsafe { pg_sys::get_role_oid(name.as_ptr(), true) };
            o.set(Some(oid));
            oid
        }
    });
    let is_tenant = owner != pg_sys::InvalidOid && owns(nsp, owner);
    SCHEMA_IS_TENANT.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > 10_000 {
            m.clear();
        }
        m.insert(nsp.to_u32(), is_tenant);
    });
    LAST_SCHEMA.with(|l| l.set((nsp, is_tenant)));
    is_tenant
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
fn owns(nsp: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    unsafe { pg_sys::pg_namespace_ownercheck(nsp, role) }
}

#[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
fn owns(nsp: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    unsafe { pg_sys::object_ownercheck(pg_sys::NamespaceRelationId, nsp, role) }
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_schemas(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    SCHEMA_IS_TENANT.with(|m| m.borrow_mut().clear());
    LAST_SCHEMA.with(|l| l.set((pg_sys::InvalidOid, false)));
    OWNER_ROLE.with(|o| o.set(None));
}

#[pg_guard]
unsafe extern "C-unwind" fn forget_relation(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    LAST_RELATION.with(|l| l.set((pg_sys::InvalidOid, pg_sys::InvalidOid)));
}

fn uuid_of(text: &[u8]) -> Result<[u8; 16], ()> {
    let text = std::str::from_utf8(text).map_err(|_| ())?;
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return Err(());
    }
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| ())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| ())?;
    }
    Ok(out)
}

/// The period of a moment (unix ms): its start (unix seconds) and length.
fn period_of(now_ms: i64) -> (i64, i64) {
    let length = crate::gucs::ACTIVITY_PERIOD_S.get().max(1) as i64;
    let now = now_ms / 1000;
    (now - now % length, length)
}

/// A backend's statements of one tenant and period not yet added to shared
/// memory: it adds them when its tenant or the period changes, or
/// FLUSH_AFTER_MS after the first, or when it exits. So two sessions of one
/// tenant do not take the shared lock for every statement (measured: the
/// overhead of a lock per statement was 6% of a simple-query workload).
struct Pending {
    key: Key,
    period_start: i64,
    length: i64,
    since_ms: i64,
    counters: Counters,
}

const FLUSH_AFTER_MS: i64 = 50;

thread_local! {
    static PENDING: std::cell::RefCell<Option<Pending>> = const { std::cell::RefCell::new(None) };
    static EXIT_HOOKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn record(key: &Key, us: u64, rows: u64) {
    let now_ms = crate::worker::shmem::now_ms();
    let (start, length) = period_of(now_ms);
    let stale = PENDING.with(|p| {
        let mut p = p.borrow_mut();
        let fresh = matches!(&*p, Some(q) if q.key == *key && q.period_start == start && q.length == length
                                              && now_ms - q.since_ms < FLUSH_AFTER_MS);
        let stale = if fresh { None } else { p.take() };
        p.get_or_insert(Pending { key: *key, period_start: start, length, since_ms: now_ms, counters: Counters::default() })
            .counters
            .add(us, rows);
        stale
    });
    if let Some(stale) = stale {
        add_to_shared(&stale);
    }
    if !EXIT_HOOKED.with(|h| h.replace(true)) {
        unsafe { pg_sys::before_shmem_exit(Some(flush_at_exit), pg_sys::Datum::from(0)) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn flush_at_exit(_code: i32, _arg: pg_sys::Datum) {
    flush();
}

/// A statement of no tenant: what the session holds back goes to shared
/// memory if it has waited long enough.
fn flush_if_due() {
    let due = PENDING.with(|p| {
        matches!(&*p.borrow(), Some(q) if crate::worker::shmem::now_ms() - q.since_ms >= FLUSH_AFTER_MS)
    });
    if due {
        flush();
    }
}

/// Adds what this backend holds back to shared memory.
fn flush() {
    if let Some(p) = PENDING.with(|p| p.borrow_mut().take()) {
        add_to_shared(&p);
    }
}

fn add_to_shared(p: &Pending) {
    let mut shared = SHARED.exclusive();
    match shared.entry(&p.key, p.period_start, p.length) {
        Some(entry) => {
            if entry.period_start <= p.period_start {
                entry.roll(p.period_start, p.length);
                entry.current.merge(&p.counters);
            } else if entry.period_start == p.period_start + p.length {
                // another backend has moved the entry on to the next period
                entry.previous.merge(&p.counters);
            }
        }
        None => shared.dropped += p.counters.statements,
    }
}

/// This database's entries, both periods, as the view reads them (a
/// tenant's id, or a tenant schema's OID).
#[pg_extern(name = "activity_counters")]
#[allow(clippy::type_complexity)]
fn activity() -> TableIterator<
    'static,
    (
        name!(tenant_id, Option<Uuid>),
        name!(schema_oid, Option<pg_sys::Oid>),
        name!(period_start, TimestampWithTimeZone),
        name!(period_end, TimestampWithTimeZone),
        name!(statements, i64),
        name!(total_ms, f64),
        name!(max_ms, f64),
        name!(rows, i64),
    ),
> {
    let mut out = Vec::new();
    if READY.load(Ordering::Relaxed) {
        flush(); // this session's own statements too
        let db = unsafe { pg_sys::MyDatabaseId }.to_u32();
        let (start, length) = period_of(crate::worker::shmem::now_ms());
        let entries: Vec<Entry> = {
            let shared = SHARED.share();
            (0..SLOTS)
                .filter(|i| shared.used[*i] && shared.entries[*i].key.db == db)
                .map(|i| shared.entries[i])
                .collect()
        };
        for mut e in entries {
            e.roll(start, length);
            let (tenant, schema) = match e.key.kind {
                1 => (Some(Uuid::from_bytes(e.key.id)), None),
                _ => {
                    let oid = u32::from_le_bytes(e.key.id[..4].try_into().unwrap());
                    (None, Some(pg_sys::Oid::from(oid)))
                }
            };
            for (from, c) in [(start - length, e.previous), (start, e.current)] {
                if c.statements > 0 {
                    out.push((
                        tenant,
                        schema,
                        timestamp(from),
                        timestamp(from + length),
                        c.statements as i64,
                        c.total_us as f64 / 1000.0,
                        c.max_us as f64 / 1000.0,
                        c.rows as i64,
                    ));
                }
            }
        }
    }
    TableIterator::new(out)
}

/// Whether statements of this session are being counted.
pub fn tracking() -> bool {
    READY.load(Ordering::Relaxed) && crate::gucs::TRACK_ACTIVITY.get()
}

/// Statements not counted since the server started because every slot was
/// taken (health() reports it).
pub fn dropped() -> i64 {
    if !READY.load(Ordering::Relaxed) {
        return 0;
    }
    SHARED.share().dropped as i64
}

fn timestamp(unix_seconds: i64) -> TimestampWithTimeZone {
    // PostgreSQL's epoch is 2000-01-01; its timestamps count microseconds
    let pg = (unix_seconds - 946_684_800) * 1_000_000;
    TimestampWithTimeZone::try_from(pg)
        .unwrap_or_else(|_| TimestampWithTimeZone::try_from(0i64).unwrap())
}
