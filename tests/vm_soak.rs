//! The soak (issue 8, item 7; FAULT-MATRIX.md, "Soak"): four existing
//! disks adopted in writeback with `bcache adopt` (two raw, through the
//! patched module's register_raw, and two with the dm-linear header), one
//! cache, and fio writing verifiable blocks to all four while their cache
//! set is stopped under it and brought back, 20 times, in one boot. Every
//! block fio saw written before the set went must read back intact once it
//! is back, and again at the end, for every cycle; every device must come
//! back attached to its set, each time.
//!
//! What the kernel does. `bcache stop CACHEDEV` writes 1 to the set's
//! `stop`. A stopped set, unlike an unregistered one (which writes back and
//! detaches its devices), stops every bcache device of the set and keeps
//! their dirty data in the cache: the backing devices' bcache directories
//! go at once, but a /dev/bcacheN that is open stays until it is closed
//! (each open holds the device's closure), and the writes to it go on being
//! accepted, through the set, meanwhile. The set's btree and journal are
//! flushed only once every device is gone. (`stop_when_cache_set_failed`
//! plays no part: it decides what a set that *fails*, with I/O errors, does
//! to its devices; a set stopped on purpose stops them all.) So a cycle
//! here: fio writes; `bcache stop` of the cache (it returns once the set
//! has let go); once the kernel has started stopping (the bcache
//! directories gone), fio must still get writes through (at least 1 MiB per
//! device after the stop: the writes a stopping set must not lose); then
//! fio is told to end (SIGTERM: it finishes the write in flight and saves
//! its verify state), the devices close, the set goes.
//!
//! Nothing brings the devices back but the tool: the raw disks hold no
//! superblock at all, the header ones keep their dm device whose header
//! says what the kernel last wrote; only bcachetab and the state file say
//! they are writeback devices of that set that may hold dirty data there.
//! So each cycle runs what udev would run at a boot, `bcache tab apply
//! --all` and `bcache register` of the cache, in both orders: odd cycles
//! the devices first (they must then wait for the set, registered dirty),
//! even cycles the cache first. A device registered as anything but dirty
//! with its set (state none, or stale) has the set's dirty data for it
//! dropped by the kernel and reads older blocks from the disk: fio's verify
//! fails then (shown by hand: FAULT-MATRIX.md, "Soak").
//!
//! Why fio's verify state. Each cycle's writes are random 4 KiB blocks
//! (they go to the cache: sequential_cutoff=0; most stay dirty there), each
//! with fio's verify header (magic, length, offset, the block's random
//! seed, a crc32c of the header) and a crc32c of the data, into a region of
//! each device of the cycle's own (fio's random map writes each block of
//! it at most once), with a seed of the device's and cycle's own: a block
//! of another cycle, of another device or the disk's old content fails the
//! header's checks. fio ends in the middle of the write phase, so
//! `verify_state_save` records how many writes it issued and which of the
//! last completed; `--verify_only --verify_state_load=1` then replays the
//! same job (same seed, same offsets) and reads back exactly the writes
//! that completed. psync at iodepth 1: the write in flight at SIGTERM
//! completes before fio ends. The test checks the bytes verified are the
//! bytes written, so the verify covers every acknowledged write. At the end
//! every cycle's region is verified again, after the stops that followed
//! it: by then their blocks are on the disk, written back, or still dirty
//! in the cache (two of the devices run with writeback_running=0, so
//! theirs stay dirty throughout), and both must read back intact.
//!
//! Also checked after every return: each device attached to the set, with
//! its /dev/bcacheN; the line's tunables (sequential_cutoff=0, and
//! writeback_running, which the kernel's attach turns on and the tool
//! writes again); the devices without writeback have at least the dirty
//! data they had before the stop; and over the whole boot no BUG, WARNING,
//! Oops or hung task in the kernel log.
//!
//! fio's ways, each of which made an earlier version of this test pass for
//! nothing: options after the first --name belong to that job only (so
//! the shared ones go first: a verify option at the end made three of the
//! four jobs write their region again and verify that); a job's random
//! offsets are seeded from its seed *and its index in the run* (so a cycle's
//! jobs are verified in a run of their own, in the write's order); a
//! verify_only run saves its own state over the write's unless
//! verify_state_save=0 (its dry run "issued" the whole region). One fio
//! process per phase, a job per device: fio takes about 2 s to start under
//! TCG (its libraries), per process.
//!
//! Run: `cargo test --test vm_soak -- --ignored --nocapture fio_verify`
//! (tests/run-all.sh does); `... stock_module` for the same on the stock
//! module, all four in the header layout. Needs fio on the host (it is
//! copied into the guest). SOAK_CYCLES and SOAK_WRITE_SECONDS (per cycle)
//! shorten it for a try.

mod common;

use std::time::Duration;

use common::vm::{DiskOptions, Scratch, Vm, VmOutput};

const MIB: u64 = 1 << 20;

struct Device {
    disk: &'static str,
    layout: &'static str,
    writeback_running: bool,
}

/// The four adopted disks (vda..vdd) and what sets each apart; the cache is vde.
const DEVICES: [Device; 4] = [
    Device { disk: "vda", layout: "raw", writeback_running: true },
    Device { disk: "vdb", layout: "header", writeback_running: true },
    Device { disk: "vdc", layout: "raw", writeback_running: false },
    Device { disk: "vdd", layout: "header", writeback_running: false },
];
/// Each cycle writes a region of its own on each device, larger than a
/// cycle's writes fill (fio's random map spreads them over it).
const REGION_MIB: u64 = 128;
/// What each device must still get written after the set was told to stop.
const AFTER_STOP_KIB: u64 = 1024;

fn env_u64(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{key}={v}: not a number"))).unwrap_or(default)
}

/// The guest's helpers. `jobs C` is fio's jobs for cycle C, one per device,
/// the same for the write and for every verify of it.
const LIB: &str = r#"
res() { _o=$("$@" 2>&1) && _s=0 || _s=$?; printf '%s status=%s' "$(echo "$_o" | tr '\n' ' ')" "$_s"; }
# The bcache sysfs directory of a disk's registered backing device: the disk's
# own (raw layout) or its dm device's (header layout).
sysdir() {
    if [ -d /sys/block/$1/bcache ]; then echo /sys/block/$1/bcache; return 0; fi
    for h in /sys/block/$1/holders/*; do
        if [ -d "$h/bcache" ]; then echo "$h/bcache"; return 0; fi
    done
    return 1
}
# Running, with its /dev/bcacheN, attached to our set.
up_attached() {
    _s=$(sysdir $1) || return 1
    [ "$(cat $_s/running)" = 1 ] && [ -e $_s/dev ] && [ -e $_s/cache ] || return 1
    _l=$(readlink $_s/cache)
    [ "${_l##*/}" = "$CSET" ] || return 1
    _n=$(readlink $_s/dev)
    [ -b /dev/${_n##*/} ]
}
node() { _s=$(sysdir $1) && _n=$(readlink $_s/dev) && echo /dev/${_n##*/}; }
all_up() { for _d in $DISKS; do up_attached $_d || return 1; done; }
all_down() { for _d in $DISKS; do ! sysdir $_d > /dev/null || return 1; done; }
# Registered, not running, waiting for the set, as dirty.
all_waiting() {
    for _d in $DISKS; do
        _s=$(sysdir $_d) || return 1
        [ "$(cat $_s/running)" = 0 ] && [ "$(cat $_s/state)" = dirty ] && [ ! -e $_s/cache ] || return 1
    done
}
each() { for _d in $DISKS; do "$@" $_d; done | tr '\n' ' '; }
attr() { cat $(sysdir $2)/$1; }
# Sectors written to /dev/bcacheN (its gendisk stays while it is open).
written() { set -- $(cat /sys/block/$1/stat); echo $7; }
# Every bcache device NODES names got KIB more written since SECTORS.
wrote_since() {
    _k=$1; set -- $2; for _b in $NODES; do
        [ $(( $(written ${_b#/dev/}) - $1 )) -ge $(( _k * 2 )) ] || return 1; shift
    done
}
# jobs C [OPTION...]: the options given apply to every job (fio's options
# before the first --name are global; after it, they belong to that job).
jobs() {
    _c=$1; shift
    echo --ioengine=psync --direct=1 --rw=randwrite --bs=4k --size=${REGION_MIB}m \
        --verify=crc32c --output-format=json "$@"
    _i=0; for _d in $DISKS; do
        echo --name=c${_c}d$_i --filename=$(node $_d) --offset=$(( _c * REGION_MIB ))m --randseed=$(( 7919 * _c + _i + 1 ))
        _i=$(( _i + 1 ))
    done
}
# The options of a verify: read back what the state (as the write left it)
# says completed, and leave the state as it is.
VERIFY="--verify_only --verify_state_load=1 --verify_state_save=0 --continue_on_error=verify"
# fio_bg BOUND DIR OUT ARGS...: fio in the background in DIR (its pid in
# DIR/fio.pid, its exit status in DIR/OUT.rc once it ends), killed after BOUND s.
fio_bg() {
    _bound=$1 _dir=$2 _out=$3; shift 3
    ( set +e; cd $_dir || exit
      timeout -s KILL $_bound sh -c 'echo $$ > fio.pid; exec fio "$@"' fio "$@" --output=$_out.json > $_out.log 2>&1
      echo $? > $_out.rc ) &
}
# die MSG: what the guest was doing (processes, fio's output, blocked tasks
# into the kernel log), then fail.
die() {
    section debug_ps ps -o pid,ppid,stat,args
    for _p in $(pidof fio); do echo "== $_p $(cat /proc/$_p/wchan)"; cat /proc/$_p/stack; done > /tmp/stacks 2>&1 || true
    section debug_stacks cat /tmp/stacks
    section debug_files ls -lR /tmp/soak
    for _f in /tmp/soak/*/*.log /tmp/soak/*/*.res; do [ -e $_f ] && section "debug_$_f" cat $_f; done
    echo w > /proc/sysrq-trigger
    fail "$@"
}
# bad_blocks LOG: the verify failures fio reported (one line per bad block).
# (fio writes them to its --output file, with the JSON, and to stderr)
bad_blocks() {
    for _f in "$@"; do grep -c 'verify: bad\|bad magic\|bad header\|verify failed\|crc32c: verify' $_f; done | sort -n | tail -1
}
"#;

fn scenario(cycles: u64, write_seconds: u64, patched: bool) -> String {
    let adopt: String = DEVICES
        .iter()
        .enumerate()
        .map(|(i, d)| {
            // the stock module has no register_raw: all four in the header layout
            let layout = if patched { d.layout } else { "header" };
            let mut opts = format!("-o sequential_cutoff=0 -o layout={layout}");
            if !d.writeback_running {
                opts.push_str(" -o writeback_running=0");
            }
            format!("check adopt_d{i} bcache adopt /dev/disk/by-id/virtio-soak{i} --cache $CACHE --writeback --name d{i} {opts}\n")
        })
        .collect();
    let disks: Vec<&str> = DEVICES.iter().map(|d| d.disk).collect();
    format!(
        r#"{LIB}
        # warnings (a WARN's trace) on the console too: a crash after one loses the dmesg
        dmesg -n 5
        CACHE=/dev/vde
        DISKS="{disks}"
        # the links udev would make (no udev in this guest): adopt names the disks by them
        mkdir -p /dev/disk/by-id
        for d in $DISKS; do ln -s ../../$d /dev/disk/by-id/virtio-$(cat /sys/block/$d/serial); done
        check make_cache bcache make -C $CACHE
        CSET=$(bcache super-show $CACHE | awk '$1 == "cset.uuid" {{ print $2 }}')
        emit cset "$CSET"
        {adopt}
        check tab_apply bcache tab apply --all
        wait_until 60 all_up
        section bcachetab cat /etc/bcachetab
        section list_start bcache tab list
        emit tunables_start "$(each attr sequential_cutoff) / $(each attr writeback_running)"
        c=1
        while [ $c -le {cycles} ]; do
            kmsg_mark cycle$c
            D=/tmp/soak/c$c; mkdir -p $D
            NODES=$(each node)
            emit nodes_c$c "$NODES"
            fio_bg $FIO_BOUND $D write $(jobs $c --do_verify=0 --verify_state_save=1)
            # the write phase: {write_seconds} s of fio on the four devices (a
            # length of load, not a wait for anything)
            sleep {write_seconds}
            [ ! -e $D/write.rc ] || emit early_c$c "$(cat $D/write.rc)"
            emit dirty_before_c$c "$(each attr dirty_data)"
            t0=$(now_cs)
            ( res timeout 120 bcache stop $CACHE > $D/stop.res ) &
            # the kernel stops the devices: their bcache directories go at once
            wait_until 60 all_down || die "cycle $c: a device is still registered 60 s after the set was told to stop"
            at_stop=$(for b in $NODES; do written ${{b#/dev/}}; done | tr '\n' ' ')
            # while fio still writes to them
            wait_until 120 wrote_since {AFTER_STOP_KIB} "$at_stop" || die "cycle $c: fio's writes stopped with the set"
            emit after_stop_kib_c$c "$(set -- $at_stop; for b in $NODES; do echo $(( ($(written ${{b#/dev/}}) - $1) / 2 )); shift; done | tr '\n' ' ')"
            [ ! -e $D/write.rc ] || emit early_c$c "$(cat $D/write.rc)"
            kill -TERM $(cat $D/fio.pid)
            wait_until 120 test -s $D/write.rc || die "cycle $c: fio did not end within 120 s of SIGTERM"
            mkdir $D/state && cp $D/local-*-verify.state $D/state/
            wait_until 120 test -s $D/stop.res || die "cycle $c: bcache stop did not return"
            emit stop_c$c "$(cat $D/stop.res)"
            test ! -e /sys/fs/bcache/$CSET || die "cycle $c: the set is still there after bcache stop"
            emit down_cs_c$c $(( $(now_cs) - t0 ))
            t1=$(now_cs)
            if [ $(( c % 2 )) = 1 ]; then
                emit apply_c$c "$(res timeout 120 bcache tab apply --all)"
                wait_until 60 all_waiting && emit waited_c$c yes || emit waited_c$c no
                section list_waiting_c$c bcache tab list
                emit register_c$c "$(res timeout 120 bcache register $CACHE)"
            else
                emit register_c$c "$(res timeout 120 bcache register $CACHE)"
                emit apply_c$c "$(res timeout 120 bcache tab apply --all)"
            fi
            wait_until 120 all_up && emit back_c$c yes || emit back_c$c no
            emit back_cs_c$c $(( $(now_cs) - t1 ))
            section list_c$c bcache tab list
            all_up || die "cycle $c: the devices did not all come back attached to $CSET"
            emit dirty_after_c$c "$(each attr dirty_data)"
            # the line's tunables: the kernel's attach turns writeback_running
            # on whatever was written before it, the tool writes it again
            emit tunables_c$c "$(each attr sequential_cutoff) / $(each attr writeback_running)"
            t2=$(now_cs)
            fio_bg $FIO_BOUND $D verify $(jobs $c $VERIFY)
            wait_until $FIO_BOUND test -s $D/verify.rc || die "cycle $c: the verify did not end"
            emit verify_cs_c$c $(( $(now_cs) - t2 ))
            for k in write verify; do
                emit ${{k}}_rc_c$c "$(cat $D/$k.rc)"
                emit ${{k}}_bad_c$c "$(bad_blocks $D/$k.log $D/$k.json)"
                section ${{k}}_json_c$c cat $D/$k.json
                section ${{k}}_log_c$c cat $D/$k.log
            done
            section state_files_c$c ls -l $D
            emit cycle_done $c
            c=$(( c + 1 ))
        done
        # Every cycle's blocks again, after the stops that followed: the same
        # four jobs as the cycle's write, from the state it left (fio seeds a
        # job's random offsets from its seed and its index in the run: so one
        # run per cycle, not one run of every cycle's jobs).
        kmsg_mark final
        t3=$(now_cs)
        c=1
        while [ $c -le {cycles} ]; do
            F=/tmp/soak/c$c/final; mkdir -p $F; cp /tmp/soak/c$c/state/* $F/
            fio_bg $FIO_BOUND $F final $(jobs $c $VERIFY)
            wait_until $FIO_BOUND test -s $F/final.rc || die "the final verify of cycle $c did not end"
            emit final_bad_c$c "$(bad_blocks $F/final.log $F/final.json)"
            section final_json_c$c cat $F/final.json
            section final_log_c$c cat $F/final.log
            c=$(( c + 1 ))
        done
        emit final_cs $(( $(now_cs) - t3 ))
        section list_end bcache tab list
        section state cat /var/lib/bcache/state
        "#,
        disks = disks.join(" "),
    )
}

/// fio's JSON report: its jobs by name.
fn fio_jobs(out: &VmOutput, section: &str) -> Vec<serde_json::Value> {
    let text = out.section(section);
    // fio's messages (a bad block's, one line each) come before the
    // document, the last one maybe run into its first line
    let start = text.find("\"fio version\"").and_then(|i| text[..i].rfind('{'));
    let start = start.unwrap_or_else(|| out.fail(&format!("{section}: no JSON from fio:\n{}", head(&text))));
    let v: serde_json::Value =
        serde_json::from_str(&text[start..]).unwrap_or_else(|e| out.fail(&format!("{section}: fio's JSON: {e}\n{text}")));
    v["jobs"].as_array().cloned().unwrap_or_default()
}

fn job<'a>(jobs: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    jobs.iter().find(|j| j["jobname"] == name).unwrap_or_else(|| panic!("no fio job {name}"))
}

/// The first lines of a long text.
fn head(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut h = lines[..lines.len().min(20)].join("\n");
    if lines.len() > 20 {
        h.push_str(&format!("\n... ({} lines)", lines.len()));
    }
    h
}

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The blocks a verify job found bad (`total_err`, there with
/// continue_on_error), or 1 if it failed otherwise (its `error`).
fn verify_errors_of(v: &serde_json::Value) -> u64 {
    let total = v.get("total_err").unwrap_or_else(|| panic!("fio job {}: no total_err: not a verify with continue_on_error", v["jobname"]));
    num(total).max(u64::from(num(&v["error"]) != 0))
}

/// "12.3M" (the kernel's dirty_data) in bytes, roughly.
fn human_bytes(s: &str) -> f64 {
    let (n, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1024.0),
        Some('M') => (&s[..s.len() - 1], MIB as f64),
        Some('G') => (&s[..s.len() - 1], (1u64 << 30) as f64),
        _ => (s, 1.0),
    };
    n.parse::<f64>().unwrap_or_else(|_| panic!("dirty_data {s:?}")) * mult
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// The soak: raw and header layouts side by side on the patched module
/// (its changes touch only devices registered raw: a header device takes
/// the stock code).
#[test]
#[ignore = "a 12-15 minute soak under TCG; tests/run-all.sh runs it (cargo test --test vm_soak -- --ignored)"]
fn fio_verify_on_four_writeback_devices_across_twenty_set_stops() {
    soak(true);
}

/// The same on Debian's stock module, all four in the header layout (on
/// demand: `cargo test --test vm_soak -- --ignored stock`).
#[test]
#[ignore = "the soak again on the stock module; not in tests/run-all.sh (CI time)"]
fn stock_module_header_layout_across_twenty_set_stops() {
    soak(false);
}

fn soak(patched: bool) {
    let cycles = env_u64("SOAK_CYCLES", 20);
    let write_seconds = env_u64("SOAK_WRITE_SECONDS", 8);
    let scratch = Scratch::new();
    let mut vm = Vm::new();
    if patched {
        let ko = common::patched_module(&vm);
        vm.host_file(&ko, "/lib/modules/bcache.ko");
    }
    vm.host_binary("fio").memory_mib(1536);
    for i in 0..DEVICES.len() {
        let img = scratch.image(&format!("d{i}.img"), (cycles + 1) * REGION_MIB * MIB);
        vm.disk_with(&img, DiskOptions { serial: Some(format!("soak{i}")), ..DiskOptions::default() });
    }
    let cache = scratch.image("cache.img", 8192 * MIB);
    vm.disk(&cache);
    // Bounds on each fio run and on the whole boot: a hang fails the test.
    let fio_bound = 10 * write_seconds + 300;
    vm.env("REGION_MIB", &REGION_MIB.to_string()).env("FIO_BOUND", &fio_bound.to_string());
    vm.timeout(Duration::from_secs(cycles * (2 * write_seconds + 60) + 900 + 4 * fio_bound));
    let t0 = std::time::Instant::now();
    let out = vm.run_unchecked(&scenario(cycles, write_seconds, patched));
    let wall = t0.elapsed();
    out.assert_ok();
    // A panic in the analysis fails with the guest's logs saved too.
    let analysed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| analyse(&out, cycles, write_seconds, wall)));
    match analysed {
        Ok(failures) if failures.is_empty() => {}
        Ok(failures) => out.fail(&format!("{} failures:\n{}", failures.len(), failures.join("\n"))),
        Err(e) => {
            let why = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            out.fail(&format!("reading the soak's output: {why}"))
        }
    }
}

/// The soak's figures (printed) and what failed.
fn analyse(out: &VmOutput, cycles: u64, write_seconds: u64, wall: Duration) -> Vec<String> {

    let mut failures = Vec::new();
    let done = out.values("cycle_done");
    assert_eq!(done.len() as u64, cycles, "cycles done: {done:?}");
    let (mut total_written, mut total_verified, mut verify_errors) = (0u64, 0u64, 0u64);
    let mut fio_seconds = 0.0;
    let mut backs = Vec::new();
    eprintln!(
        "soak: cycle | MiB written d0 d1 d2 d3 | KiB after the stop d0..d3 | dirty before the stop -> after the return d0..d3 | stop s | back s (order) | verify s"
    );
    for c in 1..=cycles {
        let write = fio_jobs(out, &format!("write_json_c{c}"));
        let verify = fio_jobs(out, &format!("verify_json_c{c}"));
        let bad: u64 = out.expect_value(&format!("verify_bad_c{c}")).parse().unwrap();
        let rc = out.expect_value(&format!("verify_rc_c{c}"));
        if bad != 0 || rc != "0" {
            failures.push(format!("cycle {c}: verify after the return: {bad} bad blocks, exit {rc}:\n{}", head(&out.section(&format!("verify_json_c{c}")))));
        }
        let mut written = Vec::new();
        for i in 0..DEVICES.len() {
            let name = format!("c{c}d{i}");
            let (w, v) = (job(&write, &name), job(&verify, &name));
            let wbytes = num(&w["write"]["io_bytes"]);
            let vbytes = num(&v["read"]["io_bytes"]);
            let errs = verify_errors_of(v);
            if num(&w["error"]) != 0 {
                failures.push(format!("cycle {c} {name}: fio's write failed (error {})", w["error"]));
            }
            if errs != 0 {
                failures.push(format!("cycle {c} {name}: {errs} verify errors after the return"));
            }
            // Every acknowledged write is read back.
            if wbytes == 0 || vbytes != wbytes {
                failures.push(format!("cycle {c} {name}: {wbytes} bytes written before the stop, {vbytes} verified"));
            }
            verify_errors += errs;
            total_written += wbytes;
            total_verified += vbytes;
            written.push(wbytes);
        }
        if let Some(rc) = out.value(&format!("early_c{c}")) {
            failures.push(format!("cycle {c}: fio ended (status {rc}) before it was told to: its region is too small"));
        }
        if out.value(&format!("back_c{c}")) != Some("yes") {
            failures.push(format!("cycle {c}: the devices did not come back attached"));
        }
        if c % 2 == 1 && out.value(&format!("waited_c{c}")) != Some("yes") {
            failures.push(format!(
                "cycle {c}: tab apply without the set did not leave every device registered dirty, waiting for it:\n{}",
                out.section(&format!("list_waiting_c{c}"))
            ));
        }
        for step in ["stop", "register", "apply"] {
            let r = out.expect_value(&format!("{step}_c{c}"));
            if !r.ends_with("status=0") {
                failures.push(format!("cycle {c}: {step}: {r}"));
            }
        }
        // sequential_cutoff from bcachetab is set again at every registration.
        let tunables = out.expect_value(&format!("tunables_c{c}"));
        let (cutoff, running) = tunables.split_once(" / ").unwrap();
        if cutoff.split_whitespace().any(|v| v != "0.0k") {
            failures.push(format!("cycle {c}: sequential_cutoff {cutoff}, bcachetab says 0"));
        }
        let want: Vec<&str> = DEVICES.iter().map(|d| if d.writeback_running { "1" } else { "0" }).collect();
        if running.split_whitespace().collect::<Vec<_>>() != want {
            failures.push(format!("cycle {c}: writeback_running {running}, bcachetab says {}", want.join(" ")));
        }
        let before: Vec<&str> = out.expect_value(&format!("dirty_before_c{c}")).split_whitespace().collect();
        let after: Vec<&str> = out.expect_value(&format!("dirty_after_c{c}")).split_whitespace().collect();
        // Without writeback, what was dirty before the stop is dirty after
        // the return, and more (the writes after the reading).
        for (i, d) in DEVICES.iter().enumerate() {
            if !d.writeback_running && human_bytes(after[i]) < human_bytes(before[i]) {
                failures.push(format!("cycle {c} d{i}: dirty data {} before the stop, {} after the return", before[i], after[i]));
            }
        }
        let secs = |k: &str| out.expect_value(&format!("{k}_c{c}")).parse::<f64>().unwrap() / 100.0;
        backs.push(secs("back_cs"));
        fio_seconds += write_seconds as f64 + secs("verify_cs");
        eprintln!(
            "soak: {c:5} | {} | {} | {} -> {} | {:5.1} | {:5.1} ({}) | {:5.1}",
            written.iter().map(|w| format!("{:5.1}", mib(*w))).collect::<Vec<_>>().join(" "),
            out.expect_value(&format!("after_stop_kib_c{c}")),
            before.join(" "),
            after.join(" "),
            secs("down_cs"),
            secs("back_cs"),
            if c % 2 == 1 { "devices first" } else { "cache first" },
            secs("verify_cs"),
        );
    }
    // The final pass: every cycle's blocks, after the stops since.
    let mut final_verified = 0;
    for c in 1..=cycles {
        let fin = fio_jobs(out, &format!("final_json_c{c}"));
        let bad: u64 = out.expect_value(&format!("final_bad_c{c}")).parse().unwrap();
        if bad != 0 {
            failures.push(format!("final verify of cycle {c}: {bad} bad blocks:\n{}", head(&out.section(&format!("final_json_c{c}")))));
        }
        let write = fio_jobs(out, &format!("write_json_c{c}"));
        for i in 0..DEVICES.len() {
            let name = format!("c{c}d{i}");
            let (w, v) = (job(&write, &name), job(&fin, &name));
            let errs = verify_errors_of(v);
            let vbytes = num(&v["read"]["io_bytes"]);
            if errs != 0 {
                failures.push(format!("final verify of {name}: {errs} errors"));
            }
            if vbytes != num(&w["write"]["io_bytes"]) {
                failures.push(format!("final verify of {name}: {vbytes} bytes verified, {} written", num(&w["write"]["io_bytes"])));
            }
            verify_errors += errs;
            final_verified += vbytes;
        }
    }
    let final_seconds = out.expect_value("final_cs").parse::<f64>().unwrap() / 100.0;
    fio_seconds += final_seconds;
    // No kernel complaint over the whole soak.
    for l in out.dmesg.lines() {
        if ["BUG:", "WARNING:", "Oops", "general protection fault", "Call Trace", "blocked for more than", "KASAN", "UBSAN"].iter().any(|m| l.contains(m)) {
            failures.push(format!("kernel: {l}"));
        }
    }
    backs.sort_by(f64::total_cmp);
    eprintln!(
        "soak: {cycles} cycles; {:.1} MiB written (4 KiB random, 4 devices), {:.1} MiB of it verified after each return and {:.1} MiB again at the end \
         ({final_seconds:.0} s); {verify_errors} verify errors; back attached in {:.1}-{:.1} s (median {:.1}); about {fio_seconds:.0} s of fio, {:.0} s in QEMU",
        mib(total_written),
        mib(total_verified),
        mib(final_verified),
        backs[0],
        backs[backs.len() - 1],
        backs[backs.len() / 2],
        wall.as_secs_f64()
    );
    if verify_errors != 0 && failures.is_empty() {
        failures.push(format!("{verify_errors} verify errors"));
    }
    failures
}
