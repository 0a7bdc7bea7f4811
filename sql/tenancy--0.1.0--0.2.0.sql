-- Upgrade of tenancy from 0.1.0 to 0.2.0.
-- Every change to the SQL surface since 0.1.0 is repeated here;
-- tests/test_upgrade.py checks that an upgraded install equals a fresh one.
\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.2.0'" to load this file. \quit

-- health(tenant) reports hypertables and counts their chunks in its size
CREATE OR REPLACE FUNCTION tenancy.health(tenant text) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- the reference schema it builds and rolls back is no news to the caller
-- (TimescaleDB, for one, warns about column types on every CREATE TABLE)
SET client_min_messages = error
AS $$
DECLARE
    t tenancy.tenants;
    schema_now name;
    ref name := ('tenancy_ref_' || pg_backend_pid())::name;
    expected text[];
    actual text[];
    missing text[];
    extra text[];
    reference_error text;
    size_bytes bigint := 0;
    row_estimate bigint := 0;
    conns integer := 0;
    users_now bigint;
    hypertables jsonb;
    chunk_bytes bigint := 0;
    score integer := 100;
    reasons text[] := '{}';
BEGIN
    IF tenant IS NULL THEN
        RETURN tenancy.health();  -- DESIGN's health(tenant DEFAULT NULL)
    END IF;
    SELECT * INTO t FROM tenancy.tenants WHERE slug = tenant;
    IF NOT FOUND AND tenant ~ '^[0-9a-fA-F-]{36}$' THEN
        SELECT * INTO t FROM tenancy.tenants WHERE id = tenant::uuid;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant "%" does not exist', tenant USING ERRCODE = 'undefined_object';
    END IF;
    schema_now := CASE WHEN t.status = 'archived' THEN tenancy._archive_name(t) ELSE t.schema_name END;

    IF t.status = 'dropped' THEN
        RETURN jsonb_build_object('tenant', t.slug, 'status', t.status, 'score', 0,
                                  'reasons', jsonb_build_array('the tenant was dropped at ' || t.dropped_at));
    END IF;
    IF t.isolation = 'shared' THEN
        -- a shared tenant is its rows in the shared tables
        schema_now := tenancy._access_schema(t);
        DECLARE
            r record;
            n bigint;
            per_table jsonb := '{}';
        BEGIN
            FOR r IN SELECT tbl, c.relname FROM tenancy._shared_tables(schema_now) tbl
                     JOIN pg_class c ON c.oid = tbl ORDER BY c.relname LOOP
                EXECUTE format('SELECT count(*) FROM %s WHERE tenant_id = $1', r.tbl) INTO n USING t.id;
                per_table := per_table || jsonb_build_object(r.relname, n);
                row_estimate := row_estimate + n;
            END LOOP;
            IF t.status <> 'active' THEN
                score := score - 40;
                reasons := reasons || format('the tenant is %s', t.status);
            END IF;
            RETURN jsonb_build_object(
                'tenant', t.slug, 'status', t.status, 'isolation', 'shared', 'template', t.template,
                'template_version', t.template_version, 'shared_schema', schema_now,
                'rows', per_table, 'row_count', row_estimate, 'score', greatest(score, 0),
                'reasons', to_jsonb(reasons));
        END;
    END IF;
    IF t.isolation = 'schema' AND to_regnamespace(quote_ident(schema_now)) IS NULL THEN
        RETURN jsonb_build_object('tenant', t.slug, 'status', t.status, 'schema', schema_now,
                                  'schema_present', false, 'score', 0,
                                  'reasons', jsonb_build_array(format('schema %s is missing', schema_now)));
    END IF;

    -- the objects of a fresh schema of the tenant's template version, built
    -- in a subtransaction that is always rolled back
    BEGIN
        PERFORM tenancy._build_reference(t.template, t.template_version, ref);
        SELECT array_agg(kind || ' ' || object ORDER BY 1) INTO expected FROM tenancy._schema_objects(ref);
        RAISE EXCEPTION USING ERRCODE = 'TNRB0';
    EXCEPTION
        WHEN SQLSTATE 'TNRB0' THEN NULL;
        WHEN OTHERS THEN reference_error := SQLERRM;
    END;
    SELECT array_agg(kind || ' ' || object ORDER BY 1) INTO actual FROM tenancy._schema_objects(schema_now);
    SELECT array_agg(x ORDER BY x) INTO missing FROM unnest(expected) x WHERE x <> ALL (coalesce(actual, '{}'));
    SELECT array_agg(x ORDER BY x) INTO extra FROM unnest(actual) x WHERE x <> ALL (coalesce(expected, '{}'));

    SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0), coalesce(sum(greatest(c.reltuples, 0)), 0)
    INTO size_bytes, row_estimate
    FROM pg_class c WHERE c.relnamespace = to_regnamespace(quote_ident(schema_now)) AND c.relkind IN ('r', 'm');
    -- a hypertable's rows are in chunks in TimescaleDB's own schema
    IF to_regclass('timescaledb_information.chunks') IS NOT NULL THEN
        EXECUTE $q$
            SELECT coalesce(jsonb_agg(jsonb_build_object('table', h.hypertable_name, 'chunks', h.chunks,
                       'chunk_interval', h.time_interval, 'chunk_bytes', h.bytes) ORDER BY h.hypertable_name), '[]'),
                   coalesce(sum(h.bytes), 0)
            FROM (SELECT h.hypertable_name, d.time_interval, count(c.chunk_name) AS chunks,
                         coalesce(sum(pg_total_relation_size((quote_ident(c.chunk_schema) || '.' || quote_ident(c.chunk_name))::regclass)), 0) AS bytes
                  FROM timescaledb_information.hypertables h
                  LEFT JOIN timescaledb_information.dimensions d
                         ON d.hypertable_schema = h.hypertable_schema AND d.hypertable_name = h.hypertable_name
                        AND d.dimension_number = 1
                  LEFT JOIN timescaledb_information.chunks c
                         ON c.hypertable_schema = h.hypertable_schema AND c.hypertable_name = h.hypertable_name
                  WHERE h.hypertable_schema = $1
                  GROUP BY h.hypertable_name, d.time_interval) h
        $q$ INTO hypertables, chunk_bytes USING schema_now;
        size_bytes := size_bytes + chunk_bytes;
    END IF;
    SELECT count(*) INTO conns FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.usename = t.role_name;

    IF t.status <> 'active' THEN
        score := score - 40;
        reasons := reasons || format('the tenant is %s', t.status);
    END IF;
    IF reference_error IS NOT NULL THEN
        score := score - 10;
        reasons := reasons || format('its template version could not be built to compare: %s', reference_error);
    END IF;
    IF missing IS NOT NULL THEN
        score := score - least(50, 10 * cardinality(missing));
        reasons := reasons || format('%s object(s) of template %s version %s missing', cardinality(missing),
                                     t.template, t.template_version);
    END IF;
    IF extra IS NOT NULL THEN
        score := score - least(10, 2 * cardinality(extra));
        reasons := reasons || format('%s object(s) not in the template', cardinality(extra));
    END IF;
    IF t.max_users IS NOT NULL AND to_regclass(format('%I.users', schema_now)) IS NOT NULL THEN
        EXECUTE format('SELECT count(*) FROM %I.users', schema_now) INTO users_now;
        IF users_now > t.max_users THEN
            score := score - 20;
            reasons := reasons || format('%s users, over its quota of %s', users_now, t.max_users);
        END IF;
    END IF;
    IF t.max_storage_bytes IS NOT NULL AND size_bytes > t.max_storage_bytes THEN
        score := score - 20;
        reasons := reasons || format('storage %s is over its quota of %s', pg_size_pretty(size_bytes),
                                     pg_size_pretty(t.max_storage_bytes));
    END IF;
    RETURN jsonb_build_object(
        'tenant', t.slug, 'status', t.status, 'template', t.template,
        'template_version', t.template_version, 'schema', schema_now, 'schema_present', true,
        'missing', coalesce(to_jsonb(missing), '[]'), 'extra', coalesce(to_jsonb(extra), '[]'),
        'size_bytes', size_bytes, 'row_estimate', row_estimate, 'connections', conns, 'users', users_now,
        'hypertables', hypertables,
        'max_users', t.max_users, 'max_storage_bytes', t.max_storage_bytes,
        'score', greatest(score, 0), 'reasons', to_jsonb(reasons));
END
$$;

-- DROP EXTENSION saves the catalog; adopt_schemas() takes it back (sql/adopt.sql)
CREATE FUNCTION tenancy._save_catalog() RETURNS event_trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    schemas bigint;
    shared bigint;
BEGIN
    -- ddl_command_start does not say what is dropped: look at the statement.
    -- A wider match than needed only saves a snapshot nobody uses; a
    -- worker has no statement text (NULL) and never drops the extension.
    IF coalesce(current_query(), '') !~* '\mdrop\s+(extension|schema)\M[^;]*"?\mtenancy\M"?\s*(,|;|\mcascade\M|\mrestrict\M|$)' THEN
        RETURN;
    END IF;
    SELECT count(*) FILTER (WHERE isolation = 'schema' AND status <> 'dropped'),
           count(*) FILTER (WHERE isolation = 'shared' AND status <> 'dropped')
    INTO schemas, shared FROM tenancy.tenants;
    CREATE SCHEMA IF NOT EXISTS tenancy_saved;
    CREATE TABLE IF NOT EXISTS tenancy_saved.catalog (
        kind     text        NOT NULL,
        data     jsonb       NOT NULL,
        saved_at timestamptz NOT NULL DEFAULT now()
    );
    COMMENT ON SCHEMA tenancy_saved IS
        'tenancy: the catalog saved by DROP EXTENSION tenancy; SELECT * FROM tenancy.adopt_schemas() takes it back';
    -- added to what an earlier drop saved and nobody adopted: never lost
    INSERT INTO tenancy_saved.catalog (kind, data)
    SELECT 'template', to_jsonb(t) FROM tenancy.templates t WHERE NOT t.shipped
    UNION ALL
    SELECT 'tenant', to_jsonb(t) FROM tenancy.tenants t
    UNION ALL
    SELECT 'pool_setting', to_jsonb(p) FROM tenancy.pool_settings p;
    RAISE NOTICE 'tenancy: % tenant schema(s) and % shared tenant(s) stay in place with their data and roles; the catalog is saved in tenancy_saved.catalog',
        schemas, shared
        USING HINT = 'After CREATE EXTENSION tenancy, SELECT * FROM tenancy.adopt_schemas() takes them back. '
                     'Shared tables lose their policies with the extension (CASCADE) and stay closed to tenant roles until then.';
END
$$;

CREATE EVENT TRIGGER tenancy_save_catalog ON ddl_command_start
    WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA')
    EXECUTE FUNCTION tenancy._save_catalog();

-- Takes back the catalog saved by DROP EXTENSION: templates, tenants whose
-- schema (or shared schema) is still there, pool sizes; puts back the
-- shared tables' policies; drops the pool's leftover schemas (they hold no
-- tenant). Returns one row per saved tenant with what became of it.
CREATE FUNCTION tenancy.adopt_schemas()
RETURNS TABLE(slug text, isolation text, schema_name name, status tenancy.tenant_status, result text)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    t tenancy.tenants;
    present name;
    s name;
BEGIN
    IF to_regclass('tenancy_saved.catalog') IS NULL THEN
        RAISE EXCEPTION 'there is no saved catalog to adopt: tenancy_saved.catalog does not exist'
            USING ERRCODE = 'undefined_table',
                  HINT = 'DROP EXTENSION tenancy saves it; nothing was dropped here, or it was adopted already.';
    END IF;
    FOR r IN SELECT c.data FROM tenancy_saved.catalog c WHERE c.kind = 'template' ORDER BY c.saved_at DESC LOOP
        INSERT INTO tenancy.templates SELECT (jsonb_populate_record(NULL::tenancy.templates, r.data)).*
        ON CONFLICT DO NOTHING;
    END LOOP;
    FOR r IN SELECT c.data FROM tenancy_saved.catalog c WHERE c.kind = 'pool_setting' ORDER BY c.saved_at DESC LOOP
        INSERT INTO tenancy.pool_settings SELECT (jsonb_populate_record(NULL::tenancy.pool_settings, r.data)).*
        ON CONFLICT DO NOTHING;
    END LOOP;
    -- the newest save of a tenant wins; an older one is reported as skipped
    FOR r IN SELECT c.data, c.saved_at FROM tenancy_saved.catalog c WHERE c.kind = 'tenant'
             ORDER BY c.saved_at DESC, c.data->>'created_at' LOOP
        t := jsonb_populate_record(NULL::tenancy.tenants, r.data);
        slug := t.slug;
        isolation := t.isolation;
        schema_name := t.schema_name;
        status := t.status;
        present := CASE WHEN t.status = 'dropped' THEN NULL
                        WHEN t.isolation = 'shared' THEN tenancy._access_schema(t)
                        WHEN t.status = 'archived' THEN tenancy._archive_name(t)
                        ELSE t.schema_name END;
        IF EXISTS (SELECT 1 FROM tenancy.tenants x WHERE x.id = t.id OR x.slug = t.slug) THEN
            result := 'skipped: already in the catalog';
        ELSIF NOT EXISTS (SELECT 1 FROM tenancy.templates p WHERE p.name = t.template AND p.version = t.template_version) THEN
            result := format('skipped: template %s version %s is not known', t.template, t.template_version);
        ELSIF t.status <> 'dropped' AND to_regnamespace(quote_ident(present)) IS NULL THEN
            result := format('skipped: schema %s is missing', present);
        ELSE
            INSERT INTO tenancy.tenants SELECT t.*;
            PERFORM tenancy._audit('adopt', t, jsonb_build_object('saved_at', r.saved_at));
            result := CASE WHEN t.status = 'dropped' THEN 'adopted (tombstone)' ELSE 'adopted' END;
        END IF;
        RETURN NEXT;
    END LOOP;
    -- the policies of shared tables went with the extension
    FOR s IN SELECT DISTINCT tenancy._access_schema(x) FROM tenancy.tenants x
             WHERE x.isolation = 'shared' AND x.status <> 'dropped' LOOP
        PERFORM tenancy.enable_rls(tbl) FROM tenancy._shared_tables(s) tbl;
    END LOOP;
    FOR s IN SELECT n.nspname FROM pg_namespace n WHERE n.nspname LIKE 'tenancy\_pool\_%'
             AND NOT EXISTS (SELECT 1 FROM tenancy.pool p WHERE p.schema_name = n.nspname) LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', s);
    END LOOP;
    DROP TABLE tenancy_saved.catalog;
    DROP SCHEMA tenancy_saved;
    PERFORM tenancy._wake_worker();
END
$$;
COMMENT ON FUNCTION tenancy.adopt_schemas() IS
    'Takes back the tenants left in place by DROP EXTENSION tenancy (their catalog was saved in tenancy_saved.catalog)';
REVOKE ALL ON FUNCTION tenancy._save_catalog(), tenancy.adopt_schemas() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._save_catalog() TO tenancy_admin;

-- The extension's partitioned tables keep their keys on each partition, not
-- on the parent, so that pg_restore can attach the month partitions
-- (sql/bootstrap.sql says why)
ALTER TABLE tenancy.audit_log DROP CONSTRAINT audit_log_pkey;
DROP INDEX tenancy.audit_log_tenant_idx;
ALTER TABLE tenancy.tenant_metrics DROP CONSTRAINT tenant_metrics_pkey;
ALTER TABLE tenancy.audit_log_default ADD CONSTRAINT audit_log_default_pkey PRIMARY KEY (id, at);
CREATE INDEX audit_log_default_tenant_idx ON tenancy.audit_log_default (tenant_id, at);
ALTER TABLE tenancy.tenant_metrics_default
    ADD CONSTRAINT tenant_metrics_default_pkey PRIMARY KEY (tenant_id, collected_at);
CREATE FUNCTION tenancy._copy_partition_indexes(dflt regclass, part regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d_name name;
    p_name name;
    nsp name;
    ix record;
    ix_name name;
BEGIN
    IF dflt IS NULL THEN
        RETURN;
    END IF;
    SELECT relname INTO d_name FROM pg_class WHERE oid = dflt;
    SELECT relname, relnamespace::regnamespace::name INTO p_name, nsp FROM pg_class WHERE oid = part;
    FOR ix IN
        SELECT c.relname, i.indisprimary, pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = dflt AND NOT EXISTS (SELECT 1 FROM pg_inherits h WHERE h.inhrelid = i.indexrelid)
        ORDER BY c.relname
    LOOP
        ix_name := CASE WHEN left(ix.relname, length(d_name)) = d_name
                        THEN p_name || substr(ix.relname, length(d_name) + 1)
                        ELSE p_name || '_' || ix.relname END;
        EXECUTE regexp_replace(ix.def, '^CREATE (UNIQUE )?INDEX \S+ ON \S+ ',
                               format('CREATE \1INDEX %I ON %I.%I ', ix_name, nsp, p_name));
        IF ix.indisprimary THEN
            EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I',
                           nsp, p_name, ix_name, ix_name);
        END IF;
    END LOOP;
END
$$;
CREATE OR REPLACE FUNCTION tenancy._maintain_partitions(parent regclass, unit text, premake integer,
                                             retention interval DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '200ms'
AS $$
DECLARE
    step interval := ('1 ' || unit)::interval;
    nsp name;
    rel name;
    keycol name;
    dflt regclass;
    lo timestamp;
    part name;
    made integer := 0;
    dropped integer := 0;
    skipped text[] := '{}';
    p record;
    n bigint;
BEGIN
    SELECT c.relnamespace::regnamespace::name, c.relname INTO nsp, rel FROM pg_class c WHERE c.oid = parent;
    SELECT a.attname INTO keycol FROM pg_partitioned_table pt
    JOIN pg_attribute a ON a.attrelid = pt.partrelid AND a.attnum = pt.partattrs[0]
    WHERE pt.partrelid = parent;
    -- (from the catalog alone: pg_get_expr on a bound would lock the partition)
    SELECT nullif(pt.partdefid, 0)::regclass INTO dflt FROM pg_partitioned_table pt WHERE pt.partrelid = parent;

    FOR i IN 0 .. premake LOOP
        lo := date_trunc(unit, localtimestamp) + i * step;
        part := (rel || '_p' || to_char(lo, 'YYYYMMDD'))::name;
        CONTINUE WHEN to_regclass(format('%I.%I', nsp, part)) IS NOT NULL;
        BEGIN
            IF dflt IS NOT NULL THEN
                -- With a default partition, a writer that routed its row
                -- before the new partition appears would fail its partition
                -- check: hold writers off for the moment it takes (or skip,
                -- after lock_timeout, if they hold the table).
                EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', parent);
                EXECUTE format('SELECT count(*) FROM %s WHERE %I >= %L AND %I < %L',
                               dflt, keycol, lo, keycol, lo + step) INTO n;
            ELSE
                n := 0;
            END IF;
            IF n = 0 THEN
                EXECUTE format('CREATE TABLE %I.%I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                               nsp, part, parent, lo, lo + step);
            ELSE
                -- rows of this period sit in the default partition: move them
                EXECUTE format('CREATE TABLE %I.%I (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               nsp, part, parent);
                EXECUTE format('WITH moved AS (DELETE FROM %s WHERE %I >= %L AND %I < %L RETURNING *) '
                               'INSERT INTO %I.%I SELECT * FROM moved',
                               dflt, keycol, lo, keycol, lo + step, nsp, part);
                EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                               parent, nsp, part, lo, lo + step);
            END IF;
            PERFORM tenancy._copy_partition_indexes(dflt, format('%I.%I', nsp, part)::regclass);
            made := made + 1;
        EXCEPTION
            WHEN lock_not_available THEN
                skipped := skipped || format('%I.%I (locked by another session)', nsp, part);
            WHEN duplicate_table THEN
                NULL;  -- made meanwhile by another session
        END;
    END LOOP;

    IF retention IS NOT NULL THEN
        FOR p IN
            SELECT c.oid::regclass AS tbl, c.relname
            FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
            WHERE i.inhparent = parent AND c.relname ~ ('^' || rel || '_p[0-9]{8}$')
        LOOP
            lo := to_timestamp(right(p.relname, 8), 'YYYYMMDD')::timestamp;
            CONTINUE WHEN lo + step > localtimestamp - retention;
            BEGIN
                EXECUTE format('DROP TABLE %s', p.tbl);
                dropped := dropped + 1;
            EXCEPTION WHEN lock_not_available THEN
                skipped := skipped || format('%s (drop: locked by another session)', p.tbl);
            END;
        END LOOP;
    END IF;
    RETURN jsonb_build_object('created', made, 'dropped', dropped, 'skipped', to_jsonb(skipped));
END
$$;
ALTER FUNCTION tenancy._maintain_partitions(regclass, text, integer, interval)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE ALL ON FUNCTION tenancy._copy_partition_indexes(regclass, regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._copy_partition_indexes(regclass, regclass) TO tenancy_admin;
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT pt.partdefid::regclass AS dflt, i.inhrelid::regclass AS part
             FROM pg_partitioned_table pt JOIN pg_inherits i ON i.inhparent = pt.partrelid
             WHERE pt.partrelid IN ('tenancy.audit_log'::regclass, 'tenancy.tenant_metrics'::regclass)
               AND i.inhrelid <> pt.partdefid LOOP
        PERFORM tenancy._copy_partition_indexes(p.dflt, p.part);
    END LOOP;
END
$$;

-- wait_batch refuses to wait for a batch its own transaction queued
CREATE OR REPLACE FUNCTION tenancy.wait_batch(batch uuid, timeout interval DEFAULT '10 minutes') RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    st tenancy.batch_state;
    deadline timestamptz := clock_timestamp() + timeout;
BEGIN
    -- queued by this very transaction: no worker can see it before it
    -- commits, so waiting could only time out
    IF EXISTS (SELECT 1 FROM tenancy.batches b WHERE b.id = batch
               AND b.xmin::text = pg_current_xact_id_if_assigned()::text) THEN
        RAISE EXCEPTION 'batch % was queued by this transaction and cannot start before it commits', batch
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call wait_batch in a later transaction: SELECT tenancy.provision_batch(...) \gset, then SELECT tenancy.wait_batch(...).';
    END IF;
    LOOP
        SELECT status INTO st FROM tenancy.batches WHERE id = batch;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'batch % does not exist', batch USING ERRCODE = 'undefined_object';
        END IF;
        EXIT WHEN st NOT IN ('queued', 'in_progress') OR clock_timestamp() >= deadline;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN st::text;
END
$$;


-- DESIGN's stats view
-- One row for dashboards: tenants by status, and the pace of provisioning
-- over the last day (from the audit log: each provision's duration).
CREATE VIEW tenancy.stats AS
SELECT t.tenants, t.active, t.suspended, t.archived, t.dropped, t.failed, t.shared,
       p.provisioned_24h, p.from_pool_24h, p.provision_p50_ms, p.provision_p95_ms
FROM (SELECT count(*) FILTER (WHERE status <> 'dropped') AS tenants,
             count(*) FILTER (WHERE status = 'active') AS active,
             count(*) FILTER (WHERE status = 'suspended') AS suspended,
             count(*) FILTER (WHERE status = 'archived') AS archived,
             count(*) FILTER (WHERE status = 'dropped') AS dropped,
             count(*) FILTER (WHERE status = 'failed') AS failed,
             count(*) FILTER (WHERE isolation = 'shared' AND status <> 'dropped') AS shared
      FROM tenancy.tenants) t,
     (SELECT count(*) AS provisioned_24h,
             count(*) FILTER (WHERE (a.details->>'from_pool')::boolean) AS from_pool_24h,
             round(percentile_cont(0.5) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1) AS provision_p50_ms,
             round(percentile_cont(0.95) WITHIN GROUP (ORDER BY a.duration_ms)::numeric, 1) AS provision_p95_ms
      FROM tenancy.audit_log a
      WHERE a.action = 'provision' AND a.at > now() - interval '1 day') p;
GRANT SELECT ON tenancy.stats TO tenancy_admin;

-- The worker's maintenance runs in steps of tenancy.maintenance_chunk tenants,
-- one transaction each; the jobs' intervals follow tenancy.metrics_interval
-- and tenancy.maintenance_interval
ALTER TABLE tenancy.jobs ADD COLUMN progress jsonb;
DROP FUNCTION tenancy._maintain_all_partitions();
CREATE FUNCTION tenancy._maintain_tenant_partitions(after text, max_tenants integer) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r jsonb;
    created integer := 0;
    dropped integer := 0;
    skipped jsonb := '[]';
    last text;
    tenants integer := 0;
    t record;
BEGIN
    FOR t IN
        SELECT tn.slug, tn.schema_name, pt->>'name' AS tbl, pt->>'interval' AS unit,
               coalesce((pt->>'premake')::int, 3) AS premake, (pt->>'retention')::interval AS retention
        FROM (SELECT * FROM tenancy.tenants x
              WHERE x.status IN ('active', 'suspended') AND x.isolation = 'schema' AND x.slug > after
                AND EXISTS (SELECT 1 FROM tenancy.templates y
                            WHERE y.name = x.template AND y.version = x.template_version
                              AND jsonb_array_length(coalesce(y.spec->'partitioned_tables', '[]')) > 0)
              ORDER BY x.slug LIMIT max_tenants) tn
        JOIN tenancy.templates tp ON tp.name = tn.template AND tp.version = tn.template_version
        CROSS JOIN LATERAL jsonb_array_elements(tp.spec->'partitioned_tables') pt
        ORDER BY tn.slug
    LOOP
        tenants := tenants + (last IS DISTINCT FROM t.slug)::int;
        last := t.slug;
        CONTINUE WHEN to_regclass(format('%I.%I', t.schema_name, t.tbl)) IS NULL;
        r := tenancy._maintain_partitions(format('%I.%I', t.schema_name, t.tbl)::regclass,
                                          CASE t.unit WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week'
                                                      WHEN 'monthly' THEN 'month' WHEN 'yearly' THEN 'year'
                                                      ELSE split_part(t.unit, ' ', -1) END,
                                          t.premake, t.retention);
        created := created + (r->>'created')::int;
        dropped := dropped + (r->>'dropped')::int;
        skipped := skipped || (r->'skipped');
    END LOOP;
    RETURN jsonb_build_object('created', created, 'dropped', dropped, 'skipped', skipped,
                              'tenants', tenants, 'last', last);
END
$$;
CREATE FUNCTION tenancy._maintenance_finish(sums jsonb, started_at timestamptz) RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    own record;
    r jsonb;
    created integer := (sums->>'created')::int;
    dropped integer := (sums->>'dropped')::int;
    skipped jsonb := sums->'skipped';
    result jsonb;
BEGIN
    -- the audit log last: its lock (every lifecycle operation writes to it)
    -- is then held only until this transaction commits, just after
    FOR own IN SELECT v.parent, v.retention_setting
               FROM (VALUES (1, 'tenancy.tenant_metrics', 'tenancy.metrics_retention'),
                            (2, 'tenancy.audit_log', 'tenancy.audit_retention')) v(ord, parent, retention_setting)
               ORDER BY v.ord LOOP
        r := tenancy._maintain_partitions(own.parent::regclass, 'month', 3,
                                          nullif(current_setting(own.retention_setting, true), '')::interval);
        created := created + (r->>'created')::int;
        dropped := dropped + (r->>'dropped')::int;
        skipped := skipped || (r->'skipped');
    END LOOP;
    result := jsonb_build_object(
        'partitions_created', created, 'partitions_dropped', dropped, 'partitions_skipped', skipped,
        'batches_cleaned', tenancy.cleanup_batches(
            coalesce(nullif(current_setting('tenancy.batch_retention', true), ''), '7 days')::interval),
        'duration_ms', round((extract(epoch FROM clock_timestamp() - started_at) * 1000)::numeric, 1));
    IF sums ? 'steps' THEN
        result := result || jsonb_build_object('transactions', (sums->>'steps')::int);
    END IF;
    UPDATE tenancy.jobs SET last_started_at = started_at, last_finished_at = clock_timestamp(),
                            last_duration_ms = (result->>'duration_ms')::float8, last_result = result,
                            last_error = NULL, failures = 0, progress = NULL,
                            next_run_at = clock_timestamp() + run_every
    WHERE name = 'maintenance';
    RETURN result;
END
$$;
CREATE FUNCTION tenancy._maintenance_step() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j tenancy.jobs;
    p jsonb;
    r jsonb;
    chunk integer := coalesce(nullif(current_setting('tenancy.maintenance_chunk', true), '')::int, 100);
BEGIN
    PERFORM pg_advisory_xact_lock(pg_catalog.hashtext('tenancy.maintenance'));
    SELECT * INTO j FROM tenancy.jobs WHERE name = 'maintenance';
    p := coalesce(j.progress, jsonb_build_object('after', '', 'created', 0, 'dropped', 0, 'skipped', '[]'::jsonb,
                                                 'steps', 0, 'started_at', clock_timestamp()));
    r := tenancy._maintain_tenant_partitions(p->>'after', chunk);
    p := p || jsonb_build_object('created', (p->>'created')::int + (r->>'created')::int,
                                 'dropped', (p->>'dropped')::int + (r->>'dropped')::int,
                                 'skipped', (p->'skipped') || (r->'skipped'),
                                 'steps', (p->>'steps')::int + 1);
    IF (r->>'tenants')::int = chunk THEN
        -- maybe more tenants: due again at once, from where this step stopped
        UPDATE tenancy.jobs SET progress = p || jsonb_build_object('after', r->>'last'),
                                next_run_at = clock_timestamp()
        WHERE name = 'maintenance';
        RETURN;
    END IF;
    PERFORM tenancy._maintenance_finish(p, (p->>'started_at')::timestamptz);
END
$$;
CREATE OR REPLACE FUNCTION tenancy.run_maintenance() RETURNS jsonb
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t0 timestamptz := clock_timestamp();
BEGIN
    -- one maintenance at a time per database (the worker's, pg_cron's, a DBA's)
    PERFORM pg_advisory_xact_lock(pg_catalog.hashtext('tenancy.maintenance'));
    RETURN tenancy._maintenance_finish(tenancy._maintain_tenant_partitions('', NULL), t0);
END
$$;
CREATE OR REPLACE FUNCTION tenancy._run_due_jobs() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j record;
    n integer := 0;
    t0 timestamptz;
    err text;
BEGIN
    -- the jobs' intervals are settings; a change moves the next run
    UPDATE tenancy.jobs jb
    SET run_every = s.every,
        next_run_at = least(jb.next_run_at, coalesce(jb.last_finished_at, now()) + s.every)
    FROM (VALUES ('metrics', current_setting('tenancy.metrics_interval', true)),
                 ('maintenance', current_setting('tenancy.maintenance_interval', true))) AS s0(name, setting),
         LATERAL (SELECT s0.setting::interval AS every) s
    WHERE jb.name = s0.name AND s0.setting IS NOT NULL AND jb.run_every IS DISTINCT FROM s.every;
    FOR j IN SELECT * FROM tenancy.jobs WHERE next_run_at <= clock_timestamp() ORDER BY next_run_at
             FOR UPDATE SKIP LOCKED LOOP
        t0 := clock_timestamp();
        BEGIN
            CASE j.name
                WHEN 'maintenance' THEN PERFORM tenancy._maintenance_step();
                WHEN 'metrics' THEN PERFORM tenancy.refresh_metrics();
                ELSE RAISE EXCEPTION 'unknown job %', j.name;
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS err = MESSAGE_TEXT;
            UPDATE tenancy.jobs
            SET last_started_at = t0, last_finished_at = clock_timestamp(),
                last_duration_ms = extract(epoch FROM clock_timestamp() - t0) * 1000,
                last_error = err, failures = failures + 1,
                next_run_at = clock_timestamp() + run_every * least(power(2, failures + 1), 16)
            WHERE name = j.name;
            INSERT INTO tenancy.audit_log (action, result, error, details)
            VALUES ('job', 'error', err, jsonb_build_object('job', j.name, 'failures', j.failures + 1));
        END;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY['tenancy._maintain_tenant_partitions(text, integer)', 'tenancy._maintenance_finish(jsonb, timestamptz)',
                             'tenancy._maintenance_step()', 'tenancy.run_maintenance()', 'tenancy._run_due_jobs()']::regprocedure[] LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', f);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION tenancy._maintain_tenant_partitions(text, integer), tenancy._maintenance_finish(jsonb, timestamptz),
                       tenancy._maintenance_step() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._maintain_tenant_partitions(text, integer), tenancy._maintenance_finish(jsonb, timestamptz),
                          tenancy._maintenance_step() TO tenancy_admin;

-- What one pass of the background worker does, in the calling session,
-- committing after each unit of work: queued items, warm-pool schemas and
-- dropped tenants' tables one transaction each, then the periodic jobs that
-- are due (maintenance step by step). For pg_cron where the worker is not
-- preloaded: a crash loses at most the unit under way. A procedure (CALL,
-- outside a transaction block), without SET options or SECURITY DEFINER,
-- which would forbid its COMMITs: everything it calls is qualified.
CREATE PROCEDURE tenancy.run_worker_pass(max_items integer DEFAULT 1000, INOUT units integer DEFAULT 0)
LANGUAGE plpgsql
AS $$
DECLARE
    did boolean;
BEGIN
    IF max_items IS NULL OR max_items < 1 THEN
        RAISE EXCEPTION 'max_items must be at least 1, not %', max_items
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    units := 0;
    WHILE units < max_items LOOP
        did := tenancy._process_next() OR tenancy._pool_work() OR tenancy._trash_work();
        COMMIT;
        EXIT WHEN NOT did;
        units := units + 1;
    END LOOP;
    PERFORM tenancy._finalize_batches();
    COMMIT;
    LOOP
        PERFORM tenancy._run_due_jobs();
        COMMIT;
        EXIT WHEN NOT EXISTS (SELECT 1 FROM tenancy.jobs j
                              WHERE j.progress IS NOT NULL AND j.next_run_at <= pg_catalog.clock_timestamp());
    END LOOP;
END
$$;
REVOKE ALL ON PROCEDURE tenancy.run_worker_pass(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON PROCEDURE tenancy.run_worker_pass(integer, integer) TO tenancy_admin;

-- one helper for the tables of a shared schema that hold tenants' rows
CREATE FUNCTION tenancy._shared_tables(schema_name name) RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT c.oid::regclass FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
    WHERE c.relnamespace = to_regnamespace(quote_ident(schema_name)) AND c.relkind IN ('r', 'p')
      AND NOT c.relispartition
    ORDER BY c.oid
$$;
REVOKE ALL ON FUNCTION tenancy._shared_tables(name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tenancy._shared_tables(name) TO tenancy_admin;
CREATE OR REPLACE FUNCTION tenancy.drop_tenant(tenant text, keep_data boolean DEFAULT false) RETURNS tenancy.tenants
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
        IF t.role_name IS NOT NULL AND t.status <> 'suspended' THEN
            EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM %I', tenancy._access_schema(t), t.role_name);
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
                EXECUTE format('DELETE FROM %s WHERE tenant_id = $1', r.tbl) USING t.id;
            END LOOP;
        END;
        trash := NULL;
    ELSIF t.status = 'archived' THEN
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', tenancy._archive_name(t), trash);
    ELSIF t.schema_name IS NOT NULL AND to_regnamespace(quote_ident(t.schema_name)) IS NOT NULL THEN
        EXECUTE format('ALTER SCHEMA %I RENAME TO %I', t.schema_name, trash);
    END IF;
    PERFORM tenancy._drop_tenant_role(t.role_name);
    UPDATE tenancy.tenants
    SET status = 'dropped', dropped_at = now(), updated_at = now(), domain = NULL
    WHERE id = t.id RETURNING * INTO t;
    PERFORM tenancy._audit('drop', t, jsonb_build_object('before', before, 'after', 'dropped', 'trash_schema', trash));
    PERFORM tenancy._wake_worker();
    RETURN t;
END
$$;
CREATE OR REPLACE FUNCTION tenancy.refresh_metrics() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
    st record;
    now_ts timestamptz := clock_timestamp();
BEGIN
    CREATE TEMP TABLE IF NOT EXISTS tenancy_metrics_now (
        tenant_id uuid, isolation text, table_count integer, row_estimate bigint, total_bytes bigint,
        table_bytes bigint, index_bytes bigint, toast_bytes bigint, dead_tuples bigint,
        last_vacuum timestamptz, last_analyze timestamptz, seq_scans_total bigint, idx_scans_total bigint
    ) ON COMMIT DROP;
    TRUNCATE tenancy_metrics_now;

    INSERT INTO tenancy_metrics_now
    SELECT t.id, 'schema', count(c.oid)::int, coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint,
           coalesce(sum(pg_total_relation_size(c.oid)), 0), coalesce(sum(pg_relation_size(c.oid)), 0),
           coalesce(sum(pg_indexes_size(c.oid)), 0),
           coalesce(sum(CASE WHEN c.reltoastrelid <> 0 THEN pg_total_relation_size(c.reltoastrelid) ELSE 0 END), 0),
           sum(s.n_dead_tup), max(greatest(s.last_vacuum, s.last_autovacuum)),
           max(greatest(s.last_analyze, s.last_autoanalyze)), sum(s.seq_scan), sum(s.idx_scan)
    FROM tenancy.tenants t
    JOIN pg_namespace n ON n.nspname = t.schema_name
    LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
    LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
    WHERE t.isolation = 'schema' AND t.status IN ('active', 'suspended')
    GROUP BY t.id;

    -- shared tenants: zero rows first, then each shared table's share
    INSERT INTO tenancy_metrics_now
    SELECT t.id, 'shared', 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL, NULL
    FROM tenancy.tenants t WHERE t.isolation = 'shared' AND t.status IN ('active', 'suspended');
    FOR st IN
        SELECT c.oid::regclass AS tbl, greatest(c.reltuples, 1) AS est_rows,
               pg_total_relation_size(c.oid) AS total, pg_relation_size(c.oid) AS heap,
               pg_indexes_size(c.oid) AS idx
        FROM (SELECT DISTINCT tenancy._access_schema(t) AS schema_name
              FROM tenancy.tenants t WHERE t.isolation = 'shared') sch
        CROSS JOIN LATERAL tenancy._shared_tables(sch.schema_name) tbl
        JOIN pg_class c ON c.oid = tbl
    LOOP
        UPDATE tenancy_metrics_now SET table_count = table_count + 1 WHERE isolation = 'shared';
        EXECUTE format(
            'UPDATE tenancy_metrics_now m SET row_estimate = m.row_estimate + x.n, '
            'total_bytes = m.total_bytes + (%s * x.n / %s)::bigint, table_bytes = m.table_bytes + (%s * x.n / %s)::bigint, '
            'index_bytes = m.index_bytes + (%s * x.n / %s)::bigint '
            'FROM (SELECT tenant_id, count(*) AS n FROM %s GROUP BY tenant_id) x '
            'WHERE m.tenant_id = x.tenant_id AND m.isolation = ''shared''',
            st.total, st.est_rows, st.heap, st.est_rows, st.idx, st.est_rows, st.tbl);
    END LOOP;

    INSERT INTO tenancy.tenant_metrics (tenant_id, collected_at, isolation, table_count, row_estimate,
        total_bytes, table_bytes, index_bytes, toast_bytes, dead_tuples, last_vacuum, last_analyze,
        seq_scans, idx_scans, seq_scans_total, idx_scans_total)
    SELECT m.tenant_id, now_ts, m.isolation, m.table_count, m.row_estimate, m.total_bytes, m.table_bytes,
           m.index_bytes, m.toast_bytes, m.dead_tuples, m.last_vacuum, m.last_analyze,
           greatest(m.seq_scans_total - prev.seq_scans_total, 0), greatest(m.idx_scans_total - prev.idx_scans_total, 0),
           m.seq_scans_total, m.idx_scans_total
    FROM tenancy_metrics_now m
    LEFT JOIN LATERAL (SELECT p.seq_scans_total, p.idx_scans_total FROM tenancy.tenant_metrics p
                       WHERE p.tenant_id = m.tenant_id ORDER BY p.collected_at DESC LIMIT 1) prev ON true;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE tenancy.jobs SET last_finished_at = clock_timestamp(), last_started_at = now_ts,
                            last_duration_ms = extract(epoch FROM clock_timestamp() - now_ts) * 1000,
                            last_result = jsonb_build_object('tenants', n), last_error = NULL, failures = 0,
                            next_run_at = clock_timestamp() + run_every
    WHERE name = 'metrics';
    RETURN n;
END
$$;
ALTER FUNCTION tenancy.drop_tenant(text, boolean) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION tenancy.refresh_metrics() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
