#!/usr/bin/env bash
# Posts a note on the pipeline's merge request through the GitLab API ($CI_API_V4_URL, never a
# hard-coded host), authenticated with a project access token from the masked CI variable
# MR_NOTE_TOKEN. The token travels only in a header read from a private file: it is never on
# a command line, never printed, and removed from anything the API answers before that is
# shown. Outside an MR pipeline, or without a token, it skips with a warning (exit 0).
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/ci/mr-note.sh [BODY_FILE | -]

Posts the Markdown in BODY_FILE (or stdin) as a note on the merge request of this pipeline:
  POST $CI_API_V4_URL/projects/$CI_PROJECT_ID/merge_requests/$CI_MERGE_REQUEST_IID/notes
  with the header PRIVATE-TOKEN: $MR_NOTE_TOKEN (a project access token, scope api, masked).

Exit status: 0 posted, or skipped with a warning (no MR, no token); 1 the API refused the
note or could not be reached (callers treat that as a warning: a note never decides a job).
USAGE
}

# redact TEXT: TEXT with every occurrence of the token replaced.
redact() {
    local text="$1"
    if [[ -n "${MR_NOTE_TOKEN:-}" ]]; then
        text="${text//"$MR_NOTE_TOKEN"/[MASKED]}"
    fi
    printf '%s' "$text"
}

# drain BODY_FILE: a body piped in is read to its end even when no note is posted, so the
# writer never meets a closed pipe.
drain() { if [[ "$1" == - ]]; then cat >/dev/null; fi; }

main() {
    local body_file="-"
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
        "") ;;
        *) body_file="$1" ;;
    esac
    [[ $# -le 1 ]] || { usage >&2; die "expected at most one BODY_FILE"; }
    if [[ -z "${CI_MERGE_REQUEST_IID:-}" ]]; then
        warn "not a merge request pipeline (CI_MERGE_REQUEST_IID unset): no MR note"
        drain "$body_file"
        return 0
    fi
    if [[ -z "${MR_NOTE_TOKEN:-}" ]]; then
        warn "MR_NOTE_TOKEN is not set: skipping the MR note (add a project access token with scope api as a masked CI variable)"
        drain "$body_file"
        return 0
    fi
    [[ -n "${CI_API_V4_URL:-}" ]] || die "CI_API_V4_URL is not set"
    [[ "${CI_PROJECT_ID:-}" =~ ^[0-9]+$ ]] || die "CI_PROJECT_ID '${CI_PROJECT_ID:-}' is not a project id"
    [[ "$CI_MERGE_REQUEST_IID" =~ ^[0-9]+$ ]] || die "CI_MERGE_REQUEST_IID '${CI_MERGE_REQUEST_IID}' is not a number"
    need curl "apt-get install curl"
    need jq "apt-get install jq"

    local tmp url status=000 answer
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand now: the directory of this run
    trap "rm -rf '$tmp'" EXIT
    if [[ "$body_file" == "-" ]]; then
        cat > "$tmp/body.md"
    else
        [[ -r "$body_file" ]] || die "cannot read the note body '${body_file}'"
        cp "$body_file" "$tmp/body.md"
    fi
    [[ -s "$tmp/body.md" ]] || die "the note body is empty"
    jq -n --rawfile body "$tmp/body.md" '{body: $body}' > "$tmp/body.json" || die "cannot encode the note as JSON"
    (umask 077 && printf 'PRIVATE-TOKEN: %s\n' "$MR_NOTE_TOKEN" > "$tmp/headers")

    url="${CI_API_V4_URL%/}/projects/${CI_PROJECT_ID}/merge_requests/${CI_MERGE_REQUEST_IID}/notes"
    log "posting a note on merge request !${CI_MERGE_REQUEST_IID} (${url})"
    status="$(curl -sS -m 30 -o "$tmp/answer" -w '%{http_code}' -X POST \
        -H @"$tmp/headers" -H 'Content-Type: application/json' \
        --data-binary @"$tmp/body.json" "$url" 2>"$tmp/curl.err")" || true
    if [[ "$status" == 201 || "$status" == 200 ]]; then
        log "note posted (HTTP ${status})"
        return 0
    fi
    answer="$(head -c 300 "$tmp/answer" 2>/dev/null || true)$(head -c 300 "$tmp/curl.err" 2>/dev/null || true)"
    printf '%s [%s] ERROR: the GitLab API did not take the note (HTTP %s): %s\n' \
        "$(date -u +%H:%M:%S)" "$STACKSHIP_SCRIPT" "$status" "$(redact "$answer" | tr '\n' ' ')" >&2
    return 1
}

main "$@"
