"""The worker killed and the server crashed mid-batch: the batch still
completes, every tenant exactly once, no schema without its catalog row and
no row without its schema. Also: settings applied on reload, and a batch
started by the commit's wake-up rather than the nap."""

import threading
import time

import psycopg

from conftest import batch_of, connect, consistency, pg_ctl, wait_batch, wait_for

ITEM_WORKERS = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'tenancy item worker' AND datname = %s"


def final_checks(dbname, batch, n):
    with connect(dbname, autocommit=True) as c:
        assert wait_batch(c, batch, "300 s") == "completed"
        s = c.execute("SELECT tenancy.batch_status(%s) - 'results'", (batch,)).fetchone()[0]
        assert (s["succeeded"], s["failed"], s["pending"]) == (n, 0, 0), s
        assert c.execute("SELECT count(*) FROM tenancy.tenants WHERE status = 'active'").fetchone()[0] == n
        assert consistency(c) == (0, 0)
        # every item made its tenant once: the ones killed mid-way left nothing
        assert c.execute(
            "SELECT count(*) FROM tenancy.batch_items i JOIN tenancy.tenants t ON t.id = i.tenant_id "
            "WHERE i.batch_id = %s AND t.slug = i.slug", (batch,)).fetchone()[0] == n


def test_terminating_item_workers_repeatedly(fresh_db):
    n = 300
    with connect(fresh_db, autocommit=True) as c:
        batch = c.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')",
                          (batch_of("k", n),)).fetchone()[0]
    killed = 0
    with connect("postgres", autocommit=True) as admin:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            st = admin.execute(f'SELECT 1 FROM pg_stat_activity WHERE datname = %s AND backend_type = %s',
                               (fresh_db, "tenancy item worker")).fetchall()
            for (pid,) in admin.execute(ITEM_WORKERS, (fresh_db,)).fetchall():
                killed += admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
            with connect(fresh_db, autocommit=True) as c:
                done = c.execute("SELECT status NOT IN ('queued', 'in_progress') FROM tenancy.batches WHERE id = %s",
                                 (batch,)).fetchone()[0]
            if done:
                break
            time.sleep(0.15)
    assert killed > 0, "no item worker was caught running"
    print(f"terminated {killed} item workers")
    final_checks(fresh_db, batch, n)


def test_server_crash_mid_batch(fresh_db):
    n = 300
    with connect(fresh_db, autocommit=True) as c:
        batch = c.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')",
                          (batch_of("r", n),)).fetchone()[0]
        wait_for(lambda: c.execute("SELECT count(*) FROM tenancy.batch_items WHERE batch_id = %s AND status = 'succeeded'",
                                   (batch,)).fetchone()[0] >= 20, what="the batch to get going")
    pg_ctl("restart", "-m", "immediate")
    # the worker comes back by itself and finishes the batch
    final_checks(fresh_db, batch, n)


def test_max_workers_applied_on_reload(fresh_db):
    def peak_during_batch(prefix):
        with connect(fresh_db, autocommit=True) as c:
            batch = c.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')",
                              (batch_of(prefix, 60),)).fetchone()[0]
            peak = 0
            with connect("postgres", autocommit=True) as admin:
                while c.execute("SELECT status IN ('queued', 'in_progress') FROM tenancy.batches WHERE id = %s",
                                (batch,)).fetchone()[0]:
                    peak = max(peak, len(admin.execute(ITEM_WORKERS, (fresh_db,)).fetchall()))
                    time.sleep(0.01)
            assert wait_batch(c, batch) == "completed"
        return peak

    with connect("postgres", autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET tenancy.max_workers = 1")
        admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        try:
            assert peak_during_batch("one") == 1
        finally:
            admin.execute("ALTER SYSTEM RESET tenancy.max_workers")
            admin.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        assert peak_during_batch("four") > 1


def test_commit_wakes_the_worker_not_the_nap(fresh_db):
    """With a nap of 10 minutes, a batch is done within seconds: the commit
    woke the scheduler through shared memory."""
    with connect("postgres", autocommit=True) as admin:
        admin.execute("ALTER SYSTEM SET tenancy.naptime = '10min'")
        admin.execute("SELECT pg_reload_conf()")
        try:
            with connect(fresh_db, autocommit=True) as c:
                count = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenancy scheduler' AND datname = current_database()"
                wait_for(lambda: c.execute(count).fetchone()[0] == 1, what="the scheduler")
                time.sleep(1)  # let it settle into its long nap
                batch = c.execute("SELECT tenancy.provision_batch(%s)", (batch_of("w", 2),)).fetchone()[0]
                assert wait_batch(c, batch, "60 s") == "completed"
        finally:
            admin.execute("ALTER SYSTEM RESET tenancy.naptime")
            admin.execute("SELECT pg_reload_conf()")


def test_fewer_workers_when_slots_run_out(fresh_db):
    """With max_worker_processes used up, a batch asking for 4 at once runs
    with what is free: one item worker, or none (then its scheduler does the
    items itself); it completes either way."""
    # every background worker that holds a max_worker_processes slot (ours,
    # pg_cron's, TimescaleDB's, the logical replication launcher)
    background = ("SELECT count(*) FROM pg_stat_activity WHERE backend_type NOT IN "
                  "('client backend', 'checkpointer', 'background writer', 'walwriter', 'startup', "
                  "'archiver', 'autovacuum launcher', 'autovacuum worker', 'walsender', 'walreceiver', "
                  # PostgreSQL 18's I/O workers hold no max_worker_processes slot
                  "'io worker')")
    with connect(fresh_db, autocommit=True) as c:
        wait_for(lambda: c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenancy scheduler' "
                                   "AND datname = current_database()").fetchone()[0] == 1, what="the scheduler")
        time.sleep(1)
        static = c.execute(background).fetchone()[0]
        # pg_partman 5's master worker holds a slot but connects to no
        # database, so pg_stat_activity does not show it
        if "pg_partman_bgw" in c.execute("SHOW shared_preload_libraries").fetchone()[0] and not c.execute(
                "SELECT 1 FROM pg_stat_activity WHERE backend_type LIKE 'pg_partman%%'").fetchone():
            static += 1
    try:
        for spare, prefix in ((1, "one"), (0, "none")):
            pg_ctl("restart", "-m", "fast", "-o", f"-c max_worker_processes={static + spare}")
            with connect(fresh_db, autocommit=True) as c:
                batch = c.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')",
                                  (batch_of(prefix, 30),)).fetchone()[0]
                peak = 0
                deadline = time.monotonic() + 120
                with connect("postgres", autocommit=True) as admin:
                    while c.execute("SELECT status IN ('queued', 'in_progress') FROM tenancy.batches WHERE id = %s",
                                    (batch,)).fetchone()[0] and time.monotonic() < deadline:
                        peak = max(peak, len(admin.execute(ITEM_WORKERS, (fresh_db,)).fetchall()))
                        time.sleep(0.01)
                assert wait_batch(c, batch, "10 s") == "completed"
                print(f"{static} background workers + {spare} free slots: peak item workers {peak}")
                assert peak <= spare
    finally:
        pg_ctl("restart", "-m", "fast", "-o", "-c max_worker_processes=32")
