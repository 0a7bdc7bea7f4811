"""The warm pool: schemas built ahead by the worker, claimed by provision."""

import json
import threading
import time

from psycopg import errors
import pytest

from conftest import connect, wait_for

POOLED = r"SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenancy\_pool\_%'"
READY = "SELECT coalesce((SELECT ready FROM tenancy.pool_status WHERE template = %s), 0)"

# every object of a schema, by what it is, not by its oid or its schema's name:
# owned by this database's owner role, with the same grants
OBJECTS = """
SELECT c.relname::text, c.relkind::text,
       pg_get_userbyid(c.relowner) = 'tenancy_owner_' || (SELECT oid FROM pg_database WHERE datname = current_database()) AS own,
       coalesce(pg_get_indexdef(c.oid), '') AS def,
       (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY a.attnum)
        FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) AS cols,
       coalesce((SELECT string_agg(pg_get_userbyid(x.grantee) || ' ' || x.privilege_type, ', '
                                   ORDER BY pg_get_userbyid(x.grantee), x.privilege_type)
                 FROM aclexplode(c.relacl) x), '') AS acl
FROM pg_class c WHERE c.relnamespace = %s::regnamespace
UNION ALL
SELECT conname::text, contype::text, true, pg_get_constraintdef(oid), '', '' FROM pg_constraint WHERE connamespace = %s::regnamespace
ORDER BY 1, 2
"""


def objects(db, schema):
    rows = db.execute(OBJECTS, (schema, schema)).fetchall()
    role = db.execute("SELECT role_name FROM tenancy.tenants WHERE schema_name = %s", (schema,)).fetchone()[0]
    return [tuple(str(v).replace(role, "<tenant>").replace(schema, "<schema>") for v in r) for r in rows]


def ready(db, template="default"):
    return db.execute(READY, (template,)).fetchone()[0]


def pool_is_consistent(db):
    """No pooled schema without its row, no row without its schema; and the
    same of the roles pooled schemas are built with (this database's)."""
    return db.execute(
        r"""SELECT count(*) FROM pg_namespace n FULL JOIN tenancy.pool p ON p.schema_name = n.nspname
            WHERE (n.nspname LIKE 'tenancy\_pool\_%' OR p.schema_name IS NOT NULL)
              AND (n.oid IS NULL OR p.schema_name IS NULL)"""
    ).fetchone()[0] == 0 and db.execute(
        r"""SELECT count(*) FROM (SELECT r.rolname FROM pg_roles r
                                  WHERE r.rolname LIKE 'tenancy\_pool\_' || (SELECT oid FROM pg_database
                                                                             WHERE datname = current_database()) || '\_%') r
            FULL JOIN tenancy.pool p ON p.role_name = r.rolname
            WHERE r.rolname IS NULL OR p.role_name IS NULL"""
    ).fetchone()[0] == 0


def test_pool_fills_claims_and_refills(db):
    assert db.execute("SELECT tenancy.set_pool_size('default', 5)").fetchone()[0] == 5
    wait_for(lambda: ready(db) == 5, what="the pool to fill")
    assert db.execute("SELECT tenancy.health()->'pool'").fetchone()[0] == {"default": 5}
    row = db.execute("SELECT slug, schema_name::text, status::text FROM tenancy.provision('pooled')").fetchone()
    assert row == ("pooled", "tenant_pooled", "active")
    assert db.execute(
        "SELECT details->>'from_pool' FROM tenancy.audit_log WHERE action = 'provision' AND tenant_slug = 'pooled'"
    ).fetchone()[0] == "true"
    wait_for(lambda: ready(db) == 5, what="the pool to refill")
    # pool: false builds even when the pool has schemas
    db.execute("""SELECT tenancy.provision('built', options => '{"pool": false}')""")
    assert db.execute(
        "SELECT details->>'from_pool' FROM tenancy.audit_log WHERE action = 'provision' AND tenant_slug = 'built'"
    ).fetchone()[0] == "false"
    # a claimed schema is the same as a built one, its tenant's grants too
    pooled = objects(db, "tenant_pooled")
    assert pooled == objects(db, "tenant_built")
    assert all(r[2] == "True" for r in pooled), pooled
    # its role was built with the schema and renamed: marked as this tenant's
    assert "tenant, schema tenant_pooled" in db.execute(
        "SELECT shobj_description(r.oid, 'pg_authid') FROM pg_roles r JOIN tenancy.tenants t ON t.role_name = r.rolname "
        "WHERE t.slug = 'pooled'").fetchone()[0]
    assert ("users", "r") in {r[:2] for r in pooled} and \
        next(r[5] for r in pooled if r[:2] == ("users", "r")).count("<tenant> ") == 4, pooled
    assert pool_is_consistent(db)


def test_new_template_version_rebuilds_the_pool(db):
    db.execute("SELECT tenancy.set_pool_size('trading', 3)")
    wait_for(lambda: ready(db, "trading") == 3, what="the pool to fill")
    db.execute("""SELECT tenancy.register_template('trading',
                  (SELECT spec || '{"description": "v2"}' FROM tenancy.templates WHERE name = 'trading'))""")
    wait_for(lambda: db.execute("SELECT count(*) FROM tenancy.pool WHERE template_version = 2").fetchone()[0] == 3
             and db.execute("SELECT count(*) FROM tenancy.pool WHERE template_version = 1").fetchone()[0] == 0,
             what="the pool to be rebuilt at version 2")
    assert db.execute("SELECT template_version FROM tenancy.provision('v2', NULL, 'trading')").fetchone()[0] == 2
    assert pool_is_consistent(db)


def test_shrinking_the_pool_drops_schemas(db):
    db.execute("SELECT tenancy.set_pool_size('default', 4)")
    wait_for(lambda: ready(db) == 4, what="the pool to fill")
    db.execute("SELECT tenancy.set_pool_size('default', 0)")
    wait_for(lambda: db.execute(POOLED).fetchone()[0] == 0, what="the pool to empty")
    assert pool_is_consistent(db)


def test_fifty_concurrent_provisions_on_a_pool_of_twenty(db, fresh_db):
    db.execute("SELECT tenancy.set_pool_size('default', 20)")
    wait_for(lambda: ready(db) == 20, what="the pool to fill")
    # hold the refill lock the worker takes (the template's pool_settings row),
    # so no schema is added while we claim
    holder = connect(fresh_db)
    holder.execute("SELECT 1 FROM tenancy.pool_settings WHERE template = 'default' FOR NO KEY UPDATE")
    try:
        errors_seen = []
        barrier = threading.Barrier(50)

        def one(i):
            try:
                with connect(fresh_db, autocommit=True) as c:
                    barrier.wait()
                    c.execute("SELECT tenancy.provision(%s)", (f"c{i}",))
            except Exception as e:  # noqa: BLE001
                errors_seen.append(repr(e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors_seen == []
        claimed = db.execute(
            "SELECT count(*) FILTER (WHERE details->>'from_pool' = 'true'), count(*) FILTER (WHERE details->>'from_pool' = 'false') "
            "FROM tenancy.audit_log WHERE action = 'provision'"
        ).fetchone()
        assert db.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 50
        assert claimed == (20, 30)
        assert ready(db) == 0
    finally:
        holder.close()
    wait_for(lambda: ready(db) == 20, what="the pool to refill")
    assert pool_is_consistent(db)


def test_no_pooled_schema_leaks_when_the_worker_is_killed_mid_refill(db, fresh_db):
    db.execute("SELECT tenancy.set_pool_size('trading', 40)")
    killed = 0
    with connect("postgres", autocommit=True) as admin:
        deadline = time.monotonic() + 60
        while ready(db, "trading") < 40 and time.monotonic() < deadline:
            for (pid,) in admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'tenancy item worker' AND datname = %s",
                (fresh_db,)).fetchall():
                killed += admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            time.sleep(0.05)
    assert killed > 0
    wait_for(lambda: ready(db, "trading") == 40, what="the pool to fill after the kills")
    assert pool_is_consistent(db)
    assert db.execute(POOLED).fetchone()[0] == 40


def test_set_pool_size_errors(db):
    with pytest.raises(errors.UndefinedObject):
        db.execute("SELECT tenancy.set_pool_size('nope', 3)")
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT tenancy.set_pool_size('default', -1)")
