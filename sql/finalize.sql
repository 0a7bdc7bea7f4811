-- SQL-language parts of the API, loaded after the Rust functions exist.

CREATE FUNCTION tenancy.provision(
    slug text,
    name text DEFAULT NULL,
    template text DEFAULT 'default',
    options jsonb DEFAULT '{}'
) RETURNS tenancy.tenants
LANGUAGE plpgsql
AS $$
DECLARE
    tenant_id uuid;
    result tenancy.tenants;
BEGIN
    tenant_id := tenancy._provision(slug, name, template, options);
    SELECT * INTO result FROM tenancy.tenants t WHERE t.id = tenant_id;
    RETURN result;
END
$$;
COMMENT ON FUNCTION tenancy.provision(text, text, text, jsonb) IS
    'Creates a tenant (catalog row, schema, every object of its template) in the caller''s transaction: all or nothing';

-- The catalog row of a tenant that the library just made or changed, for
-- the functions below to return. Volatile: it reads after their change.
CREATE FUNCTION tenancy._tenant_row(id uuid) RETURNS tenancy.tenants
LANGUAGE sql
AS $$ SELECT * FROM tenancy.tenants t WHERE t.id = $1 $$;

-- Moves a tenant between the shared tables and a schema of its own
-- (src/api/mobility.rs), in the caller's transaction: all or nothing.
CREATE FUNCTION tenancy.move_tenant(tenant text, isolation text) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy._tenant_row(tenancy._move_tenant(tenant, isolation));
CREATE FUNCTION tenancy.move_tenant(tenant uuid, isolation text) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.move_tenant(tenant::text, isolation);
COMMENT ON FUNCTION tenancy.move_tenant(text, text) IS
    'Moves a tenant from the shared tables to a schema of its own, or back: its rows copied, its id, role and catalog row kept; all or nothing';

-- A new tenant with a copy of another's data (src/api/mobility.rs), in the
-- caller's transaction.
CREATE FUNCTION tenancy.clone_tenant(tenant text, new_slug text, options jsonb DEFAULT '{}') RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy._tenant_row(tenancy._clone_tenant(tenant, new_slug, options));
CREATE FUNCTION tenancy.clone_tenant(tenant uuid, new_slug text, options jsonb DEFAULT '{}') RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.clone_tenant(tenant::text, new_slug, options);
COMMENT ON FUNCTION tenancy.clone_tenant(text, text, jsonb) IS
    'A new tenant with a copy of a tenant''s data, from the same template version, in one transaction';

-- The last step of replaying an export script (src/api/export.rs): the
-- staged rows into the imported tenant's tables; returns its row.
CREATE FUNCTION tenancy.import_finish() RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy._tenant_row(tenancy._import_finish());
CREATE FUNCTION tenancy.export_tenant(tenant uuid) RETURNS SETOF text
LANGUAGE sql AS $$ SELECT tenancy.export_tenant(tenant::text) $$;

-- Who may do what (see src/roles.rs): the roles of this database, each
-- with the database's OID in its name so that no role serves two databases,
-- and each marked by its comment (the roles of a dropped database are found
-- by it; a role of that name that tenancy did not make is refused), and
-- every grant and SECURITY DEFINER of the extension's functions. Run by
-- CREATE EXTENSION and by every upgrade script, after its functions.
CREATE FUNCTION tenancy._apply_privileges() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    admin name := tenancy._db_role('admin');
    owner name := tenancy._db_role('owner');
    r record;
    role name;
BEGIN
    FOR r IN SELECT * FROM (VALUES
            ('admin', 'NOLOGIN'),
            -- every shared tenant's rows, for an admin's explicit SET ROLE
            ('all_tenants', 'NOLOGIN NOINHERIT BYPASSRLS'),
            ('owner', 'NOLOGIN NOINHERIT'),
            ('shared', 'NOLOGIN NOINHERIT')) v(kind, options) LOOP
        role := tenancy._db_role(r.kind);
        IF NOT EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = role) THEN
            EXECUTE format('CREATE ROLE %I %s', role, r.options);
            EXECUTE format('COMMENT ON ROLE %I IS %L', role, tenancy._role_comment(r.kind));
        ELSIF NOT tenancy._is_own_role(role) THEN
            RAISE EXCEPTION 'role % exists and was not made by tenancy for this database', role
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Drop or rename that role, then run the command again.';
        ELSIF NOT tenancy._db_role_untouched(role, r.kind) THEN
            RAISE EXCEPTION 'role % is not as tenancy keeps it: a role holds ADMIN on it, it has an attribute it should not, or (the owner role) it has a member', role
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'Whoever administers or joins it would hold the rights tenancy gives it.',
                      HINT = 'A superuser revokes the ADMIN OPTION or membership and the attribute (or drops the role), then runs the command again.';
        END IF;
    END LOOP;
    EXECUTE format('GRANT %I TO %I', tenancy._db_role('all_tenants'), admin);

    -- internal helpers (_*) stay the extension owner's
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tenancy FROM PUBLIC;
    REVOKE ALL ON ALL PROCEDURES IN SCHEMA tenancy FROM PUBLIC;
    -- the admin of this database manages its tenants: the functions whose
    -- name does not start with _, and reading the catalog; adopting makes
    -- roles and policies from a table anyone with CREATE could have written,
    -- so it is the superuser's
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA tenancy TO %I', admin);
    -- the keys that make a shared tenant's context on Citus's workers
    -- (sql/citus.sql): whoever reads them can make any tenant's
    REVOKE ALL ON tenancy.node_key, tenancy.citus_node_keys FROM PUBLIC;
    EXECUTE format('REVOKE ALL ON tenancy.node_key, tenancy.citus_node_keys FROM %I', admin);
    FOR r IN SELECT p.oid::regprocedure AS f, p.prokind FROM pg_proc p
             WHERE p.pronamespace = 'tenancy'::regnamespace AND left(p.proname, 1) <> '_'
               AND p.proname NOT IN ('adopt_schemas', 'after_restore') LOOP
        EXECUTE format('GRANT EXECUTE ON %s %s TO %I',
                       CASE r.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, r.f, admin);
    END LOOP;
    -- what the owner role runs inside tenant schemas: SECURITY INVOKER
    -- helpers that give it nothing it does not have already
    EXECUTE format('GRANT EXECUTE ON FUNCTION tenancy._maintain_partitions(regclass, text, integer, interval), '
                   'tenancy._copy_partition_indexes(regclass, regclass) TO %I', owner);
    -- what tenants' own sessions need: the context and the policies' functions
    GRANT USAGE ON SCHEMA tenancy TO PUBLIC;
    GRANT EXECUTE ON FUNCTION tenancy.current_tenant_id(), tenancy.tenant_may_write(), tenancy.admin_role(),
                              tenancy.set_tenant(text, boolean), tenancy.set_tenant(uuid, boolean) TO PUBLIC;
    -- the monitoring role (monitoring/tenancy_exporter.yaml): counts, states
    -- and sizes, never a spec, setting, audit detail or error text
    GRANT SELECT (id, slug, status, isolation) ON tenancy.tenants TO pg_monitor;
    GRANT SELECT (id, kind, status, created_at, started_at, finished_at) ON tenancy.batches TO pg_monitor;
    GRANT SELECT (batch_id, status, next_attempt_at, duration_ms) ON tenancy.batch_items TO pg_monitor;
    GRANT SELECT (action, at, duration_ms) ON tenancy.audit_log TO pg_monitor;
    GRANT SELECT ON tenancy.latest_metrics TO pg_monitor;
    GRANT EXECUTE ON FUNCTION tenancy.health() TO pg_monitor;
    GRANT SELECT ON tenancy.tenant_activity TO pg_monitor;
    -- the view's function runs with the reader's EXECUTE right
    GRANT EXECUTE ON FUNCTION tenancy.activity_counters() TO pg_monitor;

    -- set_tenant reads the catalog as the owner, but must not pin
    -- search_path: setting it (for a schema tenant) is part of its job. Its
    -- own queries run with a safe search_path inside.
    ALTER FUNCTION tenancy.set_tenant(text, boolean) SECURITY DEFINER;
    -- Every other function runs as the extension's owner with a pinned
    -- path; those that touch what a tenant or an admin wrote (template SQL,
    -- tenant tables) switch to the owner role inside (tenancy._as_owner).
    FOR r IN
        SELECT p.oid::regprocedure AS f FROM pg_proc p
        WHERE p.pronamespace = 'tenancy'::regnamespace AND p.prokind = 'f'
          AND p.proname NOT IN ('current_tenant_id', 'tenant_may_write', 'set_tenant', 'admin_role', '_maintain_partitions',
                                '_copy_partition_indexes', '_save_catalog', '_caller',
                                '_is_own_role', '_db_role_untouched', '_apply_privileges')
          AND NOT p.prosecdef
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', r.f);
    END LOOP;
END
$$;
SELECT tenancy._apply_privileges();
REVOKE ALL ON FUNCTION tenancy._apply_privileges() FROM PUBLIC;

SELECT tenancy._load_shipped_templates();
-- serve this database now, not at the worker's next look
SELECT tenancy._wake_worker();
