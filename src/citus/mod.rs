//! Citus in the same database: a tenant schema becomes a Citus distributed
//! schema (its tables single-shard tables of one colocation group, placed on
//! a worker node), and the extension's background worker runs only on the
//! coordinator.
//!
//! Citus makes a table of a distributed schema a distributed table only for a
//! `CREATE TABLE` typed at the top level; the extension builds schemas from a
//! function, where Citus leaves them local. So a tenant schema is made as a
//! regular schema (`citus.enable_schema_based_sharding` off while it is
//! created), filled from its template, and then distributed whole with
//! `citus_schema_distribute`, as the owner role that owns it. A table a
//! migration adds to a distributed schema is made a single-shard table
//! colocated with the schema's others (`create_distributed_table` with no
//! distribution column).

pub mod tenant_context;

use crate::error::{raise_with, sqlstate, OrRaise};
use crate::guc_scope::GucScope;
use pgrx::prelude::*;

/// Citus is installed in this database.
pub fn installed() -> bool {
    // an index look-up, not a query: provision asks several times
    unsafe { pg_sys::get_extension_oid(c"citus".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Citus is installed here and this node is one of its workers (not the
/// coordinator): tenants are made and kept from the coordinator only.
pub fn on_worker_node() -> bool {
    // the local group (0: the coordinator, or a node not yet in a cluster),
    // not citus_is_coordinator(), which is false while no node is active
    installed()
        && Spi::get_one::<bool>(
            "SELECT groupid OPERATOR(pg_catalog.<>) 0 FROM pg_catalog.pg_dist_local_group",
        )
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// What `health()` shows on the coordinator: the worker nodes and how many
/// tenant schemas each holds; `None` without Citus.
pub fn state() -> Option<serde_json::Value> {
    if !installed() {
        return None;
    }
    let _scope = quiet_scope();
    let state = Spi::get_one::<pgrx::JsonB>(
        "SELECT jsonb_build_object('node', 'coordinator', \
           'worker_nodes', (SELECT count(*) FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0 AND isactive), \
           'tenant_schemas_per_node', (SELECT coalesce(jsonb_object_agg(node, n), '{}') FROM \
               (SELECT s.nodename || ':' || s.nodeport AS node, count(DISTINCT c.relnamespace) AS n \
                FROM citus_shards s JOIN pg_class c ON c.oid = s.table_name::oid \
                JOIN pg_namespace ns ON ns.oid = c.relnamespace \
                JOIN tenancy.tenants t ON t.schema_name = ns.nspname \
                WHERE t.status IN ('active', 'suspended') GROUP BY 1) x))",
    )
    .or_raise();
    state.map(|j| j.0)
}

/// Fails with 0A000 on a Citus worker node: what changes tenants runs on the
/// coordinator, which Citus propagates to the workers.
pub fn ensure_coordinator(what: &str) {
    if on_worker_node() {
        raise_with(
            sqlstate("0A000"),
            format!("{what} runs on the Citus coordinator, not on a worker node"),
            None,
            Some("Connect to the coordinator and call it there.".into()),
        )
    }
}

/// Fails with 55000 when Citus is installed and the owner role may not log
/// in: Citus runs a statement's work on the workers over connections as the
/// role that runs it, and the template's statements and migrations run as
/// the owner role (src/roles.rs), never with more rights.
pub fn ensure_owner_reaches_workers() {
    if !installed() {
        return;
    }
    let owner = crate::roles::owner_role();
    let can = Spi::get_one_with_args::<bool>(
        "SELECT rolcanlogin FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1",
        &[owner.clone().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !can {
        raise_with(
            sqlstate("55000"),
            format!("on Citus the role {owner} must be able to log in"),
            Some("Citus connects to the worker nodes as the role running a statement, and tenant schemas are built and migrated as that role.".into()),
            Some(format!(
                "A superuser runs ALTER ROLE {} LOGIN once (it reaches the workers with the first tenant), and lets the coordinator connect to the workers as it, as for any role using distributed tables.",
                tenancy_core::ident::quote_ident(&owner)
            )),
        )
    }
    // a database whose CONNECT was taken from PUBLIC (Citus sends the
    // GRANTs on it to the workers)
    let connects = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_database_privilege($1, pg_catalog.current_database(), 'CONNECT')",
        &[owner.clone().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !connects {
        raise_with(
            sqlstate("55000"),
            format!("on Citus the role {owner} must be able to connect to this database"),
            Some("Citus connects to the worker nodes as the role running a statement, and tenant schemas are built, migrated and moved as that role.".into()),
            Some(format!(
                "A superuser runs GRANT CONNECT ON DATABASE {} TO {}.",
                tenancy_core::ident::quote_ident(&current_database()),
                tenancy_core::ident::quote_ident(&owner)
            )),
        )
    }
}

fn current_database() -> String {
    Spi::get_one::<String>("SELECT pg_catalog.current_database()::text")
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Runs `f` (which creates a schema) with Citus's schema-based sharding off,
/// so that the schema is a regular one until `distribute_schema` makes it a
/// distributed schema with its tables in it.
pub fn regular_schema<R>(f: impl FnOnce() -> R) -> R {
    if !installed() {
        return f();
    }
    let scope = GucScope::new();
    scope.set("citus.enable_schema_based_sharding", "off");
    let r = f();
    drop(scope);
    r
}

/// While a tenant schema is built (a regular schema, on the coordinator
/// only), Citus sends nothing of it to the workers: a function the
/// template makes would otherwise go to workers that have no such schema
/// yet. Its distribution sends what the schema holds.
pub fn local_ddl() -> Option<GucScope> {
    installed().then(|| {
        let scope = GucScope::new();
        scope.set("citus.enable_ddl_propagation", "off");
        scope
    })
}

/// Makes `schema` (filled from its template, owned by the owner role) a
/// Citus distributed schema: each of its tables a single-shard table, all of
/// them colocated on one node. With the extension's rights: Citus sends the
/// schema's owner role to the workers, which takes a superuser. So that no
/// code of the template's runs with those rights, the schema must hold only
/// empty tables and no table that calls a function of a user's
/// (`refuse_code_in`).
pub fn distribute_schema(schema: &str) {
    if !installed() {
        return;
    }
    let scope = quiet_scope();
    refuse_code_in(schema);
    Spi::run_with_args(
        "SELECT pg_catalog.citus_schema_distribute($1::regnamespace)",
        &[tenancy_core::ident::quote_ident(schema).into()],
    )
    .or_raise();
    drop(scope);
}

/// Fails with 0A000 when code of a template's could run while `schema` is
/// distributed with the extension's rights: a table with rows (their copy
/// runs index expressions and defaults), or one that calls a function of a
/// user's (`refuse_calls_in`).
fn refuse_code_in(schema: &str) {
    let filled = Spi::get_one_with_args::<String>(
        "SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid) FROM pg_class c \
         WHERE c.relnamespace OPERATOR(pg_catalog.=) $1::regnamespace AND c.relkind OPERATOR(pg_catalog.=) 'r' \
           AND pg_catalog.pg_relation_size(c.oid) OPERATOR(pg_catalog.>) 0",
        &[tenancy_core::ident::quote_ident(schema).into()],
    )
    .or_raise();
    if let Some(tables) = filled {
        refuse_code(
            format!("on Citus a template's statements may not write rows: {tables} has some"),
            "Add the rows after the tenant is provisioned.",
        )
    }
    refuse_calls_in(schema);
}

/// Fails with 0A000 when what `schema` holds reaches a function or
/// operator that is neither built in nor an extension's (made by a user: a
/// template's or a migration's), or a built-in that runs a query given as
/// text (query_to_xml and its kind, ts_stat, ts_rewrite). Citus runs such
/// code with a superuser's rights: it makes and drops shards over a
/// superuser's connections (loading a partition key, an index or a domain's
/// checks into a cache folds a call with constant arguments, as planning
/// does), and computes generated columns, checks and index entries when it
/// copies a shard. Reached means through the dependencies, wherever they
/// lead: a table's partition key, defaults, generated columns, checks,
/// indexes and statistics, the types of its columns and of its expressions
/// (a domain's checks and default, in any schema), a range type's
/// functions, a table it inherits or references. Not followed: triggers
/// (Citus makes them on a copy after its rows are in), views, rules and
/// policies (they run as the querying role).
pub fn refuse_calls_in(schema: &str) {
    if !installed() {
        return;
    }
    let _scope = quiet_scope();
    let calling = Spi::get_one_with_args::<String>(
        r#"WITH RECURSIVE reach(classid, objid) AS (
             SELECT 'pg_class'::regclass::oid, c.oid FROM pg_class c
             WHERE c.relnamespace OPERATOR(pg_catalog.=) $1::regnamespace
             UNION SELECT 'pg_type'::regclass::oid, y.oid FROM pg_type y
             WHERE y.typnamespace OPERATOR(pg_catalog.=) $1::regnamespace
             UNION SELECT 'pg_constraint'::regclass::oid, k.oid FROM pg_constraint k
             WHERE k.connamespace OPERATOR(pg_catalog.=) $1::regnamespace
             UNION
             -- what an object depends on, and its own parts (its
             -- constraints, defaults, indexes, statistics: they depend on
             -- it automatically or internally); not past a function, an
             -- operator, a schema or an extension, nor an extension's object
             SELECT CASE WHEN d.classid OPERATOR(pg_catalog.=) r.classid AND d.objid OPERATOR(pg_catalog.=) r.objid
                         THEN d.refclassid ELSE d.classid END,
                    CASE WHEN d.classid OPERATOR(pg_catalog.=) r.classid AND d.objid OPERATOR(pg_catalog.=) r.objid
                         THEN d.refobjid ELSE d.objid END
             FROM reach r JOIN pg_depend d
               ON (d.classid OPERATOR(pg_catalog.=) r.classid AND d.objid OPERATOR(pg_catalog.=) r.objid
                   AND d.deptype IN ('n', 'a', 'i'))
               OR (d.refclassid OPERATOR(pg_catalog.=) r.classid AND d.refobjid OPERATOR(pg_catalog.=) r.objid
                   AND d.deptype IN ('a', 'i')
                   AND d.classid NOT IN ('pg_trigger'::regclass, 'pg_rewrite'::regclass, 'pg_policy'::regclass))
             WHERE r.classid NOT IN ('pg_proc'::regclass, 'pg_operator'::regclass, 'pg_namespace'::regclass,
                                     'pg_extension'::regclass)
               AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid OPERATOR(pg_catalog.=) r.classid
                               AND e.objid OPERATOR(pg_catalog.=) r.objid AND e.deptype OPERATOR(pg_catalog.=) 'e')
           ),
           -- the expressions reached, as text: pg_depend holds no built-in
           -- (pinned) function, so a query-running one shows only there
           def(what, def) AS (
             SELECT pg_catalog.pg_describe_object(r.classid, r.objid, 0),
                    CASE r.classid
                      WHEN 'pg_attrdef'::regclass THEN
                        (SELECT pg_catalog.pg_get_expr(a.adbin, a.adrelid) FROM pg_attrdef a WHERE a.oid OPERATOR(pg_catalog.=) r.objid)
                      WHEN 'pg_constraint'::regclass THEN pg_catalog.pg_get_constraintdef(r.objid)
                      WHEN 'pg_statistic_ext'::regclass THEN pg_catalog.pg_get_statisticsobjdef(r.objid)
                      WHEN 'pg_type'::regclass THEN
                        (SELECT y.typdefault FROM pg_type y WHERE y.oid OPERATOR(pg_catalog.=) r.objid)
                      WHEN 'pg_class'::regclass THEN
                        (SELECT CASE c.relkind WHEN 'i' THEN pg_catalog.pg_get_indexdef(c.oid)
                                               WHEN 'I' THEN pg_catalog.pg_get_indexdef(c.oid)
                                               WHEN 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END
                         FROM pg_class c WHERE c.oid OPERATOR(pg_catalog.=) r.objid)
                    END
             FROM reach r
           )
           SELECT string_agg(DISTINCT what, ', ') FROM (
             SELECT pg_catalog.pg_describe_object(r.classid, r.objid, 0) AS what FROM reach r
             WHERE r.classid IN ('pg_proc'::regclass, 'pg_operator'::regclass)
               AND r.objid OPERATOR(pg_catalog.>=) 16384::oid
               AND NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid OPERATOR(pg_catalog.=) r.classid
                               AND e.objid OPERATOR(pg_catalog.=) r.objid AND e.deptype OPERATOR(pg_catalog.=) 'e')
             UNION ALL
             SELECT what FROM def
             WHERE def OPERATOR(pg_catalog.~) '(_to_xml[a-z_]*|\mts_stat|\mts_rewrite)\s*\('
           ) found"#,
        &[tenancy_core::ident::quote_ident(schema).into()],
    )
    .or_raise();
    if let Some(objects) = calling {
        refuse_code(
            format!("on Citus a tenant's tables may call only built-in functions and operators and those of extensions: they reach {objects}"),
            "Compute the value in the application or in a trigger (which Citus's copies do not fire), or index the column itself.",
        )
    }
}

fn refuse_code(what: String, hint: &str) -> ! {
    raise_with(
        sqlstate("0A000"),
        what,
        Some("Citus distributes a tenant's tables and copies their shards between nodes with a superuser's rights, so no code of a template's or a migration's may run then.".into()),
        Some(hint.into()),
    )
}

/// The tables of a distributed `schema` that Citus left local (a migration's
/// `CREATE TABLE`, made from a function), each made a single-shard table
/// colocated with the schema's others. Call as the owner role.
pub fn distribute_new_tables(schema: &str) {
    if !installed() {
        return;
    }
    // the look-ups below name nothing a tenant could shadow in its schema
    let scope = quiet_scope();
    let Some(anchor) = Spi::get_one_with_args::<String>(
        "SELECT p.logicalrelid::regclass::text FROM pg_dist_partition p \
         JOIN pg_class c ON c.oid = p.logicalrelid \
         WHERE c.relnamespace = $1::regnamespace ORDER BY p.logicalrelid LIMIT 1",
        &[tenancy_core::ident::quote_ident(schema).into()],
    )
    .or_raise() else {
        return; // not a distributed schema (yet): nothing to colocate with
    };
    let local: Vec<String> = Spi::connect(|c| {
        c.select(
            "SELECT c.oid::regclass::text FROM pg_class c \
             WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
               AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid) \
             ORDER BY c.oid",
            None,
            &[tenancy_core::ident::quote_ident(schema).into()],
        )
        .map(|rows| {
            rows.filter_map(|r| r.get::<String>(1).ok().flatten())
                .collect()
        })
    })
    .or_raise();
    for table in local {
        Spi::run_with_args(
            "SELECT pg_catalog.create_distributed_table($1::regclass, NULL, colocate_with => $2)",
            &[table.into(), anchor.clone().into()],
        )
        .or_raise();
    }
    drop(scope);
}

/// Distributes the tables of a template's shared schema, made and given
/// their policies and grants on the coordinator: a table with a `tenant_id`
/// column by it (hash-distributed, every such table of every template in
/// one colocation group, so a tenant's rows of all of them are on one
/// node), one without (global rows, such as plans) as a reference table,
/// copied to every node. Citus copies
/// the policies and grants to the shards; the policies read the tenant that
/// set_tenant sends (tenant_context.rs), so the workers' keys are fetched.
pub fn distribute_shared_schema(schema: &str) {
    if !installed() {
        return;
    }
    ensure_owner_reaches_workers();
    let scope = quiet_scope();
    // a local table's foreign key to a reference table would make Citus
    // add it to its metadata as a local table, which cannot be distributed
    // after (identity columns); the tenant tables are distributed just after
    scope.set("citus.enable_local_reference_table_foreign_keys", "off");
    let tables: Vec<(String, bool, Vec<String>)> = Spi::connect(|c| {
        c.select(
            "SELECT c.oid::regclass::text, \
                    EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' \
                            AND NOT a.attisdropped), \
                    ARRAY(SELECT DISTINCT f.confrelid::regclass::text FROM pg_constraint f \
                          WHERE f.conrelid = c.oid AND f.contype = 'f' AND f.confrelid <> c.oid) \
             FROM pg_class c WHERE c.relnamespace = $1::regnamespace AND c.relkind IN ('r', 'p') \
               AND NOT c.relispartition ORDER BY c.oid",
            None,
            &[tenancy_core::ident::quote_ident(schema).into()],
        )
        .map(|rows| {
            rows.filter_map(|r| {
                Some((
                    r.get::<String>(1).ok()??,
                    r.get::<bool>(2).ok()??,
                    r.get::<Vec<String>>(3).ok()??,
                ))
            })
            .collect()
        })
    })
    .or_raise();
    // with the extension's rights, as a tenant schema is (Citus sends the
    // owner role to the workers, which takes a superuser): so only while
    // nothing in the schema can run code
    refuse_code_in(schema);
    {
        let mut done: Vec<String> = Vec::new();
        for (table, _, _) in tables.iter().filter(|t| !t.1) {
            Spi::run_with_args(
                "SELECT pg_catalog.create_reference_table($1::regclass)",
                &[table.as_str().into()],
            )
            .or_raise();
            done.push(table.clone());
        }
        // a table after those its foreign keys reference (Citus checks each
        // key when the table is distributed); a cycle is left to Citus's error
        let mut left: Vec<&(String, bool, Vec<String>)> = tables.iter().filter(|t| t.1).collect();
        while !left.is_empty() {
            let next = left
                .iter()
                .position(|(_, _, refs)| {
                    refs.iter()
                        .all(|r| done.contains(r) || !tables.iter().any(|t| &t.0 == r))
                })
                .unwrap_or(0);
            let (table, _, _) = left.remove(next);
            Spi::run_with_args(
                "SELECT pg_catalog.create_distributed_table($1::regclass, 'tenant_id')",
                &[table.as_str().into()],
            )
            .or_raise();
            done.push(table.clone());
        }
    }
    drop(scope);
    sync_worker_keys();
}

/// Fetches each worker node's key (`tenancy.node_key`, made there by CREATE
/// EXTENSION) into `tenancy.citus_node_keys`, with which set_tenant signs a
/// shared tenant's context for that node; forgets the keys of groups gone.
/// Run when shared tables are distributed and by the background worker
/// every few minutes (a node added later). Returns how many nodes answered.
#[pg_extern(name = "_citus_sync_keys")]
fn sync_keys() -> i64 {
    sync_worker_keys()
}

pub fn sync_worker_keys() -> i64 {
    if !installed() || on_worker_node() {
        return 0;
    }
    let scope = quiet_scope();
    let n = Spi::get_one::<i64>(
        "WITH fetched AS ( \
             SELECT n.groupid, r.result AS key \
             FROM run_command_on_workers('SELECT key FROM tenancy.node_key') r \
             JOIN pg_dist_node n ON n.nodename = r.nodename AND n.nodeport = r.nodeport \
             WHERE r.success AND n.noderole = 'primary' AND n.groupid <> 0 AND length(r.result) >= 32), \
         gone AS (DELETE FROM tenancy.citus_node_keys k \
                  WHERE NOT EXISTS (SELECT 1 FROM pg_dist_node n WHERE n.groupid = k.groupid)), \
         kept AS (INSERT INTO tenancy.citus_node_keys (groupid, key) SELECT groupid, key FROM fetched \
                  ON CONFLICT (groupid) DO UPDATE SET key = EXCLUDED.key, fetched_at = now() \
                  WHERE citus_node_keys.key IS DISTINCT FROM EXCLUDED.key) \
         SELECT count(*) FROM fetched",
    )
    .or_raise()
    .unwrap_or(0);
    drop(scope);
    n
}

/// search_path of the catalog only, and Citus's NOTICEs (one per tenant)
/// kept from the client, until the scope ends.
fn quiet_scope() -> GucScope {
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    scope.set("client_min_messages", "warning");
    // Citus's settings any session may change, as Citus's defaults: the
    // caller's session does not steer what is done for it
    for (name, value) in [
        ("citus.enable_ddl_propagation", "on"),
        ("citus.enable_metadata_sync", "on"),
        ("citus.enable_unsafe_triggers", "off"),
        ("citus.use_citus_managed_tables", "off"),
        ("citus.shard_replication_factor", "1"),
    ] {
        scope.set(name, value);
    }
    scope
}

/// Moves a schema tenant's shards to another Citus node (`host:port`, as
/// `pg_dist_node` names it) with `citus_schema_move`, writes blocked on the
/// tenant's tables while its rows are copied; returns the node it is on.
/// A tenant already there stays (no copy).
#[pg_extern]
fn move_tenant_node(tenant: &str, node: &str) -> String {
    let started = std::time::Instant::now();
    if !installed() {
        raise_with(
            sqlstate("0A000"),
            "move_tenant_node needs Citus, which is not installed in this database".into(),
            None,
            None,
        )
    }
    ensure_coordinator("tenancy.move_tenant_node");
    ensure_owner_reaches_workers();
    let Some((host, port)) = node
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<i32>().ok()?)))
        .filter(|(h, _)| !h.is_empty())
    else {
        raise_with(
            sqlstate("22023"),
            format!("node {node:?} is not host:port"),
            None,
            Some(
                "Name a node as SELECT nodename || ':' || nodeport FROM pg_dist_node shows it."
                    .into(),
            ),
        )
    };
    let t = crate::api::mobility::lock_tenant_row(tenant);
    let schema = match (t.isolation.as_str(), t.status.as_str(), &t.schema_name) {
        ("schema", "active" | "suspended", Some(schema)) => schema.clone(),
        _ => raise_with(
            sqlstate("55000"),
            format!(
                "tenant {:?} is {} with {} isolation: only an active or suspended schema tenant moves between nodes",
                t.slug, t.status, t.isolation
            ),
            None,
            None,
        ),
    };
    // Citus copies the shards as a superuser: a tenant made before this
    // rule held (refuse_calls_in) is refused here, not run
    refuse_calls_in(&schema);
    let scope = quiet_scope();
    let node_id = Spi::get_one_with_args::<i32>(
        "SELECT nodeid FROM pg_dist_node WHERE nodename = $1 AND nodeport = $2 \
           AND noderole = 'primary' AND isactive AND shouldhaveshards",
        &[host.clone().into(), port.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise_with(
            sqlstate("42704"),
            format!("no Citus node {node} takes shards"),
            None,
            Some("SELECT nodename, nodeport FROM pg_dist_node WHERE shouldhaveshards lists those that do.".into()),
        )
    });
    let from = Spi::get_one_with_args::<String>(
        "SELECT tenancy._citus_placement($1)->>'node'",
        &[schema.clone().into()],
    )
    .ok()
    .flatten();
    let to = format!("{host}:{port}");
    if from.as_deref() != Some(to.as_str()) {
        // as the owner role, which owns the schema (Citus wants its owner):
        // the copy of the rows runs with the tenant's objects' rights only
        crate::roles::as_owner("pg_catalog, pg_temp", None, || {
            Spi::run_with_args(
                "SELECT pg_catalog.citus_schema_move($1::regnamespace, $2, 'block_writes')",
                &[
                    tenancy_core::ident::quote_ident(&schema).into(),
                    node_id.into(),
                ],
            )
            .or_raise();
        });
        crate::catalog::audit(crate::catalog::AuditEntry {
            action: "move_node",
            tenant_id: Some(t.id),
            tenant_slug: Some(&t.slug),
            details: serde_json::json!({"from": from, "to": to}),
            duration_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
        });
    }
    drop(scope);
    to
}
