"""Per-tenant activity (tenancy.tenant_activity): each top-level statement a
client runs in a tenant's context, counted in the preloaded library's shared
memory, as the tenants' own logins run them."""

import time

import pytest
from psycopg import errors

from conftest import connect, grant_tenant, wait_for


def activity(db, slug, expect=None):
    """(statements, rows) of the tenant over the periods shown; with expect,
    once they are that: a session adds its last statements to shared memory
    when it exits, a moment after the client has closed it."""
    def read():
        row = db.execute("SELECT coalesce(sum(statements), 0), coalesce(sum(rows), 0) FROM tenancy.tenant_activity "
                         "WHERE slug = %s", (slug,)).fetchone()
        return int(row[0]), int(row[1])
    if expect is not None:
        wait_for(lambda: read() == expect, timeout=10, what=f"activity {expect} of {slug}")
    return read()


@pytest.fixture
def tenants(db, login):
    db.execute("SELECT tenancy.provision('act_s')")
    db.execute("SELECT tenancy.provision('act_r', NULL, 'default', '{\"isolation\": \"shared\"}')")
    db.execute("SELECT tenancy.provision('act_q')")
    for slug in ("act_s", "act_r"):
        grant_tenant(db, login, slug)


def test_statements_time_and_rows_per_tenant(db, fresh_db, login, tenants):
    with connect(fresh_db, user=login, autocommit=True) as c:
        # a schema tenant by the search_path alone
        c.execute("SET search_path = tenant_act_s")
        c.execute("INSERT INTO users (email) VALUES ('a@s'), ('b@s'), ('c@s')")
        assert len(c.execute("SELECT * FROM users").fetchall()) == 3
        c.execute("SELECT 1")
        # an error raised inside the executor reaches the client as raised,
        # with its fields (the hooks do not catch and raise it again)
        with pytest.raises(errors.UniqueViolation) as e:
            c.execute("INSERT INTO users (email) VALUES ('a@s')")
        assert e.value.diag.constraint_name == "users_email_key" and e.value.diag.table_name == "users"
        # a shared tenant by set_tenant, in transactions as a pooler runs them
        c.execute("RESET search_path")
        for i in range(5):
            with c.transaction():
                c.execute("SELECT tenancy.set_tenant('act_r')")
                c.execute("INSERT INTO shared_default.users (tenant_id, email) "
                          "VALUES (tenancy.current_tenant_id(), %s), (tenancy.current_tenant_id(), %s)", (f"x{i}@r", f"y{i}@r"))
        assert len(c.execute("SELECT tenancy.set_tenant('act_r', false)").fetchall()) == 1
        assert len(c.execute("SELECT * FROM shared_default.users").fetchall()) == 10
        # set_tenant of a schema tenant: both ways lead to the same tenant
        c.execute("SELECT tenancy.set_tenant('act_s', false)")
        assert len(c.execute("SELECT * FROM users").fetchall()) == 3
    # a statement counts for the context it starts in: set_tenant for the
    # tenant before it (none, or act_r when act_s is set); the failed INSERT not at all
    expect = (3 + 1, 3 + 3 + 1 + 3)
    assert activity(db, "act_s", expect) == expect
    expect = (5 + 1 + 1, 5 * 2 + 10 + 1)
    assert activity(db, "act_r", expect) == expect
    assert activity(db, "act_q") == (0, 0)
    row = db.execute("SELECT period_end - period_start, total_ms > 0, max_ms <= total_ms, period_start <= now() "
                     "FROM tenancy.tenant_activity WHERE slug = 'act_r'").fetchone()
    assert row == (db.execute("SELECT interval '1 hour'").fetchone()[0], True, True, True)
    # health(tenant) and stats show it
    h = db.execute("SELECT tenancy.health('act_r')->'activity'").fetchone()[0]
    assert [p["statements"] for p in h] == [7]
    busiest = db.execute("SELECT busiest_tenants FROM tenancy.stats").fetchone()[0]
    assert {b["slug"] for b in busiest} == {"act_s", "act_r"}


def test_a_function_and_its_statements_count_once_errors_included(db, fresh_db, login, tenants):
    db.execute("""CREATE FUNCTION public.three_statements() RETURNS int LANGUAGE plpgsql AS $$
                  BEGIN PERFORM 1; PERFORM 2; RETURN (SELECT count(*) FROM users); END $$""")
    db.execute("""CREATE FUNCTION public.fails() RETURNS int LANGUAGE plpgsql AS $$
                  BEGIN PERFORM 1; RAISE EXCEPTION 'no'; END $$""")
    with connect(fresh_db, user=login, autocommit=True) as c:
        c.execute("SET search_path = tenant_act_s, public")
        c.execute("SELECT public.three_statements()")
        with pytest.raises(errors.RaiseException):
            c.execute("SELECT public.fails()")  # failed: not counted, and nothing stays nested
        c.execute("SELECT public.three_statements()")
    assert activity(db, "act_s", (2, 2)) == (2, 2)


def test_what_planning_runs_and_explain_are_not_statements(db, fresh_db, login, tenants):
    with connect(fresh_db, user=login, autocommit=True) as c:
        # the shared table's policy looks the tenant up, also while planning
        c.execute("SELECT tenancy.set_tenant('act_r', false)")
        for _ in range(3):
            c.execute("SELECT * FROM shared_default.users WHERE tenant_id = tenancy.current_tenant_id()")
        c.execute("EXPLAIN SELECT * FROM shared_default.items")
        c.execute("PREPARE q AS SELECT count(*) FROM shared_default.users")
        c.execute("EXECUTE q")
        # a schema tenant's tables named with their schema, from outside its
        # context, still count for it
        c.execute("SELECT tenancy.set_tenant(NULL, false)")
        c.execute("SET search_path = public")
        c.execute("SELECT * FROM tenant_act_s.users, tenant_act_s.items")
        # and a context dropped inside the statement does not move it
        c.execute("SELECT tenancy.set_tenant('act_r', false)")
        c.execute("WITH u AS MATERIALIZED (SELECT count(*) AS n FROM shared_default.users) "
                  "SELECT n, tenancy.set_tenant(NULL, false) FROM u")
    # act_r: the three selects, EXECUTE, the set_tenant(NULL) run as act_r, the last select
    assert activity(db, "act_r", (6, 3)) == (6, 3)
    assert activity(db, "act_s", (1, 0)) == (1, 0)


def test_a_table_moved_to_another_tenant_counts_for_it(db, fresh_db, tenants):
    # the session remembers the schema of the last table it read; moving the
    # table makes it look again
    db.execute("CREATE TABLE tenant_act_s.notes (id int)")
    with connect(fresh_db, autocommit=True, options="-c search_path=public") as c:
        c.execute("SELECT * FROM tenant_act_s.notes")
        db.execute("ALTER TABLE tenant_act_s.notes SET SCHEMA tenant_act_q")
        c.execute("SELECT * FROM tenant_act_q.notes")
        c.execute("SELECT * FROM tenant_act_q.notes")
    assert activity(db, "act_s", (1, 0)) == (1, 0)
    assert activity(db, "act_q", (2, 0)) == (2, 0)


def test_periods_roll_and_tracking_is_the_superusers_switch(db, fresh_db, login, tenants):
    with connect(fresh_db, user=login, autocommit=True) as c:
        # a tenant cannot hide its own load
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("SET tenancy.track_activity = off")
    with connect(fresh_db, autocommit=True, options="-c tenancy.track_activity=off") as c:
        c.execute("SELECT tenancy.set_tenant('act_s', false)")
        c.execute("SELECT * FROM users")
    assert activity(db, "act_s") == (0, 0)

    db.execute("ALTER SYSTEM SET tenancy.activity_period = 2")
    db.execute("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: connect(fresh_db).execute("SHOW tenancy.activity_period").fetchone()[0] == "2s",
                 what="the reload")
        with connect(fresh_db, user=login, autocommit=True) as c:
            c.execute("SET search_path = tenant_act_s")
            # statements in one period, then one in the next
            while True:
                t0 = time.time()
                if int(t0) % 2 == 0 and t0 % 1 < 0.5:  # early in a period: the three fit in it
                    break
                time.sleep(0.05)
            for _ in range(3):
                c.execute("SELECT * FROM users")
            time.sleep(2.1)
            c.execute("SELECT * FROM users")
            # a statement of no tenant, past the hand-over interval (50 ms),
            # hands this session's counts over to shared memory
            time.sleep(0.1)
            c.execute("SET search_path = public")
            c.execute("SELECT 1")
            rows = db.execute("SELECT statements, period_end - period_start FROM tenancy.tenant_activity "
                              "WHERE slug = 'act_s' ORDER BY period_start").fetchall()
            two = db.execute("SELECT interval '2 seconds'").fetchone()[0]
            assert rows == [(3, two), (1, two)]
            # two periods later, none of it is shown
            time.sleep(4.1)
            assert activity(db, "act_s") == (0, 0)
    finally:
        db.execute("ALTER SYSTEM RESET tenancy.activity_period")
        db.execute("SELECT pg_reload_conf()")


def test_who_may_read_activity(db, fresh_db, login, tenants):
    with connect(fresh_db, user=login, autocommit=True) as c:
        c.execute("SET search_path = tenant_act_s")
        c.execute("SELECT * FROM users")
        for sql in ["SELECT * FROM tenancy.tenant_activity", "SELECT * FROM tenancy.activity_counters()",
                    "SELECT busiest_tenants FROM tenancy.stats"]:
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(sql)
    db.execute(f'GRANT pg_monitor TO "{login}"')
    with connect(fresh_db, user=login, autocommit=True) as c:
        assert c.execute("SELECT slug, statements FROM tenancy.tenant_activity").fetchall() == [("act_s", 1)]
    admin = db.execute("SELECT tenancy.admin_role()").fetchone()[0]
    db.execute(f'REVOKE pg_monitor FROM "{login}"')
    db.execute(f'GRANT "{admin}" TO "{login}"')
    with connect(fresh_db, user=login, autocommit=True) as c:
        # the admin's own statements here are no tenant's
        assert c.execute("SELECT slug, statements FROM tenancy.tenant_activity").fetchall() == [("act_s", 1)]
    # another database's tenants are not shown here
    assert db.execute("SELECT count(*) FROM tenancy.activity_counters() a JOIN tenancy.tenants t ON t.id = a.tenant_id "
                      "WHERE t.slug NOT LIKE 'act_%'").fetchone()[0] == 0


def test_a_schema_someone_else_made_is_no_tenant(db, fresh_db, login, tenants):
    """Attack (a login with CREATE on the database): schemas of its own first
    on the search_path, to take the shared slots from the tenants, or named
    like a tenant that was dropped, to pass for it."""
    db.execute(f'GRANT CREATE ON DATABASE "{fresh_db}" TO "{login}"')
    db.execute("SELECT tenancy.drop_tenant('act_q')")
    with connect(fresh_db, user=login, autocommit=True) as c:
        c.execute("""DO $$ BEGIN FOR i IN 1..300 LOOP
                       EXECUTE format('CREATE SCHEMA own%s', i);
                     END LOOP; END $$""")
        for i in range(1, 301, 10):
            c.execute(f"SET search_path = own{i}")
            c.execute("SELECT 1")
        c.execute("CREATE SCHEMA tenant_act_q")
        c.execute("SET search_path = tenant_act_q")
        c.execute("SELECT pg_sleep(0.2)")
        # and the real tenant, by its schema, is still counted
        c.execute("RESET search_path")
    with connect(fresh_db, autocommit=True, options="-c search_path=tenant_act_s") as c:
        c.execute("SELECT * FROM users")
    assert activity(db, "act_s", (1, 0)) == (1, 0)
    assert db.execute("SELECT count(*) FROM tenancy.activity_counters() WHERE tenant_id IS NULL AND "
                      "schema_oid NOT IN (SELECT to_regnamespace(schema_name) FROM tenancy.tenants "
                      "WHERE schema_name IS NOT NULL)").fetchone()[0] == 0
    assert activity(db, "act_q") == (0, 0)
    health = db.execute("SELECT tenancy.health()->'activity'").fetchone()[0]
    assert health["tracking"] is True and health["untracked_statements"] == 0
