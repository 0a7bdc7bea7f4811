\echo Use "ALTER EXTENSION tenancy UPDATE TO '0.4.0'" to load this file. \quit

-- 0.4.0: PostgreSQL 17 and 18 beside TimescaleDB. refresh_metrics counts a
-- tenant's hypertable chunks in its size; the shipped template timeseries
-- gets a version 2 with text columns (TimescaleDB warns of varchar), with
-- the migrations that move version 1 tenants to it. ALTER EXTENSION UPDATE
-- waits for the worker instead of deadlocking with it (in the library).
-- Batch items are made by the library, several per transaction, each in
-- its own subtransaction with its own result. Tenants move between shared
-- and schema isolation (move_tenant), are cloned (clone_tenant), exported
-- and imported (export_tenant), and their storage quota is enforced.
-- Lifecycle operations and batch transitions write events
-- (tenancy.events, NOTIFY tenancy_events, tenancy.events_since).

-- The queue runner is Rust now (src/queue.rs), taking several items per
-- transaction: _process_next() changes its signature, and the SQL copies of
-- its retry rules go (run_queue_unit, which calls it, is made again below).
DROP FUNCTION tenancy.run_queue_unit();
DROP FUNCTION tenancy._process_next();
DROP FUNCTION tenancy._is_transient(text);
DROP FUNCTION tenancy._retry_backoff_ms(integer, double precision, double precision);

-- One home for each rule: the partitions a new tenant gets are made by the
-- maintenance function; a tenant argument is looked up by the library
-- (tenancy._tenant_id); migrations are queued by the library, which reads
-- their options as provision_batch does.
DROP FUNCTION tenancy._premake_partitions(name, name, text, integer);
DROP FUNCTION tenancy._uuid_or_null(text);
DROP FUNCTION tenancy._queue_migrations(text, text[], integer, integer, boolean);
-- a pooled schema is built with its role, which the claim renames
ALTER TABLE tenancy.pool ADD COLUMN role_name name;

-- storage quotas enforced: refresh_metrics marks a tenant over its
-- max_storage_bytes, and the library refuses its writes while it is marked
ALTER TABLE tenancy.tenants ADD COLUMN over_quota_since timestamptz;
-- a batch kind that moves tenants between isolation modes (move_tenants)
ALTER TABLE tenancy.batches DROP CONSTRAINT batches_kind_check,
    ADD CONSTRAINT batches_kind_check CHECK (kind IN ('provision', 'migrate', 'move'));

-- a tenant's role is made by the library, in one statement string
DROP FUNCTION tenancy._setup_tenant_role(name, name, boolean, boolean);
DROP FUNCTION tenancy._grant_tenant_objects(name, name);

-- events for applications (src/events.rs, sql/events.sql)
CREATE TABLE tenancy.events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- the writing transaction: what orders events for events_since
    xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    kind        text        NOT NULL,
    tenant_id   uuid,
    tenant_slug text,
    batch_id    uuid,
    payload     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX events_order_idx ON tenancy.events (xid, id);
CREATE INDEX events_at_idx ON tenancy.events (at);
COMMENT ON TABLE tenancy.events IS
    'Lifecycle and batch events for applications, announced on the channel tenancy_events; read them with tenancy.events_since';
-- The events are not in a dump (a restored database starts a new stream, and
-- a consumer's old id is then refused); the ids go on from where they were.
SELECT pg_catalog.pg_extension_config_dump('tenancy.events_id_seq', '');

-- Citus: the key each node checks a shared tenant's context with, and the
-- coordinator's copy of its workers' keys (sql/citus.sql)
CREATE TABLE tenancy.node_key (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    key text NOT NULL
);
INSERT INTO tenancy.node_key (key)
VALUES (replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''));
CREATE TABLE tenancy.citus_node_keys (
    groupid integer PRIMARY KEY,
    key text NOT NULL,
    fetched_at timestamptz NOT NULL DEFAULT now()
);

-- Every function and view, as in a fresh install (written by
-- scripts/upgrade-functions from the generated install script).
-- <functions>
CREATE OR REPLACE FUNCTION "_as_all_tenants"(
	"sql" TEXT /* & str */
) RETURNS jsonb /* JsonB */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'as_all_tenants_sql_wrapper';

CREATE OR REPLACE FUNCTION "_as_owner"(
	"sql" TEXT, /* & str */
	"tenant" uuid /* Option < Uuid > */
) RETURNS jsonb /* JsonB */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'as_owner_sql_wrapper';

CREATE OR REPLACE FUNCTION "_audit_write"(
	"action" TEXT, /* & str */
	"tenant_id" uuid, /* Option < Uuid > */
	"tenant_slug" TEXT, /* Option < & str > */
	"details" jsonb, /* Option < JsonB > */
	"duration_ms" double precision DEFAULT NULL, /* Option < f64 > */
	"error" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'audit_write_wrapper';

CREATE OR REPLACE FUNCTION "_build_reference"(
	"template" TEXT, /* & str */
	"version" INT, /* i32 */
	"schema" TEXT /* & str */
) RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'build_reference_wrapper';

CREATE OR REPLACE FUNCTION "_caller"() RETURNS oid /* pg_sys :: Oid */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'caller_wrapper';

CREATE OR REPLACE FUNCTION "_check_migration_options"(
	"options" jsonb /* Option < JsonB > */
) RETURNS void
IMMUTABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'check_migration_options_wrapper';

CREATE OR REPLACE FUNCTION "_citus_sync_keys"() RETURNS bigint /* i64 */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sync_keys_wrapper';

CREATE OR REPLACE FUNCTION "_clone_tenant"(
	"tenant" TEXT, /* & str */
	"new_slug" TEXT, /* Option < & str > */
	"options" jsonb /* Option < pgrx :: JsonB > */
) RETURNS uuid /* Uuid */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clone_tenant_wrapper';

CREATE OR REPLACE FUNCTION "_database_file_sizes"() RETURNS TABLE (
	"filenode" oid,  /* pg_sys :: Oid */
	"all_bytes" bigint,  /* i64 */
	"main_bytes" bigint  /* i64 */
)
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'database_file_sizes_wrapper';

CREATE OR REPLACE FUNCTION "_event_write"(
	"kind" TEXT, /* & str */
	"tenant_id" uuid, /* Option < Uuid > */
	"tenant_slug" TEXT, /* Option < & str > */
	"batch_id" uuid, /* Option < Uuid > */
	"payload" jsonb /* Option < JsonB > */
) RETURNS void

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'event_write_wrapper';

CREATE OR REPLACE FUNCTION tenancy.events_since(last_id bigint DEFAULT 0, max_events integer DEFAULT 1000)
RETURNS SETOF tenancy.events
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    after_xid xid8;
    snap pg_snapshot := pg_current_snapshot();
    settled xid8;
BEGIN
    IF last_id IS NULL OR last_id < 0 OR max_events IS NULL OR max_events < 1 THEN
        RAISE EXCEPTION 'events_since needs a last_id of 0 or more and a max_events of 1 or more'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF last_id > 0 THEN
        SELECT e.xid INTO after_xid FROM tenancy.events e WHERE e.id = last_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'event % is not kept', last_id
                USING ERRCODE = 'invalid_parameter_value',
                      DETAIL = 'Events are removed after tenancy.event_retention, and are not in a dump.',
                      HINT = 'Read the state you need from tenancy.tenants and tenancy.batch_status, then go on with events_since(0).';
        END IF;
    END IF;
    SELECT coalesce(min(x.xid), pg_snapshot_xmax(snap)) INTO settled
    FROM pg_snapshot_xip(snap) AS x(xid)
    WHERE NOT EXISTS (
        SELECT 1 FROM pg_stat_activity a
        LEFT JOIN pg_roles r ON r.oid = a.usesysid
        -- backend_xid is the 32-bit xid: the low bits of the xid8
        WHERE a.backend_xid::text::bigint = (x.xid::text::numeric % 4294967296)::bigint
          AND (a.datid IS DISTINCT FROM (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
               OR NOT (coalesce(r.rolsuper, false)
                       OR pg_has_role(a.usesysid, tenancy._db_role('admin'), 'MEMBER')
                       OR a.usesysid = (SELECT x.extowner FROM pg_extension x WHERE x.extname = 'tenancy'))));
    RETURN QUERY
    SELECT e.* FROM tenancy.events e
    WHERE e.xid < settled AND (after_xid IS NULL OR (e.xid, e.id) > (after_xid, last_id))
    ORDER BY e.xid, e.id
    LIMIT max_events;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._prune_events() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    keep interval := coalesce(nullif(current_setting('tenancy.event_retention', true), ''), '7 days')::interval;
    n bigint;
    total bigint := 0;
BEGIN
    FOR i IN 1 .. 50 LOOP
        DELETE FROM tenancy.events WHERE id IN (
            SELECT e.id FROM tenancy.events e WHERE e.at < clock_timestamp() - keep ORDER BY e.at LIMIT 10000);
        GET DIAGNOSTICS n = ROW_COUNT;
        total := total + n;
        EXIT WHEN n < 10000;
    END LOOP;
    RETURN total;
END
$$;

CREATE OR REPLACE FUNCTION "_import_finish"() RETURNS uuid /* Uuid */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'import_finish_wrapper';

CREATE OR REPLACE FUNCTION "_job_backoff_ms"(
	"failures" INT, /* i32 */
	"every_ms" double precision /* f64 */
) RETURNS double precision /* f64 */
IMMUTABLE STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'job_backoff_ms_wrapper';

CREATE OR REPLACE FUNCTION "_load_shipped_templates"() RETURNS INT /* i32 */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'load_shipped_templates_wrapper';

CREATE OR REPLACE FUNCTION "_migrate_tenant"(
	"tenant_id" uuid, /* Uuid */
	"to_version" INT /* i32 */
) RETURNS INT /* i32 */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'migrate_tenant_wrapper';

CREATE OR REPLACE FUNCTION "_move_tenant"(
	"tenant" TEXT, /* & str */
	"isolation" TEXT /* & str */
) RETURNS uuid /* Uuid */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'move_tenant_wrapper';

CREATE OR REPLACE FUNCTION "_partitioned_tables"(
	"template" TEXT, /* & str */
	"spec" jsonb /* JsonB */
) RETURNS TABLE (
	"table_name" TEXT,  /* String */
	"unit" TEXT,  /* String */
	"premake" INT,  /* i32 */
	"retention" TEXT  /* Option < String > */
)
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'partitioned_tables_wrapper';

CREATE OR REPLACE FUNCTION "_pool_build"(
	"template" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'pool_build_wrapper';

CREATE OR REPLACE FUNCTION "_process_next"(
	"max_items" INT /* Option < i32 > */
) RETURNS INT /* i32 */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'process_next_wrapper';

CREATE OR REPLACE FUNCTION "_provision"(
	"slug" TEXT, /* Option < & str > */
	"name" TEXT, /* Option < & str > */
	"template" TEXT, /* Option < & str > */
	"options" jsonb /* Option < JsonB > */
) RETURNS uuid /* Uuid */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'provision_internal_wrapper';

CREATE OR REPLACE FUNCTION tenancy._make_batch_slots() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO tenancy.batch_slots (batch_id, slot)
    SELECT NEW.id, g FROM generate_series(0, NEW.max_concurrent - 1) g;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._claim_items(max_items integer)
RETURNS TABLE (batch_id uuid, retry_attempts integer, retry_delay_ms double precision,
               continue_on_error boolean, ordinal integer, migrate_tenant uuid,
               migrate_to integer, spec jsonb, attempts integer)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b record;
    -- a value, not clock_timestamp() in the queries: a volatile call cannot
    -- bound an index scan of batch_items_ready_idx
    now_ts timestamptz := clock_timestamp();
BEGIN
    FOR b IN
        SELECT bt.id, bt.kind, bt.status, bt.retry_attempts, bt.retry_delay, bt.continue_on_error
        FROM tenancy.batches bt
        WHERE bt.status IN ('queued', 'in_progress')
          AND EXISTS (SELECT 1 FROM tenancy.batch_items i
                      WHERE i.batch_id = bt.id AND i.status = 'queued'
                        AND i.next_attempt_at <= now_ts)
        ORDER BY bt.created_at
    LOOP
        -- The batch starts before any of its items is claimed, so that
        -- batch_started comes before the items' events in events_since's
        -- order (by transaction id). A concurrent claimer whose UPDATE lost
        -- the race took its transaction id as the UPDATE began, maybe before
        -- the winner: it claims nothing now, and its next transaction (a
        -- later id) does.
        IF b.status = 'queued' THEN
            UPDATE tenancy.batches SET status = 'in_progress', started_at = clock_timestamp()
            WHERE id = b.id AND status = 'queued';
            IF FOUND THEN
                PERFORM tenancy._event_write('batch_started', NULL, NULL, b.id, jsonb_build_object('kind', b.kind));
            ELSIF pg_current_xact_id_if_assigned() IS NOT NULL THEN
                RETURN;
            END IF;
        END IF;
        -- at most max_concurrent sessions work on one batch at a time: each
        -- holds one of its slot rows until its transaction ends
        PERFORM 1 FROM tenancy.batch_slots s WHERE s.batch_id = b.id
        ORDER BY s.slot LIMIT 1 FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;

        RETURN QUERY
        SELECT b.id, b.retry_attempts, extract(epoch FROM b.retry_delay)::double precision * 1000,
               b.continue_on_error, i.ordinal,
               CASE WHEN b.kind = 'migrate' THEN (i.spec->>'tenant_id')::uuid END,
               CASE WHEN b.kind = 'migrate' THEN (i.spec->>'to_version')::integer END,
               i.spec, i.attempts
        FROM tenancy.batch_items i
        WHERE i.batch_id = b.id AND i.status = 'queued' AND i.next_attempt_at <= now_ts
        ORDER BY i.next_attempt_at, i.ordinal
        -- a tenant provisioned in a transaction of its own (several to one
        -- are no faster: the cost is catalog work, not the commit); tenants
        -- migrated several to one, as a commit costs a small migration
        LIMIT CASE WHEN b.kind = 'migrate' THEN max_items ELSE 1 END
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;

        RETURN;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._record_results(batch uuid, results jsonb, stop_batch boolean) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE tenancy.batch_items i
    SET status = r.status,
        attempts = i.attempts + CASE WHEN r.status = 'cancelled' THEN 0 ELSE 1 END,
        tenant_id = coalesce(r.tenant_id, i.tenant_id),
        schema_name = CASE WHEN r.status = 'succeeded'
                           THEN (SELECT t.schema_name FROM tenancy.tenants t WHERE t.id = r.tenant_id)
                           ELSE i.schema_name END,
        last_error = r.error, last_sqlstate = r.sqlstate,
        started_at = coalesce(i.started_at, clock_timestamp() - r.started_ago_ms * interval '1 millisecond'),
        finished_at = CASE WHEN r.status <> 'queued' THEN clock_timestamp() ELSE i.finished_at END,
        duration_ms = coalesce(r.duration_ms, i.duration_ms),
        next_attempt_at = CASE WHEN r.status = 'queued'
                               THEN clock_timestamp() + r.retry_in_ms * interval '1 millisecond'
                               ELSE i.next_attempt_at END
    FROM jsonb_to_recordset(results) AS r(ordinal integer, status text, tenant_id uuid, error text,
                                          sqlstate text, started_ago_ms double precision,
                                          duration_ms double precision, retry_in_ms double precision)
    WHERE i.batch_id = batch AND i.ordinal = r.ordinal
      -- the ordinals bound: an index scan of the claimed items, not a hash
      -- join over every item of the batch (jsonb_to_recordset's estimate)
      AND i.ordinal = ANY (ARRAY(SELECT (e->>'ordinal')::integer FROM jsonb_array_elements(results) e));
    IF stop_batch THEN
        PERFORM tenancy._stop_batch(batch, 'failed');
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._batch_finished_event(batch uuid) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
SELECT tenancy._event_write('batch_finished', NULL, NULL, b.id,
    jsonb_build_object('kind', b.kind, 'status', b.status,
                       'items', (SELECT count(*) FROM tenancy.batch_items i WHERE i.batch_id = b.id),
                       'succeeded', (SELECT count(*) FROM tenancy.batch_items i
                                     WHERE i.batch_id = b.id AND i.status = 'succeeded'),
                       'failed', (SELECT count(*) FROM tenancy.batch_items i
                                  WHERE i.batch_id = b.id AND i.status = 'failed'),
                       'duration_ms', round((extract(epoch FROM b.finished_at - coalesce(b.started_at, b.created_at)) * 1000)::numeric, 1)))
FROM tenancy.batches b WHERE b.id = batch
$$;

CREATE OR REPLACE FUNCTION tenancy._stop_batch(batch uuid, final tenancy.batch_state) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
    stopped boolean;
BEGIN
    UPDATE tenancy.batches SET status = final, finished_at = clock_timestamp(),
                               started_at = coalesce(started_at, clock_timestamp())
    WHERE id = batch AND status IN ('queued', 'in_progress');
    stopped := FOUND;
    UPDATE tenancy.batch_items SET status = 'cancelled', finished_at = clock_timestamp()
    WHERE (batch_id, ordinal) IN (
        SELECT i.batch_id, i.ordinal FROM tenancy.batch_items i
        WHERE i.batch_id = batch AND i.status = 'queued'
        FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    IF stopped THEN
        PERFORM tenancy._batch_finished_event(batch);
    END IF;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._finalize_batches() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b record;
    it record;
    touched integer := 0;
    ok integer;
    bad integer;
BEGIN
    FOR b IN
        SELECT bt.id FROM tenancy.batches bt
        WHERE bt.status IN ('queued', 'in_progress')
          AND NOT EXISTS (SELECT 1 FROM tenancy.batch_items i
                          WHERE i.batch_id = bt.id AND i.status = 'queued')
        FOR UPDATE SKIP LOCKED
    LOOP
        SELECT count(*) FILTER (WHERE status = 'succeeded'),
               count(*) FILTER (WHERE status <> 'succeeded')
        INTO ok, bad FROM tenancy.batch_items WHERE batch_id = b.id;
        UPDATE tenancy.batches
        SET status = CASE WHEN bad = 0 THEN 'completed'
                          WHEN ok = 0 THEN 'failed'
                          ELSE 'partially_completed' END::tenancy.batch_state,
            started_at = coalesce(started_at, clock_timestamp()),
            finished_at = clock_timestamp()
        WHERE id = b.id;
        PERFORM tenancy._batch_finished_event(b.id);
        touched := touched + 1;
    END LOOP;

    -- rollback_on_failure: once no item is queued, drop what the batch made
    FOR it IN
        SELECT i.batch_id, i.ordinal, i.tenant_id, i.slug, t.schema_name, t.role_name
        FROM tenancy.batches bt
        JOIN tenancy.batch_items i ON i.batch_id = bt.id AND i.status = 'succeeded'
        LEFT JOIN tenancy.tenants t ON t.id = i.tenant_id
        WHERE bt.rollback_on_failure AND bt.rolled_back_at IS NULL
          AND bt.status IN ('failed', 'partially_completed')
          AND NOT EXISTS (SELECT 1 FROM tenancy.batch_items q
                          WHERE q.batch_id = bt.id AND q.status = 'queued')
        ORDER BY i.batch_id, i.ordinal
        LIMIT 20
        FOR UPDATE OF i SKIP LOCKED
    LOOP
        IF it.schema_name IS NOT NULL THEN
            EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', it.schema_name);
        END IF;
        PERFORM tenancy._drop_tenant_role(it.role_name);
        PERFORM tenancy._tenants_changed();
        DELETE FROM tenancy.tenants WHERE id = it.tenant_id;
        UPDATE tenancy.batch_items SET status = 'rolled_back'
        WHERE batch_id = it.batch_id AND ordinal = it.ordinal;
        PERFORM tenancy._audit_write('rollback_batch_tenant', it.tenant_id, it.slug,
                                     jsonb_build_object('batch', it.batch_id, 'schema', it.schema_name));
        touched := touched + 1;
    END LOOP;

    UPDATE tenancy.batches bt
    SET status = 'failed', rolled_back_at = clock_timestamp()
    WHERE bt.rollback_on_failure AND bt.rolled_back_at IS NULL
      AND bt.status IN ('failed', 'partially_completed')
      AND NOT EXISTS (SELECT 1 FROM tenancy.batch_items i
                      WHERE i.batch_id = bt.id AND i.status IN ('queued', 'succeeded'));
    RETURN touched;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._queue_demand(OUT ready integer, OUT waiting integer)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- counted no further than the answer needs: a pass over a batch of
    -- thousands must not read every queued item (the scheduler passes often)
    SELECT coalesce(sum(r.ready), 0)::integer, coalesce(sum(w.waiting), 0)::integer
    FROM tenancy.batches b
    CROSS JOIN LATERAL (
        SELECT count(*) AS ready
        FROM (SELECT 1 FROM tenancy.batch_items i
              WHERE i.batch_id = b.id AND i.status = 'queued' AND i.next_attempt_at <= clock_timestamp()
              LIMIT b.max_concurrent) x) r
    CROSS JOIN LATERAL (
        SELECT count(*) AS waiting
        FROM (SELECT 1 FROM tenancy.batch_items i
              WHERE i.batch_id = b.id AND i.status = 'queued' LIMIT 1) y) w
    WHERE b.status IN ('queued', 'in_progress')
$$;

CREATE OR REPLACE FUNCTION tenancy.process_queue(max_items integer DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done integer := 0;
    n integer;
    -- one transaction holds the locks of every tenant it makes: keep it bounded
    cap integer := least(coalesce(max_items, 100), 1000);
BEGIN
    IF max_items IS NOT NULL AND max_items < 1 THEN
        RAISE EXCEPTION 'max_items must be at least 1, not %', max_items
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        n := tenancy._process_next(cap - done);
        EXIT WHEN n = 0;
        done := done + n;
        EXIT WHEN done >= cap;
    END LOOP;
    PERFORM tenancy._finalize_batches();
    -- one chunk of a dropped tenant's schema, as the worker would
    PERFORM tenancy._trash_work();
    RETURN done;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.batch_status(batch uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b tenancy.batches;
    c record;
    results jsonb;
    eta timestamptz;
BEGIN
    SELECT * INTO b FROM tenancy.batches WHERE id = batch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch % does not exist', batch USING ERRCODE = 'undefined_object';
    END IF;
    SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'failed') AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE status = 'rolled_back') AS rolled_back,
           count(*) FILTER (WHERE status = 'queued') AS pending,
           count(*) FILTER (WHERE status <> 'queued') AS done
    INTO c FROM tenancy.batch_items WHERE batch_id = batch;
    -- the batch's own pace so far, projected over what is left
    IF c.pending > 0 AND c.done > 0 AND b.started_at IS NOT NULL THEN
        eta := clock_timestamp() + (clock_timestamp() - b.started_at) / c.done * c.pending;
    END IF;
    SELECT jsonb_agg(jsonb_build_object(
               'ordinal', i.ordinal, 'slug', i.slug, 'status', i.status,
               'success', i.status = 'succeeded', 'tenant_id', i.tenant_id,
               'schema_name', i.schema_name, 'attempts', i.attempts,
               'error', i.last_error, 'sqlstate', i.last_sqlstate,
               'duration_ms', round(i.duration_ms::numeric, 2))
             ORDER BY i.ordinal)
    INTO results FROM tenancy.batch_items i WHERE i.batch_id = batch;
    RETURN jsonb_build_object(
        'batch_id', b.id, 'status', b.status, 'total', b.total,
        'succeeded', c.succeeded, 'failed', c.failed, 'cancelled', c.cancelled,
        'rolled_back', c.rolled_back, 'pending', c.pending,
        'created_at', b.created_at, 'started_at', b.started_at, 'finished_at', b.finished_at,
        'estimated_completion_at', eta,
        'processing_time_seconds',
            CASE WHEN b.finished_at IS NOT NULL
                 THEN round(extract(epoch FROM b.finished_at - coalesce(b.started_at, b.created_at))::numeric, 3) END,
        'options', b.options,
        'results', coalesce(results, '[]'::jsonb));
END
$$;

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
    -- a snapshot taken once would never see the worker's commits
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'wait_batch needs READ COMMITTED: under % it would never see the batch end',
                        current_setting('transaction_isolation')
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'SET default_transaction_isolation = ''read committed'', or poll tenancy.batch_status() from new transactions.';
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

CREATE OR REPLACE FUNCTION tenancy.cancel_batch(batch uuid) RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    st tenancy.batch_state;
    n integer;
BEGIN
    SELECT status INTO st FROM tenancy.batches WHERE id = batch;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'batch % does not exist', batch USING ERRCODE = 'undefined_object';
    END IF;
    IF st NOT IN ('queued', 'in_progress') THEN
        RAISE EXCEPTION 'the batch is already %', st
            USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = format('batch %s', batch);
    END IF;
    n := tenancy._stop_batch(batch, 'cancelled');
    PERFORM tenancy._audit_write('cancel_batch', NULL, NULL,
                                 jsonb_build_object('batch', batch, 'cancelled_items', n));
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.cleanup_batches(older_than interval DEFAULT '7 days') RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM tenancy.batches
    WHERE status NOT IN ('queued', 'in_progress')
      AND finished_at < clock_timestamp() - older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

CREATE OR REPLACE VIEW tenancy.active_batches AS
SELECT b.id, b.status, b.total,
       count(*) FILTER (WHERE i.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE i.status = 'failed') AS failed,
       count(*) FILTER (WHERE i.status = 'queued') AS pending,
       b.max_concurrent, b.created_at, b.started_at, b.created_by
FROM tenancy.batches b
JOIN tenancy.batch_items i ON i.batch_id = b.id
WHERE b.status IN ('queued', 'in_progress')
GROUP BY b.id;

CREATE OR REPLACE FUNCTION "_queue_migrations"(
	"template" TEXT, /* & str */
	"slugs" TEXT[], /* Vec < Option < String > > */
	"to_version" INT, /* Option < i32 > */
	"options" jsonb, /* Option < JsonB > */
	"refuse_newer" bool /* bool */
) RETURNS uuid /* Uuid */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'queue_migrations_wrapper';

CREATE OR REPLACE FUNCTION "_role_comment"(
	"what" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'role_comment_sql_wrapper';

CREATE OR REPLACE FUNCTION "_shared_schema_name"(
	"template" TEXT, /* & str */
	"spec" jsonb /* JsonB */
) RETURNS TEXT /* String */
IMMUTABLE STRICT PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'shared_schema_name_wrapper';

CREATE OR REPLACE FUNCTION "_tenant_id"(
	"tenant" TEXT /* & str */
) RETURNS uuid /* Option < Uuid > */
STRICT STABLE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_id_sql_wrapper';

CREATE OR REPLACE FUNCTION "_tenant_score"(
	"findings" jsonb /* JsonB */
) RETURNS jsonb /* JsonB */
IMMUTABLE STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_score_sql_wrapper';

CREATE OR REPLACE FUNCTION "_tenants_changed"() RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenants_changed_wrapper';

CREATE OR REPLACE FUNCTION "_wake_worker"() RETURNS void
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'wake_worker_wrapper';

CREATE OR REPLACE FUNCTION tenancy.set_pool_size(template text, size integer) RETURNS integer
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

CREATE OR REPLACE VIEW tenancy.pool_status AS
SELECT s.template, s.size,
       (SELECT count(*) FROM tenancy.pool p
        WHERE p.template = s.template
          AND p.template_version = (SELECT max(version) FROM tenancy.templates t WHERE t.name = s.template))::integer AS ready,
       (SELECT count(*) FROM tenancy.pool p WHERE p.template = s.template)::integer AS built
FROM tenancy.pool_settings s;

CREATE OR REPLACE FUNCTION tenancy._pool_deficit() RETURNS integer
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(sum(greatest(size - ready, 0) + (built - least(ready, size))), 0)::integer
    FROM tenancy.pool_status
$$;

CREATE OR REPLACE FUNCTION tenancy._pool_work() RETURNS boolean
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

CREATE OR REPLACE FUNCTION tenancy._tenant_for_update(tenant text) RETURNS tenancy.tenants
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

CREATE OR REPLACE FUNCTION tenancy._is_own_role(role_name name) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce((SELECT NOT r.rolsuper
                            AND shobj_description(r.oid, 'pg_authid') LIKE
                                format('tenancy role of database %s:%%', d.oid)
                     FROM pg_roles r, pg_database d
                     WHERE r.rolname = role_name AND d.datname = current_database()), false)
$$;

CREATE OR REPLACE FUNCTION tenancy._db_role_untouched(role_name name, kind text) RETURNS boolean
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

CREATE OR REPLACE FUNCTION tenancy._db_role(kind text) RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN format('tenancy_%s_%s', kind, (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))::name;

CREATE OR REPLACE FUNCTION tenancy._audit(action text, t tenancy.tenants, details jsonb) RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$ SELECT tenancy._audit_write(action, t.id, t.slug, details) $$;

CREATE OR REPLACE FUNCTION tenancy._set_access(t tenancy.tenants, allowed boolean) RETURNS void
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

CREATE OR REPLACE FUNCTION tenancy.suspend(tenant text) RETURNS tenancy.tenants
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

CREATE OR REPLACE FUNCTION tenancy.resume(tenant text) RETURNS tenancy.tenants
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

CREATE OR REPLACE FUNCTION tenancy._shared_tables(schema_name name) RETURNS SETOF regclass
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

CREATE OR REPLACE FUNCTION tenancy._access_schema(t tenancy.tenants) RETURNS name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE WHEN t.isolation = 'shared'
                THEN tenancy._shared_schema_name(t.template, tp.spec)::name
                ELSE t.schema_name END
    FROM tenancy.templates tp WHERE tp.name = t.template AND tp.version = t.template_version
$$;

CREATE OR REPLACE FUNCTION tenancy._drop_tenant_role(role_name name) RETURNS void
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

CREATE OR REPLACE FUNCTION tenancy._archive_name(t tenancy.tenants) RETURNS name
LANGUAGE sql IMMUTABLE
RETURN ('tenancy_arch_' || t.slug)::name;

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

CREATE OR REPLACE FUNCTION tenancy._trash_work(chunk integer DEFAULT 100) RETURNS boolean
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

CREATE OR REPLACE FUNCTION tenancy.bulk_update(tenants text[], changes jsonb, options jsonb DEFAULT '{}') RETURNS integer
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

CREATE OR REPLACE FUNCTION tenancy._merge(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(jsonb_object_agg(k, v), '{}'::jsonb)
    FROM jsonb_each(coalesce(base, '{}') || patch) AS e(k, v)
    WHERE v <> 'null'::jsonb
$$;

CREATE OR REPLACE FUNCTION tenancy.migrate(template text, to_version integer, options jsonb DEFAULT '{}') RETURNS uuid
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

CREATE OR REPLACE FUNCTION tenancy.suspend(tenant uuid) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.suspend(tenant::text);

CREATE OR REPLACE FUNCTION tenancy.resume(tenant uuid) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.resume(tenant::text);

CREATE OR REPLACE FUNCTION tenancy.drop_tenant(tenant uuid, keep_data boolean DEFAULT false) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.drop_tenant(tenant::text, keep_data);

CREATE OR REPLACE FUNCTION tenancy._schema_objects(schema_name name) RETURNS TABLE(kind text, object text)
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

CREATE OR REPLACE FUNCTION tenancy._timescaledb_views() RETURNS boolean
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

CREATE OR REPLACE FUNCTION tenancy._citus_placement(schema_name text, tbl regclass DEFAULT NULL, tenant uuid DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION tenancy._citus_stat_tenant(attribute text, colocation integer) RETURNS jsonb
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

CREATE OR REPLACE FUNCTION tenancy.health(tenant uuid) RETURNS jsonb
LANGUAGE sql RETURN tenancy.health(tenant::text);

CREATE OR REPLACE FUNCTION "_worker_state"() RETURNS jsonb /* JsonB */
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_state_wrapper';

CREATE OR REPLACE FUNCTION "activity_counters"() RETURNS TABLE (
	"tenant_id" uuid,  /* Option < Uuid > */
	"schema_oid" oid,  /* Option < pg_sys :: Oid > */
	"period_start" timestamp with time zone,  /* TimestampWithTimeZone */
	"period_end" timestamp with time zone,  /* TimestampWithTimeZone */
	"statements" bigint,  /* i64 */
	"total_ms" double precision,  /* f64 */
	"max_ms" double precision,  /* f64 */
	"rows" bigint  /* i64 */
)
STRICT 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'activity_wrapper';

CREATE OR REPLACE FUNCTION "admin_role"() RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'admin_role_name_wrapper';

CREATE OR REPLACE FUNCTION "current_tenant_id"() RETURNS uuid /* Option < Uuid > */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'current_tenant_id_wrapper';

CREATE OR REPLACE FUNCTION "export_tenant"(
	"tenant" TEXT /* & str */
) RETURNS SETOF TEXT /* String */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'export_tenant_wrapper';

CREATE OR REPLACE FUNCTION "health"() RETURNS jsonb /* JsonB */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'health_wrapper';

CREATE OR REPLACE FUNCTION "import_begin"(
	"header" jsonb /* JsonB */
) RETURNS TEXT /* String */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'import_begin_wrapper';

CREATE OR REPLACE FUNCTION "move_tenant_node"(
	"tenant" TEXT, /* & str */
	"node" TEXT /* & str */
) RETURNS TEXT /* String */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'move_tenant_node_wrapper';

CREATE OR REPLACE FUNCTION "move_tenants"(
	"tenants" TEXT[], /* Vec < Option < String > > */
	"isolation" TEXT, /* & str */
	"options" jsonb DEFAULT '{}' /* Option < pgrx :: JsonB > */
) RETURNS uuid /* Uuid */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'move_tenants_wrapper';

CREATE OR REPLACE FUNCTION "provision_batch"(
	"tenants" jsonb, /* JsonB */
	"options" jsonb DEFAULT '{}' /* Option < JsonB > */
) RETURNS uuid /* Uuid */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'provision_batch_wrapper';

CREATE OR REPLACE FUNCTION "register_template"(
	"name" TEXT, /* & str */
	"spec" jsonb /* JsonB */
) RETURNS INT /* i32 */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'register_template_wrapper';

CREATE OR REPLACE FUNCTION "set_tenant"(
	"tenant" TEXT, /* Option < & str > */
	"is_local" bool DEFAULT true /* bool */
) RETURNS uuid /* Option < Uuid > */

LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_tenant_wrapper';

CREATE OR REPLACE FUNCTION tenancy.set_tenant(tenant uuid, is_local boolean DEFAULT true) RETURNS uuid
LANGUAGE sql
RETURN tenancy.set_tenant(tenant::text, is_local);

CREATE OR REPLACE FUNCTION tenancy._enable_rls(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
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

CREATE OR REPLACE FUNCTION tenancy.enable_rls(tbl regclass, tenant_column name DEFAULT 'tenant_id') RETURNS void
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

CREATE OR REPLACE FUNCTION tenancy.rls_audit() RETURNS TABLE(tbl regclass, problem text)
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

CREATE OR REPLACE FUNCTION tenancy._copy_partition_indexes(dflt regclass, part regclass) RETURNS void
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

CREATE OR REPLACE FUNCTION tenancy._maintain_tenant_partitions(after text, max_tenants integer) RETURNS jsonb
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
        -- each template version's partitioned tables as the template parser
        -- reads them (unit and premake default: tenancy_core::template)
        WITH pt AS MATERIALIZED (
            SELECT tp.name AS template, tp.version, p.*
            FROM tenancy.templates tp
            CROSS JOIN LATERAL tenancy._partitioned_tables(tp.name, tp.spec) p
            WHERE jsonb_array_length(coalesce(tp.spec->'partitioned_tables', '[]')) > 0)
        SELECT tn.slug, tn.schema_name, pt.table_name AS tbl, pt.unit, pt.premake,
               pt.retention::interval AS retention
        FROM (SELECT * FROM tenancy.tenants x
              WHERE x.status IN ('active', 'suspended') AND x.isolation = 'schema' AND x.slug > after
                AND EXISTS (SELECT 1 FROM pt WHERE pt.template = x.template AND pt.version = x.template_version)
              ORDER BY x.slug LIMIT max_tenants) tn
        JOIN pt ON pt.template = tn.template AND pt.version = tn.template_version
        ORDER BY tn.slug
    LOOP
        tenants := tenants + (last IS DISTINCT FROM t.slug)::int;
        last := t.slug;
        CONTINUE WHEN to_regclass(format('%I.%I', t.schema_name, t.tbl)) IS NULL;
        -- as the owner role: moving rows out of the default partition
        -- fires the template's triggers, defaults and index expressions
        r := tenancy._as_owner(format('SELECT tenancy._maintain_partitions(%L::regclass, %L, %s, %L)',
                                      format('%I.%I', t.schema_name, t.tbl), t.unit,
                                      t.premake, t.retention), NULL);
        created := created + (r->>'created')::int;
        dropped := dropped + (r->>'dropped')::int;
        skipped := skipped || (r->'skipped');
    END LOOP;
    RETURN jsonb_build_object('created', created, 'dropped', dropped, 'skipped', skipped,
                              'tenants', tenants, 'last', last);
END
$$;

CREATE OR REPLACE FUNCTION tenancy._orphan_roles() RETURNS SETOF name
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    -- The database is matched by the comment's prefix, which hashes, and the
    -- comment's form is checked only on the roles left: a regular expression
    -- on every role's comment cost health() 275 ms at 20,000 roles.
    SELECT o.rolname
    FROM (SELECT r.rolname, d.description
          FROM pg_shdescription d
          JOIN pg_roles r ON r.oid = d.objoid
          WHERE d.classoid = 'pg_authid'::regclass AND NOT r.rolsuper
            AND starts_with(d.description, 'tenancy role of database ')
            AND NOT EXISTS (SELECT 1 FROM pg_database x
                            WHERE 'tenancy role of database ' || x.oid::text || ':'
                                  = left(d.description, strpos(d.description, ':')))
          OFFSET 0) o
    WHERE o.description ~ '^tenancy role of database [1-9][0-9]*:'
    ORDER BY 1
$$;

CREATE OR REPLACE FUNCTION tenancy._drop_orphan_roles() RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    role name;
    n integer := 0;
BEGIN
    FOR role IN SELECT tenancy._orphan_roles() LIMIT 1000 LOOP
        BEGIN
            EXECUTE format('DROP ROLE %I', role);
            n := n + 1;
        EXCEPTION
            WHEN dependent_objects_still_exist OR insufficient_privilege THEN
                NULL;  -- granted something elsewhere: left, and listed by health()
            WHEN undefined_object OR internal_error THEN
                -- dropped meanwhile by another database's maintenance (roles
                -- are cluster-wide): DROP ROLE then fails with "tuple
                -- concurrently deleted", an internal error
                NULL;
        END;
    END LOOP;
    RETURN n;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._maintenance_finish(sums jsonb, started_at timestamptz) RETURNS jsonb
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
        'roles_removed', tenancy._drop_orphan_roles(),
        'events_removed', tenancy._prune_events(),
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

CREATE OR REPLACE FUNCTION tenancy._maintenance_step() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    j tenancy.jobs;
    p jsonb;
    r jsonb;
    chunk integer := coalesce(nullif(current_setting('tenancy.maintenance_chunk', true), '')::int, 100);
BEGIN
    -- one maintenance at a time: the job's row, which no session without
    -- privileges can lock (an advisory lock anyone could take and keep)
    PERFORM 1 FROM tenancy.jobs WHERE name = 'maintenance' FOR NO KEY UPDATE;
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
    -- one maintenance at a time per database (the worker's, pg_cron's, a
    -- DBA's): the job's row, which no session without privileges can lock
    -- (an advisory lock anyone could take and keep)
    PERFORM 1 FROM tenancy.jobs WHERE name = 'maintenance' FOR NO KEY UPDATE;
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
                next_run_at = clock_timestamp() + interval '1 millisecond' *
                              tenancy._job_backoff_ms(failures + 1, extract(epoch FROM run_every) * 1000)
            WHERE name = j.name;
            PERFORM tenancy._audit_write('job', NULL, NULL,
                                         jsonb_build_object('job', j.name, 'failures', j.failures + 1),
                                         error => err);
        END;
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

CREATE OR REPLACE PROCEDURE tenancy.run_worker_pass(max_items integer DEFAULT 1000, INOUT units integer DEFAULT 0)
LANGUAGE plpgsql
AS $$
DECLARE
    did boolean;
BEGIN
    IF max_items IS NULL OR max_items OPERATOR(pg_catalog.<) 1 THEN
        RAISE EXCEPTION 'max_items must be at least 1, not %', max_items
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    units := 0;
    WHILE units OPERATOR(pg_catalog.<) max_items LOOP
        did := tenancy.run_queue_unit();
        COMMIT;
        EXIT WHEN NOT did;
        units := units OPERATOR(pg_catalog.+) 1;
    END LOOP;
    LOOP
        PERFORM tenancy.run_due_jobs();
        COMMIT;
        EXIT WHEN NOT tenancy.run_due_jobs_pending();
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION tenancy.run_queue_unit() RETURNS boolean
LANGUAGE sql
RETURN tenancy._process_next(1) > 0 OR tenancy._pool_work() OR tenancy._trash_work();

CREATE OR REPLACE FUNCTION tenancy.run_due_jobs_pending() RETURNS boolean
LANGUAGE sql STABLE
RETURN EXISTS (SELECT 1 FROM tenancy.jobs j WHERE j.progress IS NOT NULL AND j.next_run_at <= clock_timestamp());

CREATE OR REPLACE FUNCTION tenancy.run_due_jobs() RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM tenancy._finalize_batches();
    RETURN tenancy._run_due_jobs();
END
$$;

CREATE OR REPLACE FUNCTION tenancy.refresh_metrics() RETURNS integer
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

CREATE OR REPLACE VIEW tenancy.latest_metrics AS
SELECT DISTINCT ON (m.tenant_id) t.slug, m.*
FROM tenancy.tenant_metrics m JOIN tenancy.tenants t ON t.id = m.tenant_id
ORDER BY m.tenant_id, m.collected_at DESC;

CREATE OR REPLACE VIEW tenancy.tenant_activity AS
SELECT t.id AS tenant_id, t.slug, a.period_start, a.period_end,
       sum(a.statements)::bigint AS statements, round(sum(a.total_ms)::numeric, 3) AS total_ms,
       round(max(a.max_ms)::numeric, 3) AS max_ms, sum(a.rows)::bigint AS rows
FROM tenancy.activity_counters() a
LEFT JOIN pg_catalog.pg_namespace n ON n.oid = a.schema_oid
JOIN tenancy.tenants t ON t.id = a.tenant_id OR (a.tenant_id IS NULL AND t.schema_name = n.nspname)
GROUP BY t.id, t.slug, a.period_start, a.period_end;

CREATE OR REPLACE FUNCTION tenancy._activity_of(tenant uuid) RETURNS jsonb
LANGUAGE sql STABLE
RETURN (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'period_start', a.period_start, 'statements', a.statements, 'total_ms', a.total_ms,
                   'max_ms', a.max_ms, 'rows', a.rows) ORDER BY a.period_start), '[]')
        FROM tenancy.tenant_activity a WHERE a.tenant_id = tenant);

CREATE OR REPLACE VIEW tenancy.stats AS
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

CREATE OR REPLACE FUNCTION tenancy._check_saved_catalog() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bad text;
BEGIN
    SELECT CASE
             WHEN NOT r.rolsuper THEN format('schema tenancy_saved belongs to %s, not to a superuser', r.rolname)
           END INTO bad
    FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner WHERE n.nspname = 'tenancy_saved';
    IF bad IS NULL THEN
        SELECT CASE
                 WHEN NOT r.rolsuper THEN format('table tenancy_saved.%s belongs to %s, not to a superuser', c.relname, r.rolname)
                 WHEN c.relkind <> 'r' THEN format('tenancy_saved.%s is not a plain table', c.relname)
                 WHEN c.relhastriggers OR c.relhasrules OR c.relrowsecurity
                      OR EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid)
                      OR EXISTS (SELECT 1 FROM pg_rewrite w WHERE w.ev_class = c.oid)
                 THEN format('table tenancy_saved.%s has triggers, rules or row security', c.relname)
               END INTO bad
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_roles r ON r.oid = c.relowner
        WHERE n.nspname = 'tenancy_saved'
        ORDER BY 1 NULLS LAST LIMIT 1;
    END IF;
    IF bad IS NOT NULL THEN
        RAISE EXCEPTION 'tenancy_saved was not made by tenancy: %', bad
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Look at what is in schema tenancy_saved, remove it, and run the command again.';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION tenancy._save_catalog() RETURNS event_trigger
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
    -- the superuser runs this: a schema or table someone else made (with a
    -- trigger in it) must not receive the catalog
    PERFORM tenancy._check_saved_catalog();
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

CREATE OR REPLACE FUNCTION tenancy.adopt_schemas()
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
    PERFORM tenancy._check_saved_catalog();
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
        PERFORM tenancy._enable_rls(tbl) FROM tenancy._shared_tables(s) tbl;
    END LOOP;
    -- (only what the pool made: its name, and the owner role's)
    FOR s IN SELECT n.nspname FROM pg_namespace n
             WHERE n.nspname ~ '^tenancy_pool_[0-9a-f]{16}$'
               AND n.nspowner = (SELECT ow.oid FROM pg_roles ow WHERE ow.rolname = tenancy._db_role('owner'))
               AND NOT EXISTS (SELECT 1 FROM tenancy.pool p WHERE p.schema_name = n.nspname) LOOP
        EXECUTE format('DROP SCHEMA %I CASCADE', s);
    END LOOP;
    -- and their roles (this database's, by their name and comment)
    FOR s IN SELECT pr.rolname FROM pg_roles pr
             WHERE pr.rolname ~ ('^tenancy_pool_' || (SELECT d.oid FROM pg_database d
                                                      WHERE d.datname = current_database()) || '_[0-9a-f]{16}$')
               AND NOT EXISTS (SELECT 1 FROM tenancy.pool p WHERE p.role_name = pr.rolname) LOOP
        PERFORM tenancy._drop_tenant_role(s);
    END LOOP;
    DROP TABLE tenancy_saved.catalog;
    DROP SCHEMA tenancy_saved;
    PERFORM tenancy._wake_worker();
END
$$;

CREATE OR REPLACE FUNCTION tenancy.after_restore()
RETURNS TABLE(source_role name, this_role name, owned bigint, grants bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    db oid := (SELECT d.oid FROM pg_database d WHERE d.datname = current_database());
    owner_here name := tenancy._db_role('owner');
    sources text[] := '{}';
    r record;
    a record;
BEGIN
    -- what it hands over goes to roles nobody else controls
    FOR a IN SELECT k FROM unnest(ARRAY['owner', 'shared', 'all_tenants']) k
             WHERE NOT tenancy._db_role_untouched(tenancy._db_role(k), k) LOOP
        RAISE EXCEPTION 'role % is not as tenancy keeps it; nothing is handed to it', tenancy._db_role(a.k)
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A superuser revokes the ADMIN OPTION or membership and the attribute, then runs SELECT * FROM tenancy.after_restore().';
    END LOOP;
    -- the source databases: their owner role owns a schema of this catalog
    FOR r IN SELECT ro.oid, ro.rolname, substring(ro.rolname FROM '^tenancy_owner_([0-9]+)$') AS n
             FROM pg_roles ro
             WHERE ro.rolname ~ '^tenancy_owner_[0-9]+$' AND ro.rolname <> owner_here
               AND shobj_description(ro.oid, 'pg_authid')
                   ~ ('^tenancy role of database ' || substring(ro.rolname FROM '([0-9]+)$') || ': owner \(')
               AND NOT ro.rolsuper
               AND EXISTS (SELECT 1 FROM pg_namespace n, tenancy.tenants t
                           WHERE n.nspowner = ro.oid AND t.status <> 'dropped'
                             AND n.nspname = CASE WHEN t.isolation = 'shared' THEN tenancy._access_schema(t)
                                                  WHEN t.status = 'archived' THEN tenancy._archive_name(t)
                                                  ELSE t.schema_name END)
             ORDER BY ro.rolname LOOP
        -- REASSIGN OWNED also moves shared objects: a role that owns one is
        -- not a restore's to move (the extension never makes it own any)
        IF EXISTS (SELECT 1 FROM pg_database d WHERE d.datdba = r.oid)
           OR EXISTS (SELECT 1 FROM pg_tablespace sp WHERE sp.spcowner = r.oid)
           OR EXISTS (SELECT 1 FROM pg_shdepend d WHERE d.dbid = 0 AND d.refclassid = 'pg_authid'::regclass
                                                    AND d.refobjid = r.oid AND d.deptype = 'o') THEN
            RAISE WARNING 'tenancy: % owns a database or tablespace; what it owns here is left to it', r.rolname
                USING HINT = 'A superuser gives that away (ALTER DATABASE ... OWNER TO), then runs SELECT * FROM tenancy.after_restore().';
            CONTINUE;
        END IF;
        sources := sources || r.n;
        source_role := r.rolname;
        this_role := owner_here;
        owned := (SELECT count(*) FROM pg_shdepend d
                  WHERE d.dbid = db AND d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'o');
        grants := 0;
        EXECUTE format('REASSIGN OWNED BY %I TO %I', r.rolname, owner_here);
        -- REASSIGN leaves default privileges with the old role: what the
        -- owner makes later in a tenant's schema (a migration) is granted
        -- to the tenant by them
        FOR a IN SELECT da.defaclnamespace::regnamespace AS nsp, x.privilege_type,
                        CASE WHEN x.grantee = 0 THEN 'PUBLIC'
                             ELSE quote_ident((SELECT g.rolname FROM pg_roles g WHERE g.oid = x.grantee)) END AS grantee,
                        CASE da.defaclobjtype WHEN 'r' THEN 'TABLES' WHEN 'S' THEN 'SEQUENCES'
                                              WHEN 'f' THEN 'ROUTINES' WHEN 'T' THEN 'TYPES' END AS objects
                 FROM pg_default_acl da, aclexplode(da.defaclacl) x
                 WHERE da.defaclrole = r.oid AND da.defaclnamespace <> 0 AND da.defaclobjtype IN ('r', 'S', 'f', 'T') LOOP
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s GRANT %s ON %s TO %s',
                           owner_here, a.nsp, a.privilege_type, a.objects, a.grantee);
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE %I IN SCHEMA %s REVOKE %s ON %s FROM %s',
                           r.rolname, a.nsp, a.privilege_type, a.objects, a.grantee);
            grants := grants + 1;
        END LOOP;
        RETURN NEXT;
    END LOOP;

    -- the shared and all_tenants roles of those databases: their grants on
    -- what this database's owner role now owns (the shared tables), found
    -- through the roles' dependencies here, not a scan of pg_class. The
    -- source's all_tenants role loses them (its members, the source's
    -- admins, are nobody here); its shared role keeps them, for the
    -- restored shared tenants' roles, which are the source's and under the
    -- tables' policies
    FOR r IN SELECT ro.oid, ro.rolname, k.kind
             FROM pg_roles ro,
                  LATERAL (SELECT substring(ro.rolname FROM '^tenancy_(shared|all_tenants)_[0-9]+$') AS kind,
                                  substring(ro.rolname FROM '_([0-9]+)$') AS n) k
             WHERE k.kind IS NOT NULL AND k.n = ANY (sources)
               AND shobj_description(ro.oid, 'pg_authid') ~ ('^tenancy role of database ' || k.n || ': ' || k.kind || ' \(')
             ORDER BY ro.rolname LOOP
        source_role := r.rolname;
        this_role := tenancy._db_role(r.kind);
        owned := 0;
        grants := 0;
        FOR a IN SELECT format('%s %s', CASE c.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, c.oid::regclass) AS obj,
                        x.privilege_type,
                        EXISTS (SELECT 1 FROM aclexplode(c.relacl) y
                                WHERE y.grantee = to_regrole(this_role) AND y.privilege_type = x.privilege_type) AS held
                 FROM pg_shdepend d JOIN pg_class c ON c.oid = d.objid, aclexplode(c.relacl) x
                 WHERE d.dbid = db AND d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'a'
                   AND d.classid = 'pg_class'::regclass AND x.grantee = r.oid
                   AND c.relowner = to_regrole(owner_here)
                 UNION ALL
                 SELECT format('SCHEMA %I', n.nspname), x.privilege_type,
                        EXISTS (SELECT 1 FROM aclexplode(n.nspacl) y
                                WHERE y.grantee = to_regrole(this_role) AND y.privilege_type = x.privilege_type)
                 FROM pg_shdepend d JOIN pg_namespace n ON n.oid = d.objid, aclexplode(n.nspacl) x
                 WHERE d.dbid = db AND d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.oid AND d.deptype = 'a'
                   AND d.classid = 'pg_namespace'::regclass AND x.grantee = r.oid
                   AND n.nspowner = to_regrole(owner_here) LOOP
            IF NOT a.held THEN
                EXECUTE format('GRANT %s ON %s TO %I', a.privilege_type, a.obj, this_role);
                grants := grants + 1;
            END IF;
            IF r.kind = 'all_tenants' THEN
                EXECUTE format('REVOKE %s ON %s FROM %I', a.privilege_type, a.obj, r.rolname);
                grants := grants + 1;
            END IF;
        END LOOP;
        IF grants > 0 THEN
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION "template_ddl"(
	"template" TEXT, /* & str */
	"slug" TEXT /* & str */
) RETURNS SETOF TEXT /* String */
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'template_ddl_wrapper';

CREATE OR REPLACE FUNCTION "tenant_may_write"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tenant_may_write_wrapper';

CREATE OR REPLACE FUNCTION "validate"(
	"tenants" jsonb /* JsonB */
) RETURNS TABLE (
	"ordinal" INT,  /* i32 */
	"slug" TEXT,  /* Option < String > */
	"valid" bool,  /* bool */
	"errors" TEXT[]  /* Vec < String > */
)
STRICT
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'validate_wrapper';

CREATE OR REPLACE FUNCTION tenancy.provision(
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

CREATE OR REPLACE FUNCTION tenancy._tenant_row(id uuid) RETURNS tenancy.tenants
LANGUAGE sql
AS $$ SELECT * FROM tenancy.tenants t WHERE t.id = $1 $$;

CREATE OR REPLACE FUNCTION tenancy.move_tenant(tenant text, isolation text) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy._tenant_row(tenancy._move_tenant(tenant, isolation));

CREATE OR REPLACE FUNCTION tenancy.move_tenant(tenant uuid, isolation text) RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.move_tenant(tenant::text, isolation);

CREATE OR REPLACE FUNCTION tenancy.clone_tenant(tenant text, new_slug text, options jsonb DEFAULT '{}') RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy._tenant_row(tenancy._clone_tenant(tenant, new_slug, options));

CREATE OR REPLACE FUNCTION tenancy.clone_tenant(tenant uuid, new_slug text, options jsonb DEFAULT '{}') RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy.clone_tenant(tenant::text, new_slug, options);

CREATE OR REPLACE FUNCTION tenancy.import_finish() RETURNS tenancy.tenants
LANGUAGE sql RETURN tenancy._tenant_row(tenancy._import_finish());

CREATE OR REPLACE FUNCTION tenancy.export_tenant(tenant uuid) RETURNS SETOF text
LANGUAGE sql AS $$ SELECT tenancy.export_tenant(tenant::text) $$;

CREATE OR REPLACE FUNCTION tenancy._apply_privileges() RETURNS void
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
-- </functions>

-- the shared tables' policies check the storage quota of the rows' tenant
-- as they are written (tenancy.tenant_may_write), as _enable_rls makes them now
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT p.polrelid::regclass AS tbl, a.attname
             FROM pg_policy p
             JOIN pg_depend d ON d.classid = 'pg_policy'::regclass AND d.objid = p.oid
                             AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0
             JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
             WHERE p.polname = 'tenancy_isolation' LOOP
        EXECUTE format('ALTER POLICY tenancy_isolation ON %s '
                       'WITH CHECK (%I = tenancy.current_tenant_id() AND tenancy.tenant_may_write())',
                       r.tbl, r.attname);
    END LOOP;
END
$$;

COMMENT ON FUNCTION tenancy.move_tenant(text, text) IS
    'Moves a tenant from the shared tables to a schema of its own, or back: its rows copied, its id, role and catalog row kept; all or nothing';
COMMENT ON FUNCTION tenancy.clone_tenant(text, text, jsonb) IS
    'A new tenant with a copy of a tenant''s data, from the same template version, in one transaction';
COMMENT ON FUNCTION tenancy.after_restore() IS
    'After pg_restore of another database''s dump: hands what the source database''s tenancy roles own and hold here to this database''s';

-- timeseries version 2 (versions already there are kept as they are)
SELECT tenancy._load_shipped_templates();

-- grants and SECURITY DEFINER of every function, as a fresh install has them
SELECT tenancy._apply_privileges();
REVOKE ALL ON FUNCTION tenancy._apply_privileges() FROM PUBLIC;
