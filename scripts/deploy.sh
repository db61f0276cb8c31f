#!/usr/bin/env bash
# Deploys one environment's stack on a Swarm manager: `stackship deploy`, the tool beside this
# script in the release directory (/data/stackship/deploy/<env>/current). This shim keeps the
# older command line (--prod | --dev | --review IID, --tag, --timeout, --print-images) working
# for the callers and documents that used it; `stackship deploy --help` has the details.
set -Eeuo pipefail

die() { printf '%s [deploy] ERROR: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; exit 2; }

main() {
    local here exe env="" args=()
    here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
    if [[ -x "$here/stackship" ]]; then
        exe="$here/stackship"
    elif command -v stackship >/dev/null 2>&1; then
        exe="$(command -v stackship)"
    else
        die "stackship is neither beside ${here}/deploy.sh nor on PATH (the copy step ships it)"
    fi
    while (($#)); do
        case "$1" in
            --prod | --dev)
                [[ -z "$env" ]] || die "give exactly one of --prod / --dev"
                env="${1#--}"
                ;;
            -h | --help) exec "$exe" deploy --help ;;
            *) args+=("$1") ;;
        esac
        shift
    done
    exec "$exe" deploy ${env:+"$env"} --release "$here" "${args[@]}"
}

main "$@"
