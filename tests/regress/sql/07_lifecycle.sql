-- Lifecycle: roles, suspend/resume, archive/drop, bulk updates, and their errors.
\set SHOW_CONTEXT never
SELECT slug, status, schema_name FROM tenancy.provision('life');
-- the tenant's role is t<database oid>_<slug> (OIDs differ between runs: compared, not shown)
SELECT oid AS db FROM pg_database WHERE datname = current_database() \gset
SELECT role_name AS life_role FROM tenancy.tenants WHERE slug = 'life' \gset
SELECT r.rolname = format('t%s_life', :'db') AS named_for_this_db,
       r.rolcanlogin, r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb
FROM pg_roles r WHERE r.rolname = :'life_role';
-- the schema belongs to this database's owner role, not to the tenant
SELECT nspowner::regrole::text = format('tenancy_owner_%s', :'db') AS owned_by_owner_role
FROM pg_namespace WHERE nspname = 'tenant_life';
SELECT n.nspname, p.privilege_type
FROM pg_namespace n, aclexplode(n.nspacl) p
WHERE n.nspname = 'tenant_life' AND p.grantee = :'life_role'::regrole;
-- rows only: no TRUNCATE, TRIGGER or REFERENCES on tables, no UPDATE (setval) on sequences
SELECT c.relname, c.relkind, string_agg(p.privilege_type, ', ' ORDER BY p.privilege_type) AS privileges
FROM pg_class c, aclexplode(c.relacl) p
WHERE c.relnamespace = 'tenant_life'::regnamespace AND p.grantee = :'life_role'::regrole
GROUP BY c.relname, c.relkind ORDER BY c.relkind, c.relname;
-- and nothing it could own or alter
SELECT count(*) AS owned_by_tenant FROM pg_class
WHERE relnamespace = 'tenant_life'::regnamespace AND relowner = :'life_role'::regrole;
SET ROLE :"life_role";
TRUNCATE tenant_life.users;
\echo :LAST_ERROR_SQLSTATE
SELECT setval('tenant_life.items_id_seq', 1000);
\echo :LAST_ERROR_SQLSTATE
-- (the code alone: PostgreSQL 18 adds the error's position)
\set VERBOSITY sqlstate
CREATE TABLE tenant_life.mine (id int);
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- suspend takes the schema away from the tenant's role; resume gives it back
SELECT slug, status FROM tenancy.suspend('life');
SET ROLE :"life_role";
SELECT count(*) FROM tenant_life.users;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT slug, status FROM tenancy.resume('life');
SET ROLE :"life_role";
SELECT count(*) FROM tenant_life.users;
RESET ROLE;

-- operations not allowed in the tenant's status: 55000
SELECT tenancy.resume('life');
\echo :LAST_ERROR_SQLSTATE
-- unknown tenant: 42704
SELECT tenancy.suspend('nobody');
\echo :LAST_ERROR_SQLSTATE

-- archive (keep_data) and restore
SELECT slug, status FROM tenancy.drop_tenant('life', keep_data => true);
SELECT nspname FROM pg_namespace WHERE nspname LIKE '%life%' ORDER BY 1;
SELECT slug, status FROM tenancy.resume('life');

-- bulk updates: settings and features merged, a null removes a key
SELECT slug FROM tenancy.provision('life2', NULL, 'default', '{"settings": {"tz": "UTC", "beta": true}}');
SELECT tenancy.bulk_update(ARRAY['life', 'life2'], '{"settings": {"beta": null, "lang": "fr"}, "max_users": 25}');
SELECT slug, settings, max_users FROM tenancy.tenants WHERE slug LIKE 'life%' ORDER BY slug;
SELECT tenancy.bulk_update(ARRAY['life', 'ghost'], '{"name": "x"}');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.bulk_update(ARRAY['life'], '{"colour": "blue"}');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.bulk_update(ARRAY['life'], '{"template_version": 9}');
\echo :LAST_ERROR_SQLSTATE

-- drop: a tombstone stays, the schema and the role go
SELECT role_name AS life2_role FROM tenancy.tenants WHERE slug = 'life2' \gset
SELECT count(*) AS role FROM pg_roles WHERE rolname = :'life2_role';
SELECT slug, status, dropped_at IS NOT NULL AS dropped FROM tenancy.drop_tenant('life2');
SELECT count(*) AS schema FROM pg_namespace WHERE nspname = 'tenant_life2';
SELECT count(*) AS role FROM pg_roles WHERE rolname = :'life2_role';
SELECT tenancy.provision('life2');
\echo :LAST_ERROR_SQLSTATE

SELECT action, tenant_slug, details - 'trash_schema' AS details FROM tenancy.audit_log
WHERE tenant_slug LIKE 'life%' AND action <> 'provision' ORDER BY id;
