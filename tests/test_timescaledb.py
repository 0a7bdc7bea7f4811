"""TimescaleDB beside tenancy: both workers run, timescale_tables become
hypertables in each tenant schema with the template's chunk interval, health
reports their chunks, and a
pooled schema keeps its hypertables through the rename. Skipped, with the
reason shown, where TimescaleDB is not installed (it is not in Debian)."""

import pytest

from conftest import connect, wait_for


@pytest.fixture
def tsdb(db):
    if not db.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'").fetchone():
        pytest.skip("timescaledb is not installed on this machine")
    if "timescaledb" not in db.execute("SHOW shared_preload_libraries").fetchone()[0]:
        pytest.skip("timescaledb is installed but not in shared_preload_libraries")
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
