-- Events for applications (written by the library, src/events.rs): one row
-- in the transaction of each lifecycle operation and batch transition, and a
-- NOTIFY tenancy_events, '{"id": .., "kind": ..}' when it commits.

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

-- The events after last_id (0: from the first kept), in the order to process
-- them: by writing transaction, then id. Only transactions older than every
-- transaction still open that could write an event are read, so an event
-- that commits later can never belong before one already returned: nothing
-- is skipped, nothing comes twice. (Ids are handed out before commit, so
-- they alone do not give that order: a transaction holding id 9 may commit
-- after one holding id 10.) An open transaction of a writer delays the
-- events of those that began after it, never loses them. Writers are this
-- database's sessions of a superuser, a member of the admin role or the
-- extension's owner (the worker is a superuser's); a transaction of another
-- database or of any other role cannot write here and does not hold events
-- back. A transaction whose session is gone by the time it is looked up
-- (it has ended, or it is prepared) counts as a writer.
CREATE FUNCTION tenancy.events_since(last_id bigint DEFAULT 0, max_events integer DEFAULT 1000)
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

-- Maintenance: events older than tenancy.event_retention removed, 10,000 a
-- statement, at most 50 statements a run (the rest at the next run).
CREATE FUNCTION tenancy._prune_events() RETURNS bigint
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
