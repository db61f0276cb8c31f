# Backups you know will restore, on the local prod stack: a backup records its row counts and is
# copied to a restic repository; the test restore passes, leaves nothing behind, and fails loudly
# on a corrupted dump; `db check` says so with its exit status; a wrong repository password fails
# with a clear error and changes nothing; the repository alone restores exactly the backed-up
# rows into an emptied database. (A directory of this machine stands in for the off-site store
# here; test-ssh-deploy.sh runs the schedule against an SFTP store.) Sourced by
# scripts/tests/test-stack.sh; defines test_ functions and adds their names to STACK_TESTS.
# shellcheck shell=bash

# backup_leftovers: helper services or containers a backup, test restore or restore left.
backup_leftovers() {
    docker service ls -q --filter label=stackship.ops-helper
    docker ps -aq --filter "name=${PROD_STACK}-ops-verify-"
    find "$PROD_DIR" -maxdepth 1 \( -name '.verify-*' -o -name '.restore-*' \)
}

# restic_prod REPO ARGS...: restic on the test's repository with prod's password file.
restic_prod() {
    local repo="$1"
    shift
    restic --repo "$repo" --password-file "${PROD_DIR}/secrets/backup-repository-password" --no-cache "$@"
}

# prometheus_backups: prod's Prometheus's backup series as `<name> <kind> <value>` lines, sorted.
prometheus_backups() {
    local c pid
    c="$(container_of "${PROD_STACK}_prometheus")"
    [[ -n "$c" ]] || { fail "no running ${PROD_STACK}_prometheus container"; return 1; }
    pid="$(docker inspect "$c" --format '{{.State.Pid}}')"
    prometheus_query "$pid" '{__name__=~"backup_last_success_timestamp_seconds|backup_last_run_ok",job="backend"}' \
        | python3 -c '
import json, sys
d = json.load(sys.stdin)
rows = {(r["metric"]["__name__"], r["metric"]["kind"], r["value"][1]) for r in d["data"]["result"]}
print("\n".join(" ".join(r) for r in sorted(rows)))'
}

# state_epoch KIND: when the last good run of KIND started, from prod's backup state (Unix seconds).
state_epoch() {
    python3 -c '
import datetime, json, sys
run = json.load(open(sys.argv[1]))[sys.argv[2]]["last_ok"]
print(int(datetime.datetime.fromisoformat(run["at"].replace("Z", "+00:00")).timestamp()))' \
        "${PROD_DIR}/backups/state.json" "$1"
}

# snapshot_count REPO: prod's snapshots in REPO.
snapshot_count() { restic_prod "$1" snapshots --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'; }

test_backups_are_copied_off_site_test_restored_and_restore_from_the_repository() {
    local work repo password out rc=0 file rows_before rows_after extra i before_count corrupt
    # What scripts/server/setup-server.sh installs on a manager.
    need_cmd restic restic
    work="$(mktemp -d)"
    repo="${work}/repository"
    out="${work}/out"
    password="${PROD_DIR}/secrets/backup-repository-password"
    # Whatever happens, prod is left without the test's repository and password.
    # shellcheck disable=SC2064
    trap "rm -rf '${work}' '${PROD_DIR}/backups' '${PROD_DIR}/.restic-cache' '${PROD_DIR}'/.verify-* '${PROD_DIR}'/.restore-*; rm -f '${password}'" EXIT
    # Scratch directories a killed earlier run left would count as this run's leftovers.
    rm -rf "${PROD_DIR}"/.verify-* "${PROD_DIR}"/.restore-*
    # As an operator sets it up: the repository's password in the environment's secrets/ (the
    # setting itself comes from the environment here, so prod's deploy.env stays as it is).
    (umask 077 && head -c 32 /dev/urandom | base64 > "$password")
    export BACKUP_REPOSITORY="$repo"
    rm -rf "${PROD_DIR}/backups" "${PROD_DIR}/.restic-cache"

    # --- a backup: the dump, its row counts, and a snapshot in the repository ---
    post_entry "off-site marker $(date -u +%s%N)" > /dev/null
    stackship_db backup prod > "$out" 2>&1 || fail "stackship db backup prod failed: $(tail -n 20 "$out")"
    file="$(tail -n 1 "$out")"
    [[ -s "$file" && "$file" == "${PROD_DIR}/backups/${PROD_STACK}-"*.dump ]] || fail "no dated dump: $(tail -n 5 "$out")"
    grep -q "initialised the restic repository ${repo}" "$out" || fail "the first backup did not say it made the repository"
    grep -q "off-site copy: snapshot [0-9a-f]\{8\} in ${repo}" "$out" || fail "no off-site snapshot named: $(tail -n 8 "$out")"
    rows_before="$(log_rows)"
    grep -qx "table|public.log_entries|$(wc -l <<<"$rows_before")" "${file%.dump}.counts" \
        || fail "the recorded row count of log_entries is not the table's ($(wc -l <<<"$rows_before")): $(cat "${file%.dump}.counts")"
    [[ "$(snapshot_count "$repo")" == 1 ]] || fail "the repository holds $(snapshot_count "$repo") snapshots, not 1"
    restic_prod "$repo" ls latest | grep -qxF "$file" || fail "the snapshot does not hold ${file}"
    stackship_db snapshots prod > "$out" 2>/dev/null || fail "stackship db snapshots prod failed"
    grep -qx "[0-9a-f]\{8\}  [0-9T:-]*Z  ${file}" "$out" || fail "db snapshots does not list the backup: $(cat "$out")"

    # --- the test restore: passes against the counts, leaves nothing ---
    stackship_db verify prod > "$out" 2>&1 || fail "stackship db verify prod failed: $(tail -n 20 "$out")"
    grep -q "test restore passed: .*, as recorded at backup time" "$out" || fail "the test restore did not compare with the counts: $(tail -n 5 "$out")"
    grep -q "repository check: passed" "$out" || fail "restic check did not run or failed: $(tail -n 5 "$out")"
    grep -q "fetching ${file} from snapshot [0-9a-f]\{8\} " "$out" || fail "the off-site copy was not fetched for its test restore: $(tail -n 8 "$out")"
    [[ -z "$(backup_leftovers)" ]] || fail "the test restore left: $(backup_leftovers | tr '\n' ' ')"
    stackship_db check prod > "$out" 2>&1 || fail "stackship db check prod fails after a good backup: $(cat "$out")"
    grep -q "^ok   test restore: passed" "$out" || fail "db check does not show the test restore: $(cat "$out")"
    grep -q "^ok   repository check: passed .*: restic check of ${repo}: no errors; snapshot [0-9a-f]\{8\} (.*) test-restored: $(basename "$file") restored: .*, as recorded$" "$out" \
        || fail "db check does not show the off-site copy's test restore: $(cat "$out")"
    grep -q "^ok   off-site copy: " "$out" || fail "db check does not show the off-site copy: $(cat "$out")"
    "$(stackship_bin)" --root "$(dirname "$PROD_DIR")" status prod > "$out" 2>&1 || fail "stackship status prod failed"
    grep -q "^  test restore: passed" "$out" || fail "stackship status does not show the backups: $(head -n 8 "$out")"

    # --- a corrupted dump: the test restore fails in pg_restore's words, db check exits 1 ---
    corrupt="${work}/${PROD_STACK}-20200101T000000Z.dump"
    cp "$file" "$corrupt"
    cp "${file%.dump}.counts" "${corrupt%.dump}.counts"
    python3 -c 'import sys; p = sys.argv[1]; b = bytearray(open(p, "rb").read()); n = len(b) // 2
for i in range(n, min(n + 64, len(b))): b[i] ^= 0x55
open(p, "wb").write(b)' "$corrupt"
    rc=0
    stackship_db verify prod "$corrupt" > "$out" 2>&1 || rc=$?
    ((rc != 0)) || fail "the test restore of a corrupted dump passed: $(tail -n 5 "$out")"
    grep -q "error: the test restore of the prod backup FAILED: ${corrupt}: .*pg_restore: error: " "$out" \
        || fail "the failure does not name the file and pg_restore's error: $(tail -n 3 "$out")"
    [[ -z "$(backup_leftovers)" ]] || fail "the failed test restore left: $(backup_leftovers | tr '\n' ' ')"
    rc=0
    stackship_db check prod > "$out" 2>&1 || rc=$?
    ((rc == 1)) || fail "stackship db check prod exited ${rc} after a failed test restore, expected 1: $(cat "$out")"
    grep -q "^FAIL test restore: FAILED" "$out" || fail "db check does not name the failed test restore: $(cat "$out")"
    stackship_db verify prod > "$out" 2>&1 || fail "the test restore of the good backup failed: $(tail -n 5 "$out")"

    # --- a wrong repository password: a clear error, and nothing made or changed ---
    before_count="$(find "${PROD_DIR}/backups" -name '*.dump' | wc -l)"
    cp "$password" "${work}/password"
    printf 'not-the-password\n' > "$password"
    rc=0
    stackship_db backup prod > "$out" 2>&1 || rc=$?
    ((rc == 2)) || fail "a backup with a wrong repository password exited ${rc}, expected 2: $(tail -n 5 "$out")"
    grep -q "the password in ${password} does not open the repository ${repo} (restic: Fatal: wrong password" "$out" \
        || fail "the error does not say the password is wrong: $(tail -n 3 "$out")"
    [[ "$(find "${PROD_DIR}/backups" -name '*.dump' | wc -l)" == "$before_count" ]] || fail "a backup with a wrong password made a dump"
    rc=0
    stackship_db restore prod --from-repository --yes > "$out" 2>&1 || rc=$?
    ((rc == 2)) || fail "a restore with a wrong repository password exited ${rc}, expected 2: $(tail -n 5 "$out")"
    grep -q "does not open the repository" "$out" || fail "the restore's error does not say the password is wrong: $(tail -n 3 "$out")"
    cp "${work}/password" "$password"
    [[ "$(snapshot_count "$repo")" == 1 ]] || fail "the repository changed: $(snapshot_count "$repo") snapshots"

    # --- Prometheus: the backend exports what the state says (the failed tries above too: the
    # refused backup by hand counts against the off-site copy, not the local dumps) ---
    local want got deadline=$((SECONDS + 60))
    want="$(printf '%s\n' \
        "backup_last_run_ok backup 1" "backup_last_run_ok offsite 0" \
        "backup_last_run_ok repository_check 1" "backup_last_run_ok test_restore 1" \
        "backup_last_success_timestamp_seconds backup $(state_epoch backup)" \
        "backup_last_success_timestamp_seconds offsite $(state_epoch offsite)" \
        "backup_last_success_timestamp_seconds repository_check $(state_epoch repository_check)" \
        "backup_last_success_timestamp_seconds test_restore $(state_epoch test_restore)" | sort)"
    until got="$(prometheus_backups 2>&1 | sed 's/\.[0-9]*$//')" && [[ "$got" == "$want" ]]; do
        ((SECONDS < deadline)) || fail "Prometheus has, after 60s: ${got//$'\n'/; } -- expected: ${want//$'\n'/; }"
        sleep 3
    done

    # --- the password is in its file only: not in the state, the records, any output ---
    local secret
    secret="$(cat "$password")"
    ! grep -rqF --exclude=password -- "$secret" "${PROD_DIR}/backups" "${PROD_DIR}/history" "$work" || fail "the repository password is in a state, history or output file"
    ! git -C "$(repo_root)" grep -qF -- "$secret" || fail "the repository password is in git"

    # --- the repository alone: no local backup, no cache, an emptied database ---
    extra=()
    for i in 1 2; do
        extra+=("$(post_entry "after the off-site backup ${i} $(date -u +%s%N)")")
    done
    rm -rf "${PROD_DIR}/backups" "${PROD_DIR}/.restic-cache"
    prod_psql "DROP SCHEMA public CASCADE; CREATE SCHEMA public" > /dev/null 2>&1 || fail "cannot empty the prod database"
    stackship_db restore prod --from-repository --yes > "$out" 2>&1 \
        || fail "stackship db restore prod --from-repository failed: $(tail -n 20 "$out")"
    grep -q "fetching ${file} from snapshot [0-9a-f]\{8\}" "$out" || fail "the restore does not name the snapshot: $(head -n 3 "$out")"
    rows_after="$(log_rows)"
    [[ "$rows_after" == "$rows_before" ]] \
        || fail "the rows restored from the repository differ from the backup: $(diff <(printf '%s\n' "$rows_before") <(printf '%s\n' "$rows_after") | head -n 10)"
    for i in "${extra[@]}"; do
        grep -q "^${i}|" <<<"$rows_after" && fail "row ${i}, written after the backup, survived the restore"
    done
    [[ -z "$(find "$PROD_DIR" -maxdepth 1 -name '.restore-*')" ]] || fail "the restore left its scratch directory"
    [[ -z "$(backup_leftovers)" ]] || fail "the restore left: $(backup_leftovers | tr '\n' ' ')"
    [[ -n "$(post_entry "after the restore from the repository $(date -u +%s%N)")" ]] || fail "POST /api/log failed after the restore"

    unset BACKUP_REPOSITORY
}

STACK_TESTS+=(backups_are_copied_off_site_test_restored_and_restore_from_the_repository)
