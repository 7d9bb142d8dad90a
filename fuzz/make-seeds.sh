#!/usr/bin/env bash
# Regenerates the seed corpus in fuzz/seeds/superblock/: real superblocks written by
# our `bcache make` (and by bcache-tools' make-bcache when it is installed)
# on sparse images, each seed the 4 KiB block at byte 4096.
#
# Usage: fuzz/make-seeds.sh [BCACHE_BINARY]   (default: target/debug/bcache,
# built when missing). The images are sparse and removed afterwards.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
bin=${1:-$root/target/debug/bcache}
if [[ ! -x $bin ]]; then
    cargo build --manifest-path "$root/Cargo.toml" --bin bcache
fi
seeds=$here/seeds/superblock
mkdir -p "$seeds"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# seed NAME SIZE TOOL ARGS...: format a fresh sparse image of SIZE with
# TOOL ARGS... IMAGE and keep its superblock block.
seed() {
    local name=$1 size=$2
    shift 2
    local img=$work/$name.img
    truncate -s "$size" "$img"
    "$@" "$img" >/dev/null
    dd if="$img" of="$seeds/$name" bs=4096 skip=1 count=1 status=none
}

seed cache-v0-lru 1G "$bin" make -C
seed cache-v5-64M-bucket-fifo-discard 40G "$bin" make -C -b 64M --discard --cache-replacement-policy fifo
seed backing-v1-writeback-label 64M "$bin" make -B --writeback -l seed-label
seed backing-v4-offset-2048 64M "$bin" make -B -o 2048
if [[ -x /usr/sbin/make-bcache ]]; then
    # bcache-tools writes the same layout; its own output is a fair seed too.
    seed c-make-bcache-cache-random 1G /usr/sbin/make-bcache --cache_replacement_policy=random -C
fi
ls -l "$seeds"
