"""Fleet migration through the worker against the same DDL from a client.

N tenants (default 1000) of a one-table template get version 2: one added
column and one index. Through tenancy.migrate with max_concurrent C (1 and 4)
against a client sending the same two statements to each tenant schema, one
transaction per tenant, from C connections, on a second fleet of the same
size in the same database. Then the no-op rerun: migrate when every tenant is
already at version 2.
"""

import argparse
import json
import os
import threading
import time
import uuid

import psycopg

V1 = {"tables": ["CREATE TABLE items (id bigint PRIMARY KEY, sku text, qty int)"]}
MIGRATION = ["ALTER TABLE items ADD COLUMN price numeric", "CREATE INDEX items_sku_idx ON items (sku)"]
V2 = {"tables": ["CREATE TABLE items (id bigint PRIMARY KEY, sku text, qty int, price numeric)"],
      "indexes": ["CREATE INDEX items_sku_idx ON items (sku)"], "migrations": MIGRATION}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    args = ap.parse_args()
    kw = dict(host=args.host, port=args.port, user="postgres", autocommit=True)
    n = args.tenants
    print(f"fleet migration of {n} tenants (one column and one index)")
    print(f"{'parallel':>8} {'client t/s':>11} {'migrate t/s':>12} {'migrate/client time':>20}")
    for par in [int(x) for x in args.concurrency.split(",")]:
        db = "bench_" + uuid.uuid4().hex[:8]
        with psycopg.connect(dbname="postgres", **kw) as a:
            a.execute(f'CREATE DATABASE "{db}"')
        try:
            with psycopg.connect(dbname=db, **kw) as c:
                c.execute("CREATE EXTENSION tenancy")
                c.execute("SELECT tenancy.register_template('fleet', %s)", (json.dumps(V1),))
                items = json.dumps([{"slug": f"{p}{i}", "template": "fleet"} for p in ("c", "w") for i in range(n)])
                b = c.execute("SELECT tenancy.provision_batch(%s, '{\"max_concurrent\": 4}')", (items,)).fetchone()[0]
                assert c.execute("SELECT tenancy.wait_batch(%s, '1 hour')", (b,)).fetchone()[0] == "completed"
                # the client's share: fleet c*, by hand
                schemas = [f"tenant_c{i}" for i in range(n)]
                chunks = [schemas[i::par] for i in range(par)]

                def run(chunk):
                    with psycopg.connect(dbname=db, **kw) as cc:
                        for s in chunk:
                            with cc.transaction():
                                cc.execute(f'SET LOCAL search_path = "{s}"')
                                for stmt in MIGRATION:
                                    cc.execute(stmt)

                threads = [threading.Thread(target=run, args=(ch,)) for ch in chunks]
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                client = time.perf_counter() - t0
                # mark the client's fleet as migrated, so migrate() does the w* fleet
                c.execute("SELECT tenancy.register_template('fleet', %s)", (json.dumps(V2),))
                c.execute("UPDATE tenancy.tenants SET template_version = 2 WHERE slug LIKE 'c%'")
                t0 = time.perf_counter()
                b = c.execute("SELECT tenancy.migrate('fleet', 2, %s)", (json.dumps({"max_concurrent": par}),)).fetchone()[0]
                status = c.execute("SELECT tenancy.wait_batch(%s, '1 hour')", (b,)).fetchone()[0]
                worker = time.perf_counter() - t0
                assert status == "completed", status
                t0 = time.perf_counter()
                b = c.execute("SELECT tenancy.migrate('fleet', 2)").fetchone()[0]
                status = c.execute("SELECT tenancy.wait_batch(%s)", (b,)).fetchone()[0]
                noop = time.perf_counter() - t0
                total = c.execute("SELECT total FROM tenancy.batches WHERE id = %s", (b,)).fetchone()[0]
        finally:
            with psycopg.connect(dbname="postgres", **kw) as a:
                a.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
        print(f"{par:>8} {n / client:>11.1f} {n / worker:>12.1f} {worker / client:>20.2f}"
              f"   no-op rerun over {2 * n} tenants: {noop * 1000:.1f} ms ({total} queued)")


if __name__ == "__main__":
    main()
