"""Tenant schemas on a real Citus cluster: a coordinator and two workers,
started here in temporary directories (the extension preloaded beside Citus
on each), skipped where Citus is not installed. Citus is in no Debian suite:
it is built by hand from its public source (README, "Scale-out on Citus")."""

import contextlib
import json
import types
import uuid

import pytest
from psycopg import errors

import citus_cluster
from conftest import PG_BIN, batch_of, skip_without, wait_for



@pytest.fixture(scope="module")
def citus():
    """The cluster (tests/citus_cluster.py): citus.connect(node, user=...)
    with node 0 the coordinator; citus.ports; citus.admin, a tenancy_admin
    member that is no superuser; citus.owner, the owner role (given LOGIN, as
    the README says a superuser does on Citus)."""
    if not citus_cluster.installed(PG_BIN):
        skip_without("citus", "Citus is not installed (built from its source; see README, Scale-out on Citus)")
    cluster = citus_cluster.Cluster(PG_BIN, conf="fsync = off\ntenancy.naptime = 200\ncitus.stat_tenants_track = 'all'\n")
    try:
        with cluster.connect() as c:
            c.execute("CREATE EXTENSION tenancy")  # Citus creates it on the workers too
            oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
            owner, admin = f"tenancy_owner_{oid}", "boss_" + uuid.uuid4().hex[:6]
            c.execute(f'ALTER ROLE "{owner}" LOGIN')
            c.execute(f'CREATE ROLE "{admin}" LOGIN')  # Citus creates it on the workers
            c.execute(f'GRANT "tenancy_admin_{oid}" TO "{admin}"')
        yield types.SimpleNamespace(connect=cluster.connect, ports=cluster.ports, admin=admin, owner=owner,
                                    base=cluster.base)
    finally:
        cluster.stop()


def placement(c, schema):
    """{table: node port} of a tenant schema's tables, and their colocation ids."""
    rows = c.execute("""SELECT s.table_name::text, s.nodeport, t.colocation_id, t.citus_table_type
                        FROM citus_shards s JOIN citus_tables t USING (table_name)
                        WHERE s.table_name::text LIKE %s || '.%%' ORDER BY 1""", (schema,)).fetchall()
    return rows


def login_of(citus, slug):
    """A login of the tenant (a member of its role), made on the coordinator."""
    name = f"u_{slug}_" + uuid.uuid4().hex[:4]
    with citus.connect() as c:
        role = c.execute("SELECT role_name FROM tenancy.tenants WHERE slug = %s", (slug,)).fetchone()[0]
        c.execute(f'CREATE ROLE "{name}" LOGIN')
        c.execute(f'GRANT "{role}" TO "{name}"')
    return name


def test_tenant_schemas_are_distributed_over_the_workers(citus):
    with citus.connect(user=citus.admin) as a:
        for slug in ("acme", "bravo", "carol", "delta"):
            a.execute("SELECT tenancy.provision(%s)", (slug,))
    with citus.connect() as c:
        nodes = set()
        for slug in ("acme", "bravo", "carol", "delta"):
            rows = placement(c, f"tenant_{slug}")
            tables = c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (f"tenant_{slug}",)).fetchone()[0]
            # every table of the schema a single-shard table of the schema, one
            # colocation group and one node per tenant
            assert len(rows) == tables == 3, rows
            assert {r[3] for r in rows} == {"schema"}
            assert len({r[2] for r in rows}) == 1 and len({r[1] for r in rows}) == 1
            nodes |= {r[1] for r in rows}
        assert nodes == set(citus.ports[1:]), "the tenants are not spread over both workers"
        schemas = {r[0] for r in c.execute("SELECT schema_name::text FROM citus_schemas")}
        assert {"tenant_acme", "tenant_bravo", "tenant_carol", "tenant_delta"} <= schemas
        assert c.execute("SELECT tenancy.health('acme')->'missing'").fetchone()[0] == []

    # the tenant's own login, through the coordinator: its rows, keys and
    # foreign keys enforced on the worker; another tenant's schema refused
    alice = login_of(citus, "acme")
    with citus.connect(user=alice) as t:
        uid = t.execute("INSERT INTO tenant_acme.users (email) VALUES ('a@acme.example') RETURNING id").fetchone()[0]
        t.execute("INSERT INTO tenant_acme.audit_events (user_id, action) VALUES (%s, 'login')", (uid,))
        with pytest.raises(errors.ForeignKeyViolation):
            t.execute("INSERT INTO tenant_acme.audit_events (user_id, action) VALUES (gen_random_uuid(), 'x')")
        assert t.execute("SELECT count(*) FROM tenant_acme.users").fetchone()[0] == 1
        with pytest.raises(errors.InsufficientPrivilege):
            t.execute("SELECT count(*) FROM tenant_bravo.users")


def test_a_batch_and_a_migration_through_the_worker(citus):
    with citus.connect(user=citus.admin) as a:
        a.execute("""SELECT tenancy.register_template('notes', '{"tables": [
                     "CREATE TABLE notes (id int PRIMARY KEY, body text)"]}')""")
        batch = a.execute("SELECT tenancy.provision_batch(%s)", (batch_of("n", 3, template="notes"),)).fetchone()[0]
        assert a.execute("SELECT tenancy.wait_batch(%s, '120 s')", (batch,)).fetchone()[0] == "completed"
        v2 = {"tables": ["CREATE TABLE notes (id int PRIMARY KEY, body text, pinned bool)",
                         "CREATE TABLE files (id int PRIMARY KEY, note_id int REFERENCES notes (id))"],
              "migrations": ["ALTER TABLE notes ADD COLUMN pinned bool",
                             "CREATE TABLE files (id int PRIMARY KEY, note_id int REFERENCES notes (id))"]}
        assert a.execute("SELECT tenancy.register_template('notes', %s)", (json.dumps(v2),)).fetchone()[0] == 2
        run = a.execute("SELECT tenancy.migrate('notes', 2)").fetchone()[0]
        assert a.execute("SELECT tenancy.wait_batch(%s, '120 s')", (run,)).fetchone()[0] == "completed"
    with citus.connect() as c:
        for slug in ("n1", "n2", "n3"):
            rows = placement(c, f"tenant_{slug}")
            # the migration's new table is a tenant table, beside the others
            assert [r[0] for r in rows] == [f"tenant_{slug}.files", f"tenant_{slug}.notes"]
            assert len({r[2] for r in rows}) == 1 and len({r[1] for r in rows}) == 1
            c.execute(f"INSERT INTO tenant_{slug}.notes VALUES (1, 'x', true)")
            c.execute(f"INSERT INTO tenant_{slug}.files VALUES (1, 1)")
            assert c.execute("SELECT tenancy.health(%s)->'missing'", (slug,)).fetchone()[0] == []


def test_suspend_resume_and_drop(citus):
    with citus.connect(user=citus.admin) as a:
        a.execute("SELECT tenancy.provision('echo')")
    bob = login_of(citus, "echo")
    with citus.connect(user=citus.admin) as a:
        a.execute("SELECT tenancy.suspend('echo')")
        with citus.connect(user=bob) as t, pytest.raises(errors.InsufficientPrivilege):
            t.execute("SELECT count(*) FROM tenant_echo.users")
        a.execute("SELECT tenancy.resume('echo')")
        with citus.connect(user=bob) as t:
            assert t.execute("SELECT count(*) FROM tenant_echo.users").fetchone()[0] == 0
        a.execute("SELECT tenancy.drop_tenant('echo')")
    with citus.connect() as c:
        def gone():
            c.execute("SELECT tenancy.process_queue()")
            return c.execute("""SELECT count(*) FROM citus_tables WHERE table_name::text LIKE 'tenancy_trash%%'
                                   OR table_name::text LIKE 'tenant_echo.%%'""").fetchone()[0] == 0
        wait_for(gone, timeout=60, what="the dropped tenant's shards to be gone")
        for port in citus.ports[1:]:
            with citus.connect(citus.ports.index(port)) as w:
                assert w.execute("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant_echo%'").fetchone()[0] == 0


def test_a_pooled_schema_is_placed_before_it_is_claimed(citus):
    with citus.connect(user=citus.admin) as a:
        a.execute("SELECT tenancy.set_pool_size('default', 1)")
        wait_for(lambda: a.execute("SELECT ready FROM tenancy.pool_status WHERE template = 'default'").fetchone()[0] == 1,
                 timeout=60, what="a pooled schema")
        a.execute("SELECT tenancy.provision('foxtrot')")
        assert a.execute("SELECT details->>'from_pool' FROM tenancy.audit_log WHERE tenant_slug = 'foxtrot' "
                         "AND action = 'provision'").fetchone()[0] == "true"
        a.execute("SELECT tenancy.set_pool_size('default', 0)")
    with citus.connect() as c:
        rows = placement(c, "tenant_foxtrot")
        assert len(rows) == 3 and len({r[2] for r in rows}) == 1
        assert c.execute("SELECT count(*) FROM citus_schemas WHERE schema_name::text = 'tenant_foxtrot'").fetchone()[0] == 1


def test_worker_nodes_keep_nothing(citus):
    with citus.connect(1) as w:
        assert w.execute("SELECT tenancy.health()->'citus'->>'node'").fetchone()[0] == "worker"
        with pytest.raises(errors.FeatureNotSupported, match="coordinator"):
            w.execute("SELECT tenancy.provision('on_a_worker')")
        # the worker node's copy of the extension runs no periodic job
        assert w.execute("SELECT count(*) FROM tenancy.jobs WHERE last_finished_at IS NOT NULL").fetchone()[0] == 0


def test_what_citus_cannot_do_is_refused_at_the_call(citus):
    with citus.connect(user=citus.admin) as a:
        # TimescaleDB and Citus do not go in one database
        a.execute("""SELECT tenancy.register_template('metrics', '{"tables": ["CREATE TABLE m (t timestamptz NOT NULL, v int)"],
                     "timescale_tables": [{"name": "m", "time_column": "t"}]}')""")
        with pytest.raises(errors.FeatureNotSupported, match="Citus"):
            a.execute("SELECT tenancy.provision('golf', NULL, 'metrics')")
        # rows written by a template are not distributed with the extension's rights
        a.execute("""SELECT tenancy.register_template('seeded', '{"tables": ["CREATE TABLE s (id int)",
                     "INSERT INTO s VALUES (1)"]}')""")
        with pytest.raises(errors.FeatureNotSupported, match="may not write rows"):
            a.execute("SELECT tenancy.provision('hotel', NULL, 'seeded')")
        assert a.execute("SELECT count(*) FROM tenancy.tenants WHERE slug IN ('golf', 'hotel')").fetchone()[0] == 0
    # the owner role must reach the workers
    with citus.connect() as c:
        c.execute(f'ALTER ROLE "{citus.owner}" NOLOGIN')
        try:
            with citus.connect(user=citus.admin) as a, pytest.raises(errors.ObjectNotInPrerequisiteState,
                                                                      match="must be able to log in"):
                a.execute("SELECT tenancy.provision('juliet2')")
        finally:
            c.execute(f'ALTER ROLE "{citus.owner}" LOGIN')


def test_a_tenant_moves_to_another_node_with_its_rows(citus):
    with citus.connect() as c:  # the rows (an admin does not read tenants' schemas)
        c.execute("SELECT tenancy.provision('juliet')")
        c.execute("INSERT INTO tenant_juliet.users (email) SELECT 'u' || g || '@juliet.example' FROM generate_series(1, 500) g")
    with citus.connect(user=citus.admin) as a, citus.connect() as c:
        here = a.execute("SELECT tenancy.health('juliet')->'citus'->>'node'").fetchone()[0]
        there = next(f"127.0.0.1:{p}" for p in citus.ports[1:] if f"127.0.0.1:{p}" != here)
        assert a.execute("SELECT tenancy.move_tenant_node('juliet', %s)", (there,)).fetchone()[0] == there
        assert a.execute("SELECT tenancy.health('juliet')->'citus'->>'node'").fetchone()[0] == there
        assert c.execute("SELECT count(*) FROM tenant_juliet.users").fetchone()[0] == 500
        assert a.execute("SELECT details FROM tenancy.audit_log WHERE tenant_slug = 'juliet' AND action = 'move_node'"
                         ).fetchone()[0] == {"from": here, "to": there}
        # to where it is: nothing copied, no audit entry
        assert a.execute("SELECT tenancy.move_tenant_node('juliet', %s)", (there,)).fetchone()[0] == there
        assert a.execute("SELECT count(*) FROM tenancy.audit_log WHERE tenant_slug = 'juliet' AND action = 'move_node'"
                         ).fetchone()[0] == 1
        with pytest.raises(errors.InvalidParameterValue):
            a.execute("SELECT tenancy.move_tenant_node('juliet', 'nowhere')")
        with pytest.raises(errors.UndefinedObject):
            a.execute("SELECT tenancy.move_tenant_node('nobody_here', %s)", (there,))
        with pytest.raises(errors.UndefinedObject):
            a.execute("SELECT tenancy.move_tenant_node('juliet', '127.0.0.1:1')")
    # the tenant's own login may not move it
    with citus.connect(user=login_of(citus, "juliet")) as t, pytest.raises(errors.InsufficientPrivilege):
        t.execute("SELECT tenancy.move_tenant_node('juliet', %s)", (here,))
    with citus.connect() as c:
        # every shard of the schema went, not some
        rows = placement(c, "tenant_juliet")
        assert {f"127.0.0.1:{r[1]}" for r in rows} == {there} and len(rows) == 3


def test_sizes_and_placement_come_from_the_shards(citus):
    with citus.connect() as c:
        c.execute("SELECT tenancy.provision('kilo')")
        c.execute("INSERT INTO tenant_kilo.users (email) SELECT 'u' || g || '@kilo.example' FROM generate_series(1, 5000) g")
        c.execute("SELECT tenancy.refresh_metrics()")
        size = c.execute("SELECT total_bytes FROM tenancy.latest_metrics WHERE slug = 'kilo'").fetchone()[0]
        shards = c.execute("SELECT sum(shard_size) FROM citus_shards WHERE table_name::text LIKE 'tenant_kilo.%'").fetchone()[0]
        assert size >= shards > 100_000, (size, shards)  # the rows are on a worker, the shells here are empty
        health = c.execute("SELECT tenancy.health()->'citus'").fetchone()[0]
        assert health["node"] == "coordinator" and health["worker_nodes"] == 2
        assert sum(health["tenant_schemas_per_node"].values()) == c.execute(
            "SELECT count(*) FROM tenancy.tenants WHERE status IN ('active', 'suspended') AND isolation = 'schema'").fetchone()[0]
        # a quota is enforced on the shards' size
        c.execute("SELECT tenancy.bulk_update('{kilo}', '{\"max_storage_bytes\": 10000}')")
        c.execute("SELECT tenancy.refresh_metrics()")
    kilo = login_of(citus, "kilo")
    with citus.connect(user=kilo) as t:
        with pytest.raises(errors.ConfigurationLimitExceeded):
            t.execute("INSERT INTO tenant_kilo.users (email) VALUES ('one.more@kilo.example')")
        assert t.execute("SELECT count(*) FROM tenant_kilo.users").fetchone()[0] == 5000
        for _ in range(3):
            t.execute("SELECT email FROM tenant_kilo.users WHERE email = 'u1@kilo.example'").fetchall()
    # health(tenant): its node, its shards' bytes, Citus's counts of its queries
    with citus.connect(user=citus.admin) as a:
        h = a.execute("SELECT tenancy.health('kilo')").fetchone()[0]
    with citus.connect() as c:
        node = c.execute("SELECT DISTINCT nodename || ':' || nodeport FROM citus_shards "
                         "WHERE table_name::text LIKE 'tenant_kilo.%'").fetchall()
    assert [h["citus"]["node"]] == [n[0] for n in node], (h["citus"], node)
    assert h["size_bytes"] >= h["citus"]["shard_bytes"] > 100_000, h
    assert h["citus"]["stat_tenants"]["query_count_in_this_period"] >= 4, h["citus"]


def test_a_templates_code_never_runs_as_a_superuser_on_citus(citus):
    """Attack (an admin): a template whose index calls a function that
    raises when it finds itself a superuser. The schema is distributed with
    the extension's rights, and Citus plans a look at each table, which
    evaluates index expressions: such an index is refused before."""
    trap = ("CREATE FUNCTION k(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN "
            "IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN "
            "RAISE EXCEPTION 'ran as a superuser'; END IF; RETURN i; END $f$")
    with citus.connect(user=citus.admin) as a:
        for slug, name, index in (("tp1", "trapped", "CREATE INDEX s_k ON s ((id + k(0)))"),
                                  ("tp2", "trapped_where", "CREATE INDEX s_w ON s (id) WHERE k(0) >= 0"),
                                  ("tp3", "trapped_stats", "CREATE STATISTICS s_st ON (id + k(0)), id FROM s")):
            spec = {"tables": [trap, "CREATE TABLE s (id int PRIMARY KEY)", index]}
            a.execute("SELECT tenancy.register_template(%s, %s)", (name, json.dumps(spec)))
            with pytest.raises(errors.FeatureNotSupported, match="only built-in functions"):
                a.execute("SELECT tenancy.provision(%s, NULL, %s)", (slug, name))
        # nor a generated column, a default, a check (of the table or of a
        # domain): the hostile review's way in was a generated column, its
        # function placed on the workers by a first tenant's default
        for slug, name, table in (
                ("tp4", "trapped_generated", "CREATE TABLE s (id int PRIMARY KEY, g int GENERATED ALWAYS AS (k(1)) STORED)"),
                ("tp5", "trapped_default", "CREATE TABLE s (id int PRIMARY KEY, d int DEFAULT k(1))"),
                ("tp6", "trapped_check", "CREATE TABLE s (id int PRIMARY KEY CHECK (k(id) >= 0))"),
                ("tp7", "trapped_domain", "CREATE DOMAIN kd AS int CHECK (k(VALUE) >= 0); CREATE TABLE s (id kd)"),
                # the second hostile review's way: a partition key's call,
                # folded where Citus loads the key as a superuser
                ("tp9", "trapped_partition_key", "CREATE TABLE s (id int, v int) PARTITION BY RANGE ((v + k(0))); "
                                                 "CREATE TABLE s_1 PARTITION OF s FOR VALUES FROM (0) TO (10)"),
                ("tp10", "trapped_range", "CREATE FUNCTION kdiff(a int4, b int4) RETURNS float8 LANGUAGE sql IMMUTABLE "
                                          "AS 'SELECT (b - a + k(0))::float8'; "
                                          "CREATE TYPE kr AS RANGE (subtype = int4, subtype_diff = kdiff); "
                                          "CREATE TABLE s (id int PRIMARY KEY, r kr)"),
                # a built-in that runs a query given as text
                ("tp11", "trapped_query_text", "CREATE TABLE s (id int PRIMARY KEY "
                                               "CHECK (query_to_xml('SELECT k(' || id || ')', true, true, '') IS NOT NULL))")):
            spec = {"tables": [trap, *table.split("; ")]}
            a.execute("SELECT tenancy.register_template(%s, %s)", (name, json.dumps(spec)))
            with pytest.raises(errors.FeatureNotSupported, match="only built-in functions"):
                a.execute("SELECT tenancy.provision(%s, NULL, %s)", (slug, name))
        assert a.execute("SELECT count(*) FROM tenancy.tenants WHERE slug LIKE 'tp%'").fetchone()[0] == 0
        # the third hostile review's way: the code in another schema the
        # owner role owns (another tenant's), reached only through a type: a
        # partition key's cast to a domain whose check calls it
        a.execute("SELECT tenancy.register_template('lib', %s)", (json.dumps(
            {"shared_tables": ["CREATE TABLE books (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant_id(), "
                               "id int, PRIMARY KEY (tenant_id, id))"]}),))
        a.execute("SELECT tenancy.provision('reader', NULL, 'lib', '{\"isolation\": \"shared\"}')")
        spec = {"tables": [trap.replace("FUNCTION k(", "FUNCTION shared_lib.k("),
                           "CREATE DOMAIN shared_lib.kd AS int CHECK (shared_lib.k(1) >= 0)",
                           "CREATE TABLE p (a int) PARTITION BY LIST ((a::shared_lib.kd))",
                           "CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1)"]}
        a.execute("SELECT tenancy.register_template('trapped_elsewhere', %s)", (json.dumps(spec),))
        with pytest.raises(errors.FeatureNotSupported, match=r"only built-in functions.*shared_lib\.k\(integer\)"):
            a.execute("SELECT tenancy.provision('tp12', NULL, 'trapped_elsewhere')")
        # nor can a migration add one later (Citus computes generated columns
        # and checks as a superuser when it copies a shard to another node)
        a.execute("SELECT tenancy.register_template('migrated', %s)",
                  (json.dumps({"tables": [trap, "CREATE TABLE s (id int PRIMARY KEY)"]}),))
        a.execute("SELECT tenancy.provision('tp8', NULL, 'migrated')")
        a.execute("SELECT tenancy.register_template('migrated', %s)",
                  (json.dumps({"tables": [trap, "CREATE TABLE s (id int PRIMARY KEY)"],
                               # the default has Citus place k on the workers
                               "migrations": ["ALTER TABLE s ADD COLUMN d int DEFAULT k(1)",
                                              "ALTER TABLE s ADD COLUMN g int GENERATED ALWAYS AS (k(2)) STORED"]}),))
        run = a.execute("SELECT tenancy.migrate('migrated', 2)").fetchone()[0]
        assert a.execute("SELECT tenancy.wait_batch(%s, '120 s')", (run,)).fetchone()[0] == "failed"
        assert a.execute("SELECT last_sqlstate, last_error ~ 'only built-in functions' FROM tenancy.batch_items "
                         "WHERE batch_id = %s", (run,)).fetchone() == ("0A000", True)
        assert a.execute("SELECT template_version FROM tenancy.tenants WHERE slug = 'tp8'").fetchone()[0] == 1
        # a default of the extension's own functions is fine (shared tables'
        # tenant_id), as is an index of built-in code
        spec = {"tables": ["CREATE TABLE s (id int PRIMARY KEY, e text)", "CREATE INDEX s_l ON s (lower(e)) WHERE id > 0"]}
        a.execute("SELECT tenancy.register_template('plain_index', %s)", (json.dumps(spec),))
        a.execute("SELECT tenancy.provision('lima', NULL, 'plain_index')")
        # nor can a template give the owner role a password (a login of its own)
        a.execute("""SELECT tenancy.register_template('passworded', '{"tables": ["ALTER ROLE CURRENT_USER PASSWORD ''x''"]}')""")
        with pytest.raises(errors.InsufficientPrivilege, match="may not change a role"):
            a.execute("SELECT tenancy.provision('mike', NULL, 'passworded')")
    with citus.connect() as c:
        assert len(placement(c, "tenant_lima")) == 1


# A template with shared tables: a global one (no tenant_id: a reference
# table) and two of tenants' rows, one referencing the other by tenant.
CRM = {"shared_tables": [
    "CREATE TABLE plans (id int PRIMARY KEY, name text)",
    "CREATE TABLE accounts (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant_id(), "
    "id bigint GENERATED BY DEFAULT AS IDENTITY, name text, plan_id int REFERENCES plans (id), "
    "PRIMARY KEY (tenant_id, id))",
    "CREATE TABLE notes (tenant_id uuid NOT NULL DEFAULT tenancy.current_tenant_id(), id bigserial, "
    "account_id bigint NOT NULL, body text, PRIMARY KEY (tenant_id, id), "
    "FOREIGN KEY (tenant_id, account_id) REFERENCES accounts (tenant_id, id))"]}
SHARED = [f"sh{i}" for i in range(1, 13)]


@pytest.fixture(scope="module")
def shared(citus):
    """Twelve shared tenants of the template crm (enough that both workers
    hold some: each tenant's shard is a hash of its id), the global plans."""
    with citus.connect(user=citus.admin) as a:
        a.execute("SELECT tenancy.register_template('crm', %s)", (json.dumps(CRM),))
        for slug in SHARED:
            a.execute("SELECT tenancy.provision(%s, NULL, 'crm', '{\"isolation\": \"shared\"}')", (slug,))
        ids = dict(a.execute("SELECT slug, id FROM tenancy.tenants WHERE slug = ANY(%s)", (SHARED,)).fetchall())
    with citus.connect() as c:
        c.execute("INSERT INTO shared_crm.plans VALUES (1, 'free'), (2, 'pro')")
    return ids


@contextlib.contextmanager
def in_tenant(conn, slug):
    """A transaction of conn acting as shared tenant slug (set_tenant is per
    transaction on Citus)."""
    with conn.transaction():
        conn.execute("SELECT tenancy.set_tenant(%s)", (slug,))
        yield


def test_shared_tables_are_distributed_by_tenant(citus, shared):
    with citus.connect() as c:
        kinds = dict((r[0], r[1:]) for r in c.execute(
            """SELECT table_name::text, citus_table_type, distribution_column, colocation_id
               FROM citus_tables WHERE table_name::text LIKE 'shared_crm.%'"""))
        assert kinds["shared_crm.plans"][0] == "reference"
        assert kinds["shared_crm.accounts"][:2] == ("distributed", "tenant_id")
        assert kinds["shared_crm.notes"][:2] == ("distributed", "tenant_id")
        # a tenant's rows of every table on one node: one colocation group
        assert kinds["shared_crm.accounts"][2] == kinds["shared_crm.notes"][2]
        nodes = {c.execute("""SELECT nodeport FROM citus_shards WHERE shardid =
                                  get_shard_id_for_distribution_column('shared_crm.accounts', %s)""",
                           (tid,)).fetchone()[0] for tid in shared.values()}
        assert nodes == set(citus.ports[1:]), "the shared tenants are not spread over both workers"
        # the policies and grants went with the shards
        for port in citus.ports[1:]:
            with citus.connect(citus.ports.index(port)) as w:
                w.execute("SET citus.show_shards_for_app_name_prefixes = '*'")
                shards = w.execute("""SELECT count(*) FILTER (WHERE c.relrowsecurity AND c.relforcerowsecurity
                                                              AND EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid)),
                                             count(*)
                                      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                                      WHERE n.nspname = 'shared_crm' AND c.relname ~ '^(accounts|notes)_[0-9]+$'""").fetchone()
                assert shards[0] == shards[1] > 0, shards
        # the coordinator knows each worker's key; nobody else reads them
        assert c.execute("SELECT count(*) FROM tenancy.citus_node_keys").fetchone()[0] == 2
    with citus.connect(user=citus.admin) as a:
        for table in ("tenancy.node_key", "tenancy.citus_node_keys"):
            with pytest.raises(errors.InsufficientPrivilege):
                a.execute(f"SELECT * FROM {table}")


def test_a_shared_tenant_sees_only_its_rows_on_the_workers(citus, shared):
    alice, bob = login_of(citus, "sh1"), login_of(citus, "sh2")
    with citus.connect(user=alice) as t:
        with in_tenant(t, "sh1"):
            ids = [t.execute("INSERT INTO shared_crm.accounts (name, plan_id) VALUES (%s, 1) RETURNING id",
                             (f"a{i}",)).fetchone()[0] for i in range(3)]
            t.execute("INSERT INTO shared_crm.notes (account_id, body) VALUES (%s, 'hello')", (ids[0],))
            assert t.execute("SELECT count(*) FROM shared_crm.accounts").fetchone()[0] == 3
            # a row of another tenant's is refused by the worker's policy
            with pytest.raises(errors.InsufficientPrivilege):
                with t.transaction():
                    t.execute("INSERT INTO shared_crm.accounts (tenant_id, name) VALUES (%s, 'x')", (shared["sh2"],))
            # one tenant's statement goes to one shard
            plan = "\n".join(r[0] for r in t.execute(
                "EXPLAIN (COSTS OFF) SELECT * FROM shared_crm.accounts WHERE tenant_id = %s", (shared["sh1"],)))
            assert "Task Count: 1" in plan, plan
        # without a tenant: nothing, and nothing written
        assert t.execute("SELECT count(*) FROM shared_crm.accounts").fetchone()[0] == 0
        with pytest.raises(errors.InsufficientPrivilege):
            t.execute("INSERT INTO shared_crm.accounts (tenant_id, name) VALUES (%s, 'x')", (shared["sh1"],))
        # the session's SET does not reach the workers: refused, not silently empty
        with pytest.raises(errors.FeatureNotSupported, match="per transaction"):
            t.execute("SELECT tenancy.set_tenant('sh1', false)")
        with pytest.raises(errors.InsufficientPrivilege):
            t.execute("SELECT tenancy.set_tenant('sh2')")
    with citus.connect(user=bob) as t, in_tenant(t, "sh2"):
        assert t.execute("SELECT count(*) FROM shared_crm.accounts").fetchone()[0] == 0
        t.execute("INSERT INTO shared_crm.accounts (name) VALUES ('b')")
        assert t.execute("SELECT name FROM shared_crm.accounts").fetchall() == [("b",)]
    with citus.connect() as c:
        # the rows are on the workers, each tenant's where its shard is
        assert c.execute("SELECT tenant_id, count(*) FROM shared_crm.accounts GROUP BY 1 ORDER BY 2").fetchall() == [
            (uuid.UUID(str(shared["sh2"])), 1), (uuid.UUID(str(shared["sh1"])), 3)]
    with citus.connect(user=citus.admin) as a:
        # health(tenant) counts the tenant's rows on its worker (as the owner
        # role, in the tenant's context, which goes to the worker too)
        h = a.execute("SELECT tenancy.health('sh1')").fetchone()[0]
        assert h["rows"]["accounts"] == 3 and h["rows"]["notes"] == 1, h


def test_a_tenant_cannot_forge_its_context_on_the_workers(citus, shared):
    """Attack (a shared tenant's login): set the proof the workers believe,
    on the coordinator or on a worker it reaches directly, to another
    tenant's id; read the proof set_tenant made."""
    with citus.connect() as c:
        with in_tenant(c, "sh3"):
            c.execute("INSERT INTO shared_crm.accounts (name) VALUES ('secret of sh3')")
    mallory = login_of(citus, "sh4")
    forged = f"v1:{shared['sh3']}:1:1={'0' * 32},2={'0' * 32}"
    with citus.connect(user=mallory) as t:
        with t.transaction():
            t.execute("SELECT tenancy.set_tenant('sh4')")
            with pytest.raises(errors.InsufficientPrivilege):
                t.execute("SELECT current_setting('tenancy.tenant_proof')")
        for how in ("SET LOCAL tenancy.tenant_proof = %s", "SELECT set_config('tenancy.tenant_proof', %s, true)"):
            with pytest.raises(errors.InsufficientPrivilege), t.transaction():
                t.execute("SET LOCAL citus.propagate_set_commands = 'local'")
                t.execute(how.replace("%s", f"'{forged}'"))
    # on the worker that holds sh3's rows, reading its shard itself: the
    # proof is refused; posing as a Citus connection it is taken, but no MAC
    # of this node's key is in it, so the shard's policy sees no tenant
    with citus.connect() as c:
        shard, port = c.execute("""SELECT shardid, nodeport FROM citus_shards WHERE shardid =
                                       get_shard_id_for_distribution_column('shared_crm.accounts', %s)""",
                                (shared["sh3"],)).fetchone()
    node = citus.ports.index(port)
    with citus.connect(node) as w:
        assert w.execute(f"SELECT count(*) FROM shared_crm.accounts_{shard} WHERE tenant_id = %s",
                         (shared["sh3"],)).fetchone()[0] >= 1
    with citus.connect(node, user=mallory) as w:
        with pytest.raises(errors.InsufficientPrivilege), w.transaction():
            w.execute(f"SET LOCAL tenancy.tenant_proof = '{forged}'")
    # on the coordinator, calling itself a Citus connection changes nothing:
    # Citus would send the proof on (the hostile review replayed a proof so)
    with citus.connect(user=mallory, application_name="citus_internal gpid=10000000002") as t:
        with pytest.raises(errors.InsufficientPrivilege, match="tenant_proof"), t.transaction():
            t.execute("SET LOCAL citus.propagate_set_commands = 'local'")
            t.execute(f"SET LOCAL tenancy.tenant_proof = '{forged}'")
    with citus.connect(node, user=mallory, application_name="citus_internal gpid=10000000001") as w, w.transaction():
        w.execute(f"SET LOCAL tenancy.tenant_proof = '{forged}'")
        assert w.execute("SELECT tenancy.current_tenant_id()").fetchone()[0] is None
        assert w.execute(f"SELECT count(*) FROM shared_crm.accounts_{shard}").fetchone()[0] == 0


def test_a_shared_tenant_over_its_quota_writes_nothing_on_the_workers(citus, shared):
    login = login_of(citus, "sh5")
    with citus.connect() as c:
        c.execute("UPDATE tenancy.tenants SET over_quota_since = now() WHERE slug = 'sh5'")
        c.execute("SELECT tenancy._tenants_changed()")
    try:
        with citus.connect(user=login) as t, in_tenant(t, "sh5"):
            with pytest.raises(errors.ConfigurationLimitExceeded):
                with t.transaction():
                    t.execute("INSERT INTO shared_crm.accounts (name) VALUES ('one too many')")
            assert t.execute("SELECT count(*) FROM shared_crm.accounts").fetchone()[0] == 0
    finally:
        with citus.connect() as c:
            c.execute("UPDATE tenancy.tenants SET over_quota_since = NULL WHERE slug = 'sh5'")
            c.execute("SELECT tenancy._tenants_changed()")


def test_dropping_a_shared_tenant_deletes_its_rows_on_the_workers(citus, shared):
    with citus.connect() as c:
        for slug in ("sh6", "sh7"):
            with in_tenant(c, slug):
                c.execute("INSERT INTO shared_crm.accounts (name) SELECT 'n' || g FROM generate_series(1, 20) g")
    with citus.connect(user=citus.admin) as a:
        a.execute("SELECT tenancy.drop_tenant('sh6')")
    with citus.connect() as c:
        counts = dict(c.execute("SELECT tenant_id, count(*) FROM shared_crm.accounts WHERE tenant_id = ANY(%s) GROUP BY 1",
                                ([shared["sh6"], shared["sh7"]],)).fetchall())
        assert counts == {uuid.UUID(str(shared["sh7"])): 20}, counts


def test_sizes_of_shared_tenants_come_from_the_shards(citus, shared):
    with citus.connect() as c:
        for slug, n in (("sh8", 3000), ("sh9", 30)):
            with in_tenant(c, slug):
                c.execute("INSERT INTO shared_crm.accounts (name) SELECT repeat('x', 200) || g FROM generate_series(1, %s) g",
                          (n,))
        c.execute("SELECT tenancy.refresh_metrics()")
        sizes = dict(c.execute("SELECT slug, total_bytes FROM tenancy.latest_metrics WHERE slug IN ('sh8', 'sh9')"))
        rows = dict(c.execute("SELECT slug, row_estimate FROM tenancy.latest_metrics WHERE slug IN ('sh8', 'sh9')"))
        assert rows == {"sh8": 3000, "sh9": 30}, rows
        # the rows' share of the shards' bytes (the shells here are empty)
        assert sizes["sh8"] > 600_000 and sizes["sh8"] > 50 * sizes["sh9"] > 0, sizes
        c.execute("SELECT tenancy.bulk_update('{sh8}', '{\"max_storage_bytes\": 100000}')")
        c.execute("SELECT tenancy.refresh_metrics()")
    login = login_of(citus, "sh8")
    try:
        with citus.connect(user=login) as t, in_tenant(t, "sh8"):
            with pytest.raises(errors.ConfigurationLimitExceeded), t.transaction():
                t.execute("INSERT INTO shared_crm.accounts (name) VALUES ('over')")
            assert t.execute("SELECT count(*) FROM shared_crm.accounts WHERE tenant_id = %s",
                             (shared["sh8"],)).fetchone()[0] == 3000
            t.execute("DELETE FROM shared_crm.accounts WHERE id <= 10")  # deletes are allowed
            for _ in range(3):  # routed to its shard by its id: counted for it by Citus
                t.execute("SELECT count(*) FROM shared_crm.accounts WHERE tenant_id = %s", (shared["sh8"],))
        with citus.connect(user=citus.admin) as a:
            h = a.execute("SELECT tenancy.health('sh8')").fetchone()[0]
        with citus.connect() as c:
            node = c.execute("SELECT nodename || ':' || nodeport FROM citus_shards WHERE shardid = "
                             "get_shard_id_for_distribution_column('shared_crm.accounts', %s)", (shared["sh8"],)).fetchone()[0]
            rows = c.execute("SELECT count(*) FROM shared_crm.accounts WHERE tenant_id = %s", (shared["sh8"],)).fetchone()[0]
        assert h["row_count"] == rows >= 2990, (h, rows)
        assert h["citus"]["node"] == node, (h["citus"], node)
        assert h["citus"]["stat_tenants"]["query_count_in_this_period"] >= 3, h["citus"]
    finally:
        with citus.connect() as c:
            c.execute("SELECT tenancy.bulk_update('{sh8}', '{\"max_storage_bytes\": null}')")
            c.execute("SELECT tenancy.refresh_metrics()")
