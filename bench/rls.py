"""The cost of the RLS policy on a shared table.

1,000,000 rows for 1,000 tenants (1,000 each, primary key (tenant_id, id)).
A query by primary key and a 1,000-row range scan, with set_tenant + the
policy (as an application role), against the same query with an explicit
WHERE tenant_id = ... and RLS not applied (an application role with
BYPASSRLS and the same grants, so both sides pay the same privilege checks),
in the same run, interleaved. Each connection sets its tenant with one
statement before its queries, as a pooled application does. A third arm is PostgreSQL's own floor: a copy of the
table under the textbook policy, `tenant_id = current_setting(...)::uuid`
(no active-tenant check, no move lock, a setting any session may change),
set with set_config the same way.
"""

import argparse
import os
import random
import statistics
import time
import uuid

import psycopg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tenants", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1000, help="rows per tenant")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    args = ap.parse_args()
    kw = dict(host=args.host, port=args.port, autocommit=True)
    db = "bench_" + uuid.uuid4().hex[:8]
    app = "app_" + uuid.uuid4().hex[:8]
    plain_role = "plain_" + uuid.uuid4().hex[:8]
    with psycopg.connect(dbname="postgres", user="postgres", **kw) as a:
        a.execute(f'CREATE DATABASE "{db}"')
    try:
        with psycopg.connect(dbname=db, user="postgres", **kw) as c:
            c.execute("CREATE EXTENSION tenancy")
            c.execute(f'CREATE ROLE "{app}" LOGIN')
            c.execute("SELECT tenancy.provision('first', NULL, 'default', '{\"isolation\": \"shared\"}')")
            c.execute("CREATE TABLE shared_default.readings (tenant_id uuid NOT NULL, id int NOT NULL, "
                      "v double precision, note text, PRIMARY KEY (tenant_id, id))")
            c.execute("SELECT tenancy.enable_rls('shared_default.readings')")
            c.execute(f'GRANT SELECT ON shared_default.readings TO "{app}"')
            c.execute(f'GRANT USAGE ON SCHEMA shared_default TO "{app}"')
            c.execute(f'CREATE ROLE "{plain_role}" LOGIN BYPASSRLS')
            c.execute(f'GRANT SELECT ON shared_default.readings TO "{plain_role}"')
            c.execute(f'GRANT USAGE ON SCHEMA shared_default TO "{plain_role}"')
            # may set any tenant; all_tenants stays off
            c.execute(f'GRANT "{c.execute("SELECT tenancy.admin_role()").fetchone()[0]}" TO "{app}"')
            ids = [uuid.uuid4() for _ in range(args.tenants)]
            c.execute("CREATE TEMP TABLE t_ids (id uuid)")
            with c.cursor().copy("COPY t_ids (id) FROM STDIN") as cp:
                for i in ids:
                    cp.write_row((i,))
            c.execute(f"""INSERT INTO shared_default.readings
                          SELECT t.id, g, random(), 'row ' || g FROM t_ids t, generate_series(1, {args.rows}) g""")
            # tenants the application can set (catalog rows only: this measures the policy)
            c.execute("""INSERT INTO tenancy.tenants (id, slug, status, isolation, template, template_version)
                         SELECT id, 'b' || row_number() OVER (), 'active', 'shared', 'default', 1 FROM t_ids""")
            # the textbook policy, on a copy of the same rows
            c.execute("CREATE TABLE public.readings_textbook AS TABLE shared_default.readings")
            c.execute("ALTER TABLE public.readings_textbook ADD PRIMARY KEY (tenant_id, id)")
            c.execute("ALTER TABLE public.readings_textbook ENABLE ROW LEVEL SECURITY")
            c.execute("CREATE POLICY textbook ON public.readings_textbook "
                      "USING (tenant_id = current_setting('app.tenant_id')::uuid)")
            c.execute(f'GRANT SELECT ON public.readings_textbook TO "{app}"')
            c.execute("VACUUM ANALYZE shared_default.readings")
            c.execute("VACUUM ANALYZE public.readings_textbook")
            total = c.execute("SELECT count(*) FROM shared_default.readings").fetchone()[0]
            slug_of = dict(c.execute("SELECT id, slug FROM tenancy.tenants").fetchall())

        rnd = random.Random(1)
        # One connection per arm, each with the same rhythm (a statement that
        # sets the tenant, then the two queries): a backend's statement just
        # before a query changes its time by tens of microseconds on these
        # machines, more than the policy costs.
        arms = {
            "policy": (app, "SELECT tenancy.set_tenant(%s, false)", "shared_default.readings", ""),
            "plain": (plain_role, "SELECT set_config('app.tenant_id', %s, false)", "shared_default.readings",
                      "tenant_id = %s AND "),
            "textbook": (app, "SELECT set_config('app.tenant_id', %s, false)", "public.readings_textbook", ""),
        }
        times = {arm: {"pk": [], "range": []} for arm in arms}
        conns = {arm: psycopg.connect(dbname=db, user=role, **kw) for arm, (role, _, _, _) in arms.items()}
        try:
            def timed(conn, sql, params):
                t0 = time.perf_counter()
                conn.execute(sql, params).fetchall()
                return (time.perf_counter() - t0) * 1000

            order = list(arms)
            for q in range(args.queries + 100):
                tid = rnd.choice(ids)
                k = rnd.randint(1, args.rows)
                rnd.shuffle(order)
                for arm in order:
                    _, set_sql, table, where = arms[arm]
                    conn = conns[arm]
                    conn.execute(set_sql, (slug_of[tid] if arm == "policy" else str(tid),))
                    lead = (tid,) if where else ()
                    pk = timed(conn, f"SELECT * FROM {table} WHERE {where}id = %s", lead + (k,))
                    rng = timed(conn, f"SELECT * FROM {table} WHERE {where}id BETWEEN 1 AND %s", lead + (args.rows,))
                    if q >= 100:  # warm-up
                        times[arm]["pk"].append(pk)
                        times[arm]["range"].append(rng)
            plan = "\n".join(r[0] for r in conns["policy"].execute(
                "EXPLAIN SELECT * FROM shared_default.readings WHERE id = 5").fetchall())
        finally:
            for conn in conns.values():
                conn.close()
    finally:
        with psycopg.connect(dbname="postgres", user="postgres", **kw) as a:
            a.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            a.execute(f'DROP ROLE IF EXISTS "{app}"')
            a.execute(f'DROP ROLE IF EXISTS "{plain_role}"')
    print(f"RLS policy cost: {total} rows, {args.tenants} tenants, {args.queries} queries of each kind")
    for kind, label in (("pk", "by primary key"), ("range", f"range of {args.rows} rows")):
        r, p, t = (statistics.median(times[arm][kind]) for arm in ("policy", "plain", "textbook"))
        print(f"{label:<22} policy p50 {r:7.3f} ms   explicit WHERE, no RLS p50 {p:7.3f} ms   ratio {r / p:.2f}  (target <= 1.1)")
        print(f"{'':<22} textbook policy p50 {t:7.3f} ms   ratio {t / p:.2f} to no RLS, ours {r / t:.2f} to it")
    print("plan under the policy:\n  " + plan.replace("\n", "\n  "))


if __name__ == "__main__":
    main()
