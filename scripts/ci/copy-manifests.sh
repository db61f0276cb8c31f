#!/usr/bin/env bash
# The copy step: puts exactly one environment's release into its deploy directory, as the
# pipeline does on the manager, replacing whatever a previous copy left there:
#   <dest>/current/{stackship, config-hasher, rollout-watcher,
#                   docker-compose.<env>.yaml, deploy-manifests/<env>/}
# <dest> defaults to /data/stackship/deploy/<env>; its deploy.env, lock and history are not
# touched (nor secrets/, the source files of file-backed secrets), nor is any other
# environment's directory. The swap is `stackship release install`, under the environment's
# deploy lock, so it never changes the files of a deploy that is running.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/ci/copy-manifests.sh --prod|--dev [--dest DIR] [--bin-dir DIR] [--lock-wait S]

  --dest DIR        the environment's deploy directory (default: ${STACKSHIP_DEPLOY_ROOT}/<env>)
  --bin-dir DIR     where the config-hasher, rollout-watcher and stackship binaries are
                    (default: \${STACKSHIP_TOOLS_DIR:-.build/tools}, where scripts/ci/build-tools.sh puts them)
  --lock-wait S     how long to wait for a running deploy of this environment (default 900)
USAGE
}

main() {
    local env="" dest="" bin_dir="" lock_wait=900 root staging tool
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --prod | --dev) [[ -z "$env" ]] || die "give exactly one of --prod / --dev"; env="${1#--}" ;;
            --dest) [[ $# -ge 2 ]] || die "--dest needs a value"; dest="$2"; shift ;;
            --bin-dir) [[ $# -ge 2 ]] || die "--bin-dir needs a value"; bin_dir="$2"; shift ;;
            --lock-wait) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || die "--lock-wait needs a number of seconds"; lock_wait="$2"; shift ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    [[ -n "$env" ]] || { usage >&2; die "missing --prod or --dev"; }
    root="$(repo_root)"
    dest="${dest:-${STACKSHIP_DEPLOY_ROOT}/${env}}"
    bin_dir="${bin_dir:-$(tools_dir)}"
    for tool in config-hasher rollout-watcher stackship; do
        [[ -x "$bin_dir/$tool" ]] || die "${tool} binary '${bin_dir}/${tool}' not found (scripts/ci/build-tools.sh)"
    done
    [[ -f "$root/docker-compose.${env}.yaml" ]] || die "docker-compose.${env}.yaml is missing"
    [[ -d "$root/deploy-manifests/${env}" ]] || die "deploy-manifests/${env} is missing"
    [[ "$dest" == /* && "$dest" != / ]] || die "--dest '${dest}' must be an absolute directory other than /"

    mkdir -p "$dest"
    staging="$(mktemp -d "${dest}/.incoming.XXXXXX")"
    # A copy that stops halfway leaves nothing behind (after the install, nothing is there).
    STAGING="$staging"
    trap 'rm -rf "$STAGING"' EXIT
    mkdir -p "$staging/deploy-manifests"
    install -m 0755 "$bin_dir/config-hasher" "$staging/config-hasher"
    install -m 0755 "$bin_dir/rollout-watcher" "$staging/rollout-watcher"
    install -m 0755 "$bin_dir/stackship" "$staging/stackship"
    install -m 0644 "$root/docker-compose.${env}.yaml" "$staging/"
    cp -R "$root/deploy-manifests/${env}" "$staging/deploy-manifests/${env}"
    chmod 0755 "$staging"
    # The release's own stackship swaps it in under the environment's deploy lock: nothing
    # stale survives, a refused copy leaves the old one intact, a running deploy keeps its files.
    "$staging/stackship" release install "$env" --from "$staging" --env-dir "$dest" --lock-wait "$lock_wait" \
        || die "copy step for ${env} failed (see above)"
    log "copied the ${env} release to ${dest}/current"
}

main "$@"
