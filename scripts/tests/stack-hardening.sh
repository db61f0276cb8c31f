# End-to-end tests of the stack's hardening, sourced by scripts/tests/test-stack.sh: every service of
# the running prod and dev stacks, as `docker service inspect`, `docker inspect` and /proc report
# it (scripts/tests/hardening_check.py), and the deploy's refusal of a third-party image that is
# not pinned by digest.
# shellcheck shell=bash

HARDENING_CHECK="$(repo_root)/scripts/tests/hardening_check.py"

# env_images ENV OUT: the images ENV's deployed release says it deploys (stackship deploy
# --print-images, with its deploy.env and pins): `<service> <image> (<source>)` lines.
env_images() {
    "$(env_deploy_dir "$1")/current/stackship" deploy "$1" --release "$(env_deploy_dir "$1")/current" --print-images > "$2" \
        || fail "stackship deploy $1 --print-images failed"
}

# env_publish ENV: the one service that may publish host ports, and its ports.
env_publish() {
    case "$1" in
        prod) printf 'edge=80,443\n' ;;
        dev) printf 'edge=%s\n' "$STACKSHIP_DEV_HTTP_PORT" ;;
    esac
}

# service_versions ENV...: "service version-index" of every service of the stacks.
service_versions() {
    local env svc
    for env in "$@"; do
        for svc in $(docker stack services "$(stack_name "$env")" --format '{{.Name}}' | sort); do
            printf '%s %s\n' "$svc" "$(docker service inspect "$svc" --format '{{.Version.Index}}')"
        done
    done
}

# Every service of both stacks: non-root (spec, container, every process's uids and gids),
# read-only root filesystem, cap_drop ALL with nothing added and no capability left in any
# process, memory/CPU/pids limits, a healthcheck (and healthy), ports only on the edge (host
# mode, unprivileged target), no Docker socket, and the image stackship deploy names: the third-party
# ones exactly the digest pinned.
test_stack_is_hardened() {
    local env images out count
    images="$(mktemp)"
    out="$(mktemp)"
    for env in prod dev; do
        env_images "$env" "$images"
        for svc in postgres nginx-proxy edge; do
            grep -qE "^${svc} [^ ]+@sha256:[0-9a-f]{64} " "$images" \
                || fail "${env}: stackship deploy does not name ${svc}'s image by digest: $(grep "^${svc} " "$images")"
        done
        count="$(docker stack services "$(stack_name "$env")" -q | wc -l)"
        ((count >= 4)) || fail "${env}: only ${count} services in the stack"
        python3 "$HARDENING_CHECK" check "$(stack_name "$env")" --images "$images" \
            --publish "$(env_publish "$env")" > "$out" \
            || fail "${env}: $(wc -l < "$out") findings:"$'\n'"$(sed 's/^/      /' "$out")"
        log "${env}: ${count} services hardened"
    done
    rm -f "$images" "$out"
}

# The checks of stack_is_hardened can fail: each property removed in turn from every service's
# real inspect output is reported (and the real output is not).
test_hardening_checks_can_fail() {
    local env images out
    images="$(mktemp)"
    out="$(mktemp)"
    for env in prod dev; do
        env_images "$env" "$images"
        python3 "$HARDENING_CHECK" selftest "$(stack_name "$env")" --images "$images" \
            --publish "$(env_publish "$env")" > "$out" \
            || fail "${env}: the checker missed:"$'\n'"$(sed 's/^/      /' "$out")"
    done
    rm -f "$images" "$out"
}

# A third-party image without a digest stops stackship deploy before anything changes: the error names
# the variable, where it came from and how to pin; no service of either stack is updated.
test_unpinned_image_refused() {
    local pinned before after out rc=0
    pinned="$(docker service inspect "${PROD_STACK}_postgres" --format '{{.Spec.TaskTemplate.ContainerSpec.Image}}')"
    [[ "$pinned" == *@sha256:* ]] || fail "prod postgres runs ${pinned}, not a digest (control)"
    before="$(service_versions prod dev; all_running_tasks "$PROD_STACK")"
    out="$(mktemp)"
    deploy_prod POSTGRES_IMAGE="${pinned%@*}" > "$out" 2>&1 || rc=$?
    ((rc != 0)) || fail "stackship deploy accepted POSTGRES_IMAGE=${pinned%@*}"
    grep -q "POSTGRES_IMAGE '${pinned%@*}' (POSTGRES_IMAGE from the environment) is not pinned by digest" "$out" \
        || fail "the error does not name the variable and its source: $(tail -n 3 "$out")"
    grep -qF "scripts/pin-image.sh prod postgres ${pinned%@*}" "$out" || fail "the error does not say how to pin"
    ! grep -q "holding the prod deploy lock\|docker stack deploy" "$out" || fail "stackship deploy got past its checks: $(cat "$out")"
    # The same with nginx, a tag without a registry: refused too.
    rc=0
    deploy_prod NGINX_IMAGE="nginx:1.27-bookworm" > "$out" 2>&1 || rc=$?
    ((rc != 0)) || fail "stackship deploy accepted NGINX_IMAGE=nginx:1.27-bookworm"
    grep -q "NGINX_IMAGE 'nginx:1.27-bookworm' (NGINX_IMAGE from the environment) is not pinned by digest" "$out" \
        || fail "the nginx error does not name the variable: $(tail -n 3 "$out")"
    after="$(service_versions prod dev; all_running_tasks "$PROD_STACK")"
    [[ "$before" == "$after" ]] || fail "services changed:"$'\n'"${before}"$'\n'"->"$'\n'"${after}"
    # Control: the digest-pinned reference passes the same check.
    POSTGRES_IMAGE="$pinned" "${PROD_DIR}/current/stackship" deploy prod --release "${PROD_DIR}/current" --print-images > "$out" 2>&1 \
        || fail "stackship deploy --print-images refuses the pinned ${pinned}: $(tail -n 2 "$out")"
    rm -f "$out"
}

STACK_TESTS+=(stack_is_hardened hardening_checks_can_fail unpinned_image_refused)
