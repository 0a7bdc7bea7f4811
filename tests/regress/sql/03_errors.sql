-- Every error names its cause and carries a real SQLSTATE (printed after each).
\set SHOW_CONTEXT never
SELECT slug FROM tenancy.provision('dup');

-- invalid slugs: 22023
SELECT tenancy.provision('Acme');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('acme''; DROP SCHEMA public CASCADE; --');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('x"); DROP TABLE tenancy.tenants; --');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision(repeat('a', 49));
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('1acme');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('pg_acme');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('public');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('information_schema');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('tenancy');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('café');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision(NULL);
\echo :LAST_ERROR_SQLSTATE

-- bad options: 22023, every problem listed
SELECT tenancy.provision('opts', NULL, 'default', '{"max_users": -1, "colour": "red", "domain": "Not A Domain"}');
\echo :LAST_ERROR_SQLSTATE

-- duplicate slug, duplicate domain: 23505
SELECT tenancy.provision('dup');
\echo :LAST_ERROR_SQLSTATE
SELECT slug, domain FROM tenancy.provision('dom1', NULL, 'default', '{"domain": "shop.example.com"}');
SELECT tenancy.provision('dom2', NULL, 'default', '{"domain": "shop.example.com"}');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.provision('dup', NULL, 'trading', '{"if_not_exists": true}');
\echo :LAST_ERROR_SQLSTATE

-- unknown template: 42704
SELECT tenancy.provision('nowhere', NULL, 'no_such_template');
\echo :LAST_ERROR_SQLSTATE

-- a template that needs TimescaleDB where it is not installed: 55000
SELECT tenancy.provision('ts1', NULL, 'timeseries');
\echo :LAST_ERROR_SQLSTATE

-- a template whose statement fails: its own SQLSTATE, template and statement in the detail
SELECT tenancy.register_template('broken', '{
  "tables": ["CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE b (id int REFERENCES missing_table (id))"],
  "indexes": ["CREATE INDEX ON a (id)"]
}');
SELECT tenancy.provision('halfway', NULL, 'broken');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.register_template('badsyntax', '{"tables": ["CREATE TABLE t (id int)", "CREATE TABEL oops (x int)"]}');
SELECT tenancy.provision('syntax', NULL, 'badsyntax');
\echo :LAST_ERROR_SQLSTATE

-- a bad template spec is refused with every problem: 22023
SELECT tenancy.register_template('bad', '{
  "tables": ["CREATE TABLE t (id uuid PRIMARY KEY, ts timestamptz)", 42, "COMMIT"],
  "indexes": ["CREATE INDEX ON tenant_acme.t (id)"],
  "timescale_tables": [{"name": "t", "time_column": "ts", "chunk_interval": "soon"}, {"name": "nope", "time_column": "ts"}],
  "colour": "blue"
}');
\echo :LAST_ERROR_SQLSTATE
SELECT tenancy.register_template('Bad Name', '{"tables": ["CREATE TABLE t (id int)"]}');
\echo :LAST_ERROR_SQLSTATE

-- nothing of the failed calls was left behind
SELECT slug FROM tenancy.tenants ORDER BY slug;
SELECT nspname FROM pg_namespace WHERE nspname LIKE 'tenant_%' ORDER BY 1;
