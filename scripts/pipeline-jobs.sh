#!/usr/bin/env bash
# Which jobs a pipeline gets, as GitLab would decide from .gitlab-ci.yml: a merge request's
# labels (or a push to the default branch) in; each job, and whether it starts by itself or
# waits for a click, out. Evaluated by gitlab-ci-local (installed into the project's cache),
# with the workflow rules checked first, since gitlab-ci-local alone would list a pipeline
# GitLab never creates.
set -Eeuo pipefail

# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/tests/pipeline-tools.sh
source "$(dirname "${BASH_SOURCE[0]}")/tests/pipeline-tools.sh"

usage() {
    cat <<'USAGE'
Usage: scripts/pipeline-jobs.sh [LABEL...]      a merge request with these labels
       scripts/pipeline-jobs.sh --main           a push (or merge) to main
       scripts/pipeline-jobs.sh --var K=V...     any pipeline variables

Prints one line per job: its name and "auto" (starts by itself) or "manual" (a click starts
it); "no pipeline" when the workflow rules create none. Example:

  $ scripts/pipeline-jobs.sh build-backend dev-deploy
  build-lint-test  auto
  dev-deploy       auto
  image-backend    auto
  ...
USAGE
}

main() {
    local vars=() labels=() mode=mr
    while (($#)); do
        case "$1" in
            -h | --help) usage; return 0 ;;
            --main) mode=main ;;
            --var)
                [[ $# -ge 2 && "$2" == *=* ]] || die "--var needs KEY=VALUE"
                mode=vars
                vars+=("$2")
                shift
                ;;
            -*) usage >&2; die "unknown option '$1'" ;;
            *) labels+=("$1") ;;
        esac
        shift
    done
    case "$mode" in
        mr)
            local IFS=,
            vars=(CI_PIPELINE_SOURCE=merge_request_event CI_COMMIT_BRANCH= CI_MERGE_REQUEST_IID=1
                "CI_MERGE_REQUEST_LABELS=${labels[*]}")
            unset IFS
            ;;
        main)
            ((${#labels[@]} == 0)) || die "--main takes no labels"
            vars=(CI_PIPELINE_SOURCE=push CI_COMMIT_BRANCH=main CI_DEFAULT_BRANCH=main)
            ;;
        vars) ((${#labels[@]} == 0)) || die "--var and labels do not mix" ;;
    esac
    ROOT="$(repo_root)"
    ensure_gitlab_ci_local >&2
    ensure_check_jsonschema >&2
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/stackship-pipeline-jobs.XXXXXX")"
    trap 'rm -rf "$WORK"' EXIT
    make_gcl_repo
    local jobs
    jobs="$(pipeline_jobs "${vars[@]}")" || die "gitlab-ci-local failed: $(cat "$WORK/gcl.err")"
    if [[ -z "$jobs" ]]; then
        printf 'no pipeline\n'
    else
        awk -F= '{ printf "%-16s %s\n", $1, $2 }' <<<"$jobs"
    fi
}

main "$@"
