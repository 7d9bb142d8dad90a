#!/usr/bin/env bash
# Every test: unit, property, CLI, differential (bcache-tools, blkid) and
# real-kernel tests in a QEMU guest. The guest kernel is fetched once into
# $BCACHE_VM_CACHE (default ~/.cache/bcache-tools-vm).
set -euo pipefail
cd "$(dirname "$0")/.."

# Boots made again after a guest kernel crash outside the project
# (tests/vm/README.md): listed at the end, whether the tests passed or not.
export BCACHE_VM_RETRY_LOG="$PWD/target/vm-retries.log"
mkdir -p target
rm -f "$BCACHE_VM_RETRY_LOG"
report_retries() {
    if [ -s "$BCACHE_VM_RETRY_LOG" ]; then
        echo "VM boots made again after a guest kernel crash outside bcache and dm ($(wc -l < "$BCACHE_VM_RETRY_LOG")):"
        cat "$BCACHE_VM_RETRY_LOG"
    else
        echo "VM boots made again after a guest kernel crash: none"
    fi
}
trap report_retries EXIT

tests/vm/fetch-assets.sh
# The register_raw module for the guest's kernel (target/kernel/RELEASE).
kernel/build.sh "$(cat "${BCACHE_VM_CACHE:-${HOME:-/root}/.cache/bcache-tools-vm}/kernel-release")"
# Not --all-targets: that would run the VM benchmark (bench/) as a test.
cargo test --lib --bins --tests -- --test-threads=2
# The stock behaviour, again on the patched module.
BCACHE_VM_PATCHED=1 cargo test --test vm_kernel -- --test-threads=2
# The soak (FAULT-MATRIX.md, "Soak"; #[ignore]d above): fio's verify writes on
# four adopted writeback devices while their cache set is stopped and brought
# back 20 times, about 15 minutes in one guest. Needs fio on the host.
cargo test --test vm_soak -- --ignored --nocapture fio_verify_on_four_writeback_devices_across_twenty_set_stops
# The superblock parser must never panic (cargo-fuzz, installed if missing).
fuzz/run.sh "${FUZZ_SECONDS:-60}"
