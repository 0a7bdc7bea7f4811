"""Shared-table tenants behind a real transaction pooler (PgBouncer in
pool_mode = transaction, fewer server connections than clients): what
tests/test_rls.py checks on one connection, here with server connections
handed from client to client between transactions. And why the
session-scoped set_tenant(slug, false) must not be used behind it."""

import os
import random
import shutil
import threading
import time

import pytest

from conftest import HOST, PORT, SHARED, connect, free_port, grant_tenant, seed, shared_tenant, skip_without

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


@pytest.fixture
def pgbouncer(daemon):
    """pgbouncer(users, pool_size) starts a PgBouncer in transaction mode in
    front of the test cluster that lets `users` in (trust, as the cluster
    does) and returns a function that connects through it."""
    if not os.access(PGBOUNCER, os.X_OK):
        skip_without("pgbouncer", "pgbouncer is not installed (Debian package pgbouncer)")

    def start(users, pool_size):
        port = free_port()
        with open(os.path.join(daemon.dir, "userlist.txt"), "w") as f:
            f.writelines(f'"{u}" ""\n' for u in users)
        with open(os.path.join(daemon.dir, "pgbouncer.ini"), "w") as f:
            f.write(f"""[databases]
* = host={HOST} port={PORT}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {daemon.dir}/userlist.txt
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
server_reset_query = DISCARD ALL
logfile = {daemon.dir}/pgbouncer.log
pidfile = {daemon.dir}/pgbouncer.pid
""")
        daemon.start([PGBOUNCER, os.path.join(daemon.dir, "pgbouncer.ini")], port)

        def through(dbname, user):
            # PgBouncer 1.18 (bookworm) cannot keep protocol-level prepared
            # statements across transactions: psycopg must not make them
            return connect(dbname, user=user, host="127.0.0.1", port=port,
                           autocommit=True, prepare_threshold=None)
        return through

    return start


def tenants_for(db, login, prefix, n, rows=2):
    """n shared tenants, each with rows, all granted to the login."""
    ids = {}
    for i in range(n):
        slug = f"{prefix}{i}"
        ids[slug] = shared_tenant(db, slug)
        seed(db, ids[slug], n=rows)
        grant_tenant(db, login, slug)
    return ids


def run_clients(n, work):
    """Runs work(k) in n threads at once; the exceptions they raised."""
    errs = []

    def run(k):
        try:
            work(k)
        except Exception as e:  # noqa: BLE001
            errs.append(repr(e))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errs


def written_by(db, prefix):
    """(title, tenant_id) of the items the clients wrote (titles start with prefix)."""
    return db.execute(f"SELECT title, tenant_id FROM {SHARED}.items WHERE title LIKE %s",
                      (prefix + ":%",)).fetchall()


def test_1000_pooled_transactions_20_tenants(db, fresh_db, login, pgbouncer):
    ids = tenants_for(db, login, "pb", 20)
    through = pgbouncer([login], pool_size=4)
    clients = 20
    order = list(ids) * 50  # 1,000 transactions, 50 per tenant, in random order
    random.Random(15).shuffle(order)
    share = [order[k::clients] for k in range(clients)]
    foreign, carried, served = [0] * clients, [], {}

    def client(k):
        with through(fresh_db, login) as c:
            for n, slug in enumerate(share[k]):
                with c.transaction():  # BEGIN ... COMMIT
                    before = c.execute("SELECT tenancy.current_tenant_id()").fetchone()[0]
                    if before is not None:
                        carried.append(before)
                    c.execute("SELECT tenancy.set_tenant(%s)", (slug,))  # is_local => true, the default
                    pid = c.execute("SELECT pg_backend_pid()").fetchone()[0]
                    served.setdefault(pid, set()).add(k)
                    seen = c.execute(f"SELECT tenant_id FROM {SHARED}.users").fetchall()
                    foreign[k] += sum(1 for (t,) in seen if t != ids[slug])
                    assert len(seen) == 2, (slug, seen)
                    # a row written from what the tenant sees: it lands with
                    # another tenant if the context were another tenant's
                    c.execute(f"INSERT INTO {SHARED}.items (tenant_id, owner_id, title) "
                              f"SELECT tenant_id, id, %s FROM {SHARED}.users ORDER BY id LIMIT 1",
                              (f"pb:{slug}:{k}:{n}",))

    assert run_clients(clients, client) == []
    assert sum(foreign) == 0 and carried == []
    rows = written_by(db, "pb")
    assert len(rows) == 1000
    assert [title for title, tid in rows if tid != ids[title.split(":")[1]]] == []
    # it was a pool: 20 clients took turns on at most 4 server connections
    assert 1 < len(served) <= 4, served
    assert max(len(ks) for ks in served.values()) > 1


def test_concurrent_sessions_mixed_load(db, fresh_db, login, pgbouncer):
    seconds = float(os.environ.get("TENANCY_POOLER_SECONDS", "5"))
    clients = 12
    ids = tenants_for(db, login, "mx", clients, rows=5)
    slugs = list(ids)
    through = pgbouncer([login], pool_size=4)
    foreign, ops = [0] * clients, [0] * clients

    def client(k):
        slug, rnd = slugs[k], random.Random(k)
        with through(fresh_db, login) as c:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                with c.transaction():
                    c.execute("SELECT tenancy.set_tenant(%s)", (slug,))
                    choice = rnd.random()
                    if choice < 0.4:
                        rows = c.execute(f"SELECT tenant_id FROM {SHARED}.items").fetchall()
                    elif choice < 0.6:
                        rows = c.execute(f"SELECT i.tenant_id FROM {SHARED}.items i JOIN {SHARED}.users u "
                                         "ON u.tenant_id = i.tenant_id AND u.id = i.owner_id").fetchall()
                    elif choice < 0.8:
                        rows = c.execute(f"INSERT INTO {SHARED}.items (tenant_id, owner_id, title) "
                                         f"SELECT tenant_id, id, %s FROM {SHARED}.users LIMIT 1 RETURNING tenant_id",
                                         (f"mx:{slug}",)).fetchall()
                    elif choice < 0.9:
                        rows = c.execute(f"UPDATE {SHARED}.items SET status = 'done' WHERE id % 7 = 0 "
                                         "RETURNING tenant_id").fetchall()
                    else:
                        rows = c.execute(f"DELETE FROM {SHARED}.items WHERE title LIKE 'mx:%%' AND id % 11 = 0 "
                                         "RETURNING tenant_id").fetchall()
                    foreign[k] += sum(1 for (t,) in rows if t != ids[slug])
                    ops[k] += 1

    assert run_clients(clients, client) == []
    print(f"{sum(ops)} transactions in {seconds:.0f} s by {clients} clients on 4 server connections, "
          f"foreign rows seen: {sum(foreign)}")
    assert sum(foreign) == 0 and min(ops) > 0
    rows = written_by(db, "mx")
    assert rows and [title for title, tid in rows if tid != ids[title.split(":")[1]]] == []


def test_session_scoped_tenant_leaks_to_the_next_client(db, fresh_db, login, pgbouncer):
    """Documents why set_tenant(slug, false) is unsafe behind a transaction
    pooler: the setting stays on the server connection, and the pooler gives
    that connection to whichever client comes next (server_reset_query does
    not run in transaction mode)."""
    ids = tenants_for(db, login, "lk", 2)
    x, y = ids["lk0"], ids["lk1"]
    through = pgbouncer([login], pool_size=1)  # one server connection for every client
    with through(fresh_db, login) as a, through(fresh_db, login) as b:
        # client A, outside a transaction block, sets its tenant for "the session"
        a.execute("SELECT tenancy.set_tenant('lk0', false)")
        pid_a = a.execute("SELECT pg_backend_pid()").fetchone()[0]
        # client B never set a tenant, yet it is tenant lk0 and reads lk0's rows
        assert b.execute("SELECT pg_backend_pid()").fetchone()[0] == pid_a
        assert b.execute("SELECT tenancy.current_tenant_id()").fetchone()[0] == x
        assert {t for (t,) in b.execute(f"SELECT tenant_id FROM {SHARED}.users").fetchall()} == {x}
        # what is safe even on such a connection: set_tenant in the transaction
        with b.transaction():
            b.execute("SELECT tenancy.set_tenant('lk1')")
            assert {t for (t,) in b.execute(f"SELECT tenant_id FROM {SHARED}.users").fetchall()} == {y}
        # and after it, the leaked session value is back
        assert b.execute("SELECT tenancy.current_tenant_id()").fetchone()[0] == x
    # a direct connection of the same login (no pooler) starts with no tenant
    with connect(fresh_db, user=login) as direct:
        assert direct.execute("SELECT tenancy.current_tenant_id()").fetchone()[0] is None
