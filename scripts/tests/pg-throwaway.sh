# shellcheck shell=bash
# Throwaway PostgreSQL clusters for tests and benchmarks. Source it after scripts/lib.sh.
#
#   pg_ensure_installed          install the Debian postgresql package if missing
#   pg_start_throwaway           start a cluster in a temp dir on a free loopback port; sets
#                                PG_BIN_DIR PG_DIR PG_PORT PG_PASSWORD DATABASE_URL
#   pg_stop_throwaway            stop it and remove its directory
#
# Postgres refuses to run as root, so as root the cluster runs as the `postgres` user.

pg_bin_dir() {
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        if [[ -x "$dir/initdb" ]]; then
            PG_BIN_DIR=$dir
        fi
    done
    [[ -n "${PG_BIN_DIR:-}" ]] || return 1
    export PG_BIN_DIR
}

pg_ensure_installed() {
    if pg_bin_dir; then
        return 0
    fi
    apt_install postgresql
    pg_bin_dir
}

# Runs a command as the cluster's owner.
pg_as_owner() {
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pg_start_throwaway() {
    pg_ensure_installed
    PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/stackship-pg.XXXXXX")
    PG_PORT=$(free_port)
    PG_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    printf '%s\n' "$PG_PASSWORD" >"$PG_DIR/pwfile"
    if [[ $(id -u) -eq 0 ]]; then
        chown -R postgres: "$PG_DIR"
    fi
    log "starting a throwaway PostgreSQL on 127.0.0.1:$PG_PORT ($PG_DIR)"
    pg_as_owner "$PG_BIN_DIR/initdb" -D "$PG_DIR/data" -U postgres --pwfile="$PG_DIR/pwfile" \
        --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$PG_DIR/initdb.log" 2>&1 ||
        { cat "$PG_DIR/initdb.log" >&2; return 1; }
    pg_as_owner "$PG_BIN_DIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=200" \
        start >/dev/null || { cat "$PG_DIR/server.log" >&2; return 1; }
    DATABASE_URL="postgres://postgres:${PG_PASSWORD}@127.0.0.1:${PG_PORT}/postgres"
    export PG_DIR PG_PORT PG_PASSWORD DATABASE_URL
}

pg_stop_throwaway() {
    if [[ -n "${PG_DIR:-}" && -d "$PG_DIR" ]]; then
        log "stopping the throwaway PostgreSQL ($PG_DIR)"
        pg_as_owner "$PG_BIN_DIR/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
