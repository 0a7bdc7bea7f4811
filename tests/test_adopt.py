"""Uninstalling never loses a tenant: DROP EXTENSION tenancy leaves schemas,
shared rows and roles in place, says so, saves the catalog outside the
extension, and tenancy.adopt_schemas() takes everything back."""

import psycopg
import pytest
from psycopg import errors

from conftest import connect, wait_for

CATALOG = """SELECT to_jsonb(t) - 'updated_at' FROM tenancy.tenants t ORDER BY slug"""


def notices_of(conn):
    got = []
    conn.add_notice_handler(lambda d: got.append((d.message_primary, d.message_hint)))
    return got


def test_drop_extension_keeps_tenants_and_adopt_takes_them_back(db, fresh_db):
    db.execute("""SELECT tenancy.register_template('notes', '{"tables": ["CREATE TABLE notes (id int PRIMARY KEY, body text)"]}')""")
    db.execute("SELECT tenancy.provision('keep_a', 'Keep A', 'default', '{\"max_users\": 5}')")
    db.execute("SELECT tenancy.provision('keep_notes', NULL, 'notes')")
    db.execute("""SELECT tenancy.provision('keep_s1', NULL, 'default', '{"isolation": "shared"}')""")
    db.execute("""SELECT tenancy.provision('keep_s2', NULL, 'default', '{"isolation": "shared"}')""")
    db.execute("SELECT tenancy.provision('keep_arch')")
    db.execute("SELECT tenancy.drop_tenant('keep_arch', keep_data => true)")
    db.execute("SELECT tenancy.provision('gone')")
    db.execute("SELECT tenancy.drop_tenant('gone')")
    db.execute("INSERT INTO tenant_keep_notes.notes VALUES (1, 'kept')")
    for slug in ("keep_s1", "keep_s2"):
        db.execute("SELECT tenancy.set_tenant(%s, false)", (slug,))
        db.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (tenancy.current_tenant_id(), %s)", (slug + "@x",))
    db.execute("RESET ALL")
    db.execute("SELECT tenancy.set_pool_size('default', 1)")
    wait_for(lambda: db.execute("SELECT ready FROM tenancy.pool_status WHERE template = 'default'").fetchone()[0] == 1,
             what="a pooled schema")
    before = db.execute(CATALOG).fetchall()
    role = db.execute("SELECT role_name FROM tenancy.tenants WHERE slug = 'keep_s1'").fetchone()[0]

    # shared tables' policies depend on the extension: a plain DROP refuses
    # and changes nothing
    with pytest.raises(errors.DependentObjectsStillExist):
        db.execute("DROP EXTENSION tenancy")
    assert db.execute("SELECT to_regnamespace('tenancy_saved')").fetchone()[0] is None
    notices = notices_of(db)
    db.execute("DROP EXTENSION tenancy CASCADE")
    saved = [n for n in notices if n[0].startswith("tenancy:")]
    assert saved and "3 tenant schema(s) and 2 shared tenant(s) stay in place" in saved[0][0], notices
    assert "adopt_schemas()" in saved[0][1]

    # everything is still there, and shared rows fail closed without policies
    assert db.execute("SELECT body FROM tenant_keep_notes.notes").fetchall() == [("kept",)]
    assert db.execute("SELECT count(*) FROM shared_default.users").fetchone()[0] == 2
    with db.transaction():
        db.execute(f'SET LOCAL ROLE "{role}"')
        assert db.execute("SELECT count(*) FROM shared_default.users").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM tenancy_saved.catalog WHERE kind = 'tenant'").fetchone()[0] == 6

    notices.clear()
    db.execute("CREATE EXTENSION tenancy")
    assert any("tenancy_saved.catalog" in n[0] for n in notices), notices
    adopted = db.execute("SELECT slug, isolation, status::text, result FROM tenancy.adopt_schemas() ORDER BY slug").fetchall()
    assert adopted == [
        ("gone", "schema", "dropped", "adopted (tombstone)"),
        ("keep_a", "schema", "active", "adopted"),
        ("keep_arch", "schema", "archived", "adopted"),
        ("keep_notes", "schema", "active", "adopted"),
        ("keep_s1", "shared", "active", "adopted"),
        ("keep_s2", "shared", "active", "adopted"),
    ]
    assert db.execute(CATALOG).fetchall() == before
    assert db.execute("SELECT to_regnamespace('tenancy_saved')").fetchone()[0] is None
    # the pool's leftover schema is gone and the worker builds a new one
    assert db.execute("SELECT size FROM tenancy.pool_settings WHERE template = 'default'").fetchone()[0] == 1
    wait_for(lambda: db.execute("SELECT ready FROM tenancy.pool_status WHERE template = 'default'").fetchone()[0] == 1,
             what="the pool refilled after adoption")
    assert db.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenancy\\_pool\\_%'").fetchone()[0] == 1

    # tenants work as before: their data, their isolation, their health
    db.execute("SELECT tenancy.set_tenant('keep_s1', false)")
    assert db.execute("SELECT email FROM shared_default.users WHERE tenant_id = tenancy.current_tenant_id()").fetchall() == [("keep_s1@x",)]
    db.execute("SELECT tenancy.set_tenant('keep_notes', false)")
    assert db.execute("SELECT body FROM notes").fetchall() == [("kept",)]
    db.execute("RESET ALL")
    assert db.execute("SELECT count(*) FROM tenancy.rls_audit()").fetchone()[0] == 0
    assert db.execute("SELECT tenancy.health('keep_a')->'score'").fetchone()[0] == 100
    assert db.execute("SELECT tenancy.health('keep_notes')->'score'").fetchone()[0] == 100
    db.execute("SELECT tenancy.resume('keep_arch')")
    with pytest.raises(errors.UniqueViolation):
        db.execute("SELECT tenancy.provision('keep_a')")

    with pytest.raises(errors.UndefinedTable):
        db.execute("SELECT * FROM tenancy.adopt_schemas()")


def test_schema_only_database_drops_without_cascade_and_other_drops_save_nothing(db):
    db.execute("CREATE EXTENSION pg_trgm")
    db.execute("DROP EXTENSION pg_trgm")
    assert db.execute("SELECT to_regnamespace('tenancy_saved')").fetchone()[0] is None
    db.execute("SELECT tenancy.provision('solo')")
    db.execute("DROP EXTENSION tenancy")
    assert db.execute("SELECT to_regnamespace('tenant_solo')").fetchone()[0] is not None
    db.execute("CREATE EXTENSION tenancy")
    assert db.execute("SELECT slug, result FROM tenancy.adopt_schemas()").fetchall() == [("solo", "adopted")]


def test_adopt_is_for_superusers(db):
    admin = db.execute("SELECT tenancy.admin_role()").fetchone()[0]
    db.execute(f'CREATE ROLE adopt_tester LOGIN IN ROLE "{admin}"')
    try:
        with db.transaction():
            db.execute("SET LOCAL ROLE adopt_tester")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute("SELECT * FROM tenancy.adopt_schemas()")
    finally:
        db.execute("DROP ROLE adopt_tester")


def test_a_second_drop_before_adopting_keeps_the_first_save(db):
    db.execute("SELECT tenancy.provision('first_gen')")
    db.execute("DROP EXTENSION tenancy")
    db.execute("CREATE EXTENSION tenancy")
    # not adopted; a tenant of the new install, then a second drop
    db.execute("SELECT tenancy.provision('second_gen')")
    db.execute("DROP EXTENSION tenancy")
    db.execute("CREATE EXTENSION tenancy")
    rows = db.execute("SELECT slug, result FROM tenancy.adopt_schemas() ORDER BY slug").fetchall()
    assert rows == [("first_gen", "adopted"), ("second_gen", "adopted")]
