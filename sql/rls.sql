-- Shared-table tenants: the tenant context and the policies that read it.

-- The current tenant, or NULL: policies compare their tenant column with it.
-- A plain SQL function, so the planner inlines it and can use an index on
-- the column (no cast on the column side).
CREATE FUNCTION tenancy.current_tenant_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
RETURN nullif(pg_catalog.current_setting('tenancy.tenant_id', true), '')::uuid;

CREATE FUNCTION tenancy.set_tenant(tenant uuid, is_local boolean DEFAULT true) RETURNS uuid
LANGUAGE sql
RETURN tenancy.set_tenant(tenant::text, is_local);

-- Row level security on a table, failing closed: ENABLE and FORCE (the
-- owner is held too) and one policy for reads and writes of the current
-- tenant's rows. It is the only policy, so the planner can use an index on
-- the tenant column for everyone: seeing all tenants is not a second
-- policy but the role tenancy_all_tenants (BYPASSRLS), taken with SET ROLE.
CREATE FUNCTION tenancy.enable_rls(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col_type regtype;
BEGIN
    SELECT a.atttypid::regtype INTO col_type FROM pg_attribute a
    WHERE a.attrelid = tbl AND a.attname = tenant_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % has no column %', tbl, tenant_column USING ERRCODE = 'undefined_column';
    END IF;
    IF col_type <> 'uuid'::regtype THEN
        RAISE EXCEPTION 'column %.% is %, not uuid', tbl, tenant_column, col_type
            USING ERRCODE = 'datatype_mismatch';
    END IF;
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', tbl);
    IF EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tbl AND polname = 'tenancy_isolation') THEN
        EXECUTE format('DROP POLICY tenancy_isolation ON %s', tbl);
    END IF;
    EXECUTE format('CREATE POLICY tenancy_isolation ON %s AS PERMISSIVE FOR ALL TO PUBLIC '
                   'USING (%I = tenancy.current_tenant_id()) WITH CHECK (%I = tenancy.current_tenant_id())',
                   tbl, tenant_column, tenant_column);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO tenancy_all_tenants', tbl);
    INSERT INTO tenancy.audit_log (action, details)
    VALUES ('enable_rls', jsonb_build_object('table', tbl::text, 'tenant_column', tenant_column));
END
$$;

-- What is left open: tables with a tenant_id column and no (forced) RLS or no
-- policy on it, foreign keys that let a row point at another tenant's row,
-- and roles that bypass RLS.
CREATE FUNCTION tenancy.rls_audit() RETURNS TABLE(tbl regclass, problem text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    WITH tenant_tables AS (
        SELECT c.oid, c.relrowsecurity, c.relforcerowsecurity, a.attnum
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
        WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
          AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'tenancy')
          AND n.nspname NOT LIKE 'pg\_%'
    )
    SELECT oid::regclass, 'row level security is not enabled'
    FROM tenant_tables WHERE NOT relrowsecurity
    UNION ALL
    SELECT oid::regclass, 'row level security is not forced: the table owner bypasses it'
    FROM tenant_tables WHERE relrowsecurity AND NOT relforcerowsecurity
    UNION ALL
    SELECT t.oid::regclass, 'no policy compares tenant_id with tenancy.current_tenant_id()'
    FROM tenant_tables t
    WHERE NOT EXISTS (SELECT 1 FROM pg_policy p
                      WHERE p.polrelid = t.oid
                        AND pg_get_expr(p.polqual, p.polrelid) LIKE '%tenant_id = tenancy.current_tenant_id()%')
    UNION ALL
    SELECT t.oid::regclass,
           format('foreign key %s does not include tenant_id: a row can reference another tenant''s row', con.conname)
    FROM tenant_tables t
    JOIN pg_constraint con ON con.conrelid = t.oid AND con.contype = 'f'
    WHERE NOT (t.attnum = ANY (con.conkey))
    UNION ALL
    SELECT NULL::regclass, format('role %s bypasses row level security', r.rolname)
    FROM pg_roles r WHERE r.rolbypassrls AND NOT r.rolsuper
      AND r.rolname <> 'tenancy_all_tenants'  -- the documented, explicit switch
    ORDER BY 1, 2
$$;
