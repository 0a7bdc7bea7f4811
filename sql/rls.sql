-- Shared-table tenants: the tenant context and the policies that read it.

CREATE FUNCTION tenancy.set_tenant(tenant uuid, is_local boolean DEFAULT true) RETURNS uuid
LANGUAGE sql
RETURN tenancy.set_tenant(tenant::text, is_local);

-- The fixed statements of row level security on a table, failing closed:
-- ENABLE and FORCE (the owner is held too) and one policy for reads and
-- writes of the current tenant's rows. It is the only policy, so the planner
-- can use an index on the tenant column for everyone: seeing all tenants is
-- not a second policy but the role tenancy_all_tenants_<db> (BYPASSRLS),
-- taken with SET ROLE. A table of a shared schema is granted to the shared
-- tenants' roles here, once its policy exists, and not before.
CREATE FUNCTION tenancy._enable_rls(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    col_type regtype;
    seq regclass;
    in_shared_schema boolean;
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
    -- a row is written only in the current tenant's context, and only while
    -- that tenant is under its storage quota (src/quota.rs)
    EXECUTE format('CREATE POLICY tenancy_isolation ON %s AS PERMISSIVE FOR ALL TO PUBLIC '
                   'USING (%I = tenancy.current_tenant_id()) '
                   'WITH CHECK (%I = tenancy.current_tenant_id() AND tenancy.tenant_may_write())',
                   tbl, tenant_column, tenant_column);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I', tbl, tenancy._db_role('all_tenants'));
    SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   JOIN tenancy.templates tp ON tenancy._shared_schema_name(tp.name, tp.spec) = n.nspname
                   WHERE c.oid = tbl AND c.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = tenancy._db_role('owner')))
    INTO in_shared_schema;
    IF in_shared_schema THEN
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO %I', tbl, tenancy._db_role('shared'));
    END IF;
    -- the table's own sequences (identity, serial): nextval, never setval
    FOR seq IN SELECT d.objid::regclass FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
               WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
                 AND d.refobjid = tbl AND d.deptype IN ('a', 'i') LOOP
        EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', seq, tenancy._db_role('all_tenants'));
        IF in_shared_schema THEN
            EXECUTE format('GRANT USAGE ON SEQUENCE %s TO %I', seq, tenancy._db_role('shared'));
        END IF;
    END LOOP;
    PERFORM tenancy._audit_write('enable_rls', NULL, NULL,
                                 jsonb_build_object('table', tbl::text, 'tenant_column', tenant_column));
END
$$;

-- Row level security on a table of the caller's (or, for a tenancy_admin,
-- a table of a template's shared schema); never on the extension's own
-- tables or the system's.
CREATE FUNCTION tenancy.enable_rls(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    c record;
    caller oid := tenancy._caller();
BEGIN
    SELECT k.relowner, k.relnamespace, k.relkind, n.nspname INTO c
    FROM pg_class k JOIN pg_namespace n ON n.oid = k.relnamespace WHERE k.oid = tbl;
    IF c.nspname IN ('tenancy', 'pg_catalog', 'information_schema', 'pg_toast') OR c.nspname LIKE 'pg\_%'
       OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = tbl
                  AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e') THEN
        RAISE EXCEPTION 'enable_rls refuses %: it belongs to % itself', tbl,
                        CASE WHEN c.nspname = 'tenancy' THEN 'the tenancy extension' ELSE 'PostgreSQL or an extension' END
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF c.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION '% is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT (pg_has_role(caller, c.relowner, 'USAGE')
            OR (c.relowner = (SELECT r.oid FROM pg_roles r WHERE r.rolname = tenancy._db_role('owner'))
                AND pg_has_role(caller, tenancy._db_role('admin'), 'USAGE'))) THEN
        RAISE EXCEPTION 'permission denied to enable row level security on %', tbl
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'enable_rls is for the table''s owner, or for this database''s tenancy admin on a table of a shared schema.';
    END IF;
    PERFORM tenancy._enable_rls(tbl, tenant_column);
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
      -- the documented, explicit switch (and 0.2.0's, shared by the cluster)
      AND r.rolname <> 'tenancy_all_tenants' AND r.rolname NOT LIKE 'tenancy\_all\_tenants\_%'
    ORDER BY 1, 2
$$;
