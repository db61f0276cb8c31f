#!/usr/bin/env bash
# Runs one end-to-end test of scripts/tests/test-stack.sh again and again on the stacks that are up,
# to measure how often it fails (an intermittent failure shows as a count, not an anecdote).
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/tests/repeat.sh [--times N] TEST

Runs `scripts/tests/test-stack.sh --no-up TEST` N times (default 20) on the stacks scripts/up.sh
brought up, prints one PASS/FAIL line per round with its duration, keeps each failed round's
output under /data/stackship/test-artifacts/repeat/, and ends with "N passed, M failed".
Example, the wrong-secret release (its reason must name the task Swarm blamed):

  scripts/tests/repeat.sh --times 20 wrong_secret_release_rolls_back
USAGE
}

main() {
    local times=20 test="" round passed=0 failed=0 started out
    while (($#)); do
        case "$1" in
            --times) [[ "${2:-}" =~ ^[1-9][0-9]{0,3}$ ]] || die "--times needs a number from 1 to 9999"; times="$2"; shift ;;
            -h | --help) usage; return 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) [[ -z "$test" ]] || die "give one test (got '${test}' and '$1')"; test="$1" ;;
        esac
        shift
    done
    [[ -n "$test" ]] || { usage >&2; die "which test?"; }
    local dir="${STACKSHIP_DATA}/test-artifacts/repeat"
    mkdir -p "$dir"
    for ((round = 1; round <= times; round++)); do
        started=$SECONDS
        out="${dir}/${test}-${round}.log"
        if "$(repo_root)/scripts/tests/test-stack.sh" --no-up "$test" > "$out" 2>&1; then
            passed=$((passed + 1))
            printf 'PASS %s round %d (%ss)\n' "$test" "$round" "$((SECONDS - started))"
            rm -f "$out"
        else
            failed=$((failed + 1))
            printf 'FAIL %s round %d (%ss): %s\n' "$test" "$round" "$((SECONDS - started))" \
                "$(grep -m1 '^    ' "$out" || tail -n 1 "$out")"
        fi
    done
    printf '%d passed, %d failed\n' "$passed" "$failed"
    ((failed == 0))
}

main "$@"
