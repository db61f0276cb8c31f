#!/usr/bin/env bash
# Builds the project's service images as ${REGISTRY}/stackship/<service>:<tag> and optionally
# pushes them. Rust services: `APP_VERSION=<tag> cargo build --release -p <svc>`, then the root
# Dockerfile packs the binary. A service with its own services/<svc>/Dockerfile is built from
# that directory instead. The tag comes from scripts/ci/image-tag.sh unless given.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# Services that ship as images (config-hasher is a CLI, not an image).
IMAGE_SERVICES=(backend frontend)

usage() {
    cat <<USAGE
Usage: scripts/ci/build-images.sh [options] [SERVICE...]

Builds the images of SERVICE... (default: ${IMAGE_SERVICES[*]}).

Options:
  --registry R      image registry (default: \$REGISTRY, else ${STACKSHIP_REGISTRY_ADDR})
  --tag TAG         image tag (default: scripts/ci/image-tag.sh)
  --push            push the images after building
  --base-image I    runtime base for the root Dockerfile (default: debian:bookworm-slim)
  --nginx-image I   nginx base for the frontend (default: nginx:1.27-bookworm)
  --no-cargo        pack binaries already in \${CARGO_TARGET_DIR:-target}/release
USAGE
}

# build_binary SVC TAG: release build with the version baked in, copied to .build/bin/.
build_binary() {
    local svc="$1" tag="$2" root target
    root="$(repo_root)"
    target="${CARGO_TARGET_DIR:-$root/target}"
    if [[ -z "$NO_CARGO" ]]; then
        need cargo "install the Rust toolchain (rustup)"
        log "cargo build --release -p ${svc} (APP_VERSION=${tag})"
        (cd "$root" && APP_VERSION="$tag" cargo build --release --locked -p "$svc") >&2 \
            || die "cargo build of ${svc} failed"
    fi
    [[ -x "$target/release/$svc" ]] || die "binary ${target}/release/${svc} not found"
    mkdir -p "$root/.build/bin"
    install -m 0755 "$target/release/$svc" "$root/.build/bin/$svc"
}

# build_image SVC TAG IMAGE
build_image() {
    local svc="$1" tag="$2" image="$3" root
    root="$(repo_root)"
    if [[ -f "$root/services/$svc/Dockerfile" ]]; then
        log "docker build ${image} (services/${svc}/Dockerfile)"
        docker build -q -t "$image" --build-arg "VERSION=${tag}" --build-arg "NGINX_IMAGE=${NGINX_IMAGE}" \
            --build-arg "BASE_IMAGE=${BASE_IMAGE}" -f "$root/services/$svc/Dockerfile" "$root/services/$svc" >/dev/null \
            || die "docker build of ${svc} failed"
    else
        [[ -f "$root/services/$svc/Cargo.toml" ]] || die "unknown service '${svc}' (no services/${svc})"
        build_binary "$svc" "$tag"
        log "docker build ${image} (root Dockerfile)"
        docker build -q -t "$image" --build-arg "SERVICE=${svc}" --build-arg "VERSION=${tag}" \
            --build-arg "BASE_IMAGE=${BASE_IMAGE}" -f "$root/Dockerfile" "$root" >/dev/null \
            || die "docker build of ${svc} failed"
    fi
}

NO_CARGO=""
BASE_IMAGE="debian:bookworm-slim"
NGINX_IMAGE="nginx:1.27-bookworm"

main() {
    local registry="${REGISTRY:-$STACKSHIP_REGISTRY_ADDR}" tag="" push="" services=() svc image
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --registry) [[ $# -ge 2 ]] || die "--registry needs a value"; registry="$2"; shift ;;
            --tag) [[ $# -ge 2 ]] || die "--tag needs a value"; tag="$2"; shift ;;
            --push) push=1 ;;
            --base-image) [[ $# -ge 2 ]] || die "--base-image needs a value"; BASE_IMAGE="$2"; shift ;;
            --nginx-image) [[ $# -ge 2 ]] || die "--nginx-image needs a value"; NGINX_IMAGE="$2"; shift ;;
            --no-cargo) NO_CARGO=1 ;;
            -h | --help) usage; return 0 ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) services+=("$1") ;;
        esac
        shift
    done
    [[ ${#services[@]} -gt 0 ]] || services=("${IMAGE_SERVICES[@]}")
    if [[ -z "$tag" ]]; then
        tag="$("$(repo_root)/scripts/ci/image-tag.sh")" || die "cannot compute the image tag"
    fi
    [[ "$tag" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die "'${tag}' is not a valid image tag"
    need docker "install docker.io"
    for svc in "${services[@]}"; do
        image="${registry}/${STACKSHIP_PROJECT}/${svc}:${tag}"
        build_image "$svc" "$tag" "$image"
        if [[ -n "$push" ]]; then
            log "docker push ${image}"
            docker push -q "$image" >/dev/null || die "docker push ${image} failed (logged in to ${registry}?)"
        fi
        printf '%s\n' "$image"
    done
}

main "$@"
