#!/usr/bin/env bash
# Turns a rollout report (last-rollout.json, written by rollout-watcher on the manager) into
# the Markdown of a deploy's MR note: one row per service with old -> new tag, the result,
# and for a failed service the reason (Swarm's message, the task error, the last log line).
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/ci/rollout-note.sh ENV REPORT_JSON

Prints the Markdown summary of the ENV deploy whose rollout report is REPORT_JSON.
Without a report (the deploy stopped before its rollout), says so and points at the job log.
USAGE
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
    esac
    [[ $# -eq 2 ]] || { usage >&2; die "expected ENV REPORT_JSON"; }
    local env="$1" report="$2"
    need jq "apt-get install jq"
    if [[ ! -s "$report" ]]; then
        printf '**%s deploy: FAILED before the rollout** (no rollout report).\n\nJob: %s\n' \
            "$env" "${CI_JOB_URL:-see the job log}"
        return 0
    fi
    jq -r --arg env "$env" --arg job "${CI_JOB_URL:-}" '
        def tag: if . == null then "—" else sub("@sha256:.*$"; "") | split("/") | last
            | (split(":") | if length > 1 then .[1] else "latest" end) end;
        def cell: tostring | gsub("\\|"; "\\|") | gsub("[\r\n]+"; " ") | .[0:300];
        def reason: [.detail, .update_message, .task_error,
                     ((.log_tail // "") | split("\n") | map(select(length > 0)) | last)]
            | map(select(. != null and . != "")) | unique | join("; ");
        "**\($env) deploy: \(if .ok then "ok" else "FAILED" end)** (`\(.stack)`, \(.seconds | floor) s)",
        "",
        "| service | image | result | reason |",
        "| --- | --- | --- | --- |",
        (.services[] |
            "| \(.service) | "
            + (if (.old_image | tag) == (.new_image | tag) then "`\(.new_image | tag)` (unchanged)"
               else "`\(.old_image | tag)` → `\(.new_image | tag)`" end)
            + " | \(.result) | "
            + (if .result == "ok" then "" else (reason | cell) end) + " |"),
        (if $job != "" then "", "Job: \($job)" else empty end)
    ' "$report" || die "${report} is not a rollout report"
}

main "$@"
