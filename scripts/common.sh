# Shared by scripts/demo, scripts/test and bench/: install what is missing,
# build and install the extension, run a PostgreSQL cluster of our own.
# Sourced, not run. Everything here is idempotent: it skips what is done.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PGRX_VERSION="0.18.0"
PG_MAJOR="${PG_MAJOR:-15}"
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_CONFIG="${PG_BIN}/pg_config"
PGXS_TEST="/usr/lib/postgresql/${PG_MAJOR}/lib/pgxs/src/test"
export PATH="$HOME/.cargo/bin:$PATH"
# Builds for the machine's own Debian go to target/; inside a root of
# another suite (scripts/in-root) to target/<suite>/, since what is built
# there links against that suite's libraries.
SUITE="${TENANCY_IN_ROOT:-}"
if [ -n "$SUITE" ]; then
    BUILD="$ROOT/target/$SUITE"
    export CARGO_TARGET_DIR="$BUILD"
    # tools built there stay there (~/.cargo/bin is the machine's, shared)
    export CARGO_INSTALL_ROOT=/usr/local
else
    BUILD="$ROOT/target"
fi

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: the server, its headers, clang for bindgen, sudo to run
# the server as postgres, pg_cron and pg_partman to test beside it (and
# TimescaleDB where the suite has it: not bookworm, see scripts/in-root),
# and what the tests run in front of and beside it: a transaction pooler
# (tests/test_pooler.py) and the Prometheus exporter (tests/test_exporter.py).
# Their own services are not wanted: on a machine run by systemd the
# packages enable and start them, so they are stopped and disabled again.
TEST_DAEMONS=(pgbouncer prometheus-postgres-exporter)
ensure_packages() {
    local wanted=(postgresql-${PG_MAJOR} postgresql-server-dev-${PG_MAJOR} libclang-dev clang sudo
                  postgresql-${PG_MAJOR}-cron postgresql-${PG_MAJOR}-partman python3-venv
                  "${TEST_DAEMONS[@]}")
    local missing=()
    for p in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        as_root apt-get update -q
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q "${missing[@]}"
        if [ -d /run/systemd/system ]; then
            for p in "${TEST_DAEMONS[@]}"; do
                [[ " ${missing[*]} " == *" $p "* ]] && as_root systemctl disable --now -q "$p" || true
            done
        fi
    fi
}

ensure_cargo_pgrx() {
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        log "installing cargo-pgrx $PGRX_VERSION (a few minutes, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    if ! grep -q "pg${PG_MAJOR}" "$HOME/.pgrx/config.toml" 2>/dev/null; then
        cargo pgrx init "--pg${PG_MAJOR}" "$PG_CONFIG"
    fi
}

ensure_tools() {
    ensure_packages
    ensure_cargo_pgrx
}

# Builds the extension and installs it into Debian's PostgreSQL.
install_extension() {
    log "building and installing tenancy into PostgreSQL ${PG_MAJOR}"
    (cd "$ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" \
        --features "pg${PG_MAJOR}" --no-default-features >/dev/null)
    # Released versions' install scripts, so that upgrades from them can be
    # tested (cargo pgrx install copies only the current one and the
    # tenancy--A--B.sql upgrade scripts).
    as_root cp "$ROOT"/sql/archive/tenancy--*.sql "$("$PG_CONFIG" --sharedir)/extension/"
}

# A Python with psycopg for the tests and benchmarks that drive the server
# from a client library.
ensure_python() {
    local venv="$BUILD/venv"
    if [ ! -x "$venv/bin/pytest" ] || ! "$venv/bin/python" -c 'import psycopg' 2>/dev/null; then
        log "creating $venv with pytest and psycopg"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "pytest==8.3.4" "psycopg[binary]==3.2.13"
    fi
    PYTHON="$venv/bin/python"
}

# cluster_start DIR PORT [extra postgresql.conf lines...]
# A cluster of our own, run as postgres, socket in DIR, listening on PORT.
cluster_start() {
    local dir="$1" port="$2"; shift 2
    if [ ! -f "$dir/PG_VERSION" ]; then
        as_root mkdir -p "$dir"
        as_root chown postgres:postgres "$dir"
        as_root chmod 700 "$dir"
        sudo -u postgres "$PG_BIN/initdb" -D "$dir" --locale=C.UTF-8 -A trust -U postgres >/dev/null
        {
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$dir'"
            echo "shared_preload_libraries = 'pg_cron,tenancy'"
            echo "cron.database_name = 'postgres'"
            echo "max_worker_processes = 32"
            echo "log_min_messages = warning"
            echo "log_line_prefix = '%m [%p] %b '"
            for line in "$@"; do echo "$line"; done
        } | sudo -u postgres tee -a "$dir/postgresql.conf" >/dev/null
    fi
    if ! sudo -u postgres "$PG_BIN/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
        sudo -u postgres "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/log" -w start >/dev/null
    fi
}

cluster_stop() {
    local dir="$1"
    if [ -f "$dir/postmaster.pid" ]; then
        sudo -u postgres "$PG_BIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# psql as the postgres superuser against the cluster in DIR on PORT.
cluster_psql() {
    local dir="$1" port="$2"; shift 2
    "$PG_BIN/psql" -X -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres "$@"
}
