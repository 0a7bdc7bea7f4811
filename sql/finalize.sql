-- SQL-language parts of the API, loaded after the Rust functions exist.

-- Creates or extends the month partitions of a range-partitioned table:
-- the current period and `premake` ahead. Returns how many it made.
CREATE FUNCTION tenancy._premake_partitions(p_schema name, p_table name, p_unit text, p_premake integer)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog
AS $$
DECLARE
    step interval := ('1 ' || p_unit)::interval;
    lo timestamp;
    part name;
    made integer := 0;
BEGIN
    FOR i IN 0..p_premake LOOP
        lo := date_trunc(p_unit, localtimestamp) + i * step;
        part := p_table || '_p' || to_char(lo, 'YYYYMMDD');
        IF to_regclass(format('%I.%I', p_schema, part)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                           p_schema, part, p_schema, p_table, lo, lo + step);
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END
$$;

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

-- Who may do what: tenancy_admin runs the lifecycle; functions that make or
-- drop schemas and roles run as the extension's owner, with a pinned path.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tenancy_admin') THEN
        CREATE ROLE tenancy_admin NOLOGIN;
    END IF;
    -- seeing every tenant's rows in shared tables: an explicit SET ROLE
    -- tenancy_all_tenants, for members of tenancy_admin (NOINHERIT: never
    -- by default)
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tenancy_all_tenants') THEN
        CREATE ROLE tenancy_all_tenants NOLOGIN NOINHERIT BYPASSRLS;
    END IF;
    GRANT tenancy_all_tenants TO tenancy_admin;
END
$$;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA tenancy FROM PUBLIC;
GRANT USAGE ON SCHEMA tenancy TO tenancy_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA tenancy TO tenancy_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA tenancy TO tenancy_admin;
-- adopting makes roles and policies from a table anyone with CREATE could
-- have written: superusers only
REVOKE EXECUTE ON FUNCTION tenancy.adopt_schemas() FROM tenancy_admin;
-- ALL FUNCTIONS leaves procedures out
REVOKE ALL ON PROCEDURE tenancy.run_worker_pass(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE tenancy.run_worker_pass(integer, integer) TO tenancy_admin;
-- set_tenant reads the catalog as the owner, but must not pin search_path:
-- setting it (for a schema tenant) is part of its job. Its own queries run
-- with a safe search_path inside.
ALTER FUNCTION tenancy.set_tenant(text, boolean) SECURITY DEFINER;
-- what tenants' own sessions need: the context and the policies' functions
GRANT USAGE ON SCHEMA tenancy TO PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy.current_tenant_id(),
                          tenancy.set_tenant(text, boolean), tenancy.set_tenant(uuid, boolean) TO PUBLIC;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'tenancy'::regnamespace
          AND p.proname IN ('_provision', 'provision_batch', 'register_template', '_process_next',
                            '_stop_batch', '_finalize_batches', 'process_queue', 'cancel_batch',
                            'cleanup_batches', 'set_pool_size', '_pool_work', '_pool_build', 'suspend',
                            'resume', 'drop_tenant', '_trash_work', 'bulk_update', 'migrate',
                            '_migrate_tenant', '_queue_migrations', '_build_reference',
                            '_drop_tenant_role', 'enable_rls', '_maintain_partitions',
                            '_maintain_tenant_partitions', '_maintenance_finish',
                            '_maintenance_step', 'run_maintenance', '_run_due_jobs',
                            'refresh_metrics')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$$;

SELECT tenancy._load_shipped_templates();
-- serve this database now, not at the worker's next look
SELECT tenancy._wake_worker();
