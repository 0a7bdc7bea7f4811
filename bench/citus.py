"""Schema tenants on one node and on Citus (a coordinator and two workers,
all on this machine), in one run: a batch of --tenants tenants through the
worker, --single tenants made one `provision` call at a time, and a query
workload of --clients sessions each reading a random tenant's table by key
through the (coordinator) node for --seconds.

Needs Citus built by hand (README, "Scale-out on Citus"); run inside the root
that has it: scripts/in-root 17 bench/run citus.
"""

import argparse
import os
import random
import statistics
import sys
import threading
import time
import uuid

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import citus_cluster  # noqa: E402


def arm(name, connect, args):
    with connect() as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS tenancy")
        owner = c.execute("SELECT 'tenancy_owner_' || oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        c.execute(f'ALTER ROLE "{owner}" LOGIN')  # what the README asks on Citus; harmless on one node
        batch = [{"slug": f"b{i}"} for i in range(args.tenants)]
        t0 = time.monotonic()
        b = c.execute("SELECT tenancy.provision_batch(%s::jsonb, '{\"max_concurrent\": 2}')",
                      (psycopg.types.json.Json(batch),)).fetchone()[0]
        status = c.execute("SELECT tenancy.wait_batch(%s, '60 min')", (b,)).fetchone()[0]
        batch_s = time.monotonic() - t0
        single = []
        for i in range(args.single):
            t = time.monotonic()
            c.execute("SELECT tenancy.provision(%s)", (f"s{i}",))
            single.append((time.monotonic() - t) * 1000)
        for i in range(args.tenants):  # a row each to read
            c.execute(f"INSERT INTO tenant_b{i}.users (email) VALUES ('one@example.com')")
    counts = [0] * args.clients
    stop = time.monotonic() + args.seconds

    def client(k):
        rnd = random.Random(k)
        with connect() as q:
            while time.monotonic() < stop:
                q.execute(f"SELECT id FROM tenant_b{rnd.randrange(args.tenants)}.users WHERE email = 'one@example.com'").fetchall()
                counts[k] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    qps = sum(counts) / args.seconds
    print(f"{name}: batch of {args.tenants} {status} in {batch_s:.1f} s ({batch_s / args.tenants * 1000:.1f} ms a tenant); "
          f"provision one at a time: p50 {statistics.median(single):.1f} ms; "
          f"{args.clients} clients reading by key: {qps:.0f} queries/s", flush=True)
    return batch_s, statistics.median(single), qps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--single", type=int, default=50)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    args = ap.parse_args()
    pg_bin = os.environ.get("TENANCY_PG_BIN", "/usr/lib/postgresql/17/bin")
    if not citus_cluster.installed(pg_bin):
        sys.exit(f"bench/citus: Citus is not installed for {pg_bin} (README, Scale-out on Citus)")

    dbname = "bench_" + uuid.uuid4().hex[:8]
    kw = dict(host=args.host, port=args.port, user="postgres", autocommit=True)
    with psycopg.connect(dbname="postgres", **kw) as a:
        a.execute(f'CREATE DATABASE "{dbname}"')
    try:
        one = arm("one node", lambda: psycopg.connect(dbname=dbname, **kw), args)
    finally:
        with psycopg.connect(dbname="postgres", **kw) as a:
            a.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')
    cluster = citus_cluster.Cluster(pg_bin)
    try:
        three = arm("Citus, coordinator + 2 workers", cluster.connect, args)
    finally:
        cluster.stop()
    print(f"Citus / one node: batch {three[0] / one[0]:.2f}x the time, one provision {three[1] / one[1]:.2f}x, "
          f"queries {three[2] / one[2]:.2f}x the rate")


if __name__ == "__main__":
    main()
