"""TimescaleDB beside tenancy: both workers run, timescale_tables become
hypertables in each tenant schema with the template's chunk interval, health
reports their chunks, and a
pooled schema keeps its hypertables through the rename. Skipped, with the
reason shown, where TimescaleDB is not installed (it is not in Debian)."""

import pytest

from conftest import skip_without, connect, wait_for


@pytest.fixture
def tsdb(db):
    if not db.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone():
        skip_without("timescaledb", "timescaledb is not installed on this machine")
    if "timescaledb" not in db.execute("SHOW shared_preload_libraries").fetchone()[0]:
        skip_without("timescaledb", "timescaledb is installed but not in shared_preload_libraries")
    db.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    return db


def hypertables(db, schema):
    return db.execute(
        "SELECT d.hypertable_name::text, d.column_name::text, d.time_interval "
        "FROM timescaledb_information.dimensions d WHERE d.hypertable_schema = %s ORDER BY 1", (schema,)).fetchall()


def test_timeseries_tenant_gets_hypertables(tsdb):
    db = tsdb
    row = db.execute("SELECT slug, schema_name::text FROM tenancy.provision('ts1', NULL, 'timeseries')").fetchone()
    assert row == ("ts1", "tenant_ts1")
    hts = hypertables(db, "tenant_ts1")
    assert [(h[0], h[1], h[2].days) for h in hts] == [("market_data", "timestamp", 1), ("trades", "timestamp", 1)]
    db.execute("INSERT INTO tenant_ts1.portfolios (user_id) VALUES (gen_random_uuid())")
    db.execute("INSERT INTO tenant_ts1.trades (portfolio_id, symbol, side, quantity, price, timestamp) "
               "SELECT id, 'ACME', 'buy', 1, 10, now() - g * interval '1 day' FROM tenant_ts1.portfolios, generate_series(0, 2) g")
    chunks = db.execute("SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = 'tenant_ts1'").fetchone()[0]
    assert chunks == 3
    health = db.execute("SELECT tenancy.health('ts1')").fetchone()[0]
    assert health["score"] == 100, health
    assert [(h["table"], h["chunks"], h["chunk_interval"]) for h in health["hypertables"]] == [
        ("market_data", 0, "1 day"), ("trades", 3, "1 day")]
    chunk_bytes = db.execute(
        "SELECT sum(pg_total_relation_size(format('%I.%I', chunk_schema, chunk_name)::regclass)) "
        "FROM timescaledb_information.chunks WHERE hypertable_schema = 'tenant_ts1'").fetchone()[0]
    assert health["hypertables"][1]["chunk_bytes"] == chunk_bytes
    assert health["size_bytes"] >= chunk_bytes
    cluster = db.execute("SELECT tenancy.health()->'timescaledb'").fetchone()[0]
    assert cluster["tenant_hypertables"] == 2 and cluster["tenant_chunks"] == 3, cluster
    assert wait_for(lambda: db.execute("SELECT (tenancy.health()->'timescaledb'->>'scheduler_running')::bool").fetchone()[0],
                    what="TimescaleDB's scheduler in this database")


def test_both_workers_run(tsdb):
    types = {r[0] for r in tsdb.execute("SELECT backend_type FROM pg_stat_activity").fetchall()}
    assert "tenancy launcher" in types
    assert any("TimescaleDB" in t for t in types), types


def test_pooled_timeseries_schema_keeps_its_hypertables(tsdb):
    db = tsdb
    db.execute("SELECT tenancy.set_pool_size('timeseries', 1)")
    wait_for(lambda: db.execute("SELECT ready FROM tenancy.pool_status WHERE template = 'timeseries'").fetchone()[0] == 1,
             what="a pooled timeseries schema")
    db.execute("SELECT tenancy.provision('ts_pooled', NULL, 'timeseries')")
    assert db.execute("SELECT details->>'from_pool' FROM tenancy.audit_log WHERE tenant_slug = 'ts_pooled'").fetchone()[0] == "true"
    assert len(hypertables(db, "tenant_ts_pooled")) == 2
    db.execute("INSERT INTO tenant_ts_pooled.market_data (symbol, timestamp, close) VALUES ('ACME', now(), 1)")


def test_refresh_metrics_counts_chunks(tsdb):
    db = tsdb
    db.execute("SELECT tenancy.provision('ts_sized', NULL, 'timeseries')")
    db.execute("INSERT INTO tenant_ts_sized.market_data (symbol, timestamp, close) "
               "SELECT 'S' || (g % 50), now() - (g % 5) * interval '1 day' - g * interval '1 ms', g "
               "FROM generate_series(1, 20000) g")
    db.execute("ANALYZE tenant_ts_sized.market_data")
    chunk_bytes = db.execute(
        "SELECT sum(pg_total_relation_size(format('%I.%I', chunk_schema, chunk_name)::regclass)) "
        "FROM timescaledb_information.chunks WHERE hypertable_schema = 'tenant_ts_sized'").fetchone()[0]
    assert chunk_bytes > 1_000_000
    db.execute("SELECT tenancy.refresh_metrics()")
    total, rows = db.execute(
        "SELECT m.total_bytes, m.row_estimate FROM tenancy.tenant_metrics m JOIN tenancy.tenants t ON t.id = m.tenant_id "
        "WHERE t.slug = 'ts_sized' ORDER BY m.collected_at DESC LIMIT 1").fetchone()
    assert total >= chunk_bytes, (total, chunk_bytes)
    assert rows >= 19_000, rows


def test_timeseries_version_2_has_no_varchar_and_migrates_version_1(tsdb):
    db = tsdb
    fresh = db.execute("SELECT version, (spec->'tables')::text LIKE '%%varchar%%' FROM tenancy.templates "
                       "WHERE name = 'timeseries' ORDER BY version").fetchall()
    assert fresh == [(1, True), (2, False)]
    # a tenant made from version 1 on 0.3.0 moves to 2 after the update
    db.execute("DROP EXTENSION tenancy CASCADE")
    db.execute("DROP SCHEMA IF EXISTS tenancy_saved CASCADE")
    db.execute("CREATE EXTENSION tenancy VERSION '0.3.0'")
    # the library loaded is this release's, which ships version 2 already: a
    # 0.3.0 library did not, so version 1 was the newest there
    db.execute("DELETE FROM tenancy.templates WHERE name = 'timeseries' AND version = 2")
    db.execute("SELECT tenancy.provision('ts_v1', NULL, 'timeseries')")
    db.execute("ALTER EXTENSION tenancy UPDATE")
    assert db.execute("SELECT template_version FROM tenancy.tenants WHERE slug = 'ts_v1'").fetchone()[0] == 1
    db.execute("INSERT INTO tenant_ts_v1.market_data (symbol, timestamp, close) VALUES ('ACME', now(), 1)")
    batch = db.execute("SELECT tenancy.migrate('timeseries', 2)").fetchone()[0]
    assert db.execute("SELECT tenancy.wait_batch(%s, '60 s')", (batch,)).fetchone()[0] == "completed"
    types = db.execute("SELECT DISTINCT data_type FROM information_schema.columns WHERE table_schema = 'tenant_ts_v1' "
                       "AND column_name IN ('symbol', 'side', 'name')").fetchall()
    assert types == [("text",)]
    assert db.execute("SELECT tenancy.health('ts_v1')->'score'").fetchone()[0] == 100
    # and a new tenant warns of nothing
    notices = []
    db.add_notice_handler(lambda d: notices.append(d.message_primary))
    db.execute("SELECT tenancy.provision('ts_v2', NULL, 'timeseries')")
    assert not [n for n in notices if "varchar" in n or "character varying" in n], notices
