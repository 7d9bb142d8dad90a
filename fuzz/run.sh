#!/usr/bin/env bash
# Fuzzes the superblock parser, validator and reports for a bounded time.
#
# Usage: fuzz/run.sh [SECONDS] [-- LIBFUZZER_ARGS...]
#   SECONDS   fuzzing time, not counting the build (default 60)
# Environment:
#   FUZZ_JOBS       parallel fuzzing processes (default 1)
#   FUZZ_SANITIZER  cargo-fuzz's --sanitizer: address (default) or none
#
# Installs cargo-fuzz when it is missing (about a minute). On a stable
# toolchain it sets RUSTC_BOOTSTRAP=1, which cargo-fuzz's -Z flags need.
# The corpus grows in fuzz/corpus/superblock (ignored by git), starting
# from the committed seeds in fuzz/seeds. Exits non-zero when the target
# crashes; the input that did it is left in fuzz/artifacts/superblock/.
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

corpus=$here/corpus/superblock
logs=$here/artifacts/logs
mkdir -p "$corpus" "$here/artifacts/superblock" "$logs"
sanitizer=${FUZZ_SANITIZER:-address}
jobs=${FUZZ_JOBS:-1}
parallel=()
if [[ $jobs -gt 1 ]]; then
    # libFuzzer's parallel mode writes fuzz-N.log to the working directory.
    parallel=(-jobs="$jobs" -workers="$jobs")
fi

cd "$logs"
echo "building the fuzz target" >&2
cargo fuzz build --fuzz-dir "$here" --sanitizer "$sanitizer" superblock

echo "fuzzing for ${secs}s with $jobs process(es)" >&2
status=0
cargo fuzz run --fuzz-dir "$here" --sanitizer "$sanitizer" superblock "$corpus" "$here/seeds" -- \
    -max_total_time="$secs" \
    -max_len=4096 \
    -print_final_stats=1 \
    "${parallel[@]}" \
    "$@" || status=$?

if [[ $status -ne 0 ]]; then
    echo "fuzzing failed (status $status); crashing inputs:" >&2
    ls -l "$here/artifacts/superblock" >&2 || true
    exit "$status"
fi
echo "no crash in ${secs}s; corpus: $(find "$corpus" -type f | wc -l) inputs" >&2
