#!/usr/bin/env bash
# Pins one service's image tag for one environment: edits the SERVICE_TAG line of
# deploy-manifests/<env>/images.env (the file deploy.sh deploys) and leaves the rest alone.
# Commit the change: the pin is reviewed like code, and a rollback is a revert.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TAG_RE='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'

usage() {
    cat <<'USAGE'
Usage: scripts/pin-image.sh ENV SERVICE TAG

  ENV      dev or prod
  SERVICE  a service with a pin line in deploy-manifests/ENV/images.env (backend, frontend)
  TAG      the image tag, as the image job's MR note gives it (YYYYMMDD_<sha8>)

Example: scripts/pin-image.sh prod backend 20261123_0123abcd && git commit -m "prod: backend 20261123_0123abcd" deploy-manifests/prod/images.env
USAGE
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
    esac
    [[ $# -eq 3 ]] || { usage >&2; die "expected ENV SERVICE TAG"; }
    local env="$1" svc="$2" tag="$3" file key old tmp
    check_env "$env"
    [[ "$svc" =~ ^[a-z][a-z0-9-]*$ ]] || die "'${svc}' is not a service name"
    [[ "$tag" =~ $TAG_RE ]] || die "'${tag}' is not a valid image tag"
    file="$(repo_root)/deploy-manifests/${env}/images.env"
    [[ -f "$file" ]] || die "${file} is missing"
    key="$(tr 'a-z-' 'A-Z_' <<<"$svc")_TAG"
    grep -q "^${key}=" "$file" \
        || die "no pin for '${svc}' in deploy-manifests/${env}/images.env (pinned: $(sed -n 's/^\([A-Z0-9_]*\)_TAG=.*/\1/p' "$file" | tr 'A-Z_' 'a-z-' | tr '\n' ' '))"
    old="$(sed -n "s/^${key}=//p" "$file")"
    tmp="$(mktemp "${file}.XXXXXX")"
    awk -v key="$key" -v tag="$tag" 'index($0, key "=") == 1 { print key "=" tag; next } { print }' "$file" > "$tmp" \
        || { rm -f "$tmp"; die "cannot write ${file}"; }
    chmod 0644 "$tmp"
    mv "$tmp" "$file"
    log "${env} ${svc}: ${old:-(not pinned)} -> ${tag} (deploy-manifests/${env}/images.env; commit it)"
}

main "$@"
