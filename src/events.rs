//! Events for applications: a row of `tenancy.events` in the transaction of
//! each lifecycle operation and batch transition, and a `NOTIFY` on the
//! channel `tenancy_events` that PostgreSQL sends when that transaction
//! commits (and never when it rolls back). Consumers read them in order with
//! `tenancy.events_since` (sql/events.sql), which also says why that order
//! loses nothing.
//!
//! One writer (`emit`): the audit log's writer calls it for the lifecycle
//! operations it records (`kind_of_action`), the queue for the batches'
//! items, and the batch functions in SQL through `tenancy._event_write`.

use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::{json, Value};
use std::cell::Cell;

thread_local! {
    /// The batch whose items this backend is making right now (the queue
    /// sets it): the tenant events of those items carry it.
    static CURRENT_BATCH: Cell<Option<Uuid>> = const { Cell::new(None) };
    /// `tenancy.events` exists in this database (a catalog not yet updated
    /// to this library has none; once there, it stays for the backend).
    static TABLE_EXISTS: Cell<bool> = const { Cell::new(false) };
}

/// The event kind of an audited operation; `None` for the operations that
/// are no event (templates, settings, jobs). A tenant that appears is
/// `provisioned` (an adopted schema too: `payload.via`); a clone or an
/// import is provisioned first, then `cloned` or `imported` when its data
/// is in.
pub fn kind_of_action(action: &str) -> Option<(&'static str, Option<&'static str>)> {
    Some(match action {
        "provision" => ("provisioned", Some("provision")),
        "import" => ("imported", None),
        "clone" => ("cloned", None),
        "adopt" => ("provisioned", Some("adopt")),
        "suspend" => ("suspended", None),
        "resume" => ("resumed", None),
        "archive" => ("archived", None),
        "drop" => ("dropped", None),
        "rollback_batch_tenant" => ("dropped", Some("batch_rollback")),
        "migrate_tenant" => ("migrated", None),
        "move" => ("moved", None),
        "quota_exceeded" => ("quota_exceeded", None),
        "quota_restored" => ("quota_restored", None),
        _ => return None,
    })
}

/// Marks the items this backend makes, until the guard is dropped, as the
/// batch's.
pub struct BatchScope;

impl BatchScope {
    pub fn new(batch: Uuid) -> Self {
        CURRENT_BATCH.with(|b| b.set(Some(batch)));
        BatchScope
    }
}

impl Drop for BatchScope {
    fn drop(&mut self) {
        CURRENT_BATCH.with(|b| b.set(None));
    }
}

fn table_exists() -> bool {
    if TABLE_EXISTS.with(|t| t.get()) {
        return true;
    }
    let exists = crate::catalog::one_or_none(Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regclass('tenancy.events') IS NOT NULL",
    ))
    .unwrap_or(false);
    TABLE_EXISTS.with(|t| t.set(exists));
    exists
}

/// Writes one event in the caller's transaction and announces it on
/// `tenancy_events` (`{"id": .., "kind": ..}`) when that transaction commits.
pub fn emit(
    kind: &str,
    tenant_id: Option<Uuid>,
    tenant_slug: Option<&str>,
    batch_id: Option<Uuid>,
    payload: Value,
) {
    if !table_exists() {
        return;
    }
    let batch_id = batch_id.or_else(|| CURRENT_BATCH.with(|b| b.get()));
    // one statement: the row, and its announcement (sent at commit)
    crate::kept_plans::run(
        "WITH e AS (INSERT INTO tenancy.events (kind, tenant_id, tenant_slug, batch_id, payload) \
                    VALUES ($1, $2, $3, $4, $5) RETURNING id) \
         SELECT pg_catalog.pg_notify('tenancy_events', \
                    pg_catalog.json_build_object('id', e.id, 'kind', $1)::text) FROM e",
        &[
            kind.into(),
            tenant_id.into(),
            tenant_slug.into(),
            batch_id.into(),
            JsonB(payload).into(),
        ],
        |_| Ok(()),
    );
}

/// The batch functions' (sql/queue.sql) way to `emit`.
#[pg_extern(name = "_event_write")]
fn event_write(
    kind: &str,
    tenant_id: Option<Uuid>,
    tenant_slug: Option<&str>,
    batch_id: Option<Uuid>,
    payload: Option<JsonB>,
) {
    emit(
        kind,
        tenant_id,
        tenant_slug,
        batch_id,
        payload.map_or(json!({}), |p| p.0),
    );
}
