-- provision: one call, a catalog row, a schema with every template object, an audit row.
\set SHOW_CONTEXT never
SELECT slug, name, status, isolation, schema_name, template, template_version, domain,
       max_users, settings, features, provisioned_at IS NOT NULL AS provisioned
FROM tenancy.provision('acme', 'Acme Corp', 'default',
                       '{"domain": "acme.example.com", "max_users": 50, "features": {"sso": true}}');

-- the schema holds exactly the template's tables, indexes and constraints
SELECT c.relname, c.relkind
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'tenant_acme' ORDER BY c.relkind, c.relname;
-- (NOT NULL shown by the columns: PostgreSQL 18 lists them here too, as 'n')
SELECT conrelid::regclass AS tbl, conname, contype
FROM pg_constraint WHERE connamespace = 'tenant_acme'::regnamespace AND contype <> 'n' ORDER BY 1::text, 2;

-- the tenant's tables work
INSERT INTO tenant_acme.users (email) VALUES ('ada@acme.example.com');
INSERT INTO tenant_acme.items (owner_id, title) SELECT id, 'first item' FROM tenant_acme.users;
SELECT u.email, i.title, i.status FROM tenant_acme.items i JOIN tenant_acme.users u ON u.id = i.owner_id;

-- every lifecycle operation is in the audit log
SELECT action, tenant_slug, actor, result, details - 'isolation' AS details
FROM tenancy.audit_log WHERE tenant_slug = 'acme' ORDER BY id;

-- the trading template: 4 tables, 4 indexes of its own
SELECT slug, schema_name, template FROM tenancy.provision('globex', 'Globex', 'trading');
SELECT indexname FROM pg_indexes WHERE schemaname = 'tenant_globex' ORDER BY 1;

-- if_not_exists returns the tenant that is there, and changes nothing
SELECT slug, name, status FROM tenancy.provision('acme', 'Another Name', 'default', '{"if_not_exists": true}');
SELECT count(*) AS acme_tenants FROM tenancy.tenants WHERE slug = 'acme';

-- the caller's search_path is left as it was
SET search_path = public;
SELECT slug FROM tenancy.provision('pathcheck');
SHOW search_path;
RESET search_path;

-- what provision runs, as a client would send it
SELECT left(ddl, 78) AS ddl FROM tenancy.template_ddl('trading', 'demo') AS ddl;

-- a template with native range partitions gets its first partitions
SELECT tenancy.register_template('events', '{
  "tables": ["CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, kind text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)"],
  "partitioned_tables": [{"name": "events", "column": "at", "interval": "month", "premake": 2}]
}');
SELECT slug FROM tenancy.provision('evented', NULL, 'events');
SELECT count(*) AS partitions FROM pg_inherits WHERE inhparent = 'tenant_evented.events'::regclass;
INSERT INTO tenant_evented.events (at, kind) VALUES (now(), 'signup');
SELECT count(*) FROM tenant_evented.events;
