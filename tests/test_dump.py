"""Backups: pg_dump of a database with schema tenants, shared tenants, a
finished batch and metrics history, restored with pg_restore into a new
database, has the same catalog and tenants, and the worker serves it."""

import json
import os
import subprocess
import tempfile
import time
import uuid

from conftest import HOST, PG_BIN, PORT, batch_of, connect, wait_batch

# what must come back unchanged, table by table
SNAPSHOT = {
    "tenants": "SELECT to_jsonb(t) FROM tenancy.tenants t ORDER BY id",
    # shipped templates are loaded again by CREATE EXTENSION (a new created_at)
    "templates": "SELECT to_jsonb(t) - CASE WHEN shipped THEN 'created_at' ELSE '' END "
                 "FROM tenancy.templates t ORDER BY name, version",
    "batches": "SELECT to_jsonb(b) FROM tenancy.batches b ORDER BY id",
    "batch_items": "SELECT to_jsonb(i) FROM tenancy.batch_items i ORDER BY batch_id, ordinal",
    "metrics": "SELECT to_jsonb(m) FROM tenancy.tenant_metrics m ORDER BY tenant_id, collected_at",
    "audit": "SELECT to_jsonb(a) FROM tenancy.audit_log a ORDER BY id",
    "pool": "SELECT to_jsonb(p) FROM tenancy.pool_settings p ORDER BY template",
    "data": "SELECT email FROM tenant_dump_a.users UNION ALL SELECT email FROM shared_default.users ORDER BY 1",
    "policies": "SELECT polrelid::regclass::text, polname, pg_get_expr(polqual, polrelid) FROM pg_policy ORDER BY 1, 2",
    "partitions": "SELECT inhparent::regclass::text, inhrelid::regclass::text FROM pg_inherits "
                  "WHERE inhparent::regclass::text LIKE 'tenancy.%' ORDER BY 1, 2",
}


NOTES_V1 = {"tables": ["CREATE TABLE notes (id bigint PRIMARY KEY)"]}
NOTES_V2 = {"tables": NOTES_V1["tables"] + ["CREATE TABLE tags (id bigint PRIMARY KEY)"],
            "migrations": ["CREATE TABLE tags (id bigint PRIMARY KEY)"]}


def snapshot(dbname):
    with connect(dbname, autocommit=True) as c:
        return {k: c.execute(q).fetchall() for k, q in SNAPSHOT.items()}


def run(*cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{cmd[0]} failed:\n{done.stderr}"
    return done.stderr


def test_dump_and_restore_into_a_new_database(db, fresh_db):
    db.execute("SELECT tenancy.provision('dump_a', 'Dump A', 'default', '{\"max_users\": 10}')")
    db.execute("INSERT INTO tenant_dump_a.users (email) VALUES ('a@dump')")
    db.execute("""SELECT tenancy.provision('dump_s', NULL, 'default', '{"isolation": "shared"}')""")
    db.execute("INSERT INTO shared_default.users (tenant_id, email) "
               "SELECT id, 's@dump' FROM tenancy.tenants WHERE slug = 'dump_s'")
    db.execute("SELECT tenancy.register_template('notes', %s)", (json.dumps(NOTES_V1),))
    db.execute("SELECT tenancy.provision('dump_n', NULL, 'notes')")
    db.execute("INSERT INTO tenant_dump_n.notes VALUES (1)")
    batch = db.execute("SELECT tenancy.provision_batch(%s)", (batch_of("dump_b", 5),)).fetchone()[0]
    assert wait_batch(db, batch) == "completed"
    db.execute("SELECT tenancy.run_maintenance()")
    db.execute("SELECT tenancy.refresh_metrics()")
    db.execute("SELECT tenancy.refresh_metrics()")
    before = snapshot(fresh_db)
    assert len(before["metrics"]) >= 2 * 7 and len(before["partitions"]) > 2

    restored = "t_" + uuid.uuid4().hex[:12]
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o777)
        dump = os.path.join(tmp, "tenancy.dump")
        common = ["-h", HOST, "-p", str(PORT), "-U", "postgres"]
        run(f"{PG_BIN}/pg_dump", *common, "-Fc", "-f", dump, fresh_db)
        run(f"{PG_BIN}/createdb", *common, restored)
        try:
            warnings = run(f"{PG_BIN}/pg_restore", *common, "--exit-on-error", "-d", restored, dump)
            assert "error" not in warnings.lower(), warnings
            after = snapshot(restored)
            for k in SNAPSHOT:
                assert after[k] == before[k], f"{k} differs after restore"
            with connect(restored, autocommit=True) as c:
                assert c.execute("SELECT count(*) FROM tenancy.rls_audit()").fetchone()[0] == 0
                # the source's owner role owned the restored schemas and shared
                # tables; the worker hands them to this database's owner role
                # (tenancy.after_restore) once the restore is over
                owner = c.execute("SELECT tenancy._db_role('owner')").fetchone()[0]
                mine = "SELECT n.nspowner::regrole::text FROM pg_namespace n WHERE n.nspname = %s"
                for _ in range(300):
                    if all(c.execute(mine, (s,)).fetchone()[0] == owner for s in ("tenant_dump_a", "shared_default")):
                        break
                    time.sleep(0.1)
                assert c.execute(mine, ("tenant_dump_a",)).fetchone()[0] == owner
                assert c.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                 "WHERE n.nspname IN ('tenant_dump_a', 'shared_default') "
                                 "AND c.relowner::regrole::text <> %s", (owner,)).fetchone()[0] == 0
                # the source's admins (through its BYPASSRLS role) are nobody in the copy
                src_all = f"tenancy_all_tenants_{c.execute('SELECT oid FROM pg_database WHERE datname = %s', (fresh_db,)).fetchone()[0]}"
                assert not c.execute("SELECT has_table_privilege(%s, 'shared_default.users', 'SELECT')",
                                     (src_all,)).fetchone()[0]
                # done once: nothing more to move
                assert c.execute("SELECT count(*) FROM tenancy.after_restore()").fetchone()[0] == 0
                for slug in ("dump_a", "dump_b1", "dump_s"):
                    h = c.execute("SELECT tenancy.health(%s)", (slug,)).fetchone()[0]
                    assert h["score"] == 100, h
                c.execute("SELECT tenancy.set_tenant('dump_s', false)")
                assert c.execute("SELECT email FROM shared_default.users WHERE tenant_id = tenancy.current_tenant_id()"
                                 ).fetchall() == [("s@dump",)]
                c.execute("RESET ALL")
                # the worker serves the restored database
                batch = c.execute("SELECT tenancy.provision_batch(%s)", (json.dumps([{"slug": "after_restore"}]),)
                                  ).fetchone()[0]
                assert wait_batch(c, batch) == "completed"
                c.execute("SELECT tenancy.provision('dump_a2')")
                # a migration runs as this database's owner role in a restored
                # schema, and the restored tenant's role is granted what it makes
                c.execute("SELECT tenancy.register_template('notes', %s)", (json.dumps(NOTES_V2),))
                assert wait_batch(c, c.execute("SELECT tenancy.migrate('notes', 2)").fetchone()[0]) == "completed"
                # a shared tenant made in the copy reaches the restored shared tables
                c.execute("SELECT tenancy.provision('dump_s2', NULL, 'default', '{\"isolation\": \"shared\"}')")
                role = c.execute("SELECT role_name FROM tenancy.tenants WHERE slug = 'dump_s2'").fetchone()[0]
                with c.transaction():
                    c.execute(f'SET LOCAL ROLE "{role}"')
                    c.execute("SELECT tenancy.set_tenant('dump_s2')")
                    c.execute("INSERT INTO shared_default.users (tenant_id, email) "
                              "VALUES (tenancy.current_tenant_id(), 's2@dump')")
                    assert c.execute("SELECT email FROM shared_default.users").fetchall() == [("s2@dump",)]
                old_role = c.execute("SELECT role_name FROM tenancy.tenants WHERE slug = 'dump_n'").fetchone()[0]
                with c.transaction():
                    c.execute(f'SET LOCAL ROLE "{old_role}"')
                    c.execute("INSERT INTO tenant_dump_n.tags VALUES (1)")
                    assert c.execute("SELECT count(*) FROM tenant_dump_n.notes").fetchone()[0] == 1
                h = c.execute("SELECT tenancy.health('dump_n')").fetchone()[0]
                assert h["score"] == 100, h
        finally:
            with connect("postgres", autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{restored}" WITH (FORCE)')


def test_health_names_a_schema_this_databases_owner_role_does_not_own(db):
    """A restored copy before the worker hands it over (or a schema a superuser gave away): health(tenant)
    says whose it is and what to run, instead of failing on the count it runs as the owner role."""
    db.execute("SELECT tenancy.provision('elsewhere', NULL, 'default', '{\"max_users\": 5}')")
    role = "other_owner_" + uuid.uuid4().hex[:8]
    db.execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        db.execute(f'ALTER SCHEMA tenant_elsewhere OWNER TO "{role}"')
        h = db.execute("SELECT tenancy.health('elsewhere')").fetchone()[0]
        assert h["schema_owner"] == role and h["score"] == 50, h
        assert "tenancy.after_restore()" in " ".join(h["reasons"]), h
    finally:
        db.execute(f'DROP OWNED BY "{role}" CASCADE')
        db.execute(f'DROP ROLE "{role}"')
