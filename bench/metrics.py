"""refresh_metrics over 1,000 and 10,000 tenant schemas (default template),
and health() latency at that size.

One database; tenants are made through a batch (max_concurrent 4), first up
to the small size, measured, then up to the large size, measured again. Each
measurement, after a checkpoint, is the median of 3 refreshes, each in a new
session (a cold relation cache, as the worker's fresh scheduler has).
"""

import argparse
import json
import os
import statistics
import time
import uuid

import psycopg


def drop_orphan_roles(kw):
    """Removes the roles of tenants whose database was dropped (a run's own,
    and those earlier runs left): they would be counted by health() and
    slow it, which a fresh cluster would not see."""
    scratch = "bench_cleanup_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dbname="postgres", **kw) as a:
        a.execute(f'CREATE DATABASE "{scratch}"')
    try:
        with psycopg.connect(dbname=scratch, **kw) as c:
            c.execute("CREATE EXTENSION tenancy")
            while c.execute("SELECT tenancy._drop_orphan_roles()").fetchone()[0] > 0:
                pass
    finally:
        with psycopg.connect(dbname="postgres", **kw) as a:
            a.execute(f'DROP DATABASE "{scratch}" WITH (FORCE)')


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    args = ap.parse_args()
    kw = dict(host=args.host, port=args.port, user="postgres", autocommit=True)
    drop_orphan_roles(kw)
    db = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dbname="postgres", **kw) as a:
        a.execute(f'CREATE DATABASE "{db}"')
    results = []
    try:
        with psycopg.connect(dbname=db, **kw) as c:
            c.execute("CREATE EXTENSION tenancy")
            # keep the worker's own metrics job out of the measurement
            c.execute("UPDATE tenancy.jobs SET next_run_at = now() + interval '1 day'")
        have = 0
        for size in [int(x) for x in args.sizes.split(",")]:
            with psycopg.connect(dbname=db, **kw) as c:
                items = json.dumps([{"slug": f"m{i}"} for i in range(have, size)])
                t0 = time.perf_counter()
                b = c.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')", (items,)).fetchone()[0]
                st = c.execute("SELECT tenancy.wait_batch(%s, '2 hours')", (b,)).fetchone()[0]
                assert st == "completed", st
                made = time.perf_counter() - t0
                rels = c.execute("SELECT count(*) FROM pg_class").fetchone()[0]
                # the measurement is of refresh_metrics, not of the write-back
                # of the 190,000 relations just made
                c.execute("CHECKPOINT")
            have = size
            refresh = []
            for _ in range(3):
                with psycopg.connect(dbname=db, **kw) as c:
                    t0 = time.perf_counter()
                    n = c.execute("SELECT tenancy.refresh_metrics()").fetchone()[0]
                    refresh.append(time.perf_counter() - t0)
                    assert n == size, n
            health = []
            with psycopg.connect(dbname=db, **kw) as c:
                for _ in range(20):
                    t0 = time.perf_counter()
                    c.execute("SELECT tenancy.health()").fetchone()
                    health.append((time.perf_counter() - t0) * 1000)
            results.append((size, rels, statistics.median(refresh), statistics.median(health), made))
            print(f"{size:>6} tenants ({rels} relations in pg_class; made in {made:.0f} s): "
                  f"refresh_metrics {statistics.median(refresh):.2f} s, health() p50 {statistics.median(health):.1f} ms",
                  flush=True)
    finally:
        with psycopg.connect(dbname="postgres", **kw) as a:
            a.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        drop_orphan_roles(kw)
    if len(results) >= 2:
        (s1, r1, t1, _, _), (s2, r2, t2, _, _) = results[0], results[-1]
        print(f"refresh time ratio {t2 / t1:.1f} for {s2 / s1:.0f}x the tenants ({r2 / r1:.1f}x the relations)")


if __name__ == "__main__":
    main()
