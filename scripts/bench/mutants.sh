#!/usr/bin/env bash
# Mutation testing (cargo-mutants): how many deliberate bugs in backend and config-hasher the
# tests catch. Not part of scripts/test.sh: it rebuilds and reruns the tests once per mutant,
# which takes an hour or more on 2 cores. Writes bench/results/mutants.txt.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
# shellcheck source=scripts/tests/pg-throwaway.sh
. "$ROOT/scripts/tests/pg-throwaway.sh"

RESULTS="$ROOT/bench/results/mutants.txt"
# Per crate, the outcome of every mutant tested so far (the names cargo-mutants prints), kept in
# git, so that a run cut short goes on with --resume on another day or machine.
STATE="$ROOT/bench/results/mutants"
CRATES=(backend config-hasher rollout-watcher stackship)

usage() {
    cat <<'USAGE'
Usage: scripts/bench/mutants.sh [--crate NAME]... [--jobs N] [--out DIR] [--resume] [--report-only]

Runs cargo-mutants on each crate (default: backend, config-hasher, rollout-watcher, stackship)
against a throwaway PostgreSQL (the backend's tests need one), at the lowest CPU priority, and writes per crate the
caught, missed, timeout and unviable counts to bench/results/mutants.txt, with the missed
mutants listed; crates not run keep the figures an earlier run wrote (with its tree and
date). Mutants judged equivalent are excluded, each with its reason, in
.cargo/mutants.toml.

Options:
  --crate NAME   only this crate (repeatable)
  --jobs N       mutants built and tested at once (default 1: other work shares the machine)
  --out DIR      keep cargo-mutants' own output here (default: a temp dir, removed)
  --resume       test only what bench/results/mutants/CRATE/ does not list as caught, timed
                 out or unviable (cargo-mutants --iterate): a mutant keeps its outcome while its file,
                 line and column stay the same. Without it, every mutant is tested afresh.
  --report-only  write the results from an earlier run's --out DIR, running nothing
Environment: MUTANTS_MEMORY_GIB (default 8): address space of each process of the run (ulimit -v),
so a mutant that allocates without end fails instead of exhausting the machine.
  -h, --help     this text
Installs cargo-mutants (cargo install --locked) when missing.
USAGE
}

ensure_cargo_mutants() {
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup)"
    if ! cargo mutants --version >/dev/null 2>&1; then
        log "installing cargo-mutants"
        cargo install --locked cargo-mutants >&2 || die "cargo install cargo-mutants failed"
    fi
    log "$(cargo mutants --version)"
}

# count DIR OUTCOME: mutants with that outcome (cargo-mutants lists one per line).
count() {
    local file="$1/$2.txt"
    if [[ -s "$file" ]]; then wc -l <"$file"; else echo 0; fi
}

# reap_orphans SID: ends the processes of session SID (cargo-mutants') that lost their parent: a
# test binary killed at its timeout leaves the processes its tests started (a mutant that never
# lets a child go), which would keep a core busy, or memory, until the machine restarts; tests
# that let a short sleeper outlive them are ended too.
reap_orphans() {
    local pid
    for pid in $(ps -eo pid=,ppid=,sid= | awk -v sid="$1" '$2 == 1 && $3 == sid && $1 != sid {print $1}'); do
        log "ending process ${pid}, left behind by a test whose process ended: $(ps -o args= -p "$pid" 2>/dev/null | cut -c1-120)"
        kill -KILL "$pid" 2>/dev/null || true
    done
}

run_crate() {
    local crate="$1" out="$2/$1" status=0 iterate=() started=$SECONDS
    # An earlier run's output in the same --out would be read by --iterate too.
    rm -rf "$out/mutants.out" "$out/mutants.out.old"
    mkdir -p "$out"
    # cargo-mutants copies the working tree as it is now: record which commit that was.
    git -C "$ROOT" describe --always --dirty >"$out/commit"
    if ((RESUME)); then
        # --iterate skips what <output>/mutants.out/{caught,unviable}.txt list; a mutant that
        # timed out counts as caught (below), so it is not waited out again either. Mutants not
        # tested now keep their earlier outcome (merge_state).
        mkdir -p "$out/mutants.out"
        cat "$STATE/$crate/caught.txt" "$STATE/$crate/timeout.txt" 2>/dev/null >"$out/mutants.out/caught.txt" || true
        if [[ -f "$STATE/$crate/unviable.txt" ]]; then
            cp "$STATE/$crate/unviable.txt" "$out/mutants.out/unviable.txt"
        fi
        iterate=(--iterate)
        touch "$out/resumed"
    fi
    log "cargo mutants -p $crate ${iterate[*]} (output: $out/mutants.out)"
    # Without debug info the many rebuilds link faster; the copies get their own target dir.
    # A mutant that allocates without end (a loop that never stops pushing) must fail, not
    # take the machine's memory before its timeout: every process of the run gets at most
    # MUTANTS_MEMORY_GIB (default 8) GiB of address space.
    # cargo-mutants runs in a session of its own (its id is the pid below), so that test
    # processes a timed-out mutant leaves behind can be told apart and ended (reap_orphans).
    # Ctrl-C is passed on to it; it stops its jobs, and this script then keeps the results.
    local cm reaper
    (cd "$ROOT" && ulimit -v $((${MUTANTS_MEMORY_GIB:-8} * 1024 * 1024)) && exec setsid env -u CARGO_TARGET_DIR CARGO_PROFILE_DEV_DEBUG=0 \
        nice -n 19 cargo mutants -p "$crate" --jobs "$JOBS" --output "$out" --no-shuffle \
        --timeout-multiplier 3 "${iterate[@]}" >"$out/cargo-mutants.log" 2>&1) &
    cm=$!
    # SIGTERM too: a run started in the background ignores SIGINT (the shell does for background
    # commands, and a signal ignored on entry cannot be trapped).
    trap 'kill -INT "$cm" 2>/dev/null || true' INT TERM
    # A new session is a new scheduling group (sched_autogroup): it is put at the lowest
    # priority too (again at each round: the session may not have begun at the first), so that
    # work in other sessions goes first.
    (while kill -0 "$cm" 2>/dev/null; do
        echo 19 >"/proc/$cm/autogroup" 2>/dev/null || true
        sleep 20
        reap_orphans "$cm"
    done) &
    reaper=$!
    # A trapped Ctrl-C ends a wait early: wait again until cargo-mutants itself has ended.
    while :; do
        status=0
        wait "$cm" || status=$?
        kill -0 "$cm" 2>/dev/null || break
    done
    trap - INT TERM
    kill "$reaper" 2>/dev/null || true
    wait "$reaper" 2>/dev/null || true
    reap_orphans "$cm"
    # 0: all caught; 2: some missed; 3: some timed out. Anything else is a failure of the run,
    # or a stop (Ctrl-C, a kill): what was tested until then is kept all the same.
    case $status in
    0 | 2 | 3) ;;
    *)
        tail -n 30 "$out/cargo-mutants.log" >&2
        printf '%s\n' $(((SECONDS - started) / 60)) >"$out/minutes"
        write_results "$2" "$crate" >/dev/null
        die "cargo mutants -p $crate stopped (exit $status); what it tested is kept in bench/results/mutants/$crate/ (go on: --resume)"
        ;;
    esac
}

# merge_state CRATE OUT: bench/results/mutants/CRATE/ from its earlier content (on --resume)
# and this run's outcomes, keeping only the mutants the tree still has (`cargo mutants --list`):
# a mutant tested now takes its new outcome, one not tested now keeps its earlier one.
merge_state() {
    local crate="$1" out="$2/$1"
    (cd "$ROOT" && env -u CARGO_TARGET_DIR cargo mutants -p "$crate" --list >"$out/current.txt" 2>"$out/list.err") \
        || { cat "$out/list.err" >&2; die "cargo mutants -p $crate --list failed"; }
    mkdir -p "$STATE/$crate"
    python3 - "$out" "$STATE/$crate" "$([[ -f "$out/resumed" ]] && echo 1 || echo 0)" <<'PY'
import os, sys

out, state, resumed = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
kinds = ["caught", "unviable", "missed", "timeout"]

def read(path):
    try:
        return {l for l in open(path).read().splitlines() if l.strip()}
    except FileNotFoundError:
        return set()

current = read(os.path.join(out, "current.txt"))
new = {k: read(os.path.join(out, "mutants.out", k + ".txt")) for k in kinds}
old = {k: read(os.path.join(state, k + ".txt")) if resumed else set() for k in kinds}
tested = set().union(*new.values())
merged, taken = {}, set()
for k in kinds:
    merged[k] = (((old[k] - tested) | new[k]) & current) - taken
    taken |= merged[k]
for k in kinds:
    with open(os.path.join(state, k + ".txt"), "w") as f:
        f.writelines(m + "\n" for m in sorted(merged[k]))
with open(os.path.join(state, "untested.count"), "w") as f:
    f.write(f"{len(current - taken)} {len(current)}\n")
PY
    # Which trees the outcomes come from: one line per run since the last full start.
    local line
    line="$(date -u -r "$out/commit" +%Y-%m-%d 2>/dev/null || echo '?') $(cat "$out/commit" 2>/dev/null || echo '?') $(cat "$out/minutes" 2>/dev/null || echo 0)"
    [[ -f "$out/resumed" ]] || : >"$STATE/$crate/trees.txt"
    # --report-only on the same run again adds nothing.
    [[ "$(tail -n 1 "$STATE/$crate/trees.txt" 2>/dev/null)" == "$line" ]] || printf '%s\n' "$line" >>"$STATE/$crate/trees.txt"
}

report_crate() {
    local crate="$1" out="$2/$1" caught missed timeout unviable viable pct untested total trees
    merge_state "$crate" "$2"
    caught=$(count "$STATE/$crate" caught)
    missed=$(count "$STATE/$crate" missed)
    timeout=$(count "$STATE/$crate" timeout)
    unviable=$(count "$STATE/$crate" unviable)
    viable=$((caught + missed + timeout))
    # A mutant that makes the tests hang was noticed: timeouts count as caught.
    pct=$(python3 -c "print(f'{100 * ($caught + $timeout) / max($viable, 1):.1f}')")
    read -r untested total <"$STATE/$crate/untested.count"
    trees=$(awk '{print $2}' "$STATE/$crate/trees.txt" | paste -sd, -)
    {
        printf '\n## %s (tree at %s, %s min, --jobs %s, %s)\n' "$crate" "$trees" \
            "$(awk '{s += $3} END {print s}' "$STATE/$crate/trees.txt")" \
            "$JOBS" "$(date -u -r "$out/commit" +%Y-%m-%d 2>/dev/null || echo '?')"
        # A run cut short (time limit, Ctrl-C) says how far it got.
        if ((untested)); then
            printf 'PARTIAL RUN: %s of %s mutants tested; the figures below cover those only (go on: --resume)\n' \
                "$((total - untested))" "$total"
        fi
        if [[ "$trees" == *,* ]]; then
            printf 'resumed: each mutant was tested on the tree of the run that reached it; its line is unchanged since\n'
        fi
        printf 'caught %s, missed %s, timeout %s (counted as caught), unviable %s: %s%% of %s viable caught\n' \
            "$caught" "$missed" "$timeout" "$unviable" "$pct" "$viable"
        if ((missed)); then
            printf 'missed:\n'
            sed 's/^/  /' "$STATE/$crate/missed.txt"
        fi
    } >>"$RESULTS.tmp"
    KEYS+=("${crate}_caught=$caught" "${crate}_missed=$missed" "${crate}_timeout=$timeout"
        "${crate}_unviable=$unviable" "${crate}_caught_pct=$pct")
}

main() {
    local crates=() out="" report_only=0
    JOBS=1
    RESUME=0
    while (($#)); do
        case $1 in
        --crate) [[ $# -ge 2 ]] || die "--crate needs a name"; crates+=("$2"); shift ;;
        --jobs) [[ $# -ge 2 ]] || die "--jobs needs a number"; JOBS=$2; shift ;;
        --out) [[ $# -ge 2 ]] || die "--out needs a directory"; out=$2; shift ;;
        --report-only) report_only=1 ;;
        --resume) RESUME=1 ;;
        -h | --help) usage; return 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
        esac
        shift
    done
    ((${#crates[@]})) || crates=("${CRATES[@]}")
    need_cmd python3 python3
    need_cmd runuser util-linux
    # stackship's tests run Pebble and restic, as scripts/test.sh has them.
    need_cmd pebble pebble
    need_cmd restic restic
    ensure_cargo_mutants
    local crate started=$SECONDS
    if ((report_only)); then
        [[ -n "$out" && -d "$out" ]] || die "--report-only needs the --out DIR of an earlier run"
        write_results "$out" "${crates[@]}"
        return 0
    fi
    if [[ -z "$out" ]]; then
        out=$(mktemp -d "${TMPDIR:-/tmp}/stackship-mutants.XXXXXX")
        trap 'pg_stop_throwaway; rm -rf "$out"' EXIT
    else
        mkdir -p "$out"
        trap pg_stop_throwaway EXIT
    fi
    pg_start_throwaway
    for crate in "${crates[@]}"; do
        run_crate "$crate" "$out"
        printf '%s\n' $(((SECONDS - started) / 60)) >"$out/$crate/minutes"
        started=$SECONDS
    done
    write_results "$out" "${crates[@]}"
}

# kept_results CRATE: CRATE's section of bench/results/mutants.txt as an earlier run wrote it,
# then its keys, each line prefixed with "key ", when the file has one. A heading without a
# date of its own gets the date and --jobs of the file it came from.
kept_results() {
    [[ -f "$RESULTS" ]] || return 0
    python3 - "$RESULTS" "$1" <<'PY'
import re, sys

text = open(sys.argv[1]).read()
crate = sys.argv[2]
date = re.search(r"cargo mutants, (\d{4}-\d\d-\d\d)", text)
jobs = re.search(r"--jobs (\d+)\n", text)
for block in re.split(r"\n(?=## )", text):
    lines = block.strip("\n").split("\n")
    if not lines[0].startswith(f"## {crate} ("):
        continue
    if date and not re.search(r", \d{4}-\d\d-\d\d\)$", lines[0]):
        extra = f", --jobs {jobs.group(1)}" if jobs else ""
        lines[0] = lines[0][:-1] + f"{extra}, {date.group(1)})"
    print("\n".join([""] + [line for line in lines if line and not re.match(r"[\w-]+=", line)]))
    break
for line in text.splitlines():
    if re.fullmatch(re.escape(crate) + r"_(caught|missed|timeout|unviable|caught_pct)=[\d.]+", line):
        print("key " + line)
PY
}

# write_results OUT CRATE...: bench/results/mutants.txt from the runs under OUT. Crates not run
# now keep the section and keys an earlier run wrote, with that run's tree and date.
write_results() {
    local out="$1" crate kept line
    shift
    local run=" $* " order=("${CRATES[@]}")
    for crate in "$@"; do
        [[ " ${CRATES[*]} " == *" $crate "* ]] || order+=("$crate")
    done
    KEYS=()
    {
        printf '# Mutation testing: cargo mutants, %s\n' "$(date -u +%Y-%m-%d)"
        printf 'machine: %s, %s cores; %s; each heading: the tree tested, minutes, --jobs, date\n' \
            "$(uname -m)" "$(nproc)" "$(cargo mutants --version)"
        printf 'Excluded equivalent mutants and why: .cargo/mutants.toml\n'
    } >"$RESULTS.tmp"
    for crate in "${order[@]}"; do
        if [[ "$run" == *" $crate "* ]]; then
            report_crate "$crate" "$out"
            continue
        fi
        kept=$(kept_results "$crate")
        [[ -n "$kept" ]] || continue
        while IFS= read -r line; do
            if [[ "$line" == "key "* ]]; then
                KEYS+=("${line#key }")
            else
                printf '%s\n' "$line" >>"$RESULTS.tmp"
            fi
        done <<<"$kept"
    done
    printf '\n' >>"$RESULTS.tmp"
    printf '%s\n' "${KEYS[@]}" >>"$RESULTS.tmp"
    mkdir -p "$(dirname "$RESULTS")"
    mv "$RESULTS.tmp" "$RESULTS"
    cat "$RESULTS"
}

main "$@"
