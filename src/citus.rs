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
    installed()
        && !Spi::get_one::<bool>("SELECT pg_catalog.citus_is_coordinator()")
            .ok()
            .flatten()
            .unwrap_or(true)
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

/// Makes `schema` (filled from its template, owned by the owner role) a
/// Citus distributed schema: each of its tables a single-shard table, all of
/// them colocated on one node. With the extension's rights: Citus sends the
/// schema's owner role to the workers, which takes a superuser. Only empty
/// tables are distributed so: the rights are used to write Citus's catalog
/// and create empty shards, never to copy rows (whose index expressions or
/// defaults, the template's, would run with them).
pub fn distribute_schema(schema: &str) {
    if !installed() {
        return;
    }
    let scope = quiet_scope();
    let filled = Spi::get_one_with_args::<String>(
        "SELECT string_agg(c.oid::regclass::text, ', ' ORDER BY c.oid) FROM pg_catalog.pg_class c \
         WHERE c.relnamespace OPERATOR(pg_catalog.=) $1::regnamespace AND c.relkind OPERATOR(pg_catalog.=) 'r' \
           AND pg_catalog.pg_relation_size(c.oid) OPERATOR(pg_catalog.>) 0",
        &[tenancy_core::ident::quote_ident(schema).into()],
    )
    .ok()
    .flatten();
    if let Some(tables) = filled {
        raise_with(
            sqlstate("0A000"),
            format!("on Citus a template's statements may not write rows: {tables} has some"),
            Some(
                "A tenant schema is distributed once built, and only empty tables are distributed."
                    .into(),
            ),
            Some("Add the rows after the tenant is provisioned.".into()),
        )
    }
    Spi::run_with_args(
        "SELECT pg_catalog.citus_schema_distribute($1::regnamespace)",
        &[tenancy_core::ident::quote_ident(schema).into()],
    )
    .or_raise();
    drop(scope);
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

/// search_path of the catalog only, and Citus's NOTICEs (one per tenant)
/// kept from the client, until the scope ends.
fn quiet_scope() -> GucScope {
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    scope.set("client_min_messages", "warning");
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
