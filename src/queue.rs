//! The batch queue's runner, called by the worker and by `process_queue()`:
//! claims queued items of one batch (`_claim_items` in sql/queue.sql), makes
//! each in a subtransaction of its own straight from its parsed spec, and
//! records every result of the claim in one statement (`_record_results`).
//!
//! ```text
//! _claim_items ──> per item: subtransaction { provision_tenant | migrate_tenant | move_tenant }
//!              ──> _record_results (succeeded / retry later / failed / cancelled)
//! ```
//!
//! Several items share a transaction: its commit (a WAL flush) costs as much
//! as a small migration. Each item still has its own result, and an item that
//! fails leaves nothing behind (its subtransaction is rolled back); a worker
//! that dies leaves every item of its claim queued, nothing of them made.

use crate::error::{sqlstate_text, OrRaise};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tenancy_core::options::parse_item;
use tenancy_core::retry::{backoff_ms, is_transient};

/// Items one transaction claims at most, and the time after which it takes
/// no further item of its claim: one transaction holds the locks of every
/// tenant it touches, and its tenants appear together when it commits.
const ITEMS_PER_TRANSACTION: i32 = 16;
const TRANSACTION_BUDGET: Duration = Duration::from_millis(250);

struct Claimed {
    ordinal: i32,
    /// A `migrate` batch's item: the tenant and the version to bring it to.
    migration: Option<(Uuid, i32)>,
    spec: Value,
    attempts: i32,
}

struct Batch {
    id: Uuid,
    retry_attempts: i32,
    retry_delay_ms: f64,
    continue_on_error: bool,
    items: Vec<Claimed>,
}

/// Makes up to `max_items` queued items of one batch (NULL: as many as one
/// transaction takes) in the caller's transaction; returns how many it
/// finished (succeeded, failed or put back for a retry). Zero when nothing
/// was ready.
#[pg_extern(name = "_process_next")]
fn process_next(max_items: Option<i32>) -> i32 {
    let max_items = max_items.unwrap_or(ITEMS_PER_TRANSACTION);
    let Some(batch) = claim(max_items.clamp(1, ITEMS_PER_TRANSACTION)) else {
        return 0;
    };
    let started = Instant::now();
    // the tenant events of these items carry the batch
    let _scope = crate::events::BatchScope::new(batch.id);
    let mut results = Vec::with_capacity(batch.items.len());
    let mut stopped = false;
    for item in &batch.items {
        if stopped || (!results.is_empty() && started.elapsed() > TRANSACTION_BUDGET) {
            if stopped {
                // the batch was stopped by an item before it: as _stop_batch
                // would have cancelled it, were it not locked by this claim
                results.push(json!({"ordinal": item.ordinal, "status": "cancelled"}));
            }
            continue; // over budget: left queued, for the next transaction
        }
        let t0 = Instant::now();
        let outcome = in_subtransaction(|| run_item(item));
        let ms = t0.elapsed().as_secs_f64() * 1000.0;
        let ago = |t: Instant| t.elapsed().as_secs_f64() * 1000.0;
        results.push(match outcome {
            Ok(tenant_id) => json!({
                "ordinal": item.ordinal, "status": "succeeded", "tenant_id": tenant_id.to_string(),
                "started_ago_ms": ago(t0), "duration_ms": ms,
            }),
            Err((state, message)) => {
                let attempt = item.attempts + 1;
                if is_transient(&state) && item.attempts < batch.retry_attempts {
                    let wait = backoff_ms(attempt as u32, batch.retry_delay_ms, rand_unit());
                    json!({
                        "ordinal": item.ordinal, "status": "queued", "error": message,
                        "sqlstate": state, "started_ago_ms": ago(t0), "retry_in_ms": wait,
                    })
                } else {
                    stopped = !batch.continue_on_error;
                    item_failed(&batch, item, &state, &message);
                    json!({
                        "ordinal": item.ordinal, "status": "failed", "error": message,
                        "sqlstate": state, "started_ago_ms": ago(t0), "duration_ms": ms,
                    })
                }
            }
        });
    }
    let done = results
        .iter()
        .filter(|r| r["status"] != "cancelled")
        .count() as i32;
    Spi::run_with_args(
        "SELECT tenancy._record_results($1, $2, $3)",
        &[
            batch.id.into(),
            JsonB(Value::Array(results)).into(),
            stopped.into(),
        ],
    )
    .or_raise();
    done
}

/// The event of an item that failed for good (no retry left): its tenant as
/// the item names it (a slug to make, or the id of one to migrate or move).
fn item_failed(batch: &Batch, item: &Claimed, state: &str, message: &str) {
    let named = |key| item.spec.get(key).and_then(Value::as_str);
    let tenant = item.migration.map(|(t, _)| t).or_else(|| {
        named("tenant_id")
            .and_then(tenancy_core::slug::canonical_uuid)
            .map(Uuid::from_bytes)
    });
    crate::events::emit(
        "batch_item_failed",
        tenant,
        named("slug"),
        Some(batch.id),
        json!({"ordinal": item.ordinal, "sqlstate": state, "error": message, "attempts": item.attempts + 1}),
    );
}

/// One batch with a free concurrency slot and its ready items, locked.
fn claim(max_items: i32) -> Option<Batch> {
    Spi::connect_mut(|c| {
        let rows = c.update(
            "SELECT batch_id, retry_attempts, retry_delay_ms, continue_on_error, \
                    ordinal, migrate_tenant, migrate_to, spec, attempts \
             FROM tenancy._claim_items($1)",
            None,
            &[max_items.into()],
        )?;
        let mut batch: Option<Batch> = None;
        for r in rows {
            let b = batch.get_or_insert_with(|| Batch {
                id: r.get::<Uuid>(1).ok().flatten().expect("a claimed batch id"),
                retry_attempts: r.get::<i32>(2).ok().flatten().unwrap_or(0),
                retry_delay_ms: r.get::<f64>(3).ok().flatten().unwrap_or(0.0),
                continue_on_error: r.get::<bool>(4).ok().flatten().unwrap_or(true),
                items: Vec::new(),
            });
            b.items.push(Claimed {
                ordinal: r.get::<i32>(5)?.unwrap_or(0),
                migration: r.get::<Uuid>(6)?.zip(r.get::<i32>(7)?),
                spec: r.get::<JsonB>(8)?.map(|j| j.0).unwrap_or(Value::Null),
                attempts: r.get::<i32>(9)?.unwrap_or(0),
            });
        }
        Ok::<_, pgrx::spi::Error>(batch)
    })
    .or_raise()
}

/// Makes one item: its spec parsed here, once, then the same Rust as the
/// SQL functions `provision` and `migrate` reach.
fn run_item(item: &Claimed) -> Uuid {
    if let Some((tenant, to_version)) = item.migration {
        crate::api::migrate::migrate_tenant(tenant, to_version);
        return tenant;
    }
    // a `move` batch's item: the tenant and where it goes
    if let (Some(tenant), Some(to)) = (
        item.spec.get("tenant_id").and_then(Value::as_str),
        item.spec.get("move_to").and_then(Value::as_str),
    ) {
        return crate::api::mobility::move_tenant(tenant, to);
    }
    // checked when queued; checked again, as the catalog may have changed
    let spec = parse_item(&item.spec).unwrap_or_else(|(_, problems)| {
        crate::error::raise(tenancy_core::TenancyError::InvalidArgument(
            problems
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        ))
    });
    crate::api::provision::provision_tenant(
        &spec.slug,
        spec.name.as_deref(),
        &spec.template,
        &spec.options,
    )
}

/// Runs `f` in a subtransaction: its work kept when it returns, rolled back
/// when it raises an ERROR, whose SQLSTATE and message (with its detail) are
/// returned instead. As PL/pgSQL's `BEGIN ... EXCEPTION` does.
fn in_subtransaction<R>(
    f: impl FnOnce() -> R + std::panic::UnwindSafe,
) -> Result<R, (String, String)> {
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        pg_sys::MemoryContextSwitchTo(context);
        let restore = || {
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
        };
        PgTryBuilder::new(|| {
            let r = f();
            pg_sys::ReleaseCurrentSubTransaction();
            restore();
            Ok(r)
        })
        .catch_others(|e| {
            restore();
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
            restore();
            let report = match &e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            let mut message = report.message().to_string();
            if let Some(detail) = report.detail().filter(|d| !d.is_empty()) {
                message.push('\n');
                message.push_str(detail);
            }
            Err((sqlstate_text(report.sql_error_code()), message))
        })
        .execute()
    }
}

/// A uniform number in [0, 1), for the backoff's jitter.
fn rand_unit() -> f64 {
    unsafe { pg_sys::pg_prng_double(std::ptr::addr_of_mut!(pg_sys::pg_global_prng_state)) }
}
