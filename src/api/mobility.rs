//! Tenants that move: `move_tenant` takes a tenant from the shared tables to
//! a schema of its own and back, in the caller's transaction. Its id, role,
//! memberships and catalog row stay; its rows are copied, then removed from
//! where they were. The SQL wrapper (sql/finalize.sql) returns the row.

use crate::catalog::{self, AuditEntry};
use crate::error::{raise, raise_with, sqlstate, OrRaise};
use crate::guc_scope::GucScope;
use crate::schema_builder::{build_schema, check_prerequisites, ensure_shared_schema};
use pgrx::prelude::*;
use pgrx::Uuid;
use serde_json::{json, Map, Value};
use std::time::Instant;
use tenancy_core::ident::{qualified, quote_ident};
use tenancy_core::TenancyError;

/// A tenant's catalog row, locked for the rest of the transaction.
pub struct LockedTenant {
    pub id: Uuid,
    pub slug: String,
    pub status: String,
    pub isolation: String,
    pub schema_name: Option<String>,
    pub role_name: Option<String>,
    pub template: String,
    pub template_version: i32,
}

/// The tenant a slug or id names, locked (`tenancy._tenant_for_update`:
/// 42704 when there is none).
pub fn lock_tenant_row(tenant: &str) -> LockedTenant {
    Spi::connect(|c| {
        let row = c
            .select(
                "SELECT id, slug, status::text, isolation, schema_name::text, role_name::text, \
                        template, template_version FROM tenancy._tenant_for_update($1)",
                Some(1),
                &[tenant.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>(LockedTenant {
            id: row.get::<Uuid>(1)?.expect("a tenant has an id"),
            slug: row.get::<String>(2)?.unwrap_or_default(),
            status: row.get::<String>(3)?.unwrap_or_default(),
            isolation: row.get::<String>(4)?.unwrap_or_default(),
            schema_name: row.get::<String>(5)?,
            role_name: row.get::<String>(6)?,
            template: row.get::<String>(7)?.unwrap_or_default(),
            template_version: row.get::<i32>(8)?.unwrap_or(1),
        })
    })
    .or_raise()
}

/// Where a tenant's rows live: a schema of its own, or the template's
/// shared schema (its rows those whose `tenant_id` is the tenant's).
#[derive(Clone)]
pub enum Place {
    Schema(String),
    Shared(String),
}

impl Place {
    pub fn schema(&self) -> &str {
        match self {
            Place::Schema(s) | Place::Shared(s) => s,
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Place::Shared(_))
    }

    /// Where a tenant of `template` with this slug has its rows in `shared`
    /// or schema isolation: the template's shared schema, or its own.
    pub fn of(template: &catalog::Template, slug: &str, shared: bool) -> Place {
        if shared {
            Place::Shared(template.spec.shared_schema_name(&template.name))
        } else {
            Place::Schema(template.spec.schema_name(slug))
        }
    }
}

/// One table of the tenant's, and the columns its rows are copied by.
pub struct TableCopy {
    pub name: String,
    /// quoted, in the source table's order; never `tenant_id`, never a
    /// generated column
    pub columns: String,
    /// the same, as names
    pub column_names: Vec<String>,
}

/// The tables that hold the tenant's rows in `from`, in the order they were
/// made (a foreign key's table after the one it references), each checked
/// against `to`: a table of the same name there (with the shared tables'
/// `tenant_id` when `to` is shared) with every column. Anything that would
/// be left behind is refused (0A000) before a row moves; a table that holds
/// nothing of `tenant`'s is left out.
pub fn tables_to_copy(tenant: Option<Uuid>, from: &Place, to: &Place) -> Vec<TableCopy> {
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    let rows = Spi::connect(|c| {
        let table = c.select(
            "WITH src AS ( \
                 SELECT c.oid, c.relname FROM pg_class c \
                 WHERE c.relnamespace = to_regnamespace(quote_ident($1)) AND c.relkind IN ('r', 'p') \
                   AND NOT c.relispartition \
                   AND (NOT $3 OR c.oid IN (SELECT t::oid FROM tenancy._shared_tables($1) t))), \
             col AS ( \
                 SELECT a.attrelid, a.attname, a.attnum FROM pg_attribute a \
                 WHERE a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' AND a.attname <> 'tenant_id') \
             SELECT s.relname::text, s.oid, \
                    d.oid IS NOT NULL AND (NOT $4 OR d.oid IN (SELECT t::oid FROM tenancy._shared_tables($2) t)), \
                    (SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum) FROM col a WHERE a.attrelid = s.oid), \
                    (SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM col a WHERE a.attrelid = s.oid), \
                    (SELECT string_agg(a.attname::text, ', ' ORDER BY a.attnum) FROM col a \
                     WHERE a.attrelid = s.oid \
                       AND NOT EXISTS (SELECT 1 FROM col b WHERE b.attrelid = d.oid AND b.attname = a.attname)) \
             FROM src s LEFT JOIN pg_class d ON d.relnamespace = to_regnamespace(quote_ident($2)) \
                                            AND d.relname = s.relname AND d.relkind IN ('r', 'p') \
             ORDER BY s.oid",
            None,
            &[
                from.schema().into(),
                to.schema().into(),
                from.is_shared().into(),
                to.is_shared().into(),
            ],
        )?;
        let mut out = Vec::new();
        for r in table {
            out.push((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<bool>(3)?.unwrap_or(false),
                r.get::<String>(4)?.unwrap_or_default(),
                r.get::<Vec<String>>(5)?.unwrap_or_default(),
                r.get::<String>(6)?,
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise();
    let mut tables = Vec::with_capacity(rows.len());
    for (name, _oid, counterpart, columns, column_names, missing) in rows {
        // a table with nothing of the tenant's has nothing to copy (and
        // loses nothing where it has no counterpart): left out
        if tenant.is_some_and(|id| !has_rows(id, from, &name)) {
            continue;
        }
        let problem = if !counterpart {
            Some(format!(
                "table {name} of schema {} has no table of that name{} in schema {}: its rows would be left behind",
                from.schema(),
                if to.is_shared() { " with a uuid tenant_id column" } else { "" },
                to.schema()
            ))
        } else {
            missing.map(|missing| {
                format!(
                    "table {}.{name} has no column {missing}: those values would be lost",
                    to.schema()
                )
            })
        };
        if let Some(problem) = problem {
            raise(TenancyError::NotSupported(problem));
        }
        tables.push(TableCopy {
            name,
            columns,
            column_names,
        });
    }
    tables
}

/// The tenant has rows in `table` of `from`. Read as the table's owner, in
/// the tenant's context, never with this function's (the superuser's)
/// rights: planning the read loads the table's index expressions and
/// partition key, written by whoever made the table (the owner role for a
/// template's table; a superuser's own table, made by hand in a shared
/// schema, is read with that superuser's rights, its code being theirs).
fn has_rows(id: Uuid, from: &Place, table: &str) -> bool {
    let filter = if from.is_shared() {
        " WHERE tenant_id OPERATOR(pg_catalog.=) $1"
    } else {
        ""
    };
    let name = qualified(from.schema(), table);
    let Some(owner) = catalog::one_or_none(Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.pg_get_userbyid(c.relowner)::text FROM pg_catalog.pg_class c \
         WHERE c.oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
        &[name.clone().into()],
    )) else {
        return true;
    };
    let sql = format!("SELECT EXISTS (SELECT 1 FROM {name}{filter})");
    crate::roles::as_role(&owner, "pg_catalog, pg_temp", Some(id), || {
        catalog::one_or_none(Spi::get_one_with_args::<bool>(&sql, &[id.into()]))
    })
    .unwrap_or(true)
}

/// Copies a tenant's rows of every table from one place to another: to
/// the same tenant (a move) or to a new one (a clone). As the owner role in
/// the context of the tenant whose shared rows are read or written (the
/// template's triggers and defaults run with no more than its rights; the
/// policy gives exactly that tenant's rows), or, from one shared tenant to
/// another, as `all_tenants`. Rows from a shared schema are read by one
/// statement (one snapshot: the rows of a table and those they reference
/// agree); a schema's tables are locked by the caller. Rows copied per table.
pub fn copy_rows(
    from_id: Uuid,
    to_id: Uuid,
    from: &Place,
    to: &Place,
    tables: &[TableCopy],
) -> Map<String, Value> {
    let statement = |t: &TableCopy, out: &str| {
        let source = qualified(from.schema(), &t.name);
        let target = qualified(to.schema(), &t.name);
        let cols = &t.columns;
        let (into, select, filter) = match (from.is_shared(), to.is_shared()) {
            (true, true) => (
                "tenant_id, ",
                "$2, ",
                " WHERE tenant_id OPERATOR(pg_catalog.=) $1",
            ),
            (true, false) => ("", "", " WHERE tenant_id OPERATOR(pg_catalog.=) $1"),
            (false, true) => ("tenant_id, ", "$2, ", ""),
            (false, false) => ("", "", ""),
        };
        format!(
            "INSERT INTO {target} ({into}{cols}) OVERRIDING SYSTEM VALUE \
             SELECT {select}{cols} FROM {source}{filter}{out}"
        )
    };
    let (role, context) = match (from.is_shared(), to.is_shared()) {
        (true, true) => (crate::roles::db_role("all_tenants"), None),
        (true, false) => (crate::roles::owner_role(), Some(from_id)),
        _ => (crate::roles::owner_role(), Some(to_id)),
    };
    let args: Vec<pgrx::datum::DatumWithOid> = vec![from_id.into(), to_id.into()];
    let mut counts = Map::new();
    crate::roles::as_role(&role, "pg_catalog, pg_temp", context, || {
        if from.is_shared() && !tables.is_empty() {
            // one statement: its data-modifying parts share one snapshot,
            // and the foreign keys are checked at its end
            let parts: Vec<String> = tables
                .iter()
                .enumerate()
                .map(|(i, t)| format!("c{i} AS ({})", statement(t, " RETURNING 1")))
                .collect();
            let counted: Vec<String> = tables
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    format!(
                        "{}, (SELECT pg_catalog.count(*) FROM c{i})",
                        tenancy_core::ident::quote_literal(&t.name)
                    )
                })
                .collect();
            let sql = format!(
                "WITH {} SELECT pg_catalog.jsonb_build_object({})",
                parts.join(", "),
                counted.join(", ")
            );
            let got = catalog::one_or_none(Spi::get_one_with_args::<pgrx::JsonB>(&sql, &args));
            if let Some(pgrx::JsonB(Value::Object(m))) = got {
                counts = m;
            }
        } else {
            for t in tables {
                let sql = statement(t, "");
                let n = Spi::connect_mut(|c| {
                    Ok::<_, pgrx::spi::Error>(c.update(&sql, None, &args)?.len())
                })
                .or_raise();
                counts.insert(t.name.clone(), json!(n));
            }
        }
    });
    counts
}

/// After rows came in with their own ids: each identity or serial sequence
/// of the tables in `to` moves past the largest value now there (in a
/// shared table, the tenant's rows), so the next insert does not collide.
/// The sequence is locked first: another tenant's nextval waits for this
/// transaction rather than be handed a value it moves back.
pub fn advance_sequences(id: Uuid, to: &Place, tables: &[TableCopy]) {
    let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
    let scope = GucScope::new();
    scope.set("search_path", "pg_catalog, pg_temp");
    let seqs = Spi::connect(|c| {
        let rows = c.select(
            "SELECT s.oid, s.oid::regclass::text, quote_ident(a.attname), t.oid::regclass::text \
             FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' \
             JOIN pg_class t ON t.oid = d.refobjid \
             JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
             WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass \
               AND d.deptype IN ('a', 'i') AND t.relnamespace = to_regnamespace(quote_ident($1)) \
               AND t.relname = ANY ($2) ORDER BY t.oid, a.attnum",
            None,
            &[to.schema().into(), names.into()],
        )?;
        let mut out = Vec::new();
        for r in rows {
            out.push((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise();
    drop(scope);
    crate::roles::as_owner("pg_catalog, pg_temp", Some(id), || {
        for (oid, seq, column, table) in &seqs {
            unsafe { pg_sys::LockRelationOid(*oid, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) };
            // the largest value now there, where the sequence is, its end
            let found = Spi::connect(|c| {
                let row = c
                    .select(
                        &format!(
                            "SELECT (SELECT pg_catalog.max({column}) FROM {table})::pg_catalog.int8, \
                                    COALESCE(pg_catalog.pg_sequence_last_value($1::pg_catalog.regclass), s.seqstart OPERATOR(pg_catalog.-) 1), \
                                    s.seqmax \
                             FROM pg_catalog.pg_sequence s \
                             WHERE s.seqrelid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass"
                        ),
                        Some(1),
                        &[seq.as_str().into()],
                    )?
                    .first();
                Ok::<_, pgrx::spi::Error>((
                    row.get::<i64>(1)?,
                    row.get::<i64>(2)?.unwrap_or(0),
                    row.get::<i64>(3)?.unwrap_or(i64::MAX),
                ))
            })
            .or_raise();
            let (Some(max), last, end) = found else {
                continue;
            };
            if max <= last {
                continue;
            }
            // a shared sequence serves every tenant: one tenant's ids (its own
            // to choose, with OVERRIDING SYSTEM VALUE) must not use it up
            if to.is_shared() && (max as i128 - last as i128) > (end as i128 - last as i128) / 2 {
                raise_with(
                    sqlstate("22003"),
                    format!("{table}.{column} would jump from {last} to {max}, more than half of what is left of its sequence {seq}"),
                    Some("The sequence is shared by every tenant of the table.".into()),
                    Some("Give the tenant's rows smaller ids first.".into()),
                );
            }
            Spi::run_with_args(
                "SELECT pg_catalog.setval($1::pg_catalog.regclass, $2)",
                &[seq.as_str().into(), max.into()],
            )
            .or_raise();
        }
    });
}

/// Deletes the tenant's rows from the shared tables, the tables made last
/// first (their foreign keys point at the earlier ones), as the owner role
/// in the tenant's context. A key of another table that still points at one
/// of them fails the statement, and with it the whole operation.
pub fn delete_shared_rows(id: Uuid, shared: &Place, tables: &[TableCopy]) {
    crate::roles::as_owner("pg_catalog, pg_temp", Some(id), || {
        for t in tables.iter().rev() {
            Spi::run_with_args(
                &format!(
                    "DELETE FROM {} WHERE tenant_id OPERATOR(pg_catalog.=) $1",
                    qualified(shared.schema(), &t.name)
                ),
                &[id.into()],
            )
            .or_raise();
        }
    });
}

/// Locks every table of a schema (partitions too: a write can name one)
/// in `mode`, before anything of it is read: the writers of the tenant wait
/// from here on, whether or not a table has rows yet.
fn lock_schema_tables(schema: &str, mode: u32) {
    let oids: Vec<pg_sys::Oid> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT c.oid FROM pg_catalog.pg_class c \
             WHERE c.relnamespace OPERATOR(pg_catalog.=) pg_catalog.to_regnamespace(pg_catalog.quote_ident($1)) \
               AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog.\"char\"[]) ORDER BY c.oid",
            None,
            &[schema.into()],
        )? {
            out.push(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_raise();
    for oid in oids {
        unsafe { pg_sys::LockRelationOid(oid, mode as pg_sys::LOCKMODE) };
    }
}

/// Moves a tenant to `isolation` ('schema' or 'shared'); returns its id.
#[pg_extern(name = "_move_tenant")]
pub fn move_tenant(tenant: &str, isolation: &str) -> Uuid {
    let started = Instant::now();
    if isolation != "schema" && isolation != "shared" {
        raise(TenancyError::InvalidArgument(format!(
            "isolation must be 'schema' or 'shared', not {isolation:?}"
        )));
    }
    if crate::roles::legacy_catalog() {
        raise(TenancyError::NotSupported(
            "move_tenant needs the catalog of 0.4.0: run ALTER EXTENSION tenancy UPDATE first"
                .into(),
        ));
    }
    let t = lock_tenant_row(tenant);
    if t.isolation == isolation {
        raise(TenancyError::WrongStatus {
            slug: t.slug.clone(),
            status: format!("already in {isolation} isolation"),
            action: "moving it there".into(),
        });
    }
    if t.status != "active" && t.status != "suspended" {
        raise(TenancyError::WrongStatus {
            slug: t.slug.clone(),
            status: t.status.clone(),
            action: "moving it".into(),
        });
    }
    let role = t
        .role_name
        .clone()
        .unwrap_or_else(|| crate::roles::tenant_role(&t.slug));
    // a snapshot older than the locks below would miss rows written before
    // them: copied from nowhere, deleted from nowhere, lost with the old place
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        raise(TenancyError::NotSupported(
            "move_tenant runs in READ COMMITTED transactions only: a REPEATABLE READ or SERIALIZABLE snapshot, taken before the tenant was locked, would not see rows written since".into(),
        ));
    }
    // the tenant's sessions (the shared tables' policy) wait from here on
    crate::api::rls::lock_tenant(
        *t.id.as_bytes(),
        pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
    );
    let template = catalog::template_version(&t.template, Some(t.template_version));
    let shared = Place::of(&template, &t.slug, true);

    let (from, to, counts, old_schema) = if isolation == "schema" {
        let to = Place::of(&template, &t.slug, false);
        if let Some(holder) = catalog::schema_holder(to.schema()) {
            raise(TenancyError::SchemaTaken {
                schema: to.schema().into(),
                holder,
            });
        }
        let timescale = check_prerequisites(&template);
        build_schema(&template, to.schema(), timescale.as_deref(), None);
        let tables = tables_to_copy(Some(t.id), &shared, &to);
        let counts = copy_rows(t.id, t.id, &shared, &to, &tables);
        delete_shared_rows(t.id, &shared, &tables);
        advance_sequences(t.id, &to, &tables);
        crate::roles::move_tenant_role(&role, to.schema(), false, None);
        (shared, to, counts, None)
    } else {
        let from = Place::Schema(t.schema_name.clone().unwrap_or_default());
        ensure_shared_schema(&template);
        // the tenant's sessions write no more to its schema, empty tables
        // included (a row written there now would go with the old schema)
        lock_schema_tables(from.schema(), pg_sys::ExclusiveLock);
        let tables = tables_to_copy(Some(t.id), &from, &shared);
        let counts = copy_rows(t.id, t.id, &from, &shared, &tables);
        advance_sequences(t.id, &shared, &tables);
        // the old schema leaves the tenant namespace now; the worker drops
        // its tables in chunks, as for a dropped tenant
        let trash = format!(
            "tenancy_trash_{}",
            &uuid_v4().to_string().replace('-', "")[..16]
        );
        Spi::run(&format!(
            "ALTER SCHEMA {} RENAME TO {}",
            quote_ident(from.schema()),
            quote_ident(&trash)
        ))
        .or_raise();
        crate::roles::move_tenant_role(&role, shared.schema(), true, Some(&trash));
        (from, shared, counts, Some(trash))
    };

    Spi::run_with_args(
        "UPDATE tenancy.tenants SET isolation = $2, schema_name = $3, updated_at = now() WHERE id = $1",
        &[
            t.id.into(),
            isolation.into(),
            (!to.is_shared()).then(|| to.schema().to_string()).into(),
        ],
    )
    .or_raise();
    if t.status != "active" {
        // a suspended tenant stays without access in its new place
        Spi::run_with_args(
            "SELECT tenancy._set_access(t, false) FROM tenancy.tenants t WHERE t.id = $1",
            &[t.id.into()],
        )
        .or_raise();
    }
    Spi::run("SELECT tenancy._tenants_changed()").or_raise();
    if old_schema.is_some() {
        Spi::run("SELECT tenancy._wake_worker()").or_raise();
    }
    catalog::audit(AuditEntry {
        action: "move",
        tenant_id: Some(t.id),
        tenant_slug: Some(&t.slug),
        details: json!({
            "from": t.isolation,
            "to": isolation,
            "from_schema": from.schema(),
            "to_schema": to.schema(),
            "trash_schema": old_schema,
            "rows": counts,
        }),
        duration_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
    });
    t.id
}

/// A random id (gen_random_uuid) for names that must not repeat.
fn uuid_v4() -> Uuid {
    catalog::one_or_none(Spi::get_one::<Uuid>("SELECT pg_catalog.gen_random_uuid()"))
        .expect("gen_random_uuid returns a value")
}

/// The place a tenant's rows are in now.
pub fn place_of(t: &LockedTenant, template: &catalog::Template) -> Place {
    match (t.isolation.as_str(), &t.schema_name) {
        ("schema", Some(schema)) => Place::Schema(schema.clone()),
        _ => Place::of(template, &t.slug, true),
    }
}

/// A new tenant `new_slug` with a copy of a tenant's data, in the caller's
/// transaction: made from the same template version as its source, with
/// its source's name, type, settings, features and quotas unless `options`
/// (the keys of provision, and `name`) says otherwise; never its domain.
#[pg_extern(name = "_clone_tenant")]
fn clone_tenant(tenant: &str, new_slug: Option<&str>, options: Option<pgrx::JsonB>) -> Uuid {
    let started = Instant::now();
    let slug = tenancy_core::slug::validate_slug(new_slug).or_raise();
    if crate::roles::legacy_catalog() {
        raise(TenancyError::NotSupported(
            "clone_tenant needs the catalog of 0.4.0: run ALTER EXTENSION tenancy UPDATE first"
                .into(),
        ));
    }
    let options = options.map_or(Value::Object(Map::new()), |j| j.0);
    if !options.is_object() {
        raise(TenancyError::InvalidArgument(
            "options must be a JSON object".into(),
        ));
    }
    let src = lock_tenant_row(tenant);
    if src.status != "active" && src.status != "suspended" {
        raise(TenancyError::WrongStatus {
            slug: src.slug.clone(),
            status: src.status.clone(),
            action: "cloning it".into(),
        });
    }
    // the source's own values under the caller's
    let (name, merged) = Spi::connect(|c| {
        let row = c
            .select(
                "SELECT COALESCE($2->>'name', t.name), \
                        jsonb_strip_nulls(jsonb_build_object('isolation', t.isolation, 'tenant_type', t.tenant_type, \
                            'settings', t.settings, 'features', t.features, 'max_users', t.max_users, \
                            'max_storage_bytes', t.max_storage_bytes)) || ($2 - 'name') \
                 FROM tenancy.tenants t WHERE t.id = $1",
                Some(1),
                &[src.id.into(), pgrx::JsonB(options.clone()).into()],
            )?
            .first();
        Ok::<_, pgrx::spi::Error>((row.get::<String>(1)?, row.get::<pgrx::JsonB>(2)?))
    })
    .or_raise();
    let merged = merged.map_or(Value::Object(Map::new()), |j| j.0);
    let opts = tenancy_core::options::parse_provision_options(Some(&merged)).or_raise();
    if opts.if_not_exists {
        raise(TenancyError::InvalidArgument(
            "clone_tenant does not take if_not_exists: a copy goes only into a new tenant".into(),
        ));
    }
    let template = catalog::template_version(&src.template, Some(src.template_version));
    let from = place_of(&src, &template);
    let id = crate::api::provision::provision_from(
        None,
        slug,
        name.as_deref(),
        &template,
        &opts,
        started,
    );
    let to = Place::of(
        &template,
        slug,
        opts.isolation == tenancy_core::options::Isolation::Shared,
    );
    if !from.is_shared() {
        // the source's writers wait while its tables are read one by one
        lock_schema_tables(from.schema(), pg_sys::ShareLock);
    }
    let tables = tables_to_copy(Some(src.id), &from, &to);
    let counts = copy_rows(src.id, id, &from, &to, &tables);
    advance_sequences(id, &to, &tables);
    catalog::audit(AuditEntry {
        action: "clone",
        tenant_id: Some(id),
        tenant_slug: Some(slug),
        details: json!({
            "source": src.slug,
            "source_id": src.id.to_string(),
            "template": template.name,
            "template_version": template.version,
            "isolation": opts.isolation.as_str(),
            "rows": counts,
        }),
        duration_ms: Some(started.elapsed().as_secs_f64() * 1000.0),
    });
    id
}

/// Queues one move per listed tenant not yet in `isolation` and returns the
/// batch: the worker (or `process_queue`) moves each in a transaction of its
/// own, `max_concurrent` at once, with a result per tenant (`batch_status`).
/// For tenants too large to move in the caller's transaction.
#[pg_extern(name = "move_tenants")]
fn move_tenants(
    tenants: Vec<Option<String>>,
    isolation: &str,
    options: default!(Option<pgrx::JsonB>, "'{}'"),
) -> Uuid {
    if isolation != "schema" && isolation != "shared" {
        raise(TenancyError::InvalidArgument(format!(
            "isolation must be 'schema' or 'shared', not {isolation:?}"
        )));
    }
    let max_concurrent =
        tenancy_core::batch_options::parse_migration_options(options.as_ref().map(|j| &j.0))
            .or_raise();
    let tenants: Vec<String> = tenants.into_iter().flatten().collect();
    let unknown = catalog::one_or_none(Spi::get_one_with_args::<String>(
        "SELECT string_agg(format('%s', x), ', ' ORDER BY x) FROM unnest($1::text[]) x \
         WHERE NOT EXISTS (SELECT 1 FROM tenancy.tenants t \
                           WHERE t.id = tenancy._tenant_id(x) AND t.status IN ('active', 'suspended'))",
        &[tenants.clone().into()],
    ));
    if let Some(unknown) = unknown {
        crate::error::raise_with(
            crate::error::sqlstate("42704"),
            format!("no active or suspended tenant: {unknown}"),
            None,
            None,
        );
    }
    // the listed tenants not there yet
    let pending = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT DISTINCT t.id, t.slug FROM unnest($1::text[]) x \
             JOIN tenancy.tenants t ON t.id = tenancy._tenant_id(x) WHERE t.isolation <> $2",
            None,
            &[tenants.into(), isolation.into()],
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
        "move",
        pending,
        json!({"move_to": isolation}),
        json!({"isolation": isolation}),
        max_concurrent,
        "move_batch",
        json!({"to": isolation}),
    )
}
