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
    kw.setdefault("host", HOST)
    kw.setdefault("port", PORT)
    return psycopg.connect(dbname=dbname, **kw)


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


SHARED = "shared_default"  # the shared schema of the shipped default template


def shared_tenant(db, slug):
    """Provisions a shared-table tenant of the default template; its id."""
    return db.execute("SELECT id FROM tenancy.provision(%s, NULL, 'default', '{\"isolation\": \"shared\"}')",
                      (slug,)).fetchone()[0]


def seed(db, tid, n=3):
    """Rows in every shared table for a tenant, as superuser (no RLS)."""
    for i in range(n):
        uid = db.execute(f"INSERT INTO {SHARED}.users (tenant_id, email) VALUES (%s, %s) RETURNING id",
                         (tid, f"u{i}@{tid}")).fetchone()[0]
        db.execute(f"INSERT INTO {SHARED}.items (tenant_id, owner_id, title) VALUES (%s, %s, 'item')", (tid, uid))
        db.execute(f"INSERT INTO {SHARED}.audit_events (tenant_id, user_id, action) VALUES (%s, %s, 'login')", (tid, uid))


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


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon():
    """Starts programs the test talks to (a pooler, an exporter):
    daemon.start(argv, port) runs argv in daemon.dir (a fresh directory it
    may write), waits until it listens on 127.0.0.1:port and returns the
    process; each is stopped, and the directory removed, after the test.
    As root they run as postgres (PgBouncer refuses to run as root)."""
    import shutil
    import socket
    import subprocess
    import tempfile
    import types

    root = os.geteuid() == 0
    workdir = tempfile.mkdtemp(prefix="tenancy-daemon-")
    if root:
        shutil.chown(workdir, "postgres", "postgres")
    started = []

    def start(argv, port, env=None):
        name = os.path.basename(argv[0])
        if root:
            argv = ["sudo", "-u", "postgres", *(f"--preserve-env={k}" for k in env or {}), *argv]
        log = open(os.path.join(workdir, name + ".out"), "wb")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                                env={**os.environ, **(env or {})})
        started.append((proc, log))

        def listening():
            if proc.poll() is not None:
                with open(log.name, errors="replace") as f:
                    raise AssertionError(f"{name} exited with {proc.returncode}: {f.read()[-2000:]}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_for(listening, timeout=30, what=f"{name} to listen on port {port}")
        return proc

    def output(name):
        with open(os.path.join(workdir, name + ".out"), errors="replace") as f:
            return f.read()

    yield types.SimpleNamespace(dir=workdir, start=start, output=output)
    for proc, log in started:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    shutil.rmtree(workdir, ignore_errors=True)
