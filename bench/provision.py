"""provision against the floor, in one run.

The floor: the same DDL (tenancy.template_ddl, the rendered template) sent by
a client as one transaction per tenant, in a single round trip. Tenants are
made alternately by each method, so both see the same catalog size and the
same machine noise. Prints tenants/s, p50/p95 per tenant, and the ratio.
"""

import argparse
import os
import statistics
import time
import uuid

import psycopg


def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=200)
    ap.add_argument("--template", default="default")
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    args = ap.parse_args()

    dbname = "bench_" + uuid.uuid4().hex[:8]
    kw = dict(host=args.host, port=args.port, user="postgres", autocommit=True)
    with psycopg.connect(dbname="postgres", **kw) as admin:
        admin.execute(f'CREATE DATABASE "{dbname}"')
    try:
        with psycopg.connect(dbname=dbname, **kw) as c:
            c.execute("CREATE EXTENSION tenancy")
            if c.execute(
                "SELECT jsonb_array_length(coalesce(spec->'timescale_tables','[]')) > 0 "
                "FROM tenancy.templates WHERE name = %s ORDER BY version DESC LIMIT 1",
                (args.template,),
            ).fetchone()[0]:
                c.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            # the floor's DDL, rendered ahead so its timing is DDL alone
            scripts = {}
            for i in range(args.tenants):
                slug = f"floor_{i}"
                stmts = [r[0] for r in c.execute(
                    "SELECT * FROM tenancy.template_ddl(%s, %s)", (args.template, slug))]
                scripts[slug] = "BEGIN;\n" + ";\n".join(stmts) + ";\nCOMMIT;"
            # warm both paths once (plan caches, relcache)
            c.execute("SELECT tenancy.provision('warm_up', NULL, %s)", (args.template,))
            floor_ms, prov_ms = [], []
            for i in range(args.tenants):
                t0 = time.perf_counter()
                c.execute(scripts[f"floor_{i}"])
                floor_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                c.execute("SELECT tenancy.provision(%s, NULL, %s)", (f"prov_{i}", args.template))
                prov_ms.append((time.perf_counter() - t0) * 1000)
            made = c.execute("SELECT count(*) FROM tenancy.tenants WHERE slug LIKE 'prov\\_%'").fetchone()[0]
            assert made == args.tenants, made
    finally:
        with psycopg.connect(dbname="postgres", **kw) as admin:
            admin.execute(f'DROP DATABASE "{dbname}" WITH (FORCE)')

    def line(name, ms):
        total = sum(ms) / 1000
        return (f"{name:<28} {args.tenants / total:8.1f} tenants/s   "
                f"p50 {statistics.median(ms):6.2f} ms   p95 {pct(ms, 95):6.2f} ms")

    print(f"provision benchmark: {args.tenants} tenants, template {args.template!r}, one connection")
    print(line("floor (client DDL, 1 txn)", floor_ms))
    print(line("tenancy.provision", prov_ms))
    ratio = statistics.mean(prov_ms) / statistics.mean(floor_ms)
    print(f"ratio provision/floor (mean time per tenant): {ratio:.2f}  (target <= 1.3)")
    print(f"provision p95: {pct(prov_ms, 95):.2f} ms  (target < 20 ms)")


if __name__ == "__main__":
    main()
