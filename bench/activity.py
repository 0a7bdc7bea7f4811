"""The cost of per-tenant activity tracking (tenancy.tenant_activity).

pgbench, simple query protocol, a read-only script of one primary-key
SELECT per transaction against a schema tenant's table (100,000 rows), its
clients all in the same tenant (the worst case: every statement updates the
same shared-memory entry under one lock). Runs with tracking on and off
(tenancy.track_activity, set per connection through PGOPTIONS) alternate,
in the same run; the overhead is 1 - tps(on) / tps(off), per pair, and their
median.

    bench/run activity [--pairs 6] [--seconds 5] [--clients 2]
"""

import argparse
import os
import re
import statistics
import subprocess
import tempfile
import uuid

import psycopg


def pgbench(args, db, track, script):
    env = {**os.environ, "PGOPTIONS": f"-c tenancy.track_activity={track} -c search_path=tenant_bench"}
    out = subprocess.run(
        [args.pgbench, "-h", args.host, "-p", str(args.port), "-U", "postgres", "-n", "-M", "simple",
         "-c", str(args.clients), "-j", str(args.clients), "-T", str(args.seconds), "-f", script, db],
        env=env, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"tps = ([\d.]+)", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    ap.add_argument("--pgbench", default=os.path.join(os.environ.get("TENANCY_PG_BIN", "/usr/lib/postgresql/15/bin"),
                                                       "pgbench"))
    args = ap.parse_args()
    kw = dict(host=args.host, port=args.port, user="postgres", autocommit=True)
    db = "bench_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dbname="postgres", **kw) as a:
        a.execute(f'CREATE DATABASE "{db}"')
    try:
        with psycopg.connect(dbname=db, **kw) as c:
            c.execute("CREATE EXTENSION tenancy")
            c.execute("SELECT tenancy.provision('bench')")
            c.execute("CREATE TABLE tenant_bench.readings (id int PRIMARY KEY, v double precision)")
            c.execute("INSERT INTO tenant_bench.readings SELECT g, random() FROM generate_series(1, 100000) g")
            c.execute("VACUUM ANALYZE tenant_bench.readings")
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write("\\set id random(1, 100000)\nSELECT v FROM readings WHERE id = :id;\n")
            script = f.name
        os.chmod(script, 0o644)
        pgbench(args, db, "on", script)  # warm up
        on, off, overhead = [], [], []
        for i in range(args.pairs):
            # alternate which arm goes first, so a drift of the machine falls on both
            order = ["on", "off"] if i % 2 == 0 else ["off", "on"]
            tps = {arm: pgbench(args, db, arm, script) for arm in order}
            on.append(tps["on"])
            off.append(tps["off"])
            overhead.append(1 - tps["on"] / tps["off"])
            print(f"pair {i + 1}: tracking on {tps['on']:.0f} tps, off {tps['off']:.0f} tps, "
                  f"overhead {overhead[-1] * 100:+.1f}%")
        with psycopg.connect(dbname=db, **kw) as c:
            counted = c.execute("SELECT sum(statements) FROM tenancy.tenant_activity WHERE slug = 'bench'").fetchone()[0]
        print(f"median: on {statistics.median(on):.0f} tps, off {statistics.median(off):.0f} tps, "
              f"overhead {statistics.median(overhead) * 100:+.1f}% (per pair: "
              f"{', '.join(f'{o * 100:+.1f}%' for o in overhead)}); statements counted: {counted}")
        os.unlink(script)
    finally:
        with psycopg.connect(dbname="postgres", **kw) as a:
            a.execute(f'DROP DATABASE "{db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
