"""Attacks on the least-privilege model (README: Security model), each made
from a login role that is not a superuser, towards superuser, another
tenant's rows, or a worker that stops serving the database. Each attack is
refused (its SQLSTATE is checked) or has no effect (checked afterwards).

The roles of a database carry its OID: tenancy_admin_<oid> (also
tenancy.admin_role()), tenancy_all_tenants_<oid>, tenancy_owner_<oid>,
tenancy_shared_<oid>, and t<oid>_<slug> for a tenant (always read from
tenancy.tenants.role_name here, except to check that format).

Roles belong to the cluster: every login made here has a unique name and is
dropped after its test with what it owns or was granted (fixture `cluster`).
"""

import contextlib
import json
import time
import uuid
from collections import namedtuple

import psycopg
import pytest
from psycopg import errors

from conftest import connect, wait_batch, wait_for

# Superuser sessions that a test opens in a database whose owner may have
# set traps with ALTER DATABASE ... SET: the client's options win over those.
SAFE = ("-c search_path=pg_catalog,public -c default_transaction_read_only=off "
        "-c statement_timeout=0 -c lock_timeout=0 -c row_security=on "
        "-c default_transaction_isolation=read\\ committed")

ROLES_OF_DATABASE = "SELECT rolname FROM pg_roles WHERE rolname LIKE %s OR rolname ~ %s ORDER BY 1"

Tenant = namedtuple("Tenant", "id role schema isolation")


# -- helpers ------------------------------------------------------------------

def one(conn, sql, params=None):
    row = conn.execute(sql, params).fetchone()
    return None if row is None else row[0]


@contextlib.contextmanager
def refused(*sqlstates):
    """The block must fail with one of these SQLSTATEs (42501 by default)."""
    wanted = sqlstates or ("42501",)
    with pytest.raises(psycopg.Error) as caught:
        yield caught
    assert caught.value.sqlstate in wanted, f"{caught.value.sqlstate}: {caught.value}"


def attempt(conn, sql, params=None):
    """Runs sql where failing is as good an outcome as succeeding; returns the error."""
    try:
        conn.execute(sql, params)
    except psycopg.Error as e:
        return e
    return None


def sees_nothing(conn, sql, params=None):
    """The count query is refused (42501) or counts nothing."""
    try:
        return one(conn, sql, params) == 0
    except errors.InsufficientPrivilege:
        return True


def db_oid(conn):
    return one(conn, "SELECT oid FROM pg_database WHERE datname = current_database()")


def lookup(conn, slug):
    row = conn.execute("SELECT id, role_name, schema_name, isolation::text FROM tenancy.tenants WHERE slug = %s",
                       (slug,)).fetchone()
    return None if row is None else Tenant(*row)


def provision(conn, slug, isolation="schema", template="default"):
    return one(conn, "SELECT id FROM tenancy.provision(%s, NULL, %s, %s::jsonb)",
               (slug, template, json.dumps({"isolation": isolation})))


def seed(conn, slug):
    """A user and an item of the tenant, written by the superuser."""
    t = lookup(conn, slug)
    email = f"{slug}@example.com"
    if t.isolation == "shared":
        uid = one(conn, "INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, %s) RETURNING id", (t.id, email))
        conn.execute("INSERT INTO shared_default.items (tenant_id, owner_id, title) VALUES (%s, %s, 'secret')", (t.id, uid))
    else:
        uid = one(conn, f'INSERT INTO "{t.schema}".users (email) VALUES (%s) RETURNING id', (email,))
        conn.execute(f'INSERT INTO "{t.schema}".items (owner_id, title) VALUES (%s, \'secret\')', (uid,))


def users_table(t):
    return f'"{t.schema}".users' if t.schema else "shared_default.users"


def is_member(conn, member, role):
    return one(conn, "SELECT pg_has_role(%s::name, %s::name, 'MEMBER')", (member, role))


def is_superuser(conn, role):
    return one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (role,))


def assert_not_escalated(conn, role):
    """No superuser, no server-file role, and no superuser made beside it."""
    row = conn.execute(
        "SELECT r.rolsuper, pg_has_role(r.oid, 'pg_read_server_files', 'MEMBER'), "
        "       pg_has_role(r.oid, 'pg_execute_server_program', 'MEMBER'), "
        "       EXISTS (SELECT 1 FROM pg_roles x WHERE x.rolname = r.rolname || '_su') "
        "FROM pg_roles r WHERE r.rolname = %s", (role,)).fetchone()
    assert row == (False, False, False, False), \
        f"{role}: (superuser, reads server files, runs programs, made {role}_su) = {row}"


def fingerprint(conn, schema):
    """What an attack on a schema could change: owners and grants, columns,
    triggers, RLS flags and policies, sequence positions, functions, rows."""
    relations = conn.execute(
        "SELECT c.relname::text, c.relkind::text, pg_get_userbyid(c.relowner)::text, c.relacl::text, "
        "       c.relrowsecurity, c.relforcerowsecurity, "
        "       (SELECT count(*) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), "
        "       (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid), "
        "       (SELECT array_agg(p.polname || ' ' || coalesce(pg_get_expr(p.polqual, p.polrelid), '') ORDER BY p.polname) "
        "          FROM pg_policy p WHERE p.polrelid = c.oid), "
        "       CASE c.relkind WHEN 'S' THEN pg_sequence_last_value(c.oid) END "
        "FROM pg_class c WHERE c.relnamespace = %s::regnamespace ORDER BY 1", (schema,)).fetchall()
    rows = {r[0]: one(conn, f'SELECT count(*) FROM "{schema}"."{r[0]}"') for r in relations if r[1] in ("r", "p")}
    namespace = conn.execute(
        "SELECT pg_get_userbyid(n.nspowner)::text, n.nspacl::text, "
        "       (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = n.oid) "
        "FROM pg_namespace n WHERE n.nspname = %s", (schema,)).fetchone()
    return namespace, relations, rows


def scheduler_pid(conn):
    return one(conn, "SELECT pid FROM pg_stat_activity "
                     "WHERE backend_type = 'tenancy scheduler' AND datname = current_database()")


def restart_scheduler(conn):
    """A new scheduler, which takes the database's settings as they are now."""
    old = wait_for(lambda: scheduler_pid(conn), timeout=30, what="the scheduler")
    conn.execute("SELECT pg_terminate_backend(%s)", (old,))
    wait_for(lambda: scheduler_pid(conn) not in (None, old), timeout=30, what="a new scheduler")


def run_every_job(conn):
    """Makes the worker's jobs due and waits until it has run each of them."""
    t0 = one(conn, "SELECT now()")
    conn.execute("UPDATE tenancy.jobs SET next_run_at = now()")
    wait_for(lambda: one(conn, "SELECT bool_and(last_finished_at > %s) FROM tenancy.jobs", (t0,)),
             timeout=60, interval=0.2, what="the worker to run every job")


# -- fixture --------------------------------------------------------------------

class Cluster:
    """The login roles and databases one test makes, all removed after it."""

    def __init__(self, dbname):
        self.db = dbname
        self.roles = []
        self.databases = {}  # name -> oid
        self.conns = []

    def login(self, prefix, *member_of):
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with connect("postgres", autocommit=True) as c:
            c.execute(f'CREATE ROLE "{name}" LOGIN')
            self.roles.append(name)
            for role in member_of:
                c.execute(f'GRANT "{role}" TO "{name}"')
        return name

    def admin(self, conn):
        """A login granted the admin role of conn's database."""
        return self.login("admin", one(conn, "SELECT tenancy.admin_role()"))

    def track_role(self, name):
        """A role the test makes (or an attack may make) by hand: dropped after."""
        self.roles.append(name)

    def connect(self, user, dbname=None, **kw):
        c = connect(dbname or self.db, user=user, autocommit=True, **kw)
        self.conns.append(c)
        return c

    def su(self, dbname=None):
        return self.connect("postgres", dbname, options=SAFE)

    def database(self, owner=None, extension=True):
        name = "sec_" + uuid.uuid4().hex[:12]
        with connect("postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"' + (f' OWNER "{owner}"' if owner else ""))
            self.databases[name] = one(c, "SELECT oid FROM pg_database WHERE datname = %s", (name,))
        if extension:
            with connect(name, autocommit=True, options=SAFE) as c:
                c.execute("CREATE EXTENSION tenancy")
        return name

    def drop_database(self, name):
        for c in self.conns:
            if not c.closed and c.info.dbname == name:
                c.close()
        with connect("postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cleanup(self):
        problems = []

        def run(dbname, sql):
            try:
                with connect(dbname, autocommit=True) as c:
                    c.execute(sql)
            except psycopg.Error as e:
                problems.append(f"{sql}: {e}")

        for c in self.conns:
            c.close()
        for name, oid in self.databases.items():
            run("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            # whatever roles it left behind (0 once run_maintenance ran elsewhere)
            with connect("postgres", autocommit=True) as c:
                left = [r for (r,) in c.execute(ROLES_OF_DATABASE, (f"t{oid}\\_%", f"^tenancy_[a-z_]+_{oid}$"))]
            for role in left:
                run("postgres", f'DROP ROLE IF EXISTS "{role}"')
        for role in reversed(self.roles):
            with connect("postgres", autocommit=True) as c:
                exists = one(c, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,))
            if exists:
                run(self.db, f'DROP OWNED BY "{role}"')
                run("postgres", f'DROP ROLE IF EXISTS "{role}"')
        if problems:
            raise AssertionError("cleanup: " + "; ".join(problems))


@pytest.fixture
def cluster(fresh_db):
    c = Cluster(fresh_db)
    try:
        yield c
    finally:
        c.cleanup()


# -- the roles ------------------------------------------------------------------

def test_the_roles_of_a_database_carry_its_oid(db):
    """Model: the extension's and the tenants' roles are this database's, named with its OID, none a superuser."""
    oid = db_oid(db)
    assert one(db, "SELECT tenancy.admin_role()") == f"tenancy_admin_{oid}"
    provision(db, "acme")
    provision(db, "umbrella", "shared")
    acme, umbrella = lookup(db, "acme"), lookup(db, "umbrella")
    assert (acme.role, umbrella.role) == (f"t{oid}_acme", f"t{oid}_umbrella")
    own = [f"tenancy_{kind}_{oid}" for kind in ("admin", "all_tenants", "owner", "shared")]
    attributes = {r[0]: r[1:] for r in db.execute(
        "SELECT rolname, rolsuper, rolcanlogin, rolcreaterole, rolcreatedb, rolbypassrls FROM pg_roles "
        "WHERE rolname = ANY(%s)", (own + [acme.role, umbrella.role],)).fetchall()}
    assert sorted(attributes) == sorted(own + [acme.role, umbrella.role])
    for name, (su, login, createrole, createdb, bypass) in attributes.items():
        assert (su, login, createrole, createdb) == (False, False, False, False), name
        assert bypass == (name == f"tenancy_all_tenants_{oid}"), name
    owner = f"tenancy_owner_{oid}"
    # the tenant schema, the shared schema and everything in them: the owner role's
    schemas = [acme.schema, "shared_default"]
    owners = {r[0] for r in db.execute(
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = ANY(%s) "
        "UNION SELECT pg_get_userbyid(c.relowner)::text FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY(%s)", (schemas, schemas)).fetchall()}
    assert owners == {owner}
    # the owner role is a member of nothing; the admin and the tenants are not the owner
    assert one(db, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                   "WHERE r.rolname = %s", (owner,)) == 0
    for member in (f"tenancy_admin_{oid}", acme.role, umbrella.role):
        assert not is_member(db, member, owner), member
    for member in (acme.role, umbrella.role):
        for role in (f"tenancy_admin_{oid}", f"tenancy_all_tenants_{oid}"):
            assert not is_member(db, member, role), (member, role)


PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@pytest.mark.parametrize("isolation", ["schema", "shared"])
def test_tenant_roles_get_rows_only(db, isolation):
    """Model: a tenant's role reads and writes rows; no TRUNCATE, TRIGGER, REFERENCES, setval, CREATE or ownership."""
    provision(db, "rows1", isolation)
    t = lookup(db, "rows1")
    schema = t.schema or "shared_default"
    for table in ("users", "items", "audit_events"):
        got = {p: one(db, "SELECT has_table_privilege(%s::name, %s::text, %s)", (t.role, f'"{schema}".{table}', p))
               for p in PRIVILEGES}
        assert got == {p: p in ("SELECT", "INSERT", "UPDATE", "DELETE") for p in PRIVILEGES}, table
    seq = one(db, "SELECT pg_get_serial_sequence(%s, 'id')", (f'"{schema}".items',))
    assert one(db, "SELECT has_sequence_privilege(%s::name, %s::text, 'USAGE')", (t.role, seq))
    assert not one(db, "SELECT has_sequence_privilege(%s::name, %s::text, 'UPDATE')", (t.role, seq))
    assert one(db, "SELECT has_schema_privilege(%s::name, %s::text, 'USAGE')", (t.role, schema))
    assert not one(db, "SELECT has_schema_privilege(%s::name, %s::text, 'CREATE')", (t.role, schema))
    assert one(db, "SELECT (SELECT count(*) FROM pg_class WHERE relowner = r.oid) "
                   "     + (SELECT count(*) FROM pg_namespace WHERE nspowner = r.oid) "
                   "     + (SELECT count(*) FROM pg_proc WHERE proowner = r.oid) "
                   "FROM pg_roles r WHERE r.rolname = %s", (t.role,)) == 0


def test_the_old_cluster_wide_roles_get_nothing(cluster):
    """Attack: a member of 0.2.0's cluster-wide tenancy_admin and tenancy_all_tenants manages or reads a database's tenants."""
    with connect("postgres", autocommit=True) as c:
        for name, options in (("tenancy_admin", "NOLOGIN"), ("tenancy_all_tenants", "NOLOGIN NOINHERIT BYPASSRLS")):
            if not one(c, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (name,)):
                c.execute(f"CREATE ROLE {name} {options}")
                cluster.track_role(name)
    name = cluster.database()  # made while the old roles exist
    su = cluster.su(name)
    provision(su, "old_sh", "shared")
    seed(su, "old_sh")
    login = cluster.login("old", "tenancy_admin", "tenancy_all_tenants")
    with cluster.connect(login, name) as c:
        for sql in ("SELECT tenancy.provision('sneaky')", "SELECT count(*) FROM tenancy.tenants",
                    "SELECT tenancy.set_tenant('old_sh', false)"):
            with refused():
                c.execute(sql)
        c.execute("SET ROLE tenancy_all_tenants")
        assert sees_nothing(c, "SELECT count(*) FROM shared_default.users")
    assert lookup(su, "sneaky") is None


# -- a tenant against its own tables ----------------------------------------------

NOOP_TRIGGER = "CREATE FUNCTION public.noop_trigger() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$"

TABLE_ATTACKS = {
    "truncate": "TRUNCATE {s}.items",
    "create_trigger": "CREATE TRIGGER planted BEFORE INSERT ON {s}.items FOR EACH ROW EXECUTE FUNCTION public.noop_trigger()",
    "setval": "SELECT setval(pg_get_serial_sequence('{s}.items', 'id'), 1000000)",
    "add_column": "ALTER TABLE {s}.items ADD COLUMN planted text",
    "create_index": "CREATE INDEX planted ON {s}.items (title)",
    "drop_table": "DROP TABLE {s}.audit_events",
    "take_ownership": "ALTER TABLE {s}.items OWNER TO CURRENT_USER",
    "create_table": "CREATE TABLE {s}.planted (id int)",
    "create_function": "CREATE FUNCTION {s}.planted() RETURNS int LANGUAGE sql RETURN 1",
}
SHARED_TABLE_ATTACKS = {
    "no_force_rls": "ALTER TABLE {s}.items NO FORCE ROW LEVEL SECURITY",
    "disable_rls": "ALTER TABLE {s}.items DISABLE ROW LEVEL SECURITY",
    "drop_policy": "DROP POLICY tenancy_isolation ON {s}.items",
    "add_policy": "CREATE POLICY planted ON {s}.items USING (true)",
    "enable_rls_on_another_column": "SELECT tenancy.enable_rls('{s}.items', 'owner_id')",
    # README: refused by the preloaded library on tables under the tenancy policy
    "lock_table": "LOCK TABLE {s}.items IN ACCESS EXCLUSIVE MODE",
}


def table_attacks():
    for isolation in ("schema", "shared"):
        for name, sql in TABLE_ATTACKS.items():
            yield pytest.param(isolation, sql, id=f"{isolation}-{name}")
    for name, sql in SHARED_TABLE_ATTACKS.items():
        yield pytest.param("shared", sql, id=f"shared-{name}")


@pytest.mark.parametrize("isolation, attack", list(table_attacks()))
def test_a_tenant_cannot_change_the_tables_it_uses(db, cluster, isolation, attack):
    """Attack: a tenant's login truncates, alters, takes over, or plants a trigger, index, table or policy on its tables."""
    db.execute(NOOP_TRIGGER)
    provision(db, "own", isolation)
    provision(db, "other", isolation)
    seed(db, "own")
    seed(db, "other")
    t = lookup(db, "own")
    schema = t.schema or "shared_default"
    before = fingerprint(db, schema)
    app = cluster.login("app", t.role)
    with cluster.connect(app) as c:
        c.execute("SELECT tenancy.set_tenant('own', false)")
        with refused():
            with c.transaction():
                c.execute(attack.format(s=f'"{schema}"'))
    assert fingerprint(db, schema) == before


# -- a tenant against other tenants -------------------------------------------------

CROSS_TENANT = {
    "search_path": (['SET search_path = "{b_schema}"', "SELECT count(*) FROM users"], ("42501", "42P01")),
    "qualified_name": ['SELECT count(*) FROM "{b_schema}".users'],
    "health": ["SELECT tenancy.health('{b}')"],
    "cluster_health": ["SELECT tenancy.health()"],
    "catalog": ["SELECT slug, id, role_name FROM tenancy.tenants"],
    "audit_log": ["SELECT count(*) FROM tenancy.audit_log"],
    "rls_audit": ["SELECT count(*) FROM tenancy.rls_audit()"],
    "set_tenant": ["SELECT tenancy.set_tenant('{b}')"],
    "set_tenant_by_id": ["SELECT tenancy.set_tenant('{b_id}'::uuid)"],
    "set_shared_tenant": ["SELECT tenancy.set_tenant('{c}')"],
    "set_the_setting": ["SET tenancy.tenant_id = '{c_id}'"],
    "set_config": ["SELECT set_config('tenancy.tenant_id', '{c_id}', false)"],
    "role_default": ["ALTER ROLE CURRENT_USER SET tenancy.tenant_id = '{c_id}'"],
    "set_role_to_another_tenant": ['SET ROLE "{b_role}"'],
    "set_role_all_tenants": ['SET ROLE "tenancy_all_tenants_{oid}"'],
    "set_role_owner": ['SET ROLE "tenancy_owner_{oid}"'],
    "set_role_admin": ['SET ROLE "tenancy_admin_{oid}"'],
    "set_role_shared": ['SET ROLE "tenancy_shared_{oid}"'],
    "grant_itself_another_tenant": ['GRANT "{b_role}" TO CURRENT_USER'],
    "provision": ["SELECT tenancy.provision('sneaky')"],
    "suspend_another": ["SELECT tenancy.suspend('{b}')"],
    "drop_another": ["SELECT tenancy.drop_tenant('{b}')"],
    "register_template": ["SELECT tenancy.register_template('mine', "
                          "jsonb_build_object('tables', jsonb_build_array('CREATE TABLE t (id int)')))"],
    "internal_helper": ["SELECT tenancy._as_owner('DROP SCHEMA \"{b_schema}\" CASCADE', NULL)"],
}


@pytest.mark.parametrize("name", list(CROSS_TENANT))
def test_a_tenant_cannot_reach_another_tenant(db, cluster, name):
    """Attack: a schema tenant's login reads, becomes, or manages another tenant (schema or shared)."""
    statements, states = (CROSS_TENANT[name] if isinstance(CROSS_TENANT[name], tuple)
                          else (CROSS_TENANT[name], ("42501",)))
    a_id = provision(db, "xa")
    b_id = provision(db, "xb")
    c_id = provision(db, "xc", "shared")
    seed(db, "xb")
    seed(db, "xc")
    b = lookup(db, "xb")
    names = dict(b="xb", b_id=b_id, b_schema=b.schema, b_role=b.role, c="xc", c_id=c_id, oid=db_oid(db))
    app = cluster.login("app", lookup(db, "xa").role)
    with cluster.connect(app) as c:
        c.execute("SELECT tenancy.set_tenant('xa', false)")
        with refused(*states):
            with c.transaction():
                for sql in statements:
                    c.execute(sql.format(**names))
        assert one(c, "SELECT tenancy.current_tenant_id()") == a_id
        assert sees_nothing(c, "SELECT count(*) FROM shared_default.users")
    assert not is_member(db, app, b.role)
    assert one(db, "SELECT status::text FROM tenancy.tenants WHERE slug = 'xb'") == "active"
    assert one(db, f'SELECT count(*) FROM "{b.schema}".users') == 1
    assert lookup(db, "sneaky") is None


def test_a_connection_option_cannot_set_the_tenant(db, cluster):
    """Attack: connecting with options='-c tenancy.tenant_id=<another tenant>' instead of calling set_tenant."""
    provision(db, "opt_a", "shared")
    b_id = provision(db, "opt_b", "shared")
    seed(db, "opt_b")
    app = cluster.login("app", lookup(db, "opt_a").role)
    try:
        c = cluster.connect(app, options=f"-c tenancy.tenant_id={b_id}")
    except psycopg.OperationalError as e:
        assert "permission denied" in str(e), e
        return
    assert one(c, "SELECT tenancy.current_tenant_id()") is None
    assert one(c, "SELECT count(*) FROM shared_default.users") == 0


@pytest.mark.parametrize("isolation", ["shared", "schema"])
def test_a_session_that_set_a_tenant_loses_it_when_suspended(db, cluster, isolation):
    """Attack: a session that ran set_tenant(s, false) before tenancy.suspend(s) goes on reading and writing."""
    tid = provision(db, "sus", isolation)
    seed(db, "sus")
    t = lookup(db, "sus")
    table = users_table(t)
    app = cluster.login("app", t.role)
    with cluster.connect(app) as c:
        c.execute("SELECT tenancy.set_tenant('sus', false)")
        assert one(c, f"SELECT count(*) FROM {table}") == 1
        db.execute("SELECT tenancy.suspend('sus')")
        with refused():
            c.execute(f"SELECT count(*) FROM {table}")
        with refused():
            if t.schema:
                c.execute(f"INSERT INTO {table} (email) VALUES ('late@sus')")
            else:
                c.execute(f"INSERT INTO {table} (tenant_id, email) VALUES (%s, 'late@sus')", (tid,))
    assert one(db, f"SELECT count(*) FROM {table}") == 1


@pytest.mark.parametrize("owned_by", ["superuser", "owner_role"])
def test_a_table_added_to_the_shared_schema_is_closed_until_enable_rls(db, cluster, owned_by):
    """Attack: a tenant reads or writes a table added to shared_default before it has the tenancy policy."""
    oid = db_oid(db)
    a = provision(db, "ex_a", "shared")
    b = provision(db, "ex_b", "shared")
    db.execute("CREATE TABLE shared_default.extra (tenant_id uuid, secret text)")
    if owned_by == "owner_role":
        db.execute(f'ALTER TABLE shared_default.extra OWNER TO "tenancy_owner_{oid}"')
    db.execute("INSERT INTO shared_default.extra VALUES (%s, 'of a'), (%s, 'of b')", (a, b))
    app = cluster.login("app", lookup(db, "ex_a").role)
    with cluster.connect(app) as c:
        c.execute("SELECT tenancy.set_tenant('ex_a', false)")
        with refused():
            c.execute("SELECT secret FROM shared_default.extra")
        with refused():
            c.execute("INSERT INTO shared_default.extra VALUES (%s, 'planted')", (b,))
        if owned_by == "owner_role":
            # a table of the shared schema: the admin may put the policy on it
            with cluster.connect(cluster.admin(db)) as admin:
                admin.execute("SELECT tenancy.enable_rls('shared_default.extra')")
            assert {r[0] for r in c.execute("SELECT secret FROM shared_default.extra")} == {"of a"}
        else:
            db.execute("SELECT tenancy.enable_rls('shared_default.extra')")
            # a superuser's table gets the policy; at most the tenant's own rows show
            try:
                seen = {r[0] for r in c.execute("SELECT secret FROM shared_default.extra")}
            except errors.InsufficientPrivilege:
                seen = set()
            assert seen <= {"of a"}
    assert one(db, "SELECT count(*) FROM shared_default.extra") == 2


# -- the admin ------------------------------------------------------------------------

ADMIN_ATTACKS = {
    "grant_itself_the_owner_role": 'GRANT "tenancy_owner_{oid}" TO CURRENT_USER',
    "grant_itself_a_tenant_role": 'GRANT "{tenant_role}" TO CURRENT_USER',
    "grant_the_admin_role_to_another": 'GRANT "tenancy_admin_{oid}" TO "{other}"',
    "set_role_owner": 'SET ROLE "tenancy_owner_{oid}"',
    "set_role_tenant": 'SET ROLE "{tenant_role}"',
    "set_role_shared": 'SET ROLE "tenancy_shared_{oid}"',
    "default_privileges_of_the_owner":
        'ALTER DEFAULT PRIVILEGES FOR ROLE "tenancy_owner_{oid}" GRANT SELECT ON TABLES TO CURRENT_USER',
    "forge_a_tenancy_role_comment": "COMMENT ON ROLE \"{me}\" IS 'tenancy role of database {oid}: tenant'",
    "adopt_schemas": "SELECT count(*) FROM tenancy.adopt_schemas()",
    "after_restore": "SELECT count(*) FROM tenancy.after_restore()",
    "enable_rls_on_the_audit_log": "SELECT tenancy.enable_rls('tenancy.audit_log')",
    "enable_rls_on_the_catalog": "SELECT tenancy.enable_rls('tenancy.tenants', 'id')",
    "enable_rls_on_a_system_table": "SELECT tenancy.enable_rls('pg_catalog.pg_authid', 'rolname')",
    "enable_rls_on_a_table_it_does_not_own": "SELECT tenancy.enable_rls('public.payroll')",
    "drop_a_role_through_a_helper": "SELECT tenancy._drop_tenant_role('{tenant_role}')",
}


@pytest.mark.parametrize("name", list(ADMIN_ATTACKS))
def test_the_admin_cannot_grow_its_rights(db, cluster, name):
    """Attack: an admin grants itself (or others) roles, takes the owner's or a tenant's role, or puts a policy where it must not."""
    oid = db_oid(db)
    provision(db, "victim")
    t = lookup(db, "victim")
    db.execute("CREATE TABLE public.payroll (tenant_id uuid, salary int)")
    admin = cluster.admin(db)
    other = cluster.login("other")
    with cluster.connect(admin) as c:
        with refused():
            with c.transaction():
                c.execute(ADMIN_ATTACKS[name].format(oid=oid, tenant_role=t.role, other=other, me=admin))
    assert_not_escalated(db, admin)
    for role in (f"tenancy_owner_{oid}", f"tenancy_shared_{oid}", t.role):
        assert not is_member(db, admin, role), role
    assert not is_member(db, other, f"tenancy_admin_{oid}")
    assert one(db, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (t.role,)) == 1
    assert one(db, "SELECT count(*) FROM pg_policy WHERE polrelid IN ('tenancy.audit_log'::regclass, "
                   "'tenancy.tenants'::regclass, 'public.payroll'::regclass, 'pg_authid'::regclass)") == 0
    assert one(db, "SELECT count(*) FROM pg_class WHERE relrowsecurity AND oid IN ('tenancy.audit_log'::regclass, "
                   "'tenancy.tenants'::regclass, 'public.payroll'::regclass)") == 0
    assert not one(db, "SELECT has_table_privilege(%s::name, 'public.payroll', 'SELECT')", (f"tenancy_all_tenants_{oid}",))
    assert one(db, "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (admin,)) is None


def test_internal_helpers_are_the_extension_owners_only(db, cluster):
    """Attack: the admin, a tenant or any login may execute some tenancy._* helper (they run as the extension's owner)."""
    oid = db_oid(db)
    provision(db, "hv")
    provision(db, "hs", "shared")
    nobody = cluster.login("nobody")
    for role in (f"tenancy_admin_{oid}", f"tenancy_all_tenants_{oid}", f"tenancy_shared_{oid}",
                 lookup(db, "hv").role, lookup(db, "hs").role, nobody):
        executable = [r[0] for r in db.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc p "
            "WHERE p.pronamespace = 'tenancy'::regnamespace AND left(p.proname, 1) = '_' "
            "  AND has_function_privilege(%s::name, p.oid, 'EXECUTE') ORDER BY 1", (role,)).fetchall()]
        assert executable == [], role


HELPER_CALLS = {
    "drop_tenant_role": "SELECT tenancy._drop_tenant_role('{victim_role}')",
    "provision": "SELECT tenancy._provision('sneaky', NULL, 'default', '{{}}')",
    "as_owner": "SELECT tenancy._as_owner('DROP SCHEMA \"{victim_schema}\" CASCADE', NULL)",
}


@pytest.mark.parametrize("who", ["admin", "tenant"])
@pytest.mark.parametrize("call", list(HELPER_CALLS))
def test_an_internal_helper_call_is_refused(db, cluster, call, who):
    """Attack: calling tenancy._drop_tenant_role, _provision or _as_owner directly, past the checks of the API."""
    provision(db, "victim")
    provision(db, "mine")
    victim = lookup(db, "victim")
    login = cluster.admin(db) if who == "admin" else cluster.login("app", lookup(db, "mine").role)
    with cluster.connect(login) as c:
        with refused():
            c.execute(HELPER_CALLS[call].format(victim_role=victim.role, victim_schema=victim.schema))
    assert one(db, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (victim.role,)) == 1
    assert one(db, "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (victim.schema,)) == 1
    assert lookup(db, "sneaky") is None


# -- template SQL -------------------------------------------------------------------------

DEFINER = ('CREATE FUNCTION escalate() RETURNS void LANGUAGE plpgsql SECURITY DEFINER '
           'AS $f$BEGIN ALTER ROLE "{a}" SUPERUSER; END$f$')

# statements of a template; {a} is the attacking admin, {su} a superuser
ESCALATIONS = {
    "alter_role": ['ALTER ROLE "{a}" SUPERUSER'],
    "grant_read_server_files": ['GRANT pg_read_server_files TO "{a}"'],
    "create_a_superuser": ['CREATE ROLE "{a}_su" SUPERUSER LOGIN'],
    "security_definer_function": [DEFINER, "SELECT escalate()"],
    "function_given_to_a_superuser": [DEFINER, 'ALTER FUNCTION escalate() OWNER TO "{su}"', "SELECT escalate()"],
    "set_role": ['SET ROLE "{su}"', 'ALTER ROLE "{a}" SUPERUSER'],
    "set_session_authorization": ['SET SESSION AUTHORIZATION "{su}"', 'ALTER ROLE "{a}" SUPERUSER'],
    "set_config_role": ["SELECT set_config('role', '{su}', false)", 'ALTER ROLE "{a}" SUPERUSER'],
    "copy_to_program": ["COPY (SELECT 1) TO PROGRAM 'true'"],
    "read_a_server_file": ["SELECT pg_read_file('postgresql.conf')"],
    "write_the_catalog": ["DELETE FROM tenancy.tenants"],
}


def evil_spec(db, admin, payload, key="functions"):
    statements = [s.format(a=admin, su=one(db, "SELECT current_user")) for s in ESCALATIONS[payload]]
    spec = {"tables": ["CREATE TABLE t (id int)"]}
    spec.setdefault(key, []).extend(statements)
    return json.dumps(spec)


@pytest.mark.parametrize("caller", ["admin", "superuser"])
@pytest.mark.parametrize("payload", list(ESCALATIONS))
def test_template_sql_cannot_escalate(db, cluster, payload, caller):
    """Attack: an admin registers a template whose SQL makes it a superuser (or runs programs, reads files, writes the catalog); the admin or a superuser provisions from it."""
    admin = cluster.admin(db)
    cluster.track_role(f"{admin}_su")
    tenants = one(db, "SELECT count(*) FROM tenancy.tenants")
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('evil', %s::jsonb)", (evil_spec(db, admin, payload),))
        with refused():
            (c if caller == "admin" else db).execute("SELECT tenancy.provision('e1', NULL, 'evil')")
    assert_not_escalated(db, admin)
    assert one(db, "SELECT count(*) FROM tenancy.tenants") == tenants


@pytest.mark.parametrize("payload", ["alter_role", "grant_read_server_files", "security_definer_function", "set_role"])
def test_template_sql_cannot_escalate_through_the_worker(db, cluster, payload):
    """Attack: the same templates provisioned in a batch by the background worker (a superuser's process)."""
    admin = cluster.admin(db)
    cluster.track_role(f"{admin}_su")
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('evil', %s::jsonb)", (evil_spec(db, admin, payload),))
        batch = one(c, """SELECT tenancy.provision_batch('[{"slug": "e2", "template": "evil"}]')""")
        assert wait_batch(c, batch, "60 s") == "failed"
    assert db.execute("SELECT status::text, last_sqlstate FROM tenancy.batch_items WHERE batch_id = %s",
                      (batch,)).fetchall() == [("failed", "42501")]
    assert_not_escalated(db, admin)


@pytest.mark.parametrize("key", ["tables", "indexes", "functions", "shared_tables"])
def test_every_kind_of_template_statement_runs_as_the_owner(db, cluster, key):
    """Attack: the escalating statement under each key of a template that holds SQL."""
    admin = cluster.admin(db)
    alter = f'ALTER ROLE "{admin}" SUPERUSER'
    if key == "shared_tables":
        spec = {"shared_schema": "shared_evil", "shared_tables": ["CREATE TABLE notes (tenant_id uuid NOT NULL)", alter]}
        isolation = "shared"
    else:
        spec = {"tables": ["CREATE TABLE t (id int)"]}
        spec.setdefault(key, []).append(alter)
        isolation = "schema"
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('evil', %s::jsonb)", (json.dumps(spec),))
        with refused():
            provision(c, "e3", isolation, "evil")
    assert_not_escalated(db, admin)


SLEEPER = ('DO $f$BEGIN IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) '
           'THEN ALTER ROLE "{a}" SUPERUSER; END IF; END$f$')


def test_template_sql_that_waits_for_a_superuser_never_gets_one(db, cluster):
    """Attack: template SQL that does nothing unless it runs as a superuser: provisioned by the admin (harmless), then run by a superuser's provision, health(tenant), the warm pool and a migration."""
    admin = cluster.admin(db)
    sleeper = SLEEPER.format(a=admin)
    spec = {"tables": ["CREATE TABLE t (id int)"], "functions": [sleeper]}
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('sleeper', %s::jsonb)", (json.dumps(spec),))
        provision(c, "sl1", template="sleeper")
    assert_not_escalated(db, admin)
    provision(db, "sl2", template="sleeper")
    assert_not_escalated(db, admin)
    db.execute("SELECT tenancy.health('sl1')")
    assert_not_escalated(db, admin)
    db.execute("SELECT tenancy.set_pool_size('sleeper', 1)")
    wait_for(lambda: one(db, "SELECT coalesce(sum(ready), 0) FROM tenancy.pool_status WHERE template = 'sleeper'") >= 1,
             timeout=30, interval=0.2, what="a pooled schema of the sleeper template")
    db.execute("SELECT tenancy.set_pool_size('sleeper', 0)")
    assert_not_escalated(db, admin)
    with cluster.connect(admin) as c:
        assert one(c, "SELECT tenancy.register_template('sleeper', %s::jsonb)",
                   (json.dumps({**spec, "migrations": [sleeper]}),)) == 2
    batch = one(db, "SELECT tenancy.migrate('sleeper', 2)")
    assert wait_batch(db, batch, "60 s") == "completed"
    assert_not_escalated(db, admin)


# -- code planted in tenant tables, fired by the superuser's work ------------------------------

def plant_trigger(db, schema, table, when, attacker):
    db.execute(f'CREATE FUNCTION "{schema}".planted() RETURNS trigger LANGUAGE plpgsql AS $$ '
               f'BEGIN ALTER ROLE "{attacker}" SUPERUSER; RETURN coalesce(NEW, OLD); END $$')
    db.execute(f'CREATE TRIGGER planted {when} ON "{schema}".{table} '
               f'FOR EACH ROW EXECUTE FUNCTION "{schema}".planted()')


@pytest.mark.parametrize("event, migration", [
    ("INSERT", "INSERT INTO items (id, v) VALUES (2, 'new')"),
    ("UPDATE", "UPDATE items SET v = 'changed'"),
    ("DELETE", "DELETE FROM items"),
])
def test_a_trigger_planted_in_a_tenant_schema_fires_as_the_owner_in_a_migration(db, cluster, event, migration):
    """Attack: a trigger on a tenant table that grants superuser, fired by a migration the worker runs."""
    attacker = cluster.login("planter")
    items = "CREATE TABLE items (id int PRIMARY KEY, v text)"
    db.execute("SELECT tenancy.register_template('mig', %s::jsonb)", (json.dumps({"tables": [items]}),))
    provision(db, "mig1", template="mig")
    schema = lookup(db, "mig1").schema
    db.execute(f"INSERT INTO \"{schema}\".items VALUES (1, 'old')")
    plant_trigger(db, schema, "items", f"BEFORE {event}", attacker)
    assert one(db, "SELECT tenancy.register_template('mig', %s::jsonb)",
               (json.dumps({"tables": [items], "migrations": [migration]}),)) == 2
    batch = one(db, "SELECT tenancy.migrate('mig', 2)")
    assert wait_batch(db, batch, "60 s") == "failed"
    assert db.execute("SELECT status::text, last_sqlstate FROM tenancy.batch_items WHERE batch_id = %s",
                      (batch,)).fetchall() == [("failed", "42501")]
    assert_not_escalated(db, attacker)


PARTITIONED = {
    "tables": ["CREATE TABLE events (id bigint, at timestamptz NOT NULL, kind text) PARTITION BY RANGE (at)",
               "CREATE TABLE events_default PARTITION OF events DEFAULT"],
    "partitioned_tables": [{"name": "events", "column": "at", "interval": "month", "premake": 1}],
}


@pytest.mark.parametrize("how", ["run_maintenance", "worker"])
def test_a_trigger_on_a_default_partition_fires_as_the_owner_in_maintenance(db, cluster, how):
    """Attack: a trigger on a tenant's default partition that grants superuser, fired when maintenance moves its rows into a new month."""
    attacker = cluster.login("planter")
    db.execute("SELECT tenancy.register_template('parts', %s::jsonb)", (json.dumps(PARTITIONED),))
    provision(db, "pm1", template="parts")
    schema = lookup(db, "pm1").schema
    month = one(db, "SELECT 'events_p' || to_char(date_trunc('month', localtimestamp), 'YYYYMMDD')")
    db.execute(f'DROP TABLE "{schema}".{month}')
    db.execute(f"INSERT INTO \"{schema}\".events VALUES (1, now(), 'lands in the default partition')")
    plant_trigger(db, schema, "events_default", "BEFORE DELETE", attacker)
    if how == "run_maintenance":
        attempt(db, "SELECT tenancy.run_maintenance()")
    else:
        run_every_job(db)
    assert_not_escalated(db, attacker)


@pytest.mark.parametrize("who", ["admin", "superuser"])
def test_a_trigger_in_shared_tables_fires_as_the_owner_when_a_tenant_is_dropped(db, cluster, who):
    """Attack: an admin's template puts a DELETE trigger on a shared table; drop_tenant deletes the tenant's rows and fires it."""
    admin = cluster.admin(db)
    spec = {"shared_schema": "shared_trap", "shared_tables": [
        "CREATE TABLE notes (tenant_id uuid NOT NULL, body text)",
        f'CREATE FUNCTION planted() RETURNS trigger LANGUAGE plpgsql AS $f$BEGIN ALTER ROLE "{admin}" SUPERUSER; RETURN OLD; END$f$',
        "CREATE TRIGGER planted BEFORE DELETE ON notes FOR EACH ROW EXECUTE FUNCTION planted()"]}
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('trap', %s::jsonb)", (json.dumps(spec),))
        tid = provision(c, "tr1", "shared", "trap")
        db.execute("INSERT INTO shared_trap.notes VALUES (%s, 'a row to delete')", (tid,))
        attempt(c if who == "admin" else db, "SELECT tenancy.drop_tenant('tr1')")
    assert_not_escalated(db, admin)


# -- two databases ---------------------------------------------------------------------------------

@pytest.mark.parametrize("isolation", ["schema", "shared"])
def test_a_tenant_of_one_database_is_nobody_in_another(db, cluster, isolation):
    """Attack: a login granted tenant acme of database A reads tenant acme (same slug) of database B."""
    other = cluster.database()
    b = cluster.su(other)
    a_id = provision(db, "acme", isolation)
    provision(b, "acme", isolation)
    seed(b, "acme")
    in_a, in_b = lookup(db, "acme"), lookup(b, "acme")
    assert (in_a.role, in_b.role) == (f"t{db_oid(db)}_acme", f"t{db_oid(b)}_acme")
    table = users_table(in_b)
    app = cluster.login("app", in_a.role)
    with cluster.connect(app) as c:  # at home
        assert one(c, "SELECT tenancy.set_tenant('acme', false)") == a_id
    with cluster.connect(app, other) as c:
        with refused():
            c.execute("SELECT tenancy.set_tenant('acme', false)")
        assert sees_nothing(c, f"SELECT count(*) FROM {table}")
        # roles belong to the cluster: SET ROLE may work, and must reach nothing here
        if attempt(c, f'SET ROLE "{in_a.role}"') is None:
            assert sees_nothing(c, f"SELECT count(*) FROM {table}")


def test_the_admin_of_one_database_is_nobody_in_another(db, cluster):
    """Attack: a member of tenancy_admin_<oid of A> provisions, reads the catalog or sees every shared tenant in database B."""
    other = cluster.database()
    b = cluster.su(other)
    provision(b, "bsh", "shared")
    seed(b, "bsh")
    admin = cluster.admin(db)
    with cluster.connect(admin, other) as c:
        for sql in ("SELECT tenancy.provision('sneaky')", "SELECT count(*) FROM tenancy.tenants",
                    "SELECT tenancy.set_tenant('bsh', false)", "SELECT tenancy.health()"):
            with refused():
                c.execute(sql)
        c.execute(f'SET ROLE "tenancy_all_tenants_{db_oid(db)}"')  # its own database's switch
        assert sees_nothing(c, "SELECT count(*) FROM shared_default.users")
    assert lookup(b, "sneaky") is None


def test_dropping_a_database_leaves_none_of_its_roles(db, cluster):
    """Attack surface: the roles of a dropped database (one of them BYPASSRLS) kept with their members; run_maintenance() in another database removes them."""
    name = cluster.database()
    gone = cluster.su(name)
    oid = db_oid(gone)
    provision(gone, "gone")
    provision(gone, "gone_sh", "shared")
    app = cluster.login("app", lookup(gone, "gone").role)
    assert len(gone.execute(ROLES_OF_DATABASE, (f"t{oid}\\_%", f"^tenancy_[a-z_]+_{oid}$")).fetchall()) == 6
    cluster.drop_database(name)
    db.execute("SELECT tenancy.run_maintenance()")
    assert db.execute(ROLES_OF_DATABASE, (f"t{oid}\\_%", f"^tenancy_[a-z_]+_{oid}$")).fetchall() == []
    assert one(db, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member "
                   "WHERE r.rolname = %s", (app,)) == 0


@pytest.mark.parametrize("isolation", ["schema", "shared"])
def test_provision_never_hands_a_tenant_an_existing_role(db, cluster, isolation):
    """Attack: a login role made ahead under a tenant's future name (t<oid>_<slug>) is given the tenant when it is provisioned."""
    oid = db_oid(db)
    squatter = f"t{oid}_squat"
    db.execute(f'CREATE ROLE "{squatter}" LOGIN')
    cluster.track_role(squatter)
    with cluster.connect(cluster.admin(db)) as c:
        with refused("42710"):
            provision(c, "squat", isolation)
    assert lookup(db, "squat") is None
    assert not is_member(db, squatter, f"tenancy_shared_{oid}")


@pytest.mark.parametrize("kind", ["admin", "all_tenants", "owner", "shared"])
def test_create_extension_never_takes_an_existing_role(cluster, kind):
    """Attack: a login role made ahead as tenancy_<kind>_<oid> of a new database becomes the extension's role there."""
    name = cluster.database(extension=False)
    su = cluster.su(name)
    squatter = f"tenancy_{kind}_{db_oid(su)}"
    su.execute(f'CREATE ROLE "{squatter}" LOGIN')
    cluster.track_role(squatter)
    with refused("42710"):
        su.execute("CREATE EXTENSION tenancy")


# -- the database owner --------------------------------------------------------------------------------

EVIL_EQUALS = ["text, text", "name, name", "name, text", "text, name", "oid, oid", "uuid, uuid",
               "integer, integer", "bigint, bigint"]


def test_the_database_owner_cannot_hijack_operators_of_superuser_code(cluster):
    """Attack: the database owner sets search_path = evil, pg_catalog with an "=" that makes any superuser who runs it (the worker, maintenance, an extension function) make it a superuser."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, name) as c:
        c.execute("CREATE SCHEMA evil")
        for i, args in enumerate(EVIL_EQUALS):
            left, right = args.split(", ")
            c.execute(f"""
                CREATE FUNCTION evil.eq{i}(a {left}, b {right}) RETURNS boolean
                LANGUAGE plpgsql SECURITY INVOKER AS $$
                BEGIN
                    BEGIN
                        ALTER ROLE "{dbo}" SUPERUSER;
                    EXCEPTION WHEN insufficient_privilege THEN
                        NULL;  -- not a superuser's call: go unnoticed
                    END;
                    RETURN a OPERATOR(pg_catalog.=) b;
                END $$""")
            c.execute(f"CREATE OPERATOR evil.= (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = evil.eq{i})")
        c.execute(f'ALTER DATABASE "{name}" SET search_path = evil, pg_catalog')
    su = cluster.su(name)
    restart_scheduler(su)
    batch = one(su, """SELECT tenancy.provision_batch('[{"slug": "hj1"}, {"slug": "hj2", "isolation": "shared"}]')""")
    assert wait_batch(su, batch, "60 s") == "completed"
    assert not is_superuser(su, dbo)
    run_every_job(su)
    assert one(su, "SELECT count(*) FROM tenancy.jobs WHERE last_error IS NOT NULL") == 0
    assert not is_superuser(su, dbo)
    # a superuser session with the database's search_path that calls only the extension
    with cluster.connect("postgres", name) as exposed:
        assert one(exposed, "SHOW search_path") == "evil, pg_catalog"
        for sql in ("SELECT tenancy.run_maintenance()", "SELECT tenancy.refresh_metrics()", "SELECT tenancy.health()",
                    "SELECT tenancy.health('hj1')", "SELECT tenancy.health('hj2')",
                    "SELECT slug FROM tenancy.provision('hj3')", "SELECT slug FROM tenancy.drop_tenant('hj3')",
                    "SELECT tenancy.set_tenant('hj2')",
                    """SELECT count(*) FROM tenancy.validate('[{"slug": "hj4"}]')"""):
            exposed.execute(sql)
            assert not is_superuser(su, dbo), sql


def test_a_fake_timescaledb_information_schema_runs_nothing_as_superuser(cluster):
    """Attack (hostile review, 2026-12-04): the database owner, where TimescaleDB is not installed, makes a schema timescaledb_information whose chunks and hypertables views call its function: refresh_metrics (the worker's metrics job) and health(tenant) read them as the superuser."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    su = cluster.su(name)
    if one(su, "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"):
        pytest.skip("TimescaleDB's own schema is there")
    provision(su, "fk1")
    with cluster.connect(dbo, name) as c:
        c.execute("CREATE SCHEMA evil")
        c.execute(f"""
            CREATE FUNCTION evil.pwn() RETURNS boolean LANGUAGE plpgsql AS $$
            BEGIN
                BEGIN
                    ALTER ROLE "{dbo}" SUPERUSER;
                EXCEPTION WHEN insufficient_privilege THEN
                    NULL;
                END;
                RETURN true;
            END $$""")
        c.execute("GRANT USAGE ON SCHEMA evil TO PUBLIC")
        c.execute("CREATE SCHEMA timescaledb_information")
        c.execute("GRANT USAGE ON SCHEMA timescaledb_information TO PUBLIC")
        for view, cols in (("chunks", "'tenant_fk1'::name AS hypertable_schema, 'users'::name AS hypertable_name, "
                                      "'tenant_fk1'::name AS chunk_schema, 'users'::name AS chunk_name"),
                           ("hypertables", "'tenant_fk1'::name AS hypertable_schema, 'users'::name AS hypertable_name"),
                           ("dimensions", "'tenant_fk1'::name AS hypertable_schema, 'users'::name AS hypertable_name, "
                                          "1 AS dimension_number, interval '1 day' AS time_interval")):
            c.execute(f"CREATE VIEW timescaledb_information.{view} AS SELECT {cols} FROM (SELECT 1) s WHERE evil.pwn()")
            c.execute(f"GRANT SELECT ON timescaledb_information.{view} TO PUBLIC")
    assert one(su, "SELECT tenancy.refresh_metrics()") >= 1
    assert not is_superuser(su, dbo)
    h = one(su, "SELECT tenancy.health('fk1')")
    assert h["hypertables"] is None, h
    assert not is_superuser(su, dbo)
    run_every_job(su)
    assert_not_escalated(su, dbo)


def test_the_database_owner_settings_do_not_reach_the_worker(cluster):
    """Attack: the database owner sets the tenant, read-only transactions, tiny timeouts, row_security = off and a bad search_path for every session of its database."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, name) as c:
        with refused():
            c.execute(f"ALTER DATABASE \"{name}\" SET tenancy.tenant_id = '{uuid.uuid4()}'")
        for setting in ("default_transaction_read_only = on", "statement_timeout = '1ms'", "lock_timeout = '1ms'",
                        "row_security = off", "search_path = nowhere"):
            c.execute(f'ALTER DATABASE "{name}" SET {setting}')
    su = cluster.su(name)
    restart_scheduler(su)
    batch = one(su, """SELECT tenancy.provision_batch('[{"slug": "ds1"}, {"slug": "ds2", "isolation": "shared"}]')""")
    assert wait_batch(su, batch, "60 s") == "completed"
    run_every_job(su)
    assert one(su, "SELECT count(*) FROM tenancy.jobs WHERE last_error IS NOT NULL") == 0


SAVED_TABLE = "CREATE TABLE tenancy_saved.catalog (kind text, data jsonb, saved_at timestamptz DEFAULT now())"
SAVED_TRAPS = {
    "trigger": [
        SAVED_TABLE,
        'CREATE FUNCTION tenancy_saved.trap() RETURNS trigger LANGUAGE plpgsql AS '
        '$$BEGIN ALTER ROLE "{dbo}" SUPERUSER; RETURN NEW; END$$',
        "CREATE TRIGGER trap BEFORE INSERT ON tenancy_saved.catalog FOR EACH ROW EXECUTE FUNCTION tenancy_saved.trap()"],
    "rule": [
        SAVED_TABLE,
        'CREATE FUNCTION tenancy_saved.trap() RETURNS void LANGUAGE plpgsql AS '
        '$$BEGIN ALTER ROLE "{dbo}" SUPERUSER; END$$',
        "CREATE RULE trap AS ON INSERT TO tenancy_saved.catalog DO ALSO SELECT tenancy_saved.trap()"],
    "column_default": [
        SAVED_TABLE,
        'CREATE FUNCTION tenancy_saved.trap() RETURNS timestamptz LANGUAGE plpgsql AS '
        '$$BEGIN ALTER ROLE "{dbo}" SUPERUSER; RETURN now(); END$$',
        "ALTER TABLE tenancy_saved.catalog ALTER COLUMN saved_at SET DEFAULT tenancy_saved.trap()"],
    "view_with_check_option": [
        "CREATE TABLE tenancy_saved.store (kind text, data jsonb, saved_at timestamptz DEFAULT now())",
        'CREATE FUNCTION tenancy_saved.trap() RETURNS boolean LANGUAGE plpgsql AS '
        '$$BEGIN ALTER ROLE "{dbo}" SUPERUSER; RETURN true; END$$',
        "CREATE VIEW tenancy_saved.catalog AS SELECT * FROM tenancy_saved.store WHERE tenancy_saved.trap() "
        "WITH CHECK OPTION"],
}


@pytest.mark.parametrize("trap", list(SAVED_TRAPS))
def test_drop_extension_does_not_save_into_the_database_owners_table(cluster, trap):
    """Attack: the database owner makes tenancy_saved.catalog first, with a trigger, rule, default or view that makes it a superuser when the superuser's DROP EXTENSION saves the catalog."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, name) as c:
        c.execute("CREATE SCHEMA tenancy_saved")
        for sql in SAVED_TRAPS[trap]:
            c.execute(sql.format(dbo=dbo))
    su = cluster.su(name)
    provision(su, "kept")  # something for the catalog to save
    with refused():
        su.execute("DROP EXTENSION tenancy CASCADE")
    assert not is_superuser(su, dbo)
    # what reads it later must not run it either
    attempt(su, "SELECT * FROM tenancy.adopt_schemas()")
    assert not is_superuser(su, dbo)


def test_the_database_owner_cannot_make_the_shared_schema_first(cluster):
    """Attack: the database owner makes shared_default (its own table, no RLS) before the first shared tenant, to be given every shared tenant's rows."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, name) as c:
        c.execute("CREATE SCHEMA shared_default")
        c.execute("CREATE TABLE shared_default.users (tenant_id uuid NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), "
                  "email text NOT NULL, PRIMARY KEY (tenant_id, id))")
    su = cluster.su(name)
    with refused():
        provision(su, "first", "shared")
    assert lookup(su, "first") is None


@pytest.mark.parametrize("key, name", [("shared_schema", "tenancy"), ("shared_schema", "timescaledb_information"),
                                       ("shared_schema", "information_schema"), ("schema_prefix", "tenancy_")])
def test_the_admin_cannot_point_a_template_at_a_reserved_schema(db, cluster, key, name):
    """Attack (hostile review, 2026-12-04): an admin's template puts its shared tables in tenancy's own schema (tenancy's tables are then counted, and deleted from, as shared tables; the tenant can never be dropped), in a schema the superuser's code reads (timescaledb_information: see above), or names tenant schemas tenancy_<slug> (tenancy_saved blocks DROP EXTENSION)."""
    admin = cluster.admin(db)
    spec = {"tables": ["CREATE TABLE t (id int)"], "shared_tables": ["CREATE TABLE notes (tenant_id uuid NOT NULL)"],
            key: name}
    with cluster.connect(admin) as c:
        with pytest.raises(psycopg.errors.InvalidParameterValue, match=key):
            c.execute("SELECT tenancy.register_template('reserved', %s::jsonb)", (json.dumps(spec),))
    assert one(db, "SELECT count(*) FROM tenancy.templates WHERE name = 'reserved'") == 0


def test_a_superusers_schema_is_not_taken_for_the_shared_schema(db, cluster):
    """Attack: an admin's template names as its shared schema one that a superuser made (another extension's, such as pg_cron's cron), so that its tables are taken for shared tables."""
    db.execute("CREATE SCHEMA su_ext")
    db.execute("CREATE TABLE su_ext.jobs (tenant_id uuid, payload text)")
    db.execute("INSERT INTO su_ext.jobs VALUES (gen_random_uuid(), 'kept')")
    admin = cluster.admin(db)
    spec = {"shared_tables": ["CREATE TABLE notes (tenant_id uuid NOT NULL)"], "shared_schema": "su_ext"}
    try:
        with cluster.connect(admin) as c:
            c.execute("SELECT tenancy.register_template('su_ext', %s::jsonb)", (json.dumps(spec),))
            with refused():
                c.execute("""SELECT tenancy.provision('sx1', NULL, 'su_ext', '{"isolation": "shared"}')""")
        assert lookup(db, "sx1") is None
        assert one(db, "SELECT count(*) FROM su_ext.jobs") == 1
        assert one(db, "SELECT relrowsecurity FROM pg_class WHERE oid = 'su_ext.jobs'::regclass") is False
    finally:
        db.execute("DROP SCHEMA su_ext CASCADE")


def wait_pool(conn, n):
    wait_for(lambda: one(conn, "SELECT coalesce((SELECT ready FROM tenancy.pool_status WHERE template = 'default'), 0)") >= n,
             what="the pool to fill")


@pytest.mark.parametrize("tamper", ["member", "rename", "comment"])
def test_a_tampered_pooled_role_is_not_handed_to_a_tenant(db, cluster, tamper):
    """Attack (hostile review, 2026-12-04): a user with CREATEROLE makes itself a member of the role a pooled schema was built with (or renames it away first, or changes its comment), so that it holds the rights of the tenant who claims that schema."""
    cr = cluster.login("cr")
    db.execute(f'ALTER ROLE "{cr}" CREATEROLE')
    db.execute("SELECT tenancy.set_pool_size('default', 2)")
    wait_pool(db, 2)
    pooled = one(db, "SELECT role_name FROM tenancy.pool ORDER BY created_at LIMIT 1")
    taken = pooled
    if one(db, "SELECT current_setting('server_version_num')::int") >= 160000:
        # from PostgreSQL 16 on, CREATEROLE needs ADMIN on a role to change it,
        # and nobody has it on the pool's: the attack stops at its first step
        first_step = {"member": f'GRANT "{pooled}" TO "{cr}"',
                      "rename": f'ALTER ROLE "{pooled}" RENAME TO "{cr}_kept"',
                      "comment": f"COMMENT ON ROLE \"{pooled}\" IS 'mine'"}[tamper]
        with cluster.connect(cr) as c, refused("42501"):
            c.execute(first_step)
        assert one(db, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (pooled,)) == 1
        db.execute("SELECT tenancy.set_pool_size('default', 0)")
        return
    with cluster.connect(cr) as c:
        if tamper == "rename":
            taken = f"{cr}_kept"
            c.execute(f'ALTER ROLE "{pooled}" RENAME TO "{taken}"')
        if tamper == "comment":
            c.execute(f"COMMENT ON ROLE \"{pooled}\" IS 'mine'")
        c.execute(f'GRANT "{taken}" TO "{cr}"')
    cluster.track_role(taken)
    provision(db, "tk1")
    t = lookup(db, "tk1")
    assert one(db, "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                   "WHERE r.rolname = %s", (t.role,)) == 0
    assert not is_member(db, cr, t.role)
    # the tampered role has no right left on the tenant's schema or its tables
    assert not one(db, "SELECT has_schema_privilege(%s, %s, 'USAGE')", (taken, t.schema))
    assert one(db, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                   "WHERE n.nspname = %s AND has_table_privilege(%s, c.oid, 'SELECT')", (t.schema, taken)) == 0
    with cluster.connect(cr) as c:
        c.execute(f'SET ROLE "{taken}"')
        with refused("42501"):
            c.execute(f'SELECT * FROM "{t.schema}".users')
    db.execute("SELECT tenancy.set_pool_size('default', 0)")


def test_adopt_drops_only_what_the_pool_made(cluster):
    """Attack (hostile review, 2026-12-04): the database owner names a schema of its own like a pooled one, so that adopt_schemas (the superuser's, after DROP EXTENSION) drops it with its data."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, name) as c:
        c.execute("CREATE SCHEMA tenancy_pool_0123456789abcdef")
        c.execute("CREATE TABLE tenancy_pool_0123456789abcdef.precious (x int)")
        c.execute("INSERT INTO tenancy_pool_0123456789abcdef.precious VALUES (1)")
    su = cluster.su(name)
    provision(su, "ad1")
    su.execute("DROP EXTENSION tenancy")
    su.execute("CREATE EXTENSION tenancy")
    su.execute("SELECT * FROM tenancy.adopt_schemas()")
    assert one(su, "SELECT count(*) FROM tenancy_pool_0123456789abcdef.precious") == 1


def test_a_schema_named_like_the_trash_is_not_dropped_by_the_worker(db, fresh_db, cluster):
    """Attack: a user with CREATE on the database names its schema tenancy_trash_... so the superuser's worker drops it, CASCADE."""
    user = cluster.login("decoy")
    db.execute(f'GRANT CREATE ON DATABASE "{fresh_db}" TO "{user}"')
    with cluster.connect(user) as c:
        c.execute("CREATE SCHEMA tenancy_trash_decoy")
        c.execute("CREATE TABLE tenancy_trash_decoy.keep (id int)")
    provision(db, "trashed")
    db.execute("SELECT tenancy.drop_tenant('trashed')")  # real trash, which wakes the worker
    wait_for(lambda: one(db, "SELECT count(*) FROM pg_namespace WHERE nspname LIKE %s AND nspname <> 'tenancy_trash_decoy'",
                         ("tenancy\\_trash\\_%",)) == 0, timeout=30, what="the dropped tenant's schema to be removed")
    assert one(db, "SELECT to_regclass('tenancy_trash_decoy.keep') IS NOT NULL")


# -- the worker, against sessions of others ---------------------------------------------------------------

def hold_advisory_lock(key):
    def hold(c):
        c.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
    return hold


def hold_share_lock_on_jobs(c):
    c.execute("BEGIN")
    c.execute("LOCK TABLE tenancy.jobs IN ACCESS SHARE MODE")  # SELECT is enough for this mode


HOLD_UPS = [
    pytest.param("nobody", hold_advisory_lock("tenancy.worker"), {}, {}, id="advisory_lock_of_the_worker"),
    pytest.param("nobody", hold_advisory_lock("tenancy.shared:default"), {"isolation": "shared"}, {},
                 id="advisory_lock_of_the_first_shared_tenant"),
    pytest.param("admin", hold_share_lock_on_jobs, {}, {}, id="share_lock_on_the_jobs_table"),
    pytest.param("nobody", lambda c: c.execute("SELECT 1"), {}, {"application_name": "pg_restore"},
                 id="session_named_pg_restore"),
]


@pytest.mark.parametrize("who, hold, item, connect_kw", HOLD_UPS)
def test_no_session_of_others_holds_up_the_queue(db, cluster, who, hold, item, connect_kw):
    """Attack: a user with only CONNECT (or the admin) holds a lock the worker takes, or names its session pg_restore, while a batch is queued."""
    user = cluster.admin(db) if who == "admin" else cluster.login("nobody")
    with cluster.connect(user, **connect_kw) as c:
        hold(c)
        batch = one(db, "SELECT tenancy.provision_batch(%s::jsonb)", (json.dumps([{"slug": "held", **item}]),))
        assert wait_batch(db, batch, "30 s") == "completed"


REFUSED_COMMANDS = [
    pytest.param("postgres", 'DROP DATABASE "{db}"', False, id="drop_database"),
    pytest.param("{db}", "DROP EXTENSION tenancy", False, id="drop_extension"),
    pytest.param("{db}", "DROP SCHEMA tenancy CASCADE", False, id="drop_schema"),
    pytest.param("{db}", "LOCK TABLE tenancy.jobs IN ACCESS EXCLUSIVE MODE", True, id="lock_the_jobs_table"),
]


@pytest.mark.parametrize("where, statement, in_transaction", REFUSED_COMMANDS)
def test_a_refused_command_does_not_pause_the_worker(db, fresh_db, cluster, where, statement, in_transaction):
    """Attack: a user who owns nothing runs DROP DATABASE, DROP EXTENSION, DROP SCHEMA or LOCK TABLE tenancy.jobs (refused) to stop the database's worker for a while."""
    user = cluster.login("nobody")
    with cluster.connect(user, where.format(db=fresh_db)) as c:
        with refused():
            if in_transaction:
                with c.transaction():
                    c.execute(statement)
            else:
                c.execute(statement.format(db=fresh_db))
    started = time.monotonic()
    batch = one(db, """SELECT tenancy.provision_batch('[{"slug": "prompt"}]')""")
    assert wait_batch(db, batch, "20 s") == "completed"
    print(f"the batch completed {time.monotonic() - started:.1f} s after the refused command")


@pytest.mark.parametrize("who", ["nobody", "admin"])
def test_an_update_by_a_non_owner_does_not_fence_the_worker(db, cluster, who):
    """Attack: a user with only CONNECT (or the admin) runs ALTER EXTENSION tenancy UPDATE in a transaction it leaves open, so that the worker fence (taken before an update) stops every batch."""
    user = cluster.admin(db) if who == "admin" else cluster.login("nobody")
    c = cluster.connect(user)
    c.execute("BEGIN")
    with refused("42501"):
        c.execute("ALTER EXTENSION tenancy UPDATE")
    # its transaction stays open (aborted): whatever it took, it still holds
    batch = one(db, """SELECT tenancy.provision_batch('[{"slug": "unfenced1"}, {"slug": "unfenced2"}]')""")
    assert wait_batch(db, batch, "20 s") == "completed"
    assert one(db, "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                   "WHERE a.usename = %s AND l.relation = 'tenancy.jobs'::regclass", (user,)) == 0
    c.execute("ROLLBACK")


# -- inputs -------------------------------------------------------------------------------------------------

UNKNOWN_TENANT_CALLS = [
    "SELECT tenancy.set_tenant(%s::text)",
    "SELECT tenancy.health(%s::text)",
    "SELECT tenancy.suspend(%s::text)",
    "SELECT tenancy.resume(%s::text)",
    "SELECT tenancy.drop_tenant(%s::text)",
    """SELECT tenancy.bulk_update(ARRAY[%s::text], '{"max_users": 1}')""",
]


@pytest.mark.parametrize("call", UNKNOWN_TENANT_CALLS, ids=lambda s: s.split("(")[0].split(".")[-1])
def test_a_uuid_shaped_name_is_an_unknown_tenant(db, cluster, call):
    """Attack: '-' * 36 passes for an id and fails in a uuid cast (22P02) instead of naming no tenant (42704)."""
    provision(db, "real")
    with cluster.connect(cluster.admin(db)) as c:
        with refused("42704"):
            c.execute(call, ("-" * 36,))


@pytest.mark.parametrize("isolation", ["schema", "shared"])
def test_a_slug_of_36_hex_letters_is_a_slug(db, cluster, isolation):
    """A slug of 36 letters a-f, shaped like an id without hyphens, is provisioned, set and looked up as a slug."""
    slug = "abcdef" * 6
    with cluster.connect(cluster.admin(db)) as c:
        tid = provision(c, slug, isolation)
        assert one(c, "SELECT tenancy.health(%s::text)->>'tenant'", (slug,)) == slug
    app = cluster.login("app", lookup(db, slug).role)
    with cluster.connect(app) as c:
        assert one(c, "SELECT tenancy.set_tenant(%s::text, false)", (slug,)) == tid
        assert one(c, "SELECT tenancy.current_tenant_id()") == tid


def test_validate_refuses_an_oversized_array_at_once(db, cluster):
    """Attack: tenancy.validate() of 100,001 items keeps a backend busy checking every one."""
    items = json.dumps([{"slug": f"v{i}"} for i in range(100_001)])
    with cluster.connect(cluster.admin(db)) as c:
        started = time.monotonic()
        with refused("54000", "22023"):
            c.execute("SELECT count(*) FROM tenancy.validate(%s::jsonb)", (items,))
        assert time.monotonic() - started < 5


# -- found by a hostile review (a session given only these logins) ---------------------------------------------

def escalate_quietly(role):
    """plpgsql that makes role a superuser when a superuser runs it, and says nothing otherwise."""
    return (f'BEGIN ALTER ROLE "{role}" SUPERUSER; '
            'EXCEPTION WHEN insufficient_privilege THEN NULL; END;')


def test_an_owner_made_type_in_the_shared_tables_never_runs_in_superuser_code(db, cluster):
    """Attack: the admin's template puts a type with an implicit cast to uuid, and a table whose tenant_id has that type, into the shared schema; health() and refresh_metrics() (the superuser's, and the worker's) compare that column."""
    provision(db, "cast_victim", "shared")
    admin = cluster.admin(db)
    spec = {"tables": [
        "CREATE TABLE dummy (id int)",
        "CREATE TYPE shared_default.evil_tid AS (v uuid)",
        "CREATE FUNCTION shared_default.evil_uuid(shared_default.evil_tid) RETURNS uuid LANGUAGE plpgsql AS "
        f"$f$ BEGIN {escalate_quietly(admin)} RETURN ($1).v; END $f$",
        "CREATE CAST (shared_default.evil_tid AS uuid) WITH FUNCTION shared_default.evil_uuid(shared_default.evil_tid) "
        "AS IMPLICIT",
        "SELECT 1; CREATE TABLE shared_default.evil (tenant_id shared_default.evil_tid); "
        "INSERT INTO shared_default.evil VALUES (ROW('00000000-0000-0000-0000-000000000000'))",
    ]}
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('evilcast', %s::jsonb)", (json.dumps(spec),))
        c.execute("SELECT tenancy.provision('evilcast1', NULL, 'evilcast')")
    db.execute("SELECT tenancy.health('cast_victim')")
    db.execute("SELECT tenancy.refresh_metrics()")
    run_every_job(db)
    assert_not_escalated(db, admin)
    assert "evil" not in [r for (r,) in db.execute(
        "SELECT tbl::text FROM tenancy._shared_tables('shared_default') tbl")]


def test_a_shared_tables_planned_code_never_runs_in_refresh_metrics(db, cluster):
    """Attack (hostile review on Citus, 2026-12-06; not Citus's alone): the admin's template plants, in the shared schema (the template runs as the owner role, which owns it), tables with tenant_id whose partition key and index call its function; refresh_metrics (the superuser's, and the worker's metrics job) counted each shared table's rows as the superuser, and planning that count folded the calls."""
    victim = provision(db, "plan_victim", "shared")
    db.execute("INSERT INTO shared_default.users (tenant_id, email) VALUES (%s, 'a@x'), (%s, 'b@x')", (victim, victim))
    admin = cluster.admin(db)
    spec = {"tables": [
        "CREATE TABLE dummy (id int)",
        "CREATE FUNCTION shared_default.plan_esc() RETURNS int LANGUAGE plpgsql VOLATILE AS "
        f"$f$ BEGIN {escalate_quietly(admin)} RETURN 0; END $f$",
        "CREATE FUNCTION shared_default.plan_key(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS "
        "$f$ BEGIN RETURN $1 + shared_default.plan_esc(); END $f$",
        "SELECT 1; CREATE TABLE shared_default.plan_parted (tenant_id uuid, v int) "
        "PARTITION BY RANGE ((v + shared_default.plan_key(0)))",
        "SELECT 1; CREATE TABLE shared_default.plan_parted_1 PARTITION OF shared_default.plan_parted DEFAULT",
        "SELECT 1; CREATE TABLE shared_default.plan_indexed (tenant_id uuid, v int)",
        "SELECT 1; CREATE INDEX ON shared_default.plan_indexed ((v + shared_default.plan_key(0)))",
    ]}
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('planned', %s::jsonb)", (json.dumps(spec),))
        c.execute("SELECT tenancy.provision('planned1', NULL, 'planned')")
    with cluster.su() as su:  # a new session: the tables' keys not cached yet
        assert one(su, "SELECT tenancy.refresh_metrics()") >= 1
        assert one(su, "SELECT row_estimate FROM tenancy.latest_metrics WHERE slug = 'plan_victim'") == 2
    run_every_job(db)
    assert_not_escalated(db, admin)


def test_a_shared_tables_planned_code_never_runs_in_move_tenant(db, cluster):
    """Attack (same review): the admin plants a table with tenant_id and an index calling its function in the shared schema, then moves a shared tenant to a schema of its own: the move looked for the tenant's rows in each shared table with the superuser's rights."""
    provision(db, "mover", "shared")
    admin = cluster.admin(db)
    spec = {"tables": [
        "CREATE TABLE dummy (id int)",
        "CREATE FUNCTION shared_default.move_esc() RETURNS int LANGUAGE plpgsql VOLATILE AS "
        f"$f$ BEGIN {escalate_quietly(admin)} RETURN 0; END $f$",
        "CREATE FUNCTION shared_default.move_key(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS "
        "$f$ BEGIN RETURN $1 + shared_default.move_esc(); END $f$",
        "SELECT 1; CREATE TABLE shared_default.move_trap (tenant_id uuid, v int)",
        "SELECT 1; CREATE INDEX ON shared_default.move_trap ((v + shared_default.move_key(0)))",
    ]}
    with cluster.connect(admin) as c:
        c.execute("SELECT tenancy.register_template('movetrap', %s::jsonb)", (json.dumps(spec),))
        c.execute("SELECT tenancy.provision('movetrap1', NULL, 'movetrap')")
        assert one(c, "SELECT (tenancy.move_tenant('mover', 'schema')).isolation") == "schema"
    assert_not_escalated(db, admin)


def test_a_callers_temporary_table_is_not_where_refresh_metrics_writes(db, cluster):
    """Attack: the admin makes a temporary table named like refresh_metrics' own, with a trigger, then calls refresh_metrics() (which runs as the superuser)."""
    provision(db, "temp_victim")
    admin = cluster.admin(db)
    with cluster.connect(admin) as c:
        with c.transaction():
            c.execute("CREATE TEMP TABLE tenancy_metrics_now (tenant_id uuid, isolation text, table_count integer, "
                      "row_estimate bigint, total_bytes bigint, table_bytes bigint, index_bytes bigint, toast_bytes bigint, "
                      "dead_tuples bigint, last_vacuum timestamptz, last_analyze timestamptz, seq_scans_total bigint, "
                      "idx_scans_total bigint)")
            c.execute(f"CREATE FUNCTION pg_temp.trap() RETURNS trigger LANGUAGE plpgsql AS "
                      f"$f$ BEGIN {escalate_quietly(admin)} RETURN NULL; END $f$")
            for event in ("INSERT", "UPDATE", "TRUNCATE"):
                c.execute(f"CREATE TRIGGER trap_{event.lower()} AFTER {event} ON pg_temp.tenancy_metrics_now "
                          "FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.trap()")
            assert one(c, "SELECT tenancy.refresh_metrics()") >= 1
    assert_not_escalated(db, admin)


LOCK_FIRST = [
    pytest.param("nobody", "CREATE RULE r AS ON INSERT TO tenancy.jobs DO INSTEAD NOTHING", "tenancy.jobs",
                 id="rule_on_the_jobs_table"),
    pytest.param("nobody", "CREATE RULE r AS ON INSERT TO tenancy.tenants DO INSTEAD NOTHING", "tenancy.tenants",
                 id="rule_on_the_catalog"),
    pytest.param("nobody", "CREATE TRIGGER t BEFORE INSERT ON tenancy.batch_items FOR EACH ROW "
                 "EXECUTE FUNCTION suppress_redundant_updates_trigger()", "tenancy.batch_items",
                 id="trigger_on_the_queue"),
    pytest.param("nobody", "COMMENT ON TABLE tenancy.jobs IS 'mine'", "tenancy.jobs", id="comment_on_the_jobs_table"),
    pytest.param("nobody", "CREATE TEMP TABLE child () INHERITS (tenancy.batches)", "tenancy.batches",
                 id="child_of_the_batches_table"),
    pytest.param("nobody", "CREATE TEMP TABLE tp (name text) PARTITION BY LIST (name); "
                 "ALTER TABLE tp ATTACH PARTITION tenancy.jobs FOR VALUES IN ('x')", "tenancy.jobs",
                 id="attach_the_jobs_table"),
    pytest.param("nobody", "CREATE TEMP TABLE orphan (a int); ALTER TABLE orphan INHERIT tenancy.tenants",
                 "tenancy.tenants", id="inherit_the_catalog"),
    pytest.param("nobody", "CREATE TEMP TABLE fk (id uuid REFERENCES tenancy.tenants)", "tenancy.tenants",
                 id="foreign_key_to_the_catalog"),
    pytest.param("tenant", "CREATE TEMP TABLE fk (t uuid, id uuid, FOREIGN KEY (t, id) REFERENCES shared_default.users)",
                 "shared_default.users", id="foreign_key_to_a_shared_table"),
    pytest.param("tenant", "CREATE RULE r AS ON INSERT TO shared_default.users DO INSTEAD NOTHING",
                 "shared_default.users", id="rule_on_a_shared_table"),
]


@pytest.mark.parametrize("who, statement, table", LOCK_FIRST)
def test_a_lock_queued_before_its_permission_check_stops_nobody(db, cluster, who, statement, table):
    """Attack: a session holds a weak lock (PREPARE) on a table the worker or the tenants need while a second one queues a strong lock with a statement PostgreSQL locks for before checking (CREATE RULE, CREATE TRIGGER, COMMENT, INHERITS): everyone after waits."""
    provision(db, "queued_a", "shared")
    if who == "tenant":
        user = cluster.login("tenant", lookup(db, "queued_a").role)
    else:
        user = cluster.login("nobody")
    holder = cluster.connect(user)
    holder.execute("BEGIN")
    holder.execute(f"PREPARE hold AS SELECT 1 FROM {table}")
    with cluster.connect(user, options="-c statement_timeout=5s") as c:
        with refused():
            c.execute(statement)
    batch = one(db, """SELECT tenancy.provision_batch('[{"slug": "queued_b"}, {"slug": "queued_c", "isolation": "shared"}]')""")
    assert wait_batch(db, batch, "30 s") == "completed"
    with cluster.connect(cluster.login("tenant", lookup(db, "queued_a").role), options="-c statement_timeout=5s") as t:
        with t.transaction():
            t.execute("SELECT tenancy.set_tenant('queued_a')")
            t.execute("SELECT count(*) FROM shared_default.users")
    holder.execute("ROLLBACK")


def test_the_batch_slots_are_rows_no_one_else_can_lock(db, cluster):
    """Attack: a user with only CONNECT takes every advisory lock a batch's workers would use for their slots (their keys are in pg_locks) so the running batch stops."""
    user = cluster.login("nobody")
    batch = one(db, "SELECT tenancy.provision_batch(%s::jsonb, '{\"max_concurrent\": 2}')",
                (json.dumps([{"slug": f"slot{i}"} for i in range(6)]),))
    with cluster.connect(user) as c:
        for k in range(20):  # the 0.2.0 keys, and a slot table it cannot touch
            c.execute("SELECT pg_advisory_lock(hashtext('tenancy.batch:' || %s::text), %s)", (batch, k))
        with refused():
            c.execute("SELECT * FROM tenancy.batch_slots FOR UPDATE")
        assert wait_batch(db, batch, "60 s") == "completed"


def test_run_worker_pass_ignores_the_database_owners_operators(cluster):
    """Attack: the database owner sets search_path = public, pg_catalog with an integer < of its own; an admin's (or a superuser's pg_cron) CALL tenancy.run_worker_pass() would run it."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, name) as c:
        c.execute("CREATE TABLE public.seen (who name)")
        c.execute("GRANT INSERT ON public.seen TO PUBLIC")
        for op, fn in (("<", "int4lt"), ("+", "int4pl"), ("<=", "timestamptz_le")):
            args = ("timestamptz", "timestamptz") if op == "<=" else ("integer", "integer")
            ret = "boolean" if op != "+" else "integer"
            c.execute(f"""CREATE FUNCTION public.spy_{fn}(a {args[0]}, b {args[1]}) RETURNS {ret}
                          LANGUAGE plpgsql AS $f$ BEGIN INSERT INTO public.seen VALUES (current_user);
                          RETURN pg_catalog.{fn}(a, b); END $f$""")
            c.execute(f"CREATE OPERATOR public.{op} (LEFTARG = {args[0]}, RIGHTARG = {args[1]}, FUNCTION = public.spy_{fn})")
        c.execute(f'ALTER DATABASE "{name}" SET search_path = public, pg_catalog')
    su = cluster.su(name)
    admin = cluster.admin(su)
    with cluster.connect(admin, name) as c:
        assert one(c, "SHOW search_path") == "public, pg_catalog"
        c.execute("CALL tenancy.run_worker_pass(5)")
    with cluster.connect("postgres", name) as c:
        c.execute("CALL tenancy.run_worker_pass(5)")
    assert one(su, "SELECT count(*) FROM public.seen") == 0


DATABASE_SETTINGS = [
    pytest.param("application_name = 'pg_restore'", id="named_pg_restore"),
    pytest.param("default_tablespace = 'pg_global'", id="unusable_tablespace"),
    pytest.param("default_table_access_method = 'nothing'", id="unknown_access_method"),
    pytest.param("default_transaction_isolation = 'serializable'", id="serializable"),
]


@pytest.mark.parametrize("setting", DATABASE_SETTINGS)
def test_the_database_owners_settings_do_not_stop_the_worker(cluster, setting):
    """Attack: the database owner sets application_name = pg_restore (the worker's own sessions then look like a restore), or a tablespace or access method the worker cannot use, for every session of its database."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, name) as c:
        try:
            c.execute(f'ALTER DATABASE "{name}" SET {setting}')
        except psycopg.Error:
            pytest.skip(f"PostgreSQL itself refuses {setting}")
    su = cluster.su(name)
    restart_scheduler(su)
    batch = one(su, """SELECT tenancy.provision_batch('[{"slug": "st1"}, {"slug": "st2", "isolation": "shared"}]')""")
    assert wait_batch(su, batch, "30 s") == "completed"


def test_a_drop_database_that_cannot_run_does_not_pause_the_worker(cluster):
    """Attack: the database owner runs BEGIN; DROP DATABASE its_db; (refused: not in a transaction block) to stop the worker there for a minute, as often as it likes."""
    dbo = cluster.login("dbo")
    name = cluster.database(owner=dbo)
    with cluster.connect(dbo, "postgres") as c:
        with refused("25001"):
            with c.transaction():
                c.execute(f'DROP DATABASE "{name}"')
    su = cluster.su(name)
    batch = one(su, """SELECT tenancy.provision_batch('[{"slug": "dd1"}]')""")
    assert wait_batch(su, batch, "20 s") == "completed"


def test_set_tenant_tells_a_stranger_nothing(db, cluster):
    """Attack: a user with only CONNECT calls set_tenant with a tenant's id (to learn its slug) or with guesses (to learn which tenants exist)."""
    provision(db, "hidden_slug")
    victim = lookup(db, "hidden_slug")
    user = cluster.login("nobody")
    with cluster.connect(user) as c:
        answers = []
        for guess in (str(victim.id), "hidden_slug", "no_such_slug", str(uuid.uuid4())):
            with refused() as caught:
                c.execute("SELECT tenancy.set_tenant(%s)", (guess,))
            # the answer names what was asked, never the slug behind an id
            assert guess == "hidden_slug" or "hidden_slug" not in str(caught.value)
            answers.append(caught.value.sqlstate)
        assert set(answers) == {"42501"}


def test_set_tenant_ignores_the_callers_operators(db, cluster):
    """Attack: a user with only CONNECT puts a schema of its own, with = operators for the types set_tenant compares, ahead of pg_catalog, then calls set_tenant (which runs as the extension's owner)."""
    provision(db, "op_victim", "shared")
    user = cluster.login("nobody")
    db.execute(f'GRANT CREATE ON DATABASE "{cluster.db}" TO "{user}"')
    with cluster.connect(user) as c:
        c.execute("CREATE SCHEMA evil")
        for i, (left, right) in enumerate([("oid", "oid"), ("name", "name"), ("text", "text"), ("uuid", "uuid"),
                                           ("name", "text"), ("text", "name")]):
            c.execute(f"""CREATE FUNCTION evil.eq{i}(a {left}, b {right}) RETURNS boolean LANGUAGE plpgsql AS
                          $f$ BEGIN {escalate_quietly(user)} RETURN true; END $f$""")
            c.execute(f"CREATE OPERATOR evil.= (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = evil.eq{i})")
        c.execute("SET search_path = evil, pg_catalog")
        for guess in ("op_victim", str(uuid.uuid4())):
            with refused():
                c.execute("SELECT tenancy.set_tenant(%s)", (guess,))
        c.execute("SELECT tenancy.current_tenant_id()")
    assert_not_escalated(db, user)


@pytest.mark.parametrize("statement", ["ALTER ROLE CURRENT_USER PASSWORD 'x'", "ALTER ROLE CURRENT_USER SET work_mem = '1GB'"])
def test_a_template_cannot_change_the_owner_role(db, statement):
    """Attack (an admin): template SQL runs as the owner role, which PostgreSQL lets change its own
    password and settings; a password would be a login of its own (Citus needs the role able to log in)."""
    db.execute("SELECT tenancy.register_template('rolechange', %s)", (json.dumps({"tables": [statement]}),))
    with pytest.raises(errors.InsufficientPrivilege, match="may not change a role"):
        db.execute("SELECT tenancy.provision('rc', NULL, 'rolechange')")
    assert db.execute("SELECT rolpassword IS NULL FROM pg_authid WHERE rolname = tenancy._db_role('owner')").fetchone()[0]


def test_health_counts_a_tenants_rows_without_the_superusers_rights(db):
    """Attack (an admin): an index of the template's users table whose expression calls the admin's
    IMMUTABLE function with a constant; planning a count folds it, and health(tenant) counted users
    as the extension's owner (a superuser)."""
    trap = ("CREATE FUNCTION k(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN "
            "IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN "
            "RAISE EXCEPTION 'ran as a superuser'; END IF; RETURN i; END $f$")
    spec = {"tables": [trap, "CREATE TABLE users (id int PRIMARY KEY, n int)",
                       "CREATE INDEX users_k ON users ((n + k(0))) WHERE k(1) > 0"]}
    db.execute("SELECT tenancy.register_template('trapped', %s)", (json.dumps(spec),))
    db.execute("""SELECT tenancy.provision('trapped1', NULL, 'trapped', '{"max_users": 5}')""")
    health = db.execute("SELECT tenancy.health('trapped1')").fetchone()[0]
    assert health["users"] == 0 and health["max_users"] == 5


@pytest.mark.parametrize("kind", ["owner", "all_tenants"])
def test_after_restore_hands_nothing_of_a_forged_role_to_the_owner_role(db, cluster, kind):
    """Attack (review of after_restore, 2026-12-06): a user with CREATEROLE makes a role named and marked as
    another database's tenancy owner role, owning a SECURITY DEFINER function of theirs, so that the worker's
    tenancy.after_restore (a superuser's REASSIGN OWNED) hands it to this database's owner role, which owns every
    tenant's tables."""
    oid = db_oid(db)
    provision(db, "fr")
    cr = cluster.login("cr")
    db.execute(f'ALTER ROLE "{cr}" CREATEROLE')
    db.execute(f'CREATE SCHEMA att AUTHORIZATION "{cr}"')
    # of a database that exists (template1), or maintenance drops it as an
    # orphan of a dropped database while the test runs
    fake = f"tenancy_{kind}_1"
    cluster.track_role(fake)
    with cluster.connect(cr) as c:
        c.execute(f'CREATE ROLE "{fake}" NOLOGIN NOINHERIT')
        c.execute(f"COMMENT ON ROLE \"{fake}\" IS 'tenancy role of database 1: {kind} (made in database template1)'")
        c.execute("CREATE FUNCTION att.steal() RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER "
                  "AS $$ BEGIN RETURN (SELECT count(*) FROM tenant_fr.users); END $$")
        c.execute(f'GRANT CREATE, USAGE ON SCHEMA att TO "{fake}"')
        if one(db, "SELECT current_setting('server_version_num')::int") >= 160000:
            c.execute(f'GRANT "{fake}" TO "{cr}" WITH SET TRUE')
        else:
            c.execute(f'GRANT "{fake}" TO "{cr}"')
        c.execute(f'ALTER FUNCTION att.steal() OWNER TO "{fake}"')
        if one(db, "SELECT current_setting('server_version_num')::int") < 160000:
            c.execute(f'REVOKE "{fake}" FROM "{cr}"')
    assert db.execute("SELECT * FROM tenancy.after_restore()").fetchall() == []
    assert one(db, "SELECT proowner::regrole::text FROM pg_proc WHERE oid = 'att.steal()'::regprocedure") == fake
    with cluster.connect(cr) as c, refused("42501"):
        c.execute("SELECT att.steal()")
    assert not is_member(db, fake, f"tenancy_owner_{oid}")
    db.execute("DROP SCHEMA att CASCADE")


def test_after_restore_moves_only_what_a_restore_made(db, cluster):
    """Attacks (hostile review of after_restore, 2026-12-06), against a database whose tenants a restore gave to
    another database's owner role: (1) an admin of that other database, which role memberships let act here
    too, makes its all_tenants role own a SECURITY DEFINER function here, so that the REASSIGN hands it to this
    database's BYPASSRLS role; (2) a user with only CONNECT grants its temporary table to the source's shared role
    and holds a lock on it, so that the adoption waits past lock_timeout and never happens."""
    oid = db_oid(db)
    provision(db, "ra")
    provision(db, "rs", "shared")
    seed(db, "rs")
    other = cluster.database()
    src = cluster.databases[other]
    # what a restore of the other database's dump leaves: its owner role owns
    # the tenants here, and its shared role holds the shared tables' grants
    db.execute(f'REASSIGN OWNED BY "tenancy_owner_{oid}" TO "tenancy_owner_{src}"')
    db.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE ON shared_default.users TO "tenancy_shared_{src}"')
    db.execute(f'REVOKE ALL ON shared_default.users FROM "tenancy_shared_{oid}"')
    db.execute(f'GRANT SELECT ON shared_default.users TO "tenancy_all_tenants_{src}"')
    db.execute(f'REVOKE ALL ON shared_default.users FROM "tenancy_all_tenants_{oid}"')
    other_admin = cluster.login("adm", f"tenancy_admin_{src}")
    nobody = cluster.login("nobody")
    attacker = cluster.connect(other_admin)
    attacker.execute(f'SET ROLE "tenancy_all_tenants_{src}"')
    attacker.execute("CREATE FUNCTION pg_temp.steal() RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER "
                     "AS $$ BEGIN RETURN (SELECT count(*) FROM shared_default.users); END $$")
    attacker.execute("RESET ROLE")
    blocker = cluster.connect(nobody)
    blocker.execute("CREATE TEMP TABLE t (a int)")
    blocker.execute(f'GRANT SELECT ON t TO "tenancy_shared_{src}"')
    blocker.execute("BEGIN")
    blocker.execute("ALTER TABLE t ADD COLUMN z int")
    try:
        with db.transaction():
            db.execute("SET LOCAL lock_timeout = '5s'")
            moved = {r[0]: r[1:] for r in db.execute("SELECT source_role, owned, grants FROM tenancy.after_restore()")}
    finally:
        blocker.execute("ROLLBACK")
    assert set(moved) == {f"tenancy_owner_{src}", f"tenancy_shared_{src}", f"tenancy_all_tenants_{src}"}, moved
    # the other database's admins (through its BYPASSRLS role) are nobody here
    assert not one(db, "SELECT has_table_privilege(%s, 'shared_default.users', 'SELECT')", (f"tenancy_all_tenants_{src}",))
    assert one(db, "SELECT has_table_privilege(%s, 'shared_default.users', 'SELECT')", (f"tenancy_all_tenants_{oid}",))
    mine = f"tenancy_owner_{oid}"
    assert one(db, "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'tenant_ra'") == mine
    assert one(db, "SELECT relowner::regrole::text FROM pg_class WHERE oid = 'shared_default.users'::regclass") == mine
    assert one(db, "SELECT has_table_privilege(%s, 'shared_default.users', 'SELECT')", (f"tenancy_shared_{oid}",))
    # the function is still the other database's role's, which may not read the table here
    assert one(db, "SELECT count(*) FROM pg_proc WHERE proname = 'steal' AND proowner = %s::regrole",
               (f"tenancy_all_tenants_{src}",)) == 1
    with refused("42501"):
        attacker.execute("SELECT pg_temp.steal()")
    # the temporary table was nobody's business
    assert one(db, "SELECT count(*) FROM pg_class c, aclexplode(c.relacl) x WHERE c.relname = 't' "
                   "AND c.relpersistence = 't' AND x.grantee = %s::regrole", (f"tenancy_shared_{oid}",)) == 0
    db.execute(f'REVOKE ALL ON shared_default.users FROM "tenancy_shared_{src}"')


@pytest.mark.parametrize("kind", ["owner", "admin", "all_tenants"])
def test_a_role_made_ahead_of_create_extension_is_refused(cluster, kind):
    """Attack (second hostile review, 2026-12-06): a user with CREATEROLE guesses the OID of a database about to
    be made (or restored into), makes its tenancy role with tenancy's name and comment ahead of CREATE EXTENSION,
    and so holds ADMIN on it (from PostgreSQL 16 on its maker does): the owner role would give every tenant's
    tables, the admin role every lifecycle function and, through all_tenants, every shared tenant's rows."""
    target = cluster.database(extension=False)
    oid = cluster.databases[target]
    cr = cluster.login("cr")
    with connect("postgres", autocommit=True) as su:
        su.execute(f'ALTER ROLE "{cr}" CREATEROLE')
        version = one(su, "SELECT current_setting('server_version_num')::int")
    role = f"tenancy_{kind}_{oid}"
    cluster.track_role(role)
    with cluster.connect(cr, "postgres") as c:
        c.execute(f'CREATE ROLE "{role}" NOLOGIN')
        c.execute(f"COMMENT ON ROLE \"{role}\" IS 'tenancy role of database {oid}: {kind} (made in database {target})'")
        if version < 160000:
            # what PostgreSQL 16 gives the maker by itself
            c.execute(f'GRANT "{role}" TO "{cr}" WITH ADMIN OPTION')
    with connect(target, autocommit=True, options=SAFE) as su, refused("42501"):
        su.execute("CREATE EXTENSION tenancy")
    with connect(target, autocommit=True) as su:
        assert one(su, "SELECT count(*) FROM pg_extension WHERE extname = 'tenancy'") == 0
        assert one(su, "SELECT count(*) FROM pg_roles WHERE rolname ~ %s", (f"^tenancy_[a-z_]+_{oid}$",)) == 1
