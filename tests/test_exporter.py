"""The Prometheus exporter (Debian's prometheus-postgres-exporter) with the
queries the extension ships (monitoring/tenancy_exporter.yaml), logged in as
a pg_monitor member that is not a superuser: what it scrapes after tenants
and a batch were made."""

import os
import re
import shutil
import urllib.request

import pytest

from conftest import HOST, PORT, connect, free_port, shared_tenant, skip_without, wait_batch, wait_for

EXPORTER = "/usr/bin/prometheus-postgres-exporter"
QUERIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "monitoring", "tenancy_exporter.yaml")



def parse(text):
    """Prometheus text format: {(name, frozenset of (label, value)): value},
    without the `server` label the exporter adds to every metric."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)', line)
        labels = frozenset(kv for kv in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")
                           if kv[0] != "server")
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def disabled_collectors():
    """--no-collector.X for each collector this version enables by default
    (0.11 has two, 0.17 a dozen): only the extension's queries run."""
    import subprocess

    out = subprocess.run([EXPORTER, "--help"], capture_output=True, text=True).stderr
    out += subprocess.run([EXPORTER, "--help"], capture_output=True, text=True).stdout
    return [f"--no-collector.{c}" for c in
            re.findall(r"--collector\.(\w+)\s+Enable the \w+ collector\s+\(default:\s+enabled\)", out)]


@pytest.fixture
def exporter(db, fresh_db, login, daemon):
    """Starts the exporter for the test's database as `login`, made a
    member of pg_monitor; returns a function that scrapes it."""
    if not os.access(EXPORTER, os.X_OK):
        skip_without("prometheus-postgres-exporter",
                     "prometheus-postgres-exporter is not installed (Debian package prometheus-postgres-exporter)")
    db.execute(f'GRANT pg_monitor TO "{login}"')
    # a copy the exporter's user can read wherever the checkout is (a CI
    # clone may sit in a directory only its owner can enter)
    queries = shutil.copy(QUERIES, os.path.join(daemon.dir, "tenancy_exporter.yaml"))
    os.chmod(queries, 0o644)
    port = free_port()
    dsn = f"host={HOST} port={PORT} user={login} dbname={fresh_db} sslmode=disable"
    daemon.start([EXPORTER, f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={queries}",
                  "--disable-default-metrics", "--disable-settings-metrics", *disabled_collectors()],
                 port, env={"DATA_SOURCE_NAME": dsn})

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
            return r.read().decode()
    scrape.log = lambda: daemon.output(os.path.basename(EXPORTER))
    return scrape


def test_exporter_scrapes_tenancy(db, fresh_db, login, exporter):
    assert db.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (login,)).fetchone()[0] is False
    db.execute("""SELECT tenancy.register_template('failing',
                  '{"tables": ["CREATE TABLE a (id int REFERENCES nowhere (id))"]}')""")
    batch = db.execute("""SELECT tenancy.provision_batch('[{"slug": "ok1"}, {"slug": "ok2"},
                          {"slug": "bad", "template": "failing"}]')""").fetchone()[0]
    assert wait_batch(db, batch) == "partially_completed"
    shared_tenant(db, "sh1")
    db.execute("SELECT tenancy.provision('sus1')")
    db.execute("SELECT tenancy.suspend('sus1')")
    assert db.execute("SELECT tenancy.refresh_metrics()").fetchone()[0] == 4
    # activity: two statements in ok1's schema, from a session of its own
    with connect(fresh_db, autocommit=True, options="-c search_path=tenant_ok1") as c:
        c.execute("SELECT * FROM users")
        c.execute("SELECT * FROM items")

    text = exporter()
    m = parse(text)

    def value(name, **labels):
        key = (name, frozenset(labels.items()))
        assert key in m, f"{name}{labels} not scraped; exporter log:\n{exporter.log()[-3000:]}"
        return m[key]

    # tenants by status and isolation, zeros included
    assert value("tenancy_tenants_count", status="active", isolation="schema") == 2
    assert value("tenancy_tenants_count", status="active", isolation="shared") == 1
    assert value("tenancy_tenants_count", status="suspended", isolation="schema") == 1
    assert value("tenancy_tenants_count", status="dropped", isolation="shared") == 0
    tenants = {k: v for k, v in m.items() if k[0] == "tenancy_tenants_count"}
    assert len(tenants) == 14 and sum(tenants.values()) == 4
    # the queue is empty after the batch; its items by result
    assert value("tenancy_queue_queued_items") == 0
    assert value("tenancy_queue_in_progress_items") == 0
    assert value("tenancy_queue_oldest_queued_seconds") == 0
    items = dict(kind="provision", batch_status="partially_completed")
    assert value("tenancy_batch_items_count", item_status="succeeded", **items) == 2
    assert value("tenancy_batch_items_count", item_status="failed", **items) == 1
    assert value("tenancy_batch_duration_finished_1h", kind="provision") == 1
    assert 0 < value("tenancy_batch_duration_max_seconds_1h", kind="provision") < 120
    # provisioning times from the audit log: the batch's two and the two made by hand
    assert value("tenancy_provision_count_1h") == 4
    p50, p95 = value("tenancy_provision_p50_seconds_1h"), value("tenancy_provision_p95_seconds_1h")
    assert 0 < p50 <= p95 < 60
    # the worker, as health() sees it
    assert value("tenancy_health_worker_up") == 1
    assert value("tenancy_health_launcher_up") == 1
    assert 0 <= value("tenancy_health_worker_last_pass_seconds") < 60
    assert value("tenancy_health_metrics_stale") == 0
    assert value("tenancy_health_failed_items_24h") == 1
    # per tenant, from latest_metrics
    sizes = {dict(k[1])["slug"]: v for k, v in m.items() if k[0] == "tenancy_tenant_total_bytes"}
    assert set(sizes) == {"ok1", "ok2", "sh1", "sus1"} and all(v > 0 for k, v in sizes.items() if k != "sh1")
    assert value("tenancy_tenant_table_count", slug="ok1", isolation="schema") == 3
    # per-tenant activity, and every query of the file ran without error
    assert value("tenancy_tenant_activity_statements", slug="ok1") == 2
    assert value("pg_exporter_last_scrape_error") == 0
    # the exporter's session is the pg_monitor login, not a superuser
    assert db.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s", (login,)).fetchone()[0] >= 1


def test_monitoring_role_reads_counts_not_contents(db, fresh_db, login):
    """What the extension grants pg_monitor: states, counts and sizes; not a
    template spec, a tenant's settings, an audit detail or an error text."""
    from psycopg import errors

    from conftest import connect

    db.execute("SELECT tenancy.provision('mon1', NULL, 'default', '{\"settings\": {\"secret\": \"s3\"}}')")
    db.execute(f'GRANT pg_monitor TO "{login}"')
    with connect(fresh_db, user=login, autocommit=True) as c:
        assert c.execute("SELECT slug, status FROM tenancy.tenants").fetchall() == [("mon1", "active")]
        assert c.execute("SELECT tenancy.health()->'worker' IS NOT NULL").fetchone()[0] is True
        for sql in ["SELECT settings FROM tenancy.tenants", "SELECT * FROM tenancy.tenants",
                    "SELECT spec FROM tenancy.batch_items", "SELECT last_error FROM tenancy.batch_items",
                    "SELECT details FROM tenancy.audit_log", "SELECT spec FROM tenancy.templates",
                    "SELECT * FROM tenancy.events", "SELECT tenancy.provision('mon2')"]:
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(sql)
    # a login with CONNECT only reads none of it
    db.execute(f'REVOKE pg_monitor FROM "{login}"')
    with connect(fresh_db, user=login, autocommit=True) as c:
        for sql in ["SELECT slug FROM tenancy.tenants", "SELECT tenancy.health()"]:
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(sql)
