"""Extension upgrades: every released version (its install script is kept in
sql/archive/) updated with ALTER EXTENSION must equal a fresh install of the
current version, object for object, and keep its tenants usable.

This is the test that fails when the SQL surface changes without an upgrade
script: the fresh install has the change, the upgraded one does not.
"""

import json
import pathlib
import re
import uuid

import pytest

from conftest import connect, wait_batch, wait_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
RELEASED = sorted(p.name.split("--")[1][: -len(".sql")] for p in (ROOT / "sql" / "archive").glob("tenancy--*.sql"))

# One row per extension member: what it is, and everything that defines it.
MEMBERS = r"""
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'tenancy'),
members AS (
    SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
    WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
)
SELECT pg_describe_object(m.classid, m.objid, m.objsubid) AS object,
  CASE m.classid
  WHEN 'pg_proc'::regclass THEN (
      SELECT concat_ws(' | ', pg_get_functiondef(p.oid), p.proacl::text, obj_description(p.oid, 'pg_proc'))
      FROM pg_proc p WHERE p.oid = m.objid)
  WHEN 'pg_class'::regclass THEN (
      SELECT concat_ws(' | ', c.relkind, c.relpersistence, c.relrowsecurity, c.relforcerowsecurity,
          c.reloptions::text, c.relacl::text, obj_description(c.oid, 'pg_class'),
          pg_get_partkeydef(c.oid),
          CASE WHEN c.relispartition THEN pg_get_expr(c.relpartbound, c.oid) END,
          CASE WHEN c.relkind = 'v' THEN pg_get_viewdef(c.oid) END,
          (SELECT string_agg(concat_ws(' ', a.attname, format_type(a.atttypid, a.atttypmod),
                  a.attnotnull, a.attidentity, a.attgenerated, pg_get_expr(ad.adbin, ad.adrelid),
                  a.attacl::text), ', ' ORDER BY a.attnum)
             FROM pg_attribute a LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
             WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
          (SELECT string_agg(conname || ' ' || pg_get_constraintdef(oid), ', ' ORDER BY conname)
             FROM pg_constraint WHERE conrelid = c.oid),
          (SELECT string_agg(pg_get_indexdef(indexrelid), ', ' ORDER BY 1)
             FROM pg_index WHERE indrelid = c.oid),
          (SELECT string_agg(pg_get_triggerdef(oid), ', ' ORDER BY 1)
             FROM pg_trigger WHERE tgrelid = c.oid AND NOT tgisinternal),
          (SELECT string_agg(concat_ws(' ', polname, polcmd, polpermissive, polroles::regrole[]::text,
                  pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)), ', ' ORDER BY polname)
             FROM pg_policy WHERE polrelid = c.oid),
          (SELECT concat_ws(' ', seqtypid::regtype, seqstart, seqincrement, seqmax, seqmin, seqcache, seqcycle)
             FROM pg_sequence WHERE seqrelid = c.oid))
      FROM pg_class c WHERE c.oid = m.objid)
  WHEN 'pg_type'::regclass THEN (
      SELECT concat_ws(' | ', t.typtype, t.typacl::text,
          (SELECT string_agg(enumlabel, ',' ORDER BY enumsortorder) FROM pg_enum WHERE enumtypid = t.oid),
          (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod), ', ' ORDER BY a.attnum)
             FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped))
      FROM pg_type t WHERE t.oid = m.objid)
  WHEN 'pg_event_trigger'::regclass THEN (
      SELECT concat_ws(' | ', evtevent, evtfoid::regproc, evtenabled, evttags::text)
      FROM pg_event_trigger WHERE oid = m.objid)
  END AS definition
FROM members m
ORDER BY 1
"""

# What the extension itself holds beyond its objects: which tables pg_dump
# keeps, the jobs it schedules, the templates it ships, and its GUC defaults.
STATE = r"""
SELECT json_build_object(
  'config', (SELECT json_agg(json_build_array(c::regclass::text, cond) ORDER BY c::regclass::text)
             FROM pg_extension, unnest(extconfig, extcondition) AS u(c, cond) WHERE extname = 'tenancy'),
  'jobs', (SELECT json_agg(json_build_array(name, interval_text) ORDER BY name)
           FROM (SELECT name, run_every::text AS interval_text FROM tenancy.jobs) j),
  'shipped', (SELECT json_agg(json_build_array(name, version, spec) ORDER BY name, version)
              FROM tenancy.templates WHERE shipped),
  'schema_acl', (SELECT nspacl::text FROM pg_namespace WHERE nspname = 'tenancy'))
"""


def without_db_oid(text, oid):
    """The extension's roles carry the OID of their database (tenancy_admin_<oid>,
    t<oid>_<slug>), which differs between two databases: <db> in its place."""
    if text is None:
        return None
    text = re.sub(rf"_{oid}(?![0-9])", "_<db>", text)
    return re.sub(rf"(?<![0-9A-Za-z_])t{oid}_", "t<db>_", text)


def fingerprint(dbname):
    with connect(dbname, autocommit=True) as c:
        oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        members = {without_db_oid(k, oid): without_db_oid(v, oid) for k, v in c.execute(MEMBERS).fetchall()}
        state = json.loads(without_db_oid(json.dumps(c.execute(STATE).fetchone()[0]), oid))
    return members, state


def new_db(admin):
    name = "t_" + uuid.uuid4().hex[:12]
    admin.execute(f'CREATE DATABASE "{name}"')
    return name


# the cluster-wide roles of releases before 0.3.0, which their install scripts make
LEGACY_ROLES = ("tenancy_admin", "tenancy_all_tenants")


@pytest.fixture
def admin():
    with connect("postgres", autocommit=True) as a:
        made = []
        had = {r for (r,) in a.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(LEGACY_ROLES),))}
        yield a, made
        for name in made:
            a.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        # an old release's roles that only this test made go with its databases
        # (a BYPASSRLS role left behind is what rls_audit() reports elsewhere)
        for role in LEGACY_ROLES:
            if role not in had:
                a.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_releases_are_archived():
    assert RELEASED, "no released install script in sql/archive/"
    current = next(
        line.split('"')[1] for line in (ROOT / "Cargo.toml").read_text().splitlines() if line.startswith("version")
    )
    for version in RELEASED:
        if version != current:
            assert any((ROOT / "sql").glob(f"tenancy--{version}--*.sql")), f"no upgrade script from {version}"


@pytest.mark.parametrize("version", RELEASED)
def test_upgrade_equals_fresh_install(admin, version):
    a, made = admin
    upgraded, fresh = new_db(a), new_db(a)
    made += [upgraded, fresh]

    with connect(upgraded, autocommit=True) as c:
        c.execute(f"CREATE EXTENSION tenancy VERSION '{version}'")
        # a life lived on the old version: schema and shared tenants, a batch, data
        c.execute("SELECT tenancy.provision('old_schema', 'Old Schema', 'default')")
        c.execute("""SELECT tenancy.provision('old_shared', 'Old Shared', 'default', '{"isolation": "shared"}')""")
        batch = c.execute(
            "SELECT tenancy.provision_batch(%s)", (json.dumps([{"slug": f"old_batch_{i}"} for i in range(3)]),)
        ).fetchone()[0]
        assert wait_batch(c, batch) == "completed"
        c.execute("SELECT tenancy.set_tenant('old_schema', false)")
        c.execute("INSERT INTO users (email, display_name) VALUES ('a@old.example', 'A')")
        c.execute("RESET ALL")
        # the new library on the old catalog: health works and says what to do
        h = c.execute("SELECT tenancy.health()").fetchone()[0]
        assert any("ALTER EXTENSION tenancy UPDATE" in p for p in h["problems"]), h
        c.execute("ALTER EXTENSION tenancy UPDATE")
        assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'tenancy'").fetchone()[0] != version

    with connect(fresh, autocommit=True) as c:
        c.execute("CREATE EXTENSION tenancy")

    got, want = fingerprint(upgraded), fingerprint(fresh)
    missing = sorted(set(want[0]) - set(got[0]))
    extra = sorted(set(got[0]) - set(want[0]))
    differ = sorted(k for k in set(got[0]) & set(want[0]) if got[0][k] != want[0][k])
    assert (missing, extra) == ([], []), f"objects missing after upgrade: {missing}; left over: {extra}"
    assert differ == [], "defined differently after upgrade:\n" + "\n".join(
        f"{k}\n  upgraded: {got[0][k]}\n  fresh:    {want[0][k]}" for k in differ
    )
    assert got[1] == want[1]

    # the old tenants, batch and data are intact and the new version serves them
    with connect(upgraded, autocommit=True) as c:
        rows = c.execute("SELECT slug, status::text, isolation FROM tenancy.tenants ORDER BY slug").fetchall()
        assert rows == [
            ("old_batch_0", "active", "schema"),
            ("old_batch_1", "active", "schema"),
            ("old_batch_2", "active", "schema"),
            ("old_schema", "active", "schema"),
            ("old_shared", "active", "shared"),
        ]
        assert c.execute("SELECT tenancy.batch_status(%s)->>'succeeded'", (batch,)).fetchone()[0] == "3"
        c.execute("SELECT tenancy.set_tenant('old_schema', false)")
        assert c.execute("SELECT email FROM users").fetchall() == [("a@old.example",)]
        c.execute("RESET ALL")
        c.execute("SELECT tenancy.provision('new_after_upgrade', 'New', 'default')")
        batch = c.execute("SELECT tenancy.provision_batch(%s)", (json.dumps([{"slug": "new_batch_1"}]),)).fetchone()[0]
        assert wait_batch(c, batch) == "completed"
        h = c.execute("SELECT tenancy.health()").fetchone()[0]
        assert not any("ALTER EXTENSION" in p for p in h["problems"]), h
        assert h["version"]["extension"] == h["version"]["library"]


@pytest.mark.parametrize("version", RELEASED)
def test_update_while_the_worker_serves_the_database(admin, version):
    """What a DBA does: ALTER EXTENSION UPDATE on a live server, the worker
    busy in the database (its first pass: metrics, maintenance, a batch).
    Before the update took the worker's fence first, 2 to 3 of 8 such updates
    failed with 'deadlock detected'."""
    a, made = admin
    for _ in range(4):
        name = new_db(a)
        made.append(name)
        with connect(name, autocommit=True) as c:
            c.execute(f"CREATE EXTENSION tenancy VERSION '{version}'")
            c.execute("SELECT tenancy.provision('live', 'Live', 'default')")
            c.execute("SELECT tenancy.provision_batch(%s)", (json.dumps([{"slug": f"live_{i}"} for i in range(4)]),))
            c.execute("ALTER EXTENSION tenancy UPDATE")
            assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'tenancy'").fetchone()[0] != version
            # and the worker goes on serving it: the batch ends, health is clean
            wait_for(
                lambda: c.execute("SELECT count(*) FROM tenancy.tenants WHERE slug LIKE 'live_%'").fetchone()[0] == 4,
                what="the batch queued before the update",
            )
            h = c.execute("SELECT tenancy.health()").fetchone()[0]
            assert not any("ALTER EXTENSION" in p for p in h["problems"]), h
