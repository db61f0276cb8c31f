#!/usr/bin/env bash
# Prints the image tag for the current commit: YYYYMMDD_<first 8 hex of the commit sha>.
#
# The single source of image tags for the pipeline and for local builds.
#   sha:  CI_COMMIT_SHA when set, else `git rev-parse HEAD`.
#   date: the date (UTC) of CI_COMMIT_TIMESTAMP when set (ISO 8601, as GitLab gives it),
#         else today's date (UTC) -- the build date, not the commit date.
# A local build (no CI_COMMIT_SHA) from a working tree whose image inputs (services/, Cargo.*,
# Dockerfile, .dockerignore) differ from the commit gets YYYYMMDD_<sha8>-dirty-<hash8>, hash8
# from those differences: it never takes a clean commit's tag, and two different trees never
# share one. Pipelines build their commit's tree, so their tags never carry the suffix.
# Sourcing this file defines image_tag() without running anything.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/ci/image-tag.sh [--help]
Prints YYYYMMDD_<sha8> for the current commit.
  sha:  $CI_COMMIT_SHA, else git rev-parse HEAD
  date: UTC date of $CI_COMMIT_TIMESTAMP, else today's UTC date (build date)
Without $CI_COMMIT_SHA, uncommitted changes to the image inputs add -dirty-<hash8>.
USAGE
}

# What goes into the images: an uncommitted change here makes a tree "dirty".
IMAGE_INPUTS=(services Cargo.toml Cargo.lock Dockerfile .dockerignore)

# dirty_suffix: "-dirty-<hash8>" when the image inputs differ from HEAD (tracked changes,
# staged or not, and untracked files that are not ignored), else nothing. hash8 is the id of
# the tree HEAD would have with those changes (written through a private index): the same
# content gives the same tag, whether staged or not.
dirty_suffix() {
    local top inputs=() path tmp tree
    top="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse --show-toplevel)" || die "not in a git checkout"
    for path in "${IMAGE_INPUTS[@]}"; do
        if [[ -e "$top/$path" ]] || git -C "$top" cat-file -e "HEAD:$path" 2>/dev/null; then
            inputs+=("$path")
        fi
    done
    [[ ${#inputs[@]} -gt 0 ]] || return 0
    [[ -n "$(git -C "$top" status --porcelain --untracked-files=all -- "${inputs[@]}")" ]] || return 0
    tmp="$(mktemp -d)"
    tree="$(
        cd "$top" || exit 1
        export GIT_INDEX_FILE="$tmp/index"
        git read-tree HEAD && git add -A -- "${inputs[@]}" && git write-tree
    )" || { rm -rf "$tmp"; die "cannot hash the uncommitted changes"; }
    rm -rf "$tmp"
    printf -- '-dirty-%s' "${tree:0:8}"
}

image_tag() {
    local sha date_part suffix=""
    if [[ -n "${CI_COMMIT_SHA:-}" ]]; then
        sha="$CI_COMMIT_SHA"
    else
        command -v git >/dev/null 2>&1 || die "git is required (or set CI_COMMIT_SHA)"
        sha="$(git -C "$(dirname "${BASH_SOURCE[0]}")" rev-parse HEAD 2>/dev/null)" \
            || die "not in a git checkout (set CI_COMMIT_SHA)"
        suffix="$(dirty_suffix)"
    fi
    [[ "$sha" =~ ^[0-9a-fA-F]{8,40}$ ]] || die "commit sha '${sha}' is not 8 to 40 hex digits"
    if [[ -n "${CI_COMMIT_TIMESTAMP:-}" ]]; then
        date_part="$(date -u -d "$CI_COMMIT_TIMESTAMP" +%Y%m%d 2>/dev/null)" \
            || die "CI_COMMIT_TIMESTAMP '${CI_COMMIT_TIMESTAMP}' is not a date"
    else
        date_part="$(date -u +%Y%m%d)"
    fi
    printf '%s_%s%s\n' "$date_part" "$(printf '%s' "${sha:0:8}" | tr 'A-F' 'a-f')" "$suffix"
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
