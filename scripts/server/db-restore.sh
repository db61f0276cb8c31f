#!/usr/bin/env bash
# Restores an environment's database from a db-backup.sh file (pg_dump custom format): every
# table, sequence and the migration history become what the backup holds, in one transaction
# (on any error nothing changes). Runs on the Swarm manager, under the environment's deploy lock
# (no deploy runs meanwhile); pg_restore runs in a one-off helper task on the stack's data network
# with Postgres's own image. The services keep running: requests that write while the restore
# commits can fail, and anything written after the backup is gone.
set -Eeuo pipefail

# shellcheck source=scripts/server/ops-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/ops-lib.sh"

usage() {
    cat <<'USAGE'
Usage: db-restore.sh ENV FILE --yes

Replaces the data of ENV's database (dev or prod) with the backup FILE (from db-backup.sh, or
any pg_dump --format=custom of that database). This deletes whatever was written since the
backup: it only runs with --yes.

  --yes   really replace the data
USAGE
}

main() {
    local env="" file="" yes="" dir base
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --yes) yes=1 ;;
            -h | --help) usage; return 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *)
                if [[ -z "$env" ]]; then env="$1"
                elif [[ -z "$file" ]]; then file="$1"
                else die "unexpected argument '$1'"
                fi
                ;;
        esac
        shift
    done
    [[ -n "$env" ]] || { usage >&2; die "missing the environment (dev or prod)"; }
    [[ -n "$file" ]] || { usage >&2; die "missing the backup FILE to restore"; }
    [[ -f "$file" && -r "$file" ]] || die "backup file '${file}' does not exist or cannot be read"
    [[ -s "$file" ]] || die "backup file '${file}' is empty"
    ops_env "$env"
    [[ -n "$yes" ]] || die "this replaces ALL data of ${OPS_STACK}'s database with ${file}; run again with --yes to do it"
    dir="$(cd "$(dirname "$file")" && pwd)"
    base="$(basename "$file")"
    ops_lock
    ops_db_helper_args
    log "restoring ${dir}/${base} into the ${env} database"
    # shellcheck disable=SC2016  # expanded inside the helper
    ops_helper restore "${OPS_DB_ARGS[@]}" --bind "${dir}:/restore:ro" --timeout 3600 -- \
        bash -c 'set -eu
            PGPASSWORD="$(cat /run/secrets/db_password)"
            export PGPASSWORD
            pg_restore --list "/restore/$1" >/dev/null
            pg_restore --no-password --clean --if-exists --no-owner --single-transaction \
                --exit-on-error --dbname="$PGDATABASE" "/restore/$1"' restore "$base" \
        || die "restore of ${file} into the ${env} database failed; the database is unchanged (see above)"
    log "restored ${file} into the ${env} database"
}

main "$@"
