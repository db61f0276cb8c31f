#!/usr/bin/env bash
# Shows a rollout as it happens: polls a service's version endpoint, one line per request
# (time, HTTP status, the version JSON), and ends with what it saw: the version transitions
# (old -> new), how long more than one version answered, and every error.
#
#   scripts/poll-version.sh https://localhost/api/service/version --count 100
#   scripts/poll-version.sh https://localhost/api/service/version --until-version 20261123_ab12cd34
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Whatever it dies of is a bad argument (or no curl): exit 2, since 1 means V did not answer.
STACKSHIP_DIE_STATUS=2

usage() {
    cat <<'USAGE'
Usage: scripts/poll-version.sh URL [--interval S] [--count N | --until-version V]
                               [--timeout S] [--ready-url URL] [--cacert FILE]

Polls URL (a /api/service/version endpoint) and prints one line per request:
  <UTC time> <HTTP status> <body or error>
At the end: the transitions seen (old -> new), how long two versions answered side by side,
and every error (non-2xx answers and failed connections).

Options:
  --interval S        seconds between requests (default 0.5)
  --count N           stop after N requests (default 20 unless --until-version)
  --until-version V   stop once V answers (then, with --ready-url, once that URL is 200 too);
                      exit 1 if that does not happen within --timeout
  --timeout S         give up after S seconds (default 300)
  --ready-url URL     with --until-version: also wait for this URL to answer 200
  --cacert FILE       trust this CA for https (e.g. the self-signed prod certificate)

Exit status: 0 when the polling ended as asked (and, with --until-version, V answered),
1 when V did not answer in time, 2 on bad arguments.
USAGE
}

URL="" INTERVAL="0.5" COUNT="" UNTIL="" TIMEOUT=300 READY_URL="" CACERT=""

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --interval) [[ $# -ge 2 && "$2" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--interval needs a number of seconds"; INTERVAL="$2"; shift ;;
            --count) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--count needs a positive number"; COUNT="$2"; shift ;;
            --until-version) [[ $# -ge 2 && -n "$2" ]] || die "--until-version needs a version"; UNTIL="$2"; shift ;;
            --timeout) [[ $# -ge 2 && "$2" =~ ^[1-9][0-9]*$ ]] || die "--timeout needs a number of seconds"; TIMEOUT="$2"; shift ;;
            --ready-url) [[ $# -ge 2 ]] || die "--ready-url needs a URL"; READY_URL="$2"; shift ;;
            --cacert) [[ $# -ge 2 && -f "$2" ]] || die "--cacert needs an existing file"; CACERT="$2"; shift ;;
            -h | --help) usage; exit 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) [[ -z "$URL" ]] || die "give one URL"; URL="$1" ;;
        esac
        shift
    done
    [[ -n "$URL" ]] || { usage >&2; die "missing URL"; }
    [[ "$URL" =~ ^https?:// ]] || die "URL '${URL}' must start with http:// or https://"
    [[ -z "$COUNT" || -z "$UNTIL" ]] || die "give --count or --until-version, not both"
    [[ -n "$COUNT" || -n "$UNTIL" ]] || COUNT=20
    command -v curl >/dev/null 2>&1 || die "curl is required (apt-get install curl)"
}

# fetch URL: prints "<status>\t<body or error>"; status 000 when no HTTP answer came.
fetch() {
    local args=(-sS -m 5 -w '\t%{http_code}') out rc=0
    [[ -z "$CACERT" ]] || args+=(--cacert "$CACERT")
    out="$(curl "${args[@]}" "$1" 2>&1)" || rc=$?
    if ((rc != 0)); then
        printf '000\tcurl error %s: %s\n' "$rc" "$(tr '\n' ' ' <<<"${out%$'\t'*}")"
    else
        printf '%s\t%s\n' "${out##*$'\t'}" "$(tr -d '\n' <<<"${out%$'\t'*}")"
    fi
}

# version_of BODY: the "version" field of a version document.
version_of() { sed -n 's/.*"version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' <<<"$1"; }

main() {
    parse_args "$@"
    local started=$SECONDS n=0 status body version last="" errors=() transitions=() reached=""
    local -A first_seen=() last_seen=()
    while :; do
        IFS=$'\t' read -r status body < <(fetch "$URL")
        n=$((n + 1))
        printf '%s %s %s\n' "$(date -u +%H:%M:%S.%3N)" "$status" "$body"
        if [[ "$status" == 2* ]]; then
            version="$(version_of "$body")"
            if [[ -n "$version" ]]; then
                [[ -n "${first_seen[$version]:-}" ]] || first_seen[$version]=$SECONDS
                last_seen[$version]=$SECONDS
                if [[ -n "$last" && "$version" != "$last" ]]; then
                    transitions+=("$(date -u +%H:%M:%S) ${last} -> ${version}")
                fi
                last="$version"
            fi
        else
            errors+=("$(date -u +%H:%M:%S) ${status} ${body}")
        fi
        if [[ -n "$UNTIL" && "$last" == "$UNTIL" ]]; then
            if [[ -z "$READY_URL" || "$(fetch "$READY_URL" | cut -f1)" == 200 ]]; then
                reached=1
                break
            fi
        fi
        [[ -z "$COUNT" ]] || ((n < COUNT)) || break
        ((SECONDS - started < TIMEOUT)) || break
        sleep "$INTERVAL"
    done
    {
        printf -- '--- %d requests in %ds, %d errors\n' "$n" "$((SECONDS - started))" "${#errors[@]}"
        local t v overlap
        for t in "${transitions[@]}"; do printf 'transition %s\n' "$t"; done
        if ((${#first_seen[@]} > 1)); then
            for v in "${!first_seen[@]}"; do
                printf 'version %s answered from +%ds to +%ds\n' "$v" \
                    "$((first_seen[$v] - started))" "$((last_seen[$v] - started))"
            done
            # Both answered between the newest first sighting and the oldest last sighting.
            overlap="$(for v in "${!first_seen[@]}"; do printf '%s %s\n' "${first_seen[$v]}" "${last_seen[$v]}"; done \
                | awk 'NR == 1 {f = $1; l = $2} {if ($1 > f) f = $1; if ($2 < l) l = $2} END {print (l > f ? l - f : 0)}')"
            printf 'more than one version answered for about %ss\n' "$overlap"
        fi
        for t in "${errors[@]}"; do printf 'error %s\n' "$t"; done
    } >&2
    if [[ -n "$UNTIL" && -z "$reached" ]]; then
        log "version ${UNTIL} did not answer${READY_URL:+ (with ${READY_URL} ready)} within ${TIMEOUT}s"
        return 1
    fi
    return 0
}

main "$@"
