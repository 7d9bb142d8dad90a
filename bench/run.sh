#!/usr/bin/env bash
# Whole-process timings of our `bcache` against bcache-tools 1.0.8, with
# hyperfine, side by side: make -B, make -C, super-show of a backing and a
# cache image, probe -o udev.
#
# Usage: bench/run.sh
# Environment:
#   RUNS       timed runs per command (default 100; at least 30 is sensible)
#   WARMUP     untimed runs first (default 10)
#   BENCH_DIR  where the sparse 1 GiB images go (default: a new directory
#              under ${TMPDIR:-/tmp}; its file system matters for make's fsync)
#   BENCH_OUT  the Markdown file to update (default: BENCHMARKS.md at the
#              repository root); only the part between the markers
#              "<!-- bench:begin -->" and "<!-- bench:end -->" is replaced,
#              so notes around it stay
#
# Prints the table and always exits 0 once it has measured: timings are
# reported, not judged. The goal is ratio = ours/C (of the medians) <= 1.0
# for make and <= 1.5 for super-show and probe.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=${RUNS:-100}
warmup=${WARMUP:-10}
out=${BENCH_OUT:-$root/BENCHMARKS.md}

apt_install() {
    echo "installing $*" >&2
    if [[ -z ${apt_updated:-} ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
command -v hyperfine >/dev/null || apt_install hyperfine
command -v python3 >/dev/null || apt_install python3
[[ -x /usr/sbin/make-bcache ]] || apt_install bcache-tools

c_make=/usr/sbin/make-bcache
c_show=/usr/sbin/bcache-super-show
c_probe=/lib/udev/probe-bcache
for t in "$c_make" "$c_show" "$c_probe"; do
    [[ -x $t ]] || { echo "missing $t (Debian package bcache-tools)" >&2; exit 1; }
done

echo "building bcache (release)" >&2
cargo build --release --manifest-path "$root/Cargo.toml" --bin bcache
target_dir=$(cargo metadata --manifest-path "$root/Cargo.toml" --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
ours_real=$target_dir/release/bcache

if [[ -n ${BENCH_DIR:-} ]]; then
    mkdir -p "$BENCH_DIR"
    work=$(mktemp -d "$BENCH_DIR/bcache-bench.XXXXXX")
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/bcache-bench.XXXXXX")
fi
trap 'rm -rf "$work"' EXIT

# Our binary under its own name and, through links, as the legacy tools;
# copied so a rebuild during the run cannot change it.
mkdir -p "$work/bin"
cp "$ours_real" "$work/bin/bcache"
ours=$work/bin/bcache
ln -s bcache "$work/bin/probe-bcache"

# A fresh sparse 1 GiB image: both make tools refuse one that already has a
# bcache superblock, so every timed make starts from this.
cat >"$work/fresh" <<'EOF'
#!/bin/sh
truncate -s 0 "$1" && truncate -s 1G "$1"
EOF
chmod +x "$work/fresh"

img=$work/img
bdev=$work/backing.img
cdev=$work/cache.img
blank=$work/blank.img
"$work/fresh" "$img"
"$work/fresh" "$bdev"
"$work/fresh" "$cdev"
"$work/fresh" "$blank"
"$ours" make -B "$bdev" >/dev/null
"$ours" make -C "$cdev" >/dev/null

# name|goal|our command|C command|prepare (empty for none)
cases=(
    "make -B (1 GiB sparse image)|1.0|$ours make -B $img|$c_make -B $img|$work/fresh $img"
    "make -C (1 GiB sparse image)|1.0|$ours make -C $img|$c_make -C $img|$work/fresh $img"
    "super-show (backing image)|1.5|$ours super-show $bdev|$c_show $bdev|"
    "super-show (cache image)|1.5|$ours super-show $cdev|$c_show $cdev|"
    "probe -o udev (backing image)|1.5|$work/bin/probe-bcache -o udev $bdev|$c_probe -o udev $bdev|"
    "probe -o udev (blank image)|1.5|$work/bin/probe-bcache -o udev $blank|$c_probe -o udev $blank|"
)

# Each command must work before it is timed (hyperfine would stop on a
# failure anyway, with less to say).
for case in "${cases[@]}"; do
    IFS='|' read -r name goal cmd_ours cmd_c prep <<<"$case"
    for cmd in "$cmd_ours" "$cmd_c"; do
        [[ -n $prep ]] && $prep
        if ! $cmd >/dev/null 2>"$work/err"; then
            echo "$name: '$cmd' failed:" >&2
            cat "$work/err" >&2
            exit 1
        fi
    done
done

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
i=0
for case in "${cases[@]}"; do
    IFS='|' read -r name goal cmd_ours cmd_c prep <<<"$case"
    i=$((i + 1))
    echo "== $name" >&2
    args=(-N --warmup "$warmup" --runs "$runs" --export-json "$work/$i.json")
    [[ -n $prep ]] && args+=(--prepare "$prep")
    hyperfine "${args[@]}" -n ours "$cmd_ours" -n C "$cmd_c" >&2
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
fs=$(df -T "$work" | awk 'NR == 2 { print $2 }')
c_version=$(dpkg-query -W -f='${Version}' bcache-tools 2>/dev/null || echo unknown)
blkid_version=$(dpkg-query -W -f='${Version}' libblkid1 2>/dev/null || echo unknown)

export BENCH_WORK=$work BENCH_RUNS=$runs BENCH_WARMUP=$warmup BENCH_CPU=$cpu BENCH_FS=$fs
export BENCH_OURS_VERSION="$("$ours" --version) ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo no git)$(git -C "$root" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', with uncommitted changes'))"
export BENCH_C_VERSION=$c_version BENCH_BLKID_VERSION=$blkid_version
export BENCH_HYPERFINE_VERSION=$(hyperfine --version) BENCH_RUSTC_VERSION=$(rustc --version)
export BENCH_KERNEL=$(uname -r) BENCH_OUT=$out
export BENCH_LOAD="$load_before before, $load_after after"
printf '%s\n' "${cases[@]}" >"$work/cases"

python3 - <<'EOF'
import datetime, json, os, re

work = os.environ["BENCH_WORK"]
rows, commands = [], []
for i, line in enumerate(open(os.path.join(work, "cases")).read().splitlines(), 1):
    name, goal, cmd_ours, cmd_c, prep = line.split("|")
    res = {r["command"]: r for r in json.load(open(os.path.join(work, f"{i}.json")))["results"]}
    ours, c = res["ours"], res["C"]
    ratio = ours["median"] / c["median"]
    verdict = "yes" if ratio <= float(goal) else "**no**"
    ms = lambda r: f'{r["median"] * 1000:.2f}'
    spread = lambda r: f'{r["min"] * 1000:.2f} / {r["max"] * 1000:.2f}'
    cpu = lambda r: f'{(r["user"] + r["system"]) * 1000:.2f}'
    rows.append(f"| {name} | {ms(ours)} | {ms(c)} | {ratio:.2f} | ≤ {goal} | {verdict} | {spread(ours)} | {spread(c)} | {cpu(ours)} | {cpu(c)} |")
    commands.append((name, cmd_ours, cmd_c, prep))

def scrub(s):
    # The scratch directory changes every run; name it $W in the text.
    return s.replace(work, "$W")

e = os.environ
table = "\n".join([
    "| command | ours median (ms) | C median (ms) | ratio ours/C | goal | met | ours min / max (ms) | C min / max (ms) | ours CPU (ms) | C CPU (ms) |",
    "|---|---:|---:|---:|---:|:---:|---:|---:|---:|---:|",
    *rows,
])
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [
    "<!-- bench:begin -->",
    "<!-- Written by bench/run.sh; edit outside the markers. -->",
    "",
    f"Measured {now} by `bench/run.sh` ({e['BENCH_WARMUP']} warmup runs, {e['BENCH_RUNS']} timed runs per command, "
    "`hyperfine -N`, so no shell sits between hyperfine and the tool).",
    "",
    "| | |",
    "|---|---|",
    f"| machine | {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {e['BENCH_CPU']} |",
    f"| kernel | {e['BENCH_KERNEL']} |",
    f"| load average (1, 5, 15 min) | {e['BENCH_LOAD']} |",
    f"| images | sparse 1 GiB files on {e['BENCH_FS']} |",
    f"| ours | {e['BENCH_OURS_VERSION']}, release build, {e['BENCH_RUSTC_VERSION']} |",
    f"| C | bcache-tools {e['BENCH_C_VERSION']} (Debian), libblkid {e['BENCH_BLKID_VERSION']} |",
    f"| hyperfine | {e['BENCH_HYPERFINE_VERSION']} |",
    "",
    table,
    "",
    "Wall-clock medians over the timed runs; the ratio is of the medians. CPU is the mean user + system time "
    "of one run. Other work on the machine shows in the load average above and widens min / max.",
    "",
    "Commands (`$W` is the scratch directory; `$W/bin/bcache` is a copy of `target/release/bcache`, "
    "`$W/bin/probe-bcache` a link to it; `$W/fresh IMG` truncates IMG to 0 and then to 1 GiB):",
    "",
]
for name, cmd_ours, cmd_c, prep in commands:
    lines.append(f"- {name}:")
    lines.append(f"  - ours: `{scrub(cmd_ours)}`")
    lines.append(f"  - C: `{scrub(cmd_c)}`")
    if prep:
        lines.append(f"  - before each run: `{scrub(prep)}`")
lines += ["", "<!-- bench:end -->"]
block = "\n".join(lines)

out = e["BENCH_OUT"]
head = "# Benchmarks\n\nWhole-process time of `bcache` against bcache-tools 1.0.8 (C). Goal: ratio ours/C of the medians ≤ 1.0 for make, ≤ 1.5 for super-show and probe. Run `bench/run.sh` to measure again.\n\n"
text = open(out).read() if os.path.exists(out) else head
pattern = re.compile(r"<!-- bench:begin -->.*?<!-- bench:end -->", re.S)
text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
open(out, "w").write(text)
print(table)
print(f"\n(written to {out})")
EOF
