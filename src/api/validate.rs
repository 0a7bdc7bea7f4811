//! `tenancy.validate`: the checks a batch gets, without queueing anything.

use crate::catalog;
use crate::error::OrRaise;
use pgrx::prelude::*;
use pgrx::JsonB;
use std::collections::HashMap;
use tenancy_core::batch_items::{check_items, items_of, names_in, ItemReport, Known};

/// Looks up, in one query each, what the checks of these items need.
pub fn known_for(items: &[serde_json::Value]) -> Known {
    let (slugs, templates) = names_in(items);
    let taken = Spi::connect(|client| {
        let mut taken = HashMap::new();
        for row in client.select(
            "SELECT slug, status::text FROM tenancy.tenants WHERE slug = ANY($1) \
             UNION ALL \
             SELECT i.slug, 'queued in batch ' || i.batch_id FROM tenancy.batch_items i \
             WHERE i.status = 'queued' AND i.slug = ANY($1)",
            None,
            &[slugs.into()],
        )? {
            if let (Some(s), Some(st)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                taken.insert(s, st);
            }
        }
        Ok::<_, pgrx::spi::Error>(taken)
    })
    .or_raise();
    let mut shared = std::collections::HashSet::new();
    let templates = Spi::connect(|client| {
        let mut found = HashMap::new();
        for row in client.select(
            "SELECT DISTINCT ON (name) name, jsonb_array_length(coalesce(spec->'timescale_tables', '[]')) > 0, \
                    jsonb_array_length(coalesce(spec->'shared_tables', '[]')) > 0 \
             FROM tenancy.templates WHERE name = ANY($1) ORDER BY name, version DESC",
            None,
            &[templates.into()],
        )? {
            if let (Some(n), Some(ts), Some(sh)) =
                (row.get::<String>(1)?, row.get::<bool>(2)?, row.get::<bool>(3)?)
            {
                if sh {
                    shared.insert(n.clone());
                }
                found.insert(n, ts);
            }
        }
        Ok::<_, pgrx::spi::Error>(found)
    })
    .or_raise();
    Known {
        taken,
        templates,
        timescaledb_installed: catalog::extension_schema("timescaledb").is_some(),
        shared_templates: shared,
    }
}

/// Checks every item of a batch; more than `tenancy.max_batch_size` items
/// is refused first (54000), before any of them is looked at.
pub fn check(tenants: &serde_json::Value) -> Vec<ItemReport> {
    let items = items_of(tenants).or_raise();
    let max = crate::gucs::MAX_BATCH_SIZE.get() as usize;
    if items.len() > max {
        crate::error::raise_with(
            crate::error::sqlstate("54000"),
            format!(
                "the batch has {} tenants, more than tenancy.max_batch_size ({max})",
                items.len()
            ),
            None,
            Some("Split it into batches of at most tenancy.max_batch_size tenants.".into()),
        );
    }
    check_items(items, &known_for(items))
}

#[pg_extern]
fn validate(
    tenants: JsonB,
) -> TableIterator<
    'static,
    (
        name!(ordinal, i32),
        name!(slug, Option<String>),
        name!(valid, bool),
        name!(errors, Vec<String>),
    ),
> {
    let rows: Vec<_> = check(&tenants.0)
        .into_iter()
        .map(|r| {
            let valid = r.valid();
            (r.ordinal as i32, r.slug, valid, r.errors)
        })
        .collect();
    TableIterator::new(rows)
}
