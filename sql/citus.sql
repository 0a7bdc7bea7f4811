-- Citus: the shared tables of a template are distributed by tenant_id, so a
-- shared tenant's statements run on the worker nodes, where the policies read
-- the tenant from a proof that set_tenant sends with Citus's SET LOCAL
-- propagation (src/citus/tenant_context.rs). Each node checks a proof with
-- its own key, made here by CREATE EXTENSION on that node (Citus runs it on
-- each); the coordinator keeps a copy of its workers' keys, fetched by
-- tenancy._citus_sync_keys(). Neither table is dumped: a restored database
-- makes a key of its own. Only superusers read them (finalize.sql).
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
