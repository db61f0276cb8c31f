# shellcheck shell=bash
# The tools the pipeline tests use, installed into a cache outside the repository:
# gitlab-ci-local from npm and check-jsonschema from PyPI (in a venv). Source it after
# scripts/lib.sh; it defines functions and runs nothing. (Their PASS/FAIL harness is
# scripts/tests/harness.sh.)

# gitlab-ci-local 4.7x needs Node 22; 4.64.1 runs on Node 20 and validates against the schema.
GCL_VERSION="4.64.1"
CHECK_JSONSCHEMA_VERSION="0.39.0"
STACKSHIP_CACHE="${STACKSHIP_CACHE:-${STACKSHIP_DATA}/cache}"

# ensure_gitlab_ci_local: sets GCL to the gitlab-ci-local executable, installing it if needed.
ensure_gitlab_ci_local() {
    need node "Node 20 (Debian nodejs or nodesource)"
    need npm
    need git
    need_cmd rsync rsync
    mkdir -p "$STACKSHIP_CACHE"
    GCL="$STACKSHIP_CACHE/gitlab-ci-local/node_modules/.bin/gitlab-ci-local"
    if [[ ! -x "$GCL" || "$("$GCL" --version 2>/dev/null)" != "$GCL_VERSION" ]]; then
        log "npm install gitlab-ci-local@${GCL_VERSION} into ${STACKSHIP_CACHE}/gitlab-ci-local"
        npm install --prefix "$STACKSHIP_CACHE/gitlab-ci-local" --no-audit --no-fund --loglevel=error \
            "gitlab-ci-local@${GCL_VERSION}" >&2 || die "npm install gitlab-ci-local@${GCL_VERSION} failed"
    fi
}

# ensure_check_jsonschema: sets VENV to a venv with check-jsonschema, installing it if needed.
ensure_check_jsonschema() {
    need_cmd python3 python3
    python3 -c 'import venv, ensurepip' 2>/dev/null || apt_install python3-venv
    mkdir -p "$STACKSHIP_CACHE"
    VENV="$STACKSHIP_CACHE/venv"
    if [[ "$("$VENV/bin/check-jsonschema" --version 2>/dev/null)" != *" ${CHECK_JSONSCHEMA_VERSION}" ]]; then
        log "pip install check-jsonschema==${CHECK_JSONSCHEMA_VERSION} into ${VENV}"
        python3 -m venv "$VENV" || die "python3 -m venv ${VENV} failed"
        "$VENV/bin/pip" install -q "check-jsonschema==${CHECK_JSONSCHEMA_VERSION}" >&2 \
            || die "pip install check-jsonschema failed"
    fi
}

# ---- the pipeline as gitlab-ci-local lists it (scripts/tests/test-pipeline.sh, scripts/pipeline-jobs.sh);
# callers set WORK (a temp dir), ROOT (the checkout), GCL and VENV (ensure_* above) ----

# A throwaway git repository holding the pipeline file, with an origin remote as
# gitlab-ci-local expects: its state directory never lands in the working tree.
make_gcl_repo() {
    GCL_REPO="$WORK/gcl-repo"
    mkdir -p "$GCL_REPO"
    cp "$ROOT/.gitlab-ci.yml" "$GCL_REPO/"
    git -C "$GCL_REPO" init -q -b main
    git -C "$GCL_REPO" add .gitlab-ci.yml
    git -C "$GCL_REPO" -c user.name=test -c user.email=test@localhost commit -q -m pipeline
    git -C "$GCL_REPO" remote add origin https://gitlab.invalid/group/stackship.git
    # A copy to break on purpose (inside the repository: gitlab-ci-local wants git around it).
    mkdir -p "$GCL_REPO/broken-deps"
    # The workflow rules as one job's rules: gitlab-ci-local 4.64 does not evaluate `workflow:`,
    # and a job's rules decide the same way (a matching rule without `when` runs it, `when:
    # never` or no match drops it). The probe job exists exactly when GitLab makes a pipeline.
    mkdir -p "$GCL_REPO/probe"
    "$VENV/bin/python" - "$ROOT/.gitlab-ci.yml" "$GCL_REPO/probe/.gitlab-ci.yml" <<'PY'
import json, sys
from ruamel.yaml import YAML
doc = YAML(typ="safe").load(open(sys.argv[1]))
rules = doc["workflow"]["rules"]
json.dump({"workflow-probe": {"script": ["true"], "rules": rules}}, open(sys.argv[2], "w"))
PY
}

# gcl DIR ARG... -- VAR=VALUE...: gitlab-ci-local in DIR with ARGs and the variables set (and
# not overridden by its predefined ones).
gcl() {
    local dir="$1" args=() vars=() names=() kv
    shift
    while [[ $# -gt 0 && "$1" != -- ]]; do args+=("$1"); shift; done
    [[ $# -eq 0 ]] || shift
    for kv in "$@"; do
        vars+=(--variable "$kv")
        names+=("${kv%%=*}")
    done
    local IFS=,
    (cd "$dir" && GCL_IGNORE_PREDEFINED_VARS="${names[*]}" "$GCL" "${args[@]}" "${vars[@]}")
}

# gcl_list DIR VAR=VALUE...: "job=manual|auto" lines of the jobs gitlab-ci-local lists.
gcl_list() {
    local dir="$1"
    shift
    gcl "$dir" --list-csv -- "$@" 2>"$WORK/gcl.err" \
        | awk -F';' 'NR > 1 { print $1 "=" ($4 == "manual" ? "manual" : "auto") }'
}

# gcl_dependencies DIR VAR=VALUE...: gitlab-ci-local --validate-dependency-chain passes
# (its output in GCL_OUT).
gcl_dependencies() {
    local dir="$1"
    shift
    GCL_OUT="$(gcl "$dir" --validate-dependency-chain -- "$@" 2>&1)" \
        && [[ "$GCL_OUT" == *"All job dependencies are valid"* ]]
}

# pipeline_jobs VAR=VALUE...: the jobs of the pipeline GitLab would create, one line each,
# sorted; nothing when the workflow rules create no pipeline.
pipeline_jobs() {
    local probe
    probe="$(gcl_list "$GCL_REPO/probe" "$@")" || return 1
    [[ "$probe" == "workflow-probe=auto" ]] || return 0
    gcl_list "$GCL_REPO" "$@" | sort
}
