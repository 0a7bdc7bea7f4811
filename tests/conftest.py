"""Fixtures for tests that drive a running cluster from outside, as an
application would: through a client library (psycopg), over a socket.

scripts/test starts the cluster and exports TENANCY_TEST_HOST/PORT.
"""

import os
import uuid

import psycopg
import pytest

HOST = os.environ.get("TENANCY_TEST_HOST", "/var/tmp/tenancy-test")
PORT = int(os.environ.get("TENANCY_TEST_PORT", "5498"))


def connect(dbname, **kw):
    kw.setdefault("user", "postgres")
    return psycopg.connect(host=HOST, port=PORT, dbname=dbname, **kw)


@pytest.fixture
def fresh_db():
    """A new database with the extension created; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    with connect("postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with connect(name, autocommit=True) as c:
        c.execute("CREATE EXTENSION tenancy")
    yield name
    with connect("postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def db(fresh_db):
    with connect(fresh_db, autocommit=True) as c:
        yield c


@pytest.fixture
def login(db):
    """A login role that is not a superuser, granted tenants' roles by the
    test (grant_tenant); dropped afterwards."""
    name = "login_" + uuid.uuid4().hex[:8]
    db.execute(f'CREATE ROLE "{name}" LOGIN')
    yield name
    db.execute(f'DROP OWNED BY "{name}"')
    db.execute(f'DROP ROLE "{name}"')


def grant_tenant(db, login, slug):
    """Makes `login` a member of the tenant's role."""
    role = db.execute("SELECT role_name FROM tenancy.tenants WHERE slug = %s", (slug,)).fetchone()[0]
    db.execute(f'GRANT "{role}" TO "{login}"')


# extensions scripts/test has installed: a test that needs one fails rather
# than skips when it is missing (so that CI never passes by skipping them)
REQUIRED = set(filter(None, os.environ.get("TENANCY_TEST_REQUIRE", "").split(",")))


def skip_without(extension, reason):
    if extension in REQUIRED:
        pytest.fail(f"{reason}, and scripts/test installed it (TENANCY_TEST_REQUIRE)")
    pytest.skip(reason)


PGDATA = os.environ.get("TENANCY_TEST_PGDATA", HOST)
PG_BIN = os.environ.get("TENANCY_PG_BIN", "/usr/lib/postgresql/15/bin")


def wait_for(predicate, timeout=60.0, interval=0.05, what="condition"):
    """Polls until predicate() is truthy; fails the test after timeout."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def batch_of(prefix, n, **extra):
    import json

    return json.dumps([dict(slug=f"{prefix}{i}", **extra) for i in range(1, n + 1)])


def wait_batch(conn, batch, timeout="120 s"):
    return conn.execute("SELECT tenancy.wait_batch(%s, %s)", (batch, timeout)).fetchone()[0]


def pg_ctl(*args):
    import subprocess

    subprocess.run(
        ["sudo", "-u", "postgres", f"{PG_BIN}/pg_ctl", "-D", PGDATA, "-l", f"{PGDATA}/log", "-w", *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def consistency(conn):
    """Schemas without their catalog row, rows without their schema, and slugs
    made more than once (by the audit log)."""
    orphans = conn.execute(
        r"""SELECT count(*) FROM pg_namespace n
            FULL JOIN tenancy.tenants t ON t.schema_name = n.nspname
            WHERE (n.nspname LIKE 'tenant\_%' OR t.id IS NOT NULL)
              AND (n.oid IS NULL OR t.id IS NULL)"""
    ).fetchone()[0]
    twice = conn.execute(
        """SELECT count(*) FROM (SELECT tenant_slug FROM tenancy.audit_log
           WHERE action = 'provision' GROUP BY tenant_slug HAVING count(*) > 1) d"""
    ).fetchone()[0]
    return orphans, twice
