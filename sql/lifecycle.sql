-- Tenant lifecycle: roles, suspend/resume, drop/archive, bulk updates,
-- migrations to newer template versions. Every operation writes an audit row.

-- The tenant a slug or id names, locked for the rest of the transaction; 42704 if none.
CREATE FUNCTION tenancy._tenant_for_update(tenant text) RETURNS tenancy.tenants
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t tenancy.tenants;
BEGIN
    SELECT * INTO t FROM tenancy.tenants WHERE id = tenancy._tenant_id(tenant) FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant "%" does not exist', tenant USING ERRCODE = 'undefined_object';
    END IF;
    RETURN t;
END
$$;

-- A role that tenancy made for this database (its comment says so) and
-- that is no superuser: the only kind it grants to, reuses or drops.
CREATE FUNCTION tenancy._is_own_role(role_name name) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT NOT r.rolsuper
                            AND shobj_description(r.oid, 'pg_authid') LIKE
                                format('tenancy role of database %s:%%', d.oid)
                     FROM pg_roles r, pg_database d
                     WHERE r.rolname = role_name AND d.datname = current_database()), false)
$$;

-- One of this database's own roles (admin, all_tenants, owner, shared) as
-- tenancy keeps it: nobody may administer it (from PostgreSQL 16 on, whoever
-- makes a role with CREATEROLE holds ADMIN on it, so a role made ahead of
-- CREATE EXTENSION or of a restore, with tenancy's name and comment, would be
-- theirs to join), no attribute it does not need (all_tenants alone is
-- BYPASSRLS; the owner may log in, which Citus needs), and the owner role
-- has no member at all.
CREATE FUNCTION tenancy._db_role_untouched(role_name name, kind text) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT NOT (r.rolsuper OR r.rolcreaterole OR r.rolcreatedb OR r.rolreplication)
                            AND (kind = 'all_tenants' OR NOT r.rolbypassrls)
                            AND (kind = 'owner' OR NOT r.rolcanlogin)
                            AND NOT EXISTS (SELECT 1 FROM pg_auth_members m
                                            WHERE m.roleid = r.oid AND (m.admin_option OR kind = 'owner'))
                     FROM pg_roles r WHERE r.rolname = role_name), false)
$$;

-- The name of one of this database's own roles: admin, all_tenants, owner, shared.
CREATE FUNCTION tenancy._db_role(kind text) RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN format('tenancy_%s_%s', kind, (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))::name;

-- An operation on one tenant, in the audit log (written by the library's
-- tenancy._audit_write, the log's one writer).
CREATE FUNCTION tenancy._audit(action text, t tenancy.tenants, details jsonb) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT tenancy._audit_write(action, t.id, t.slug, details) $$;

-- Gives a tenant's role its access back (resume), or takes it (suspend,
-- archive): USAGE on its schema, or for a shared tenant its membership in
-- the role that holds the shared tables' grants.
CREATE FUNCTION tenancy._set_access(t tenancy.tenants, allowed boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- sessions that set this tenant look its status up again (current_tenant_id)
    PERFORM tenancy._tenants_changed();
    IF t.role_name IS NULL OR NOT tenancy._is_own_role(t.role_name) THEN
        RETURN;
    END IF;
    IF t.isolation = 'shared' THEN
        EXECUTE format(CASE WHEN allowed THEN 'GRANT %I TO %I' ELSE 'REVOKE %I FROM %I' END,
                       tenancy._db_role('shared'), t.role_name);
    ELSE
        EXECUTE format(CASE WHEN allowed THEN 'GRANT USAGE ON SCHEMA %I TO %I' ELSE 'REVOKE USAGE ON SCHEMA %I FROM %I' END,
                       tenancy._access_schema(t), t.role_name);
    END IF;
END
$$;

CREATE FUNCTION tenancy.suspend(tenant text) RETURNS tenancy.tenants
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t tenancy.tenants := tenancy._tenant_for_update(tenant);
BEGIN
    IF t.status <> 'active' THEN
        RAISE EXCEPTION 'tenant "%" is %; only an active tenant can be suspended', t.slug, t.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    PERFORM tenancy._set_access(t, false);
    UPDATE tenancy.tenants SET status = 'suspended', updated_at = now() WHERE id = t.id RETURNING * INTO t;
    PERFORM tenancy._audit('suspend', t, jsonb_build_object('before', 'active', 'after', 'suspended'));
    RETURN t;
END
$$;

CREATE FUNCTION tenancy.resume(tenant text) RETURNS tenancy.tenants
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t tenancy.tenants := tenancy._tenant_for_update(tenant);
    before tenancy.tenant_status := t.status;
    archived name;
BEGIN
    IF t.status NOT IN ('suspended', 'archived') THEN
        RAISE EXCEPTION 'tenant "%" is %; only a suspended or archived tenant can be resumed', t.slug, t.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF t.status = 'archived' AND t.isolation = 'schema' THEN
        archived := tenancy._archive_name(t);
        IF to_regnamespace(quote_ident(archived)) IS NULL THEN
            RAISE EXCEPTION 'the archived schema % of tenant "%" is gone', archived, t.slug
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', archived, t.schema_name);
    END IF;
    PERFORM tenancy._set_access(t, true);
    UPDATE tenancy.tenants SET status = 'active', updated_at = now() WHERE id = t.id RETURNING * INTO t;
    PERFORM tenancy._audit('resume', t, jsonb_build_object('before', before, 'after', 'active'));
    RETURN t;
END
$$;

-- The tables of a shared schema that hold tenants' rows (those with a
-- tenant_id column of type uuid), in the order they were made. Only uuid:
-- the superuser's code compares and groups that column, and a type of the
-- owner role's making (with an implicit cast) would run its functions.
CREATE FUNCTION tenancy._shared_tables(schema_name name) RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
                       AND a.atttypid = 'pg_catalog.uuid'::pg_catalog.regtype
    WHERE c.relnamespace = to_regnamespace(quote_ident(schema_name)) AND c.relkind IN ('r', 'p')
      AND NOT c.relispartition
    ORDER BY c.oid
$$;

-- The schema whose USAGE the tenant's role gets: its own, or for a shared
-- tenant the template's shared schema.
CREATE FUNCTION tenancy._access_schema(t tenancy.tenants) RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN t.isolation = 'shared'
                THEN tenancy._shared_schema_name(t.template, tp.spec)::name
                ELSE t.schema_name END
    FROM tenancy.templates tp WHERE tp.name = t.template AND tp.version = t.template_version
$$;

-- Drops a tenant's role with its privileges in this database: only a role
-- tenancy made for this database (tenancy._is_own_role).
CREATE FUNCTION tenancy._drop_tenant_role(role_name name) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF role_name IS NULL OR NOT tenancy._is_own_role(role_name) THEN
        RETURN;
    END IF;
    EXECUTE format('DROP OWNED BY %I', role_name);
    BEGIN
        EXECUTE format('DROP ROLE %I', role_name);
    EXCEPTION WHEN dependent_objects_still_exist THEN
        -- a DBA granted it something in another database: its name holds
        -- this database's OID, so no other tenant ever gets it
        RAISE WARNING 'role % is still granted privileges in another database and was kept', role_name;
    END;
END
$$;

-- Where an archived tenant's schema is kept: out of the tenant namespace.
CREATE FUNCTION tenancy._archive_name(t tenancy.tenants) RETURNS name
LANGUAGE sql IMMUTABLE
RETURN ('tenancy_arch_' || t.slug)::name;

CREATE FUNCTION tenancy.drop_tenant(tenant text, keep_data boolean DEFAULT false) RETURNS tenancy.tenants
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t tenancy.tenants := tenancy._tenant_for_update(tenant);
    before tenancy.tenant_status := t.status;
    trash name;
BEGIN
    IF t.status IN ('dropped') OR (keep_data AND t.status = 'archived') THEN
        RAISE EXCEPTION 'tenant "%" is already %', t.slug, t.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF keep_data THEN
        -- archive: renamed out of the way, no access, restorable by resume
        IF t.status <> 'suspended' THEN
            PERFORM tenancy._set_access(t, false);
        END IF;
        IF t.isolation = 'schema' THEN
            EXECUTE format('ALTER SCHEMA %I RENAME TO %I', t.schema_name, tenancy._archive_name(t));
        END IF;
        UPDATE tenancy.tenants SET status = 'archived', updated_at = now() WHERE id = t.id RETURNING * INTO t;
        PERFORM tenancy._audit('archive', t, jsonb_build_object('before', before, 'after', 'archived',
                                                               'schema', tenancy._archive_name(t)));
        RETURN t;
    END IF;
    -- drop: the schema leaves the tenant namespace at once (a rename locks
    -- only the schema); its tables are dropped in chunks by the worker or
    -- process_queue, so thousands of tables never need a lock each in one
    -- transaction
    trash := ('tenancy_trash_' || substr(replace(t.id::text, '-', ''), 1, 16))::name;
    IF t.isolation = 'shared' THEN
        -- its rows in the shared tables; foreign keys cascade from the
        -- tables made first, so go from the last made to the first
        DECLARE
            r record;
        BEGIN
            FOR r IN SELECT tbl FROM tenancy._shared_tables(tenancy._access_schema(t)) tbl
                     ORDER BY tbl::oid DESC LOOP
                -- as the owner role, in the tenant's context: the
                -- template's triggers fire with no more than its rights
                PERFORM tenancy._as_owner(format('DELETE FROM %s WHERE tenant_id = $1', r.tbl), t.id);
            END LOOP;
        END;
        trash := NULL;
    ELSIF t.status = 'archived' THEN
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', tenancy._archive_name(t), trash);
    ELSIF t.schema_name IS NOT NULL AND to_regnamespace(quote_ident(t.schema_name)) IS NOT NULL THEN
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', t.schema_name, trash);
    END IF;
    PERFORM tenancy._drop_tenant_role(t.role_name);
    PERFORM tenancy._tenants_changed();
    UPDATE tenancy.tenants
    SET status = 'dropped', dropped_at = now(), updated_at = now(), domain = NULL
    WHERE id = t.id RETURNING * INTO t;
    PERFORM tenancy._audit('drop', t, jsonb_build_object('before', before, 'after', 'dropped', 'trash_schema', trash));
    PERFORM tenancy._wake_worker();
    RETURN t;
END
$$;

-- Drops one chunk of a dropped tenant's schema; false when there is no trash.
CREATE FUNCTION tenancy._trash_work(chunk integer DEFAULT 100) RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s name;
    r record;
    n integer := 0;
BEGIN
    -- only a schema drop_tenant renamed (the owner role's, or before 0.3.0
    -- a superuser's), never one that someone else named like it
    SELECT n.nspname INTO s FROM pg_namespace n JOIN pg_roles o ON o.oid = n.nspowner
    WHERE n.nspname LIKE 'tenancy\_trash\_%' AND (o.rolname = tenancy._db_role('owner') OR o.rolsuper)
    ORDER BY n.oid LIMIT 1;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    FOR r IN SELECT c.relname, c.relkind FROM pg_class c
             WHERE c.relnamespace = to_regnamespace(quote_ident(s)) AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
               AND NOT c.relispartition
             ORDER BY c.oid LIMIT chunk LOOP
        -- each kind by its own DROP: DROP TABLE of a view fails (42809),
        -- and the worker would try the same chunk again and again
        EXECUTE format('DROP %s IF EXISTS %I.%I CASCADE',
                       CASE r.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                      WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END,
                       s, r.relname);
        n := n + 1;
    END LOOP;
    IF n = 0 THEN
        EXECUTE format('DROP SCHEMA %I CASCADE', s);
    END IF;
    RETURN true;
END
$$;

CREATE FUNCTION tenancy.bulk_update(tenants text[], changes jsonb, options jsonb DEFAULT '{}') RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    allowed text[] := ARRAY['name', 'domain', 'status', 'settings', 'features', 'max_users',
                            'max_storage_bytes', 'template_version'];
    bad text[];
    missing text[];
    cur tenancy.tenants;
    n integer := 0;
    batch uuid;
BEGIN
    IF jsonb_typeof(changes) IS DISTINCT FROM 'object' OR changes = '{}' THEN
        RAISE EXCEPTION 'changes must be a non-empty JSON object' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(k ORDER BY k) INTO bad FROM jsonb_object_keys(changes) k WHERE k <> ALL (allowed);
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'unknown key% in changes: %', CASE WHEN cardinality(bad) > 1 THEN 's' ELSE '' END,
                        array_to_string(bad, ', ')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Allowed: ' || array_to_string(allowed, ', ');
    END IF;
    PERFORM tenancy._check_migration_options(options);
    IF changes ? 'status' AND changes->>'status' NOT IN ('active', 'suspended') THEN
        RAISE EXCEPTION 'status can be changed to active or suspended, not %', changes->'status'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Use tenancy.drop_tenant to drop or archive a tenant.';
    END IF;
    SELECT array_agg(x) INTO missing FROM unnest(bulk_update.tenants) x
    WHERE NOT EXISTS (SELECT 1 FROM tenancy.tenants t WHERE t.slug = x AND t.status <> 'dropped');
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'tenant% % do% not exist', CASE WHEN cardinality(missing) > 1 THEN 's' ELSE '' END,
                        (SELECT string_agg(format('"%s"', m), ', ') FROM unnest(missing) m),
                        CASE WHEN cardinality(missing) > 1 THEN '' ELSE 'es' END
            USING ERRCODE = 'undefined_object';
    END IF;

    IF changes ? 'template_version' THEN
        -- a schema change: through the worker, one transaction per tenant
        IF (changes - 'template_version') <> '{}' THEN
            RAISE EXCEPTION 'template_version cannot be combined with other changes'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        SELECT array_agg(DISTINCT template) INTO bad FROM tenancy.tenants
        WHERE slug = ANY (bulk_update.tenants) AND status <> 'dropped';
        IF cardinality(bad) > 1 THEN
            RAISE EXCEPTION 'these tenants use different templates (%); migrate one template at a time',
                            array_to_string(bad, ', ') USING ERRCODE = 'invalid_parameter_value';
        END IF;
        batch := tenancy._queue_migrations(bad[1], bulk_update.tenants, (changes->>'template_version')::integer,
                                           options, true);
        SELECT count(*) INTO n FROM tenancy.batch_items WHERE batch_id = batch;
        RAISE NOTICE 'migration batch %: % tenants queued', batch, n;
        RETURN n;
    END IF;

    FOR cur IN SELECT * FROM tenancy.tenants WHERE slug = ANY (bulk_update.tenants) AND status <> 'dropped'
             ORDER BY slug FOR UPDATE LOOP
        DECLARE
            after tenancy.tenants;
        BEGIN
            IF changes ? 'status' AND cur.status::text <> changes->>'status' THEN
                IF changes->>'status' = 'suspended' THEN
                    PERFORM tenancy.suspend(cur.slug);
                ELSE
                    PERFORM tenancy.resume(cur.slug);
                END IF;
            END IF;
            UPDATE tenancy.tenants SET
                name = CASE WHEN changes ? 'name' THEN changes->>'name' ELSE name END,
                domain = CASE WHEN changes ? 'domain' THEN changes->>'domain' ELSE domain END,
                settings = CASE WHEN changes ? 'settings' THEN tenancy._merge(settings, changes->'settings') ELSE settings END,
                features = CASE WHEN changes ? 'features' THEN tenancy._merge(features, changes->'features') ELSE features END,
                max_users = CASE WHEN changes ? 'max_users' THEN (changes->>'max_users')::integer ELSE max_users END,
                max_storage_bytes = CASE WHEN changes ? 'max_storage_bytes' THEN (changes->>'max_storage_bytes')::bigint ELSE max_storage_bytes END,
                -- a quota raised over the last measured size allows writes at once
                over_quota_since = CASE WHEN changes ? 'max_storage_bytes'
                                         AND (changes->>'max_storage_bytes' IS NULL
                                              OR (SELECT m.total_bytes FROM tenancy.tenant_metrics m WHERE m.tenant_id = cur.id
                                                  ORDER BY m.collected_at DESC LIMIT 1) <= (changes->>'max_storage_bytes')::bigint)
                                        THEN NULL ELSE over_quota_since END,
                updated_at = now()
            WHERE id = cur.id
            RETURNING * INTO after;
            IF cur.over_quota_since IS NOT NULL AND after.over_quota_since IS NULL THEN
                PERFORM tenancy._audit('quota_restored', after, jsonb_build_object('max_storage_bytes', after.max_storage_bytes));
                PERFORM tenancy._tenants_changed();
            END IF;
            PERFORM tenancy._audit('bulk_update', after, jsonb_build_object(
                'changes', changes,
                'before', jsonb_build_object('name', cur.name, 'domain', cur.domain, 'status', cur.status,
                                             'settings', cur.settings, 'features', cur.features,
                                             'max_users', cur.max_users, 'max_storage_bytes', cur.max_storage_bytes),
                'after', jsonb_build_object('name', after.name, 'domain', after.domain, 'status', after.status,
                                            'settings', after.settings, 'features', after.features,
                                            'max_users', after.max_users, 'max_storage_bytes', after.max_storage_bytes)));
            n := n + 1;
        END;
    END LOOP;
    RETURN n;
END
$$;

-- settings/features merge: keys of the patch replace, a key set to null goes.
CREATE FUNCTION tenancy._merge(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
    FROM jsonb_each(coalesce(base, '{}') || patch) AS e(k, v)
    WHERE v <> 'null'::jsonb
$$;

-- Every tenant on a template to a version, through the worker. Tenants
-- already there are skipped: run it again after fixing a failure.
CREATE FUNCTION tenancy.migrate(template text, to_version integer, options jsonb DEFAULT '{}') RETURNS uuid
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    slugs text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tenancy.templates t WHERE t.name = migrate.template) THEN
        RAISE EXCEPTION 'template "%" does not exist', template USING ERRCODE = 'undefined_object';
    END IF;
    -- (a version it does not have: _queue_migrations says so)
    SELECT array_agg(t.slug) INTO slugs FROM tenancy.tenants t
    WHERE t.template = migrate.template AND t.status <> 'dropped' AND t.isolation = 'schema';
    RETURN tenancy._queue_migrations(template, coalesce(slugs, '{}'), to_version, options, false);
END
$$;

-- The same operations by tenant id.
CREATE FUNCTION tenancy.suspend(tenant uuid) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.suspend(tenant::text);
CREATE FUNCTION tenancy.resume(tenant uuid) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.resume(tenant::text);
CREATE FUNCTION tenancy.drop_tenant(tenant uuid, keep_data boolean DEFAULT false) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.drop_tenant(tenant::text, keep_data);
