"""Batches, queue latency and the warm pool, each against its baseline in
the same run.

1. A batch of N tenants (default 1000) with max_concurrent C (1, 2, 4)
   against the floor: the same DDL (tenancy.template_ddl) sent by C client
   connections, one transaction per tenant. Each C gets a fresh database; the
   floor runs first, so the batch sees the larger catalog.
2. Queue-to-start latency: from the enqueuing statement to its item's start
   (batches.created_at to batch_items.started_at, both server clocks).
3. provision with a warm pool against the raw claim floor (DESIGN's: the
   same steps sent by a client in one transaction on a schema built ahead
   the same way: rename the ready schema, create its role, grant on its
   tables and sequences, insert a catalog row) and against provision that
   builds (pool: false), one call at a time, interleaved.
"""

import argparse
import json
import os
import statistics
import threading
import time
import uuid

import psycopg


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Bench:
    def __init__(self, host, port):
        self.kw = dict(host=host, port=port, user="postgres", autocommit=True)

    def conn(self, db):
        return psycopg.connect(dbname=db, **self.kw)

    def fresh_db(self):
        name = "bench_" + uuid.uuid4().hex[:8]
        with self.conn("postgres") as a:
            a.execute(f'CREATE DATABASE "{name}"')
        with self.conn(name) as c:
            c.execute("CREATE EXTENSION tenancy")
        return name

    def drop_db(self, name):
        with self.conn("postgres") as a:
            a.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def floor_run(b, db, template, slugs, parallel):
    with b.conn(db) as c:
        scripts = ["BEGIN;\n" + ";\n".join(r[0] for r in c.execute(
            "SELECT * FROM tenancy.template_ddl(%s, %s)", (template, s))) + ";\nCOMMIT;" for s in slugs]
    chunks = [scripts[i::parallel] for i in range(parallel)]

    def run(chunk):
        with b.conn(db) as c:
            for sql in chunk:
                c.execute(sql)

    threads = [threading.Thread(target=run, args=(ch,)) for ch in chunks]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def batch_run(b, db, template, slugs, parallel):
    items = json.dumps([{"slug": s, "template": template} for s in slugs])
    with b.conn(db) as c:
        t0 = time.perf_counter()
        batch = c.execute("SELECT tenancy.provision_batch(%s, %s)",
                          (items, json.dumps({"max_concurrent": parallel}))).fetchone()[0]
        status = c.execute("SELECT tenancy.wait_batch(%s, '30 min')", (batch,)).fetchone()[0]
        elapsed = time.perf_counter() - t0
        assert status == "completed", status
        server = c.execute("SELECT extract(epoch FROM finished_at - created_at) FROM tenancy.batches WHERE id = %s",
                           (batch,)).fetchone()[0]
    return elapsed, float(server)


def latency(b, trials):
    db = b.fresh_db()
    try:
        out = []
        with b.conn(db) as c:
            for i in range(trials):
                batch = c.execute("SELECT tenancy.provision_batch(%s)", (json.dumps([{"slug": f"lat{i}"}]),)).fetchone()[0]
                c.execute("SELECT tenancy.wait_batch(%s, '1 min')", (batch,))
                ms = c.execute(
                    "SELECT extract(epoch FROM i.started_at - b.created_at) * 1000 FROM tenancy.batches b "
                    "JOIN tenancy.batch_items i ON i.batch_id = b.id WHERE b.id = %s", (batch,)).fetchone()[0]
                out.append(float(ms))
                time.sleep(0.2)  # let the worker go idle: measure a cold wake-up
        return out
    finally:
        b.drop_db(db)


def claim_floor_sql(i, template):
    """The raw claim floor of one tenant: what a pooled provision must do,
    sent by a client as one transaction."""
    s, r = f"tenant_fl{i}", f"fl_role{i}"
    return (f'BEGIN; ALTER SCHEMA "tenant_rd{i}" RENAME TO "{s}"; CREATE ROLE "{r}" NOLOGIN; '
            f'GRANT USAGE ON SCHEMA "{s}" TO "{r}"; '
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA "{s}" TO "{r}"; '
            f'GRANT USAGE ON ALL SEQUENCES IN SCHEMA "{s}" TO "{r}"; '
            f"INSERT INTO public.floor_catalog (slug, schema_name, role_name, template) "
            f"VALUES ('fl{i}', '{s}', '{r}', '{template}'); COMMIT")


def pool_run(b, template, n, size):
    db = b.fresh_db()
    try:
        pooled, built, floor = [], [], []
        with b.conn(db) as c:
            # the floor's schemas, built ahead as the pool's are (owned by the owner role)
            c.execute("CREATE TABLE public.floor_catalog (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), "
                      "slug text UNIQUE, schema_name name UNIQUE, role_name name, template text, "
                      "created_at timestamptz DEFAULT now())")
            owner = c.execute("SELECT 'tenancy_owner_' || oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
            for i in range(n):
                ddl = [r[0] for r in c.execute("SELECT * FROM tenancy.template_ddl(%s, %s)", (template, f"rd{i}"))]
                ddl[0] += f' AUTHORIZATION "{owner}"'
                c.execute("BEGIN;" + ";\n".join(ddl) + ";COMMIT")
            c.execute("SELECT tenancy.set_pool_size(%s, %s)", (template, size))
            for i in range(n):
                deadline = time.monotonic() + 10
                while c.execute("SELECT ready FROM tenancy.pool_status WHERE template = %s", (template,)).fetchone()[0] < size:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                t0 = time.perf_counter()
                c.execute("SELECT tenancy.provision(%s, NULL, %s)", (f"pooled{i}", template))
                pooled.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                c.execute(claim_floor_sql(i, template))
                floor.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                c.execute("SELECT tenancy.provision(%s, NULL, %s, '{\"pool\": false}')", (f"built{i}", template))
                built.append((time.perf_counter() - t0) * 1000)
            from_pool = c.execute("SELECT count(*) FROM tenancy.audit_log WHERE details->>'from_pool' = 'true'").fetchone()[0]
            c.execute("DO $$DECLARE r record; BEGIN FOR r IN SELECT role_name FROM public.floor_catalog LOOP "
                      "EXECUTE format('DROP OWNED BY %I', r.role_name); EXECUTE format('DROP ROLE %I', r.role_name); "
                      "END LOOP; END$$")
        return pooled, built, floor, from_pool
    finally:
        b.drop_db(db)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--concurrency", default="1,2,4")
    ap.add_argument("--template", default="default")
    ap.add_argument("--latency-trials", type=int, default=30)
    ap.add_argument("--pool-calls", type=int, default=50)
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    ap.add_argument("--skip", default="", help="comma list of parts to skip: batch,latency,pool")
    args = ap.parse_args()
    b = Bench(args.host, args.port)
    skip = set(filter(None, args.skip.split(",")))

    if "batch" not in skip:
        print(f"batch of {args.tenants} tenants, template {args.template!r}")
        print(f"{'parallel':>8} {'floor t/s':>10} {'batch t/s':>10} {'batch/floor time':>17}")
        for par in [int(x) for x in args.concurrency.split(",")]:
            db = b.fresh_db()
            try:
                f = floor_run(b, db, args.template, [f"f{i}" for i in range(args.tenants)], par)
                wall, server = batch_run(b, db, args.template, [f"b{i}" for i in range(args.tenants)], par)
            finally:
                b.drop_db(db)
            print(f"{par:>8} {args.tenants / f:>10.1f} {args.tenants / wall:>10.1f} {wall / f:>17.2f}"
                  f"   (server-side batch time {server:.1f} s)")

    if "latency" not in skip:
        lat = latency(b, args.latency_trials)
        print(f"queue-to-start latency over {len(lat)} one-item batches: "
              f"median {statistics.median(lat):.1f} ms, p95 {pct(lat, 95):.1f} ms, max {max(lat):.1f} ms  (target < 100 ms)")

    if "pool" not in skip:
        pooled, built, floor, from_pool = pool_run(b, args.template, args.pool_calls, 20)
        print(f"provision with a warm pool ({from_pool}/{len(pooled)} from the pool): "
              f"p50 {statistics.median(pooled):.2f} ms, p95 {pct(pooled, 95):.2f} ms  (targets < 1 ms, < 3 ms)")
        print(f"raw claim floor (a client, one transaction):    p50 {statistics.median(floor):.2f} ms, p95 {pct(floor, 95):.2f} ms")
        print(f"ratio pooled/floor p50: {statistics.median(pooled) / statistics.median(floor):.2f}  (target <= 1.5)")
        print(f"provision building (pool: false):             p50 {statistics.median(built):.2f} ms, p95 {pct(built, 95):.2f} ms")
        print(f"ratio pooled/built p50: {statistics.median(pooled) / statistics.median(built):.2f}")


if __name__ == "__main__":
    main()
