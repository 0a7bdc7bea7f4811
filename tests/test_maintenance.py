"""Maintenance kept by the worker: time partitions of the audit log and of
templates' partitioned_tables, retention, locks skipped not waited for,
and jobs that record their runs and back off when they fail."""

import threading
import time
import uuid

import psycopg
import pytest
from psycopg import errors

from conftest import connect, wait_for

EVENTS = ('{"tables": ["CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, '
          'kind text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)"], '
          '"partitioned_tables": [{"name": "events", "column": "at", "interval": "month", "premake": 2, '
          '"retention": "6 months"}]}')


def partitions(db, parent):
    return [r[0] for r in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1", (parent,)).fetchall()]


def test_worker_makes_audit_partitions_and_empties_the_default(db):
    # the worker runs the maintenance job as soon as the extension exists
    wait_for(lambda: db.execute("SELECT last_finished_at IS NOT NULL FROM tenancy.jobs WHERE name = 'maintenance'").fetchone()[0],
             what="the first maintenance run")
    names = partitions(db, "tenancy.audit_log")
    months = db.execute("SELECT to_char(date_trunc('month', localtimestamp) + g * interval '1 month', 'YYYYMMDD') "
                        "FROM generate_series(0, 3) g").fetchall()
    for (m,) in months:
        assert f"audit_log_p{m}" in names, names
    assert db.execute("SELECT count(*) FROM tenancy.audit_log_default").fetchone()[0] == 0
    # each month has the default partition's keys (they are not on the parent)
    this_month = f"audit_log_p{months[0][0]}"
    assert db.execute("SELECT array_agg(indexname::text ORDER BY 1) FROM pg_indexes WHERE tablename = %s",
                      (this_month,)).fetchone()[0] == [f"{this_month}_pkey", f"{this_month}_tenant_idx"]
    # rows that land in the default partition (their month is missing) move
    # into their month when maintenance makes it
    db.execute(f"DROP TABLE tenancy.{this_month}")
    db.execute("""SELECT tenancy.register_template('moved', '{"tables": ["CREATE TABLE t (id int)"]}')""")
    assert db.execute("SELECT count(*) FROM tenancy.audit_log_default").fetchone()[0] == 1
    db.execute("SELECT tenancy.run_maintenance()")
    assert db.execute("SELECT count(*) FROM tenancy.audit_log_default").fetchone()[0] == 0
    assert db.execute(f"SELECT action FROM tenancy.{this_month}").fetchall() == [("register_template",)]
    assert db.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s", (this_month,)).fetchone()[0] == 2


def test_template_partitions_premake_and_retention(db):
    db.execute("SELECT tenancy.register_template('events', %s)", (EVENTS,))
    db.execute("SELECT tenancy.provision('ev1', NULL, 'events')")
    ahead = db.execute("SELECT 'events_p' || to_char(date_trunc('month', localtimestamp) + interval '2 months', 'YYYYMMDD')").fetchone()[0]
    # in one transaction: the server's own worker, whose maintenance may run
    # at any moment, would otherwise make and drop these first (CI saw it)
    with db.transaction():
        db.execute("CREATE TABLE tenant_ev1.events_p20200101 PARTITION OF tenant_ev1.events "
                   "FOR VALUES FROM ('2020-01-01') TO ('2020-02-01')")
        db.execute(f"DROP TABLE tenant_ev1.{ahead}")
        r = db.execute("SELECT tenancy.run_maintenance()").fetchone()[0]
    assert r["partitions_created"] >= 1 and r["partitions_dropped"] >= 1, r
    names = partitions(db, "tenant_ev1.events")
    assert ahead in names and "events_p20200101" not in names
    assert len(names) == 3  # this month and 2 ahead


def test_a_locked_partition_is_skipped_and_done_later(db, fresh_db):
    db.execute("SELECT tenancy.register_template('events', %s)", (EVENTS,))
    db.execute("SELECT tenancy.provision('ev2', NULL, 'events')")
    ahead = db.execute("SELECT 'events_p' || to_char(date_trunc('month', localtimestamp) + interval '2 months', 'YYYYMMDD')").fetchone()[0]
    with connect(fresh_db) as app:  # an application transaction using the table
        # The server's own worker may make the partition again between the DROP
        # and the application's lock; then the premise is gone: try again.
        for _ in range(20):
            db.execute(f"DROP TABLE IF EXISTS tenant_ev2.{ahead}")
            app.execute("SELECT count(*) FROM tenant_ev2.events")
            if ahead not in partitions(app, "tenant_ev2.events"):
                break
            app.rollback()
        else:
            pytest.fail(f"the worker made {ahead} again each time before the test could lock")
        t0 = time.monotonic()
        r = db.execute("SELECT tenancy.run_maintenance()").fetchone()[0]
        waited = time.monotonic() - t0
        assert any(ahead in s for s in r["partitions_skipped"]), r
        # the application is not blocked: it goes on in its transaction
        app.execute("INSERT INTO tenant_ev2.events (at, kind) VALUES (now(), 'still working')")
        app.commit()
    print(f"maintenance returned after {waited:.2f} s with {ahead} skipped")
    r = db.execute("SELECT tenancy.run_maintenance()").fetchone()[0]
    assert ahead in partitions(db, "tenant_ev2.events"), r


def test_maintenance_removes_the_roles_of_a_dropped_database(db):
    """Every role tenancy makes carries its database's OID; DROP DATABASE
    leaves them, and run_maintenance() (in any database) removes them."""
    gone = "t_" + uuid.uuid4().hex[:12]
    with connect("postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{gone}"')
        try:
            with connect(gone, autocommit=True) as c:
                c.execute("CREATE EXTENSION tenancy")
                c.execute("SELECT tenancy.provision('orphan_schema')")
                c.execute("""SELECT tenancy.provision('orphan_shared', NULL, 'default', '{"isolation": "shared"}')""")
                oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        finally:
            admin.execute(f'DROP DATABASE "{gone}" WITH (FORCE)')
    pattern = rf"^tenancy_[a-z_]+_{oid}$|^t{oid}_"
    ours = "SELECT array_agg(rolname::text ORDER BY rolname) FROM pg_roles WHERE rolname ~ %s"
    left = db.execute(ours, (pattern,)).fetchone()[0]
    assert left == sorted([f"t{oid}_orphan_schema", f"t{oid}_orphan_shared"] +
                          [f"tenancy_{k}_{oid}" for k in ("admin", "all_tenants", "owner", "shared")]), left
    r = db.execute("SELECT tenancy.run_maintenance()").fetchone()[0]
    assert isinstance(r["roles_removed"], int), r
    assert db.execute(ours, (pattern,)).fetchone()[0] is None
    # this database's own roles are not orphans
    me = db.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
    assert db.execute(ours, (rf"^tenancy_[a-z_]+_{me}$",)).fetchone()[0] == \
        sorted(f"tenancy_{k}_{me}" for k in ("admin", "all_tenants", "owner", "shared"))


def run_jobs_now(c):
    """Makes the maintenance job due and runs it here; the row stays locked
    by this transaction, so the worker (SKIP LOCKED) cannot run it meanwhile."""
    with c.transaction():
        c.execute("UPDATE tenancy.jobs SET next_run_at = now() WHERE name = 'maintenance'")
        return c.execute("SELECT tenancy._run_due_jobs()").fetchone()[0]


def test_a_failing_job_is_recorded_and_backed_off(db, fresh_db):
    db.execute(f"ALTER DATABASE \"{fresh_db}\" SET tenancy.batch_retention = 'not an interval'")
    with connect(fresh_db, autocommit=True) as c:
        assert run_jobs_now(c) >= 1
        failures, err, backoff = c.execute(
            "SELECT failures, last_error, next_run_at - last_finished_at FROM tenancy.jobs WHERE name = 'maintenance'").fetchone()
        assert failures == 1 and "not an interval" in err
        assert backoff.total_seconds() >= 2 * 3600 - 5  # 1 hour x 2^1
        assert c.execute("SELECT count(*) FROM tenancy.audit_log WHERE action = 'job' AND result = 'error'").fetchone()[0] == 1
        # the queue still moves while the job fails
        b = c.execute("SELECT tenancy.provision_batch('[{\"slug\": \"during_failure\"}]')").fetchone()[0]
        assert c.execute("SELECT tenancy.wait_batch(%s, '60 s')", (b,)).fetchone()[0] == "completed"
    db.execute(f"ALTER DATABASE \"{fresh_db}\" RESET tenancy.batch_retention")
    with connect(fresh_db, autocommit=True) as c:
        run_jobs_now(c)
        assert c.execute("SELECT failures, last_error FROM tenancy.jobs WHERE name = 'maintenance'").fetchone() == (0, None)


def test_metrics_in_one_pass_with_history(db):
    db.execute("SELECT tenancy.provision('mx_schema')")
    sid = db.execute("SELECT id FROM tenancy.provision('mx_shared', NULL, 'default', '{\"isolation\": \"shared\"}')").fetchone()[0]
    db.execute("INSERT INTO tenant_mx_schema.users (email) SELECT 'u' || g || '@x' FROM generate_series(1, 300) g")
    db.execute("INSERT INTO shared_default.users (tenant_id, email) SELECT %s, 'u' || g || '@x' FROM generate_series(1, 40) g", (sid,))
    db.execute("ANALYZE")
    count_rows = ("SELECT count(*) FROM tenancy.tenant_metrics m JOIN tenancy.tenants t ON t.id = m.tenant_id "
                  "WHERE t.slug = 'mx_schema'")
    assert db.execute("SELECT tenancy.refresh_metrics()").fetchone()[0] == 2
    before = db.execute(count_rows).fetchone()[0]
    assert db.execute("SELECT tenancy.refresh_metrics()").fetchone()[0] == 2
    assert db.execute(count_rows).fetchone()[0] == before + 1, "history is kept"
    total, table_count, row_est = db.execute(
        "SELECT total_bytes, table_count, row_estimate FROM tenancy.latest_metrics WHERE slug = 'mx_schema'").fetchone()
    expected = db.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                          "WHERE c.relnamespace = 'tenant_mx_schema'::regnamespace AND c.relkind = 'r'").fetchone()[0]
    assert (total, table_count, row_est) == (expected, 3, 300)
    assert db.execute("SELECT row_estimate, table_count FROM tenancy.latest_metrics WHERE slug = 'mx_shared'").fetchone() == (40, 3)
    h = db.execute("SELECT tenancy.health()").fetchone()[0]
    assert h["metrics"]["stale"] is False and h["maintenance"]["audit_log_months_ahead"] >= 1, h


def test_health_drops_for_stale_metrics_and_quotas(db):
    db.execute("UPDATE tenancy.jobs SET last_finished_at = now() - interval '1 day', next_run_at = now() + interval '1 day' WHERE name = 'metrics'")
    h = db.execute("SELECT tenancy.health()").fetchone()[0]
    assert h["status"] == "degraded" and any("stale" in p for p in h["problems"]), h
    db.execute("""SELECT tenancy.provision('quota1', NULL, 'default', '{"max_storage_bytes": 1000, "max_users": 2}')""")
    db.execute("INSERT INTO tenant_quota1.users (email) VALUES ('a@q'), ('b@q'), ('c@q')")
    t = db.execute("SELECT tenancy.health('quota1')").fetchone()[0]
    assert t["score"] == 60 and len(t["reasons"]) == 2, t
    assert any("over its quota of 2" in r for r in t["reasons"]) and any("storage" in r for r in t["reasons"])


def test_health_drops_for_a_dead_worker(db):
    """A scheduler that stops finishing passes (here: frozen with SIGSTOP)
    lowers the cluster's score with its reason, and health recovers with it."""
    import os
    import signal

    with connect("postgres", autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET tenancy.naptime = '1s'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        def worker():
            return db.execute("SELECT tenancy.health()->'worker'").fetchone()[0]

        pid = wait_for(lambda: worker()["last_run_seconds_ago"] is not None and worker()["scheduler_pid"],
                       what="a pass of this database's scheduler")
        before = db.execute("SELECT tenancy.health()").fetchone()[0]
        assert not any("scheduler" in p for p in before["problems"]), before
        os.kill(pid, signal.SIGSTOP)
        try:
            def frozen():
                h = db.execute("SELECT tenancy.health()").fetchone()[0]
                return h if any("not finished a pass" in p for p in h["problems"]) else None

            h = wait_for(frozen, timeout=60, interval=1, what="health to notice the frozen scheduler")
            assert h["status"] == "degraded" and h["score"] <= before["score"] - 40, (before, h)
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: not any("scheduler" in p for p in db.execute("SELECT tenancy.health()").fetchone()[0]["problems"]),
                 timeout=60, interval=0.5, what="health to recover with the scheduler")
    finally:
        with connect("postgres", autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET tenancy.naptime")
            admin.execute("SELECT pg_reload_conf()")


def test_stats_view(db):
    for slug in ("st_a", "st_b", "st_c"):
        db.execute("SELECT tenancy.provision(%s)", (slug,))
    db.execute("""SELECT tenancy.provision('st_s', NULL, 'default', '{"isolation": "shared"}')""")
    db.execute("SELECT tenancy.suspend('st_b')")
    db.execute("SELECT tenancy.drop_tenant('st_c')")
    row = db.execute("SELECT tenants, active, suspended, dropped, shared, provisioned_24h, "
                     "provision_p50_ms > 0, provision_p95_ms >= provision_p50_ms FROM tenancy.stats").fetchone()
    assert row == (3, 2, 1, 1, 1, 4, True, True)


def test_job_intervals_follow_the_settings(db):
    with connect("postgres", autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET tenancy.metrics_interval = '2s'")
        admin.execute("SELECT pg_reload_conf()")
    try:
        wait_for(lambda: db.execute("SELECT run_every = '2 s' FROM tenancy.jobs WHERE name = 'metrics'").fetchone()[0],
                 timeout=60, what="the metrics job to take the new interval")
        # and it runs at that pace: history grows without anyone calling refresh_metrics
        db.execute("SELECT tenancy.provision('paced')")
        wait_for(lambda: db.execute("SELECT count(*) FROM tenancy.tenant_metrics m JOIN tenancy.tenants t "
                                    "ON t.id = m.tenant_id WHERE t.slug = 'paced'").fetchone()[0] >= 2,
                 timeout=60, what="two refreshes by the worker")
    finally:
        with connect("postgres", autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET tenancy.metrics_interval")
            admin.execute("SELECT pg_reload_conf()")


def test_worker_maintenance_runs_in_steps(db):
    """The worker's maintenance does tenancy.maintenance_chunk tenants per
    transaction, so a run over thousands never holds every table's lock."""
    db.execute("SELECT tenancy.register_template('ev', %s)", (EVENTS,))
    slugs = [f"ev{i}" for i in range(1, 6)]
    for slug in slugs:
        db.execute("SELECT tenancy.provision(%s, NULL, 'ev')", (slug,))
    last_month = db.execute("SELECT to_char(date_trunc('month', localtimestamp) + interval '2 months', 'YYYYMMDD')").fetchone()[0]
    for slug in slugs:
        db.execute(f"DROP TABLE tenant_{slug}.events_p{last_month}")
    with connect("postgres", autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET tenancy.maintenance_chunk = 2")
        admin.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(1)  # the scheduler reads the setting at its next pass
        t0 = db.execute("UPDATE tenancy.jobs SET next_run_at = now() WHERE name = 'maintenance' RETURNING now()").fetchone()[0]
        result = wait_for(lambda: db.execute("SELECT last_result FROM tenancy.jobs WHERE name = 'maintenance' "
                                             "AND last_finished_at > %s", (t0,)).fetchone(),
                          timeout=60, what="a maintenance run by the worker")[0]
        assert result["transactions"] == 3, result  # 2 + 2 + 1 tenants
        assert result["partitions_created"] >= 5, result
        for slug in slugs:
            assert f"events_p{last_month}" in partitions(db, f"tenant_{slug}.events")
        assert db.execute("SELECT progress FROM tenancy.jobs WHERE name = 'maintenance'").fetchone()[0] is None
    finally:
        with connect("postgres", autocommit=True) as admin:
            admin.execute("ALTER SYSTEM RESET tenancy.maintenance_chunk")
            admin.execute("SELECT pg_reload_conf()")


def test_health_of_null_is_the_cluster_view(db):
    h = db.execute("SELECT tenancy.health(NULL)").fetchone()[0]
    assert "worker" in h and "queue" in h and "tenant" not in h
