"""Tenants that move (move_tenant) and tenants copied (clone_tenant):
data equal afterwards (counts and checksums per table), all or nothing on
failure, the tenant's own sessions waiting rather than seeing half a move,
and only the admin allowed to do either."""

import json
import shutil
import subprocess
import threading
import time
import uuid

import pytest
from psycopg import errors

from conftest import HOST, PG_BIN, PORT, connect, grant_tenant, wait_batch, wait_for

# a template whose schema tables and shared tables hold the same columns,
# with identities and a foreign key, so that a tenant can go both ways
MOB = {
    "tables": [
        "CREATE TABLE accounts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL)",
        "CREATE TABLE notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
        "account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE, body text, amount numeric)",
    ],
    "shared_tables": [
        "CREATE TABLE accounts (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
        "name text NOT NULL, PRIMARY KEY (tenant_id, id))",
        "CREATE TABLE notes (tenant_id uuid NOT NULL, id bigint GENERATED ALWAYS AS IDENTITY, "
        "account_id bigint NOT NULL, body text, amount numeric, PRIMARY KEY (tenant_id, id), "
        "FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, id) ON DELETE CASCADE)",
    ],
}
TABLES = {"accounts": "id, name", "notes": "id, account_id, body, amount"}


def mob_template(db):
    db.execute("SELECT tenancy.register_template('mob', %s)", (json.dumps(MOB),))


def provision(db, slug, template="mob", isolation="shared"):
    return db.execute("SELECT id FROM tenancy.provision(%s, NULL, %s, %s)",
                      (slug, template, json.dumps({"isolation": isolation}))).fetchone()[0]


def where(db, slug):
    """(isolation, schema the rows are in, filter) of a tenant now."""
    tid, iso, schema = db.execute("SELECT id, isolation, schema_name FROM tenancy.tenants WHERE slug = %s",
                                  (slug,)).fetchone()
    if iso == "shared":
        return iso, "shared_mob", f"WHERE tenant_id = '{tid}'"
    return iso, schema, ""


def fingerprint(db, slug):
    """Per table: the number of rows and a checksum of their values."""
    _, schema, filt = where(db, slug)
    out = {}
    for table, cols in TABLES.items():
        out[table] = db.execute(
            f"SELECT count(*), md5(coalesce(string_agg(({cols})::text, ',' ORDER BY id), '')) "
            f'FROM "{schema}".{table} {filt}').fetchone()
    return out


def fill(db, slug, accounts=50, notes=4):
    """Rows for a tenant, written as the tenant's own role would."""
    _, schema, _ = where(db, slug)
    tid = db.execute("SELECT id FROM tenancy.tenants WHERE slug = %s", (slug,)).fetchone()[0]
    with db.transaction():
        db.execute("SELECT tenancy.set_tenant(%s)", (slug,))
        tcol, tval = ("tenant_id, ", f"'{tid}', ") if schema == "shared_mob" else ("", "")
        db.execute(f'INSERT INTO "{schema}".accounts ({tcol}name) '
                   f"SELECT {tval}'acct ' || g FROM generate_series(1, {accounts}) g")
        db.execute(f'INSERT INTO "{schema}".notes ({tcol}account_id, body, amount) '
                   f"SELECT {tval}a.id, 'note ' || g || E' with\\ttab and ''quote''', g * 1.5 "
                   f'FROM "{schema}".accounts a, generate_series(1, {notes}) g' + (
                       f" WHERE a.tenant_id = '{tid}'" if tcol else ""))


def error_once_unblocked(db, session, sql, marker, blocker):
    """Runs `sql` in `session` while `blocker`'s open transaction holds what
    it needs: it must be seen waiting for a lock (its text holds `marker`)
    before `blocker` commits. Returns the error it then ends with, or None."""
    failed = []

    def run():
        try:
            session.execute(sql)
        except Exception as e:  # noqa: BLE001
            failed.append(e)
    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND query LIKE %s", (f"%{marker}%",)).fetchone()[0] == 1,
             what=f"{marker!r} to wait")
    time.sleep(0.2)
    blocker.commit()
    t.join(30)
    return failed[0] if failed else None


def test_shared_to_schema_and_back_keeps_every_row(db, fresh_db, login):
    mob_template(db)
    a, b = provision(db, "mv_a"), provision(db, "mv_b")
    fill(db, "mv_a")
    fill(db, "mv_b", accounts=7)
    before_a, before_b = fingerprint(db, "mv_a"), fingerprint(db, "mv_b")
    role = db.execute("SELECT role_name FROM tenancy.tenants WHERE id = %s", (a,)).fetchone()[0]
    grant_tenant(db, login, "mv_a")

    row = db.execute("SELECT id, isolation, schema_name, role_name, status FROM tenancy.move_tenant('mv_a', 'schema')").fetchone()
    assert row == (a, "schema", "tenant_mv_a", role, "active")
    assert fingerprint(db, "mv_a") == before_a
    assert before_a["notes"][0] == 200
    assert fingerprint(db, "mv_b") == before_b
    assert db.execute("SELECT count(*) FROM shared_mob.accounts WHERE tenant_id = %s", (a,)).fetchone()[0] == 0
    health = db.execute("SELECT tenancy.health('mv_a')").fetchone()[0]
    assert health["score"] == 100 and health["missing"] == [] and health["schema_present"], health
    audit = db.execute("SELECT details FROM tenancy.audit_log WHERE action = 'move' AND tenant_id = %s", (a,)).fetchone()[0]
    assert audit["rows"] == {"accounts": 50, "notes": 200} and audit["from"] == "shared"

    # its own login now works in the schema; the identities went past the copied ids
    with connect(fresh_db, user=login) as c:
        c.execute("SELECT tenancy.set_tenant('mv_a')")
        assert c.execute("SELECT count(*) FROM notes").fetchone()[0] == 200
        new_id = c.execute("INSERT INTO accounts (name) VALUES ('after the move') RETURNING id").fetchone()[0]
        assert new_id > 50
        c.commit()
        # and no longer reaches the shared tables
        c.execute("SELECT tenancy.set_tenant('mv_a')")
        with pytest.raises(errors.InsufficientPrivilege):
            c.execute("SELECT count(*) FROM shared_mob.accounts")
    middle = fingerprint(db, "mv_a")
    assert middle["accounts"][0] == 51

    row = db.execute("SELECT id, isolation, schema_name, role_name FROM tenancy.move_tenant('mv_a', 'shared')").fetchone()
    assert row == (a, "shared", None, role)
    assert fingerprint(db, "mv_a") == middle
    assert fingerprint(db, "mv_b") == before_b
    assert db.execute("SELECT to_regnamespace('tenant_mv_a')").fetchone()[0] is None
    # the old schema is dropped by the worker, as a dropped tenant's is
    wait_for(lambda: db.execute("SELECT count(*) = 0 FROM pg_namespace WHERE nspname LIKE 'tenancy\\_trash\\_%'").fetchone()[0],
             what="the worker to drop the old schema")
    with connect(fresh_db, user=login) as c:
        c.execute("SELECT tenancy.set_tenant('mv_a')")
        assert c.execute("SELECT count(*) FROM shared_mob.notes").fetchone()[0] == 200
        assert c.execute("SELECT count(*) FROM shared_mob.accounts WHERE tenant_id <> %s", (a,)).fetchone()[0] == 0
        new_id = c.execute("INSERT INTO shared_mob.accounts (tenant_id, name) VALUES (%s, 'back in shared') RETURNING id",
                           (a,)).fetchone()[0]
        assert new_id > 51
        c.commit()
    health = db.execute("SELECT tenancy.health('mv_a')").fetchone()[0]
    assert health["score"] == 100, health


def test_move_refuses_what_it_would_lose(db):
    # default: the schema tables have updated_at, the shared tables do not
    provision(db, "mv_lose", template="default", isolation="schema")
    db.execute("INSERT INTO tenant_mv_lose.users (email) VALUES ('x@y')")
    with pytest.raises(errors.FeatureNotSupported, match="updated_at"):
        db.execute("SELECT tenancy.move_tenant('mv_lose', 'shared')")
    assert where(db, "mv_lose")[:2] == ("schema", "tenant_mv_lose")
    assert db.execute("SELECT count(*) FROM tenant_mv_lose.users").fetchone()[0] == 1
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT tenancy.move_tenant('mv_lose', 'elsewhere')")
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT tenancy.move_tenant('mv_lose', 'schema')")
    with pytest.raises(errors.UndefinedObject):
        db.execute("SELECT tenancy.move_tenant('mv_nobody', 'schema')")
    db.execute("SELECT tenancy.drop_tenant('mv_lose')")
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT tenancy.move_tenant('mv_lose', 'shared')")


def test_a_foreign_key_the_template_does_not_declare_stops_the_move(db):
    mob_template(db)
    a = provision(db, "mv_fk")
    fill(db, "mv_fk", accounts=5)
    before = fingerprint(db, "mv_fk")
    # a table of the application's that points at the tenant's shared rows
    db.execute("CREATE TABLE public.invoices (tenant_id uuid, account_id bigint, "
               "FOREIGN KEY (tenant_id, account_id) REFERENCES shared_mob.accounts (tenant_id, id))")
    db.execute("INSERT INTO public.invoices SELECT tenant_id, id FROM shared_mob.accounts LIMIT 1")
    with pytest.raises(errors.ForeignKeyViolation):
        db.execute("SELECT tenancy.move_tenant('mv_fk', 'schema')")
    assert where(db, "mv_fk")[0] == "shared"
    assert db.execute("SELECT to_regnamespace('tenant_mv_fk')").fetchone()[0] is None
    assert fingerprint(db, "mv_fk") == before
    assert db.execute("SELECT count(*) FROM tenancy.audit_log WHERE action = 'move'").fetchone()[0] == 0
    db.execute("DROP TABLE public.invoices")
    db.execute("SELECT tenancy.move_tenant('mv_fk', 'schema')")
    assert fingerprint(db, "mv_fk") == before


def test_a_move_killed_before_it_commits_leaves_the_tenant_as_it_was(db, fresh_db):
    mob_template(db)
    provision(db, "mv_kill")
    fill(db, "mv_kill", accounts=20)
    before = fingerprint(db, "mv_kill")
    victim = connect(fresh_db)
    pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
    victim.execute("SELECT tenancy.move_tenant('mv_kill', 'schema')")
    # everything done but the commit: the backend is killed
    db.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(Exception):
        victim.commit()
    victim.close()
    assert where(db, "mv_kill")[0] == "shared"
    assert db.execute("SELECT to_regnamespace('tenant_mv_kill')").fetchone()[0] is None
    assert fingerprint(db, "mv_kill") == before
    # and it can be moved afterwards
    db.execute("SELECT tenancy.move_tenant('mv_kill', 'schema')")
    assert fingerprint(db, "mv_kill") == before


def test_the_tenants_sessions_wait_for_the_move(db, fresh_db, login):
    mob_template(db)
    a = provision(db, "mv_wait")
    fill(db, "mv_wait", accounts=3)
    grant_tenant(db, login, "mv_wait")

    # a write in flight: the move waits for it, and the row moves too
    tenant = connect(fresh_db, user=login)
    tenant.execute("SELECT tenancy.set_tenant('mv_wait')")
    tenant.execute("INSERT INTO shared_mob.accounts (tenant_id, name) VALUES (%s, 'in flight')", (a,))
    done = []
    mover = threading.Thread(target=lambda: done.append(
        connect(fresh_db, autocommit=True).execute("SELECT tenancy.move_tenant('mv_wait', 'schema')").fetchone()))
    mover.start()
    wait_for(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND query LIKE '%move_tenant%'").fetchone()[0] == 1, what="the move to wait")
    assert not done
    tenant.commit()
    mover.join(30)
    assert done
    assert db.execute("SELECT count(*) FROM tenant_mv_wait.accounts WHERE name = 'in flight'").fetchone()[0] == 1

    # a statement that starts during a move waits, then is told to retry
    # (40001), rather than read or write where the tenant no longer is
    mover = connect(fresh_db)
    mover.execute("SELECT tenancy.move_tenant('mv_wait', 'shared')")
    tenant.execute("SELECT tenancy.set_tenant('mv_wait')")
    failed = error_once_unblocked(db, tenant, "INSERT INTO tenant_mv_wait.accounts (name) VALUES ('during')",
                                  "during", mover)
    assert isinstance(failed, (errors.UndefinedTable, errors.InvalidSchemaName)), failed
    tenant.rollback()
    mover.close()
    # moved to shared: a shared statement during the next move gets 40001
    mover = connect(fresh_db)
    mover.execute("SELECT tenancy.move_tenant('mv_wait', 'schema')")
    tenant.execute("SELECT tenancy.set_tenant('mv_wait')")
    failed = error_once_unblocked(db, tenant, "SELECT count(*) FROM shared_mob.accounts",
                                  "shared_mob.accounts", mover)
    assert isinstance(failed, errors.SerializationFailure), failed
    tenant.rollback()
    tenant.close()
    mover.close()
    assert db.execute("SELECT count(*) FROM tenant_mv_wait.accounts").fetchone()[0] == 4


def test_a_write_into_an_empty_table_waits_for_the_move(db, fresh_db, login):
    # hostile review: the tables a move left out as empty were not locked,
    # and a row written there went away with the old schema
    mob_template(db)
    provision(db, "mv_empty", isolation="schema")
    grant_tenant(db, login, "mv_empty")
    mover = connect(fresh_db)
    mover.execute("SELECT tenancy.move_tenant('mv_empty', 'shared')")
    tenant = connect(fresh_db, user=login, autocommit=True)
    tenant.execute("SELECT tenancy.set_tenant('mv_empty', false)")
    failed = error_once_unblocked(db, tenant,
                                  "INSERT INTO tenant_mv_empty.accounts (name) VALUES ('written during the move')",
                                  "written during", mover)
    assert isinstance(failed, errors.UndefinedTable), failed
    tenant.close()
    mover.close()
    # a move in a transaction whose snapshot is older than its locks: refused
    with connect(fresh_db) as c:
        c.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(errors.FeatureNotSupported, match="READ COMMITTED"):
            c.execute("SELECT tenancy.move_tenant('mv_empty', 'schema')")


def test_a_tenants_own_ids_do_not_use_up_a_shared_sequence(db):
    # hostile review: a tenant picks its ids (OVERRIDING SYSTEM VALUE); moved
    # or cloned into the shared tables, the shared sequence followed them
    mob_template(db)
    other = provision(db, "seq_other")
    provision(db, "seq_big", isolation="schema")
    db.execute("INSERT INTO tenant_seq_big.accounts (id, name) OVERRIDING SYSTEM VALUE "
               "VALUES (9223372036854775000, 'the last id')")
    last = db.execute("SELECT pg_sequence_last_value('shared_mob.accounts_id_seq')").fetchone()[0]
    with pytest.raises(errors.NumericValueOutOfRange, match="more than half"):
        db.execute("SELECT tenancy.move_tenant('seq_big', 'shared')")
    with pytest.raises(errors.NumericValueOutOfRange):
        db.execute("SELECT tenancy.clone_tenant('seq_big', 'seq_copy', '{\"isolation\": \"shared\"}')")
    assert db.execute("SELECT pg_sequence_last_value('shared_mob.accounts_id_seq')").fetchone()[0] == last
    assert where(db, "seq_big")[0] == "schema"
    db.execute("INSERT INTO shared_mob.accounts (tenant_id, name) VALUES (%s, 'still fine')", (other,))
    # ids that fit move, and the shared sequence goes past them
    db.execute("DELETE FROM tenant_seq_big.accounts")
    db.execute("INSERT INTO tenant_seq_big.accounts (id, name) OVERRIDING SYSTEM VALUE VALUES (5000, 'fits')")
    db.execute("SELECT tenancy.move_tenant('seq_big', 'shared')")
    assert db.execute("SELECT pg_sequence_last_value('shared_mob.accounts_id_seq')").fetchone()[0] == 5000


def test_clone_copies_the_data_into_a_new_tenant(db, fresh_db, login):
    mob_template(db)
    src = provision(db, "cl_src")
    fill(db, "cl_src", accounts=30)
    db.execute("UPDATE tenancy.tenants SET settings = '{\"plan\": \"pro\"}', max_users = 9 WHERE id = %s", (src,))
    before = fingerprint(db, "cl_src")

    # shared to shared: the same rows under the copy's id
    row = db.execute("SELECT id, isolation, settings, max_users, name FROM tenancy.clone_tenant('cl_src', 'cl_copy', "
                     "'{\"name\": \"Staging copy\"}')").fetchone()
    copy_id = row[0]
    assert copy_id != src and row[1:] == ("shared", {"plan": "pro"}, 9, "Staging copy")
    assert fingerprint(db, "cl_copy") == before
    assert fingerprint(db, "cl_src") == before
    # each sees its own rows only
    grant_tenant(db, login, "cl_copy")
    with connect(fresh_db, user=login) as c:
        c.execute("SELECT tenancy.set_tenant('cl_copy')")
        assert c.execute("SELECT count(DISTINCT tenant_id), count(*) FROM shared_mob.accounts").fetchone() == (1, 30)
        c.execute("INSERT INTO shared_mob.accounts (tenant_id, name) VALUES (%s, 'only in the copy')", (copy_id,))
        c.commit()
    assert fingerprint(db, "cl_src") == before

    # shared to a schema, and schema to schema
    db.execute("SELECT tenancy.clone_tenant('cl_src', 'cl_schema', '{\"isolation\": \"schema\"}')")
    assert fingerprint(db, "cl_schema") == before
    db.execute("SELECT tenancy.clone_tenant('cl_schema', 'cl_schema2')")
    assert where(db, "cl_schema2")[:2] == ("schema", "tenant_cl_schema2")
    assert fingerprint(db, "cl_schema2") == before
    assert db.execute("INSERT INTO tenant_cl_schema2.accounts (name) VALUES ('new') RETURNING id").fetchone()[0] > 30
    assert db.execute("SELECT tenancy.health('cl_schema2')").fetchone()[0]["score"] == 100
    audit = db.execute("SELECT details FROM tenancy.audit_log WHERE action = 'clone' AND tenant_slug = 'cl_copy'").fetchone()[0]
    assert audit["source"] == "cl_src" and audit["rows"] == {"accounts": 30, "notes": 120}

    # a slug taken, a dropped source, a bad slug: an error and nothing made
    n = db.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0]
    with pytest.raises(errors.UniqueViolation):
        db.execute("SELECT tenancy.clone_tenant('cl_src', 'cl_copy')")
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT tenancy.clone_tenant('cl_src', 'Bad Slug')")
    db.execute("SELECT tenancy.drop_tenant('cl_schema')")
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db.execute("SELECT tenancy.clone_tenant('cl_schema', 'cl_ghost')")
    assert db.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == n


def test_only_the_admin_moves_or_clones(db, fresh_db, login):
    mob_template(db)
    provision(db, "adm_mv")
    fill(db, "adm_mv", accounts=2)
    grant_tenant(db, login, "adm_mv")
    # the tenant's own login: neither, nor the helpers
    with connect(fresh_db, user=login, autocommit=True) as c:
        for sql in ("SELECT tenancy.move_tenant('adm_mv', 'schema')",
                    "SELECT tenancy.clone_tenant('adm_mv', 'adm_stolen')",
                    "SELECT tenancy._move_tenant('adm_mv', 'schema')",
                    "SELECT tenancy._clone_tenant('adm_mv', 'adm_stolen', '{}')"):
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(sql)
    assert where(db, "adm_mv")[0] == "shared"
    # a member of the admin role: both
    admin = db.execute("SELECT tenancy.admin_role()").fetchone()[0]
    db.execute(f'GRANT "{admin}" TO "{login}"')
    with connect(fresh_db, user=login, autocommit=True) as c:
        c.execute("SELECT tenancy.move_tenant('adm_mv', 'schema')")
        c.execute("SELECT tenancy.clone_tenant('adm_mv', 'adm_copy')")
        assert c.execute("SELECT actor FROM tenancy.audit_log WHERE action = 'clone'").fetchone()[0] == login
    db.execute(f'REVOKE "{admin}" FROM "{login}"')


def test_a_batch_moves_tenants_through_the_worker(db):
    mob_template(db)
    slugs = [f"mb_{i}" for i in range(5)]
    for s in slugs:
        provision(db, s)
        fill(db, s, accounts=10, notes=2)
    before = {s: fingerprint(db, s) for s in slugs}
    db.execute("SELECT tenancy.move_tenant('mb_0', 'schema')")  # already there: not queued
    # one that cannot move: a key of the application's points at its rows
    db.execute("CREATE TABLE public.invoices (tenant_id uuid, account_id bigint, "
               "FOREIGN KEY (tenant_id, account_id) REFERENCES shared_mob.accounts (tenant_id, id))")
    db.execute("INSERT INTO public.invoices SELECT tenant_id, id FROM shared_mob.accounts "
               "WHERE tenant_id = (SELECT id FROM tenancy.tenants WHERE slug = 'mb_4') LIMIT 1")
    batch = db.execute("SELECT tenancy.move_tenants(%s, 'schema', '{\"max_concurrent\": 2}')", (slugs,)).fetchone()[0]
    assert wait_batch(db, batch) == "partially_completed"
    status = db.execute("SELECT tenancy.batch_status(%s)", (batch,)).fetchone()[0]
    assert (status["total"], status["succeeded"], status["failed"]) == (4, 3, 1), status
    failed = [r for r in status["results"] if not r["success"]]
    assert failed[0]["slug"] == "mb_4" and "invoices" in failed[0]["error"], failed
    for s in slugs[:4]:
        assert where(db, s)[0] == "schema"
        assert fingerprint(db, s) == before[s]
    assert where(db, "mb_4")[0] == "shared" and fingerprint(db, "mb_4") == before["mb_4"]
    assert [r["schema_name"] for r in status["results"] if r["success"]] == ["tenant_mb_1", "tenant_mb_2", "tenant_mb_3"]
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT tenancy.move_tenants(ARRAY['mb_1'], 'nowhere')")
    with pytest.raises(errors.UndefinedObject, match="mb_nobody"):
        db.execute("SELECT tenancy.move_tenants(ARRAY['mb_1', 'mb_nobody'], 'shared')")
    with pytest.raises(errors.InvalidParameterValue):
        db.execute("SELECT tenancy.move_tenants(ARRAY['mb_1'], 'shared', '{\"retry\": 1}')")
    db.execute("DROP TABLE public.invoices")


# ---- export and import -------------------------------------------------------



def psql(dbname, *args, host=HOST, port=PORT, user="postgres"):
    return subprocess.run([f"{PG_BIN}/psql", "-X", "-h", str(host), "-p", str(port), "-U", user, "-d", dbname, *args],
                          capture_output=True, text=True)


def export(dbname, slug, path, user="postgres", **kw):
    """The one psql command the README gives."""
    done = psql(dbname, "-At", "-c", f"SELECT * FROM tenancy.export_tenant('{slug}')", "-o", str(path), user=user, **kw)
    assert done.returncode == 0, done.stderr
    return path


def catalog_row(conn, slug):
    return conn.execute("SELECT id, slug, name, isolation, template, template_version, status, settings, features, "
                        "max_users FROM tenancy.tenants WHERE slug = %s", (slug,)).fetchone()


@pytest.fixture
def other_db(db):
    """A second database of the same cluster, with the extension."""
    name = "t_" + uuid.uuid4().hex[:12]
    db.execute(f'CREATE DATABASE "{name}"')
    with connect(name, autocommit=True) as c:
        c.execute("CREATE EXTENSION tenancy")
        yield name, c
    db.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_export_and_import_between_databases(db, fresh_db, other_db, login, tmp_path):
    name2, db2 = other_db
    for conn in (db, db2):
        mob_template(conn)
    provision(db, "ex_sh")
    provision(db, "ex_sc", isolation="schema")
    fill(db, "ex_sh", accounts=40)
    fill(db, "ex_sc", accounts=25)
    db.execute("UPDATE tenancy.tenants SET settings = '{\"plan\": \"pro\"}', max_users = 3 WHERE slug = 'ex_sh'")
    db.execute("SELECT tenancy.suspend('ex_sc')")
    # export and import by an admin that is not a superuser
    admin = db.execute("SELECT tenancy.admin_role()").fetchone()[0]
    admin2 = db2.execute("SELECT tenancy.admin_role()").fetchone()[0]
    db.execute(f'GRANT "{admin}" TO "{login}"')
    db.execute(f'GRANT "{admin2}" TO "{login}"')
    for slug in ("ex_sh", "ex_sc"):
        path = export(fresh_db, slug, tmp_path / f"{slug}.sql", user=login)
        script = path.read_text()
        assert "COPY pg_temp.tenancy_import_1" in script and "INSERT" not in script
        done = psql(name2, "-f", str(path), user=login)
        assert done.returncode == 0, done.stderr
        assert catalog_row(db2, slug) == catalog_row(db, slug)
        assert fingerprint(db2, slug) == fingerprint(db, slug)
    assert fingerprint(db2, "ex_sh")["notes"][0] == 160
    assert db2.execute("SELECT count(*) FROM tenancy.audit_log WHERE action = 'import'").fetchone()[0] == 2
    # the imported tenants work: identities past the imported ids, health clean
    db2.execute("SELECT tenancy.resume('ex_sc')")
    assert db2.execute("INSERT INTO tenant_ex_sc.accounts (name) VALUES ('new') RETURNING id").fetchone()[0] > 25
    for slug in ("ex_sh", "ex_sc"):
        assert db2.execute("SELECT tenancy.health(%s)", (slug,)).fetchone()[0]["score"] == 100
    db.execute(f'REVOKE "{admin}" FROM "{login}"')
    db.execute(f'REVOKE "{admin2}" FROM "{login}"')


def test_import_fails_cleanly(db, fresh_db, other_db, tmp_path):
    name2, db2 = other_db
    mob_template(db)
    provision(db, "ex_f")
    fill(db, "ex_f", accounts=5)
    path = export(fresh_db, "ex_f", tmp_path / "ex_f.sql")

    def nothing_made():
        assert db2.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == n
        assert db2.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%'").fetchone()[0] == s
        assert db2.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE %s",
                           (f"t{db2.execute('SELECT oid FROM pg_database WHERE datname = current_database()').fetchone()[0]}_ex_f",)
                           ).fetchone()[0] == 0

    # the template version is missing: 42704, and nothing is made
    n, s = 0, 0
    done = psql(name2, "-f", str(path))
    assert done.returncode != 0 and 'template "mob" version 1 is not in this database' in done.stderr, done.stderr
    nothing_made()
    # the slug is taken: 23505, nothing made
    mob_template(db2)
    db2.execute("SELECT tenancy.provision('ex_f', NULL, 'default')")
    n, s = 1, 1
    done = psql(name2, "-f", str(path))
    assert done.returncode != 0 and "already exists" in done.stderr, done.stderr
    assert db2.execute("SELECT template FROM tenancy.tenants WHERE slug = 'ex_f'").fetchone()[0] == "default"
    # a table the template here does not have: 0A000
    text = path.read_text().replace('"name":"notes"', '"name":"nodes"').replace('"slug":"ex_f"', '"slug":"ex_g"')
    (tmp_path / "bad.sql").write_text(text)
    done = psql(name2, "-f", str(tmp_path / "bad.sql"))
    assert done.returncode != 0 and "nodes" in done.stderr, done.stderr
    assert db2.execute("SELECT count(*) FROM tenancy.tenants").fetchone()[0] == 1
    # the finish without a beginning, the beginning without a header
    with pytest.raises(errors.ObjectNotInPrerequisiteState):
        db2.execute("SELECT tenancy.import_finish()")
    with pytest.raises(errors.InvalidParameterValue):
        db2.execute("SELECT tenancy.import_begin('{}')")


def test_a_tenant_cannot_export_itself_or_import(db, fresh_db, login):
    mob_template(db)
    provision(db, "ex_own")
    grant_tenant(db, login, "ex_own")
    with connect(fresh_db, user=login, autocommit=True) as c:
        for sql in ("SELECT * FROM tenancy.export_tenant('ex_own')",
                    "SELECT tenancy.import_begin('{}')", "SELECT tenancy.import_finish()"):
            with pytest.raises(errors.InsufficientPrivilege):
                c.execute(sql)


@pytest.fixture
def second_cluster(tmp_path_factory):
    """Another cluster of the same PostgreSQL, on its own port."""
    d = f"/var/tmp/tenancy-second-{uuid.uuid4().hex[:6]}"
    port = 5493
    sudo = ["sudo", "-u", "postgres"]
    subprocess.run([*sudo, "mkdir", "-p", d], check=True)
    subprocess.run([*sudo, f"{PG_BIN}/initdb", "-D", d, "-A", "trust", "-U", "postgres", "--locale=C.UTF-8"],
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, f"{PG_BIN}/pg_ctl", "-D", d, "-l", f"{d}/log", "-w", "-o",
                    f"-p {port} -k {d} -c listen_addresses=''", "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield d, port
    finally:
        subprocess.run([*sudo, f"{PG_BIN}/pg_ctl", "-D", d, "-w", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL)
        shutil.rmtree(d, ignore_errors=True)


def test_export_and_import_between_clusters(db, fresh_db, second_cluster, tmp_path):
    d, port = second_cluster
    import psycopg
    with psycopg.connect(host=d, port=port, dbname="postgres", user="postgres", autocommit=True) as c2:
        c2.execute("CREATE EXTENSION tenancy")
        mob_template(c2)
        mob_template(db)
        provision(db, "xc_sh")
        provision(db, "xc_sc", template="default", isolation="schema")
        fill(db, "xc_sh", accounts=30)
        # the values COPY has to escape, and NULLs
        db.execute("INSERT INTO tenant_xc_sc.users (email, display_name) VALUES "
                   "('a@b', E'tab\\there'), ('c@d', E'new\\nline \\\\ back \\r'), ('e@f', NULL), ('g@h', 'ünïcødé \\.')")
        db.execute("INSERT INTO tenant_xc_sc.items (owner_id, title, data, status) "
                   "SELECT id, 'x', '{\"k\": \"v\\\"q\", \"n\": 1.5e300}', 'done' FROM tenant_xc_sc.users")
        for slug in ("xc_sh", "xc_sc"):
            path = export(fresh_db, slug, tmp_path / f"{slug}.sql")
            done = psql("postgres", "-f", str(path), host=d, port=port)
            assert done.returncode == 0, done.stderr
            assert catalog_row(c2, slug) == catalog_row(db, slug)
        assert fingerprint(c2, "xc_sh") == fingerprint(db, "xc_sh")
        for table, cols in (("users", "id, email, display_name, role, is_active, created_at, updated_at"),
                            ("items", "id, owner_id, title, body, status, data, created_at, updated_at")):
            q = f"SELECT count(*), md5(string_agg(({cols})::text, ',' ORDER BY id)) FROM tenant_xc_sc.{table}"
            assert c2.execute(q).fetchone() == db.execute(q).fetchone()


def test_move_tenant_node_needs_citus_and_the_admin(db, fresh_db, login):
    db.execute("SELECT tenancy.provision('nodeless')")
    grant_tenant(db, login, "nodeless")
    # a tenant's login may not call it at all
    with connect(fresh_db, user=login) as t, pytest.raises(errors.InsufficientPrivilege):
        t.execute("SELECT tenancy.move_tenant_node('nodeless', '127.0.0.1:5432')")
    # without Citus in the database, a clear 0A000 (tests/test_citus.py moves one for real)
    with pytest.raises(errors.FeatureNotSupported, match="needs Citus"):
        db.execute("SELECT tenancy.move_tenant_node('nodeless', '127.0.0.1:5432')")
