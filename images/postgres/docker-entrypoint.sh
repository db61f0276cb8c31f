#!/usr/bin/env bash
# Entrypoint of the Postgres stand-in image: the subset of the official image's entrypoint the
# stack uses. Started as root it prepares PGDATA and drops to the postgres user; started as the
# postgres user (`user: "999:999"`, read-only root filesystem) it does what it may and expects
# PGDATA owned by it. On first start it runs initdb and creates POSTGRES_DB; then it execs
# postgres so signals reach the server directly (SIGINT = fast shutdown).
# /docker-entrypoint-initdb.d scripts are not supported.
set -Eeuo pipefail

die() { printf 'postgres-entrypoint: ERROR: %s\n' "$*" >&2; exit 1; }
log() { printf 'postgres-entrypoint: %s\n' "$*" >&2; }

# file_env VAR [DEFAULT]: VAR from $VAR or from the file named by $VAR_FILE, never both.
file_env() {
    local var="$1" file_var="${1}_FILE" def="${2:-}" val
    if [[ -n "${!var:-}" && -n "${!file_var:-}" ]]; then
        die "both ${var} and ${file_var} are set (they are exclusive)"
    fi
    val="$def"
    if [[ -n "${!var:-}" ]]; then
        val="${!var}"
    elif [[ -n "${!file_var:-}" ]]; then
        [[ -r "${!file_var}" ]] || die "${file_var}=${!file_var} is not a readable file"
        val="$(< "${!file_var}")"
    fi
    export "$var"="$val"
    unset "$file_var"
}

# create_db_directories: as the official image: PGDATA and the socket directory exist with
# the modes Postgres wants; failures are ignored when not root (a tmpfs or a data directory
# prepared by someone else), Postgres itself then says what is wrong.
create_db_directories() {
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA" 2>/dev/null || :
    mkdir -p /var/run/postgresql 2>/dev/null || :
    chmod 3775 /var/run/postgresql 2>/dev/null || :
    if [[ "$(id -u)" == 0 ]]; then
        find "$PGDATA" /var/run/postgresql \! -user postgres -exec chown postgres:postgres '{}' +
    fi
}

init_cluster() {
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    [[ -n "$POSTGRES_PASSWORD" ]] || die "POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE is required"

    log "initialising a new cluster in ${PGDATA}"
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >&2
    printf '\nhost all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"

    # A temporary server on the socket only, so nobody connects before the database exists.
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >&2
    if [[ "$POSTGRES_DB" != postgres ]]; then
        psql -v ON_ERROR_STOP=1 --no-password --username "$POSTGRES_USER" --dbname postgres \
            --set db="$POSTGRES_DB" >&2 <<<'CREATE DATABASE :"db";'
    fi
    pg_ctl -D "$PGDATA" -m fast -w stop >&2
    log "initialisation done"
}

main() {
    if [[ "${1:-}" == -* ]]; then
        set -- postgres "$@"
    fi
    if [[ "${1:-}" == postgres ]]; then
        create_db_directories
    fi
    if [[ "${1:-}" == postgres && "$(id -u)" == 0 ]]; then
        exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
    fi
    if [[ "${1:-}" == postgres ]]; then
        if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
            init_cluster
        fi
        unset POSTGRES_PASSWORD
    fi
    exec "$@"
}

main "$@"
