#!/usr/bin/env bash
# Runs on the manager, started over SSH by scripts/ci/ssh-deploy.sh from the upload directory
# <env dir>/.incoming-<id>/ it sits in, beside the release (./current/) and the uploaded TLS
# pair, if any (./secrets/). It hands everything to the release's own stackship:
#   stackship deploy ENV --from ./current --secrets ./secrets --settings-stdin --json
# which reads the job's settings (KEY=VALUE lines) on stdin, takes the environment's deploy
# lock, checks the commit is not older than the running one, installs the TLS pair and swaps
# the release in as <env dir>/current, deploys it, and writes the rollout report (JSON) to
# stdout. Then the upload directory is removed, and the exit status is stackship's.
set -Eeuo pipefail

SCRIPT_NAME="remote-deploy"

# This script runs alone on the manager (no lib.sh there).
die() { printf '%s [%s] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$SCRIPT_NAME" "$*" >&2; exit 2; }

usage() {
    cat <<'USAGE'
Usage: <env dir>/.incoming-<id>/remote-deploy.sh --dev|--prod|--review IID < settings

Deploys the upload ./current with its own stackship (`stackship deploy --from`, which swaps it
in as the environment's release under the deploy lock), then removes the upload.
(--review IID: the env dir is <root>/review/IID, and the review stack of dev is deployed.)
stdin: the deploy job's KEY=VALUE settings (see `stackship deploy --help`, --settings-stdin).
stdout: the rollout report (JSON). Exit status: stackship's (0 deployed, 1 rolled back,
2 nothing changed, 3 unknown).
USAGE
}

main() {
    local args=() incoming env_dir root
    case "${1:-}" in
        --dev | --prod) args=("${1#--}") ;;
        --review)
            [[ "${2:-}" =~ ^[1-9][0-9]{0,8}$ ]] || die "--review needs a merge request IID"
            args=(--review "$2")
            ;;
        -h | --help) usage; return 0 ;;
        *) usage >&2; die "expected --dev or --prod" ;;
    esac
    incoming="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    env_dir="$(dirname "$incoming")"
    [[ "$(basename "$incoming")" == .incoming-* ]] || die "${incoming} is not an upload directory (.incoming-*)"
    # Nothing of the upload stays, whatever happens (it may hold a private key): the release,
    # if installed, is current/ by then.
    INCOMING="$incoming"
    trap 'rm -rf "$INCOMING"' EXIT
    [[ -x "$incoming/current/stackship" ]] || die "${incoming}/current/stackship is missing: the upload is incomplete"
    # stackship finds an environment at <root>/<env>, a review stack at <root>/review/<iid>.
    root="$(dirname "$env_dir")"
    [[ "${args[0]}" != --review ]] || root="$(dirname "$root")"
    local rc=0
    "$incoming/current/stackship" --root "$root" deploy "${args[@]}" --from "$incoming/current" \
        --secrets "$incoming/secrets" --settings-stdin --json || rc=$?
    return "$rc"
}

main "$@"
