#!/usr/bin/env bash
# Brings the whole system up on this machine, from nothing, the way production deploys it:
# Docker engine, single-node swarm, a local registry with login standing in for GitLab
# Registry, base and stand-in images, the service images built and pushed with their tag,
# secrets, the copy step into /data/stackship/deploy, and stackship deploy for each environment.
# Safe to re-run: every step checks before it acts. scripts/down.sh undoes it.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/up.sh [--prod | --dev | --all] [--help]

Brings up the stack on this machine (root, Debian) and prints its URLs.
  --prod   the prod stack (default): https://localhost (http://localhost redirects)
  --dev    the dev stack: http://localhost:8880
  --all    both, side by side

Honours CARGO_TARGET_DIR (default: target/ in the repository).
State lives under /data/stackship (registry, secrets, deploy directories, database data).
USAGE
}

ensure_tools() {
    apt_install ca-certificates curl openssl apache2-utils docker-registry iproute2 jq
    need cargo "install the Rust toolchain (rustup); the service binaries are built on this machine"
    need git
}

# ensure_registry: docker-registry on 127.0.0.1:5000 with htpasswd auth, and the engine logged in.
ensure_registry() {
    local dir="$STACKSHIP_REGISTRY_DIR" status
    mkdir -p "$dir/data"
    chmod 0700 "$dir"
    if [[ ! -s "$dir/password" ]]; then
        (umask 077 && openssl rand -hex 24 > "$dir/password")
    fi
    if [[ ! -s "$dir/htpasswd" ]] || ! htpasswd -vb "$dir/htpasswd" "$STACKSHIP_REGISTRY_USER" "$(registry_password)" >/dev/null 2>&1; then
        htpasswd -Bbn "$STACKSHIP_REGISTRY_USER" "$(registry_password)" > "$dir/htpasswd"
    fi
    if [[ ! -s "$dir/http-secret" ]]; then
        (umask 077 && openssl rand -hex 32 > "$dir/http-secret")
    fi
    cat > "$dir/config.yml" <<CONFIG
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: ${dir}/data
  delete:
    enabled: true
http:
  addr: ${STACKSHIP_REGISTRY_ADDR}
  secret: $(cat "$dir/http-secret")
auth:
  htpasswd:
    realm: ${STACKSHIP_PROJECT}-registry
    path: ${dir}/htpasswd
CONFIG
    status="$(registry_status)"
    case "$status" in
        401) ;;
        000)
            log "starting the local registry on ${STACKSHIP_REGISTRY_ADDR} (log: ${dir}/registry.log)"
            spawn_daemon "$dir/registry.log" docker-registry serve "$dir/config.yml"
            echo "$SPAWNED_PID" > "$dir/registry.pid"
            wait_until 30 "the registry to answer" registry_up
            ;;
        *) die "${STACKSHIP_REGISTRY_ADDR} answers HTTP ${status} without auth: another registry holds the port" ;;
    esac
    log "docker login ${STACKSHIP_REGISTRY_ADDR}"
    registry_password | docker login --username "$STACKSHIP_REGISTRY_USER" --password-stdin \
        "$STACKSHIP_REGISTRY_ADDR" >/dev/null 2>&1 || die "docker login to the local registry failed"
}

# resolve_third_party_images: real images when pullable, else stand-ins pushed to the registry;
# POSTGRES_IMAGE, NGINX_IMAGE, HAPROXY_IMAGE and PROMETHEUS_IMAGE by digest (repo:tag@sha256:...), as stackship
# requires.
resolve_third_party_images() {
    local line key value
    BASE_IMAGE="" POSTGRES_IMAGE="" NGINX_IMAGE="" HAPROXY_IMAGE="" PROMETHEUS_IMAGE=""
    while IFS= read -r line; do
        key="${line%%=*}"
        value="${line#*=}"
        case "$key" in
            BASE_IMAGE) BASE_IMAGE="$value" ;;
            POSTGRES_IMAGE) POSTGRES_IMAGE="$(digest_ref "$(publish_standin "$value")")" ;;
            NGINX_IMAGE) NGINX_IMAGE="$(digest_ref "$(publish_standin "$value")")" ;;
            HAPROXY_IMAGE) HAPROXY_IMAGE="$(digest_ref "$(publish_standin "$value")")" ;;
            PROMETHEUS_IMAGE) PROMETHEUS_IMAGE="$(digest_ref "$(publish_standin "$value")")" ;;
        esac
    done < <("$(repo_root)/scripts/base-images.sh")
    [[ -n "$BASE_IMAGE" && -n "$POSTGRES_IMAGE" && -n "$NGINX_IMAGE" && -n "$HAPROXY_IMAGE" && -n "$PROMETHEUS_IMAGE" ]] \
        || die "base-images.sh gave no image names"
    log "third-party images: ${POSTGRES_IMAGE} ${NGINX_IMAGE} ${HAPROXY_IMAGE} ${PROMETHEUS_IMAGE}"
}

# digest_ref IMAGE: IMAGE (repo:tag) as repo:tag@sha256:<digest>, the digest its registry
# serves it under, as the engine recorded it when it pulled or pushed the image.
digest_ref() {
    local image="$1" repo digest
    repo="$image"
    [[ "${image##*/}" != *:* ]] || repo="${image%:*}"
    digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$image" \
        | awk -F@ -v repo="$repo" '$1 == repo || "docker.io/library/" $1 == repo || "docker.io/" $1 == repo { print $2; exit }')"
    [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "no registry digest recorded for ${image} (was it pulled or pushed?)"
    printf '%s@%s\n' "$image" "$digest"
}

# publish_standin IMAGE: stand-ins go to the local registry so every swarm node can pull them;
# real images are used as they are.
publish_standin() {
    local image="$1" target
    if [[ "$image" != "${STACKSHIP_PROJECT}-standin/"* ]]; then
        printf '%s\n' "$image"
        return 0
    fi
    target="${STACKSHIP_REGISTRY_ADDR}/${image}"
    log "pushing stand-in ${image} to the local registry"
    docker tag "$image" "$target"
    docker push -q "$target" >/dev/null || die "docker push ${target} failed"
    warn "the stack will run the STAND-IN ${target}"
    printf '%s\n' "$target"
}

build_and_push() {
    local root
    root="$(repo_root)"
    TAG="$("$root/scripts/ci/image-tag.sh")"
    # Statically linked, as the pipeline's build job makes them for the manager (one build
    # serves this machine's deploys and the SSH deploy test).
    log "building the deploy tools (config-hasher, rollout-watcher, stackship) into $(tools_dir)"
    "$root/scripts/ci/build-tools.sh" --out "$(tools_dir)" >/dev/null \
        || die "building the deploy tools failed"
    log "building service images with tag ${TAG}"
    REGISTRY="$STACKSHIP_REGISTRY_ADDR" "$root/scripts/ci/build-images.sh" --tag "$TAG" --push \
        --base-image "$BASE_IMAGE" --nginx-image "$NGINX_IMAGE" >/dev/null
}

# ensure_secrets ENV: the database password (stackship secret init: generated into Swarm, never on
# disk) and, for prod, a self-signed certificate in the deploy directory's secrets/, the source
# of the content-named TLS secrets.
ensure_secrets() {
    local env="$1" legacy="${STACKSHIP_LEGACY_SECRETS_DIR}/$1" dir init=(init "$1" db-password)
    dir="$(env_deploy_dir "$env")/secrets"
    install -d -m 0700 "$dir"
    # An older bring-up kept the password in a file: its database was initialised with it.
    if [[ -s "$legacy/db_password" ]]; then
        init+=(--file "$legacy/db_password")
    fi
    "$(tools_dir)/stackship" secret "${init[@]}" || die "creating the ${env} database password failed"
    rm -f "$legacy/db_password"
    if [[ "$env" == prod ]]; then
        if [[ -s "$legacy/tls.crt" && -s "$legacy/tls.key" && ! -s "$dir/tls.crt" ]]; then
            mv "$legacy/tls.key" "$dir/tls.key"
            mv "$legacy/tls.crt" "$dir/tls.crt"
        fi
        if [[ ! -s "$dir/tls.crt" || ! -s "$dir/tls.key" ]]; then
            log "creating a self-signed certificate for localhost"
            (umask 077 && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                -days 825 -subj "/CN=localhost" \
                -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
                -keyout "$dir/tls.key" -out "$dir/tls.crt" 2>/dev/null) || die "openssl req failed"
            chmod 0644 "$dir/tls.crt"
        fi
    fi
    rmdir "$legacy" "$STACKSHIP_LEGACY_SECRETS_DIR" 2>/dev/null || true
}

# check_ports ENV: the edge's host ports are free or already Docker's (a previous bring-up).
check_ports() {
    local port holders
    local -a ports=("$STACKSHIP_DEV_HTTP_PORT")
    [[ "$1" == prod ]] && ports=(80 443)
    for port in "${ports[@]}"; do
        holders="$(ss -Hltnp "sport = :${port}" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)".*/\1/p' | sort -u | grep -vx docker-proxy || true)"
        [[ -z "$holders" ]] || die "host port ${port} (${1} edge) is taken by: ${holders//$'\n'/ }; stop it first"
    done
}

# deploy_env ENV: the copy step, local settings for the deploy, then stackship deploy.
deploy_env() {
    local env="$1" root dir
    root="$(repo_root)"
    dir="$(env_deploy_dir "$env")"
    check_ports "$env"
    ensure_secrets "$env"
    "$root/scripts/ci/copy-manifests.sh" "--$env" --dest "$dir"
    cat > "$dir/deploy.env" <<ENVFILE
# Written by scripts/up.sh: the local registry and the images this machine uses (the
# third-party ones by digest, as stackship requires; they override the pins in images.env).
REGISTRY=${STACKSHIP_REGISTRY_ADDR}
IMAGE_TAG=${TAG}
POSTGRES_IMAGE=${POSTGRES_IMAGE}
NGINX_IMAGE=${NGINX_IMAGE}
HAPROXY_IMAGE=${HAPROXY_IMAGE}
ENVFILE
    # Only where the stack file runs Prometheus: stackship refuses settings a stack has no use for.
    if grep -q 'PROMETHEUS_IMAGE' "$root/docker-compose.${env}.yaml"; then
        printf 'PROMETHEUS_IMAGE=%s\n' "$PROMETHEUS_IMAGE" >> "$dir/deploy.env"
    fi
    log "stackship deploy ${env}"
    REGISTRY_USER="$STACKSHIP_REGISTRY_USER" REGISTRY_PASSWORD="$(registry_password)" \
        "$dir/current/stackship" deploy "$env" --release "$dir/current" || die "deploy of ${env} failed"
}

# check_answers ENV: the proxy serves the frontend and the backend's version.
check_answers() {
    local env="$1" url version
    url="$(env_url "$env")"
    wait_until 60 "${url}/api/service/version" curl_env "$env" -fo /dev/null "${url}/api/service/version"
    version="$(curl_env "$env" -f "${url}/api/service/version")"
    log "${env}: ${url}/api/service/version -> ${version}"
}

main() {
    local envs=(prod) started=$SECONDS env
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --prod) envs=(prod) ;;
            --dev) envs=(dev) ;;
            --all) envs=(dev prod) ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    require_root
    log "step 1/6: tools and Docker engine"
    ensure_tools
    ensure_docker
    log "step 2/6: swarm"
    ensure_swarm
    ensure_placement_labels
    log "step 3/6: local registry"
    ensure_registry
    log "step 4/6: base and third-party images"
    resolve_third_party_images
    log "step 5/6: service images"
    build_and_push
    log "step 6/6: deploy ${envs[*]}"
    for env in "${envs[@]}"; do
        deploy_env "$env"
    done
    for env in "${envs[@]}"; do
        check_answers "$env"
    done
    log "up in $((SECONDS - started))s"
    for env in "${envs[@]}"; do
        printf '%s: %s/\n' "$env" "$(env_url "$env")"
    done
    if [[ " ${envs[*]} " == *" prod "* ]]; then
        printf 'prod certificate (self-signed): %s (trust it: curl --cacert %s https://localhost/)\n' \
            "$STACKSHIP_PROD_CERT" "$STACKSHIP_PROD_CERT"
    fi
}

main "$@"
