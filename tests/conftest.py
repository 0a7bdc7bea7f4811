"""Fixtures for tests that drive a running cluster from outside, as an
application would: through a client library (psycopg), over a socket.

scripts/test starts the cluster and exports TENANCY_TEST_HOST/PORT.
"""

import os
import uuid

import psycopg
import pytest

HOST = os.environ.get("TENANCY_TEST_HOST", "/var/tmp/tenancy-test")
PORT = int(os.environ.get("TENANCY_TEST_PORT", "5498"))


def connect(dbname, **kw):
    return psycopg.connect(host=HOST, port=PORT, user="postgres", dbname=dbname, **kw)


@pytest.fixture
def fresh_db():
    """A new database with the extension created; dropped afterwards."""
    name = "t_" + uuid.uuid4().hex[:12]
    with connect("postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with connect(name, autocommit=True) as c:
        c.execute("CREATE EXTENSION tenancy")
    yield name
    with connect("postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def db(fresh_db):
    with connect(fresh_db, autocommit=True) as c:
        yield c
