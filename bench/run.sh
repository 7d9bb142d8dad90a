#!/usr/bin/env bash
# Whole-process timings of our `bcache` against bcache-tools 1.0.8, with
# hyperfine, side by side: make -B, make -C, super-show of a backing and a
# cache image, probe -o udev.
#
# Usage: bench/run.sh
# Environment:
#   RUNS       timed runs per command and round (default 50; at least 30
#              is sensible)
#   ROUNDS     rounds (default 5): each round times every pair again, ours
#              then C back to back, so both meet the same load; the medians
#              are of all rounds' runs pooled
#   WARMUP     untimed runs before each pair in each round (default 5)
#   BENCH_DIR  where the sparse 1 GiB images go (default: a new directory
#              under ${TMPDIR:-/tmp}; its file system matters for make's fsync)
#   BENCH_OUT  the Markdown file to update (default: BENCHMARKS.md at the
#              repository root); only the part between the markers
#              "<!-- bench:begin -->" and "<!-- bench:end -->" is replaced,
#              so notes around it stay
#
# Then counts, once per command, what does not depend on the machine's
# load: page faults (perf), system calls (strace), instructions (valgrind's
# callgrind); each is "n/a" when its tool is missing (none is installed for
# this). About a minute in all, after the release build.
#
# Prints the tables and always exits 0 once it has measured: timings are
# reported, not judged. The goal is ratio = ours/C (of the medians) <= 1.0
# for make and <= 1.5 for super-show and probe.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
runs=${RUNS:-50}
rounds=${ROUNDS:-5}
warmup=${WARMUP:-5}
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
for round in $(seq "$rounds"); do
    i=0
    for case in "${cases[@]}"; do
        IFS='|' read -r name goal cmd_ours cmd_c prep <<<"$case"
        i=$((i + 1))
        echo "== round $round/$rounds: $name" >&2
        args=(-N --warmup "$warmup" --runs "$runs" --export-json "$work/$i.$round.json")
        [[ -n $prep ]] && args+=(--prepare "$prep")
        hyperfine "${args[@]}" -n ours "$cmd_ours" -n C "$cmd_c" >&2
    done
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)

# Costs that do not depend on the machine's load, one run each: page
# faults (perf), system calls (strace), user-space instructions (valgrind's
# callgrind, which counts the dynamic loader too). A tool that is missing
# gives "n/a"; none of them is installed for this.
count_faults() {
    command -v perf >/dev/null || { echo n/a; return; }
    perf stat -x, -e page-faults -o "$work/perf" -- "$@" >/dev/null 2>&1 || { echo n/a; return; }
    awk -F, '/page-faults/ { print $1 }' "$work/perf"
}
count_syscalls() {
    command -v strace >/dev/null || { echo n/a; return; }
    strace -f -o "$work/strace" -- "$@" >/dev/null 2>&1 || { echo n/a; return; }
    grep -cv -e '^[0-9]* *+++' -e '^[0-9]* *---' "$work/strace"
}
count_instructions() {
    command -v valgrind >/dev/null || { echo n/a; return; }
    valgrind --tool=callgrind --callgrind-out-file=/dev/null -- "$@" >/dev/null 2>"$work/vg" || { echo n/a; return; }
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$work/vg"
}
: >"$work/costs"
for case in "${cases[@]}"; do
    IFS='|' read -r name goal cmd_ours cmd_c prep <<<"$case"
    line=$name
    for cmd in "$cmd_ours" "$cmd_c"; do
        for counter in count_faults count_syscalls count_instructions; do
            [[ -n $prep ]] && $prep
            # shellcheck disable=SC2086 # the command is words, as for hyperfine -N
            line+="|$($counter $cmd)"
        done
    done
    echo "$line" >>"$work/costs"
done

cpu=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
fs=$(df -T "$work" | awk 'NR == 2 { print $2 }')
c_version=$(dpkg-query -W -f='${Version}' bcache-tools 2>/dev/null || echo unknown)
blkid_version=$(dpkg-query -W -f='${Version}' libblkid1 2>/dev/null || echo unknown)

export BENCH_WORK=$work BENCH_RUNS=$runs BENCH_ROUNDS=$rounds BENCH_WARMUP=$warmup BENCH_CPU=$cpu BENCH_FS=$fs
export BENCH_OURS_VERSION="$("$ours" --version) ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo no git)$(git -C "$root" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ', with uncommitted changes'))"
export BENCH_C_VERSION=$c_version BENCH_BLKID_VERSION=$blkid_version
export BENCH_HYPERFINE_VERSION=$(hyperfine --version) BENCH_RUSTC_VERSION=$(rustc --version)
export BENCH_KERNEL=$(uname -r) BENCH_OUT=$out
export BENCH_BINARY="$(stat -c %s "$ours") bytes, needs $(readelf -d "$ours" 2>/dev/null | sed -n 's/.*NEEDED.*\[\(.*\)\]/\1/p' | paste -sd, - | sed 's/,/, /g')"
export BENCH_LOAD="$load_before before, $load_after after"
printf '%s\n' "${cases[@]}" >"$work/cases"

python3 - <<'EOF'
import datetime, json, os, re, statistics

work = os.environ["BENCH_WORK"]
rounds = int(os.environ["BENCH_ROUNDS"])

def pooled(i):
    """Each command's runs over every round: median, min, max, mean CPU."""
    times, cpu = {}, {}
    for r in range(1, rounds + 1):
        for res in json.load(open(os.path.join(work, f"{i}.{r}.json")))["results"]:
            times.setdefault(res["command"], []).extend(res["times"])
            cpu.setdefault(res["command"], []).append(res["user"] + res["system"])
    return {
        k: {"median": statistics.median(t), "min": min(t), "max": max(t), "cpu": statistics.mean(cpu[k])}
        for k, t in times.items()
    }

rows, commands = [], []
for i, line in enumerate(open(os.path.join(work, "cases")).read().splitlines(), 1):
    name, goal, cmd_ours, cmd_c, prep = line.split("|")
    res = pooled(i)
    ours, c = res["ours"], res["C"]
    ratio = ours["median"] / c["median"]
    verdict = "yes" if ratio <= float(goal) else "**no**"
    ms = lambda r: f'{r["median"] * 1000:.2f}'
    spread = lambda r: f'{r["min"] * 1000:.2f} / {r["max"] * 1000:.2f}'
    cpu = lambda r: f'{r["cpu"] * 1000:.2f}'
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
def fmt(v):
    return f"{int(v):,}" if v.isdigit() else v

def ratio_of(a, b):
    return f"{int(a) / int(b):.2f}" if a.isdigit() and b.isdigit() and int(b) else "n/a"

cost_rows = []
for line in open(os.path.join(work, "costs")).read().splitlines():
    name, of, osc, oi, cf, csc, ci = line.split("|")
    cost_rows.append(
        f"| {name} | {fmt(of)} | {fmt(cf)} | {fmt(osc)} | {fmt(csc)} | {fmt(oi)} | {fmt(ci)} | {ratio_of(oi, ci)} |"
    )
costs = "\n".join([
    "| command | ours page faults | C page faults | ours syscalls | C syscalls | ours instructions | C instructions | instructions ours/C |",
    "|---|---:|---:|---:|---:|---:|---:|---:|",
    *cost_rows,
])

now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
lines = [
    "<!-- bench:begin -->",
    "<!-- Written by bench/run.sh; edit outside the markers. -->",
    "",
    f"Measured {now} by `bench/run.sh`: {e['BENCH_ROUNDS']} rounds, each timing every pair (ours, then C) with "
    f"{e['BENCH_WARMUP']} warmup and {e['BENCH_RUNS']} timed runs per command; `hyperfine -N`, so no shell sits "
    "between hyperfine and the tool.",
    "",
    "| | |",
    "|---|---|",
    f"| machine | {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable), {e['BENCH_CPU']} |",
    f"| kernel | {e['BENCH_KERNEL']} |",
    f"| load average (1, 5, 15 min) | {e['BENCH_LOAD']} |",
    f"| images | sparse 1 GiB files on {e['BENCH_FS']} |",
    f"| ours | {e['BENCH_OURS_VERSION']}, release build, {e['BENCH_RUSTC_VERSION']}; {e['BENCH_BINARY']} |",
    f"| C | bcache-tools {e['BENCH_C_VERSION']} (Debian), libblkid {e['BENCH_BLKID_VERSION']} |",
    f"| hyperfine | {e['BENCH_HYPERFINE_VERSION']} |",
    "",
    table,
    "",
    "Wall-clock medians over all rounds' timed runs; the ratio is of the medians. CPU is the mean user + system time "
    "of one run. Other work on the machine shows in the load average above and widens min / max.",
    "",
    "Load-independent costs of one run (page faults from `perf stat`, system calls from `strace -f`, "
    "user-space instructions including the dynamic loader from `valgrind --tool=callgrind`):",
    "",
    costs,
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
print()
print(costs)
print(f"\n(written to {out})")
EOF
