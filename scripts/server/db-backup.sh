#!/usr/bin/env bash
# Backs up an environment's database: pg_dump in custom format (restore with db-restore.sh, or
# pg_restore) into a dated file on this manager, then keeps only the newest N backups. Runs on
# the Swarm manager; pg_dump runs in a one-off helper task on the stack's data network with
# Postgres's own image, so the database may be on any node and its port is never published.
set -Eeuo pipefail

# shellcheck source=scripts/server/ops-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ops-lib.sh"

usage() {
    cat <<'USAGE'
Usage: db-backup.sh ENV [--keep N] [--dir DIR]

Dumps the database of ENV (dev or prod) into DIR/stackship-ENV-YYYYMMDDTHHMMSSZ.dump
(pg_dump --format=custom) and prints the file's path on stdout.

  --keep N    backups of ENV kept in DIR, the newest first (default 7; older ones are removed)
  --dir DIR   where backups go (default: <env dir>/backups, e.g. /data/stackship/deploy/prod/backups)

A file is only given its final name once pg_dump succeeded and pg_restore can read it back.
USAGE
}

main() {
    local env="" keep=7 dir="" stamp file partial old
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --keep) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--keep needs a positive number"; keep="$2"; shift ;;
            --dir) [[ $# -ge 2 && -n "$2" ]] || die "--dir needs a directory"; dir="$2"; shift ;;
            -h | --help) usage; return 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) [[ -z "$env" ]] || die "give one environment (got '${env}' and '$1')"; env="$1" ;;
        esac
        shift
    done
    [[ -n "$env" ]] || { usage >&2; die "missing the environment (dev or prod)"; }
    ops_env "$env"
    dir="${dir:-${OPS_ENV_DIR}/backups}"
    mkdir -p "$dir" || die "cannot create the backup directory ${dir}"
    chmod 0700 "$dir"
    dir="$(cd "$dir" && pwd)"
    ops_db_helper_args
    stamp="$(date -u +%Y%m%dT%H%M%SZ)"
    file="${OPS_STACK}-${stamp}.dump"
    partial=".${file}.partial"
    ops_on_exit "rm -f '${dir}/${partial}'"
    log "dumping the ${env} database into ${dir}/${file}"
    # shellcheck disable=SC2016  # expanded inside the helper
    ops_helper backup "${OPS_DB_ARGS[@]}" --bind "${dir}:/backup" --timeout 3600 -- \
        bash -c 'set -eu
            PGPASSWORD="$(cat /run/secrets/db_password)"
            export PGPASSWORD
            pg_dump --format=custom --no-password --file="/backup/$1"
            pg_restore --list "/backup/$1" >/dev/null
            chmod 0600 "/backup/$1"' backup "$partial" \
        || die "pg_dump of the ${env} database failed (see above)"
    [[ -s "${dir}/${partial}" ]] || die "the helper reported success but ${dir}/${partial} is missing or empty"
    mv "${dir}/${partial}" "${dir}/${file}"
    log "backup written: ${dir}/${file} ($(du -h "${dir}/${file}" | cut -f1))"
    # The names sort by time: keep the newest N.
    while IFS= read -r old; do
        [[ -n "$old" ]] || continue
        rm -f "${dir}/${old}"
        log "removed old backup ${old}"
    done < <(find "$dir" -maxdepth 1 -type f -name "${OPS_STACK}-*.dump" -printf '%f\n' | sort -r | tail -n "+$((keep + 1))")
    printf '%s\n' "${dir}/${file}"
}

main "$@"
