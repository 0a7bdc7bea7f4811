//! Bringing one tenant's schema to a newer template version: the
//! `migrations` of every version after its own, in order, in one
//! transaction (the queue runs it in a subtransaction per item, so a tenant
//! whose migration fails stays wholly at its old version).

use crate::catalog;
use crate::error::{raise, OrRaise};
use crate::schema_builder::run_statement;
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::json;
use tenancy_core::TenancyError;

#[pg_extern(name = "_migrate_tenant")]
pub fn migrate_tenant(tenant_id: Uuid, to_version: i32) -> i32 {
    let row = Spi::connect_mut(|c| {
        let mut rows = c.update(
            "SELECT slug, schema_name::text, template, template_version, status::text \
             FROM tenancy.tenants WHERE id = $1 FOR UPDATE",
            Some(1),
            &[tenant_id.into()],
        )?;
        Ok::<_, pgrx::spi::Error>(rows.next().map(|r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<String>(2).ok().flatten(),
                r.get::<String>(3).ok().flatten().unwrap_or_default(),
                r.get::<i32>(4).ok().flatten().unwrap_or(0),
                r.get::<String>(5).ok().flatten().unwrap_or_default(),
            )
        }))
    })
    .or_raise();
    let Some((slug, schema, template, from, status)) = row else {
        raise(TenancyError::UnknownTenant(tenant_id.to_string()));
    };
    if from >= to_version {
        return from; // already there: nothing to do
    }
    if status != "active" && status != "suspended" {
        raise(TenancyError::WrongStatus {
            slug,
            status,
            action: "migrating its schema".into(),
        });
    }
    let Some(schema) = schema else {
        raise(TenancyError::NotSupported(format!(
            "tenant {slug:?} has no schema to migrate"
        )));
    };
    // the statements first: the owner role does not read the catalog
    let mut steps = Vec::new();
    for version in from + 1..=to_version {
        let t = catalog::template_version(&template, Some(version));
        let total = t.spec.migrations.len();
        for (i, sql) in t.spec.migrations.into_iter().enumerate() {
            let context = format!(
                "template {template:?} version {version}, migration statement {} of {total}",
                i + 1
            );
            steps.push((context, sql));
        }
    }
    crate::citus::ensure_owner_reaches_workers();
    // as the owner role (src/roles.rs): a trigger in the tenant's schema
    // that the migration fires gets no more than that role's rights
    crate::roles::as_owner(&crate::roles::owner_search_path(&schema), None, || {
        for (context, sql) in &steps {
            run_statement(context, sql);
        }
        // a table the migration added, made a tenant table on Citus
        crate::citus::distribute_new_tables(&schema);
    });
    // on Citus nothing the migration made may call a user's code where
    // Citus runs it as a superuser (a shard's copy to another node)
    crate::citus::refuse_calls_in(&schema);
    // objects the migration made are the tenant role's already: the schema
    // has default privileges for it (see roles::setup_tenant_role)
    Spi::run_with_args(
        "UPDATE tenancy.tenants SET template_version = $2, updated_at = now() WHERE id = $1",
        &[tenant_id.into(), to_version.into()],
    )
    .or_raise();
    catalog::audit(catalog::AuditEntry {
        action: "migrate_tenant",
        tenant_id: Some(tenant_id),
        tenant_slug: Some(&slug),
        details: json!({"template": template, "before": from, "after": to_version}),
        duration_ms: None,
    });
    to_version
}

/// Queues one migrate item per listed tenant below `to_version` and returns
/// the batch (`tenancy.migrate` and `bulk_update` of `template_version`).
/// With `refuse_newer`, a listed tenant already past the target is an error.
#[pg_extern(name = "_queue_migrations")]
fn queue_migrations(
    template: &str,
    slugs: Vec<Option<String>>,
    to_version: Option<i32>,
    options: Option<JsonB>,
    refuse_newer: bool,
) -> Uuid {
    let version_exists = to_version.is_some_and(|v| {
        catalog::one_or_none(Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM tenancy.templates WHERE name = $1 AND version = $2)",
            &[template.into(), v.into()],
        ))
        .unwrap_or(false)
    });
    let Some(to_version) = to_version.filter(|_| version_exists) else {
        raise(TenancyError::InvalidArgument(format!(
            "template \"{template}\" has no version {}",
            to_version.map_or("NULL".into(), |v| v.to_string())
        )))
    };
    let slugs: Vec<String> = slugs.into_iter().flatten().collect();
    if refuse_newer {
        let newer = catalog::one_or_none(Spi::get_one_with_args::<String>(
            "SELECT string_agg(slug, ', ' ORDER BY slug) FROM tenancy.tenants \
             WHERE slug = ANY ($1) AND status <> 'dropped' AND template_version > $2",
            &[slugs.clone().into(), to_version.into()],
        ));
        if let Some(newer) = newer {
            let plural = if newer.contains(", ") { "s" } else { "" };
            raise(TenancyError::InvalidArgument(format!(
                "version {to_version} of template \"{template}\" is older than that of tenant{plural}: {newer}"
            )));
        }
    }
    let max_concurrent =
        tenancy_core::batch_options::parse_migration_options(options.as_ref().map(|j| &j.0))
            .or_raise();
    // the listed tenants still below the version
    let pending = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT t.id, t.slug FROM tenancy.tenants t \
             WHERE t.slug = ANY ($1) AND t.status <> 'dropped' AND t.template_version < $2",
            None,
            &[slugs.into(), to_version.into()],
        )? {
            out.push((
                r.get::<Uuid>(1)?.expect("a tenant has an id"),
                r.get::<String>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise();
    crate::api::batches::queue_tenant_batch(
        "migrate",
        pending,
        json!({"to_version": to_version}),
        json!({"template": template, "to_version": to_version}),
        max_concurrent,
        "migrate",
        json!({"template": template, "to_version": to_version}),
    )
}

/// Checks the options of a migration (`bulk_update` checks them for every
/// kind of change): the rule is tenancy_core's.
#[pg_extern(immutable, name = "_check_migration_options")]
fn check_migration_options(options: Option<JsonB>) {
    tenancy_core::batch_options::parse_migration_options(options.as_ref().map(|j| &j.0)).or_raise();
}
