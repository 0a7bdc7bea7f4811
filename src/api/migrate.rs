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
    // as the owner role (src/roles.rs): a trigger in the tenant's schema
    // that the migration fires gets no more than that role's rights
    crate::roles::as_owner(&crate::roles::owner_search_path(&schema), None, || {
        for (context, sql) in &steps {
            run_statement(context, sql);
        }
    });
    // objects the migration made are the tenant role's already: the schema
    // has default privileges for it (see _setup_tenant_role)
    Spi::run_with_args(
        "UPDATE tenancy.tenants SET template_version = $2, updated_at = now() WHERE id = $1",
        &[tenant_id.into(), to_version.into()],
    )
    .or_raise();
    Spi::run_with_args(
        "INSERT INTO tenancy.audit_log (action, tenant_id, tenant_slug, details) VALUES ('migrate_tenant', $1, $2, $3)",
        &[
            tenant_id.into(),
            slug.as_str().into(),
            JsonB(json!({"template": template, "before": from, "after": to_version})).into(),
        ],
    )
    .or_raise();
    to_version
}

/// Builds a version of a template into `schema`, for `health(tenant)` to
/// compare a tenant against (it runs in a subtransaction that is rolled back).
#[pg_extern(name = "_build_reference")]
fn build_reference(template: &str, version: i32, schema: &str) {
    let t = catalog::template_version(template, Some(version));
    let ts = crate::schema_builder::check_prerequisites(&t);
    crate::schema_builder::build_schema(&t, schema, ts.as_deref(), None);
}
