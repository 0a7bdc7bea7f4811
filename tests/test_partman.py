"""pg_partman in the same database: a table it maintains next to a tenant's
partitioned table that tenancy maintains, both background workers running,
neither touching the other's partitions."""

import pytest
from psycopg import sql

from conftest import connect, skip_without, wait_for

EVENTS = ('{"tables": ["CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz NOT NULL, '
          'kind text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)"], '
          '"partitioned_tables": [{"name": "events", "column": "at", "interval": "month", "premake": 2, '
          '"retention": "6 months"}]}')


def partitions(db, parent):
    return sorted(r[0] for r in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (parent,)).fetchall())


def newest(names):
    return max(n for n in names if not n.endswith("_default"))


# pg_partman versions whose own worker fails at every run on the PostgreSQL
# they are packaged with, tenancy or not: 5.2.4 in Debian trixie (17.12) logs
# 'cannot drop portal "<unnamed portal 1>" while it is being set up' at each
# CALL run_maintenance_proc(). There pg_cron runs its maintenance instead.
PARTMAN_BGW_BROKEN = {"5.2.4"}


@pytest.fixture
def partman_db(db, fresh_db):
    if db.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_partman'").fetchone()[0] == 0:
        skip_without("pg_partman", "pg_partman is not installed")
    if "pg_partman_bgw" not in db.execute("SHOW shared_preload_libraries").fetchone()[0]:
        skip_without("pg_partman", "pg_partman_bgw is not preloaded")
    db.execute("CREATE SCHEMA partman")
    db.execute("CREATE EXTENSION pg_partman SCHEMA partman")
    version = db.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()[0]
    with connect("postgres", autocommit=True) as pg:
        if version in PARTMAN_BGW_BROKEN:
            pg.execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
            job = pg.execute("SELECT cron.schedule_in_database('partman-test', '1 seconds', "
                             "'CALL partman.run_maintenance_proc()', %s)", (fresh_db,)).fetchone()[0]
        else:
            # its worker runs maintenance in this database, every second
            pg.execute("ALTER SYSTEM SET pg_partman_bgw.dbname = %s" % sql.quote(fresh_db))
            pg.execute("ALTER SYSTEM SET pg_partman_bgw.interval = 1")
            # pg_partman 5.5 runs as the role pg_partman_bgw.role names
            # (partman_maintainer unless set), which a test cluster lacks
            has_role = pg.execute("SELECT current_setting('pg_partman_bgw.role', true) IS NOT NULL").fetchone()[0]
            if has_role:
                pg.execute("ALTER SYSTEM SET pg_partman_bgw.role = 'postgres'")
            pg.execute("SELECT pg_reload_conf()")
        try:
            yield db
        finally:
            if version in PARTMAN_BGW_BROKEN:
                pg.execute("SELECT cron.unschedule(%s)", (job,))
            else:
                pg.execute("ALTER SYSTEM RESET pg_partman_bgw.dbname")
                pg.execute("ALTER SYSTEM RESET pg_partman_bgw.interval")
                if has_role:
                    pg.execute("ALTER SYSTEM RESET pg_partman_bgw.role")
                pg.execute("SELECT pg_reload_conf()")


def test_pg_partman_and_tenancy_keep_their_own_partitions(partman_db, fresh_db):
    db = partman_db
    major = int(db.execute("SELECT extversion FROM pg_extension WHERE extname = 'pg_partman'").fetchone()[0].split(".")[0])
    db.execute("CREATE TABLE public.measurements (id bigint GENERATED ALWAYS AS IDENTITY, "
               "at timestamptz NOT NULL, v int) PARTITION BY RANGE (at)")
    # pg_partman 4 (bookworm) names its kind of partitioning; 5 has only native
    kind = ", p_type => 'native'" if major < 5 else ""
    db.execute("SELECT partman.create_parent(p_parent_table => 'public.measurements', p_control => 'at', "
               f"p_interval => '1 day', p_premake => 3{kind})")
    # ahead of now, not only of the newest row (there are none)
    db.execute("UPDATE partman.part_config SET infinite_time_partitions = true")
    db.execute("SELECT tenancy.register_template('events', %s)", (EVENTS,))
    db.execute("SELECT tenancy.provision('pm1', NULL, 'events')")
    theirs, ours = partitions(db, "public.measurements"), partitions(db, "tenant_pm1.events")
    assert len(ours) == 3, ours  # this month and 2 ahead

    # each loses its newest partition; each worker makes its own again
    db.execute(f"DROP TABLE public.{newest(theirs)}")
    db.execute(f"DROP TABLE tenant_pm1.{newest(ours)}")
    before = db.execute("SELECT last_finished_at FROM tenancy.jobs WHERE name = 'maintenance'").fetchone()[0]
    db.execute("UPDATE tenancy.jobs SET next_run_at = now() WHERE name = 'maintenance'")
    wait_for(lambda: db.execute("SELECT last_finished_at IS DISTINCT FROM %s FROM tenancy.jobs "
                                "WHERE name = 'maintenance'", (before,)).fetchone()[0],
             what="tenancy's worker to run maintenance")
    # pg_partman may make one more ahead than create_parent did (4.7 and 5.2
    # do, on some days): its own set, as long as the dropped one is back
    wait_for(lambda: set(theirs) <= set(partitions(db, "public.measurements")), timeout=30,
             what="pg_partman's maintenance to make its partition again")
    theirs = partitions(db, "public.measurements")
    assert all(n.startswith("measurements_") for n in theirs), theirs
    assert partitions(db, "tenant_pm1.events") == ours

    # several passes of both later, neither has touched the other's table
    result, error = db.execute("SELECT last_result, last_error FROM tenancy.jobs WHERE name = 'maintenance'").fetchone()
    assert error is None and "measurements" not in str(result), (result, error)
    assert db.execute("SELECT array_agg(parent_table) FROM partman.part_config").fetchone()[0] == ["public.measurements"]
    for _ in range(3):
        mine = db.execute("SELECT tenancy.run_maintenance()").fetchone()[0]
        assert "measurements" not in str(mine), mine
        db.execute("SELECT partman.run_maintenance()")
    assert partitions(db, "public.measurements") == theirs
    assert partitions(db, "tenant_pm1.events") == ours
    db.execute("INSERT INTO public.measurements (at, v) VALUES (now(), 1)")
    db.execute("INSERT INTO tenant_pm1.events (at, kind) VALUES (now(), 'ok')")
    health = db.execute("SELECT tenancy.health('pm1')").fetchone()[0]
    assert health["score"] == 100, health
