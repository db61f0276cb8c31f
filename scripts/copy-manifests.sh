#!/usr/bin/env bash
# The copy step: puts exactly one environment's deploy files into the deploy directory, as the
# pipeline does on the manager, and removes whatever a previous copy left there:
#   deploy.sh, config-hasher, docker-compose.<env>.yaml, deploy-manifests/<env>/
# A deploy.env (local settings, not a deployed file) is kept.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<USAGE
Usage: scripts/copy-manifests.sh --prod|--dev [--dest DIR] [--config-hasher PATH]

  --dest DIR            deploy directory (default: ${STACKSHIP_DEPLOY_DIR})
  --config-hasher PATH  the config-hasher binary to ship
                        (default: \${CARGO_TARGET_DIR:-target}/release/config-hasher)
USAGE
}

main() {
    local env="" dest="$STACKSHIP_DEPLOY_DIR" hasher="" root staging
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --prod | --dev) [[ -z "$env" ]] || die "give exactly one of --prod / --dev"; env="${1#--}" ;;
            --dest) [[ $# -ge 2 ]] || die "--dest needs a value"; dest="$2"; shift ;;
            --config-hasher) [[ $# -ge 2 ]] || die "--config-hasher needs a value"; hasher="$2"; shift ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    [[ -n "$env" ]] || { usage >&2; die "missing --prod or --dev"; }
    root="$(repo_root)"
    hasher="${hasher:-${CARGO_TARGET_DIR:-$root/target}/release/config-hasher}"
    [[ -x "$hasher" ]] || die "config-hasher binary '${hasher}' not found (cargo build --release -p config-hasher)"
    [[ -f "$root/docker-compose.${env}.yaml" ]] || die "docker-compose.${env}.yaml is missing"
    [[ -d "$root/deploy-manifests/${env}" ]] || die "deploy-manifests/${env} is missing"
    [[ "$dest" == /* && "$dest" != / ]] || die "--dest '${dest}' must be an absolute directory other than /"

    mkdir -p "$(dirname "$dest")"
    staging="$(mktemp -d "${dest}.new.XXXXXX")"
    mkdir -p "$staging/deploy-manifests"
    install -m 0755 "$root/scripts/deploy.sh" "$staging/deploy.sh"
    install -m 0755 "$hasher" "$staging/config-hasher"
    install -m 0644 "$root/docker-compose.${env}.yaml" "$staging/"
    cp -R "$root/deploy-manifests/${env}" "$staging/deploy-manifests/${env}"
    if [[ -f "$dest/deploy.env" ]]; then
        cp -p "$dest/deploy.env" "$staging/deploy.env"
    fi
    chmod 0755 "$staging"
    # Swap in the new tree: nothing stale survives, and a failed copy leaves the old one intact.
    rm -rf "${dest}.old"
    if [[ -e "$dest" ]]; then
        mv "$dest" "${dest}.old"
    fi
    mv "$staging" "$dest"
    rm -rf "${dest}.old"
    log "copied ${env} deploy files to ${dest}"
}

main "$@"
