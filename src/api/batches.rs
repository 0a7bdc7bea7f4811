//! `tenancy.provision_batch`: checks every item, queues them all or none,
//! and wakes the worker when the queuing transaction commits. The rest of
//! the batch surface (status, wait, cancel, process_queue) is in sql/queue.sql.

use crate::api::validate::check;
use crate::catalog::{self, AuditEntry};
use crate::error::{raise, raise_with, sqlstate, OrRaise};
use crate::gucs;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::json;
use tenancy_core::batch_items::items_of;
use tenancy_core::batch_options::parse_batch_options;
use tenancy_core::TenancyError;

#[pg_extern]
fn provision_batch(tenants: JsonB, options: default!(Option<JsonB>, "'{}'")) -> Uuid {
    crate::citus::ensure_coordinator("tenancy.provision_batch");
    let opts = parse_batch_options(
        options.as_ref().map(|j| &j.0),
        gucs::RETRY_ATTEMPTS.get(),
        gucs::RETRY_DELAY_MS.get() as i64,
    )
    .or_raise();
    let count = items_of(&tenants.0).or_raise().len();
    if count == 0 {
        raise(TenancyError::InvalidArgument(
            "the batch is empty: tenants must list at least one tenant".into(),
        ));
    }
    let reports = check(&tenants.0);
    let bad: Vec<_> = reports.iter().filter(|r| !r.valid()).collect();
    if !bad.is_empty() {
        let detail = bad
            .iter()
            .map(|r| {
                format!(
                    "item {}{}: {}",
                    r.ordinal,
                    r.slug
                        .as_ref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default(),
                    r.errors.join("; ")
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        // only conflicts with existing tenants: a unique violation; else bad input
        let code = if bad.iter().all(|r| r.duplicate && r.errors.len() == 1) {
            "23505"
        } else {
            "22023"
        };
        raise_with(
            sqlstate(code),
            format!(
                "{} of {} tenants in the batch are not valid; nothing was queued",
                bad.len(),
                count
            ),
            Some(detail),
            Some("tenancy.validate(tenants) shows the same checks item by item.".into()),
        );
    }

    let batch = catalog::one_or_none(Spi::get_one_with_args::<Uuid>(
        "INSERT INTO tenancy.batches (total, max_concurrent, retry_attempts, retry_delay, \
             continue_on_error, rollback_on_failure, options) \
         VALUES ($1, $2, $3, $4 * interval '1 millisecond', $5, $6, $7) RETURNING id",
        &[
            (count as i32).into(),
            opts.max_concurrent.into(),
            opts.retry_attempts.into(),
            (opts.retry_delay_ms as f64).into(),
            opts.continue_on_error.into(),
            opts.rollback_on_failure.into(),
            JsonB(options.map(|o| o.0).unwrap_or(json!({}))).into(),
        ],
    ))
    .expect("INSERT RETURNING gives a row");
    Spi::run_with_args(
        "INSERT INTO tenancy.batch_items (batch_id, ordinal, slug, spec) \
         SELECT $1, e.ord, e.item->>'slug', e.item \
         FROM jsonb_array_elements($2) WITH ORDINALITY AS e(item, ord)",
        &[batch.into(), tenants.into()],
    )
    .or_raise();
    catalog::audit(AuditEntry {
        action: "provision_batch",
        tenant_id: None,
        tenant_slug: None,
        details: json!({"batch": batch.to_string(), "total": count, "max_concurrent": opts.max_concurrent}),
        duration_ms: None,
    });
    crate::worker::wake_on_commit();
    batch
}

/// Queues a batch of `kind` over existing tenants (ids and slugs), one item
/// each: its spec the tenant's id and the keys of `spec`; `max_concurrent`
/// at once, the retry settings of the GUCs; a batch with nothing to do is
/// completed at once. Audits it as `action` (`details`, the batch and how
/// many tenants), and wakes the worker when the transaction commits. The
/// one home of the batches of `migrate` and `move_tenants`.
pub fn queue_tenant_batch(
    kind: &str,
    tenants: Vec<(Uuid, String)>,
    spec: serde_json::Value,
    mut options: serde_json::Value,
    max_concurrent: i32,
    action: &str,
    mut details: serde_json::Value,
) -> Uuid {
    crate::citus::ensure_coordinator(action);
    options["max_concurrent"] = json!(max_concurrent);
    let (ids, slugs): (Vec<Uuid>, Vec<String>) = tenants.into_iter().unzip();
    let (batch, n) = Spi::connect_mut(|c| {
        let row = c
            .update(
                "WITH pending AS (SELECT * FROM unnest($1::uuid[], $2::text[]) AS p(id, slug)), \
                      b AS (INSERT INTO tenancy.batches (kind, total, max_concurrent, retry_attempts, retry_delay, \
                                                         options, status, started_at, finished_at) \
                            SELECT $3, n, $4, $5, $6 * interval '1 millisecond', $7, \
                                   CASE WHEN n = 0 THEN 'completed' ELSE 'queued' END::tenancy.batch_state, \
                                   CASE WHEN n = 0 THEN now() END, CASE WHEN n = 0 THEN now() END \
                            FROM (SELECT count(*)::int AS n FROM pending) c \
                            RETURNING id, total), \
                      items AS (INSERT INTO tenancy.batch_items (batch_id, ordinal, slug, spec) \
                                SELECT b.id, row_number() OVER (ORDER BY p.slug), p.slug, \
                                       jsonb_build_object('tenant_id', p.id) || $8 \
                                FROM pending p, b) \
                 SELECT id, total FROM b",
                Some(1),
                &[
                    ids.into(),
                    slugs.into(),
                    kind.into(),
                    max_concurrent.into(),
                    gucs::RETRY_ATTEMPTS.get().into(),
                    (gucs::RETRY_DELAY_MS.get() as f64).into(),
                    JsonB(options).into(),
                    JsonB(spec).into(),
                ],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((row.get::<Uuid>(1)?, row.get::<i32>(2)?))
    })
    .or_raise();
    let batch = batch.expect("INSERT RETURNING gives a row");
    details["batch"] = json!(batch.to_string());
    details["tenants"] = json!(n.unwrap_or(0));
    catalog::audit(AuditEntry {
        action,
        tenant_id: None,
        tenant_slug: None,
        details,
        duration_ms: None,
    });
    crate::worker::wake_on_commit();
    batch
}

// C symbols that released install scripts (sql/archive) still name: kept so
// that an old version can be created and updated to this one, which has no
// SQL for them (its queue runner calls tenancy_core::retry directly).
#[pg_extern(sql = false)]
fn is_transient_sql(sqlstate: &str) -> bool {
    tenancy_core::retry::is_transient(sqlstate)
}

#[pg_extern(sql = false)]
fn retry_backoff_ms(attempt: i32, base_ms: f64, unit: f64) -> f64 {
    tenancy_core::retry::backoff_ms(attempt.max(0) as u32, base_ms, unit)
}

/// How long a periodic job waits after its `failures`-th failure in a row
/// (tenancy._run_due_jobs): the policy is tenancy_core's.
#[pg_extern(immutable, name = "_job_backoff_ms")]
fn job_backoff_ms(failures: i32, every_ms: f64) -> f64 {
    tenancy_core::retry::job_backoff_ms(failures.max(0) as u32, every_ms)
}

/// Wakes this database's worker when the transaction commits (CREATE
/// EXTENSION calls it, so a new database is served at once).
#[pg_extern(name = "_wake_worker")]
fn wake_worker() {
    crate::worker::wake_on_commit();
}
