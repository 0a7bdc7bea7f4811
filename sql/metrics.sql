-- Usage metrics of every tenant, in one pass over the catalogs.

-- Schema tenants: sizes of every table of their schema, exact, from one
-- listing of the database's directory (_database_file_sizes; the
-- pg_*_size functions open each relation: a relation cache entry for each
-- of 190,000 relations at 10,000 tenants, 3.5 s and 380 MB), and their
-- statistics from the pg_stat_get_* functions of their tables only;
-- shared tenants: their rows counted in one GROUP BY per shared table, and
-- bytes estimated as the table's bytes times their share of its rows.
CREATE FUNCTION tenancy.refresh_metrics() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
-- It reads every tenant's relations: hash joins, whatever the estimates
-- (freshly made tenants are not analyzed yet, and the planner then looked
-- up pg_class per tenant schema through an index that does not start with
-- the schema, and joined tenants to their tables in a loop: 0.9 s instead
-- of 0.5 s at 1,000 tenants); their hash tables in memory (170,000
-- relations at 10,000 tenants); and no JIT, which the cost of a disabled
-- plan node would set off (0.25 s of compiling).
SET enable_nestloop = off
SET work_mem = '64MB'
SET jit = off
AS $$
DECLARE
    n integer;
    st record;
    on_citus boolean := EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus');
    shard_total bigint;
    counts jsonb;
    tid uuid;
    now_ts timestamptz := clock_timestamp();
BEGIN
    -- a temporary table of that name the caller made (with a trigger) must
    -- not be the one this superuser code writes to
    IF to_regclass('pg_temp.tenancy_metrics_now') IS NOT NULL THEN
        DROP TABLE pg_temp.tenancy_metrics_now;
    END IF;
    CREATE TEMP TABLE tenancy_metrics_now (
        tenant_id uuid, isolation text, table_count integer, row_estimate bigint, total_bytes bigint,
        table_bytes bigint, index_bytes bigint, toast_bytes bigint, dead_tuples bigint,
        last_vacuum timestamptz, last_analyze timestamptz, seq_scans_total bigint, idx_scans_total bigint
    ) ON COMMIT DROP;

    INSERT INTO tenancy_metrics_now
    WITH files AS MATERIALIZED (
        SELECT * FROM tenancy._database_file_sizes()
    ), tbl AS MATERIALIZED (
        SELECT t.id AS tenant_id, c.oid, c.reltuples, c.reltoastrelid
        FROM tenancy.tenants t
        JOIN pg_namespace n ON n.nspname = t.schema_name
        JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
        WHERE t.isolation = 'schema' AND t.status IN ('active', 'suspended')
    ), part AS (
        -- every relation whose files count for a table, and as what
        SELECT r.oid AS tbl, r.oid AS rel, 'heap' AS kind FROM tbl r
        UNION ALL
        SELECT r.oid, i.indexrelid, 'index' FROM tbl r JOIN pg_index i ON i.indrelid = r.oid
        UNION ALL
        SELECT r.oid, r.reltoastrelid, 'toast' FROM tbl r WHERE r.reltoastrelid <> 0
        UNION ALL
        SELECT r.oid, i.indexrelid, 'toast' FROM tbl r JOIN pg_index i ON i.indrelid = r.reltoastrelid
        WHERE r.reltoastrelid <> 0
    ), sized AS (
        SELECT p.tbl, p.kind, p.rel,
               CASE WHEN c.reltablespace = 0 AND c.relfilenode <> 0 AND c.relpersistence <> 't'
                    THEN coalesce(f.all_bytes, 0)
                    ELSE pg_relation_size(c.oid, 'main') + pg_relation_size(c.oid, 'fsm')
                         + pg_relation_size(c.oid, 'vm') + pg_relation_size(c.oid, 'init') END AS all_bytes,
               CASE WHEN c.reltablespace = 0 AND c.relfilenode <> 0 AND c.relpersistence <> 't'
                    THEN coalesce(f.main_bytes, 0)
                    ELSE pg_relation_size(c.oid, 'main') END AS main_bytes
        FROM part p
        JOIN pg_class c ON c.oid = p.rel
        LEFT JOIN files f ON f.filenode = c.relfilenode
    ), per_table AS (
        SELECT s.tbl,
               sum(s.all_bytes) AS total_bytes,
               sum(s.main_bytes) FILTER (WHERE s.kind = 'heap') AS table_bytes,
               coalesce(sum(s.all_bytes) FILTER (WHERE s.kind = 'index'), 0) AS index_bytes,
               coalesce(sum(s.all_bytes) FILTER (WHERE s.kind = 'toast'), 0) AS toast_bytes,
               -- pg_stat_all_tables.idx_scan: NULL for a table without indexes
               sum(pg_stat_get_numscans(s.rel)) FILTER (WHERE s.kind = 'index') AS idx_scan
        FROM sized s
        GROUP BY s.tbl
    )
    SELECT t.id, 'schema', count(r.oid)::int, coalesce(sum(greatest(r.reltuples, 0)), 0)::bigint,
           coalesce(sum(p.total_bytes), 0), coalesce(sum(p.table_bytes), 0),
           coalesce(sum(p.index_bytes), 0), coalesce(sum(p.toast_bytes), 0),
           sum(pg_stat_get_dead_tuples(r.oid)),
           max(greatest(pg_stat_get_last_vacuum_time(r.oid), pg_stat_get_last_autovacuum_time(r.oid))),
           max(greatest(pg_stat_get_last_analyze_time(r.oid), pg_stat_get_last_autoanalyze_time(r.oid))),
           sum(pg_stat_get_numscans(r.oid)), sum(p.idx_scan)
    FROM tenancy.tenants t
    JOIN pg_namespace n ON n.nspname = t.schema_name
    LEFT JOIN tbl r ON r.tenant_id = t.id
    LEFT JOIN per_table p ON p.tbl = r.oid
    WHERE t.isolation = 'schema' AND t.status IN ('active', 'suspended')
    GROUP BY t.id;

    -- a hypertable's rows are in chunks in TimescaleDB's own schema: they
    -- count for the tenant whose schema holds the hypertable
    IF tenancy._timescaledb_views() THEN
        EXECUTE $q$
            UPDATE pg_temp.tenancy_metrics_now m
            SET row_estimate = m.row_estimate + x.row_estimate, total_bytes = m.total_bytes + x.total_bytes,
                table_bytes = m.table_bytes + x.table_bytes, index_bytes = m.index_bytes + x.index_bytes,
                toast_bytes = m.toast_bytes + x.toast_bytes
            FROM (SELECT t.id, sum(greatest(c.reltuples, 0))::bigint AS row_estimate,
                         sum(pg_total_relation_size(c.oid)) AS total_bytes, sum(pg_relation_size(c.oid)) AS table_bytes,
                         sum(pg_indexes_size(c.oid)) AS index_bytes,
                         sum(CASE WHEN c.reltoastrelid <> 0 THEN pg_total_relation_size(c.reltoastrelid) ELSE 0 END) AS toast_bytes
                  FROM tenancy.tenants t
                  JOIN timescaledb_information.chunks ch ON ch.hypertable_schema = t.schema_name
                  JOIN pg_namespace cn ON cn.nspname = ch.chunk_schema
                  JOIN pg_class c ON c.relnamespace = cn.oid AND c.relname = ch.chunk_name
                  WHERE t.isolation = 'schema' AND t.status IN ('active', 'suspended')
                  GROUP BY t.id) x
            WHERE m.tenant_id = x.id AND m.isolation = 'schema'
        $q$;
    END IF;

    -- on Citus a tenant schema's tables are empty shells here and its rows
    -- are in shards on a worker: their size counts (quotas included)
    IF on_citus THEN
        EXECUTE $q$
            UPDATE pg_temp.tenancy_metrics_now m
            SET total_bytes = m.total_bytes + x.bytes
            FROM (SELECT t.id, sum(s.shard_size)::bigint AS bytes
                  FROM tenancy.tenants t
                  JOIN pg_namespace n ON n.nspname = t.schema_name
                  JOIN pg_class c ON c.relnamespace = n.oid
                  JOIN pg_catalog.citus_shards s ON s.table_name = c.oid::regclass
                  WHERE t.isolation = 'schema' AND t.status IN ('active', 'suspended')
                  GROUP BY t.id) x
            WHERE m.tenant_id = x.id AND m.isolation = 'schema'
        $q$;
    END IF;

    -- shared tenants: zero rows first, then each shared table's share
    INSERT INTO tenancy_metrics_now
    SELECT t.id, 'shared', 0, 0, 0, 0, 0, 0, NULL, NULL, NULL, NULL, NULL
    FROM tenancy.tenants t WHERE t.isolation = 'shared' AND t.status IN ('active', 'suspended');
    FOR st IN
        SELECT tbl::regclass AS tbl, sch.schema_name,
               (SELECT greatest(c.reltuples, 1) FROM pg_class c WHERE c.oid = tbl) AS est_rows,
               pg_total_relation_size(tbl) AS total, pg_relation_size(tbl) AS heap,
               pg_indexes_size(tbl) AS idx
        FROM (SELECT DISTINCT tenancy._access_schema(t) AS schema_name
              FROM tenancy.tenants t WHERE t.isolation = 'shared') sch
        CROSS JOIN LATERAL tenancy._shared_tables(sch.schema_name) tbl
    LOOP
        UPDATE tenancy_metrics_now SET table_count = table_count + 1 WHERE isolation = 'shared';
        -- each tenant's rows, counted never with this function's (the
        -- superuser's) rights: planning a query on the table loads its
        -- index expressions and partition key, which a template wrote and
        -- a hostile review had run as a superuser here
        IF on_citus THEN
            -- a distributed shared table is an empty shell here: its bytes
            -- are its shards' on the workers (citus_shards, as for schema
            -- tenants; citus_total_relation_size refuses a transaction that
            -- wrote to shards), shared out by the exact count of the rows
            -- (the shell has no reltuples)
            shard_total := NULL;
            EXECUTE 'SELECT sum(shard_size)::bigint FROM pg_catalog.citus_shards WHERE table_name = $1'
                INTO shard_total USING st.tbl;
            IF shard_total IS NOT NULL THEN
                st.total := shard_total;
                st.est_rows := NULL;
            END IF;
            -- as the owner role in each tenant's context, which reaches the
            -- workers (the BYPASSRLS role cannot log in there)
            counts := '{}';
            FOR tid IN SELECT t.id FROM tenancy.tenants t
                       WHERE t.isolation = 'shared' AND t.status IN ('active', 'suspended')
                         AND tenancy._access_schema(t) = st.schema_name LOOP
                counts := counts || jsonb_build_object(tid::text, tenancy._as_owner(
                    format('SELECT to_jsonb(count(*)) FROM %s WHERE tenant_id = $1', st.tbl), tid));
            END LOOP;
        ELSIF NOT has_table_privilege(tenancy._db_role('all_tenants'), st.tbl, 'SELECT') THEN
            -- not a table the extension made shared (rls.sql grants those)
            counts := '{}';
        ELSE
            counts := tenancy._as_all_tenants(format(
                'SELECT coalesce(jsonb_object_agg(tenant_id, n), ''{}'') '
                'FROM (SELECT tenant_id, count(*) AS n FROM %s GROUP BY tenant_id) x', st.tbl));
        END IF;
        UPDATE tenancy_metrics_now m
        SET row_estimate = m.row_estimate + x.n,
            total_bytes = m.total_bytes + (st.total * x.n / x.rows)::bigint,
            table_bytes = m.table_bytes + (st.heap * x.n / x.rows)::bigint,
            index_bytes = m.index_bytes + (st.idx * x.n / x.rows)::bigint
        FROM (SELECT e.key::uuid AS tenant_id, e.value::bigint AS n,
                     coalesce(st.est_rows, greatest(sum(e.value::bigint) OVER (), 1)) AS rows
              FROM jsonb_each_text(counts) e) x
        WHERE m.tenant_id = x.tenant_id AND m.isolation = 'shared';
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

    -- storage quotas: a tenant found over its max_storage_bytes is marked
    -- (the library refuses its writes, src/quota.rs), one found under again
    -- unmarked; each flip in the audit log, and sessions told at commit
    DECLARE
        flip record;
        flips integer := 0;
    BEGIN
        FOR flip IN
            UPDATE tenancy.tenants t
            SET over_quota_since = CASE WHEN t.over_quota_since IS NULL THEN now_ts END
            FROM tenancy_metrics_now m
            WHERE m.tenant_id = t.id
              AND (t.over_quota_since IS NULL) = (t.max_storage_bytes IS NOT NULL AND m.total_bytes > t.max_storage_bytes)
            RETURNING t.id, t.slug, t.over_quota_since, t.max_storage_bytes, m.total_bytes
        LOOP
            PERFORM tenancy._audit_write(CASE WHEN flip.over_quota_since IS NULL THEN 'quota_restored' ELSE 'quota_exceeded' END,
                                         flip.id, flip.slug,
                                         jsonb_build_object('total_bytes', flip.total_bytes,
                                                            'max_storage_bytes', flip.max_storage_bytes));
            flips := flips + 1;
        END LOOP;
        IF flips > 0 THEN
            PERFORM tenancy._tenants_changed();
        END IF;
    END;
    UPDATE tenancy.jobs SET last_finished_at = clock_timestamp(), last_started_at = now_ts,
                            last_duration_ms = extract(epoch FROM clock_timestamp() - now_ts) * 1000,
                            last_result = jsonb_build_object('tenants', n), last_error = NULL, failures = 0,
                            next_run_at = clock_timestamp() + run_every
    WHERE name = 'metrics';
    RETURN n;
END
$$;

-- The newest metrics row of each tenant.
CREATE VIEW tenancy.latest_metrics AS
SELECT DISTINCT ON (m.tenant_id) t.slug, m.*
FROM tenancy.tenant_metrics m JOIN tenancy.tenants t ON t.id = m.tenant_id
ORDER BY m.tenant_id, m.collected_at DESC;

-- Each tenant's statements in the current and the previous period
-- (tenancy.activity_period), from the preloaded library's shared memory
-- (src/activity.rs): counted under the tenant set by set_tenant, or under
-- the first schema of the search_path, which is matched to its tenant here.
CREATE VIEW tenancy.tenant_activity AS
SELECT t.id AS tenant_id, t.slug, a.period_start, a.period_end,
       sum(a.statements)::bigint AS statements, round(sum(a.total_ms)::numeric, 3) AS total_ms,
       round(max(a.max_ms)::numeric, 3) AS max_ms, sum(a.rows)::bigint AS rows
FROM tenancy.activity_counters() a
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = a.schema_oid
JOIN tenancy.tenants t ON t.id = a.tenant_id OR (a.tenant_id IS NULL AND t.schema_name = n.nspname)
GROUP BY t.id, t.slug, a.period_start, a.period_end;

-- health(tenant)'s activity: the tenant's periods, oldest first.
CREATE FUNCTION tenancy._activity_of(tenant uuid) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'period_start', a.period_start, 'statements', a.statements, 'total_ms', a.total_ms,
                   'max_ms', a.max_ms, 'rows', a.rows) ORDER BY a.period_start), '[]')
        FROM tenancy.tenant_activity a WHERE a.tenant_id = tenant);

-- One row for dashboards: tenants by status, and the pace of provisioning
-- over the last day (from the audit log: each provision's duration).
CREATE VIEW tenancy.stats AS
SELECT t.tenants, t.active, t.suspended, t.archived, t.dropped, t.failed, t.shared,
       p.provisioned_24h, p.from_pool_24h, p.provision_p50_ms, p.provision_p95_ms,
       b.busiest_tenants
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
      WHERE a.action = 'provision' AND a.at > now() - interval '1 day') p,
     -- the noisiest tenants: most statement time over the current and the
     -- previous activity period
     (SELECT coalesce(jsonb_agg(jsonb_build_object('slug', x.slug, 'statements', x.statements,
                                                   'total_ms', x.total_ms) ORDER BY x.total_ms DESC), '[]')
                 AS busiest_tenants
      FROM (SELECT slug, sum(statements) AS statements, sum(total_ms) AS total_ms
            FROM tenancy.tenant_activity GROUP BY slug ORDER BY 3 DESC LIMIT 5) x) b;
