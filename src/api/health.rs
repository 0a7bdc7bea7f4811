//! `tenancy.health()`: the state of the tenancy machinery in this database.

use crate::catalog::one_or_none;
use crate::gucs;
use crate::worker::shmem;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};
use tenancy_core::health::{tenant_score, Score, TenantFindings};

fn query_json(sql: &str) -> Value {
    one_or_none(Spi::get_one::<JsonB>(sql))
        .map(|j| j.0)
        .unwrap_or(Value::Null)
}

/// The worker as shared memory sees it, for this database.
#[pg_extern(name = "_worker_state")]
fn worker_state() -> JsonB {
    let db = unsafe { pg_sys::MyDatabaseId };
    JsonB(match shmem::view(db) {
        None => json!({"preloaded": false}),
        Some(v) => json!({
            "preloaded": true,
            "launcher_running": v.launcher_running,
            "scheduler_running": v.scheduler_pid != 0,
            "scheduler_pid": if v.scheduler_pid != 0 { json!(v.scheduler_pid) } else { Value::Null },
            "last_run_seconds_ago": if v.last_run_ms > 0 {
                json!(((shmem::now_ms() - v.last_run_ms) as f64 / 1000.0 * 10.0).round() / 10.0)
            } else { Value::Null },
        }),
    })
}

/// The cluster view: worker, queue, pool and tenants by status.
#[pg_extern]
fn health() -> JsonB {
    if crate::citus::on_worker_node() {
        // nothing is kept here: the coordinator's health() tells
        return JsonB(json!({
            "status": "ok",
            "citus": {"node": "worker"},
            "worker": {"idle": "a Citus worker node: the background worker runs no pass here; tenants are made and kept from the coordinator"},
        }));
    }
    let worker = worker_state().0;
    let queue = query_json(
        "SELECT jsonb_build_object(\
           'queued_items', count(*) FILTER (WHERE i.status = 'queued'), \
           'oldest_queued_seconds', round(extract(epoch FROM now() - min(b.created_at) FILTER (WHERE i.status = 'queued'))::numeric, 1), \
           'failed_items_24h', count(*) FILTER (WHERE i.status = 'failed' AND i.finished_at > now() - interval '1 day'), \
           'active_batches', count(DISTINCT b.id) FILTER (WHERE b.status IN ('queued', 'in_progress'))) \
         FROM tenancy.batches b JOIN tenancy.batch_items i ON i.batch_id = b.id",
    );
    let pool = query_json(
        "SELECT coalesce(jsonb_object_agg(template, ready), '{}') FROM tenancy.pool_status",
    );
    let metrics = query_json(
        "SELECT jsonb_build_object(\
           'last_refresh', j.last_finished_at, \
           'seconds_since_refresh', round(extract(epoch FROM now() - j.last_finished_at)::numeric), \
           'stale', j.last_finished_at IS NULL OR now() - j.last_finished_at > 3 * j.run_every, \
           'last_error', j.last_error) \
         FROM tenancy.jobs j WHERE j.name = 'metrics'",
    );
    let maintenance = query_json(
        "SELECT jsonb_build_object(\
           'last_run', j.last_finished_at, 'last_error', j.last_error, 'failures', j.failures, \
           'run_in_progress', to_jsonb(j) -> 'progress', \
           'audit_log_months_ahead', (SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
               WHERE i.inhparent = 'tenancy.audit_log'::regclass AND c.relname ~ '_p[0-9]{8}$' \
                 AND to_date(right(c.relname, 8), 'YYYYMMDD') > date_trunc('month', localtimestamp))) \
         FROM tenancy.jobs j WHERE j.name = 'maintenance'",
    );
    let tenants = query_json(
        "SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM \
         (SELECT status::text, count(*) AS n FROM tenancy.tenants GROUP BY status) s",
    );
    let timescaledb = timescaledb_state();
    let library = env!("CARGO_PKG_VERSION");
    let installed = one_or_none(Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'tenancy'",
    ))
    .unwrap_or_default();
    let mut problems = Score::new();
    if installed != library {
        // a new library is loaded but this database still has the old SQL
        problems.lower(20, format!("the extension here is version {installed} and the library {library}: run ALTER EXTENSION tenancy UPDATE"));
    }
    if worker.get("preloaded") == Some(&json!(false)) {
        problems.lower(40, "the worker is not running: add tenancy to shared_preload_libraries, or call tenancy.process_queue() from pg_cron");
    } else if worker.get("scheduler_running") != Some(&json!(true)) {
        problems.lower(40, "no scheduler runs in this database");
    } else if let Some(ago) = worker.get("last_run_seconds_ago").and_then(Value::as_f64) {
        // a pass takes a naptime; a periodic job can take longer, but not this long
        let limit = (gucs::NAPTIME_MS.get() as f64 / 1000.0 * 10.0).max(20.0);
        if ago > limit {
            problems.lower(40, format!("the scheduler has not finished a pass for {ago:.0} s: it is stuck, or a job runs for too long"));
        }
    }
    if metrics.get("stale") == Some(&json!(true)) {
        problems.lower(
            20,
            "metrics are stale: the metrics job has not run for 3 of its intervals",
        );
    }
    if maintenance
        .get("audit_log_months_ahead")
        .and_then(Value::as_i64)
        == Some(0)
    {
        problems.lower(
            10,
            "the audit log has no partition ahead: run tenancy.run_maintenance()",
        );
    }
    if installed == library {
        // roles made for databases that are gone: removed by maintenance,
        // never reused by provision (their names hold the dead database's OID)
        let orphans =
            query_json("SELECT coalesce(jsonb_agg(r), '[]') FROM tenancy._orphan_roles() r");
        if let Some(list) = orphans.as_array().filter(|l| !l.is_empty()) {
            let names: Vec<&str> = list.iter().filter_map(Value::as_str).take(5).collect();
            problems.lower(5, format!("{} role(s) of dropped databases remain ({}{}): tenancy.run_maintenance() removes those not granted anything elsewhere",
                list.len(), names.join(", "), if list.len() > 5 { ", ..." } else { "" }));
        }
    }
    if timescaledb.get("scheduler_running") == Some(&json!(false)) {
        problems.lower(20, "TimescaleDB's scheduler is not running in this database: its policies do not run (check max_worker_processes and timescaledb.max_background_workers)");
    }
    let untracked = crate::activity::dropped();
    if untracked > 0 {
        problems.lower(5, format!("{untracked} statement(s) were not counted in tenancy.tenant_activity: more tenants were active in two periods than its 4,096 slots (every database of the server)"));
    }
    let score = problems.value();
    let problems = problems.reasons();
    let mut health = json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "score": score,
        "problems": problems,
        "worker": worker,
        "queue": queue,
        "pool": pool,
        "metrics": metrics,
        "maintenance": maintenance,
        "tenants": tenants,
        "activity": json!({
            "tracking": crate::activity::tracking(),
            "untracked_statements": untracked,
        }),
        "timescaledb": timescaledb,
        "version": json!({"extension": installed, "library": library}),
    });
    if let Some(citus) = crate::citus::state() {
        health["citus"] = citus;
    }
    JsonB(health)
}

/// TimescaleDB beside us, when it is installed in this database: its version,
/// whether its scheduler runs here, and the hypertables and chunks of tenants.
fn timescaledb_state() -> Value {
    let Some(version) = one_or_none(Spi::get_one::<String>(
        "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'timescaledb'",
    )) else {
        return Value::Null;
    };
    // only parsed when the extension (and so its information schema) exists
    let mut state = query_json(
        "SELECT jsonb_build_object(\
           'scheduler_running', EXISTS (SELECT 1 FROM pg_stat_activity \
               WHERE datname = current_database() AND backend_type = 'TimescaleDB Background Worker Scheduler'), \
           'tenant_hypertables', (SELECT count(*) FROM timescaledb_information.hypertables h \
               JOIN tenancy.tenants t ON t.schema_name = h.hypertable_schema), \
           'tenant_chunks', (SELECT count(*) FROM timescaledb_information.chunks c \
               JOIN tenancy.tenants t ON t.schema_name = c.hypertable_schema))",
    );
    state["version"] = json!(version);
    state
}

/// The score of one tenant from what `health(tenant)` found of it
/// (sql/health.sql): `{"score": .., "reasons": [..]}`. The rules are
/// tenancy_core's.
#[pg_extern(immutable, name = "_tenant_score")]
fn tenant_score_sql(findings: JsonB) -> JsonB {
    let f: TenantFindings = serde_json::from_value(findings.0).unwrap_or_else(|e| {
        crate::error::raise(tenancy_core::TenancyError::InvalidArgument(format!(
            "health findings: {e}"
        )))
    });
    let s = tenant_score(&f);
    JsonB(json!({"score": s.value(), "reasons": s.reasons()}))
}

/// Builds a version of a template into `schema`, for `health(tenant)` to
/// compare a tenant against (it runs in a subtransaction that is rolled back).
#[pg_extern(name = "_build_reference")]
fn build_reference(template: &str, version: i32, schema: &str) {
    let t = crate::catalog::template_version(template, Some(version));
    let ts = crate::schema_builder::check_prerequisites(&t);
    crate::schema_builder::build_local_schema(&t, schema, ts.as_deref(), None);
}
