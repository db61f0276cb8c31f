#!/usr/bin/env bash
# Pins one image for one environment: edits one line of deploy-manifests/<env>/images.env (the
# file `stackship deploy` deploys) and leaves the rest alone. For the project's services the pin is a
# tag (BACKEND_TAG=...); for the third-party images (postgres, nginx, haproxy, prometheus) it is the
# whole image
# reference by digest (POSTGRES_IMAGE=postgres:15-bookworm@sha256:...), resolved here with the
# local Docker engine, so a republished tag never changes what runs.
# Commit the change: the pin is reviewed like code, and a rollback is a revert.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TAG_RE='^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$'
IMAGE_REF_RE='^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$'
DIGEST_REF_RE='^[A-Za-z0-9][A-Za-z0-9._/:-]*@sha256:[0-9a-f]{64}$'

usage() {
    cat <<'USAGE'
Usage: scripts/pin-image.sh ENV SERVICE TAG
       scripts/pin-image.sh ENV postgres|nginx|haproxy|prometheus IMAGE

  ENV      dev or prod
  SERVICE  a service with a <SERVICE>_TAG line in deploy-manifests/ENV/images.env (backend,
           frontend)
  TAG      the image tag, as the image job's MR note gives it (YYYYMMDD_<sha8>)
  IMAGE    a third-party image, repo:tag (its digest is resolved with the local Docker engine:
           the image is pulled when it is not present) or already repo:tag@sha256:<digest>;
           written as POSTGRES_IMAGE= / NGINX_IMAGE= / HAPROXY_IMAGE= (the edge) /
           PROMETHEUS_IMAGE= (prod only) with its digest

Examples:
  scripts/pin-image.sh prod backend 20261123_0123abcd && git commit -m "prod: backend 20261123_0123abcd" deploy-manifests/prod/images.env
  scripts/pin-image.sh prod postgres postgres:15-bookworm   # POSTGRES_IMAGE=postgres:15-bookworm@sha256:...
USAGE
}

# image_repo IMAGE: the repository part of repo[:tag] (a registry's :port is not a tag).
image_repo() {
    local image="${1%@*}" last
    last="${image##*/}"
    if [[ "$last" == *:* ]]; then
        printf '%s\n' "${image%:*}"
    else
        printf '%s\n' "$image"
    fi
}

# resolve_digest IMAGE: IMAGE as repo[:tag]@sha256:<digest>, the digest the registry serves it
# under, as the local engine recorded it when it pulled or pushed the image.
resolve_digest() {
    local image="$1" repo digests line
    if [[ "$image" =~ $DIGEST_REF_RE ]]; then
        printf '%s\n' "$image"
        return 0
    fi
    need docker "install Docker: the digest is resolved with the local engine"
    if ! docker image inspect "$image" >/dev/null 2>&1; then
        log "pulling ${image} to read its digest"
        docker pull -q "$image" >/dev/null || die "${image} is not present and cannot be pulled: give IMAGE as repo:tag@sha256:<digest>"
    fi
    repo="$(image_repo "$image")"
    digests="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$image")" \
        || die "cannot inspect ${image}"
    # Docker shows Docker Hub's official images without docker.io/library/.
    while IFS= read -r line; do
        if [[ "${line%@*}" == "$repo" || "docker.io/library/${line%@*}" == "$repo" || "docker.io/${line%@*}" == "$repo" ]]; then
            printf '%s@%s\n' "$image" "${line#*@}"
            return 0
        fi
    done <<<"$digests"
    die "${image} has no digest from ${repo}'s registry (only: ${digests//$'\n'/ }); an image that was built or loaded here and never pushed or pulled has none: push it, or give repo:tag@sha256:<digest>"
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
    esac
    [[ $# -eq 3 ]] || { usage >&2; die "expected ENV SERVICE TAG or ENV postgres|nginx|haproxy|prometheus IMAGE"; }
    local env="$1" svc="$2" value="$3" file key old tmp
    check_env "$env"
    [[ "$svc" =~ ^[a-z][a-z0-9-]*$ ]] || die "'${svc}' is not a service name"
    file="$(repo_root)/deploy-manifests/${env}/images.env"
    [[ -f "$file" ]] || die "${file} is missing"
    case "$svc" in
        postgres | nginx | nginx-proxy | haproxy | edge | prometheus)
            key="${svc%-proxy}"
            [[ "$key" != edge ]] || key=haproxy
            key="${key^^}_IMAGE"
            [[ "$value" =~ $IMAGE_REF_RE ]] || die "'${value}' is not an image reference"
            value="$(resolve_digest "$value")"
            [[ "$value" =~ $DIGEST_REF_RE ]] || die "'${value}' is not repo:tag@sha256:<digest>"
            ;;
        *)
            key="$(tr 'a-z-' 'A-Z_' <<<"$svc")_TAG"
            [[ "$value" =~ $TAG_RE ]] || die "'${value}' is not a valid image tag"
            ;;
    esac
    grep -q "^${key}=" "$file" \
        || die "no pin for '${svc}' in deploy-manifests/${env}/images.env (pinned: $(sed -n 's/^\([A-Z0-9_]*\)_TAG=.*/\1/p' "$file" | tr 'A-Z_' 'a-z-' | tr '\n' ' ')and the images $(sed -n 's/^\([A-Z0-9_]*\)_IMAGE=.*/\1/p' "$file" | tr '[:upper:]' '[:lower:]' | tr '\n' ' '))"
    old="$(sed -n "s/^${key}=//p" "$file")"
    tmp="$(mktemp "${file}.XXXXXX")"
    awk -v key="$key" -v value="$value" 'index($0, key "=") == 1 { print key "=" value; next } { print }' "$file" > "$tmp" \
        || { rm -f "$tmp"; die "cannot write ${file}"; }
    chmod 0644 "$tmp"
    mv "$tmp" "$file"
    log "${env} ${svc}: ${old:-(not pinned)} -> ${value} (deploy-manifests/${env}/images.env; commit it)"
}

main "$@"
