//! `bcachetab-apply DEV` with a 1000-line bcachetab against bcache-tools'
//! `bcache-register DEV`, whole process, side by side (issue 4). A
//! benchmark, not a test: it prints figures and judges nothing.
//!
//!   cargo bench --bench bcachetab
//!
//! Three parts (BENCH_PARTS=host,raw,header,uuid to choose; default all):
//!
//! host   On this machine (no bcache module): each process runs up to the
//!        point where it would write to /sys/fs/bcache and fails there
//!        ("module not loaded"), ours after parsing the 1000 lines, finding
//!        the line, taking the device lock, opening the device, looking for
//!        its header and loading the state file; C after opening nothing.
//!        hyperfine -N -i, interleaved rounds, plus callgrind instructions
//!        and `true` as the process-start floor. This is the user-space
//!        part only.
//! raw    In a Debian guest (QEMU TCG, host's / over 9p, so the host's
//!        hyperfine) with the patched module: ours registers /dev/vda
//!        through register_raw, C registers /dev/vdb (an on-disk
//!        superblock); before every timed run (hyperfine --prepare, not
//!        timed) the device is stopped and waited for until gone (10 s
//!        bound). Interleaved rounds; medians pooled over the rounds.
//! header The same on the stock module: ours builds the header file, loop
//!        device and dm-linear table and registers that; --prepare also
//!        removes the dm device (so every run does the whole set-up).
//! uuid   (guest, patched module) The same command when the 999 other lines
//!        name their devices by UUID= instead of by-id paths: few runs, to
//!        show how `find_entry` scales (it resolves every line, and a UUID=
//!        line is resolved by probing every block device).
//!
//! The 999 other lines are valid and name absent devices; the device's
//! line is last. Its device field is the plain path /dev/vda: a by-id link
//! there is not found by `bcachetab-apply /dev/vda` (see BENCHMARKS.md).
//! udev's 69-bcache.rules is masked in the guest (/etc/udev/rules.d), so
//! nothing registers the devices behind the benchmark's back.
//!
//! Environment: RUNS (timed runs per command and round, default 20), ROUNDS
//! (default 3), BENCH_PARTS.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::vm::{DebianInit, Scratch, Vm};

const LINES: usize = 1000;
const OUR_UUID: &str = "5e5e5e5e-0000-4000-8000-000000000999";

fn env_num(key: &str, default: usize) -> usize {
    std::env::var(key).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(default)
}

/// A bcachetab: LINES-1 valid lines naming absent devices (by-id paths, or
/// UUID= when `by_uuid`), then `bench DEVICE OUR_UUID - -`.
fn tab(device: &str, by_uuid: bool) -> String {
    let mut s = String::from("# name device uuid cset options\n");
    for i in 0..LINES - 1 {
        let dev = if by_uuid {
            format!("UUID=0fed0fed-{i:04x}-4000-8000-00000000abcd")
        } else {
            format!("/dev/disk/by-id/wwn-0x5000c500{i:08x}")
        };
        let cset = if i % 3 == 0 { "3c3c3c3c-0000-4000-8000-00000000c5e7".to_owned() } else { "-".to_owned() };
        let opts = match i % 4 {
            0 => "mode=writeback,sequential_cutoff=4M",
            1 => "-",
            2 => "mode=writethrough,writeback_percent=20",
            _ => "label=data,block=4k",
        };
        let opts = if cset == "-" && opts.starts_with("mode=writeback") { "-" } else { opts };
        s.push_str(&format!("d{i:04} {dev} 1a1a1a1a-{i:04x}-4000-8000-000000000000 {cset} {opts}\n"));
    }
    s.push_str(&format!("bench {device} {OUR_UUID} - -\n"));
    s
}

#[derive(Default)]
struct Pooled {
    times: Vec<f64>,
    cpu: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Pools hyperfine JSON exports (one per round) by command name.
fn pool(jsons: &[String]) -> Vec<(String, Pooled)> {
    let mut out: Vec<(String, Pooled)> = Vec::new();
    for j in jsons {
        let v: serde_json::Value = serde_json::from_str(j).unwrap_or_else(|e| panic!("hyperfine JSON: {e}\n{j}"));
        for r in v["results"].as_array().expect("results") {
            let name = r["command"].as_str().unwrap().to_owned();
            let i = out.iter().position(|(n, _)| *n == name).unwrap_or_else(|| {
                out.push((name.clone(), Pooled::default()));
                out.len() - 1
            });
            let p = &mut out[i].1;
            p.times.extend(r["times"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()));
            p.cpu.push(r["user"].as_f64().unwrap() + r["system"].as_f64().unwrap());
        }
    }
    out
}

fn print_table(title: &str, pooled: &[(String, Pooled)], ours: &str, c: &str) {
    println!("\n### {title}\n");
    println!("| command | runs | median (ms) | min / max (ms) | CPU (ms) |");
    println!("|---|---:|---:|---:|---:|");
    for (name, p) in pooled {
        let (mn, mx) = p.times.iter().fold((f64::MAX, 0f64), |(a, b), &t| (a.min(t), b.max(t)));
        let cpu = p.cpu.iter().sum::<f64>() / p.cpu.len() as f64;
        println!("| {name} | {} | {:.2} | {:.2} / {:.2} | {:.2} |", p.times.len(), median(&p.times) * 1e3, mn * 1e3, mx * 1e3, cpu * 1e3);
    }
    let get = |n: &str| pooled.iter().find(|(k, _)| k == n).map(|(_, p)| median(&p.times));
    if let (Some(o), Some(cc)) = (get(ours), get(c)) {
        println!("\nratio {ours} / {c} (medians): {:.2}", o / cc);
    }
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg").map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")).unwrap_or_default()
}

fn callgrind(cmd: &[&str]) -> String {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null", "--"])
        .args(cmd)
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stderr)
            .lines()
            .find_map(|l| l.split_once("Collected : ").map(|(_, n)| n.trim().to_owned()))
            .unwrap_or_else(|| "n/a".into()),
        Err(_) => "n/a".into(),
    }
}

/// The host part: user space up to the kernel write.
fn host(runs: usize, rounds: usize) {
    let w = tempfile::Builder::new().prefix("bcachetab-bench-").tempdir().unwrap();
    let bin = w.path().join("bcache");
    std::fs::copy(env!("CARGO_BIN_EXE_bcache"), &bin).unwrap();
    let apply = w.path().join("bcachetab-apply");
    std::os::unix::fs::symlink("bcache", &apply).unwrap();
    // The "device": a sparse file under /dev (a bcachetab device path must
    // start with /dev/); removed at the end.
    let dev = PathBuf::from(format!("/dev/bcachetab-bench-{}.img", std::process::id()));
    let f = std::fs::File::create(&dev).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);
    let t = w.path().join("bcachetab");
    std::fs::write(&t, tab(&dev.to_string_lossy(), false)).unwrap();
    let run_dir = w.path().join("state");
    let p = |x: &Path| x.to_string_lossy().into_owned();
    let ours_dev = format!("{} --tab {} --state {} {}", p(&apply), p(&t), p(&run_dir), p(&dev));
    let ours_name = format!("{} --tab {} --state {} bench", p(&apply), p(&t), p(&run_dir));
    let c = format!("/usr/lib/udev/bcache-register {}", p(&dev));
    let before = load();
    let mut jsons = Vec::new();
    for round in 0..rounds {
        let json = w.path().join(format!("h{round}.json"));
        let st = Command::new("hyperfine")
            .args(["-N", "-i", "--style", "basic", "--warmup", "5", "--runs", &runs.to_string(), "--export-json"])
            .arg(&json)
            .args(["-n", "ours: bcachetab-apply DEV", &ours_dev, "-n", "ours: bcachetab-apply NAME", &ours_name])
            .args(["-n", "C: bcache-register DEV", &c, "-n", "true (process start)", "/usr/bin/true"])
            .status()
            .expect("hyperfine");
        assert!(st.success());
        jsons.push(std::fs::read_to_string(&json).unwrap());
    }
    let after = load();
    let pooled = pool(&jsons);
    print_table(
        &format!("host: up to the kernel write ({rounds} rounds x {runs} runs; load {before} before, {after} after)"),
        &pooled,
        "ours: bcachetab-apply DEV",
        "C: bcache-register DEV",
    );
    let words = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    println!("\n| command | instructions (callgrind) |\n|---|---:|");
    for (n, cmd) in [("ours: bcachetab-apply DEV", &ours_dev), ("ours: bcachetab-apply NAME", &ours_name), ("C: bcache-register DEV", &c)] {
        let ws = words(cmd);
        let refs: Vec<&str> = ws.iter().map(String::as_str).collect();
        println!("| {n} | {} |", callgrind(&refs));
    }
    let empty = w.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let ws = words(&format!("{} --tab {} --state {} bench", p(&apply), p(&empty), p(&run_dir)));
    let refs: Vec<&str> = ws.iter().map(String::as_str).collect();
    println!("| ours: bcachetab-apply NAME, empty bcachetab | {} |", callgrind(&refs));
    let _ = std::fs::remove_file(&dev);
}

/// Stops the device named by $1 (a /sys/block/X/bcache dir finder) and
/// waits for it to be gone, at most 10 s.
const DOWN_RAW: &str = r#"#!/bin/sh
d=/sys/block/$1/bcache
[ -e "$d/stop" ] && echo 1 > "$d/stop"
i=0
# Gone from sysfs is not yet released: bcache closes the device a moment
# later, and a register before that fails (busy). Wait for an exclusive open.
while [ -e "$d" ] || ! perl -MFcntl -e 'sysopen(F, $ARGV[0], O_RDONLY | O_EXCL) or exit 1' "/dev/$1"; do
    i=$((i + 1)); [ $i -gt 1000 ] && { echo "$1 still registered after 10 s" >&2; exit 1; }
    sleep 0.01
done
exit 0
"#;

/// The header layout: stop the bcache device on the dm device, wait, and
/// remove the dm device (the loop device under it autoclears).
const DOWN_HEADER: &str = r#"#!/bin/sh
name=bcachetab-$1
dm=
for n in /sys/block/dm-*/dm/name; do
    [ -e "$n" ] && [ "$(cat "$n")" = "$name" ] && dm=$(basename "$(dirname "$(dirname "$n")")")
done
[ -z "$dm" ] && exit 0
d=/sys/block/$dm/bcache
[ -e "$d/stop" ] && echo 1 > "$d/stop"
i=0
while [ -e "$d" ] || ! dmsetup remove --noudevsync "$name" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 1000 ] && { echo "$name still there after 10 s" >&2; exit 1; }
    sleep 0.01
done
exit 0
"#;

/// One guest boot: `patched` selects the module (raw layout) or the stock
/// one (header layout); `uuid_variant` adds the UUID= bcachetab runs.
fn guest(patched: bool, uuid_variant: bool, runs: usize, rounds: usize) {
    let scratch = Scratch::new();
    let system = scratch.system_disk("system.img");
    let ours_img = scratch.image("ours.img", 256 << 20);
    let c_img = scratch.image("c.img", 256 << 20);
    let mut vm = Vm::debian(&system);
    vm.debian_init(DebianInit::Udevd)
        .symlink("/usr/sbin/bcachetab-apply", "bcache")
        .c_bcache_tools()
        .disk(&ours_img)
        .disk(&c_img)
        .file("/etc/udev/rules.d/69-bcache.rules", "# masked by bench/bcachetab.rs\n", false)
        .file("/etc/bcachetab", tab("/dev/vda", false), false)
        .file("/root/tab-uuid", tab("/dev/vda", true), false)
        .file("/root/down-raw", DOWN_RAW, true)
        .file("/root/down-header", DOWN_HEADER, true)
        .trace(false)
        .timeout(Duration::from_secs(1800));
    if patched {
        let ko = common::patched_module(&vm);
        vm.module_override(&ko);
    }
    let down_ours = if patched { "/root/down-raw vda".to_owned() } else { format!("/root/down-header {OUR_UUID}") };
    let uuid_part = if uuid_variant {
        r#"
        check uuid_hf hyperfine -N --style basic --runs 2 --prepare "$DOWN_OURS" \
            --export-json /root/uuid.json -n "ours: bcachetab-apply DEV (UUID= lines)" "bcachetab-apply --tab /root/tab-uuid /dev/vda"
        section uuid_json cat /root/uuid.json
        "#
    } else {
        ""
    };
    let script = format!(
        r#"
        DOWN_OURS="{down_ours}"
        check c_tool test -x /opt/c-tools/bcache-register
        check make_c /opt/c-tools/make-bcache -B /dev/vdb
        modprobe bcache
        emit register_raw "$(test -e /sys/fs/bcache/register_raw && echo yes || echo no)"
        # Once, checked, before timing: both come up, then go down.
        check ours_once bcachetab-apply /dev/vda
        section ours_once_status bcache tab list
        check ours_down $DOWN_OURS
        check c_once /opt/c-tools/bcache-register /dev/vdb
        check c_up test -e /sys/block/vdb/bcache
        check c_down /root/down-raw vdb
        emit load_before "$(cut -d' ' -f1-3 /proc/loadavg)"
        for r in $(seq {rounds}); do
            check hf_$r hyperfine -N --style basic --warmup 2 --runs {runs} --export-json /root/r$r.json \
                --prepare "$DOWN_OURS" -n "ours: bcachetab-apply DEV" "bcachetab-apply /dev/vda" \
                --prepare "/root/down-raw vdb" -n "C: bcache-register DEV" "/opt/c-tools/bcache-register /dev/vdb" \
                --prepare "/root/down-raw vdb" -n "true (process start)" "/usr/bin/true"
            section json cat /root/r$r.json
        done
        {uuid_part}
        emit load_after "$(cut -d' ' -f1-3 /proc/loadavg)"
        # System calls of one run each (not timed)
        $DOWN_OURS
        strace -f -c -o /root/s-ours bcachetab-apply /dev/vda > /dev/null
        emit syscalls_ours "$(awk '/total/ {{ print $4 }}' /root/s-ours)"
        /root/down-raw vdb
        strace -f -c -o /root/s-c /opt/c-tools/bcache-register /dev/vdb
        emit syscalls_c "$(awk '/total/ {{ print $4 }}' /root/s-c)"
        section strace_ours cat /root/s-ours
        "#
    );
    let host_before = load();
    let out = vm.run(&script);
    let host_after = load();
    let layout = if patched { "raw (patched module, register_raw)" } else { "header (stock module: loop + dm-linear + register)" };
    assert_eq!(out.expect_value("register_raw"), if patched { "yes" } else { "no" });
    let pooled = pool(&out.sections("json"));
    print_table(
        &format!(
            "guest, layout {layout}: {rounds} rounds x {runs} runs; guest load {} before, {} after; host load {host_before} before, {host_after} after; kernel {}",
            out.expect_value("load_before"),
            out.expect_value("load_after"),
            out.kernel_release
        ),
        &pooled,
        "ours: bcachetab-apply DEV",
        "C: bcache-register DEV",
    );
    println!(
        "\nsystem calls of one run (strace -c): ours {}, C {}\n\n{}",
        out.value("syscalls_ours").unwrap_or_default(),
        out.value("syscalls_c").unwrap_or_default(),
        out.section("strace_ours")
    );
    if uuid_variant {
        let p = pool(&out.sections("uuid_json"));
        print_table("guest: 999 other lines by UUID=", &p, "", "");
    }
}

fn main() {
    let runs = env_num("RUNS", 20);
    let rounds = env_num("ROUNDS", 3);
    let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "host,raw,header,uuid".into());
    let has = |p: &str| parts.split(',').any(|x| x.trim() == p);
    if has("host") {
        host(env_num("HOST_RUNS", 100), env_num("HOST_ROUNDS", 5));
    }
    // One QEMU at a time.
    if has("raw") || has("uuid") {
        guest(true, has("uuid"), runs, if has("raw") { rounds } else { 1 });
    }
    if has("header") {
        guest(false, false, runs, rounds);
    }
}
