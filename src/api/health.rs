//! `tenancy.health()`: the state of the tenancy machinery in this database.

use crate::catalog::one_or_none;
use crate::worker::shmem;
use pgrx::prelude::*;
use pgrx::JsonB;
use serde_json::{json, Value};

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
           'audit_log_months_ahead', (SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
               WHERE i.inhparent = 'tenancy.audit_log'::regclass AND c.relname ~ '_p[0-9]{8}$' \
                 AND to_date(right(c.relname, 8), 'YYYYMMDD') > date_trunc('month', localtimestamp))) \
         FROM tenancy.jobs j WHERE j.name = 'maintenance'",
    );
    let tenants = query_json(
        "SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM \
         (SELECT status::text, count(*) AS n FROM tenancy.tenants GROUP BY status) s",
    );
    let mut problems = Vec::new();
    if worker.get("preloaded") == Some(&json!(false)) {
        problems.push("the worker is not running: add tenancy to shared_preload_libraries, or call tenancy.process_queue() from pg_cron");
    } else if worker.get("scheduler_running") != Some(&json!(true)) {
        problems.push("no scheduler runs in this database");
    }
    if metrics.get("stale") == Some(&json!(true)) {
        problems.push("metrics are stale: the metrics job has not run for 3 of its intervals");
    }
    if maintenance
        .get("audit_log_months_ahead")
        .and_then(Value::as_i64)
        == Some(0)
    {
        problems.push("the audit log has no partition ahead: run tenancy.run_maintenance()");
    }
    JsonB(json!({
        "status": if problems.is_empty() { "ok" } else { "degraded" },
        "problems": problems,
        "worker": worker,
        "queue": queue,
        "pool": pool,
        "metrics": metrics,
        "maintenance": maintenance,
        "tenants": tenants,
    }))
}
