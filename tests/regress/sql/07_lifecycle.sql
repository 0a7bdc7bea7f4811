-- Lifecycle: roles, suspend/resume, archive/drop, bulk updates, and their errors.
\set SHOW_CONTEXT never
SELECT slug, status, schema_name, role_name FROM tenancy.provision('life');
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = 'tenant_life';
SELECT n.nspname, p.privilege_type
FROM pg_namespace n, aclexplode(n.nspacl) p
WHERE n.nspname = 'tenant_life' AND p.grantee = 'tenant_life'::regrole;

-- suspend takes the schema away from the tenant's role; resume gives it back
SELECT slug, status FROM tenancy.suspend('life');
SET ROLE tenant_life;
SELECT count(*) FROM tenant_life.users;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT slug, status FROM tenancy.resume('life');
SET ROLE tenant_life;
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
SELECT slug, status, dropped_at IS NOT NULL AS dropped FROM tenancy.drop_tenant('life2');
SELECT count(*) AS schema FROM pg_namespace WHERE nspname = 'tenant_life2';
SELECT count(*) AS role FROM pg_roles WHERE rolname = 'tenant_life2';
SELECT tenancy.provision('life2');
\echo :LAST_ERROR_SQLSTATE

SELECT action, tenant_slug, details - 'trash_schema' AS details FROM tenancy.audit_log
WHERE tenant_slug LIKE 'life%' AND action <> 'provision' ORDER BY id;
