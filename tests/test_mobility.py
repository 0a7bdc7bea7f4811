"""Tenants that move (move_tenant) and tenants copied (clone_tenant):
data equal afterwards (counts and checksums per table), all or nothing on
failure, the tenant's own sessions waiting rather than seeing half a move,
and only the admin allowed to do either."""

import json
import threading
import time
import uuid

import pytest
from psycopg import errors

from conftest import connect, wait_for

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


@pytest.fixture
def login(db, fresh_db):
    """A login role, granted tenants' roles by the test: no superuser."""
    name = "mob_" + uuid.uuid4().hex[:8]
    db.execute(f'CREATE ROLE "{name}" LOGIN')
    yield name
    db.execute(f'DROP OWNED BY "{name}"')
    db.execute(f'DROP ROLE "{name}"')


def grant_tenant(db, login, slug):
    role = db.execute("SELECT role_name FROM tenancy.tenants WHERE slug = %s", (slug,)).fetchone()[0]
    db.execute(f'GRANT "{role}" TO "{login}"')


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
    failed = []

    def write():
        try:
            tenant.execute("INSERT INTO tenant_mv_wait.accounts (name) VALUES ('during')")
        except Exception as e:  # noqa: BLE001
            failed.append(e)
    w = threading.Thread(target=write)
    w.start()
    wait_for(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND query LIKE '%during%'").fetchone()[0] == 1, what="the write to wait")
    mover.commit()
    w.join(30)
    assert failed and isinstance(failed[0], (errors.UndefinedTable, errors.InvalidSchemaName)), failed
    tenant.rollback()
    mover.close()
    # moved to shared: a shared statement during the next move gets 40001
    mover = connect(fresh_db)
    mover.execute("SELECT tenancy.move_tenant('mv_wait', 'schema')")
    tenant.execute("SELECT tenancy.set_tenant('mv_wait')")
    failed.clear()

    def read():
        try:
            tenant.execute("SELECT count(*) FROM shared_mob.accounts").fetchone()
        except Exception as e:  # noqa: BLE001
            failed.append(e)
    r = threading.Thread(target=read)
    r.start()
    wait_for(lambda: db.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                "AND query LIKE '%shared_mob.accounts%'").fetchone()[0] == 1, what="the read to wait")
    time.sleep(0.2)
    mover.commit()
    r.join(30)
    assert failed and isinstance(failed[0], errors.SerializationFailure), failed
    tenant.rollback()
    tenant.close()
    mover.close()
    assert db.execute("SELECT count(*) FROM tenant_mv_wait.accounts").fetchone()[0] == 4


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
