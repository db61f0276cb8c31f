#!/usr/bin/env bash
# Mutation testing of every crate: the same as scripts/bench/mutants.sh (see its --help), which
# sits with the other measurements.
set -Eeuo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/bench/mutants.sh" "$@"
