#!/usr/bin/env bash
# Prints the image tag for the current commit: YYYYMMDD_<first 8 hex of the commit sha>.
#
# The single source of image tags for the pipeline and for local builds.
#   sha:  CI_COMMIT_SHA when set, else `git rev-parse HEAD`.
#   date: the date (UTC) of CI_COMMIT_TIMESTAMP when set (ISO 8601, as GitLab gives it),
#         else today's date (UTC) -- the build date, not the commit date.
# Sourcing this file defines image_tag() without running anything.
set -Eeuo pipefail

usage() {
    cat <<'USAGE'
Usage: scripts/image-tag.sh [--help]
Prints YYYYMMDD_<sha8> for the current commit.
  sha:  $CI_COMMIT_SHA, else git rev-parse HEAD
  date: UTC date of $CI_COMMIT_TIMESTAMP, else today's UTC date (build date)
USAGE
}

die() { printf 'image-tag: ERROR: %s\n' "$*" >&2; exit 1; }

image_tag() {
    local sha date_part
    if [[ -n "${CI_COMMIT_SHA:-}" ]]; then
        sha="$CI_COMMIT_SHA"
    else
        command -v git >/dev/null 2>&1 || die "git is required (or set CI_COMMIT_SHA)"
        sha="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse HEAD 2>/dev/null)" \
            || die "not in a git checkout (set CI_COMMIT_SHA)"
    fi
    [[ "$sha" =~ ^[0-9a-fA-F]{8,40}$ ]] || die "commit sha '${sha}' is not 8 to 40 hex digits"
    if [[ -n "${CI_COMMIT_TIMESTAMP:-}" ]]; then
        date_part="$(date -u -d "$CI_COMMIT_TIMESTAMP" +%Y%m%d 2>/dev/null)" \
            || die "CI_COMMIT_TIMESTAMP '${CI_COMMIT_TIMESTAMP}' is not a date"
    else
        date_part="$(date -u +%Y%m%d)"
    fi
    printf '%s_%s\n' "$date_part" "$(printf '%s' "${sha:0:8}" | tr 'A-F' 'a-f')"
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
        "") ;;
        *) usage >&2; die "unknown argument '$1'" ;;
    esac
    image_tag
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
