"""Shared-table tenants: isolation checked as the tenants' own roles and as
an application role that serves many tenants over one pooled connection."""

import os
import random
import threading
import time
import uuid

import pytest
from psycopg import errors

from conftest import SHARED, connect, seed, shared_tenant


@pytest.fixture
def app_role(db):
    """A login role like an application's: no superuser, no BYPASSRLS."""
    name = "app_" + uuid.uuid4().hex[:8]
    db.execute(f'CREATE ROLE "{name}" LOGIN')
    yield name
    db.execute(f'DROP OWNED BY "{name}"')
    db.execute(f'DROP ROLE "{name}"')


def role_of(db, slug):
    """The tenant's role: t<database oid>_<slug>."""
    return db.execute("SELECT role_name FROM tenancy.tenants WHERE slug = %s", (slug,)).fetchone()[0]


def db_role(db, kind):
    """One of this database's own roles: tenancy_<kind>_<database oid>."""
    oid = db.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    return f"tenancy_{kind}_{oid}"


def as_tenant(db, slug):
    db.execute(f'SET ROLE "{role_of(db, slug)}"')


def test_every_shared_table_is_isolated(db):
    a, b = shared_tenant(db, "rls_a"), shared_tenant(db, "rls_b")
    seed(db, a)
    seed(db, b)
    tables = [r[0] for r in db.execute(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind = 'r' ORDER BY 1",
        (SHARED,)).fetchall()]
    assert tables == ["audit_events", "items", "users"], "a new shared table needs its cases here"
    as_tenant(db, "rls_a")
    try:
        # no tenant set: nothing visible, nothing writable
        for t in tables:
            assert db.execute(f"SELECT count(*) FROM {SHARED}.{t}").fetchone()[0] == 0
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute(f"INSERT INTO {SHARED}.audit_events (tenant_id, action) VALUES (%s, 'x')", (a,))
        db.execute("SELECT tenancy.set_tenant('rls_a', false)")
        for t in tables:
            ids = {r[0] for r in db.execute(f"SELECT tenant_id FROM {SHARED}.{t}").fetchall()}
            assert ids == {a}, t
            assert db.execute(f"UPDATE {SHARED}.{t} SET tenant_id = tenant_id WHERE tenant_id = %s", (b,)).rowcount == 0
            assert db.execute(f"DELETE FROM {SHARED}.{t} WHERE tenant_id = %s", (b,)).rowcount == 0
            with pytest.raises(errors.InsufficientPrivilege):
                db.execute(f"UPDATE {SHARED}.{t} SET tenant_id = %s", (b,))
        uid_b = None
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute(f"INSERT INTO {SHARED}.users (tenant_id, email) VALUES (%s, 'evil@b')", (b,))
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute(f"INSERT INTO {SHARED}.audit_events (tenant_id, action) VALUES (%s, 'evil')", (b,))
        # its own rows: fine
        db.execute(f"INSERT INTO {SHARED}.audit_events (tenant_id, action) VALUES (tenancy.current_tenant_id(), 'ok')")
        # another tenant cannot be set by this role
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute("SELECT tenancy.set_tenant('rls_b')")
        # nor by setting the variable behind it
        with pytest.raises(errors.InsufficientPrivilege):
            db.execute("SET tenancy.tenant_id = %s" % f"'{b}'")
        db.execute("SELECT tenancy.set_tenant(NULL, false)")
    finally:
        db.execute("RESET ROLE")
    assert db.execute(f"SELECT count(*) FROM {SHARED}.audit_events WHERE tenant_id = %s", (b,)).fetchone()[0] == 3


def test_suspended_tenant_cannot_be_set(db):
    shared_tenant(db, "rls_s")
    db.execute("SELECT tenancy.suspend('rls_s')")
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT tenancy.set_tenant('rls_s')")
    with pytest.raises(errors.UndefinedObject):
        db.execute("SELECT tenancy.set_tenant('nobody_here')")


def test_pooled_connection_1000_transactions(db, fresh_db, app_role):
    tenants = {}
    for i in range(20):
        slug = f"pool{i}"
        tenants[slug] = shared_tenant(db, slug)
        seed(db, tenants[slug], n=2)
        db.execute(f'GRANT "{role_of(db, slug)}" TO "{app_role}"')
    order = list(tenants) * 50
    random.Random(7).shuffle(order)
    leaks = 0
    with connect(fresh_db, user=app_role) as c:  # one connection, 1000 transactions
        for slug in order:
            with c.transaction():
                c.execute("SELECT tenancy.set_tenant(%s, true)", (slug,))
                seen = c.execute(f"SELECT tenant_id FROM {SHARED}.users").fetchall()
                leaks += sum(1 for (t,) in seen if t != tenants[slug])
                assert len(seen) == 2
            # committed: the context went with the transaction
            assert c.execute("SELECT tenancy.current_tenant_id()").fetchone()[0] is None
            c.commit()
    assert leaks == 0


def test_eight_sessions_mixed_load(db, fresh_db, app_role):
    seconds = float(os.environ.get("TENANCY_RLS_SECONDS", "30"))
    slugs = [f"load{i}" for i in range(8)]
    ids = {}
    for s in slugs:
        ids[s] = shared_tenant(db, s)
        seed(db, ids[s], n=5)
        db.execute(f'GRANT "{role_of(db, s)}" TO "{app_role}"')
    foreign = [0] * 8
    ops = [0] * 8
    errs = []

    def session(k):
        slug = slugs[k]
        try:
            with connect(fresh_db, user=app_role) as c:
                c.execute("SELECT tenancy.set_tenant(%s, false)", (slug,))
                rnd = random.Random(k)
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    with c.transaction():
                        choice = rnd.random()
                        if choice < 0.4:
                            rows = c.execute(f"SELECT tenant_id FROM {SHARED}.items").fetchall()
                        elif choice < 0.6:
                            rows = c.execute(f"SELECT i.tenant_id FROM {SHARED}.items i JOIN {SHARED}.users u "
                                             "ON u.tenant_id = i.tenant_id AND u.id = i.owner_id").fetchall()
                        elif choice < 0.8:
                            rows = c.execute(f"INSERT INTO {SHARED}.items (tenant_id, owner_id, title) "
                                             f"SELECT tenant_id, id, 'new' FROM {SHARED}.users LIMIT 1 RETURNING tenant_id").fetchall()
                        elif choice < 0.9:
                            rows = c.execute(f"UPDATE {SHARED}.items SET status = 'done' WHERE id % 7 = 0 RETURNING tenant_id").fetchall()
                        else:
                            rows = c.execute(f"DELETE FROM {SHARED}.items WHERE title = 'new' AND id % 11 = 0 RETURNING tenant_id").fetchall()
                        foreign[k] += sum(1 for (t,) in rows if t != ids[slug])
                        ops[k] += 1
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))

    threads = [threading.Thread(target=session, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errs == []
    print(f"{sum(ops)} transactions in {seconds:.0f} s across 8 sessions, foreign rows seen: {sum(foreign)}")
    assert sum(foreign) == 0 and min(ops) > 0


def test_admin_sees_all_only_when_asked(db, fresh_db, app_role):
    a, b = shared_tenant(db, "adm_a"), shared_tenant(db, "adm_b")
    seed(db, a, 1)
    seed(db, b, 1)
    admin, all_tenants = db.execute("SELECT tenancy.admin_role()").fetchone()[0], db_role(db, "all_tenants")
    assert admin == db_role(db, "admin")
    db.execute(f'GRANT "{admin}" TO "{app_role}"')
    with connect(fresh_db, user=app_role, autocommit=True) as c:
        assert c.execute(f"SELECT count(*) FROM {SHARED}.users").fetchone()[0] == 0
        c.execute("SELECT tenancy.set_tenant('adm_a', false)")
        assert c.execute(f"SELECT count(*) FROM {SHARED}.users").fetchone()[0] == 1
        # the explicit switch
        c.execute(f'SET ROLE "{all_tenants}"')
        assert c.execute(f"SELECT count(*) FROM {SHARED}.users").fetchone()[0] == 2
        c.execute("RESET ROLE")
        assert c.execute(f"SELECT count(*) FROM {SHARED}.users").fetchone()[0] == 1
    # a login that serves a tenant but is not this database's admin cannot take the switch
    other = "svc_" + uuid.uuid4().hex[:8]
    db.execute(f'CREATE ROLE "{other}" LOGIN IN ROLE "{role_of(db, "adm_a")}"')
    try:
        with connect(fresh_db, user=other, autocommit=True) as c:
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(f'SET ROLE "{all_tenants}"')
    finally:
        db.execute(f'DROP ROLE "{other}"')


def test_policy_plan_uses_the_index(db):
    a = shared_tenant(db, "plan_a")
    seed(db, a, 1)
    db.execute(f"ANALYZE {SHARED}.items")
    as_tenant(db, "plan_a")
    try:
        db.execute("SELECT tenancy.set_tenant('plan_a', false)")
        db.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in db.execute(f"EXPLAIN SELECT * FROM {SHARED}.items WHERE id = 1").fetchall())
    finally:
        db.execute("RESET ROLE")
        db.execute("RESET enable_seqscan")
    # the policy's comparison is an index condition, not a filter on every row
    # (current_tenant_id() is a STABLE function of the library: evaluated once)
    assert "Index Cond: (tenant_id = tenancy.current_tenant_id())" in plan, plan
    assert not any("Filter" in line and "current_tenant_id" in line for line in plan.splitlines()), plan
    assert "Seq Scan" not in plan, plan


def test_rls_audit_finds_what_is_open(db):
    shared_tenant(db, "aud_a")
    assert db.execute("SELECT count(*) FROM tenancy.rls_audit()").fetchone()[0] == 0, "the shipped template is clean"
    db.execute("CREATE SCHEMA bad")
    db.execute("CREATE TABLE bad.no_rls (tenant_id uuid, id int)")
    db.execute("CREATE TABLE bad.not_forced (tenant_id uuid, id int PRIMARY KEY)")
    db.execute("ALTER TABLE bad.not_forced ENABLE ROW LEVEL SECURITY")
    db.execute("CREATE POLICY p ON bad.not_forced USING (tenant_id = tenancy.current_tenant_id())")
    db.execute("CREATE TABLE bad.no_policy (tenant_id uuid, id int)")
    db.execute("ALTER TABLE bad.no_policy ENABLE ROW LEVEL SECURITY")
    db.execute("ALTER TABLE bad.no_policy FORCE ROW LEVEL SECURITY")
    db.execute("CREATE TABLE bad.parent (tenant_id uuid, id int PRIMARY KEY)")
    db.execute("SELECT tenancy.enable_rls('bad.parent')")
    db.execute("CREATE TABLE bad.child (tenant_id uuid, parent_id int REFERENCES bad.parent (id))")
    db.execute("SELECT tenancy.enable_rls('bad.child')")
    bypass = "bypass_" + uuid.uuid4().hex[:6]
    db.execute(f'CREATE ROLE "{bypass}" BYPASSRLS')
    try:
        found = db.execute("SELECT coalesce(tbl::text, ''), problem FROM tenancy.rls_audit()").fetchall()
    finally:
        db.execute(f'DROP ROLE "{bypass}"')
    problems = {(t, p.split(":")[0]) for t, p in found}
    assert ("bad.no_rls", "row level security is not enabled") in problems
    assert ("bad.not_forced", "row level security is not forced") in problems
    assert ("bad.no_policy", "no policy compares tenant_id with tenancy.current_tenant_id()") in problems
    assert any(t == "bad.child" and "does not include tenant_id" in p for t, p in found)
    assert any(t == "" and bypass in p for t, p in found)
    assert not any(t == "bad.parent" for t, _ in found)


def test_shared_and_schema_tenants_side_by_side(db):
    a = shared_tenant(db, "mix_shared")
    db.execute("SELECT tenancy.provision('mix_schema')")
    seed(db, a, 2)
    h = db.execute("SELECT tenancy.health('mix_shared')").fetchone()[0]
    assert (h["isolation"], h["rows"]["users"], h["score"]) == ("shared", 2, 100)
    assert db.execute("SELECT tenancy.health('mix_schema')->'score'").fetchone()[0] == 100
    # schema tenant: set_tenant also sets search_path
    db.execute("BEGIN")
    db.execute("SELECT tenancy.set_tenant('mix_schema')")
    assert db.execute("SHOW search_path").fetchone()[0] == '"tenant_mix_schema", public'
    db.execute("ROLLBACK")
    # dropping a shared tenant removes its rows only
    other = shared_tenant(db, "mix_other")
    seed(db, other, 1)
    db.execute("SELECT tenancy.drop_tenant('mix_shared')")
    assert db.execute(f"SELECT count(*) FROM {SHARED}.users WHERE tenant_id = %s", (a,)).fetchone()[0] == 0
    assert db.execute(f"SELECT count(*) FROM {SHARED}.users WHERE tenant_id = %s", (other,)).fetchone()[0] == 1


def test_shared_tenants_in_a_batch(db):
    b = db.execute("""SELECT tenancy.provision_batch('[{"slug": "bs1", "isolation": "shared"},
                      {"slug": "bs2", "isolation": "shared"}, {"slug": "bs3"}]')""").fetchone()[0]
    assert db.execute("SELECT tenancy.wait_batch(%s)", (b,)).fetchone()[0] == "completed"
    assert dict(db.execute("SELECT slug, isolation FROM tenancy.tenants").fetchall()) == \
        {"bs1": "shared", "bs2": "shared", "bs3": "schema"}
    with pytest.raises(errors.InvalidParameterValue, match="shared_tables"):
        db.execute("""SELECT tenancy.provision_batch('[{"slug": "bs4", "isolation": "shared", "template": "trading"}]')""")
