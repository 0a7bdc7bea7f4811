-- The batch queue. One call of tenancy._process_next(n) makes at most n items
-- of one batch (one of a provisioning batch) in the caller's transaction, each
-- in a subtransaction: the item rows stay locked (FOR UPDATE SKIP LOCKED)
-- until that transaction ends, so a worker that dies leaves its items queued
-- and their tenants unmade, and no two sessions ever make the same item.

-- Every batch gets its max_concurrent slots as it is made.
CREATE FUNCTION tenancy._make_batch_slots() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO tenancy.batch_slots (batch_id, slot)
    SELECT NEW.id, g FROM generate_series(0, NEW.max_concurrent - 1) g;
    RETURN NULL;
END
$$;
CREATE TRIGGER batches_slots AFTER INSERT ON tenancy.batches
    FOR EACH ROW EXECUTE FUNCTION tenancy._make_batch_slots();

-- The runner, tenancy._process_next(max_items), is Rust (src/queue.rs); it
-- calls these two leaves around the items it makes.

-- Claims one batch's concurrency slot and up to max_items of its ready
-- items (one of a provisioning batch), locked (FOR UPDATE SKIP LOCKED) until the caller's transaction ends;
-- marks the batch started. No rows when nothing is ready.
CREATE FUNCTION tenancy._claim_items(max_items integer)
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

-- Writes the results of one claim, in one statement: status 'succeeded',
-- 'failed', 'cancelled', or 'queued' again for a retry in retry_in_ms.
-- Times come as milliseconds ago. stop_batch: an item failed in a batch
-- that does not continue on error.
CREATE FUNCTION tenancy._record_results(batch uuid, results jsonb, stop_batch boolean) RETURNS void
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

-- The event of a batch that ends: its status and its items' counts (the
-- items a stopped batch cancels are counted by status as they are now).
CREATE FUNCTION tenancy._batch_finished_event(batch uuid) RETURNS void
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

-- Ends a batch early: its queued items are cancelled, except those a worker
-- holds right now (they finish, and are counted).
CREATE FUNCTION tenancy._stop_batch(batch uuid, final tenancy.batch_state) RETURNS integer
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

-- Gives finished batches their final status, and drops the tenants of failed
-- rollback_on_failure batches (a few per call, to stay under lock limits).
-- Returns how many batches or tenants it touched.
CREATE FUNCTION tenancy._finalize_batches() RETURNS integer
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

-- How many items could run right now, within each batch's max_concurrent, and
-- how many batches have items queued at all (the scheduler naps less then).
CREATE FUNCTION tenancy._queue_demand(OUT ready integer, OUT waiting integer)
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

CREATE FUNCTION tenancy.process_queue(max_items integer DEFAULT NULL) RETURNS integer
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
COMMENT ON FUNCTION tenancy.process_queue(integer) IS
    'Processes up to max_items queued batch items (100 when NULL) in this session and transaction';

CREATE FUNCTION tenancy.batch_status(batch uuid) RETURNS jsonb
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

CREATE FUNCTION tenancy.wait_batch(batch uuid, timeout interval DEFAULT '10 minutes') RETURNS text
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
COMMENT ON FUNCTION tenancy.wait_batch(uuid, interval) IS
    'Waits until the batch ends (or the timeout) and returns its status; call it outside a transaction block';

CREATE FUNCTION tenancy.cancel_batch(batch uuid) RETURNS integer
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

CREATE FUNCTION tenancy.cleanup_batches(older_than interval DEFAULT '7 days') RETURNS integer
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

CREATE VIEW tenancy.active_batches AS
SELECT b.id, b.status, b.total,
       count(*) FILTER (WHERE i.status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE i.status = 'failed') AS failed,
       count(*) FILTER (WHERE i.status = 'queued') AS pending,
       b.max_concurrent, b.created_at, b.started_at, b.created_by
FROM tenancy.batches b
JOIN tenancy.batch_items i ON i.batch_id = b.id
WHERE b.status IN ('queued', 'in_progress')
GROUP BY b.id;
