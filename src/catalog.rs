//! Reads and writes of the tenancy catalog tables. Values always travel as
//! SPI parameters; identifiers never come from here into SQL text.

use crate::error::{raise, OrRaise};
use pgrx::prelude::*;
use pgrx::{JsonB, Uuid};
use serde_json::Value;
use tenancy_core::options::ProvisionOptions;
use tenancy_core::template::{parse_spec, TemplateSpec};
use tenancy_core::TenancyError;

pub struct Template {
    pub name: String,
    pub version: i32,
    pub spec: TemplateSpec,
}

/// `get_one` that reads "no row" as `None` instead of an error.
pub fn one_or_none<T>(r: Result<Option<T>, pgrx::spi::Error>) -> Option<T> {
    match r {
        Ok(v) => v,
        Err(pgrx::spi::Error::InvalidPosition) => None,
        Err(e) => Err::<Option<T>, _>(e).or_raise(),
    }
}

/// The newest version of a template, or 42704.
pub fn latest_template(name: &str) -> Template {
    template_version(name, None)
}

/// A version of a template (the newest when `None`), or 42704.
pub fn template_version(name: &str, version: Option<i32>) -> Template {
    let row = crate::kept_plans::run(
        "SELECT version, spec FROM tenancy.templates WHERE name = $1 AND ($2 IS NULL OR version = $2) \
         ORDER BY version DESC LIMIT 1",
        &[name.into(), version.into()],
        |rows| {
            if rows.is_empty() {
                return Ok(None);
            }
            let row = rows.first();
            Ok(row.get::<i32>(1)?.zip(row.get::<JsonB>(2)?))
        },
    );
    let Some((version, spec)) = row else {
        raise(TenancyError::UnknownTemplate(name.to_string()))
    };
    // A stored spec was checked when registered; parse it again to use it.
    let spec = parse_spec(name, &spec.0).or_raise();
    Template {
        name: name.to_string(),
        version,
        spec,
    }
}

/// The tenant a slug or an id names, a slug first (a slug never has a
/// hyphen, so it is never taken for an id): the one look-up of a tenant
/// argument. SQL calls it as `tenancy._tenant_id(text)`. Two statements, not
/// one with an OR: each is a plain unique-index look-up that PostgreSQL keeps
/// one generic plan for, where the OR of a NULL id was planned again on
/// every call (set_tenant runs this at the start of a pooler's transaction).
pub fn tenant_id_of(tenant: &str) -> Option<Uuid> {
    crate::kept_plans::get_one::<Uuid>(
        "SELECT t.id FROM tenancy.tenants t WHERE t.slug OPERATOR(pg_catalog.=) $1",
        &[tenant.into()],
    )
    .or_else(|| {
        let id = Uuid::from_bytes(tenancy_core::slug::canonical_uuid(tenant)?);
        crate::kept_plans::get_one::<Uuid>(
            "SELECT t.id FROM tenancy.tenants t WHERE t.id OPERATOR(pg_catalog.=) $1",
            &[id.into()],
        )
    })
}

#[pg_extern(stable, name = "_tenant_id")]
fn tenant_id_sql(tenant: &str) -> Option<Uuid> {
    tenant_id_of(tenant)
}

/// The schema an extension is installed in, when it is installed.
pub fn extension_schema(extname: &str) -> Option<String> {
    one_or_none(Spi::get_one_with_args::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = $1",
        &[extname.into()],
    ))
}

pub struct NewTenant<'a> {
    /// The id to keep (a tenant imported from another database); a new one
    /// when `None`.
    pub id: Option<Uuid>,
    pub slug: &'a str,
    pub name: Option<&'a str>,
    pub template: &'a Template,
    /// The tenant's own schema; none for a shared tenant.
    pub schema_name: Option<&'a str>,
    pub role_name: &'a str,
    pub options: &'a ProvisionOptions,
}

/// Inserts the catalog row. `None` when a unique key (slug, domain, schema)
/// is already held; a concurrent insert of the same slug waits for the other
/// transaction first, so exactly one of two racing callers gets a row.
pub fn insert_tenant(t: &NewTenant) -> Option<Uuid> {
    let o = t.options;
    crate::kept_plans::get_one::<Uuid>(
        "INSERT INTO tenancy.tenants AS t (id, slug, name, status, isolation, schema_name, role_name, \
             template, template_version, domain, email, tenant_type, settings, features, max_users, \
             max_storage_bytes, provisioned_at) \
         VALUES (COALESCE($15, pg_catalog.gen_random_uuid()), $1, $2, 'active', $3, $4, $14, $5, $6, $7, $8, $9, $10, \
                 $11, $12, $13, now()) \
         ON CONFLICT DO NOTHING RETURNING t.id",
        &[
            t.slug.into(),
            t.name.into(),
            o.isolation.as_str().into(),
            t.schema_name.into(),
            t.template.name.as_str().into(),
            t.template.version.into(),
            o.domain.as_deref().into(),
            o.email.as_deref().into(),
            o.tenant_type.as_deref().into(),
            JsonB(o.settings.clone()).into(),
            JsonB(o.features.clone()).into(),
            o.max_users.map(|v| v as i32).into(),
            o.max_storage_bytes.into(),
            t.role_name.into(),
            t.id.into(),
        ],
    )
}

pub struct ExistingTenant {
    pub id: Uuid,
    pub status: String,
    pub template: String,
    pub isolation: String,
}

pub fn tenant_by_slug(slug: &str) -> Option<ExistingTenant> {
    Spi::connect(|client| {
        let mut rows = client.select(
            "SELECT id, status::text, template, isolation FROM tenancy.tenants WHERE slug = $1",
            Some(1),
            &[slug.into()],
        )?;
        if let Some(row) = rows.next() {
            return Ok(Some(ExistingTenant {
                id: row.get::<Uuid>(1)?.expect("id is not null"),
                status: row.get::<String>(2)?.unwrap_or_default(),
                template: row.get::<String>(3)?.unwrap_or_default(),
                isolation: row.get::<String>(4)?.unwrap_or_default(),
            }));
        }
        Ok::<_, pgrx::spi::Error>(None)
    })
    .or_raise()
}

/// The slug of the live tenant that holds a domain.
pub fn domain_holder(domain: &str) -> Option<String> {
    one_or_none(Spi::get_one_with_args::<String>(
        "SELECT slug FROM tenancy.tenants WHERE domain = $1 AND status <> 'dropped'",
        &[domain.into()],
    ))
}

/// The live tenant whose schema has this name.
pub fn schema_holder(schema: &str) -> Option<String> {
    one_or_none(Spi::get_one_with_args::<String>(
        "SELECT slug FROM tenancy.tenants WHERE schema_name = $1 AND status <> 'dropped'",
        &[schema.into()],
    ))
}

pub struct AuditEntry<'a> {
    pub action: &'a str,
    pub tenant_id: Option<Uuid>,
    pub tenant_slug: Option<&'a str>,
    pub details: Value,
    pub duration_ms: Option<f64>,
}

/// Records an operation in the audit log, in the caller's transaction: it
/// commits or rolls back with the operation it describes. The log's one
/// writer: SQL calls it as `tenancy._audit_write`. (A plain INSERT of the
/// columns every released version has, so that it also serves a database
/// whose SQL is not yet updated to this library.)
pub fn audit(e: AuditEntry) {
    write_audit(e, None);
}

fn write_audit(e: AuditEntry, error: Option<&str>) {
    // a lifecycle operation that succeeded is also an event for applications
    if let (None, Some((kind, via))) = (error, crate::events::kind_of_action(e.action)) {
        let mut payload = e.details.clone();
        if let (Some(via), Some(map)) = (via, payload.as_object_mut()) {
            map.insert("via".into(), via.into());
        }
        crate::events::emit(kind, e.tenant_id, e.tenant_slug, None, payload);
    }
    crate::kept_plans::run(
        "INSERT INTO tenancy.audit_log (action, tenant_id, tenant_slug, details, duration_ms, result, error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            e.action.into(),
            e.tenant_id.into(),
            e.tenant_slug.into(),
            JsonB(e.details).into(),
            e.duration_ms.into(),
            if error.is_some() { "error" } else { "ok" }.into(),
            error.into(),
        ],
        |_| Ok(()),
    )
}

#[pg_extern(name = "_audit_write")]
fn audit_write(
    action: &str,
    tenant_id: Option<Uuid>,
    tenant_slug: Option<&str>,
    details: Option<JsonB>,
    duration_ms: default!(Option<f64>, "NULL"),
    error: default!(Option<&str>, "NULL"),
) {
    write_audit(
        AuditEntry {
            action,
            tenant_id,
            tenant_slug,
            details: details.map_or(Value::Object(Default::default()), |d| d.0),
            duration_ms,
        },
        error,
    );
}
