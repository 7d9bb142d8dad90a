#!/usr/bin/env bash
# Every test: unit, property, CLI, differential (bcache-tools, blkid) and
# real-kernel tests in a QEMU guest. The guest kernel is fetched once into
# $BCACHE_VM_CACHE (default ~/.cache/bcache-tools-vm).
set -euo pipefail
cd "$(dirname "$0")/.."

tests/vm/fetch-assets.sh
cargo test --all-targets -- --test-threads=2
