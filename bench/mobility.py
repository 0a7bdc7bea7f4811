"""Tenants that move, timed on one tenant of 100,000 rows.

A template of two tables (accounts, and notes that reference them) in both
modes; one tenant with 20,000 accounts and 80,000 notes. Timed, each against
a baseline a client would run, in the same run:

- move_tenant shared -> schema and back, against the same rows copied by
  plain INSERT ... SELECT and DELETE statements in one transaction (the floor:
  no checks, no catalog, no locks);
- clone_tenant, against the same INSERT ... SELECT into a second tenant;
- export_tenant with psql + replaying the script into another database,
  against pg_dump -n of the tenant's schema + psql restoring it.

The move's time is also how long the tenant's own sessions wait.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid

import psycopg

MOB = {
    "tables": [
        "CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL)",
        "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE, body text, amount numeric)",
    ],
    "indexes": ["CREATE INDEX notes_account_idx ON notes (account_id)"],
    "shared_tables": [
        "CREATE TABLE accounts (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
        "name text NOT NULL, PRIMARY KEY (tenant_id, id))",
        "CREATE TABLE notes (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
        "account_id bigint NOT NULL, body text, amount numeric, PRIMARY KEY (tenant_id, id), "
        "FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, id) ON DELETE CASCADE)",
        "CREATE INDEX notes_account_idx ON notes (tenant_id, account_id)",
    ],
}


def timed(f):
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the tenant (1/5 accounts, 4/5 notes)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--host", default=os.environ.get("TENANCY_BENCH_HOST", "/var/tmp/tenancy-bench"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("TENANCY_BENCH_PORT", "5497")))
    ap.add_argument("--bin", default=os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
    args = ap.parse_args()
    kw = dict(host=args.host, port=args.port, user="postgres", autocommit=True)
    db, db2 = "bench_" + uuid.uuid4().hex[:8], "bench_" + uuid.uuid4().hex[:8]
    accounts = args.rows // 5
    with psycopg.connect(dbname="postgres", **kw) as a:
        a.execute(f'CREATE DATABASE "{db}"')
        a.execute(f'CREATE DATABASE "{db2}"')
    tmp = tempfile.mkdtemp()
    targets = []
    times = {k: [] for k in ("move to schema", "copy to schema (client)", "move to shared",
                             "copy to shared (client)", "clone", "copy into a new tenant (client)",
                             "export + import", "pg_dump -n + restore (client)")}
    try:
        with psycopg.connect(dbname=db, **kw) as c, psycopg.connect(dbname=db2, **kw) as c2:
            for conn in (c, c2):
                conn.execute("CREATE EXTENSION tenancy")
                conn.execute("SELECT tenancy.register_template('mob', %s)", (json.dumps(MOB),))
            tid = c.execute("SELECT id FROM tenancy.provision('big', NULL, 'mob', '{\"isolation\": \"shared\"}')"
                            ).fetchone()[0]
            c.execute("INSERT INTO shared_mob.accounts (tenant_id, name) SELECT %s, 'account ' || g "
                      "FROM generate_series(1, %s) g", (tid, accounts))
            c.execute("INSERT INTO shared_mob.notes (tenant_id, account_id, body, amount) "
                      "SELECT a.tenant_id, a.id, 'note ' || g || ' of ' || a.name, g * 1.25 "
                      "FROM shared_mob.accounts a, generate_series(1, 4) g")
            c.execute("VACUUM ANALYZE shared_mob.accounts, shared_mob.notes")
            c.execute("CREATE SCHEMA client")
            cols = {"accounts": "id, name", "notes": "id, account_id, body, amount"}
            for run in range(args.runs):
                # the floor: the same copies by plain statements, one transaction
                def client_to_schema():
                    with c.transaction():
                        c.execute("CREATE TABLE client.accounts (id bigint PRIMARY KEY, name text NOT NULL)")
                        c.execute("CREATE TABLE client.notes (id bigint PRIMARY KEY, account_id bigint NOT NULL "
                                  "REFERENCES client.accounts (id) ON DELETE CASCADE, body text, amount numeric)")
                        c.execute("CREATE INDEX ON client.notes (account_id)")
                        for t in ("accounts", "notes"):
                            c.execute(f"INSERT INTO client.{t} ({cols[t]}) SELECT {cols[t]} FROM shared_mob.{t} "
                                      "WHERE tenant_id = %s", (tid,))
                        for t in ("notes", "accounts"):
                            c.execute(f"DELETE FROM shared_mob.{t} WHERE tenant_id = %s", (tid,))
                        raise psycopg.Rollback()
                times["copy to schema (client)"].append(timed(client_to_schema))
                times["move to schema"].append(timed(
                    lambda: c.execute("SELECT tenancy.move_tenant('big', 'schema')")))
                n = c.execute("SELECT count(*) FROM tenant_big.notes").fetchone()[0]
                assert n == accounts * 4, n

                def client_to_shared():
                    with c.transaction():
                        for t in ("accounts", "notes"):
                            c.execute(f"INSERT INTO shared_mob.{t} (tenant_id, {cols[t]}) OVERRIDING SYSTEM VALUE "
                                      f"SELECT %s, {cols[t]} FROM tenant_big.{t}", (tid,))
                        c.execute("ALTER SCHEMA tenant_big RENAME TO client_trash")
                        raise psycopg.Rollback()
                times["copy to shared (client)"].append(timed(client_to_shared))
                times["move to shared"].append(timed(
                    lambda: c.execute("SELECT tenancy.move_tenant('big', 'shared')")))

                def client_clone():
                    with c.transaction():
                        other = uuid.uuid4()
                        for t in ("accounts", "notes"):
                            c.execute(f"INSERT INTO shared_mob.{t} (tenant_id, {cols[t]}) OVERRIDING SYSTEM VALUE "
                                      f"SELECT %s, {cols[t]} FROM shared_mob.{t} WHERE tenant_id = %s", (other, tid))
                        raise psycopg.Rollback()
                times["copy into a new tenant (client)"].append(timed(client_clone))
                slug = f"copy{run}"
                times["clone"].append(timed(
                    lambda: c.execute("SELECT tenancy.clone_tenant('big', %s)", (slug,))))
                c.execute("SELECT tenancy.drop_tenant(%s)", (slug,))

                # export + import, against pg_dump of the same rows as a schema
                c.execute("SELECT tenancy.move_tenant('big', 'schema')")
                path = os.path.join(tmp, "big.sql")
                conn_args = ["-X", "-q", "-h", str(args.host), "-p", str(args.port), "-U", "postgres"]

                # a database of its own for each import (the tenant keeps its id)
                target = f"{db2}_{run}"
                c.execute(f'CREATE DATABASE "{target}"')
                targets.append(target)
                with psycopg.connect(dbname=target, **kw) as t:
                    t.execute("CREATE EXTENSION tenancy")
                    t.execute("SELECT tenancy.register_template('mob', %s)", (json.dumps(MOB),))

                def export_import():
                    subprocess.run([f"{args.bin}/psql", *conn_args, "-d", db, "-At", "-c",
                                    "SELECT * FROM tenancy.export_tenant('big')", "-o", path], check=True)
                    subprocess.run([f"{args.bin}/psql", *conn_args, "-d", target, "-f", path], check=True,
                                   stdout=subprocess.DEVNULL)
                times["export + import"].append(timed(export_import))
                with psycopg.connect(dbname=target, **kw) as t:
                    assert t.execute("SELECT count(*) FROM tenant_big.notes").fetchone()[0] == accounts * 4
                dump = os.path.join(tmp, "dump.sql")

                def dump_restore():
                    subprocess.run([f"{args.bin}/pg_dump", *conn_args[2:], "-d", db,
                                    "-n", "tenant_big", "-f", dump], check=True)
                    subprocess.run([f"{args.bin}/psql", *conn_args, "-d", db2, "-1", "-f", dump], check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times["pg_dump -n + restore (client)"].append(timed(dump_restore))
                c2.execute("DROP SCHEMA tenant_big CASCADE")
                c.execute("SELECT tenancy.move_tenant('big', 'shared')")
                c.execute("SELECT tenancy.run_maintenance()")
    finally:
        with psycopg.connect(dbname="postgres", **kw) as a:
            a.execute(f'DROP DATABASE "{db}" WITH (FORCE)')
            a.execute(f'DROP DATABASE "{db2}" WITH (FORCE)')
            for t in targets:
                a.execute(f'DROP DATABASE "{t}" WITH (FORCE)')
    print(f"one tenant of {args.rows} rows ({accounts} accounts, {accounts * 4} notes), {args.runs} runs, median")
    pairs = [("move to schema", "copy to schema (client)"), ("move to shared", "copy to shared (client)"),
             ("clone", "copy into a new tenant (client)"), ("export + import", "pg_dump -n + restore (client)")]
    for ours, base in pairs:
        a, b = statistics.median(times[ours]), statistics.median(times[base])
        print(f"{ours:<16} {a:7.3f} s   {base:<32} {b:7.3f} s   ratio {a / b:.2f}")


if __name__ == "__main__":
    main()
