"""Storage quotas enforced: a tenant that refresh_metrics finds over its
max_storage_bytes has its writes refused (53400) until it is under again,
reads and deletes still working; checked as the tenant's own login."""

import json

import pytest
from psycopg import errors

from conftest import connect, grant_tenant


def audit(db, slug):
    return [r[0] for r in db.execute("SELECT action FROM tenancy.audit_log WHERE tenant_slug = %s "
                                     "AND action LIKE 'quota%%' ORDER BY id", (slug,)).fetchall()]


def test_a_schema_tenant_over_its_quota_reads_but_does_not_write(db, fresh_db, login):
    db.execute("SELECT tenancy.provision('q_big', NULL, 'default', '{\"max_storage_bytes\": 1000000}')")
    db.execute("SELECT tenancy.provision('q_small', NULL, 'default', '{\"max_storage_bytes\": 1000000}')")
    grant_tenant(db, login, "q_big")
    grant_tenant(db, login, "q_small")
    with connect(fresh_db, user=login, autocommit=True) as t:
        # a session that read the (empty) list of marked tenants before the flip
        t.execute("SELECT tenancy.set_tenant('q_big', false)")
        t.execute("INSERT INTO users (email) VALUES ('first@x')")
        t.execute("INSERT INTO users (email, display_name) SELECT 'u' || g || '@x', repeat('x', 500) "
                  "FROM generate_series(1, 4000) g")
        db.execute("SELECT tenancy.refresh_metrics()")
        assert db.execute("SELECT over_quota_since IS NOT NULL FROM tenancy.tenants WHERE slug = 'q_big'").fetchone()[0]
        assert db.execute("SELECT over_quota_since IS NULL FROM tenancy.tenants WHERE slug = 'q_small'").fetchone()[0]
        assert audit(db, "q_big") == ["quota_exceeded"]

        with pytest.raises(errors.ConfigurationLimitExceeded, match='tenant "q_big" is over its storage quota'):
            t.execute("INSERT INTO users (email) VALUES ('more@x')")
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("UPDATE users SET display_name = 'y' WHERE email = 'first@x'")
        with pytest.raises(errors.ConfigurationLimitExceeded):
            with t.cursor().copy("COPY users (email) FROM STDIN") as cp:
                cp.write_row(("copied@x",))
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("INSERT INTO items (owner_id, title) SELECT id, 'i' FROM users LIMIT 1")
        # reads, row locks and deletes still work
        assert t.execute("SELECT count(*) FROM users").fetchone()[0] == 4001
        with t.transaction():
            t.execute("SELECT * FROM users WHERE email = 'first@x' FOR UPDATE")
        # another tenant of the same login is not held back
        t.execute("SELECT tenancy.set_tenant('q_small', false)")
        t.execute("INSERT INTO users (email) VALUES ('ok@x')")
        t.execute("SELECT tenancy.set_tenant('q_big', false)")
        health = db.execute("SELECT tenancy.health('q_big')").fetchone()[0]
        assert health["writes_refused_since"] is not None
        assert any("writes are refused" in r for r in health["reasons"]), health

        # under again: deleted and vacuumed, and the next refresh allows writes
        t.execute("DELETE FROM users WHERE display_name IS NOT NULL")
        db.execute("VACUUM tenant_q_big.users")
        db.execute("SELECT tenancy.refresh_metrics()")
        assert audit(db, "q_big") == ["quota_exceeded", "quota_restored"]
        t.execute("INSERT INTO users (email) VALUES ('again@x')")

        # over again, then the quota raised: writes allowed at once
        t.execute("INSERT INTO users (email, display_name) SELECT 'v' || g || '@x', repeat('x', 500) "
                  "FROM generate_series(1, 4000) g")
        db.execute("SELECT tenancy.refresh_metrics()")
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("INSERT INTO users (email) VALUES ('more@x')")
        db.execute("SELECT tenancy.bulk_update(ARRAY['q_big'], '{\"max_storage_bytes\": 100000000}')")
        t.execute("INSERT INTO users (email) VALUES ('raised@x')")
        assert audit(db, "q_big") == ["quota_exceeded", "quota_restored", "quota_exceeded", "quota_restored"]


def test_a_shared_tenant_over_its_quota(db, fresh_db, login):
    ids = {}
    for slug in ("qs_big", "qs_small"):
        ids[slug] = db.execute("SELECT id FROM tenancy.provision(%s, NULL, 'default', %s)",
                               (slug, json.dumps({"isolation": "shared", "max_storage_bytes": 200000}))).fetchone()[0]
    db.execute("INSERT INTO shared_default.users (tenant_id, email, display_name) "
               "SELECT %s, 'u' || g || '@x', repeat('x', 500) FROM generate_series(1, 3000) g", (ids["qs_big"],))
    db.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'one@x')", (ids["qs_small"],))
    db.execute("ANALYZE shared_default.users")
    db.execute("SELECT tenancy.refresh_metrics()")
    over = dict(db.execute("SELECT slug, over_quota_since IS NOT NULL FROM tenancy.tenants").fetchall())
    assert over == {"qs_big": True, "qs_small": False}
    grant_tenant(db, login, "qs_big")
    grant_tenant(db, login, "qs_small")
    with connect(fresh_db, user=login, autocommit=True) as t:
        t.execute("SELECT tenancy.set_tenant('qs_big', false)")
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'more@x')", (ids["qs_big"],))
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("UPDATE shared_default.users SET email = 'moved@x' WHERE email = 'u1@x'")
        assert t.execute("SELECT count(*) FROM shared_default.users").fetchone()[0] == 3000
        assert t.execute("DELETE FROM shared_default.users WHERE email = 'u2@x'").rowcount == 1
        t.execute("SELECT tenancy.set_tenant('qs_small', false)")
        t.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'fine@x')", (ids["qs_small"],))
    health = db.execute("SELECT tenancy.health('qs_big')").fetchone()[0]
    assert health["writes_refused_since"] is not None and health["score"] <= 70, health


def test_an_error_inside_the_quota_lookup_exempts_nothing(db, fresh_db, login):
    # hostile review: a stack-depth error raised while the session first read
    # the list of tenants over their quota left it exempt for good
    tid = db.execute("SELECT id FROM tenancy.provision('q_deep', NULL, 'default', "
                     "'{\"isolation\": \"shared\", \"max_storage_bytes\": 1}')").fetchone()[0]
    db.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'a@x')", (tid,))
    db.execute("SELECT tenancy.refresh_metrics()")
    grant_tenant(db, login, "q_deep")
    with connect(fresh_db, user=login, autocommit=True) as t:
        t.execute("SELECT tenancy.set_tenant('q_deep', false)")
        t.execute("""CREATE FUNCTION pg_temp.g(n int) RETURNS int LANGUAGE plpgsql AS $$
                     BEGIN
                         IF n = 0 THEN
                             INSERT INTO shared_default.users (tenant_id, email) VALUES (tenancy.current_tenant_id(), 'deep@x');
                             RETURN 0;
                         END IF;
                         RETURN pg_temp.g(n - 1);
                     END $$""")
        # from deeper than the stack allows to shallower, until the insert
        # itself is reached: at some depth the error lands inside the lookup
        t.execute("""DO $$
                     DECLARE st text; ctx text;
                     BEGIN
                         FOR n IN REVERSE 2000..1 LOOP
                             BEGIN
                                 PERFORM pg_temp.g(n);
                             EXCEPTION WHEN OTHERS THEN
                                 GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, ctx = PG_EXCEPTION_CONTEXT;
                                 EXIT WHEN st = '53400' OR ctx LIKE '%INSERT INTO shared_default%';
                             END;
                         END LOOP;
                     END $$""")
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'b@x')", (tid,))
    assert db.execute("SELECT count(*) FROM shared_default.users WHERE tenant_id = %s", (tid,)).fetchone()[0] == 1


def test_a_tenant_set_inside_the_statement_is_held_to_its_quota(db, fresh_db, login):
    # hostile review: the check read the session's tenant before the rows
    # were made, and a subquery could set the tenant after it
    ids = {}
    for slug, quota in (("q_in", 1), ("q_ok", 100000000)):
        ids[slug] = db.execute("SELECT id FROM tenancy.provision(%s, NULL, 'default', %s)",
                               (slug, json.dumps({"isolation": "shared", "max_storage_bytes": quota}))).fetchone()[0]
        db.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'a@x')", (ids[slug],))
    db.execute("SELECT tenancy.refresh_metrics()")
    grant_tenant(db, login, "q_in")
    grant_tenant(db, login, "q_ok")
    with connect(fresh_db, user=login, autocommit=True) as t:
        # no tenant when the statement starts
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("INSERT INTO shared_default.users (tenant_id, email) "
                      "SELECT tenancy.current_tenant_id(), 'past' || g || '@x' "
                      "FROM (SELECT tenancy.set_tenant('q_in', true) OFFSET 0) ctx, generate_series(1, 3) g")
        # a tenant under its quota when it starts, one over it by its rows
        t.execute("SELECT tenancy.set_tenant('q_ok', false)")
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("INSERT INTO shared_default.users (tenant_id, email) "
                      "SELECT tenancy.current_tenant_id(), 'past' || g || '@x' "
                      "FROM (SELECT tenancy.set_tenant('q_in', true) OFFSET 0) ctx, generate_series(1, 3) g")
        t.execute("SELECT tenancy.set_tenant('q_ok', false)")
        t.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'fine@x')", (ids["q_ok"],))
    assert db.execute("SELECT count(*) FROM shared_default.users WHERE tenant_id = %s", (ids["q_in"],)).fetchone()[0] == 1
