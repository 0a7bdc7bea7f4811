//! `tenancy.provision`: one tenant, atomically, in the caller's transaction.
//! The SQL wrapper in `sql/finalize.sql` returns the `tenancy.tenants` row.

use crate::api::pool::{claim, Claim};
use crate::catalog::{self, AuditEntry, NewTenant};
use crate::error::{raise, OrRaise};
use crate::schema_builder::{build_schema, check_prerequisites};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::json;
use std::time::Instant;
use tenancy_core::options::{parse_provision_options, Isolation, ProvisionOptions};
use tenancy_core::slug::validate_slug;
use tenancy_core::TenancyError;

#[pg_extern(name = "_provision")]
fn provision_internal(
    slug: Option<&str>,
    name: Option<&str>,
    template: Option<&str>,
    options: Option<JsonB>,
) -> Uuid {
    let slug = validate_slug(slug).or_raise();
    let options = parse_provision_options(options.as_ref().map(|j| &j.0)).or_raise();
    provision_tenant(slug, name, template.unwrap_or("default"), &options)
}

/// Makes one tenant: what `_provision` does once it has read its arguments,
/// and what the queue runner (src/queue.rs) calls with an item's parsed spec.
pub fn provision_tenant(
    slug: &str,
    name: Option<&str>,
    template_name: &str,
    options: &ProvisionOptions,
) -> Uuid {
    let started = Instant::now();
    let template = catalog::latest_template(template_name);
    provision_from(None, slug, name, &template, options, started)
}

/// Makes one tenant from a given version of a template (clone_tenant makes
/// the copy from its source's version), with a given id (import_begin keeps
/// the exported tenant's).
pub fn provision_from(
    id: Option<Uuid>,
    slug: &str,
    name: Option<&str>,
    template: &catalog::Template,
    options: &ProvisionOptions,
    started: Instant,
) -> Uuid {
    crate::citus::ensure_coordinator("making a tenant");
    let timescale_schema = check_prerequisites(template);
    let schema = template.spec.schema_name(slug);
    // the tenant's own role, of this database only (src/roles.rs): NOLOGIN,
    // may use the tenant's schema (or, shared, the shared tables under RLS)
    // and nothing else
    let role_name = if crate::roles::legacy_catalog() {
        schema.clone()
    } else {
        crate::roles::tenant_role(slug)
    };
    let role = role_name.as_str();
    let shared = options.isolation == Isolation::Shared;
    let shared_schema = shared.then(|| crate::schema_builder::ensure_shared_schema(template));

    // The catalog row comes first: its unique keys serialize two callers
    // racing for one slug before either creates anything.
    let inserted = catalog::insert_tenant(&NewTenant {
        id,
        slug,
        name,
        template,
        schema_name: (!shared).then_some(schema.as_str()),
        role_name: role,
        options,
    });
    let Some(id) = inserted else {
        return existing_or_conflict(slug, &template.name, options, &schema);
    };

    // a shared tenant's role gets the shared tables; a schema tenant's, its
    // schema: claimed from the pool with the role built with it (or, for a
    // schema pooled before 0.4.0, a role made now and granted what is
    // there), or built with the role's default privileges in place
    let claimed = if !shared && options.pool {
        claim(template, &schema, role)
    } else {
        Claim::Empty
    };
    let pooled = !matches!(claimed, Claim::Empty);
    match claimed {
        Claim::SchemaAndRole => {}
        Claim::Schema => crate::roles::setup_tenant_role(&schema, role, true, false),
        Claim::Empty if shared => {
            let access = shared_schema.as_deref().unwrap_or(&schema);
            crate::roles::setup_tenant_role(access, role, true, true)
        }
        Claim::Empty => build_schema(template, &schema, timescale_schema.as_deref(), Some(role)),
    }

    catalog::audit(AuditEntry {
        action: "provision",
        tenant_id: Some(id),
        tenant_slug: Some(slug),
        details: json!({
            "template": template.name,
            "template_version": template.version,
            "schema": shared_schema.as_deref().unwrap_or(&schema),
            "isolation": options.isolation.as_str(),
            "from_pool": pooled,
        }),
        duration_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
    });
    id
}

/// The insert found a unique key taken: return the existing tenant when
/// `if_not_exists` allows it, or say which key is taken.
fn existing_or_conflict(
    slug: &str,
    template: &str,
    options: &tenancy_core::options::ProvisionOptions,
    schema: &str,
) -> Uuid {
    if let Some(t) = catalog::tenant_by_slug(slug) {
        if t.status == "dropped" || t.status == "archived" {
            raise(TenancyError::WrongStatus {
                slug: slug.into(),
                status: t.status,
                action: "provisioning its slug again".into(),
            });
        }
        if options.if_not_exists
            && t.template == template
            && t.isolation == options.isolation.as_str()
        {
            return t.id;
        }
        if options.if_not_exists {
            raise(TenancyError::TenantMismatch {
                slug: slug.into(),
                differences: format!(
                    "It has template {:?} and isolation {:?}; this call asked for {template:?} and {:?}.",
                    t.template,
                    t.isolation,
                    options.isolation.as_str()
                ),
            });
        }
        raise(TenancyError::DuplicateTenant(slug.into()));
    }
    if let Some(domain) = &options.domain {
        if let Some(holder) = catalog::domain_holder(domain) {
            raise(TenancyError::DuplicateDomain {
                domain: domain.clone(),
                holder,
            });
        }
    }
    if let Some(holder) = catalog::schema_holder(schema) {
        raise(TenancyError::SchemaTaken {
            schema: schema.into(),
            holder,
        });
    }
    // The conflicting row was deleted between our insert and this look-up.
    raise(TenancyError::DuplicateTenant(slug.into()))
}
