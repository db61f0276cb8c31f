# Day-2 operations on the local prod stack: backup and restore, rollback to an earlier deploy,
# the database tunnel and Prometheus. Sourced by scripts/test-stack.sh (after scripts/lib.sh and
# scripts/tests/lib.sh); defines test_ functions and adds their names to STACK_TESTS.
# shellcheck shell=bash

# post_entry MESSAGE: writes a log entry through the prod proxy; prints its id.
post_entry() {
    local created
    created="$(curl_env prod -f -X POST -H 'Content-Type: application/json' \
        --data "{\"message\":\"$1\"}" https://localhost/api/log)" || { fail "POST /api/log failed"; return 1; }
    json id <<<"$created"
}

# log_rows: every row of prod's request log as id|message, in id order (a fingerprint).
log_rows() { prod_psql "SELECT id || '|' || message FROM log_entries ORDER BY id"; }

test_backup_restore_roundtrip() {
    local dir file rows_before rows_after kept id extra=() i out rc=0
    dir="$(mktemp -d)"
    id="$(post_entry "backup marker $(date -u +%s%N)")"
    [[ -n "$id" ]] || fail "no id for the marker entry"
    file="$("$(repo_root)/scripts/db-backup.sh" prod --dir "$dir" --keep 2)" || fail "db-backup.sh prod failed"
    [[ -s "$file" && "$file" == "$dir"/stackship-prod-*.dump ]] || fail "db-backup.sh printed '${file}', not a dated dump in ${dir}"
    [[ "$(stat -c %a "$file")" == 600 ]] || fail "the backup is readable by others (mode $(stat -c %a "$file"))"
    [[ -z "$(find "$dir" -name '.*.partial')" ]] || fail "a partial file was left in ${dir}"
    # Taken while the marker row existed: the dump holds it.
    pg_restore --list "$file" | grep -q 'TABLE DATA public log_entries' || fail "the dump has no data for log_entries"
    rows_before="$(log_rows)"
    grep -qx "${id}|backup marker .*" <<<"$rows_before" || fail "marker row ${id} is not in the database"
    for i in 1 2 3; do
        extra+=("$(post_entry "after the backup ${i} $(date -u +%s%N)")")
    done
    [[ "$(log_rows)" != "$rows_before" ]] || fail "writing 3 rows did not change the table"
    # Refusals: no --yes, no such file; neither may change anything.
    "$(repo_root)/scripts/db-restore.sh" prod "$file" > /dev/null 2>&1 && fail "db-restore.sh ran without --yes"
    "$(repo_root)/scripts/db-restore.sh" prod "${dir}/no-such.dump" --yes > /dev/null 2>&1 && fail "db-restore.sh accepted a missing file"
    rows_after="$(log_rows)"
    grep -q "after the backup 3" <<<"$rows_after" || fail "a refused restore changed the data"
    out="$(mktemp)"
    "$(repo_root)/scripts/db-restore.sh" prod "$file" --yes > "$out" 2>&1 || rc=$?
    ((rc == 0)) || fail "db-restore.sh --yes failed: $(tail -n 20 "$out")"
    rows_after="$(log_rows)"
    [[ "$rows_after" == "$rows_before" ]] \
        || fail "after the restore the rows differ from the backup: $(diff <(printf '%s\n' "$rows_before") <(printf '%s\n' "$rows_after") | head -n 10)"
    for i in "${extra[@]}"; do
        grep -q "^${i}|" <<<"$rows_after" && fail "row ${i}, written after the backup, survived the restore"
    done
    # The service keeps working on the restored data.
    [[ -n "$(post_entry "after the restore $(date -u +%s%N)")" ]] || fail "POST /api/log failed after the restore"
    # Retention: with --keep 1 only the newest backup stays.
    sleep 1
    kept="$("$(repo_root)/scripts/db-backup.sh" prod --dir "$dir" --keep 1)" || fail "second db-backup.sh failed"
    [[ "$(find "$dir" -name 'stackship-prod-*.dump' | wc -l)" == 1 && -f "$kept" && ! -e "$file" ]] \
        || fail "--keep 1 left: $(ls "$dir")"
    [[ -z "$(docker service ls -q --filter label=stackship.ops-helper)" ]] || fail "a helper service was left behind"
    rm -rf "$dir" "$out"
}

STACK_TESTS+=(backup_restore_roundtrip)
