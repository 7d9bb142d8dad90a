#!/usr/bin/env bash
# Fuzzes the parsers for a bounded time: the superblock (parser, validator,
# reports) and bcachetab with the state file (parsers, round trips, the
# dirty-data rules).
#
# Usage: fuzz/run.sh [SECONDS] [-- LIBFUZZER_ARGS...]
#   SECONDS   fuzzing time per target, not counting the build (default 60)
# Environment:
#   FUZZ_JOBS       parallel fuzzing processes (default 1)
#   FUZZ_SANITIZER  cargo-fuzz's --sanitizer: address (default) or none
#   FUZZ_TARGETS    the targets to run (default: superblock bcachetab)
#
# Installs cargo-fuzz when it is missing (about a minute). On a stable
# toolchain it sets RUSTC_BOOTSTRAP=1, which cargo-fuzz's -Z flags need.
# Each corpus grows in fuzz/corpus/TARGET (ignored by git), starting from
# the committed seeds in fuzz/seeds/TARGET. Exits non-zero when a target
# crashes; the input that did it is left in fuzz/artifacts/TARGET/.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
secs=${1:-60}
[[ $# -gt 0 ]] && shift
[[ ${1:-} == -- ]] && shift
if ! [[ $secs =~ ^[0-9]+$ ]] || [[ $secs -eq 0 ]]; then
    echo "usage: $0 [SECONDS] [-- LIBFUZZER_ARGS...]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing; installing it" >&2
    cargo install cargo-fuzz --locked
fi

if ! rustc --version | grep -q nightly; then
    # cargo-fuzz passes -Zsanitizer and friends; stable rustc accepts them
    # only as a bootstrap compiler.
    export RUSTC_BOOTSTRAP=1
fi

sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
parallel=()
if [[ $jobs -gt 1 ]]; then
    # libFuzzer's parallel mode writes fuzz-N.log to the working directory.
    parallel=(-jobs="$jobs" -workers="$jobs")
fi
logs=$here/artifacts/logs
mkdir -p "$logs"
cd "$logs"

for target in ${FUZZ_TARGETS:-superblock bcachetab}; do
    corpus=$here/corpus/$target
    mkdir -p "$corpus" "$here/artifacts/$target"
    echo "building the fuzz target $target" >&2
    cargo fuzz build --fuzz-dir "$here" --sanitizer "$sanitizer" "$target"

    echo "fuzzing $target for ${secs}s with $jobs process(es)" >&2
    status=0
    cargo fuzz run --fuzz-dir "$here" --sanitizer "$sanitizer" "$target" "$corpus" "$here/seeds/$target" -- \
        -max_total_time="$secs" \
        -max_len=4096 \
        -print_final_stats=1 \
        "${parallel[@]}" \
        "$@" || status=$?

    if [[ $status -ne 0 ]]; then
        echo "fuzzing $target failed (status $status); crashing inputs:" >&2
        ls -l "$here/artifacts/$target" >&2 || true
        exit "$status"
    fi
    echo "$target: no crash in ${secs}s; corpus: $(find "$corpus" -type f | wc -l) inputs" >&2
done
