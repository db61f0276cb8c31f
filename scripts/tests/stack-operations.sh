# Day-2 operations on the local prod stack: backup and restore (also under a write load), rollback
# to an earlier deploy, the database tunnel and console, and Prometheus. Sourced by
# scripts/tests/test-stack.sh (after scripts/lib.sh and scripts/tests/lib.sh); defines test_
# functions and adds their names to STACK_TESTS.
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

# stackship_bin: the checkout's build of stackship, the binary the copy step ships into each
# release (scripts/tests/test-stack.sh builds it through scripts/up.sh).
stackship_bin() { printf '%s\n' "$(tools_dir)/stackship"; }

# stackship_db ARGS...: `stackship db ARGS` on the local environments, as an operator runs it on the
# manager.
stackship_db() { "$(stackship_bin)" --root "$(dirname "$PROD_DIR")" db "$@"; }

test_backup_restore_roundtrip() {
    local dir file rows_before rows_after kept id extra=() i out rc=0
    dir="$(mktemp -d)"
    id="$(post_entry "backup marker $(date -u +%s%N)")"
    [[ -n "$id" ]] || fail "no id for the marker entry"
    file="$(stackship_db backup prod --dir "$dir" --keep 2)" || fail "stackship db backup prod failed"
    [[ -s "$file" && "$file" == "$dir"/stackship-prod-*.dump ]] || fail "stackship db backup printed '${file}', not a dated dump in ${dir}"
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
    # Refusals: no --yes, no such file; neither may change anything (exit 2: nothing changed).
    stackship_db restore prod "$file" > /dev/null 2>&1 || rc=$?
    ((rc == 2)) || fail "stackship db restore without --yes exited ${rc}, expected 2"
    rc=0
    stackship_db restore prod "${dir}/no-such.dump" --yes > /dev/null 2>&1 || rc=$?
    ((rc == 2)) || fail "stackship db restore of a missing file exited ${rc}, expected 2"
    rc=0
    rows_after="$(log_rows)"
    grep -q "after the backup 3" <<<"$rows_after" || fail "a refused restore changed the data"
    out="$(mktemp)"
    stackship_db restore prod "$file" --yes > "$out" 2>&1 || rc=$?
    ((rc == 0)) || fail "stackship db restore --yes failed: $(tail -n 20 "$out")"
    grep -q "writes were refused from .* until " "$out" || fail "the restore does not name its read-only window: $(tail -n 5 "$out")"
    rows_after="$(log_rows)"
    [[ "$rows_after" == "$rows_before" ]] \
        || fail "after the restore the rows differ from the backup: $(diff <(printf '%s\n' "$rows_before") <(printf '%s\n' "$rows_after") | head -n 10)"
    for i in "${extra[@]}"; do
        grep -q "^${i}|" <<<"$rows_after" && fail "row ${i}, written after the backup, survived the restore"
    done
    # The service keeps working on the restored data, and its ids go on after those handed out
    # since the backup (the restore kept the sequence where it was).
    id="$(post_entry "after the restore $(date -u +%s%N)")"
    [[ -n "$id" ]] || fail "POST /api/log failed after the restore"
    ((id > extra[2])) || fail "id ${id} after the restore is not above ${extra[2]}, the last one handed out before it"
    # Retention: with --keep 1 only the newest backup stays.
    sleep 1
    kept="$(stackship_db backup prod --dir "$dir" --keep 1)" || fail "the second stackship db backup failed"
    [[ "$(find "$dir" -name 'stackship-prod-*.dump' | wc -l)" == 1 && -f "$kept" && ! -e "$file" ]] \
        || fail "--keep 1 left: $(ls "$dir")"
    [[ -z "$(docker service ls -q --filter label=stackship.ops-helper)" ]] || fail "a helper service was left behind"
    rm -rf "$dir" "$out"
}

STACK_TESTS+=(backup_restore_roundtrip)

# restore_checks TRACE FROM UNTIL ROWS: checks a write load (loadgen.py's --trace: one JSON line
# per POST) against a restore's read-only window (FROM, UNTIL: the restore's own times) and the
# rows of that load in the database afterwards (ROWS: id|message lines). Prints the counts.
restore_checks() {
    python3 - "$@" <<'PY'
import datetime
import json
import sys


def at(text):
    t = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp()


trace = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
start, end = at(sys.argv[2]), at(sys.argv[3])
stored = {}
for line in open(sys.argv[4]):
    if line.strip():
        i, message = line.rstrip("\n").split("|", 1)
        stored[int(i)] = message
acked = [e for e in trace if e["status"] is not None and 200 <= e["status"] < 300]
before = [e for e in acked if e["answered"] < start]
sent_in_or_after = [e for e in acked if e["sent"] >= start]
after = [e for e in acked if e["sent"] > end]
refused = [e for e in trace if e["status"] == 503]
other = [e for e in trace if e not in acked and e not in refused]
problems = []
lost = [e for e in sent_in_or_after if stored.get(e["id"]) != e["message"]]
if lost:
    problems.append("%d writes sent after the read-only window began and acknowledged are not in the "
                    "database, e.g. %s" % (len(lost), lost[:3]))
not_read_only = [e for e in refused if e["code"] != "read_only"]
if not_read_only:
    problems.append("%d answers 503 without the read_only code, e.g. %s" % (len(not_read_only), not_read_only[:3]))
ids = [e["id"] for e in acked]
twice = sorted({i for i in ids if ids.count(i) > 1})
if twice:
    problems.append("ids handed out twice: %s" % twice[:10])
if before and after and min(e["id"] for e in after) <= max(e["id"] for e in before):
    problems.append("an id answered after the restore (%d) is not above every id answered before it (%d)"
                    % (min(e["id"] for e in after), max(e["id"] for e in before)))
if not before or not after:
    problems.append("the load did not write both before (%d) and after (%d) the restore" % (len(before), len(after)))
print("%d writes: %d acknowledged before the read-only window, %d answered 503 read_only, %d acknowledged "
      "after it began (%d sent after it ended), %d other answers %s; window %.0f ms"
      % (len(trace), len(before), len(refused), len(sent_in_or_after), len(after), len(other),
         sorted({e["status"] or e["error"] for e in other}), (end - start) * 1000))
for p in problems:
    print("problem: " + p)
sys.exit(1 if problems else 0)
PY
}

test_restore_under_write_load_loses_no_acknowledged_write() {
    local dir file out trace report stop load_pid rc=0 from until rows run verdict
    dir="$(mktemp -d)"
    out="$(mktemp)"
    trace="$(mktemp)"
    report="$(mktemp)"
    rows="$(mktemp)"
    stop="$(mktemp)"
    run="restore-$$-$(date -u +%s)"
    file="$(stackship_db backup prod --dir "$dir" 2>/dev/null)" || fail "stackship db backup prod failed"
    # Writes only, 40 a second, each one traced; at most 60 s.
    python3 "$(repo_root)/scripts/tests/loadgen.py" --url https://localhost --cacert "$STACKSHIP_PROD_CERT" \
        --kinds post --rate 40 --workers 4 --min-requests 1 --max-seconds 60 --stop-file "$stop" \
        --run "$run" --out "$report" --trace "$trace" > "${report}.log" 2>&1 &
    load_pid=$!
    sleep 3
    stackship_db restore prod "$file" --yes > "$out" 2>&1 || rc=$?
    sleep 3
    rm -f "$stop"
    wait "$load_pid" || fail "the load generator failed: $(tail -n 5 "${report}.log")"
    ((rc == 0)) || fail "stackship db restore prod failed (exit ${rc}): $(tail -n 20 "$out")"
    from="$(sed -n 's/.* read-only from \([0-9T:.Z-]*\)$/\1/p' "$out" | head -n 1)"
    until="$(sed -n 's/.* writes accepted again from \([0-9T:.Z-]*\)$/\1/p' "$out" | head -n 1)"
    [[ -n "$from" && -n "$until" ]] || fail "the restore's output names no read-only window: $(tail -n 10 "$out")"
    grep -q "writes were refused from ${from} until ${until}$" "$out" \
        || fail "the restore's last line does not name the read-only window: $(tail -n 2 "$out")"
    prod_psql "SELECT id || '|' || message FROM log_entries WHERE message LIKE 'load ${run} %'" > "$rows" \
        || fail "cannot read the load's rows"
    verdict="$(restore_checks "$trace" "$from" "$until" "$rows")" || fail "$verdict"
    log "restore under load: ${verdict}"
    [[ -z "$(docker service ls -q --filter label=stackship.ops-helper)" ]] || fail "a helper service was left behind"
    rm -rf "$dir" "$out" "$trace" "$report" "${report}.log" "$rows"
}

STACK_TESTS+=(restore_under_write_load_loses_no_acknowledged_write)

# db_password: the password prod's backend uses now, read inside its container as the owner of
# the secret file (never written to disk).
db_password() {
    local c uid
    c="$(container_of "${PROD_STACK}_backend")"
    [[ -n "$c" ]] || { fail "no running prod backend container"; return 1; }
    uid="$(docker exec "$c" stat -c %u /run/secrets/db_password)" || { fail "no db_password secret in the backend"; return 1; }
    docker exec -u "$uid" "$c" cat /run/secrets/db_password
}

# tunnel_leftovers: what stackship db tunnel may leave behind (services, containers, networks).
tunnel_leftovers() {
    docker service ls -q --filter label=stackship.ops-helper
    docker ps -aq --filter label=stackship.ops-helper=db-tunnel
    docker ps -aq --filter "name=${PROD_STACK}-ops-tunnel-"
    docker network ls -q --filter label=stackship.ops-helper=db-tunnel
    docker network ls -q --filter "name=${PROD_STACK}-ops-tunnel-"
}

test_db_tunnel_reaches_database() {
    local port=15439 out pid rc=0 deadline listeners via_tunnel direct password login passfile conninfo
    out="$(mktemp)"
    [[ -z "$(tunnel_leftovers)" ]] || fail "tunnel leftovers before the test: $(tunnel_leftovers | tr '\n' ' ')"
    # The tunnel runs in the background as an interactive one would: SIGINT (Ctrl-C) ends it.
    # Background jobs of a script ignore SIGINT unless the disposition is reset.
    env --default-signal=INT "$(stackship_bin)" --root "$(dirname "$PROD_DIR")" db tunnel prod --port "$port" > "$out" 2>&1 &
    pid=$!
    deadline=$((SECONDS + 90))
    until grep -q "^ready 127.0.0.1:${port}$" "$out"; do
        kill -0 "$pid" 2>/dev/null || fail "stackship db tunnel exited before it was ready: $(tail -n 20 "$out")"
        ((SECONDS < deadline)) || { kill -INT "$pid"; fail "stackship db tunnel not ready after 90s: $(tail -n 20 "$out")"; }
        sleep 0.5
    done
    # Loopback only: nothing listens on the port on another address.
    listeners="$(ss -Hltn "sport = :${port}" | awk '{print $4}' | sort -u | tr '\n' ' ')"
    [[ "$listeners" == "127.0.0.1:${port} " ]] || { kill -INT "$pid"; fail "port ${port} listens on '${listeners}', expected 127.0.0.1 only"; }
    # The login it prints works as it is: a passfile, no password anywhere in its output.
    login="$(grep -m1 '^PGPASSFILE=' "$out")" || { kill -INT "$pid"; fail "the tunnel printed no login: $(tail -n 10 "$out")"; }
    passfile="$(sed -n 's/^PGPASSFILE=\([^ ]*\) psql ".*"$/\1/p' <<<"$login")"
    conninfo="$(sed -n 's/^PGPASSFILE=[^ ]* psql "\(.*\)"$/\1/p' <<<"$login")"
    [[ "$conninfo" == "host=127.0.0.1 port=${port} user=backend dbname=backend" ]] || { kill -INT "$pid"; fail "the login names '${conninfo}'"; }
    [[ "$(stat -c %a "$passfile")" == 600 && "$(stat -c %a "$(dirname "$passfile")")" == 700 ]] \
        || { kill -INT "$pid"; fail "the passfile or its directory is open to others: $(stat -c '%a %n' "$passfile" "$(dirname "$passfile")" | tr '\n' ' ')"; }
    password="$(db_password)" || { kill -INT "$pid"; fail "cannot read the database password"; }
    grep -qF -- "$password" "$out" && { kill -INT "$pid"; fail "the database password is in the tunnel's output"; }
    via_tunnel="$(PGPASSFILE="$passfile" PGCONNECT_TIMEOUT=10 psql "$conninfo" \
        -v ON_ERROR_STOP=1 -Atc "SELECT current_user || ' ' || (SELECT count(*) FROM log_entries WHERE id <= 1000000000)")" \
        || { kill -INT "$pid"; fail "psql with the tunnel's login failed"; }
    direct="$(prod_psql "SELECT current_user || ' ' || (SELECT count(*) FROM log_entries WHERE id <= 1000000000)")" \
        || { kill -INT "$pid"; fail "psql in the prod postgres container failed"; }
    [[ "$via_tunnel" == "$direct" ]] || { kill -INT "$pid"; fail "through the tunnel '${via_tunnel}', directly '${direct}'"; }
    # A wrong password is refused by the database itself (it is Postgres at the other end).
    PGPASSWORD=wrong PGPASSFILE=/dev/null PGCONNECT_TIMEOUT=10 psql "$conninfo" -Atc 'SELECT 1' > /dev/null 2>&1 \
        && { kill -INT "$pid"; fail "a wrong password was accepted"; }
    kill -INT "$pid"
    deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        ((SECONDS < deadline)) || { kill -TERM "$pid"; fail "stackship db tunnel still running 60s after SIGINT"; }
        sleep 0.5
    done
    wait "$pid" || rc=$?
    ((rc == 130)) || fail "stackship db tunnel exited ${rc} after SIGINT, expected 130: $(tail -n 5 "$out")"
    [[ -z "$(tunnel_leftovers)" ]] || fail "left behind after the tunnel closed: $(tunnel_leftovers | tr '\n' ' ')"
    [[ ! -e "$(dirname "$passfile")" ]] || fail "the passfile's directory was left: $(dirname "$passfile")"
    if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then fail "127.0.0.1:${port} still accepts connections"; fi
    rm -f "$out"
}

STACK_TESTS+=(db_tunnel_reaches_database)

test_db_console_runs_piped_sql() {
    local out rc=0 sql="SELECT 'console ' || current_user || ' on ' || current_database();"
    # Piped SQL: no terminal on either end, no password anywhere.
    out="$(stackship_db console prod <<<"$sql" 2>/dev/null)" || fail "stackship db console prod failed: ${out}"
    grep -q "console backend on backend" <<<"$out" || fail "the console answered '${out}'"
    # psql's exit status is the command's: 3 when a script with ON_ERROR_STOP fails.
    printf '\\set ON_ERROR_STOP on\nSELECT no_such_column;\n' | stackship_db console prod > /dev/null 2>&1 || rc=$?
    ((rc == 3)) || fail "a failed psql script exited ${rc}, expected psql's 3"
}

STACK_TESTS+=(db_console_runs_piped_sql)

prod_title() { curl_env prod -f https://localhost/api/service/info | json title; }

backend_image() { docker service inspect "${PROD_STACK}_backend" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}'; }

# rollback_prod ARGS...: the release's stackship rollback, as an operator runs it on the manager.
rollback_prod() { "${PROD_DIR}/current/stackship" --root "$(dirname "$PROD_DIR")" rollback prod "$@"; }

test_rollback_returns_to_earlier_deploy() {
    local stamp next a_config a_image b_config out traffic rc=0 listing tasks
    stamp="$(date -u +%H%M%S)"
    next="$(next_backend_tag)" || fail "no second backend version"
    out="$(mktemp)" traffic="$(mktemp)"
    # Deploy A: this tag, title A.
    set_prod_title "rollback A ${stamp}"
    deploy_prod > "$out" 2>&1 || fail "deploy A failed: $(tail -n 20 "$out")"
    a_config="$(backend_config_name)" a_image="$(backend_image)"
    [[ "$(prod_version)" == "$TAG" && "$(prod_title)" == "rollback A ${stamp}" ]] || fail "deploy A does not answer as A"
    # Deploy B: another version, another config, and a stack-file change (the backend's stop
    # grace period) that a rollback does not undo and must say so.
    set_prod_title "rollback B ${stamp}"
    sed -i 's/^    stop_grace_period: 40s$/    stop_grace_period: 41s/' "${PROD_DIR}/current/docker-compose.prod.yaml"
    grep -q "stop_grace_period: 41s" "${PROD_DIR}/current/docker-compose.prod.yaml" || fail "no backend stop_grace_period 40s to change"
    deploy_prod BACKEND_TAG="$next" > "$out" 2>&1 || fail "deploy B failed: $(tail -n 20 "$out")"
    b_config="$(backend_config_name)"
    [[ "$b_config" != "$a_config" ]] || fail "deploy B has A's config name"
    [[ "$(prod_version)" == "$next" && "$(prod_title)" == "rollback B ${stamp}" ]] || fail "deploy B does not answer as B"
    # The shipped copy in the release directory, as an operator runs it on the manager.
    listing="$(rollback_prod --list 2>&1)" || fail "stackship rollback --list failed: ${listing}"
    grep -q "(default rollback target)" <<<"$listing" || fail "--list marks no default target"
    rc=0
    rollback_prod --to no-such-deploy > "$out" 2>&1 && fail "--to an unknown deploy succeeded"
    grep -q "no-such-deploy.*no such record" "$out" || fail "--to an unknown deploy: no clear error: $(tail -n 3 "$out")"
    traffic_during "$traffic" rollback_prod > "$out" 2>&1 || rc=$?
    ((rc == 0)) || fail "stackship rollback prod failed (exit ${rc}): $(tail -n 30 "$out")"
    grep -q "rollout of ${PROD_STACK} complete" "$out" || fail "the rollback did not go through stackship deploy's watched rollout"
    # What it kept from today's stack file is named, and nothing else (no noise of Swarm's).
    grep -q "WARNING: the stack file changed since deploy" "$out" || fail "the rollback does not say the stack file changed: $(tail -n 15 "$out")"
    grep -q "^.*  backend: TaskTemplate.ContainerSpec.StopGracePeriod: 40000000000 → 41000000000$" "$out" \
        || fail "the rollback does not name the backend's stop grace period: $(grep -A8 'stack file changed' "$out")"
    (($(grep -A20 "stack file changed" "$out" | grep -c "^[0-9:]* \[stackship\]   ") == 1)) \
        || fail "the rollback names more than the one change: $(grep -A8 'stack file changed' "$out")"
    [[ "$(prod_version)" == "$TAG" ]] || fail "after the rollback the version is '$(prod_version)', expected A's ${TAG}"
    [[ "$(prod_title)" == "rollback A ${stamp}" ]] || fail "after the rollback the title is '$(prod_title)', expected A's"
    [[ "$(backend_config_name)" == "$a_config" ]] || fail "after the rollback the backend mounts $(backend_config_name), not A's ${a_config}"
    [[ "$(backend_image)" == "$a_image" ]] || fail "after the rollback the backend runs $(backend_image), not A's ${a_image}"
    no_failed_requests "$traffic"
    [[ -z "$(find "$PROD_DIR" -maxdepth 1 -name '.rollback.*')" ]] || fail "the rollback left its working copy behind"
    # The rollback is a deploy of its own, recorded as one; a second rollback would go further
    # back than A, not return to B.
    "${PROD_DIR}/current/stackship" history prod | sed -n 2p | grep -q "rolled back to deploy" \
        || fail "the last record does not say it was a rollback: $("${PROD_DIR}/current/stackship" history prod | head -n 2)"
    listing="$(rollback_prod --list 2>/dev/null | grep -A1 '(default rollback target)' || true)"
    if grep -q "backend=backend:${next}" <<<"$listing"; then fail "after the rollback the default target is B again: ${listing}"; fi
    # current/ is what runs: A's config, A's image pinned by digest; a plain deploy restarts nothing.
    grep -qx "title = \"rollback A ${stamp}\"" "$(prod_config)" || fail "current/ does not hold A's config after the rollback"
    grep -q "^BACKEND_TAG=${TAG}@sha256:" "${PROD_DIR}/current/deploy-manifests/prod/images.env" \
        || fail "current/'s pins do not name A's image by digest: $(grep BACKEND_TAG "${PROD_DIR}/current/deploy-manifests/prod/images.env")"
    tasks="$(all_running_tasks "$PROD_STACK")"
    deploy_prod > "$out" 2>&1 || fail "a plain deploy after the rollback failed: $(tail -n 10 "$out")"
    grep -q "WARNING: the last deploy (.*) rolled prod back to deploy" "$out" || fail "a plain deploy over the rollback does not say so: $(head -n 10 "$out")"
    [[ "$(all_running_tasks "$PROD_STACK")" == "$tasks" ]] || fail "a plain deploy after the rollback restarted tasks: it re-applied something"
    rm -f "$out" "$traffic"
    # Pruning, keeping the last 2 deploys (the rollback's and this one): B's config is neither
    # theirs nor the previous spec, so it goes; A's is both, so it stays (the rules themselves:
    # rollout-watcher's prune tests).
    restore_prod PRUNE_KEEP=2 >/dev/null 2>&1 || fail "restoring prod failed"
    [[ "$(prod_version)" == "$TAG" && "$(prod_title)" == stackship ]] || fail "prod not restored"
    docker config inspect "$a_config" >/dev/null 2>&1 || fail "A's config ${a_config} was pruned although it is the previous spec"
    if docker config inspect "$b_config" >/dev/null 2>&1; then fail "B's config ${b_config} was kept beyond the last 2 deploys"; fi
}

STACK_TESTS+=(rollback_returns_to_earlier_deploy)

# prometheus_query PID PROMQL: the JSON answer of prod's Prometheus to an instant query, asked
# from inside its container's network namespace (it publishes no port).
prometheus_query() {
    nsenter -t "$1" -n curl -sS -m 10 -f -G http://127.0.0.1:9090/api/v1/query --data-urlencode "query=$2"
}

test_prometheus_scrapes_every_backend_task() {
    local svc="${PROD_STACK}_prometheus" c pid want got answer deadline config
    docker service inspect "$svc" >/dev/null 2>&1 || fail "no ${svc} service"
    [[ "$(docker service inspect "$svc" --format '{{len .Spec.EndpointSpec.Ports}}')" == 0 ]] || fail "${svc} publishes a port"
    config="$(docker service inspect "$svc" --format '{{range .Spec.TaskTemplate.ContainerSpec.Configs}}{{.ConfigName}} {{end}}')"
    [[ "$config" =~ ^prod_prometheus_config_[0-9a-f]{12}\ $ ]] || fail "${svc} mounts '${config}', not one content-named config"
    c="$(container_of "$svc")"
    [[ -n "$c" ]] || fail "no running ${svc} container"
    pid="$(docker inspect "$c" --format '{{.State.Pid}}')"
    # Every running backend task, by its address on the network Prometheus shares with it.
    want="$(task_ips "${PROD_STACK}_backend" "${PROD_STACK}_data" | LC_ALL=C sort | paste -sd ' ')"
    [[ "$want" =~ ^[0-9.]+(\ [0-9.]+)+$ ]] || fail "expected at least two backend task IPs, got '${want}'"
    # New targets appear within one DNS refresh and one scrape (15 s each).
    deadline=$((SECONDS + 90))
    while :; do
        answer="$(prometheus_query "$pid" 'count by (instance) (http_requests_total{job="backend"})')" \
            || fail "querying Prometheus failed"
        got="$(python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["status"] == "success", d
print(" ".join(sorted(r["metric"]["instance"].rsplit(":", 1)[0] for r in d["data"]["result"])))
' <<<"$answer")" || fail "unexpected answer: ${answer}"
        [[ "$got" == "$want" ]] && break
        ((SECONDS < deadline)) || fail "http_requests_total series for instances '${got}', expected every backend task '${want}'"
        sleep 3
    done
    answer="$(prometheus_query "$pid" 'up{job="backend"} == 1')"
    [[ "$(python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["result"]))' <<<"$answer")" == "$(wc -w <<<"$want")" ]] \
        || fail "not every backend target is up: ${answer}"
}

STACK_TESTS+=(prometheus_scrapes_every_backend_task)

# fake_record ID PYTHON: a copy of prod's last deploy record as ID, changed by PYTHON (acting on
# `r`), in prod's history; prints its path.
fake_record() {
    local last file
    last="$(find "${PROD_DIR}/history" -name '*.json' | sort | tail -n 1)"
    file="${PROD_DIR}/history/$1.json"
    python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
r["id"] = sys.argv[2]
exec(sys.argv[3])
json.dump(r, open(sys.argv[4], "w"), indent=2)
' "$last" "$1" "$2" "$file" || { fail "cannot write ${file}"; return 1; }
    printf '%s\n' "$file"
}

test_rollback_refusals_change_nothing() {
    local before out rc pruned missing
    before="$(all_running_tasks "$PROD_STACK") $(backend_image) $(backend_config_name)"
    out="$(mktemp)"
    # A record whose backend config the prune removed: refused before anything changes.
    pruned="$(fake_record 00000000T000001.000Z-e2e 'r["services"]["backend"]["configs"] = ["prod_backend_config_000000000000"]')" || fail "no fake record"
    # A record whose backend image no longer exists: stackship deploy stops at the pull, loudly.
    missing="$(fake_record 00000000T000002.000Z-e2e 'r["services"]["backend"]["image"] = r["services"]["backend"]["image"].split("@")[0] + "@sha256:" + "0" * 64')" \
        || { rm -f "$pruned"; fail "no fake record"; }
    rc=0
    rollback_prod --to 00000000T000001 > "$out" 2>&1 || rc=$?
    ((rc != 0)) || { rm -f "$pruned" "$missing"; fail "a rollback to a record whose config was pruned succeeded"; }
    grep -q "prod_backend_config_000000000000 were pruned" "$out" || { rm -f "$pruned" "$missing"; fail "no clear refusal: $(tail -n 3 "$out")"; }
    rollback_prod --list 2>/dev/null | grep -q '^00000000T000001.000Z-e2e (configs pruned: cannot be restored)' \
        || { rm -f "$pruned" "$missing"; fail "--list does not mark the record whose configs were pruned"; }
    rc=0
    rollback_prod --to 00000000T000002 > "$out" 2>&1 || rc=$?
    rm -f "$pruned" "$missing"
    ((rc != 0)) || fail "a rollback to an image that does not exist succeeded"
    grep -q "cannot pull .*backend.*@sha256:0000" "$out" || fail "stackship deploy's reason is not in the output: $(tail -n 5 "$out")"
    grep -q "the rollback of ${PROD_STACK} FAILED" "$out" || fail "stackship rollback does not say the rollback failed: $(tail -n 3 "$out")"
    [[ "$(all_running_tasks "$PROD_STACK") $(backend_image) $(backend_config_name)" == "$before" ]] || fail "a refused rollback changed prod"
    [[ -z "$(find "$PROD_DIR" -maxdepth 1 -name '.rollback.*')" ]] || fail "a refused rollback left its working copy behind"
    rm -f "$out"
}

STACK_TESTS+=(rollback_refusals_change_nothing)

# stackship_status ARGS...: the release's stackship status, as an operator runs it on the manager.
stackship_status() { "${PROD_DIR}/current/stackship" status "$@"; }

test_status_shows_drift() {
    local svc="${PROD_STACK}_frontend" out
    # A fresh deploy record (a no-op deploy records what runs).
    deploy_prod >/dev/null 2>&1 || fail "stackship deploy prod failed"
    out="$(stackship_status prod 2>&1)" || fail "stackship status prod failed: ${out}"
    grep -qE '^  frontend +frontend:' <<<"$out" || fail "status does not list the frontend: ${out}"
    grep -qE '^  last deploy: [0-9]{8}T' <<<"$out" || fail "status names no last deploy: ${out}"
    if grep -q 'drift:' <<<"$out"; then fail "drift right after a deploy: ${out}"; fi
    # A hand-made change is drift, named.
    timeout 180 docker service update --quiet --env-add STACKSHIP_DRIFT_CHECK=1 "$svc" >/dev/null \
        || fail "docker service update --env-add failed"
    out="$(stackship_status prod 2>&1)" || fail "stackship status prod failed: ${out}"
    local json
    json="$(stackship_status prod --json 2>&1)" || fail "stackship status prod --json failed: ${json}"
    timeout 180 docker service rollback --quiet "$svc" >/dev/null || fail "docker service rollback ${svc} failed"
    grep -qF 'drift: frontend: TaskTemplate.ContainerSpec.Env: added STACKSHIP_DRIFT_CHECK=1' <<<"$out" \
        || fail "status does not show the hand-made --env-add as drift: ${out}"
    grep -qE '^  frontend .* DRIFT$' <<<"$out" || fail "the frontend row is not marked DRIFT: ${out}"
    python3 -c '
import json, sys
envs = json.load(sys.stdin)
svc = {s["name"]: s for s in envs[0]["services"]}
sys.exit(0 if any("STACKSHIP_DRIFT_CHECK=1" in d for d in svc["frontend"]["drift"]) and not svc["backend"]["drift"] else 1)
' <<<"$json" || fail "--json does not carry the frontend drift (only): ${json}"
    # Back as deployed: no drift.
    out="$(stackship_status prod 2>&1)" || fail "stackship status prod failed: ${out}"
    if grep -q 'drift:' <<<"$out"; then fail "drift after the rollback to the deployed spec: ${out}"; fi
}

STACK_TESTS+=(status_shows_drift)
