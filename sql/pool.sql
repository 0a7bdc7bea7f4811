-- The warm pool, kept by the item workers when the queue is empty.

CREATE FUNCTION tenancy.set_pool_size(template text, size integer) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
#variable_conflict use_column
BEGIN
    IF set_pool_size.size IS NULL OR size < 0 OR size > 10000 THEN
        RAISE EXCEPTION 'pool size must be from 0 to 10000, not %', size
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM tenancy.templates t WHERE t.name = set_pool_size.template) THEN
        RAISE EXCEPTION 'template "%" does not exist', set_pool_size.template USING ERRCODE = 'undefined_object';
    END IF;
    INSERT INTO tenancy.pool_settings AS p (template, size) VALUES (set_pool_size.template, set_pool_size.size)
    ON CONFLICT (template) DO UPDATE SET size = excluded.size, updated_at = now();
    PERFORM tenancy._audit_write('set_pool_size', NULL, NULL,
                                 jsonb_build_object('template', set_pool_size.template, 'size', set_pool_size.size));
    PERFORM tenancy._wake_worker();
    RETURN set_pool_size.size;
END
$$;

-- Ready schemas of the newest version of each template with a pool.
CREATE VIEW tenancy.pool_status AS
SELECT s.template, s.size,
       (SELECT count(*) FROM tenancy.pool p
        WHERE p.template = s.template
          AND p.template_version = (SELECT max(version) FROM tenancy.templates t WHERE t.name = s.template))::integer AS ready,
       (SELECT count(*) FROM tenancy.pool p WHERE p.template = s.template)::integer AS built
FROM tenancy.pool_settings s;

-- How much pool work there is: schemas to build, and stale or extra ones to drop.
CREATE FUNCTION tenancy._pool_deficit() RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(greatest(size - ready, 0) + (built - least(ready, size))), 0)::integer
    FROM tenancy.pool_status
$$;

-- One step of pool work: drop one stale or extra schema, or build one.
-- Returns false when the pool is as it should be.
CREATE FUNCTION tenancy._pool_work() RETURNS boolean
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p record;
    s record;
BEGIN
    -- stale (older template version) or more than the size: drop one
    FOR p IN
        SELECT pl.schema_name, pl.role_name FROM tenancy.pool pl
        LEFT JOIN tenancy.pool_settings ps ON ps.template = pl.template
        WHERE pl.template_version < (SELECT max(version) FROM tenancy.templates t WHERE t.name = pl.template)
           OR coalesce(ps.size, 0) < (SELECT count(*) FROM tenancy.pool x WHERE x.template = pl.template)
        ORDER BY pl.template_version, pl.created_at DESC
        LIMIT 1
        FOR UPDATE OF pl SKIP LOCKED
    LOOP
        EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', p.schema_name);
        PERFORM tenancy._drop_tenant_role(p.role_name);
        DELETE FROM tenancy.pool WHERE schema_name = p.schema_name;
        RETURN true;
    END LOOP;
    -- short of its size: build one (one builder per template at a time)
    FOR s IN SELECT * FROM tenancy.pool_status WHERE ready < size ORDER BY template LOOP
        -- the template's pool row, not an advisory lock anyone could hold
        PERFORM 1 FROM tenancy.pool_settings ps WHERE ps.template = s.template FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        PERFORM tenancy._pool_build(s.template);
        RETURN true;
    END LOOP;
    RETURN false;
END
$$;
