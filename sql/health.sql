-- health(tenant): one tenant against its template version.

-- What a schema holds, named without the schema: tables, columns, indexes.
CREATE FUNCTION tenancy._schema_objects(schema_name name) RETURNS TABLE(kind text, object text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT 'table', c.relname::text
    FROM pg_class c
    WHERE c.relnamespace = to_regnamespace(quote_ident(schema_name)) AND c.relkind IN ('r', 'p')
      AND NOT c.relispartition
    UNION ALL
    SELECT 'column', c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relnamespace = to_regnamespace(quote_ident(schema_name)) AND c.relkind IN ('r', 'p')
      AND NOT c.relispartition
    UNION ALL
    SELECT 'index', replace(pg_get_indexdef(i.indexrelid), quote_ident(schema_name) || '.', '')
    FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
    WHERE c.relnamespace = to_regnamespace(quote_ident(schema_name)) AND NOT c.relispartition
$$;

-- TimescaleDB's information views, when they are that extension's own:
-- superuser code (refresh_metrics, health(tenant)) reads them, and a
-- schema of that name made by anyone with CREATE would run its views'
-- functions as the superuser.
CREATE FUNCTION tenancy._timescaledb_views() RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_extension e
        JOIN pg_depend d ON d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
                        AND d.deptype = 'e' AND d.classid = 'pg_namespace'::regclass
        JOIN pg_namespace n ON n.oid = d.objid
        WHERE e.extname = 'timescaledb' AND n.nspname = 'timescaledb_information')
$$;

-- Where a tenant is on Citus, or NULL when Citus is not installed or the
-- tenant's tables are not distributed: a schema tenant's
-- {"node": "host:port", "colocation_id", "shard_bytes"} (its tables' shards
-- on that node); a shared tenant's {"node", "colocation_id", "shard_id"}:
-- the shard of the shared table tbl that holds its rows (its rows of every
-- shared table are on that node: they are colocated).
CREATE FUNCTION tenancy._citus_placement(schema_name text, tbl regclass DEFAULT NULL, tenant uuid DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    placed jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN NULL;
    END IF;
    -- Citus's relations exist only with it: a query parsed when it runs
    -- (those of pg_catalog, not citus_tables in public)
    IF tbl IS NOT NULL THEN
        EXECUTE $q$
            SELECT jsonb_build_object('node', s.nodename || ':' || s.nodeport, 'colocation_id', p.colocationid,
                                      'shard_id', s.shardid)
            FROM pg_dist_partition p
            JOIN citus_shards s ON s.shardid = get_shard_id_for_distribution_column(p.logicalrelid, $2::text)
            WHERE p.logicalrelid = $1 AND p.partmethod = 'h'
            LIMIT 1
        $q$ INTO placed USING tbl, tenant;
        RETURN placed;
    END IF;
    EXECUTE $q$
        SELECT jsonb_build_object('node', min(s.nodename || ':' || s.nodeport), 'colocation_id', min(p.colocationid),
                                  'shard_bytes', sum(s.shard_size))
        FROM citus_shards s JOIN pg_dist_partition p ON p.logicalrelid = s.table_name
        JOIN pg_class c ON c.oid = s.table_name::oid
        WHERE c.relnamespace = to_regnamespace(quote_ident($1))
        HAVING count(*) > 0
    $q$ INTO placed USING schema_name;
    RETURN placed;
END
$$;

-- A tenant's counts in citus_stat_tenants (Citus's own per-tenant query
-- statistics, summed over the nodes), by its attribute there (a schema
-- tenant's schema name, a shared tenant's id as text) and colocation group
-- (Citus keeps no database in its key); NULL unless Citus tracks tenants
-- (citus.stat_tenants_track = 'all') and the extension's owner, whom this
-- runs as, may read them (Citus grants them to superusers and pg_monitor).
CREATE FUNCTION tenancy._citus_stat_tenant(attribute text, colocation integer) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    counts jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')
       OR current_setting('citus.stat_tenants_track', true) IS DISTINCT FROM 'all'
       OR to_regprocedure('pg_catalog.citus_stat_tenants(boolean)') IS NULL
       OR NOT has_function_privilege('pg_catalog.citus_stat_tenants(boolean)', 'EXECUTE') THEN
        RETURN NULL;
    END IF;
    EXECUTE $q$
        SELECT jsonb_build_object(
                   'query_count_in_this_period', coalesce(sum(query_count_in_this_period), 0),
                   'query_count_in_last_period', coalesce(sum(query_count_in_last_period), 0),
                   'read_count_in_this_period', coalesce(sum(read_count_in_this_period), 0),
                   'read_count_in_last_period', coalesce(sum(read_count_in_last_period), 0),
                   'cpu_usage_in_this_period', coalesce(sum(cpu_usage_in_this_period), 0),
                   'cpu_usage_in_last_period', coalesce(sum(cpu_usage_in_last_period), 0))
        FROM pg_catalog.citus_stat_tenants(true) WHERE tenant_attribute = $1 AND colocation_id = $2
    $q$ INTO counts USING attribute, colocation;
    RETURN counts;
END
$$;

CREATE FUNCTION tenancy.health(tenant text) RETURNS jsonb
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
    owner_now text;
    placed jsonb;
BEGIN
    IF tenant IS NULL THEN
        RETURN tenancy.health();  -- DESIGN's health(tenant DEFAULT NULL)
    END IF;
    SELECT * INTO t FROM tenancy.tenants WHERE id = tenancy._tenant_id(tenant);
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant "%" does not exist', tenant USING ERRCODE = 'undefined_object';
    END IF;
    schema_now := CASE WHEN t.status = 'archived' THEN tenancy._archive_name(t) ELSE t.schema_name END;

    IF t.status = 'dropped' THEN
        RETURN jsonb_build_object('tenant', t.slug, 'status', t.status)
               || tenancy._tenant_score(jsonb_build_object('status', t.status, 'dropped_at', t.dropped_at::text));
    END IF;
    -- a copy restored from another database's dump, not handed over yet
    -- (tenancy.after_restore): this database's owner role, which counts
    -- its rows below, may not read its schema
    owner_now := (SELECT n.nspowner::regrole::text FROM pg_namespace n
                  WHERE n.nspname = CASE WHEN t.isolation = 'shared' THEN tenancy._access_schema(t) ELSE schema_now END);
    IF owner_now IS NOT NULL AND owner_now <> quote_ident(tenancy._db_role('owner')) THEN
        RETURN jsonb_build_object('tenant', t.slug, 'status', t.status, 'schema_owner', owner_now)
               || tenancy._tenant_score(jsonb_build_object('status', t.status, 'foreign_owner', owner_now));
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
                -- as the owner role: planning the count evaluates the
                -- table's index expressions, which a template wrote
                n := (tenancy._as_owner(format('SELECT to_jsonb(count(*)) FROM %s WHERE tenant_id = $1', r.tbl),
                                        t.id) #>> '{}')::bigint;
                per_table := per_table || jsonb_build_object(r.relname, n);
                row_estimate := row_estimate + n;
            END LOOP;
            RETURN jsonb_build_object(
                'tenant', t.slug, 'status', t.status, 'isolation', 'shared', 'template', t.template,
                'template_version', t.template_version, 'shared_schema', schema_now,
                'rows', per_table, 'row_count', row_estimate, 'writes_refused_since', t.over_quota_since,
                'activity', tenancy._activity_of(t.id))
                -- on Citus: the node that holds its rows, Citus's counts of its queries
                || coalesce((SELECT jsonb_build_object('citus', p || jsonb_strip_nulls(jsonb_build_object(
                                        'stat_tenants', tenancy._citus_stat_tenant(t.id::text, (p->>'colocation_id')::integer))))
                             FROM tenancy._citus_placement(schema_now,
                                      (SELECT tbl FROM tenancy._shared_tables(schema_now) tbl LIMIT 1), t.id) p
                             WHERE p IS NOT NULL), '{}')
                || tenancy._tenant_score(jsonb_build_object('status', t.status, 'template', t.template,
                                                            'template_version', t.template_version,
                                                            'over_quota_since', t.over_quota_since::text));
        END;
    END IF;
    IF t.isolation = 'schema' AND to_regnamespace(quote_ident(schema_now)) IS NULL THEN
        RETURN jsonb_build_object('tenant', t.slug, 'status', t.status, 'schema', schema_now,
                                  'schema_present', false)
               || tenancy._tenant_score(jsonb_build_object('status', t.status, 'schema_missing', schema_now));
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
    IF tenancy._timescaledb_views() THEN
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
    -- on Citus the tables here are empty shells: the rows are in their
    -- shards on a worker node
    placed := tenancy._citus_placement(schema_now);
    size_bytes := size_bytes + coalesce((placed->>'shard_bytes')::bigint, 0);
    SELECT count(*) INTO conns FROM pg_stat_activity a
    WHERE a.datname = current_database() AND a.usename = t.role_name;

    -- a plain table only: a view (or anything else) could run a function as the caller
    IF t.max_users IS NOT NULL AND EXISTS (SELECT 1 FROM pg_class c
            WHERE c.oid = to_regclass(format('%I.users', schema_now)) AND c.relkind IN ('r', 'p')) THEN
        -- as the owner role (see the shared tables' counts above)
        users_now := (tenancy._as_owner(format('SELECT to_jsonb(count(*)) FROM %I.users', schema_now), NULL)
                      #>> '{}')::bigint;
    END IF;
    RETURN jsonb_build_object(
        'tenant', t.slug, 'status', t.status, 'template', t.template,
        'template_version', t.template_version, 'schema', schema_now, 'schema_present', true,
        'missing', coalesce(to_jsonb(missing), '[]'), 'extra', coalesce(to_jsonb(extra), '[]'),
        'size_bytes', size_bytes, 'row_estimate', row_estimate, 'connections', conns, 'users', users_now,
        'hypertables', hypertables,
        'max_users', t.max_users, 'max_storage_bytes', t.max_storage_bytes,
        'writes_refused_since', t.over_quota_since, 'activity', tenancy._activity_of(t.id))
        -- on Citus: the node that holds it, Citus's counts of its queries
        || CASE WHEN placed IS NOT NULL THEN jsonb_build_object('citus', placed || jsonb_strip_nulls(
                   jsonb_build_object('stat_tenants', tenancy._citus_stat_tenant(schema_now, (placed->>'colocation_id')::integer)))) ELSE '{}' END
        || tenancy._tenant_score(jsonb_build_object(
               'over_quota_since', t.over_quota_since::text,
               'status', t.status, 'template', t.template, 'template_version', t.template_version,
               'reference_error', reference_error, 'missing', coalesce(cardinality(missing), 0),
               'extra', coalesce(cardinality(extra), 0), 'users', users_now, 'max_users', t.max_users,
               'size_bytes', size_bytes, 'max_storage_bytes', t.max_storage_bytes,
               'size_pretty', pg_size_pretty(size_bytes), 'max_storage_pretty', pg_size_pretty(t.max_storage_bytes)));
END
$$;

CREATE FUNCTION tenancy.health(tenant uuid) RETURNS jsonb
LANGUAGE sql RETURN tenancy.health(tenant::text);
