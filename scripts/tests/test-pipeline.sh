#!/usr/bin/env bash
# Tests of the GitLab pipeline without a GitLab:
#   1. .gitlab-ci.yml against GitLab's CI schema (check-jsonschema --builtin-schema vendor.gitlab-ci)
#      and listed without errors by gitlab-ci-local;
#   2. the label matrix: for each MR label set / push / tag, which jobs exist and whether they
#      are manual or automatic, asserted through `gitlab-ci-local --list-csv`;
#   3. the CI job scripts (scripts/ci/) against a local HTTP server standing in for the GitLab
#      API and a stub docker: MR notes (method, path, token header, body), the token never in a
#      job log, a failing note never hides a failed build, a missing token skips with a warning;
#   4. the image pins (scripts/pin-image.sh, stackship deploy --print-images);
#   5. the deploy job's MR summary (rollout-note.sh) and the checks ssh-deploy.sh makes before
#      it connects (the SSH end-to-end test is scripts/tests/test-ssh-deploy.sh);
#   6. image tags: a tree with uncommitted changes never gets a clean commit's tag.
# Prints one PASS/FAIL line per check and "N passed, M failed"; exits 1 when any failed.
# Installs its tools into a cache outside the repository (gitlab-ci-local from npm,
# check-jsonschema from PyPI into a venv).
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

# shellcheck source=scripts/tests/harness.sh
source "$(dirname "${BASH_SOURCE[0]}")/harness.sh"
# shellcheck source=scripts/tests/pipeline-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/pipeline-tools.sh"

usage() {
    cat <<USAGE
Usage: scripts/tests/test-pipeline.sh [--only SECTION] [--help]

Tests .gitlab-ci.yml and the CI job scripts without a GitLab (sections: schema, matrix, note,
pins, deploy, tag; default all). Tools are installed into ${STACKSHIP_CACHE} (override with STACKSHIP_CACHE).
Prints PASS/FAIL per check and "N passed, M failed"; exit status 1 when any check failed.
USAGE
}

WORK=""
ROOT="$(repo_root)"


GCL=""
VENV=""

ensure_tools() {
    need_cmd jq jq
    need_cmd curl curl
    ensure_gitlab_ci_local
    ensure_check_jsonschema
}

# gcl_lists_pipeline: gitlab-ci-local lists the pipeline of a push, with no error in its output.
gcl_lists_pipeline() {
    local out rc=0
    out="$(cd "$GCL_REPO" && GCL_IGNORE_PREDEFINED_VARS=CI_PIPELINE_SOURCE "$GCL" --list-csv \
        --variable CI_PIPELINE_SOURCE=push 2>&1)" || rc=$?
    [[ "$rc" -eq 0 && "$out" == *"name;description;stage;when"* && "$out" != *rror* ]] && return 0
    printf '%s\n' "$out" | sed 's/^/    | /' >&2
    fail "gitlab-ci-local exited ${rc}"
}

section_schema() {
    check "schema: .gitlab-ci.yml passes GitLab's CI JSON schema (check-jsonschema vendor.gitlab-ci)" \
        "$VENV/bin/check-jsonschema" --builtin-schema vendor.gitlab-ci "$ROOT/.gitlab-ci.yml"
    check "schema: gitlab-ci-local ${GCL_VERSION} lists the pipeline without errors" gcl_lists_pipeline
    # A broken file must fail the same checks (the checks can fail).
    printf 'build-lint-test:\n  stage: build\n  script: true\n  when: sometimes\n' > "$WORK/broken.yml"
    check "schema: a job with 'when: sometimes' is rejected" \
        refused "$VENV/bin/check-jsonschema" --builtin-schema vendor.gitlab-ci "$WORK/broken.yml"
    local name
    for name in build-lint-test image-backend image-frontend dev-deploy prod-deploy review-deploy review-stop; do
        check "schema: job ${name} is defined" grep -q "^${name}:" "$ROOT/.gitlab-ci.yml"
    done
}

# mr CASE LABELS EXPECTED...: an MR pipeline with these labels has exactly these jobs. Every
# MR pipeline has review-deploy and review-stop: manual unless EXPECTED says otherwise.
mr() {
    local name="$1" labels="$2" got want
    shift 2
    [[ " $* " == *" review-deploy="* ]] || set -- "$@" review-deploy=manual
    [[ " $* " == *" review-stop="* ]] || set -- "$@" review-stop=manual
    want="$(printf '%s\n' "$@" | sort)"
    got="$(pipeline_jobs CI_PIPELINE_SOURCE=merge_request_event CI_COMMIT_BRANCH= \
        CI_MERGE_REQUEST_IID=7 "CI_MERGE_REQUEST_LABELS=${labels}")" || got="gitlab-ci-local failed: $(cat "$WORK/gcl.err")"
    expect_eq "matrix: MR with labels '${labels}' (${name})" "${want//$'\n'/ }" "${got//$'\n'/ }"
}

# push CASE EXPECTED_OR_EMPTY VAR=VALUE...: a push pipeline's jobs.
push() {
    local name="$1" want="$2" got
    shift 2
    got="$(pipeline_jobs "$@")" || got="gitlab-ci-local failed: $(cat "$WORK/gcl.err")"
    want="$(tr ' ' '\n' <<<"$want" | sed '/^$/d' | sort)"
    expect_eq "matrix: ${name}" "${want//$'\n'/ }" "${got//$'\n'/ }"
}

# section_review_jobs: the environment settings GitLab needs for review stacks (--list-csv does
# not show them): review-deploy names review/<iid> with its URL, on_stop and auto_stop_in;
# review-stop stops that environment, by hand only, with the build job's binaries (its stackship).
section_review_jobs() {
    local got
    got="$("$VENV/bin/python" - "$ROOT/.gitlab-ci.yml" <<'PY'
import sys
from ruamel.yaml import YAML
doc = YAML(typ="safe").load(open(sys.argv[1]))
d, s = doc["review-deploy"], doc["review-stop"]
de, se = d["environment"], s["environment"]
print("deploy", de["name"], de["url"], de["on_stop"], de.get("auto_stop_in", "-"),
      d["artifacts"]["reports"]["dotenv"])
print("stop", se["name"], se["action"], " ".join(r.get("when", "auto") for r in s["rules"]),
      s["dependencies"], s["resource_group"] == d["resource_group"])
PY
)" || got="cannot read .gitlab-ci.yml"
    # shellcheck disable=SC2016 # the YAML's own variable references, literally
    expect_eq "matrix: review-deploy is the environment review/<iid>, URL from its dotenv, on_stop review-stop, auto-stopped" \
        'deploy review/${CI_MERGE_REQUEST_IID} $REVIEW_URL review-stop 3 days review.env' "$(sed -n 1p <<<"$got")"
    # shellcheck disable=SC2016 # likewise
    expect_eq "matrix: review-stop is manual only, environment action stop, build-lint-test's artifacts only, same resource group" \
        "stop review/\${CI_MERGE_REQUEST_IID} stop manual ['build-lint-test'] True" "$(sed -n 2p <<<"$got")"
}

# broken_dependency_caught: a prod-deploy that needs dev-deploy, which does not run on the
# default branch, fails the dependency check, which names both jobs.
broken_dependency_caught() {
    if gcl_dependencies "$GCL_REPO/broken-deps" CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH=main CI_DEFAULT_BRANCH=main; then
        fail "gitlab-ci-local --validate-dependency-chain passed"
    fi
    grep -q 'dev-deploy.*prod-deploy\|prod-deploy.*dev-deploy' <<<"$GCL_OUT" \
        || fail "its output does not name dev-deploy and prod-deploy: ${GCL_OUT}"
}

section_matrix() {
    local all_manual=(build-lint-test=manual image-backend=manual image-frontend=manual
        dev-deploy=manual prod-deploy=manual)
    mr "nothing automatic" "" "${all_manual[@]}"
    mr "tests only" "tests" build-lint-test=auto image-backend=manual image-frontend=manual \
        dev-deploy=manual prod-deploy=manual
    mr "one image" "build-backend" build-lint-test=auto image-backend=auto image-frontend=manual \
        dev-deploy=manual prod-deploy=manual
    mr "two images" "build-backend,build-frontend" build-lint-test=auto image-backend=auto \
        image-frontend=auto dev-deploy=manual prod-deploy=manual
    mr "frontend only" "build-frontend" build-lint-test=auto image-backend=manual \
        image-frontend=auto dev-deploy=manual prod-deploy=manual
    mr "lookalike labels build nothing" "rebuild-backend-old,build-backends,xbuild-frontend" \
        "${all_manual[@]}"
    mr "lookalike deploy labels" "prod-deploy-later,dev-deployment" "${all_manual[@]}"
    mr "labels with other labels around" "bug,build-frontend,tests,docs" build-lint-test=auto \
        image-backend=manual image-frontend=auto dev-deploy=manual prod-deploy=manual
    mr "prod deploy" "prod-deploy" build-lint-test=auto image-backend=manual \
        image-frontend=manual dev-deploy=manual prod-deploy=auto
    mr "dev deploy" "dev-deploy" build-lint-test=auto image-backend=manual \
        image-frontend=manual dev-deploy=auto prod-deploy=manual
    mr "build and deploy to dev" "build-backend,dev-deploy" build-lint-test=auto \
        image-backend=auto image-frontend=manual dev-deploy=auto prod-deploy=manual
    mr "review stack" "review-deploy" build-lint-test=auto image-backend=manual \
        image-frontend=manual dev-deploy=manual prod-deploy=manual review-deploy=auto review-stop=manual
    mr "build and review" "build-frontend,review-deploy" build-lint-test=auto image-backend=manual \
        image-frontend=auto dev-deploy=manual prod-deploy=manual review-deploy=auto review-stop=manual
    mr "lookalike review labels" "review-deploy-later,no-review-deploy" "${all_manual[@]}"
    # The workstation command a user asks the same question with.
    "$ROOT/scripts/pipeline-jobs.sh" build-backend dev-deploy > "$WORK/jobs.out" 2>"$WORK/jobs.err" || true
    expect_eq "matrix: scripts/pipeline-jobs.sh LABEL... lists the MR's jobs and when" \
        "build-lint-test auto|dev-deploy auto|image-backend auto|image-frontend manual|prod-deploy manual|review-deploy manual|review-stop manual" \
        "$(awk '{ print $1, $2 }' "$WORK/jobs.out" | paste -sd'|')"
    "$ROOT/scripts/pipeline-jobs.sh" --main > "$WORK/jobs.out" 2>"$WORK/jobs.err" || true
    expect_contains "matrix: scripts/pipeline-jobs.sh --main: a merge to main deploys prod" "prod-deploy      auto" "$WORK/jobs.out"
    "$ROOT/scripts/pipeline-jobs.sh" --var CI_PIPELINE_SOURCE=push --var CI_COMMIT_BRANCH=feature \
        --var CI_DEFAULT_BRANCH=main > "$WORK/jobs.out" 2>"$WORK/jobs.err" || true
    expect_eq "matrix: scripts/pipeline-jobs.sh says when GitLab makes no pipeline" "no pipeline" "$(cat "$WORK/jobs.out")"
    section_review_jobs
    push "push to the default branch deploys prod, not dev, no review stack" \
        "build-lint-test=auto image-backend=manual image-frontend=manual prod-deploy=auto" \
        CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH=main CI_DEFAULT_BRANCH=main
    push "feature-branch push without an MR: no pipeline" "" \
        CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH=feature/x CI_DEFAULT_BRANCH=main
    push "feature-branch push with an open MR: no duplicate pipeline" "" \
        CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH=feature/x CI_DEFAULT_BRANCH=main \
        'CI_OPEN_MERGE_REQUESTS=group/stackship!7'
    push "tag pipeline builds and tests, deploys nothing" \
        "build-lint-test=auto image-backend=manual image-frontend=manual" \
        CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH= CI_COMMIT_TAG=v1.0.0 CI_DEFAULT_BRANCH=main
    push "scheduled pipeline on the default branch does not deploy" \
        "build-lint-test=auto image-backend=manual image-frontend=manual" \
        CI_PIPELINE_SOURCE=schedule CI_COMMIT_BRANCH=main CI_DEFAULT_BRANCH=main
    # Every job's `dependencies` exist in the pipeline it runs in.
    local vars
    for vars in "CI_PIPELINE_SOURCE=merge_request_event CI_MERGE_REQUEST_LABELS=" \
        "CI_PIPELINE_SOURCE=merge_request_event CI_MERGE_REQUEST_LABELS=build-backend,dev-deploy,prod-deploy,review-deploy" \
        "CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH=main CI_DEFAULT_BRANCH=main" \
        "CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH= CI_COMMIT_TAG=v1.0.0"; do
        # shellcheck disable=SC2086 # the words are VAR=VALUE pairs
        check "matrix: dependencies valid (${vars})" gcl_dependencies "$GCL_REPO" $vars
    done
    # prod-deploy, on the default branch, needing dev-deploy, which does not run there.
    sed '/^prod-deploy:/,/^$/ s/^  dependencies: \[build-lint-test\]$/  dependencies: [build-lint-test, dev-deploy]/' \
        "$GCL_REPO/.gitlab-ci.yml" > "$GCL_REPO/broken-deps/.gitlab-ci.yml"
    check "matrix: a dependency on a job absent from the pipeline is caught" broken_dependency_caught

    # Manual jobs never block an MR pipeline (allow_failure), automatic ones count.
    local blocking
    blocking="$(cd "$GCL_REPO" && GCL_IGNORE_PREDEFINED_VARS=CI_PIPELINE_SOURCE "$GCL" --list-csv \
        --variable CI_PIPELINE_SOURCE=merge_request_event 2>/dev/null \
        | awk -F';' 'NR > 1 && $4 == "manual" && $5 != "true" { print $1 }')"
    expect_eq "matrix: manual MR jobs do not block the pipeline (allow_failure)" "" "$blocking"
}

# ---- section note: the MR-note and image job scripts against a stand-in GitLab API ----

FAKE_PID=""
FAKE_PORT=""
TOKEN="glpat-test-$$-SECRETVALUE"

# start_fake_gitlab: scripts/tests/fake-gitlab-api.py on 127.0.0.1 (free port): records every
# request in $WORK/requests.jsonl, answers with the status in $WORK/status (201 when absent).
start_fake_gitlab() {
    python3 "$ROOT/scripts/tests/fake-gitlab-api.py" "$WORK" </dev/null >"$WORK/fake_gitlab.log" 2>&1 &
    FAKE_PID=$!
    wait_until 10 "the stand-in GitLab API" test -s "$WORK/port"
    FAKE_PORT="$(cat "$WORK/port")"
}

stop_fake_gitlab() {
    if [[ -n "$FAKE_PID" ]]; then
        kill "$FAKE_PID" 2>/dev/null || true
        wait "$FAKE_PID" 2>/dev/null || true
        FAKE_PID=""
    fi
}

# reset_api [STATUS]: forget recorded requests; answer STATUS from now on.
reset_api() {
    rm -f "$WORK/requests.jsonl"
    if [[ -n "${1:-}" ]]; then printf '%s\n' "$1" > "$WORK/status"; else rm -f "$WORK/status"; fi
}

request_count() { if [[ -f "$WORK/requests.jsonl" ]]; then wc -l < "$WORK/requests.jsonl"; else echo 0; fi; }

# request_field JQ: a field of the last recorded request.
request_field() { tail -n 1 "$WORK/requests.jsonl" | jq -r "$1"; }

# with_ci_env CMD...: CMD with the variables GitLab gives an MR pipeline's job.
with_ci_env() {
    env CI_API_V4_URL="http://127.0.0.1:${FAKE_PORT}/api/v4" CI_PROJECT_ID=42 CI_MERGE_REQUEST_IID=7 \
        CI_JOB_URL="https://gitlab.invalid/group/stackship/-/jobs/314" MR_NOTE_TOKEN="$TOKEN" \
        CI_COMMIT_SHA=0123456789abcdef0123456789abcdef01234567 CI_COMMIT_TIMESTAMP=2026-11-23T01:02:03+00:00 \
        CI_REGISTRY=registry.invalid:5050 CI_REGISTRY_USER=gitlab-ci-token \
        CI_REGISTRY_PASSWORD="regpass-$$-SECRET" CI_REGISTRY_IMAGE=registry.invalid:5050/group/stackship \
        "$@"
}

# make_stub_repo: a copy of the scripts and what the image build reads, so stub builds never
# touch the working tree; and a stub docker on PATH that records its calls.
make_stub_repo() {
    STUB_REPO="$WORK/repo"
    mkdir -p "$STUB_REPO/services" "$WORK/bin"
    cp -R "$ROOT/scripts" "$ROOT/Dockerfile" "$STUB_REPO/"
    cp -R "$ROOT/services/frontend" "$STUB_REPO/services/"
    cat > "$WORK/bin/docker" <<'SH'
#!/usr/bin/env bash
# Stub docker: records each call; `login` records what it read on stdin; STUB_DOCKER_FAIL=build
# makes builds fail.
printf '%s\n' "$*" >> "$STUB_LOG"
case "$1" in
    login) printf 'login-stdin:%s\n' "$(cat)" >> "$STUB_LOG" ;;
    build) [[ "${STUB_DOCKER_FAIL:-}" != build ]] || { echo "stub: build failed" >&2; exit 1; } ;;
esac
exit 0
SH
    chmod +x "$WORK/bin/docker"
}

# run_image SERVICE [ENV...]: the image job's script with a stub docker; output in $WORK/job.log.
run_image() {
    local svc="$1"
    shift
    : > "$WORK/docker.log"
    rm -f "$WORK/jobdir/built-image.env"
    mkdir -p "$WORK/jobdir"
    IMAGE_RC=0
    (cd "$WORK/jobdir" && with_ci_env env PATH="$WORK/bin:$PATH" STUB_LOG="$WORK/docker.log" "$@" \
        "$STUB_REPO/scripts/ci/image.sh" "$svc") > "$WORK/job.log" 2>&1 || IMAGE_RC=$?
}

section_note() {
    start_fake_gitlab
    local body want_tag="20261123_01234567"
    body=$'Deploy **ok**: "quotes", `code`, back\\slash, ünïcode\nsecond line'

    reset_api
    printf '%s' "$body" | with_ci_env "$ROOT/scripts/ci/mr-note.sh" - > "$WORK/note.log" 2>&1
    expect_eq "note: one request" 1 "$(request_count)"
    expect_eq "note: method POST" POST "$(request_field .method)"
    expect_eq "note: path from CI_API_V4_URL, project and MR" "/api/v4/projects/42/merge_requests/7/notes" \
        "$(request_field .path)"
    expect_eq "note: PRIVATE-TOKEN header carries the token" "$TOKEN" "$(request_field '.headers["PRIVATE-TOKEN"]')"
    expect_eq "note: JSON content type" application/json "$(request_field '.headers["Content-Type"]')"
    expect_eq "note: body is the Markdown, JSON-encoded intact" "$body" "$(request_field '.body | fromjson | .body')"
    expect_absent "note: the token is not in the log" "$TOKEN" "$WORK/note.log"

    reset_api 500
    local rc=0
    printf 'x' | with_ci_env "$ROOT/scripts/ci/mr-note.sh" - > "$WORK/note.log" 2>&1 || rc=$?
    expect_eq "note: an API error exits 1" 1 "$rc"
    expect_contains "note: an API error names the HTTP status" "HTTP 500" "$WORK/note.log"
    expect_absent "note: the token echoed by the API is not in the log" "$TOKEN" "$WORK/note.log"

    reset_api
    rc=0
    printf 'x' | with_ci_env env -u MR_NOTE_TOKEN "$ROOT/scripts/ci/mr-note.sh" - > "$WORK/note.log" 2>&1 || rc=$?
    expect_eq "note: without a token it skips with exit 0" "0 0" "$rc $(request_count)"
    expect_contains "note: without a token it warns" "WARNING: MR_NOTE_TOKEN is not set" "$WORK/note.log"

    rc=0
    printf 'x' | with_ci_env env -u CI_MERGE_REQUEST_IID "$ROOT/scripts/ci/mr-note.sh" - > "$WORK/note.log" 2>&1 || rc=$?
    expect_eq "note: outside an MR pipeline it skips without a request" "0 0" "$rc $(request_count)"

    rc=0
    printf 'x' | with_ci_env env CI_API_V4_URL="http://127.0.0.1:1/api/v4" "$ROOT/scripts/ci/mr-note.sh" - \
        > "$WORK/note.log" 2>&1 || rc=$?
    expect_eq "note: an unreachable API exits 1" 1 "$rc"

    make_stub_repo
    reset_api
    run_image frontend
    expect_eq "image: a good build exits 0" 0 "$IMAGE_RC"
    check "image: pushes \$CI_REGISTRY_IMAGE/frontend:<tag>" grep -qxE \
        "push( -q)? registry\.invalid:5050/group/stackship/frontend:${want_tag}" "$WORK/docker.log"
    check "image: builds with services/frontend/Dockerfile" grep -qE \
        "^build .*-t registry\.invalid:5050/group/stackship/frontend:${want_tag} .*services/frontend/Dockerfile" "$WORK/docker.log"
    expect_contains "image: docker login with the password on stdin" \
        "login-stdin:regpass-$$-SECRET" "$WORK/docker.log"
    expect_absent "image: the registry password is not on docker's command line" \
        "--password regpass" "$WORK/docker.log"
    expect_eq "image: dotenv report for dev-deploy" "BUILT_FRONTEND_TAG=${want_tag}" \
        "$(cat "$WORK/jobdir/built-image.env" 2>/dev/null)"
    expect_eq "image: one MR note" 1 "$(request_count)"
    request_field '.body | fromjson | .body' > "$WORK/note.md" 2>/dev/null || true
    expect_contains "image: the note names the service and tag" "Image built: \`frontend\`** — tag \`${want_tag}\`" "$WORK/note.md"
    expect_contains "image: the note has the exact pin line" "FRONTEND_TAG=${want_tag}" "$WORK/note.md"
    expect_absent "image: the token is not in the job log" "$TOKEN" "$WORK/job.log"
    expect_absent "image: the registry password is not in the job log" "regpass-$$-SECRET" "$WORK/job.log"

    reset_api
    run_image frontend STUB_DOCKER_FAIL=build
    expect_eq "image: a failed build fails the job" 1 "$IMAGE_RC"
    request_field '.body | fromjson | .body' > "$WORK/note.md" 2>/dev/null || true
    expect_contains "image: a failed build posts 'build failed'" "build failed" "$WORK/note.md"
    expect_contains "image: the failure note links the job" "https://gitlab.invalid/group/stackship/-/jobs/314" "$WORK/note.md"
    check "image: a failed build leaves no dotenv report" test ! -e "$WORK/jobdir/built-image.env"

    reset_api 500
    run_image frontend STUB_DOCKER_FAIL=build
    expect_eq "image: a failing note does not hide a failed build" 1 "$IMAGE_RC"
    expect_contains "image: ... and the build failure is in the log" "image frontend FAILED" "$WORK/job.log"
    expect_absent "image: ... and the token is not in the log" "$TOKEN" "$WORK/job.log"

    reset_api 500
    run_image frontend
    expect_eq "image: a failing note does not fail a good build" 0 "$IMAGE_RC"
    expect_contains "image: ... it warns" "WARNING: the MR note could not be posted" "$WORK/job.log"

    reset_api
    run_image frontend env -u MR_NOTE_TOKEN
    expect_eq "image: without a token the build still passes, no request" "0 0" "$IMAGE_RC $(request_count)"
    expect_contains "image: ... with a warning" "WARNING: MR_NOTE_TOKEN is not set" "$WORK/job.log"

    run_image frontend CI_REGISTRY_IMAGE=registry.invalid:5050/group/other
    expect_eq "image: a project path not ending in /stackship fails" 1 "$IMAGE_RC"
    expect_contains "image: ... saying why" "does not end in /stackship" "$WORK/job.log"

    # A Rust service: the root Dockerfile packs the build job's binary, no cargo in the job.
    mkdir -p "$STUB_REPO/services/backend" "$WORK/target/release"
    cp "$ROOT/services/backend/Cargo.toml" "$STUB_REPO/services/backend/"
    run_image backend CARGO_TARGET_DIR="$WORK/target"
    expect_eq "image: backend without the build job's binary fails" 1 "$IMAGE_RC"
    expect_contains "image: ... naming the missing binary" "$WORK/target/release/backend not found" "$WORK/job.log"
    printf '#!/bin/sh\n' > "$WORK/target/release/backend"
    chmod +x "$WORK/target/release/backend"
    run_image backend CARGO_TARGET_DIR="$WORK/target"
    expect_eq "image: backend from the build job's binary" 0 "$IMAGE_RC"
    check "image: ... with the root Dockerfile and SERVICE=backend" grep -qE \
        "^build .*--build-arg SERVICE=backend .*-f ${STUB_REPO}/Dockerfile ${STUB_REPO}\$" "$WORK/docker.log"
    expect_eq "image: ... its dotenv report" "BUILT_BACKEND_TAG=${want_tag}" "$(cat "$WORK/jobdir/built-image.env" 2>/dev/null)"
    check "image: ... and never runs cargo" test ! -e "$STUB_REPO/target"

    run_image backends
    expect_eq "image: an unknown service fails" 1 "$IMAGE_RC"
    stop_fake_gitlab
}

# ---- section pins: scripts/pin-image.sh and stackship deploy's choice of tags ----

# print_images ENV [VAR=VALUE...]: stackship deploy --print-images from a release staged in
# $WORK/deploy/ENV/current; output (stdout and stderr) in $WORK/print.log.
print_images() {
    local env="$1"
    shift
    PRINT_RC=0
    env -u IMAGE_TAG -u BACKEND_TAG -u FRONTEND_TAG -u POSTGRES_IMAGE -u NGINX_IMAGE -u HAPROXY_IMAGE -u PROMETHEUS_IMAGE REGISTRY=registry.invalid:5050/group "$@" \
        "$WORK/deploy/${env}/current/stackship" deploy "$env" --release "$WORK/deploy/${env}/current" --print-images > "$WORK/print.log" 2>&1 || PRINT_RC=$?
}

# pin_refused FILE CMD...: CMD fails and leaves FILE as it was ($WORK/pins.before).
pin_refused() {
    local file="$1"
    shift
    refused "$@"
    cmp -s "$file" "$WORK/pins.before" || fail "${file} changed"
}

section_pins() {
    local repo="$WORK/pin-repo" file before
    mkdir -p "$repo"
    cp -R "$ROOT/scripts" "$ROOT/deploy-manifests" "$repo/"
    file="$repo/deploy-manifests/prod/images.env"
    local env key
    for env in dev prod; do
        for key in BACKEND_TAG FRONTEND_TAG; do
            check "pins: deploy-manifests/${env}/images.env has a ${key} line" \
                grep -qx "${key}=.*" "$ROOT/deploy-manifests/${env}/images.env"
        done
    done
    before="$(grep -v '^BACKEND_TAG=' "$file")"
    check "pins: pin-image.sh prod backend TAG succeeds" "$repo/scripts/pin-image.sh" prod backend 20261123_0123abcd
    check "pins: ... sets exactly that line" grep -qx 'BACKEND_TAG=20261123_0123abcd' "$file"
    expect_eq "pins: ... and leaves every other line alone" "$before" "$(grep -v '^BACKEND_TAG=' "$file")"
    "$repo/scripts/pin-image.sh" prod backend 20261124_fedcba98 2>/dev/null || true
    expect_eq "pins: re-pinning replaces, never duplicates" "BACKEND_TAG=20261124_fedcba98" "$(grep '^BACKEND_TAG=' "$file")"
    check "pins: dev untouched by a prod pin" grep -qx 'BACKEND_TAG=' "$repo/deploy-manifests/dev/images.env"
    cp "$file" "$WORK/pins.before"
    local bad
    for bad in "prod backend bad/tag" "prod backends 20261123_0123abcd" "staging backend 20261123_0123abcd" "prod backend"; do
        # shellcheck disable=SC2086 # the words are the arguments
        check "pins: pin-image.sh ${bad} is refused, file unchanged" pin_refused "$file" "$repo/scripts/pin-image.sh" $bad
    done

    # Third-party images are pinned by digest; a reference that already has one needs no Docker.
    local pg_pin ngx_pin hap_pin prom_pin
    pg_pin="postgres:15-bookworm@sha256:$(printf 'a%.0s' {1..64})"
    ngx_pin="nginx:1.27-bookworm@sha256:$(printf 'b%.0s' {1..64})"
    hap_pin="haproxy:2.8-bookworm@sha256:$(printf 'c%.0s' {1..64})"
    prom_pin="prom/prometheus:v2.53.3@sha256:$(printf 'e%.0s' {1..64})"
    for key in POSTGRES_IMAGE NGINX_IMAGE HAPROXY_IMAGE PROMETHEUS_IMAGE; do
        check "pins: deploy-manifests/prod/images.env has a ${key} line, empty (no digest invented)" \
            grep -qx "${key}=" "$ROOT/deploy-manifests/prod/images.env"
    done
    check "pins: pin-image.sh prod postgres IMAGE@sha256:... succeeds" "$repo/scripts/pin-image.sh" prod postgres "$pg_pin"
    check "pins: ... sets POSTGRES_IMAGE to it" grep -qx "POSTGRES_IMAGE=${pg_pin}" "$file"
    "$repo/scripts/pin-image.sh" prod nginx "$ngx_pin" 2>/dev/null
    check "pins: pin-image.sh prod nginx sets NGINX_IMAGE" grep -qx "NGINX_IMAGE=${ngx_pin}" "$file"
    "$repo/scripts/pin-image.sh" prod haproxy "$hap_pin" 2>/dev/null
    check "pins: pin-image.sh prod haproxy sets HAPROXY_IMAGE (the edge)" grep -qx "HAPROXY_IMAGE=${hap_pin}" "$file"
    "$repo/scripts/pin-image.sh" prod prometheus "$prom_pin" 2>/dev/null
    check "pins: pin-image.sh prod prometheus sets PROMETHEUS_IMAGE" grep -qx "PROMETHEUS_IMAGE=${prom_pin}" "$file"
    cp "$file" "$WORK/pins.before"
    # shellcheck disable=SC2016 # a literal command substitution: it must not run
    check "pins: pin-image.sh refuses a malformed image reference, file unchanged" \
        pin_refused "$file" "$repo/scripts/pin-image.sh" prod nginx 'nginx:1.27 $(touch /tmp/x)'

    # The deploy reads the pins of the release it runs from; overrides win. Every rule of that
    # choice (precedence, unknown keys, digests, tags, stack-only images) is a unit test of
    # tools/stackship/src/settings.rs; here the shipped command line, end to end.
    local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/stackship"
    [[ -x "$bin" ]] || (cd "$ROOT" && cargo build --quiet -p stackship) || die "cannot build stackship"
    for env in dev prod; do
        mkdir -p "$WORK/deploy/${env}/current"
        install -m 0755 "$bin" "$WORK/deploy/${env}/current/stackship"
        cp "$ROOT/docker-compose.${env}.yaml" "$WORK/deploy/${env}/current/"
        cp -R "$repo/deploy-manifests" "$WORK/deploy/${env}/current/"
    done
    "$repo/scripts/pin-image.sh" prod frontend 20261120_aaaabbbb 2>/dev/null
    cp "$repo/deploy-manifests/prod/images.env" "$WORK/deploy/prod/current/deploy-manifests/prod/images.env"
    local pins_file="$WORK/deploy/prod/current/deploy-manifests/prod/images.env"
    print_images prod
    expect_eq "pins: stackship deploy --print-images succeeds" 0 "$PRINT_RC"
    expect_eq "pins: stackship deploy deploys the pins, each with the line it came from" \
        "backend registry.invalid:5050/group/stackship/backend:20261124_fedcba98 (${pins_file}:$(grep -n '^BACKEND_TAG=' "$pins_file" | cut -d: -f1))|edge ${hap_pin} (${pins_file}:$(grep -n '^HAPROXY_IMAGE=' "$pins_file" | cut -d: -f1))|frontend registry.invalid:5050/group/stackship/frontend:20261120_aaaabbbb (${pins_file}:$(grep -n '^FRONTEND_TAG=' "$pins_file" | cut -d: -f1))|nginx-proxy ${ngx_pin} (${pins_file}:$(grep -n '^NGINX_IMAGE=' "$pins_file" | cut -d: -f1))|postgres ${pg_pin} (${pins_file}:$(grep -n '^POSTGRES_IMAGE=' "$pins_file" | cut -d: -f1))|prometheus ${prom_pin} (${pins_file}:$(grep -n '^PROMETHEUS_IMAGE=' "$pins_file" | cut -d: -f1))" \
        "$(paste -sd'|' "$WORK/print.log")"
    # A third-party image counts only where the stack file has its service: Prometheus is prod's.
    printf 'BACKEND_TAG=20261123_0123abcd\nFRONTEND_TAG=20261123_0123abcd\nPOSTGRES_IMAGE=%s\nNGINX_IMAGE=%s\nHAPROXY_IMAGE=%s\n' "$pg_pin" "$ngx_pin" "$hap_pin" \
        > "$WORK/deploy/dev/current/deploy-manifests/dev/images.env"
    print_images dev
    expect_eq "pins: dev's release needs no PROMETHEUS_IMAGE (no prometheus in its stack file)" 0 "$PRINT_RC"
    expect_absent "pins: ... and lists no prometheus image" 'prometheus ' "$WORK/print.log"
    print_images prod POSTGRES_IMAGE=postgres:15-bookworm
    expect_eq "pins: a third-party image without a digest stops the deploy, nothing changed (exit 2)" 2 "$PRINT_RC"
    expect_contains "pins: ... naming the variable, its source and how to pin" \
        "POSTGRES_IMAGE 'postgres:15-bookworm' (POSTGRES_IMAGE from the environment) is not pinned by digest" "$WORK/print.log"
    expect_contains "pins: ... and the command that pins it" "scripts/pin-image.sh prod postgres postgres:15-bookworm" "$WORK/print.log"
    print_images prod BACKEND_TAG=20261125_11112222
    expect_contains "pins: BACKEND_TAG overrides one pin (dev-deploy's built image)" \
        "backend registry.invalid:5050/group/stackship/backend:20261125_11112222 (BACKEND_TAG from the environment)" "$WORK/print.log"
    printf 'BACKEND_TAG=20261123_0123abcd\nPOSTGRES_TAG=15\n' > "$WORK/deploy/dev/current/deploy-manifests/dev/images.env"
    print_images dev
    expect_eq "pins: an unknown key in images.env stops the deploy (exit 2)" 2 "$PRINT_RC"
    expect_contains "pins: ... naming the file, line and key" \
        "deploy-manifests/dev/images.env:2: unknown key POSTGRES_TAG" "$WORK/print.log"
}

# ---- section deploy: the deploy job's summary and its checks before any connection ----

# upload NAME RC [DIR]: an upload directory as ssh-deploy.sh leaves it on the manager, in DIR
# (default $WORK/manager/dev), whose stand-in stackship records its arguments and stdin,
# writes a rollout report on stdout, and exits RC.
upload() {
    local dir="${3:-$WORK/manager/dev}/.incoming-$1"
    mkdir -p "$dir/current/deploy-manifests/dev"
    cp "$ROOT/scripts/ci/remote-deploy.sh" "$dir/"
    cat > "$dir/current/stackship" <<SH
#!/usr/bin/env bash
{ echo "args=\$*"; cat; } > "$WORK/stackship-ran.txt"
echo "progress on stderr" >&2
[[ $2 -eq 0 ]] && ok=true || ok=false
echo "{\"stack\": \"stackship-dev\", \"ok\": \$ok, \"release\": \"$1\"}"
exit $2
SH
    chmod +x "$dir/current/stackship"
}

# real_upload NAME: an upload with the real stackship and a one-service dev release.
real_upload() {
    local dir="$WORK/manager/dev/.incoming-$1"
    mkdir -p "$dir/current/deploy-manifests/dev"
    cp "$ROOT/scripts/ci/remote-deploy.sh" "$dir/"
    install -m 0755 "$STACKSHIP_BIN" "$dir/current/stackship"
    # shellcheck disable=SC2016 # the stack file's own variables
    printf 'services:\n  web:\n    image: ${REGISTRY}/stackship/web:${WEB_TAG}\n' > "$dir/current/docker-compose.dev.yaml"
    printf '%s\n' "$1" > "$dir/current/marker"
}

remote_deploy_tests() {
    local env_dir="$WORK/manager/dev" rc out
    mkdir -p "$env_dir/current"
    echo r0 > "$env_dir/current/marker"
    upload r1 0
    rc=0
    printf 'REGISTRY=registry.invalid/group\nREGISTRY_PASSWORD=s3cret\n' \
        | "$env_dir/.incoming-r1/remote-deploy.sh" --dev > "$WORK/remote.out" 2> "$WORK/remote.log" || rc=$?
    expect_eq "remote deploy: exits with stackship's status (0)" 0 "$rc"
    expect_eq "remote deploy: the release's own stackship deploys the upload under the environment's lock" \
        "args=--root $WORK/manager deploy dev --from $env_dir/.incoming-r1/current --secrets $env_dir/.incoming-r1/secrets --settings-stdin --json" \
        "$(head -n 1 "$WORK/stackship-ran.txt")"
    expect_contains "remote deploy: the job's settings reach it on stdin" "REGISTRY_PASSWORD=s3cret" "$WORK/stackship-ran.txt"
    expect_eq "remote deploy: stdout is only the rollout report" r1 "$(jq -r .release "$WORK/remote.out" 2>/dev/null)"
    expect_contains "remote deploy: progress goes to the log" "progress on stderr" "$WORK/remote.log"
    check "remote deploy: the upload directory is gone" test ! -e "$env_dir/.incoming-r1"

    upload r2 1
    rc=0
    printf 'REGISTRY=registry.invalid/group\n' | "$env_dir/.incoming-r2/remote-deploy.sh" --dev > "$WORK/remote.out" 2> "$WORK/remote.log" || rc=$?
    expect_eq "remote deploy: exits with stackship's status (1)" 1 "$rc"
    expect_eq "remote deploy: ... with that deploy's report" false "$(jq -r .ok "$WORK/remote.out" 2>/dev/null)"
    check "remote deploy: ... and the upload directory is gone" test ! -e "$env_dir/.incoming-r2"

    mkdir -p "$WORK/manager/review/7"
    upload r4 0 "$WORK/manager/review/7"
    rc=0
    printf '' | "$WORK/manager/review/7/.incoming-r4/remote-deploy.sh" --review 7 > "$WORK/remote.out" 2> "$WORK/remote.log" || rc=$?
    expect_eq "remote deploy: a review stack's root is two levels up" \
        "0 args=--root $WORK/manager deploy --review 7 --from $WORK/manager/review/7/.incoming-r4/current --secrets $WORK/manager/review/7/.incoming-r4/secrets --settings-stdin --json" \
        "$rc $(head -n 1 "$WORK/stackship-ran.txt")"

    upload r5 0
    rm "$env_dir/.incoming-r5/current/stackship"
    rc=0
    printf '' | "$env_dir/.incoming-r5/remote-deploy.sh" --dev > "$WORK/remote.out" 2> "$WORK/remote.log" || rc=$?
    expect_eq "remote deploy: an upload without stackship is refused (exit 2)" 2 "$rc"
    expect_contains "remote deploy: ... saying so" "current/stackship is missing: the upload is incomplete" "$WORK/remote.log"
    check "remote deploy: ... and removed" test ! -e "$env_dir/.incoming-r5"

    # The real stackship: a setting the job may not send is refused before anything changes.
    STACKSHIP_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/stackship"
    [[ -x "$STACKSHIP_BIN" ]] || (cd "$ROOT" && cargo build --quiet -p stackship) || die "cannot build stackship"
    real_upload r3
    rc=0
    printf 'REGISTRY=x\nPATH=/tmp/evil\n' | "$env_dir/.incoming-r3/remote-deploy.sh" --dev > "$WORK/remote.out" 2> "$WORK/remote.log" || rc=$?
    expect_eq "remote deploy: an unknown setting is refused (exit 2)" 2 "$rc"
    expect_contains "remote deploy: ... naming its line" "<stdin>:2: unknown key PATH" "$WORK/remote.log"
    expect_eq "remote deploy: ... before anything is swapped in" r0 "$(cat "$env_dir/current/marker" 2>/dev/null)"

    # Another deploy holds the lock: the swap waits LOCK_WAIT, then gives up, leaving current/ alone.
    real_upload r6
    rc=0
    (
        exec 8>>"$env_dir/deploy.lock"
        flock 8
        printf 'REGISTRY=registry.invalid/group\nWEB_TAG=t1\nLOCK_WAIT=1\n' \
            | "$env_dir/.incoming-r6/remote-deploy.sh" --dev > "$WORK/remote.out" 2> "$WORK/remote.log"
    ) || rc=$?
    expect_eq "remote deploy: a held lock stops the deploy after LOCK_WAIT (exit 2)" 2 "$rc"
    expect_contains "remote deploy: ... saying so" "lock is still held after 1s" "$WORK/remote.log"
    expect_eq "remote deploy: ... and current/ is untouched" r0 "$(cat "$env_dir/current/marker" 2>/dev/null)"
    expect_eq "remote deploy: ... and nothing is on stdout (no report)" 0 "$(wc -c < "$WORK/remote.out")"
    out="$(CI_JOB_URL='' "$ROOT/scripts/ci/rollout-note.sh" dev "$WORK/remote.out")"
    check "remote deploy: ... and the summary says it failed before the rollout" grep -q "FAILED before the rollout" <<<"$out"
}

# stopped_saying RC LOG TEXT: a job that exited RC failed, and its LOG says TEXT.
stopped_saying() {
    [[ "$1" -ne 0 ]] && grep -qF -- "$3" "$2" && return 0
    sed 's/^/    | /' "$2" | tail -n 5 >&2
    fail "exit $1; the log's last lines are above"
}

section_deploy() {
    cat > "$WORK/rollout.json" <<'JSON'
{"stack": "stackship-dev", "ok": false, "seconds": 32.59, "services": [
 {"service": "backend", "result": "failed", "detail": "rolled back: rollback completed",
  "old_image": "registry.invalid:5050/group/stackship/backend:20261122_aaaaaaaa@sha256:5f73",
  "new_image": "registry.invalid:5050/group/stackship/backend:20261123_bbbbbbbb@sha256:34d5",
  "update_message": "update paused due to failure or early termination of task x",
  "task_error": "task: non-zero exit (1)", "log_tail": "starting\nFATAL: password authentication failed | for user app\n"},
 {"service": "frontend", "result": "ok", "detail": "unchanged, running",
  "old_image": "registry.invalid:5050/group/stackship/frontend:20261122_aaaaaaaa@sha256:d61b",
  "new_image": "registry.invalid:5050/group/stackship/frontend:20261122_aaaaaaaa@sha256:d61b",
  "update_message": null, "task_error": null, "log_tail": null}]}
JSON
    CI_JOB_URL=https://gitlab.invalid/jobs/9 "$ROOT/scripts/ci/rollout-note.sh" dev "$WORK/rollout.json" > "$WORK/summary.md" 2>&1 || true
    expect_contains "deploy note: headline says FAILED" "**dev deploy: FAILED** (\`stackship-dev\`, 32 s)" "$WORK/summary.md"
    expect_contains "deploy note: old -> new tag of the failed service" \
        "| backend | \`20261122_aaaaaaaa\` → \`20261123_bbbbbbbb\` | failed |" "$WORK/summary.md"
    expect_contains "deploy note: the reason (Swarm's message, task error)" \
        "rolled back: rollback completed; task: non-zero exit (1); update paused" "$WORK/summary.md"
    expect_contains "deploy note: the last log line, its | escaped" \
        'FATAL: password authentication failed \| for user app' "$WORK/summary.md"
    expect_contains "deploy note: an unchanged service" "| frontend | \`20261122_aaaaaaaa\` (unchanged) | ok |  |" "$WORK/summary.md"
    expect_contains "deploy note: the job link" "Job: https://gitlab.invalid/jobs/9" "$WORK/summary.md"
    "$ROOT/scripts/ci/rollout-note.sh" prod "$WORK/missing.json" > "$WORK/summary.md" 2>&1 || true
    expect_contains "deploy note: no report means failed before the rollout" "**prod deploy: FAILED before the rollout**" "$WORK/summary.md"

    # ssh-deploy.sh refuses to start without what pins the host and the key.
    : > "$WORK/empty"
    printf 'not a key\n' > "$WORK/key"
    local case_vars rc
    deploy_job() {
        rc=0
        (cd "$WORK" && env SERVER_HOST=127.0.0.1 SERVER_USER=deploy SSH_PRIVATE_KEY="$WORK/key" \
            SSH_KNOWN_HOSTS="$WORK/key" CI_REGISTRY_IMAGE=registry.invalid/group/stackship "$@" \
            "$ROOT/scripts/ci/ssh-deploy.sh" dev) > "$WORK/deploy.log" 2>&1 || rc=$?
    }
    for case_vars in "SSH_KNOWN_HOSTS=|SSH_KNOWN_HOSTS must be a File variable" \
        "SSH_KNOWN_HOSTS=${WORK}/empty|SSH_KNOWN_HOSTS must be a File variable" \
        "SSH_PRIVATE_KEY=|SSH_PRIVATE_KEY must be a File variable" \
        "SERVER_HOST=|SERVER_HOST is not set" \
        "SERVER_HOST=-oProxyCommand=x|is not a host name" \
        "SERVER_USER=root;rm|is not a user name" \
        "CI_REGISTRY_IMAGE=registry.invalid/group/other|does not end in /stackship" \
        "DEPLOY_REGISTRY_USER=token-user|set both DEPLOY_REGISTRY_USER and DEPLOY_REGISTRY_PASSWORD"; do
        deploy_job "${case_vars%%|*}"
        check "deploy job: ${case_vars%%|*} stops it: ${case_vars#*|}" \
            stopped_saying "$rc" "$WORK/deploy.log" "${case_vars#*|}"
    done
    # Review stacks exist only in MR pipelines, on a port that exists.
    local mode
    for case_vars in "CI_MERGE_REQUEST_IID=|review stacks exist only in MR pipelines" \
        "CI_MERGE_REQUEST_IID=7;x|is not a merge request IID" \
        "REVIEW_PORT_BASE=http|REVIEW_PORT_BASE 'http' is not a port number"; do
        for mode in review review-stop; do
            rc=0
            (cd "$WORK" && env SERVER_HOST=127.0.0.1 SERVER_USER=deploy SSH_PRIVATE_KEY="$WORK/key" \
                SSH_KNOWN_HOSTS="$WORK/key" CI_REGISTRY_IMAGE=registry.invalid/group/stackship \
                CI_MERGE_REQUEST_IID=7 "${case_vars%%|*}" "$ROOT/scripts/ci/ssh-deploy.sh" "$mode") > "$WORK/deploy.log" 2>&1 || rc=$?
            check "${mode} job: ${case_vars%%|*} stops it: ${case_vars#*|}" \
                stopped_saying "$rc" "$WORK/deploy.log" "${case_vars#*|}"
        done
    done
    rc=0
    "${CARGO_TARGET_DIR:-$ROOT/target}/debug/stackship" deploy --review 0 > "$WORK/deploy.log" 2>&1 || rc=$?
    check "review: stackship deploy --review needs a positive IID" grep -q "invalid value '0' for '--review <IID>'" "$WORK/deploy.log"
    rc=0
    "${CARGO_TARGET_DIR:-$ROOT/target}/debug/stackship" --root /nonexistent-review-root review stop 12 > "$WORK/deploy.log" 2>&1 || rc=$?
    expect_eq "review: stackship review stop without the review directory changes nothing (exit 2)" 2 "$rc"
    check "review: ... and says why" grep -q 'nonexistent-review-root/review is missing' "$WORK/deploy.log"
    rc=0
    "${CARGO_TARGET_DIR:-$ROOT/target}/debug/stackship" review stop 0 > "$WORK/deploy.log" 2>&1 || rc=$?
    check "review: stackship review stop needs a positive IID" grep -q "invalid value '0' for '<IID>'" "$WORK/deploy.log"
    # The review-stop job uploads the build job's stackship alone; without it, it stops before
    # connecting.
    rc=0
    (cd "$WORK" && env SERVER_HOST=127.0.0.1 SERVER_USER=deploy SSH_PRIVATE_KEY="$WORK/key" \
        SSH_KNOWN_HOSTS="$WORK/key" CI_REGISTRY_IMAGE=registry.invalid/group/stackship \
        CI_MERGE_REQUEST_IID=7 STACKSHIP_TOOLS_DIR="$WORK/no-tools" "$ROOT/scripts/ci/ssh-deploy.sh" review-stop) > "$WORK/deploy.log" 2>&1 || rc=$?
    check "review-stop job: without the build job's stackship it stops, naming the binary" \
        stopped_saying "$rc" "$WORK/deploy.log" "the stackship binary '${WORK}/no-tools/stackship' is missing"
    remote_deploy_tests

    check "deploy job: never uses ssh-keyscan or StrictHostKeyChecking=no" \
        bash -c "! grep -rEn '^[^#]*(ssh-keyscan|StrictHostKeyChecking=(no|accept-new))' '$ROOT/scripts/ci' '$ROOT/.gitlab-ci.yml'"
    check "deploy job: ssh checks the host key strictly against SSH_KNOWN_HOSTS only" \
        bash -c "grep -q 'StrictHostKeyChecking=yes' '$ROOT/scripts/ci/ssh-deploy.sh' && grep -q 'GlobalKnownHostsFile=/dev/null' '$ROOT/scripts/ci/ssh-deploy.sh'"
}

# ---- section tag: scripts/ci/image-tag.sh never gives two contents one tag ----

section_tag() {
    local repo="$WORK/tag-repo" clean tag1 tag2 tag3 sha
    mkdir -p "$repo/scripts/ci" "$repo/services/backend"
    cp "$ROOT/scripts/lib.sh" "$repo/scripts/"
    cp "$ROOT/scripts/ci/image-tag.sh" "$repo/scripts/ci/"
    printf 'fn main() {}\n' > "$repo/services/backend/main.rs"
    printf '[workspace]\n' > "$repo/Cargo.toml"
    printf '# readme\n' > "$repo/README.md"
    printf '/services/backend/target\n' > "$repo/.gitignore"
    git -C "$repo" init -q -b main
    git -C "$repo" add .
    git -C "$repo" -c user.name=test -c user.email=test@localhost commit -q -m base
    sha="$(git -C "$repo" rev-parse HEAD)"
    clean="$(env -u CI_COMMIT_SHA -u CI_COMMIT_TIMESTAMP "$repo/scripts/ci/image-tag.sh")"
    expect_eq "tag: a clean tree gets YYYYMMDD_<sha8>" "$(date -u +%Y%m%d)_${sha:0:8}" "$clean"
    printf '# changed\n' >> "$repo/README.md"
    mkdir -p "$repo/services/backend/target"
    printf 'build output\n' > "$repo/services/backend/target/x"
    expect_eq "tag: changes outside the image inputs, and ignored files, keep the clean tag" "$clean" \
        "$(env -u CI_COMMIT_SHA "$repo/scripts/ci/image-tag.sh")"
    printf 'fn main() { println!("a"); }\n' > "$repo/services/backend/main.rs"
    tag1="$(env -u CI_COMMIT_SHA "$repo/scripts/ci/image-tag.sh")"
    check "tag: an uncommitted change to services/ says so (-dirty-<hash8>)" \
        grep -qxE "${clean}-dirty-[0-9a-f]{8}" <<<"$tag1"
    expect_eq "tag: the same tree gives the same dirty tag" "$tag1" "$(env -u CI_COMMIT_SHA "$repo/scripts/ci/image-tag.sh")"
    printf 'fn main() { println!("b"); }\n' > "$repo/services/backend/main.rs"
    tag2="$(env -u CI_COMMIT_SHA "$repo/scripts/ci/image-tag.sh")"
    check "tag: a different change gives a different dirty tag" test "$tag2" != "$tag1" -a "$tag2" != "$clean"
    git -C "$repo" checkout -q -- services
    printf 'x\n' > "$repo/services/backend/new.rs"
    tag3="$(env -u CI_COMMIT_SHA "$repo/scripts/ci/image-tag.sh")"
    check "tag: an untracked file in services/ makes the tree dirty" grep -qxE "${clean}-dirty-[0-9a-f]{8}" <<<"$tag3"
    git -C "$repo" add services/backend/new.rs
    expect_eq "tag: ... staged, the same content keeps the same tag" "$tag3" "$(env -u CI_COMMIT_SHA "$repo/scripts/ci/image-tag.sh")"
    expect_eq "tag: a pipeline (CI_COMMIT_SHA, CI_COMMIT_TIMESTAMP) gets its commit's tag" "20261122_${sha:0:8}" \
        "$(CI_COMMIT_SHA="$sha" CI_COMMIT_TIMESTAMP=2026-11-22T23:59:59+00:00 "$repo/scripts/ci/image-tag.sh")"
    check "tag: every tag is a valid image tag" grep -qxE '[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}' <<<"$tag1"
}

main() {
    local only=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --only) [[ $# -ge 2 ]] || die "--only needs a section"; only="$2"; shift ;;
            -h | --help) usage; return 0 ;;
            *) usage >&2; die "unknown argument '$1'" ;;
        esac
        shift
    done
    case "$only" in
        "" | schema | matrix | note | pins | deploy | tag) ;;
        *) die "unknown section '${only}' (schema, matrix, note, pins, deploy, tag)" ;;
    esac
    ensure_tools
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/stackship-test-pipeline.XXXXXX")"
    trap 'stop_fake_gitlab; rm -rf "$WORK"' EXIT
    make_gcl_repo
    local section
    for section in schema matrix note pins deploy tag; do
        [[ -z "$only" || "$only" == "$section" ]] || continue
        if declare -F "section_${section}" >/dev/null; then
            log "section ${section}"
            "section_${section}"
        fi
    done
    harness_summary
}

main "$@"
