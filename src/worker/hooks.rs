//! Keeps the worker out of a DBA's way: before `DROP DATABASE` runs, the
//! workers connected to that database are stopped (and kept from starting
//! again for a while), so a plain DROP DATABASE works without `WITH (FORCE)`.
//! Before `DROP EXTENSION tenancy` (or `DROP SCHEMA tenancy`) the same
//! happens in this database, so the drop never meets a worker mid-transaction
//! (a lock each waits for in the other's order is a deadlock).

use super::shmem::{self, SHARED};
use pgrx::prelude::*;

static mut PREV_PROCESS_UTILITY: pg_sys::ProcessUtility_hook_type = None;

/// How long after a DROP DATABASE began no worker starts in that database.
const PAUSE_MS: i64 = 60_000;
/// The same after a DROP EXTENSION began; a later CREATE EXTENSION (or a
/// rolled-back drop's next batch) wakes the worker at once.
const EXTENSION_PAUSE_MS: i64 = 10_000;

pub fn install() {
    unsafe {
        PREV_PROCESS_UTILITY = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(process_utility);
    }
}

/// Stops the scheduler of a database; it terminates its item workers (which
/// die at once on SIGTERM) as it exits. Returns without waiting: DROP DATABASE itself waits (up to 5 s)
/// for the backends of the database to be gone.
fn stop_workers_of(db: pg_sys::Oid, pause_ms: i64) {
    if !shmem::ready() {
        return;
    }
    let pid = {
        let mut s = SHARED.exclusive();
        let Some(i) = shmem::slot_index(&mut s, db.to_u32(), true) else {
            return;
        };
        s.slots[i].paused_until_ms = shmem::now_ms() + pause_ms;
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

/// The current user owns the database (or is a superuser): DROP DATABASE's
/// own permission check.
#[cfg(feature = "pg15")]
unsafe fn owns_database(db: pg_sys::Oid) -> bool {
    unsafe { pg_sys::pg_database_ownercheck(db, pg_sys::GetUserId()) }
}

#[cfg(not(feature = "pg15"))]
unsafe fn owns_database(db: pg_sys::Oid) -> bool {
    unsafe { pg_sys::object_ownercheck(pg_sys::DatabaseRelationId, db, pg_sys::GetUserId()) }
}

/// The current user owns the extension and its schema here: what DROP
/// EXTENSION tenancy (or DROP SCHEMA tenancy) checks first.
fn may_drop_tenancy() -> bool {
    owns_tenancy_and(true)
}

/// The relation a statement names, looked up without a lock (taking one is
/// what the checks here must come before); `None` when there is none.
unsafe fn relation_of(rv: *mut pg_sys::RangeVar) -> Option<pg_sys::Oid> {
    let oid = unsafe {
        pg_sys::RangeVarGetRelidExtended(
            rv,
            pg_sys::NoLock as i32,
            pg_sys::RVROption::RVR_MISSING_OK,
            None,
            std::ptr::null_mut(),
        )
    };
    (oid != pg_sys::InvalidOid).then_some(oid)
}

/// `LOCK TABLE` of a table under tenancy's row level security by anyone
/// but its owner: PostgreSQL allows it to whoever may update the table, and
/// on a shared table that is every tenant, each of whom could so stop all
/// the others. Tenants' own row locks (UPDATE, SELECT FOR UPDATE) are theirs.
unsafe fn refuse_locking_shared_tables(lock: *mut pg_sys::LockStmt) {
    unsafe {
        let rels = pgrx::PgList::<pg_sys::RangeVar>::from_pg((*lock).relations);
        for rv in rels.iter_ptr() {
            let Some(oid) = relation_of(rv) else {
                continue;
            };
            let refused = Spi::get_one_with_args::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p \
                                WHERE p.polrelid OPERATOR(pg_catalog.=) $1 \
                                  AND p.polname OPERATOR(pg_catalog.=) 'tenancy_isolation') \
                        AND NOT pg_catalog.pg_has_role(CURRENT_USER, c.relowner, 'USAGE') \
                 FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
                &[oid.into()],
            )
            .ok()
            .flatten()
            .unwrap_or(false);
            if refused {
                let name = std::ffi::CStr::from_ptr((*rv).relname).to_string_lossy();
                crate::error::raise_with(
                    crate::error::sqlstate("42501"),
                    format!("permission denied to lock table {name}"),
                    Some("The table holds every tenant's rows under tenancy's row level security: only its owner may lock it whole.".into()),
                    Some("Lock the rows you need instead: SELECT ... FOR UPDATE.".into()),
                );
            }
        }
    }
}

/// `DROP EXTENSION ... tenancy ...` or `DROP SCHEMA ... tenancy ...`.
unsafe fn drops_tenancy(stmt: *mut pg_sys::Node) -> bool {
    unsafe {
        if (*stmt).type_ != pg_sys::NodeTag::T_DropStmt {
            return false;
        }
        let drop = stmt as *mut pg_sys::DropStmt;
        if (*drop).removeType != pg_sys::ObjectType::OBJECT_EXTENSION
            && (*drop).removeType != pg_sys::ObjectType::OBJECT_SCHEMA
        {
            return false;
        }
        let objects = pgrx::PgList::<pg_sys::Node>::from_pg((*drop).objects);
        let named = objects
            .iter_ptr()
            .any(|n| !n.is_null() && name_of(n) == Some(b"tenancy".as_slice()));
        named
    }
}

/// `ALTER EXTENSION tenancy UPDATE [TO ...]`.
unsafe fn updates_tenancy(stmt: *mut pg_sys::Node) -> bool {
    unsafe {
        (*stmt).type_ == pg_sys::NodeTag::T_AlterExtensionStmt && {
            let alter = stmt as *mut pg_sys::AlterExtensionStmt;
            !(*alter).extname.is_null()
                && std::ffi::CStr::from_ptr((*alter).extname).to_bytes() == b"tenancy"
        }
    }
}

/// The current user owns the extension: what ALTER EXTENSION UPDATE checks.
fn owns_tenancy() -> bool {
    owns_tenancy_and(false)
}

/// Membership in the extension's owner and, with `schema_too`, in the
/// owner of its schema: the one home of both checks above.
fn owns_tenancy_and(schema_too: bool) -> bool {
    Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.pg_has_role(CURRENT_USER, e.extowner, 'USAGE') \
                AND (NOT $1 OR pg_catalog.pg_has_role(CURRENT_USER, n.nspowner, 'USAGE')) \
         FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace \
         WHERE e.extname OPERATOR(pg_catalog.=) 'tenancy'",
        &[schema_too.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false)
}

/// The text of a String node (how DROP EXTENSION/SCHEMA names its objects).
unsafe fn name_of<'a>(n: *mut pg_sys::Node) -> Option<&'a [u8]> {
    unsafe {
        ((*n).type_ == pg_sys::NodeTag::T_String)
            .then(|| std::ffi::CStr::from_ptr((*(n as *mut pg_sys::String)).sval).to_bytes())
    }
}

/// Ends the pause of a database's workers (its DROP DATABASE failed).
fn resume_workers_of(db: pg_sys::Oid) {
    if !shmem::ready() {
        return;
    }
    let mut s = SHARED.exclusive();
    if let Some(i) = shmem::slot_index(&mut s, db.to_u32(), false) {
        s.slots[i].paused_until_ms = 0;
    }
}

/// A DROP DATABASE that can pass PostgreSQL's checks before it touches the
/// database: by its owner, at top level, outside a transaction block, not
/// of the database this session is in. Anything else fails on its own, and
/// must not stop that database's workers for a minute.
unsafe fn drop_database_may_run(
    db: pg_sys::Oid,
    context: pg_sys::ProcessUtilityContext::Type,
) -> bool {
    unsafe {
        db != pg_sys::InvalidOid
            && db != pg_sys::MyDatabaseId
            && context == pg_sys::ProcessUtilityContext::PROCESS_UTILITY_TOPLEVEL
            && !pg_sys::IsTransactionBlock()
            && owns_database(db)
    }
}

/// Statements that PostgreSQL lets anyone start: they lock their table
/// before they check the privilege they need (CREATE RULE takes ACCESS
/// EXCLUSIVE, CREATE TRIGGER SHARE ROW EXCLUSIVE, COMMENT and CREATE
/// STATISTICS SHARE UPDATE EXCLUSIVE, a child table its parent, ATTACH
/// PARTITION the partition, a foreign key the table it references), so a
/// session without privileges can queue a lock that every later reader of
/// the table then waits behind (a worker, set_tenant, a tenant's queries).
/// On the extension's tables and the tables the owner role owns (tenants'
/// and shared tables) they are checked here first, before any lock: the
/// relation, and the privilege PostgreSQL would ask for.
unsafe fn relations_checked_first(
    stmt: *mut pg_sys::Node,
) -> Vec<(*mut pg_sys::RangeVar, &'static str)> {
    unsafe {
        match (*stmt).type_ {
            pg_sys::NodeTag::T_RuleStmt => {
                vec![((*(stmt as *mut pg_sys::RuleStmt)).relation, "OWNER")]
            }
            pg_sys::NodeTag::T_CreateTrigStmt => {
                vec![((*(stmt as *mut pg_sys::CreateTrigStmt)).relation, "TRIGGER")]
            }
            pg_sys::NodeTag::T_CreateStmt => {
                let c = stmt as *mut pg_sys::CreateStmt;
                let mut out: Vec<_> = pgrx::PgList::<pg_sys::RangeVar>::from_pg((*c).inhRelations)
                    .iter_ptr()
                    .map(|rv| (rv, "OWNER"))
                    .collect();
                // foreign keys, as table constraints or on a column
                for elt in pgrx::PgList::<pg_sys::Node>::from_pg((*c).tableElts).iter_ptr() {
                    if (*elt).type_ == pg_sys::NodeTag::T_ColumnDef {
                        let col = elt as *mut pg_sys::ColumnDef;
                        for con in
                            pgrx::PgList::<pg_sys::Node>::from_pg((*col).constraints).iter_ptr()
                        {
                            out.extend(referenced_table(con));
                        }
                    } else {
                        out.extend(referenced_table(elt));
                    }
                }
                out
            }
            pg_sys::NodeTag::T_AlterTableStmt => {
                // the table named by ALTER TABLE is checked by PostgreSQL
                // first; the ones its commands name are not
                let a = stmt as *mut pg_sys::AlterTableStmt;
                let mut out = Vec::new();
                for cmd in pgrx::PgList::<pg_sys::AlterTableCmd>::from_pg((*a).cmds).iter_ptr() {
                    let def = (*cmd).def;
                    if def.is_null() {
                        continue;
                    }
                    match (*cmd).subtype {
                        pg_sys::AlterTableType::AT_AttachPartition
                        | pg_sys::AlterTableType::AT_DetachPartition => {
                            out.push(((*(def as *mut pg_sys::PartitionCmd)).name, "OWNER"))
                        }
                        pg_sys::AlterTableType::AT_AddInherit
                        | pg_sys::AlterTableType::AT_DropInherit => {
                            out.push((def as *mut pg_sys::RangeVar, "OWNER"))
                        }
                        pg_sys::AlterTableType::AT_AddConstraint => {
                            out.extend(referenced_table(def))
                        }
                        _ => {}
                    }
                }
                out
            }
            pg_sys::NodeTag::T_CreateStatsStmt => {
                let c = stmt as *mut pg_sys::CreateStatsStmt;
                pgrx::PgList::<pg_sys::Node>::from_pg((*c).relations)
                    .iter_ptr()
                    .filter(|n| (**n).type_ == pg_sys::NodeTag::T_RangeVar)
                    .map(|n| (n as *mut pg_sys::RangeVar, "OWNER"))
                    .collect()
            }
            pg_sys::NodeTag::T_CommentStmt | pg_sys::NodeTag::T_SecLabelStmt => {
                let (objtype, object) = if (*stmt).type_ == pg_sys::NodeTag::T_CommentStmt {
                    let c = stmt as *mut pg_sys::CommentStmt;
                    ((*c).objtype, (*c).object)
                } else {
                    let c = stmt as *mut pg_sys::SecLabelStmt;
                    ((*c).objtype, (*c).object)
                };
                let on_relation = matches!(
                    objtype,
                    pg_sys::ObjectType::OBJECT_TABLE
                        | pg_sys::ObjectType::OBJECT_VIEW
                        | pg_sys::ObjectType::OBJECT_SEQUENCE
                        | pg_sys::ObjectType::OBJECT_COLUMN
                );
                if !on_relation || object.is_null() || (*object).type_ != pg_sys::NodeTag::T_List {
                    return vec![];
                }
                // a (possibly qualified) name: for a column, without its last part
                let mut names = pgrx::PgList::<pg_sys::Node>::from_pg(object as *mut pg_sys::List);
                if objtype == pg_sys::ObjectType::OBJECT_COLUMN && names.len() > 1 {
                    let list = pg_sys::list_copy(object as *mut pg_sys::List);
                    names = pgrx::PgList::<pg_sys::Node>::from_pg(pg_sys::list_truncate(
                        list,
                        names.len() as i32 - 1,
                    ));
                }
                vec![(pg_sys::makeRangeVarFromNameList(names.as_ptr()), "OWNER")]
            }
            _ => vec![],
        }
    }
}

/// The table a FOREIGN KEY constraint references (it is locked before the
/// REFERENCES privilege is checked).
unsafe fn referenced_table(
    node: *mut pg_sys::Node,
) -> Option<(*mut pg_sys::RangeVar, &'static str)> {
    unsafe {
        if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_Constraint {
            return None;
        }
        let con = node as *mut pg_sys::Constraint;
        ((*con).contype == pg_sys::ConstrType::CONSTR_FOREIGN)
            .then(|| ((*con).pktable, "REFERENCES"))
    }
}

/// Template SQL runs as the owner role, which PostgreSQL lets change its
/// own password and settings: an admin's template could so give itself a
/// way to log in as that role (which Citus needs able to log in).
unsafe fn refuse_role_changes_as_owner(stmt: *mut pg_sys::Node) {
    let tag = unsafe { (*stmt).type_ };
    if matches!(
        tag,
        pg_sys::NodeTag::T_AlterRoleStmt | pg_sys::NodeTag::T_AlterRoleSetStmt
    ) && crate::roles::in_owner_scope()
    {
        crate::error::raise_with(
            crate::error::sqlstate("42501"),
            "template SQL may not change a role".into(),
            Some(
                "It runs as the tenancy owner role, whose password and settings are the DBA's."
                    .into(),
            ),
            None,
        );
    }
}

unsafe fn check_before_locking(stmt: *mut pg_sys::Node) {
    unsafe {
        for (rv, privilege) in relations_checked_first(stmt) {
            if rv.is_null() {
                continue;
            }
            let Some(oid) = relation_of(rv) else {
                continue;
            };
            let refused = Spi::get_one_with_args::<bool>(
                "SELECT (c.relnamespace OPERATOR(pg_catalog.=) e.extnamespace \
                         OR r.rolname OPERATOR(pg_catalog.=) pg_catalog.concat('tenancy_owner_', \
                              (SELECT d.oid FROM pg_catalog.pg_database d \
                               WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database()))) \
                        AND NOT CASE WHEN $2 OPERATOR(pg_catalog.=) 'OWNER' \
                                     THEN pg_catalog.pg_has_role(CURRENT_USER, c.relowner, 'USAGE') \
                                     ELSE pg_catalog.has_table_privilege(c.oid, $2) END \
                 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) c.relowner \
                 LEFT JOIN pg_catalog.pg_extension e ON e.extname OPERATOR(pg_catalog.=) 'tenancy' \
                 WHERE c.oid OPERATOR(pg_catalog.=) $1",
                &[oid.into(), privilege.into()],
            )
            .ok()
            .flatten()
            .unwrap_or(false);
            if refused {
                let name = std::ffi::CStr::from_ptr((*rv).relname).to_string_lossy();
                crate::error::raise_with(
                    crate::error::sqlstate("42501"),
                    format!("permission denied for table {name}"),
                    Some("Checked before any lock is taken: tenancy's tables and tenants' tables cannot be held up by a command that would fail its permission check.".into()),
                    None,
                );
            }
        }
    }
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
        let mut paused = None;
        // Only a command that will pass its own permission check stops a
        // worker: who may not drop the database (or the extension) cannot
        // pause the worker by trying.
        if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_DropdbStmt {
            let drop = stmt as *mut pg_sys::DropdbStmt;
            let db = pg_sys::get_database_oid((*drop).dbname, true);
            if drop_database_may_run(db, context) {
                stop_workers_of(db, PAUSE_MS);
                paused = Some(db);
            }
        } else if !stmt.is_null() && (*stmt).type_ == pg_sys::NodeTag::T_LockStmt {
            refuse_locking_shared_tables(stmt as *mut pg_sys::LockStmt);
        } else if !stmt.is_null() && drops_tenancy(stmt) && may_drop_tenancy() {
            stop_workers_of(pg_sys::MyDatabaseId, EXTENSION_PAUSE_MS);
            // and wait for a worker transaction under way (one may be
            // starting that the signal missed) before the drop takes locks
            super::take_worker_fence();
        } else if !stmt.is_null() && updates_tenancy(stmt) && owns_tenancy() {
            // the update script locks tables a worker transaction may hold
            // and then want more of: the worker's transactions wait instead
            super::take_worker_fence();
        } else if !stmt.is_null() && !pg_sys::superuser() {
            refuse_role_changes_as_owner(stmt);
            check_before_locking(stmt);
        }
        let run = || match PREV_PROCESS_UTILITY {
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
        };
        match paused {
            None => run(),
            // a DROP DATABASE that fails after all (others connected to
            // it): its workers start again at once
            Some(db) => PgTryBuilder::new(std::panic::AssertUnwindSafe(run))
                .catch_others(|e| {
                    resume_workers_of(db);
                    e.rethrow()
                })
                .execute(),
        }
    }
}
