"""Events for applications: tenancy.events, written in the transaction of
each lifecycle operation and batch transition, announced by NOTIFY
tenancy_events at commit, and read in order by tenancy.events_since; as an
application would, through psycopg."""

import json
import threading
import time

import pytest
from psycopg import errors

from conftest import batch_of, connect, grant_tenant, wait_batch, wait_for


def since(conn, last_id=0):
    return conn.execute("SELECT id, kind, tenant_slug, batch_id, payload FROM tenancy.events_since(%s)",
                        (last_id,)).fetchall()


def settled(conn, count, last_id=0):
    """events_since once it hands out `count` events: a transaction left open
    anywhere in the cluster (another test's worker) delays them a moment."""
    return wait_for(lambda: (lambda rows: rows if len(rows) >= count else None)(since(conn, last_id)),
                    timeout=60, what=f"{count} events")


def kinds(rows):
    return [(r[1], r[2]) for r in rows]


def test_each_lifecycle_operation_is_an_event_in_its_transaction(db):
    db.execute("SELECT tenancy.provision('ev_a')")
    db.execute("SELECT tenancy.provision('ev_b', NULL, 'default', '{\"isolation\": \"shared\"}')")
    db.execute("SELECT tenancy.suspend('ev_a')")
    db.execute("SELECT tenancy.resume('ev_a')")
    db.execute("SELECT tenancy.move_tenant('ev_b', 'schema')")
    db.execute("SELECT tenancy.drop_tenant('ev_a', true)")  # archives it
    db.execute("SELECT tenancy.drop_tenant('ev_a')")
    db.execute("SELECT tenancy.clone_tenant('ev_b', 'ev_c')")
    # rolled back: neither the tenant nor its event
    db.execute("BEGIN")
    db.execute("SELECT tenancy.provision('ev_gone')")
    db.execute("ROLLBACK")
    # a failed operation is no event
    with pytest.raises(errors.UniqueViolation):
        db.execute("SELECT tenancy.provision('ev_b')")
    rows = settled(db, 9)
    assert kinds(rows) == [("provisioned", "ev_a"), ("provisioned", "ev_b"), ("suspended", "ev_a"),
                           ("resumed", "ev_a"), ("moved", "ev_b"), ("archived", "ev_a"), ("dropped", "ev_a"),
                           ("provisioned", "ev_c"), ("cloned", "ev_c")]
    payloads = {(r[1], r[2]): r[4] for r in rows}
    assert payloads[("provisioned", "ev_b")]["isolation"] == "shared"
    assert payloads[("cloned", "ev_c")]["source"] == "ev_b"
    assert payloads[("moved", "ev_b")]["to"] == "schema"
    ids = [r[0] for r in rows]
    assert ids == sorted(ids)
    # the last one read: nothing after it
    assert since(db, ids[-1]) == []
    assert kinds(since(db, ids[3])) == kinds(rows[4:])


def test_a_listener_gets_the_event_of_a_batchs_end(db, fresh_db):
    with connect(fresh_db, autocommit=True) as listener:
        listener.execute("LISTEN tenancy_events")
        batch = db.execute("SELECT tenancy.provision_batch(%s)", (batch_of("evl", 3),)).fetchone()[0]
        heard = []
        deadline = time.monotonic() + 120
        while not any(n["kind"] == "batch_finished" for n in heard):
            assert time.monotonic() < deadline, f"no batch_finished among {heard}"
            for n in listener.notifies(timeout=1.0, stop_after=1):
                assert n.channel == "tenancy_events"
                heard.append(json.loads(n.payload))
        finished = next(n for n in heard if n["kind"] == "batch_finished")
        row = db.execute("SELECT kind, batch_id, payload FROM tenancy.events WHERE id = %s",
                         (finished["id"],)).fetchone()
        assert row[0] == "batch_finished" and row[1] == batch
        assert row[2]["status"] == "completed" and row[2]["succeeded"] == 3 and row[2]["items"] == 3
        # the batch's other events were announced before its end, each once
        before = [n["kind"] for n in heard[:heard.index(finished)]]
        assert before.count("batch_started") == 1 and before.count("provisioned") == 3


def test_an_item_that_fails_is_an_event_of_its_batch(db):
    # b3 is taken by the time the worker makes it: the item fails for good (23505)
    db.execute("BEGIN")
    batch = db.execute("SELECT tenancy.provision_batch(%s)", (batch_of("evf", 3),)).fetchone()[0]
    db.execute("SELECT tenancy.provision('evf3')")
    db.execute("COMMIT")
    assert wait_batch(db, batch) == "partially_completed"
    rows = [r for r in settled(db, 6) if r[3] == batch]
    assert sorted(kinds(rows)) == sorted([("batch_started", None), ("provisioned", "evf1"), ("provisioned", "evf2"),
                                          ("batch_item_failed", "evf3"), ("batch_finished", None)])
    failed = next(r[4] for r in rows if r[1] == "batch_item_failed")
    assert failed["sqlstate"] == "23505" and failed["ordinal"] == 3
    assert rows[0][1] == "batch_started" and rows[-1][1] == "batch_finished"
    assert rows[-1][4]["failed"] == 1


def test_a_consumer_away_during_a_batch_catches_up_with_every_event_in_order(db, fresh_db):
    """Ids are taken before commit, so a transaction holding a lower id can
    commit after one holding a higher: a consumer that kept the highest id it
    saw would skip the lower one. events_since must not."""
    consumer = connect(fresh_db, autocommit=True)
    seen = since(consumer)
    last = seen[-1][0] if seen else 0
    consumer.close()  # away

    # a transaction takes the next id and stays open...
    with connect(fresh_db) as slow:
        slow.execute("SELECT tenancy.provision('evs_slow')")
        # ...while others commit after it, with higher ids: a batch, and a tenant
        batch = db.execute("SELECT tenancy.provision_batch(%s)", (batch_of("evs", 20),)).fetchone()[0]
        db.execute("SELECT tenancy.provision('evs_fast')")
        with connect(fresh_db, autocommit=True) as peek:
            early = since(peek, last)
        # nothing from after the open transaction is handed out yet
        assert early == []
        slow.commit()
    assert wait_batch(db, batch) == "completed"

    # back: reads in pages, as a consumer would, and misses nothing
    every = db.execute("SELECT id FROM tenancy.events WHERE tenant_slug LIKE 'evs%%' OR batch_id = %s",
                       (batch,)).fetchall()
    got = []
    with connect(fresh_db, autocommit=True) as consumer:
        deadline = time.monotonic() + 60
        while len(got) < len(every) and time.monotonic() < deadline:
            page = consumer.execute("SELECT id, kind, tenant_slug FROM tenancy.events_since(%s, 7)",
                                    (last,)).fetchall()
            got += page
            last = page[-1][0] if page else last
        assert consumer.execute("SELECT count(*) FROM tenancy.events_since(%s)", (last,)).fetchone()[0] == 0
    ids = [g[0] for g in got]
    assert len(ids) == len(set(ids)), "an event came twice"
    assert sorted(ids) == sorted(e[0] for e in every), "an event was lost"
    slugs = [g[2] for g in got if g[1] == "provisioned"]
    assert slugs[0] == "evs_slow"  # its transaction began first
    assert sorted(slugs[1:]) == sorted([f"evs{i}" for i in range(1, 21)] + ["evs_fast"])
    batch_kinds = [g[1] for g in got if g[1].startswith("batch")]
    assert batch_kinds[0] == "batch_started" and batch_kinds[-1] == "batch_finished"


def test_concurrent_writers_and_a_polling_consumer_lose_nothing(db, fresh_db):
    """Four sessions provision and drop tenants with commits in every order
    while a consumer polls: the consumer gets each event exactly once."""
    stop = threading.Event()
    got, errors_seen = [], []

    def consume():
        last = 0
        with connect(fresh_db, autocommit=True) as c:
            deadline = None
            while True:
                page = c.execute("SELECT id FROM tenancy.events_since(%s, 50)", (last,)).fetchall()
                got.extend(r[0] for r in page)
                last = page[-1][0] if page else last
                if stop.is_set():
                    # the writers are done: read until every event is in
                    deadline = deadline or time.monotonic() + 60
                    if len(got) >= 4 * 15 * 2 or time.monotonic() > deadline:
                        return

    def write(n):
        try:
            with connect(fresh_db) as w:
                for i in range(15):
                    w.execute("SELECT tenancy.provision(%s)", (f"evc{n}_{i}",))
                    if i % 3 == 0:
                        time.sleep(0.01 * n)  # hold the transaction a while
                    w.execute("SELECT tenancy.suspend(%s)", (f"evc{n}_{i}",))
                    w.commit()
        except Exception as e:  # noqa: BLE001 (reported below)
            errors_seen.append(e)

    reader = threading.Thread(target=consume)
    reader.start()
    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    reader.join(timeout=90)
    assert not errors_seen
    every = [r[0] for r in db.execute("SELECT id FROM tenancy.events").fetchall()]
    assert len(every) == 4 * 15 * 2
    assert len(got) == len(set(got)), "an event came twice"
    assert sorted(got) == sorted(every), "an event was lost"


def test_maintenance_removes_old_events_and_an_old_cursor_is_refused(db):
    for i in range(5):
        db.execute("SELECT tenancy.provision(%s)", (f"evr{i}",))
    ids = [r[0] for r in db.execute("SELECT id FROM tenancy.events ORDER BY id").fetchall()]
    db.execute("UPDATE tenancy.events SET at = now() - interval '8 days' WHERE id <= %s", (ids[2],))
    result = db.execute("SELECT tenancy.run_maintenance()").fetchone()[0]
    assert result["events_removed"] == 3
    assert [r[0] for r in db.execute("SELECT id FROM tenancy.events ORDER BY id").fetchall()] == ids[3:]
    with pytest.raises(errors.InvalidParameterValue, match=f"event {ids[1]} is not kept"):
        since(db, ids[1])
    assert [r[0] for r in settled(db, 1, ids[3])] == ids[4:]
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT * FROM tenancy.events_since(0, 0)")


def test_events_are_for_the_admin_not_for_tenants(db, fresh_db, login):
    db.execute("SELECT tenancy.provision('evp')")
    grant_tenant(db, login, "evp")
    with connect(fresh_db, user=login, autocommit=True) as t:
        with pytest.raises(errors.InsufficientPrivilege):
            t.execute("SELECT * FROM tenancy.events")
        with pytest.raises(errors.InsufficientPrivilege):
            t.execute("SELECT * FROM tenancy.events_since(0)")
        with pytest.raises(errors.InsufficientPrivilege):
            t.execute("SELECT tenancy._event_write('provisioned', NULL, 'forged', NULL, '{}')")
        with pytest.raises(errors.InsufficientPrivilege):
            t.execute("INSERT INTO tenancy.events (kind) VALUES ('forged')")
    admin = db.execute("SELECT tenancy.admin_role()").fetchone()[0]
    db.execute(f'GRANT "{admin}" TO "{login}"')
    with connect(fresh_db, user=login, autocommit=True) as a:
        assert [r[1] for r in settled(a, 1)] == ["provisioned"]
        with pytest.raises(errors.InsufficientPrivilege):
            a.execute("INSERT INTO tenancy.events (kind) VALUES ('forged')")
        with pytest.raises(errors.InsufficientPrivilege):
            a.execute("SELECT tenancy._event_write('provisioned', NULL, 'forged', NULL, '{}')")


def test_only_a_writers_open_transaction_holds_events_back(db, fresh_db, login):
    """Attack: any login keeps a transaction open (in another database, or in
    this one without the right to write events) to stall every consumer.
    Only sessions that could write an event hold events back."""
    with connect("postgres", user=login) as elsewhere, connect(fresh_db, user=login) as here:
        for c in (elsewhere, here):
            c.execute("SELECT pg_current_xact_id()")  # an xid, and the transaction stays open
        db.execute("SELECT tenancy.provision('evh1')")
        assert kinds(settled(db, 1, 0))[-1] == ("provisioned", "evh1")
        for c in (elsewhere, here):
            c.rollback()
        # a member of the admin role could write one: its open transaction holds back
        admin = db.execute("SELECT tenancy.admin_role()").fetchone()[0]
        db.execute(f'GRANT "{admin}" TO "{login}"')
        with connect(fresh_db, user=login) as writer:
            writer.execute("SELECT pg_current_xact_id()")
            db.execute("SELECT tenancy.provision('evh2')")
            assert ("provisioned", "evh2") not in kinds(since(db))
            writer.rollback()
        assert kinds(settled(db, 2, 0))[-1] == ("provisioned", "evh2")
