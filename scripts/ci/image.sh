#!/usr/bin/env bash
# The image-<service> job: builds one service's image from the build job's binaries (with
# services/<svc>/Dockerfile, else the root Dockerfile), tags it YYYYMMDD_<sha8>
# (scripts/ci/image-tag.sh), pushes it to $CI_REGISTRY_IMAGE/<svc>, and leaves
# BUILT_<SVC>_TAG=<tag> in built-image.env (a dotenv report: dev-deploy deploys it).
# Then it posts an MR note: the service, the tag and the pin line for images.env, or "build
# failed" with the job's URL. The job's exit status is the build's: a note that cannot be
# posted is a warning, never a failed build hidden or a good one failed.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/ci/image.sh SERVICE

Builds and pushes $CI_REGISTRY_IMAGE/SERVICE:<tag> and posts the result as an MR note.
Needs: CI_REGISTRY, CI_REGISTRY_USER, CI_REGISTRY_PASSWORD, CI_REGISTRY_IMAGE (the project
path must end in /stackship: the stack files name <registry>/stackship/<service>), and for a
Rust service its release binary in ${CARGO_TARGET_DIR:-target}/release (build-lint-test).
Optional: MR_NOTE_TOKEN (see scripts/ci/mr-note.sh).
USAGE
}

SERVICE=""
TAG=""
IMAGE=""

# build_and_push: everything that decides the job's result.
build_and_push() {
    local root registry
    root="$(repo_root)"
    [[ -n "${CI_REGISTRY:-}" && -n "${CI_REGISTRY_USER:-}" && -n "${CI_REGISTRY_PASSWORD:-}" ]] \
        || die "CI_REGISTRY, CI_REGISTRY_USER and CI_REGISTRY_PASSWORD must be set (GitLab sets them when the registry is enabled)"
    [[ -n "${CI_REGISTRY_IMAGE:-}" ]] || die "CI_REGISTRY_IMAGE is not set"
    [[ "$CI_REGISTRY_IMAGE" == */"${STACKSHIP_PROJECT}" ]] \
        || die "CI_REGISTRY_IMAGE '${CI_REGISTRY_IMAGE}' does not end in /${STACKSHIP_PROJECT}: the stack files pull <registry>/${STACKSHIP_PROJECT}/<service>"
    registry="${CI_REGISTRY_IMAGE%/"${STACKSHIP_PROJECT}"}"
    need docker "the job image must have the docker CLI"
    log "docker login ${CI_REGISTRY} as ${CI_REGISTRY_USER}"
    printf '%s' "$CI_REGISTRY_PASSWORD" \
        | docker login --username "$CI_REGISTRY_USER" --password-stdin "$CI_REGISTRY" >/dev/null \
        || die "docker login ${CI_REGISTRY} failed"
    REGISTRY="$registry" "$root/scripts/ci/build-images.sh" --registry "$registry" --tag "$TAG" \
        --no-cargo --push "$SERVICE" >/dev/null || die "building ${IMAGE} failed"
    log "pushed ${IMAGE}"
}

# note_body RESULT: the MR note's Markdown.
note_body() {
    local var
    var="$(tr 'a-z-' 'A-Z_' <<<"$SERVICE")_TAG"
    if [[ "$1" == ok ]]; then
        cat <<NOTE
**Image built: \`${SERVICE}\`** — tag \`${TAG}\`

\`${IMAGE}\`

To deploy it, pin it in \`deploy-manifests/<env>/images.env\`:

\`\`\`
${var}=${TAG}
\`\`\`

(\`scripts/pin-image.sh dev ${SERVICE} ${TAG}\`; dev-deploy in this MR deploys it without a pin.)
NOTE
    else
        cat <<NOTE
**Image \`${SERVICE}\`: build failed** (tag \`${TAG:-unknown}\`)

Job: ${CI_JOB_URL:-(no job URL)}
NOTE
    fi
}

main() {
    case "${1:-}" in
        -h | --help) usage; return 0 ;;
        "") usage >&2; die "missing SERVICE" ;;
    esac
    [[ $# -eq 1 ]] || { usage >&2; die "expected exactly one SERVICE"; }
    SERVICE="$1"
    [[ "$SERVICE" =~ ^[a-z][a-z0-9-]*$ && -d "$(repo_root)/services/${SERVICE}" ]] \
        || die "unknown service '${SERVICE}' (no services/${SERVICE})"
    TAG="$("$(repo_root)/scripts/ci/image-tag.sh")" || die "cannot compute the image tag"
    IMAGE="${CI_REGISTRY_IMAGE:-}/${SERVICE}:${TAG}"
    local rc=0 var
    # In a subshell: its die() ends the build, not this script, which still posts the note.
    # (set -e does not apply inside `( ) ||`: every step in build_and_push ends in `|| die`.)
    (build_and_push) || rc=$?
    if [[ "$rc" -eq 0 ]]; then
        var="BUILT_$(tr 'a-z-' 'A-Z_' <<<"$SERVICE")_TAG"
        printf '%s=%s\n' "$var" "$TAG" > built-image.env
        note_body ok | "$(repo_root)/scripts/ci/mr-note.sh" - \
            || warn "the MR note could not be posted; the image ${IMAGE} is built and pushed"
    else
        note_body failed | "$(repo_root)/scripts/ci/mr-note.sh" - \
            || warn "the MR note could not be posted either"
        die "image ${SERVICE} FAILED (exit ${rc})"
    fi
}

main "$@"
