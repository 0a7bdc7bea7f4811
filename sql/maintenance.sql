-- Maintenance: time partitions (the audit log's and the templates'
-- partitioned_tables in tenant schemas), cleanup of old batches, and the
-- jobs table that paces them. Locks are taken with a short lock_timeout: a
-- partition another session holds is skipped and done at the next run,
-- never waited for.

-- Gives a new partition the indexes (and primary key) that the default
-- partition has of its own, not from the parent: how the extension's
-- partitioned tables keep their keys (see the audit log in bootstrap.sql).
-- For tables indexed on the parent, there are none to copy.
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

-- The partitions of one range-partitioned table: the current period and
-- `premake` ahead made (rows that landed in the default partition moved into
-- theirs), those wholly older than `retention` dropped.
CREATE FUNCTION tenancy._maintain_partitions(parent regclass, unit text, premake integer,
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

-- The partition work of tenants' partitioned_tables (per the template
-- version each tenant is at), for up to max_tenants tenants after the slug
-- `after`, in slug order. Returns what it did, how many tenants and the
-- last slug it did.
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

-- Roles tenancy made for databases that no longer exist (their comment
-- names the database's OID): dropped, with their memberships. Each one's
-- name holds that OID, and provision never reuses an existing role, so
-- until then they reach nothing and serve no other tenant. One that a DBA
-- granted something in another database stays (and health() lists it).
CREATE FUNCTION tenancy._orphan_roles() RETURNS SETOF name
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

CREATE FUNCTION tenancy._drop_orphan_roles() RETURNS integer
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

-- The end of a maintenance run: the extension's own partitioned tables,
-- old batches, and the run's record in tenancy.jobs (which also ends a run
-- the worker had under way in steps). `sums` is what the tenants' part did
-- (created, dropped, skipped, and steps when the worker did it in steps);
-- returns the run's result.
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

-- One step of the worker's maintenance run, in the caller's transaction:
-- tenancy.maintenance_chunk tenants, or, when none is left, the extension's
-- own tables and the run's record. A run over thousands of tenants is so
-- never one transaction holding a lock on each table it touched.
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

-- What the worker runs on its clock; callable by hand or from pg_cron.
CREATE FUNCTION tenancy.run_maintenance() RETURNS jsonb
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

-- Runs the jobs that are due, each on its own: a failing job is recorded and
-- backed off (tenancy_core::retry::job_backoff_ms) and the others run.
CREATE FUNCTION tenancy._run_due_jobs() RETURNS integer
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

-- What one pass of the background worker does, in the calling session,
-- committing after each unit of work: queued items, warm-pool schemas and
-- dropped tenants' tables one transaction each, then the periodic jobs that
-- are due (maintenance step by step). For pg_cron where the worker is not
-- preloaded: a crash loses at most the unit under way. A procedure (CALL,
-- outside a transaction block), without SET options or SECURITY DEFINER,
-- which would forbid its COMMITs: so it runs with the caller's search_path,
-- which a database owner can set (ALTER DATABASE ... SET search_path) ahead
-- of an operator of its own. Everything it names is therefore qualified,
-- operators too.
CREATE PROCEDURE tenancy.run_worker_pass(max_items integer DEFAULT 1000, INOUT units integer DEFAULT 0)
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

-- What run_worker_pass calls (the procedure cannot be SECURITY DEFINER: it
-- commits): one unit of queued work (a batch item, a warm-pool schema or a
-- chunk of a dropped tenant's schema), and the jobs that are due after the
-- batches' final status. One item per unit, so that a pass from pg_cron
-- commits each tenant as it is made (the worker takes several at once).
CREATE FUNCTION tenancy.run_queue_unit() RETURNS boolean
LANGUAGE sql
RETURN tenancy._process_next(1) > 0 OR tenancy._pool_work() OR tenancy._trash_work();

-- A job run in steps still has steps due (run_worker_pass goes on).
CREATE FUNCTION tenancy.run_due_jobs_pending() RETURNS boolean
LANGUAGE sql STABLE
RETURN EXISTS (SELECT 1 FROM tenancy.jobs j WHERE j.progress IS NOT NULL AND j.next_run_at <= clock_timestamp());

CREATE FUNCTION tenancy.run_due_jobs() RETURNS integer
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM tenancy._finalize_batches();
    RETURN tenancy._run_due_jobs();
END
$$;
