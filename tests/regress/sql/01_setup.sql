-- The extension installs into schema tenancy with its shipped templates.
CREATE EXTENSION IF NOT EXISTS tenancy;
SELECT extname, extversion, extnamespace::regnamespace AS schema
FROM pg_extension WHERE extname = 'tenancy';
SELECT name, version, shipped, description FROM tenancy.templates ORDER BY name, version;
-- catalog tables are dumped with the data by pg_dump
SELECT c.relid::regclass AS dumped_table, c.condition
FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS c(relid, condition)
WHERE e.extname = 'tenancy';
