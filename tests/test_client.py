"""provision driven from a client library: parameters, errors as the driver
sees them (SQLSTATE classes), transactions, and parallel sessions."""

import threading

import psycopg
import pytest
from psycopg import errors

from conftest import connect


def test_provision_with_bound_parameters(db):
    row = db.execute(
        "SELECT slug, status::text, schema_name::text FROM tenancy.provision(%s, %s, %s, %s::jsonb)",
        ("acme", "Acme Corp", "default", '{"domain": "acme.example.com"}'),
    ).fetchone()
    assert row == ("acme", "active", "tenant_acme")
    tables = db.execute(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'tenant_acme'"
    ).fetchone()[0]
    assert tables == 3


@pytest.mark.parametrize(
    "slug",
    [
        "Robert'); DROP TABLE tenancy.tenants;--",
        'x"; DROP SCHEMA public CASCADE; --',
        "a" * 64,
        "ünïcode",
        "pg_catalog",
        "",
    ],
)
def test_hostile_slugs_are_refused_and_leave_nothing(db, slug):
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT tenancy.provision(%s)", (slug,))
    assert db.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 0
    assert db.execute("SELECT to_regclass('tenancy.tenants') IS NOT NULL").fetchone()[0]
    assert db.execute(
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'public'"
    ).fetchone()[0] == 1


def test_errors_carry_sqlstate(db):
    db.execute("SELECT tenancy.provision('dup')")
    with pytest.raises(errors.UniqueViolation) as dup:
        db.execute("SELECT tenancy.provision('dup')")
    assert dup.value.sqlstate == "23505"
    with pytest.raises(errors.UndefinedObject):
        db.execute("SELECT tenancy.provision('x1', NULL, 'nope')")
    with pytest.raises(errors.ObjectNotInPrerequisiteState) as ts:
        db.execute("SELECT tenancy.provision('x2', NULL, 'timeseries')")
    assert "timescaledb" in str(ts.value)


def test_client_transaction_rollback_takes_the_tenant(fresh_db):
    with connect(fresh_db) as c:  # psycopg opens a transaction
        c.execute("SELECT tenancy.provision('ghost')")
        c.rollback()
        assert c.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 0
        assert c.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'tenant_ghost'"
        ).fetchone()[0] == 0


def test_parallel_sessions_distinct_and_racing_slugs(fresh_db):
    """4 sessions provision 20 distinct tenants each, and all race for one
    shared slug: every distinct tenant made once, the shared one exactly once."""
    outcomes = []
    lock = threading.Lock()

    def worker(n):
        with connect(fresh_db, autocommit=True) as c:
            for i in range(20):
                c.execute("SELECT tenancy.provision(%s)", (f"w{n}_t{i}",))
            try:
                c.execute("SELECT tenancy.provision('contested')")
                result = "made"
            except errors.UniqueViolation:
                result = "23505"
            with lock:
                outcomes.append(result)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["23505", "23505", "23505", "made"]
    with connect(fresh_db) as c:
        assert c.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 81
        # no schema without its row, no row without its schema
        orphans = c.execute(
            """SELECT count(*) FROM pg_namespace n
               FULL JOIN tenancy.tenants t ON t.schema_name = n.nspname
               WHERE (n.nspname LIKE 'tenant\\_%' OR t.id IS NOT NULL)
                 AND (n.oid IS NULL OR t.id IS NULL)"""
        ).fetchone()[0]
        assert orphans == 0
