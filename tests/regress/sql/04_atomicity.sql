-- provision is all or nothing, in the caller's transaction.
\set SHOW_CONTEXT never

-- a rolled-back transaction leaves no row, no schema, no audit entry
BEGIN;
SELECT slug, status FROM tenancy.provision('ghost');
SELECT count(*) AS tables_inside FROM pg_tables WHERE schemaname = 'tenant_ghost';
ROLLBACK;
SELECT count(*) AS rows FROM tenancy.tenants WHERE slug = 'ghost';
SELECT count(*) AS schemas FROM pg_namespace WHERE nspname = 'tenant_ghost';
SELECT count(*) AS audit FROM tenancy.audit_log WHERE tenant_slug = 'ghost';

-- a template that fails on its last statement leaves nothing, even inside a
-- transaction that goes on (a savepoint, as a driver or migration would use)
SELECT tenancy.register_template('fails_late', '{
  "tables": ["CREATE TABLE a (id int PRIMARY KEY)", "CREATE TABLE b (id int)"],
  "indexes": ["CREATE INDEX a_idx ON a (id)", "CREATE INDEX b_idx ON b (no_such_column)"]
}');
BEGIN;
SAVEPOINT before_tenant;
SELECT tenancy.provision('late', NULL, 'fails_late');
ROLLBACK TO SAVEPOINT before_tenant;
SELECT slug FROM tenancy.provision('after_failure');
COMMIT;
SELECT slug FROM tenancy.tenants WHERE slug IN ('late', 'after_failure');
SELECT nspname FROM pg_namespace WHERE nspname IN ('tenant_late', 'tenant_after_failure');

-- provisioning from a migration: several tenants in one transaction
BEGIN;
SELECT slug FROM tenancy.provision('mig_a');
SELECT slug FROM tenancy.provision('mig_b', NULL, 'trading');
COMMIT;
SELECT slug, template FROM tenancy.tenants WHERE slug LIKE 'mig_%' ORDER BY slug;

-- from a row trigger: the app's insert and the tenant commit or roll back together
CREATE TABLE organizations (id serial PRIMARY KEY, slug text NOT NULL, name text NOT NULL);
CREATE FUNCTION organizations_provision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM tenancy.provision(NEW.slug, NEW.name);
    RETURN NEW;
END $$;
CREATE TRIGGER organizations_provision AFTER INSERT ON organizations
    FOR EACH ROW EXECUTE FUNCTION organizations_provision();

INSERT INTO organizations (slug, name) VALUES ('initech', 'Initech');
SELECT slug, name, status FROM tenancy.tenants WHERE slug = 'initech';

BEGIN;
INSERT INTO organizations (slug, name) VALUES ('hooli', 'Hooli');
SELECT count(*) AS hooli_inside FROM tenancy.tenants WHERE slug = 'hooli';
ROLLBACK;
SELECT count(*) AS hooli_after_rollback FROM tenancy.tenants WHERE slug = 'hooli';
SELECT count(*) AS hooli_schema FROM pg_namespace WHERE nspname = 'tenant_hooli';

-- a tenant that cannot be made stops the app's insert too
INSERT INTO organizations (slug, name) VALUES ('Bad Slug', 'Bad');
SELECT slug FROM organizations ORDER BY id;
