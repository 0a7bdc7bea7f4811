"""Lifecycle from outside the server: roles checked as the tenant's own
role (SET ROLE), suspend/resume, drop/archive, bulk updates, migrations of a
fleet through the worker, health(tenant), the database's admin role."""

import json
import uuid

import pytest
from psycopg import errors

from conftest import batch_of, connect, wait_batch, wait_for

PRIVS = """
SELECT c.relname::text, p.privilege_type
FROM pg_class c, aclexplode(c.relacl) p
WHERE c.relnamespace = %s::regnamespace AND p.grantee = %s::regrole
ORDER BY 1, 2
"""


def role_of(db, slug):
    """The tenant's role: t<database oid>_<slug>."""
    return db.execute("SELECT role_name FROM tenancy.tenants WHERE slug = %s", (slug,)).fetchone()[0]


def db_oid(db):
    return db.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]


def as_role(db, role, sql, params=()):
    db.execute(f'SET ROLE "{role}"')
    try:
        cur = db.execute(sql, params)
        return cur.fetchall() if cur.description else []
    finally:
        db.execute("RESET ROLE")


def test_tenant_role_reaches_only_its_schema(db):
    db.execute("SELECT tenancy.provision('a1'), tenancy.provision('b1')")
    role = role_of(db, "a1")
    assert role == f"t{db_oid(db)}_a1"
    login, owns = db.execute(
        "SELECT rolcanlogin, (SELECT count(*) FROM pg_class WHERE relowner = r.oid) FROM pg_roles r WHERE rolname = %s",
        (role,)).fetchone()
    assert (login, owns) == (False, 0)
    # rows only: no TRUNCATE, TRIGGER or REFERENCES on tables, no UPDATE (setval) on sequences
    privs = {}
    for rel, priv in db.execute(PRIVS, ("tenant_a1", role)).fetchall():
        privs.setdefault(rel, set()).add(priv)
    rows = {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert privs == {"audit_events": rows, "items": rows, "users": rows,
                     "audit_events_id_seq": {"USAGE"}, "items_id_seq": {"USAGE"}}
    as_role(db, role, "INSERT INTO tenant_a1.users (email) VALUES ('x@a1.io')")
    assert as_role(db, role, "SELECT count(*) FROM tenant_a1.users")[0][0] == 1
    assert as_role(db, role, "SELECT nextval('tenant_a1.items_id_seq')")[0][0] == 1
    for sql in ("TRUNCATE tenant_a1.users", "SELECT setval('tenant_a1.items_id_seq', 100)",
                "CREATE TABLE tenant_a1.mine (id int)", "ALTER TABLE tenant_a1.users ADD COLUMN x int"):
        with pytest.raises(errors.InsufficientPrivilege):
            as_role(db, role, sql)
    with pytest.raises(errors.InsufficientPrivilege):
        as_role(db, role, "SELECT count(*) FROM tenant_b1.users")
    with pytest.raises(errors.InsufficientPrivilege):
        as_role(db, role, "SELECT count(*) FROM tenancy.tenants")


def test_suspend_denies_and_resume_restores_exactly(db):
    db.execute("SELECT tenancy.provision('s1')")
    db.execute("INSERT INTO tenant_s1.users (email) VALUES ('a@s1.io')")
    role = role_of(db, "s1")
    before = db.execute(PRIVS, ("tenant_s1", role)).fetchall()
    assert before
    assert db.execute("SELECT status::text FROM tenancy.suspend('s1')").fetchone()[0] == "suspended"
    with pytest.raises(errors.InsufficientPrivilege) as e:
        as_role(db, role, "SELECT count(*) FROM tenant_s1.users")
    assert e.value.sqlstate == "42501"
    assert db.execute("SELECT count(*) FROM tenant_s1.users").fetchone()[0] == 1, "data stays"
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT tenancy.suspend('s1')")
    db.execute("SELECT tenancy.resume('s1')")
    assert as_role(db, role, "SELECT count(*) FROM tenant_s1.users")[0][0] == 1
    assert db.execute(PRIVS, ("tenant_s1", role)).fetchall() == before
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT tenancy.resume('s1')")
    # by id too
    tid = db.execute("SELECT id FROM tenancy.tenants WHERE slug = 's1'").fetchone()[0]
    assert db.execute("SELECT status::text FROM tenancy.suspend(%s::uuid)", (tid,)).fetchone()[0] == "suspended"


def test_drop_keeps_a_tombstone_and_frees_everything(db):
    db.execute("SELECT tenancy.provision('tomb1')")
    role = role_of(db, "tomb1")
    assert db.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 1
    row = db.execute("SELECT status::text, dropped_at IS NOT NULL FROM tenancy.drop_tenant('tomb1')").fetchone()
    assert row == ("dropped", True)
    assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_tomb1'").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0] == 0
    wait_for(lambda: db.execute(r"SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenancy\_trash\_%'").fetchone()[0] == 0,
             what="the dropped schema to be removed")
    actor, action = db.execute("SELECT actor, action FROM tenancy.audit_log WHERE tenant_slug = 'tomb1' ORDER BY id DESC LIMIT 1").fetchone()
    assert (actor, action) == ("postgres", "drop")
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT tenancy.provision('tomb1')")
    with pytest.raises(errors.UndefinedObject):
        db.execute("SELECT tenancy.drop_tenant('never_was')")


def test_archive_and_restore(db):
    db.execute("SELECT tenancy.provision('k1')")
    db.execute("INSERT INTO tenant_k1.users (email) VALUES ('a@k1.io')")
    assert db.execute("SELECT status::text FROM tenancy.drop_tenant('k1', keep_data => true)").fetchone()[0] == "archived"
    assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_k1'").fetchone()[0] == 0
    with pytest.raises(errors.InsufficientPrivilege):
        as_role(db, role_of(db, "k1"), "SELECT count(*) FROM tenancy_arch_k1.users")
    db.execute("SELECT tenancy.resume('k1')")
    assert as_role(db, role_of(db, "k1"), "SELECT count(*) FROM tenant_k1.users")[0][0] == 1


def test_drop_of_a_200_table_tenant(db):
    spec = {"tables": [f"CREATE TABLE t{i} (id bigint PRIMARY KEY, v text)" for i in range(200)]}
    db.execute("SELECT tenancy.register_template('wide', %s)", (json.dumps(spec),))
    db.execute("SELECT tenancy.provision('wide1', NULL, 'wide')")
    db.execute("SELECT tenancy.drop_tenant('wide1')")
    wait_for(lambda: db.execute(r"SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenancy\_trash\_%'").fetchone()[0] == 0,
             what="the 200-table schema to be removed")
    assert db.execute("SELECT count(*) FROM pg_class WHERE relname ~ '^t[0-9]+$'").fetchone()[0] == 0


def test_drop_of_a_tenant_with_views(db):
    """A view (and a materialized view) that depends on no table of the
    schema, made after one: the worker's chunked drop once ran DROP TABLE on
    it (42809) and retried that chunk forever (a hostile review, 2026-12-06)."""
    spec = {"tables": ["CREATE TABLE t (id int)", "CREATE VIEW v AS SELECT 1 AS x",
                       "CREATE MATERIALIZED VIEW mv AS SELECT 2 AS y"]}
    db.execute("SELECT tenancy.register_template('viewed', %s)", (json.dumps(spec),))
    db.execute("SELECT tenancy.provision('viewed1', NULL, 'viewed')")
    db.execute("SELECT tenancy.drop_tenant('viewed1')")
    wait_for(lambda: db.execute(r"SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenancy\_trash\_%'").fetchone()[0] == 0,
             timeout=30, what="the schema with views to be removed")


def test_bulk_update_all_or_nothing_and_merge(db):
    db.execute("SELECT tenancy.provision('u1'), tenancy.provision('u2')")
    db.execute("""SELECT tenancy.bulk_update(ARRAY['u1', 'u2'], '{"settings": {"tz": "UTC", "beta": true}, "max_users": 10}')""")
    n = db.execute("""SELECT tenancy.bulk_update(ARRAY['u1'], '{"settings": {"beta": null, "lang": "fr"}, "features": {"sso": true}, "name": "U One"}')""").fetchone()[0]
    assert n == 1
    assert db.execute("SELECT name, settings, features, max_users FROM tenancy.tenants WHERE slug = 'u1'").fetchone() == \
        ("U One", {"tz": "UTC", "lang": "fr"}, {"sso": True}, 10)
    with pytest.raises(errors.UndefinedObject):
        db.execute("""SELECT tenancy.bulk_update(ARRAY['u1', 'ghost'], '{"name": "changed"}')""")
    assert db.execute("SELECT name FROM tenancy.tenants WHERE slug = 'u1'").fetchone()[0] == "U One"
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("""SELECT tenancy.bulk_update(ARRAY['u1'], '{"colour": "blue"}')""")
    # a failure half-way (a duplicate domain) leaves every tenant as it was
    db.execute("""SELECT tenancy.bulk_update(ARRAY['u2'], '{"domain": "u.example.com"}')""")
    with pytest.raises(errors.UniqueViolation):
        db.execute("""SELECT tenancy.bulk_update(ARRAY['u1', 'u2'], '{"domain": "u.example.com", "max_users": 99}')""")
    assert db.execute("SELECT max(max_users) FROM tenancy.tenants").fetchone()[0] == 10
    db.execute("""SELECT tenancy.bulk_update(ARRAY['u1', 'u2'], '{"status": "suspended"}')""")
    assert db.execute("SELECT count(*) FROM tenancy.tenants WHERE status = 'suspended'").fetchone()[0] == 2
    with pytest.raises(errors.InsufficientPrivilege):
        as_role(db, role_of(db, "u1"), "SELECT 1 FROM tenant_u1.users")


def test_fleet_migration_500_tenants_3_fail(db):
    db.execute("SELECT tenancy.register_template('fleet', %s)",
               (json.dumps({"tables": ["CREATE TABLE items (id int PRIMARY KEY, sku text)"]}),))
    batch = db.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')",
                       (batch_of("f", 500, template="fleet"),)).fetchone()[0]
    assert wait_batch(db, batch, "10 min") == "completed"
    for slug in ("f17", "f250", "f499"):  # data the new unique index will refuse
        db.execute(f"INSERT INTO tenant_{slug}.items VALUES (1, 'dup'), (2, 'dup')")
    v2 = {"tables": ["CREATE TABLE items (id int PRIMARY KEY, sku text, price numeric)"],
          "indexes": ["CREATE UNIQUE INDEX items_sku_key ON items (sku)"],
          "migrations": ["ALTER TABLE items ADD COLUMN price numeric", "CREATE UNIQUE INDEX items_sku_key ON items (sku)"]}
    assert db.execute("SELECT tenancy.register_template('fleet', %s)", (json.dumps(v2),)).fetchone()[0] == 2
    run1 = db.execute("SELECT tenancy.migrate('fleet', 2, '{\"max_concurrent\": 4}')").fetchone()[0]
    assert wait_batch(db, run1, "10 min") == "partially_completed"
    versions = dict(db.execute("SELECT template_version, count(*) FROM tenancy.tenants GROUP BY 1").fetchall())
    assert versions == {2: 497, 1: 3}
    failed = db.execute("SELECT slug, last_sqlstate, last_error FROM tenancy.batch_items WHERE batch_id = %s AND status = 'failed' ORDER BY slug",
                        (run1,)).fetchall()
    assert [f[0] for f in failed] == ["f17", "f250", "f499"]
    assert all(f[1] == "23505" and "migration statement 2 of 2" in f[2] for f in failed)
    # several tenants to a worker transaction (the results of one are written
    # by one statement of it), a failed one not undoing the others
    transactions = db.execute("SELECT count(DISTINCT xmin::text) FROM tenancy.batch_items WHERE batch_id = %s",
                              (run1,)).fetchone()[0]
    assert transactions <= 250, f"500 tenants migrated in {transactions} transactions"
    # the failed tenants are wholly at version 1: no price column either
    assert db.execute("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'tenant_f17' AND column_name = 'price'").fetchone()[0] == 0
    # a migrated tenant matches a fresh version-2 schema
    assert db.execute("SELECT tenancy.health('f1')->'missing'").fetchone()[0] == []
    assert db.execute("SELECT tenancy.health('f1')->'extra'").fetchone()[0] == []
    # a second run queues only the 3 that are behind; after a fix, none at all
    run2 = db.execute("SELECT tenancy.migrate('fleet', 2)").fetchone()[0]
    assert db.execute("SELECT total FROM tenancy.batches WHERE id = %s", (run2,)).fetchone()[0] == 3
    assert wait_batch(db, run2) == "failed"
    for slug in ("f17", "f250", "f499"):
        db.execute(f"DELETE FROM tenant_{slug}.items WHERE id = 2")
    run3 = db.execute("SELECT tenancy.migrate('fleet', 2)").fetchone()[0]
    assert wait_batch(db, run3) == "completed"
    run4 = db.execute("SELECT tenancy.migrate('fleet', 2)").fetchone()[0]
    assert db.execute("SELECT total, status::text FROM tenancy.batches WHERE id = %s", (run4,)).fetchone() == (0, "completed")
    assert db.execute("SELECT count(*) FROM tenancy.tenants WHERE template_version = 2").fetchone()[0] == 500


def test_migration_bad_input(db):
    db.execute("SELECT tenancy.provision('mg1')")
    with pytest.raises(errors.InvalidParameterValue, match="has no version 9"):
        db.execute("SELECT tenancy.migrate('default', 9)")
    with pytest.raises(errors.UndefinedObject):
        db.execute("SELECT tenancy.migrate('nope', 1)")
    db.execute("""SELECT tenancy.register_template('default', (SELECT spec || '{"description": "v2"}' FROM tenancy.templates WHERE name = 'default'))""")
    db.execute("""SELECT tenancy.bulk_update(ARRAY['mg1'], '{"template_version": 2}')""")
    wait_for(lambda: db.execute("SELECT template_version FROM tenancy.tenants WHERE slug = 'mg1'").fetchone()[0] == 2,
             what="the migration")
    with pytest.raises(errors.InvalidParameterValue, match="older"):
        db.execute("""SELECT tenancy.bulk_update(ARRAY['mg1'], '{"template_version": 1}')""")


def test_health_of_a_tenant(db):
    db.execute("SELECT tenancy.provision('h1')")
    h = db.execute("SELECT tenancy.health('h1')").fetchone()[0]
    assert (h["score"], h["missing"], h["extra"], h["schema_present"]) == (100, [], [], True)
    db.execute("DROP TABLE tenant_h1.audit_events")
    db.execute("ALTER TABLE tenant_h1.users ADD COLUMN nickname text")
    h = db.execute("SELECT tenancy.health('h1')").fetchone()[0]
    assert "table audit_events" in h["missing"] and "column users.nickname text" in h["extra"]
    assert h["score"] < 100 and len(h["reasons"]) == 2
    db.execute("DROP SCHEMA tenant_h1 CASCADE")
    assert db.execute("SELECT tenancy.health('h1')->'score'").fetchone()[0] == 0


def test_tenancy_admin_runs_the_lifecycle(db, fresh_db):
    ops = "ops_" + uuid.uuid4().hex[:8]
    nobody = "nobody_" + uuid.uuid4().hex[:8]
    admin = db.execute("SELECT tenancy.admin_role()").fetchone()[0]
    assert admin == f"tenancy_admin_{db_oid(db)}"
    db.execute(f'CREATE ROLE "{ops}" LOGIN IN ROLE "{admin}"')
    db.execute(f'CREATE ROLE "{nobody}" LOGIN')
    try:
        with connect(fresh_db, autocommit=True, user=ops) as c:
            assert c.execute("SELECT slug FROM tenancy.provision('byops')").fetchone()[0] == "byops"
            c.execute("SELECT tenancy.suspend('byops')")
            c.execute("SELECT tenancy.resume('byops')")
            assert c.execute("SELECT actor FROM tenancy.audit_log WHERE action = 'resume'").fetchone()[0] == ops
            c.execute("SELECT tenancy.drop_tenant('byops')")
        with connect(fresh_db, autocommit=True, user=nobody) as c:
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute("SELECT tenancy.provision('sneaky')")
    finally:
        db.execute(f'DROP ROLE "{ops}"')
        db.execute(f'DROP ROLE "{nobody}"')
