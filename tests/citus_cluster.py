"""A Citus cluster on this machine: a coordinator and its workers, each a
PostgreSQL cluster of its own in a temporary directory, with Citus and tenancy
preloaded, database `app` made and `CREATE EXTENSION citus` run on each, and
the workers added to the coordinator. For tests/test_citus.py and
bench/citus.py; Citus itself is built by hand (README, "Scale-out on Citus")."""

import os
import shutil
import subprocess
import tempfile

import psycopg

DB = "app"


def installed(pg_bin):
    libdir = subprocess.run([f"{pg_bin}/pg_config", "--pkglibdir"], capture_output=True, text=True).stdout.strip()
    return os.path.exists(os.path.join(libdir, "citus.so"))


def _as_postgres(argv, check=True):
    prefix = ["sudo", "-u", "postgres"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *argv], check=check, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Cluster(pg_bin, workers=2): node 0 is the coordinator. stop() removes it."""

    def __init__(self, pg_bin, workers=2, conf=""):
        self.pg_bin = pg_bin
        self.base = tempfile.mkdtemp(prefix="tenancy-citus-")
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres", "postgres")
        self.ports = [_free_port() for _ in range(workers + 1)]
        self.dirs = [os.path.join(self.base, f"node{i}") for i in range(workers + 1)]
        self.started = []
        try:
            for d, port in zip(self.dirs, self.ports):
                _as_postgres([f"{pg_bin}/initdb", "-D", d, "-A", "trust", "-U", "postgres"])
                with open(os.path.join(d, "postgresql.conf"), "a") as f:
                    f.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.base}'\n"
                            "shared_preload_libraries = 'citus,tenancy'\nmax_worker_processes = 32\n"
                            "citus.enable_schema_based_sharding = on\n" + conf)
                _as_postgres([f"{pg_bin}/pg_ctl", "-D", d, "-l", os.path.join(d, "log"), "-w", "start"])
                self.started.append(d)
            for node in range(len(self.ports)):
                with self.connect(node, dbname="postgres") as c:
                    c.execute(f"CREATE DATABASE {DB}")
                with self.connect(node) as c:
                    c.execute("CREATE EXTENSION citus")
            with self.connect() as c:
                c.execute("SELECT citus_set_coordinator_host('127.0.0.1', %s)", (self.ports[0],))
                for p in self.ports[1:]:
                    c.execute("SELECT citus_add_node('127.0.0.1', %s)", (p,))
        except BaseException:
            self.stop()
            raise

    def connect(self, node=0, user="postgres", dbname=DB, **kw):
        return psycopg.connect(host=self.base, port=self.ports[node], user=user, dbname=dbname, autocommit=True, **kw)

    def stop(self):
        for d in self.started:
            _as_postgres([f"{self.pg_bin}/pg_ctl", "-D", d, "-m", "immediate", "stop"], check=False)
        shutil.rmtree(self.base, ignore_errors=True)
