-- Catalog of the tenancy extension. Loaded first, before any Rust function.

CREATE TYPE tenancy.tenant_status AS ENUM
    ('pending', 'provisioning', 'active', 'suspended', 'failed', 'archived', 'dropped');

CREATE TABLE tenancy.templates (
    name        text        NOT NULL,
    version     integer     NOT NULL CHECK (version > 0),
    spec        jsonb       NOT NULL,
    description text,
    -- rows loaded from templates/*.json at CREATE EXTENSION; not dumped, since
    -- CREATE EXTENSION loads them again on restore
    shipped     boolean     NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  name        NOT NULL DEFAULT session_user,
    PRIMARY KEY (name, version)
);
COMMENT ON TABLE tenancy.templates IS 'Every version of every template; a new version is added by tenancy.register_template';

CREATE TABLE tenancy.tenants (
    id                uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    slug              text        NOT NULL,
    name              text,
    status            tenancy.tenant_status NOT NULL DEFAULT 'pending',
    isolation         text        NOT NULL DEFAULT 'schema' CHECK (isolation IN ('schema', 'shared')),
    schema_name       name,
    -- NOLOGIN role that may use the tenant's schema and nothing else
    role_name         name,
    template          text        NOT NULL,
    template_version  integer     NOT NULL,
    domain            text,
    email             text,
    tenant_type       text,
    settings          jsonb       NOT NULL DEFAULT '{}',
    features          jsonb       NOT NULL DEFAULT '{}',
    max_users         integer     CHECK (max_users >= 0),
    max_storage_bytes bigint      CHECK (max_storage_bytes >= 0),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    provisioned_at    timestamptz,
    dropped_at        timestamptz,
    created_by        name        NOT NULL DEFAULT session_user,
    -- set by refresh_metrics while the tenant's size is over
    -- max_storage_bytes: its writes are refused (src/quota.rs)
    over_quota_since  timestamptz,
    CONSTRAINT tenants_slug_key UNIQUE (slug),
    CONSTRAINT tenants_template_fkey FOREIGN KEY (template, template_version)
        REFERENCES tenancy.templates (name, version)
);
COMMENT ON TABLE tenancy.tenants IS 'One row per tenant; a dropped tenant stays as a tombstone (status dropped)';
CREATE UNIQUE INDEX tenants_domain_key ON tenancy.tenants (domain)
    WHERE domain IS NOT NULL AND status <> 'dropped';
CREATE UNIQUE INDEX tenants_schema_name_key ON tenancy.tenants (schema_name)
    WHERE schema_name IS NOT NULL AND status <> 'dropped';
CREATE INDEX tenants_status_idx ON tenancy.tenants (status);
CREATE INDEX tenants_template_idx ON tenancy.tenants (template, template_version);

-- Every lifecycle operation: who, what, when, result. Partitioned by month;
-- the default partition catches rows until maintenance has made their month.
CREATE TABLE tenancy.audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       name        NOT NULL DEFAULT session_user,
    action      text        NOT NULL,
    tenant_id   uuid,
    tenant_slug text,
    details     jsonb       NOT NULL DEFAULT '{}',
    result      text        NOT NULL DEFAULT 'ok' CHECK (result IN ('ok', 'error')),
    sqlstate    text,
    error       text,
    duration_ms double precision
) PARTITION BY RANGE (at);
CREATE TABLE tenancy.audit_log_default PARTITION OF tenancy.audit_log DEFAULT;
-- Keys and indexes are made on each partition (maintenance copies the
-- default partition's), not on the parent: the parent exists before
-- pg_restore recreates the month partitions, and an index on it would make
-- ATTACH PARTITION build the partitions' indexes that the dump then adds
-- again. Each key holds the partition column, so it is unique table-wide.
ALTER TABLE tenancy.audit_log_default ADD CONSTRAINT audit_log_default_pkey PRIMARY KEY (id, at);
CREATE INDEX audit_log_default_tenant_idx ON tenancy.audit_log_default (tenant_id, at);
COMMENT ON TABLE tenancy.audit_log IS 'Every lifecycle operation on tenants and templates; partitioned by month';

SELECT pg_catalog.pg_extension_config_dump('tenancy.templates', 'WHERE NOT shipped');
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenants', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_log_default', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.audit_log_id_seq', '');

-- Batches: a queue of tenants to provision, processed by the background
-- worker (or by tenancy.process_queue) one item per transaction.
CREATE TYPE tenancy.batch_state AS ENUM
    ('queued', 'in_progress', 'completed', 'partially_completed', 'failed', 'cancelled');

CREATE TABLE tenancy.batches (
    id                  uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    -- provision: make tenants; migrate: bring tenants to a template version;
    -- move: take tenants to another isolation mode
    kind                text        NOT NULL DEFAULT 'provision' CHECK (kind IN ('provision', 'migrate', 'move')),
    status              tenancy.batch_state NOT NULL DEFAULT 'queued',
    total               integer     NOT NULL,
    max_concurrent      integer     NOT NULL CHECK (max_concurrent BETWEEN 1 AND 20),
    retry_attempts      integer     NOT NULL CHECK (retry_attempts >= 0),
    retry_delay         interval    NOT NULL,
    continue_on_error   boolean     NOT NULL DEFAULT true,
    rollback_on_failure boolean     NOT NULL DEFAULT false,
    options             jsonb       NOT NULL DEFAULT '{}',
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          name        NOT NULL DEFAULT session_user,
    started_at          timestamptz,
    finished_at         timestamptz,
    -- set once the tenants of a failed rollback_on_failure batch are dropped
    rolled_back_at      timestamptz
);
CREATE INDEX batches_open_idx ON tenancy.batches (created_at)
    WHERE status IN ('queued', 'in_progress');

CREATE TABLE tenancy.batch_items (
    batch_id        uuid        NOT NULL REFERENCES tenancy.batches (id) ON DELETE CASCADE,
    ordinal         integer     NOT NULL,
    slug            text        NOT NULL,
    spec            jsonb       NOT NULL,
    -- queued until a worker commits its result; a worker that dies leaves it queued
    status          text        NOT NULL DEFAULT 'queued'
                    CHECK (status IN ('queued', 'succeeded', 'failed', 'cancelled', 'rolled_back')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    tenant_id       uuid,
    schema_name     name,
    last_error      text,
    last_sqlstate   text,
    started_at      timestamptz,
    finished_at     timestamptz,
    duration_ms     double precision,
    PRIMARY KEY (batch_id, ordinal)
);
CREATE INDEX batch_items_ready_idx ON tenancy.batch_items (batch_id, next_attempt_at, ordinal)
    WHERE status = 'queued';
CREATE INDEX batch_items_slug_idx ON tenancy.batch_items (slug) WHERE status = 'queued';

-- A batch's concurrency slots: a worker holds one (a row lock, FOR UPDATE
-- SKIP LOCKED) while it works on an item of the batch, so at most
-- max_concurrent work on it at once. Rows, not advisory locks: a session
-- without privileges can take any advisory lock (and read its key in
-- pg_locks), never a row lock here. Made by a trigger with the batch, so
-- not dumped (a restore makes them again).
CREATE TABLE tenancy.batch_slots (
    batch_id uuid    NOT NULL REFERENCES tenancy.batches (id) ON DELETE CASCADE,
    slot     integer NOT NULL,
    PRIMARY KEY (batch_id, slot)
);

SELECT pg_catalog.pg_extension_config_dump('tenancy.batches', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.batch_items', '');

-- Warm pool: schemas built ahead under hidden names, claimed by provision.
-- A pooled schema exists exactly when its row here does: both are made, and
-- both are removed, in one transaction.
CREATE TABLE tenancy.pool_settings (
    template   text    PRIMARY KEY,
    size       integer NOT NULL CHECK (size BETWEEN 0 AND 10000),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE tenancy.pool (
    schema_name      name        PRIMARY KEY,
    template         text        NOT NULL,
    template_version integer     NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (template, template_version) REFERENCES tenancy.templates (name, version),
    -- the role built with it (its grants and default privileges in place),
    -- renamed to the tenant's at the claim; NULL for schemas built before 0.4.0
    role_name        name
);
CREATE INDEX pool_claim_idx ON tenancy.pool (template, template_version, created_at);
SELECT pg_catalog.pg_extension_config_dump('tenancy.pool_settings', '');
SELECT pg_catalog.pg_extension_config_dump('tenancy.pool', '');

-- Periodic jobs of the worker (also run by tenancy.run_maintenance()):
-- each records its last run, and backs off after failures without holding
-- up the others.
CREATE TABLE tenancy.jobs (
    name             text        PRIMARY KEY,
    run_every        interval    NOT NULL,
    next_run_at      timestamptz NOT NULL DEFAULT now(),
    last_started_at  timestamptz,
    last_finished_at timestamptz,
    last_duration_ms double precision,
    last_result      jsonb,
    last_error       text,
    failures         integer     NOT NULL DEFAULT 0,
    -- a run the worker does in steps, one transaction each: where it is
    progress         jsonb
);
INSERT INTO tenancy.jobs (name, run_every) VALUES ('maintenance', '1 hour');

-- Usage history: one row per tenant per refresh, partitioned by month.
CREATE TABLE tenancy.tenant_metrics (
    tenant_id       uuid        NOT NULL,
    collected_at    timestamptz NOT NULL DEFAULT now(),
    isolation       text        NOT NULL,
    table_count     integer     NOT NULL,
    row_estimate    bigint      NOT NULL,
    total_bytes     bigint      NOT NULL,
    table_bytes     bigint      NOT NULL,
    index_bytes     bigint      NOT NULL,
    toast_bytes     bigint      NOT NULL,
    dead_tuples     bigint,
    last_vacuum     timestamptz,
    last_analyze    timestamptz,
    -- scans since the previous refresh, and the raw counters they come from
    seq_scans       bigint,
    idx_scans       bigint,
    seq_scans_total bigint,
    idx_scans_total bigint
) PARTITION BY RANGE (collected_at);
CREATE TABLE tenancy.tenant_metrics_default PARTITION OF tenancy.tenant_metrics DEFAULT;
-- per partition, as for the audit log
ALTER TABLE tenancy.tenant_metrics_default
    ADD CONSTRAINT tenant_metrics_default_pkey PRIMARY KEY (tenant_id, collected_at);
SELECT pg_catalog.pg_extension_config_dump('tenancy.tenant_metrics_default', '');
INSERT INTO tenancy.jobs (name, run_every) VALUES ('metrics', '5 minutes');
