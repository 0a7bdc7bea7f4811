"""Batches through the background worker, tested from outside the server:
the worker really runs (shared_preload_libraries = 'pg_cron,tenancy')."""

import json
import threading
import time

import pytest
from psycopg import errors

from conftest import batch_of, connect, consistency, wait_batch, wait_for

FAILING = json.dumps({"tables": ["CREATE TABLE a (id int)", "CREATE TABLE b (id int REFERENCES nowhere (id))"]})


def status(db, batch):
    return db.execute("SELECT tenancy.batch_status(%s)", (batch,)).fetchone()[0]


def test_200_tenant_batch_completes(db):
    batch = db.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')", (batch_of("t", 200),)).fetchone()[0]
    # mid-way, the batch projects its end from its own pace
    mid = wait_for(lambda: (lambda s: s if s["succeeded"] >= 10 else None)(
        db.execute("SELECT tenancy.batch_status(%s) - 'results'", (batch,)).fetchone()[0]), what="progress")
    if mid["pending"] > 0:
        assert mid["status"] == "in_progress" and mid["estimated_completion_at"] is not None, mid
    assert wait_batch(db, batch) == "completed"
    s = status(db, batch)
    assert (s["total"], s["succeeded"], s["failed"], s["pending"]) == (200, 200, 0, 0)
    assert len(s["results"]) == 200
    assert all(r["success"] and r["schema_name"] == "tenant_" + r["slug"] and r["attempts"] == 1 for r in s["results"])
    assert s["processing_time_seconds"] > 0
    assert db.execute("SELECT count(*) FROM tenancy.tenants WHERE status = 'active'").fetchone()[0] == 200
    assert consistency(db) == (0, 0)
    assert db.execute("SELECT count(*) FROM tenancy.active_batches").fetchone()[0] == 0


def mixed_batch(good, bad, prefix=""):
    items = [{"slug": f"{prefix}ok{i}"} for i in range(good)] + [{"slug": f"{prefix}bad{i}", "template": "failing"} for i in range(bad)]
    return json.dumps(items)


def test_failing_items_partially_completed(db):
    db.execute("SELECT tenancy.register_template('failing', %s)", (FAILING,))
    batch = db.execute("SELECT tenancy.provision_batch(%s)", (mixed_batch(7, 3),)).fetchone()[0]
    assert wait_batch(db, batch) == "partially_completed"
    s = status(db, batch)
    assert (s["succeeded"], s["failed"]) == (7, 3)
    failed = [r for r in s["results"] if not r["success"]]
    assert all(r["sqlstate"] == "42P01" and 'relation "nowhere" does not exist' in r["error"] for r in failed)
    assert all("statement 2 of 2" in r["error"] for r in failed)
    assert all(r["attempts"] == 1 for r in failed), "a permanent error is not retried"
    assert db.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 7
    assert consistency(db) == (0, 0)


def test_continue_on_error_false_stops_the_batch(db):
    db.execute("SELECT tenancy.register_template('failing', %s)", (FAILING,))
    items = json.dumps([{"slug": "first"}, {"slug": "broken", "template": "failing"}] + [{"slug": f"later{i}"} for i in range(20)])
    batch = db.execute(
        "SELECT tenancy.provision_batch(%s, '{\"continue_on_error\": false, \"max_concurrent\": 1}')", (items,)
    ).fetchone()[0]
    assert wait_batch(db, batch) == "failed"
    s = status(db, batch)
    assert s["failed"] == 1 and s["cancelled"] >= 19 and s["pending"] == 0
    assert consistency(db) == (0, 0)


def test_rollback_on_failure_leaves_nothing(db):
    db.execute("SELECT tenancy.register_template('failing', %s)", (FAILING,))
    batch = db.execute(
        "SELECT tenancy.provision_batch(%s, '{\"rollback_on_failure\": true, \"max_concurrent\": 3}')",
        (mixed_batch(12, 2, "rb_"),),
    ).fetchone()[0]
    assert wait_batch(db, batch) == "failed"
    wait_for(lambda: db.execute("SELECT rolled_back_at IS NOT NULL FROM tenancy.batches WHERE id = %s", (batch,)).fetchone()[0],
             what="rollback to finish")
    s = status(db, batch)
    assert s["rolled_back"] == 12 and s["succeeded"] == 0
    assert db.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 0
    assert db.execute(r"SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\_%'").fetchone()[0] == 0
    # tenants' roles are t<database oid>_<slug>
    assert db.execute(r"""SELECT count(*) FROM pg_roles WHERE rolname ~ ('^t' || (SELECT oid FROM pg_database
                          WHERE datname = current_database()) || '_rb_ok[0-9]+$')""").fetchone()[0] == 0


def test_transient_errors_are_retried_with_backoff(db):
    # fails with 40001 on its first two runs (a sequence is not rolled back)
    db.execute("CREATE SEQUENCE public.flaky_runs")
    # template SQL runs as this database's owner role, with public off its search_path
    db.execute("""DO $$ BEGIN EXECUTE format('GRANT USAGE, UPDATE ON SEQUENCE public.flaky_runs TO %I',
                  'tenancy_owner_' || (SELECT oid FROM pg_database WHERE datname = current_database())); END $$""")
    flaky = {
        "tables": ["CREATE TABLE t (id int)"],
        "functions": ["DO $$ BEGIN IF nextval('public.flaky_runs') < 3 THEN "
                      "RAISE EXCEPTION 'simulated serialization failure' USING ERRCODE = '40001'; END IF; END $$"],
    }
    db.execute("SELECT tenancy.register_template('flaky', %s)", (json.dumps(flaky),))
    batch = db.execute(
        "SELECT tenancy.provision_batch('[{\"slug\": \"flaky1\", \"template\": \"flaky\"}]', "
        "'{\"retry_attempts\": 3, \"retry_delay\": \"50ms\"}')"
    ).fetchone()[0]
    assert wait_batch(db, batch) == "completed"
    r = status(db, batch)["results"][0]
    assert r["success"] and r["attempts"] == 3

    # always transient: gives up after retry_attempts retries, with the error
    db.execute("SELECT setval('public.flaky_runs', 1, false)")
    batch = db.execute(
        "SELECT tenancy.provision_batch('[{\"slug\": \"flaky2\", \"template\": \"flaky\"}]', "
        "'{\"retry_attempts\": 1, \"retry_delay\": 0.05}')"
    ).fetchone()[0]
    assert wait_batch(db, batch) == "failed"
    r = status(db, batch)["results"][0]
    assert (r["success"], r["attempts"], r["sqlstate"]) == (False, 2, "40001")


@pytest.mark.parametrize(
    "tenants, options, sqlstate, fragment",
    [
        ('{"slug": "a"}', "{}", "22023", "must be a JSON array"),
        ("[]", "{}", "22023", "the batch is empty"),
        ('[{"slug": "a"}, 5]', "{}", "22023", "item 2: must be a JSON object"),
        ('[{"name": "x"}]', "{}", "22023", "item 1: slug: is missing"),
        ('[{"slug": "Bad"}]', "{}", "22023", "item 1 (Bad): slug: it must start"),
        ('[{"slug": "a"}, {"slug": "a"}]', "{}", "22023", 'item 2 (a): slug "a" repeats item 1'),
        ('[{"slug": "taken"}]', "{}", "23505", 'item 1 (taken): tenant "taken" already exists'),
        ('[{"slug": "a", "template": "nope"}]', "{}", "22023", 'template "nope" does not exist'),
        ('[{"slug": "a", "colour": "red"}]', "{}", "22023", "colour: unknown key"),
        ('[{"slug": "a"}]', '{"max_concurrent": 21}', "22023", "max_concurrent: must be an integer from 1 to 20"),
        ('[{"slug": "a"}]', '{"max_concurrent": 0}', "22023", "max_concurrent"),
        ('[{"slug": "a"}]', '{"frobnicate": true}', "22023", "frobnicate: unknown key"),
    ],
)
def test_bad_batches_queue_nothing(db, tenants, options, sqlstate, fragment):
    db.execute("SELECT tenancy.provision('taken')")
    with pytest.raises(errors.Error) as e:
        db.execute("SELECT tenancy.provision_batch(%s, %s)", (tenants, options))
    assert e.value.sqlstate == sqlstate
    full = str(e.value) + "\n" + (e.value.diag.message_detail or "")
    assert fragment in full, full
    assert db.execute("SELECT count(*) FROM tenancy.batches").fetchone()[0] == 0


def test_bad_batch_lists_every_bad_item(db):
    items = json.dumps([{"slug": "ok1"}, {"slug": "Bad"}, {"slug": "ok2"}, 7, {"slug": "ok1"}])
    with pytest.raises(errors.InvalidParameterValue) as e:
        db.execute("SELECT tenancy.provision_batch(%s)", (items,))
    assert "3 of 5 tenants in the batch are not valid; nothing was queued" in str(e.value)
    assert e.value.diag.message_detail.count("\n") == 2


def test_over_max_batch_size(db):
    db.execute("SET tenancy.max_batch_size = 5")
    with pytest.raises(errors.ProgramLimitExceeded, match="more than tenancy.max_batch_size"):
        db.execute("SELECT tenancy.provision_batch(%s)", (batch_of("x", 6),))


def test_process_queue_in_the_callers_transaction(fresh_db):
    with connect(fresh_db) as c:
        batch = c.execute("SELECT tenancy.provision_batch(%s)", (batch_of("pq", 5),)).fetchone()[0]
        # not committed: the worker cannot see it, this session can
        assert c.execute("SELECT tenancy.process_queue()").fetchone()[0] == 5
        c.commit()
        assert c.execute("SELECT status FROM tenancy.batches WHERE id = %s", (batch,)).fetchone()[0] == "completed"
        with pytest.raises(errors.InvalidParameterValue):
            c.execute("SELECT tenancy.process_queue(0)")


def test_two_batches_and_process_queue_by_hand_never_do_an_item_twice(db, fresh_db):
    ids = []

    def enqueue(prefix):
        with connect(fresh_db, autocommit=True) as c:
            ids.append(c.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 3}')",
                                 (batch_of(prefix, 60),)).fetchone()[0])

    threads = [threading.Thread(target=enqueue, args=(p,)) for p in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    by_hand = 0
    with connect(fresh_db, autocommit=True) as c:
        for _ in range(40):
            by_hand += c.execute("SELECT tenancy.process_queue(2)").fetchone()[0]
    for b in ids:
        assert wait_batch(db, b) == "completed"
    assert db.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 120
    assert db.execute("SELECT max(attempts) FROM tenancy.batch_items").fetchone()[0] == 1
    assert consistency(db) == (0, 0)
    print(f"process_queue did {by_hand} of 120 items by hand")


def test_new_database_is_served_without_process_queue(db):
    """fresh_db is created after the server started: its batch completes
    through the worker alone."""
    batch = db.execute("SELECT tenancy.provision_batch(%s)", (batch_of("n", 3),)).fetchone()[0]
    assert wait_batch(db, batch, "60 s") == "completed"
    wait_for(lambda: db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenancy scheduler' AND datname = current_database()"
    ).fetchone()[0] == 1, what="one scheduler in the new database")


def test_drop_database_without_force(fresh_db):
    with connect(fresh_db, autocommit=True) as c:
        c.execute("SELECT tenancy.provision_batch(%s)", (batch_of("d", 2),))
    with connect("postgres", autocommit=True) as admin:
        wait_for(lambda: admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenancy scheduler' AND datname = %s",
            (fresh_db,)).fetchone()[0] == 1, what="the scheduler to start")
        admin.execute(f'DROP DATABASE "{fresh_db}"')  # no WITH (FORCE)
        admin.execute(f'CREATE DATABASE "{fresh_db}"')  # for the fixture's own drop


def test_drop_extension_stops_the_scheduler(fresh_db):
    with connect(fresh_db, autocommit=True) as c:
        count = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'tenancy scheduler' AND datname = current_database()"
        wait_for(lambda: c.execute(count).fetchone()[0] == 1, what="the scheduler to start")
        c.execute("DROP EXTENSION tenancy")
        wait_for(lambda: c.execute(count).fetchone()[0] == 0, timeout=30, what="the scheduler to stop")
        # and it comes back with the extension
        c.execute("CREATE EXTENSION tenancy")
        wait_for(lambda: c.execute(count).fetchone()[0] == 1, timeout=30, what="the scheduler to return")


def test_wait_batch_in_the_queueing_transaction_fails_at_once(db):
    # the worker cannot see the batch before this transaction commits: an
    # error now, not a wait until the timeout
    with pytest.raises(errors.ObjectNotInPrerequisiteState, match="cannot start before it commits"):
        db.execute("""SELECT tenancy.wait_batch(tenancy.provision_batch('[{"slug": "too_soon"}]'), '1 hour')""")
    assert db.execute("SELECT count(*) FROM tenancy.batches").fetchone()[0] == 0


def test_run_worker_pass_commits_each_unit_and_the_worker_waits_for_pg_restore(fresh_db):
    """CALL tenancy.run_worker_pass() does the worker's work in the calling
    session (for pg_cron without the worker), committing after each item:
    from another session the first items are visible while a later one is
    still being made. The worker itself is held off this database by a
    session named pg_restore (as during a restore)."""
    with connect(fresh_db, autocommit=True, application_name="pg_restore"), \
            connect(fresh_db, autocommit=True) as db, connect(fresh_db, autocommit=True) as watch:
        db.execute("""SELECT tenancy.register_template('slow', '{"tables": ["CREATE TABLE t (id int)", "SELECT pg_sleep(3)"]}')""")
        batch = db.execute("SELECT tenancy.provision_batch(%s)", (
            '[{"slug": "pass1"}, {"slug": "pass2"}, {"slug": "pass3", "template": "slow"}]',)).fetchone()[0]
        time.sleep(2)  # a worker would have done them by now
        states = "SELECT status, count(*) FROM tenancy.batch_items WHERE batch_id = %s GROUP BY 1"
        assert dict(watch.execute(states, (batch,)).fetchall()) == {"queued": 3}

        result = {}
        t = threading.Thread(target=lambda: result.update(
            units=db.execute("CALL tenancy.run_worker_pass(10)").fetchone()[0]))
        t.start()
        wait_for(lambda: dict(watch.execute(states, (batch,)).fetchall()) == {"succeeded": 2, "queued": 1},
                 timeout=30, what="the first two items committed while the third is made")
        t.join(30)
        assert result["units"] == 3
        assert dict(watch.execute(states, (batch,)).fetchall()) == {"succeeded": 3}
        assert watch.execute("SELECT status FROM tenancy.batches WHERE id = %s", (batch,)).fetchone()[0] == "completed"
        with pytest.raises(errors.InvalidTransactionTermination):
            with db.transaction():
                db.execute("CALL tenancy.run_worker_pass(1)")
