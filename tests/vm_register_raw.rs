//! The register_raw patch (kernel/register_raw.patch) in the real kernel:
//! the module built by kernel/build.sh replaces Debian's bcache.ko in the
//! guest. `BCACHE_VM_RAW_MODULE=PATH` boots another build instead (one of
//! an older patch, say, to see which scenarios it fails).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::{pattern, RES, SAME_FILES};
use common::vm::{Scratch, Vm};

const MIB: u64 = 1 << 20;

fn patched_vm() -> Vm {
    let mut vm = Vm::new();
    let ko = match std::env::var_os("BCACHE_VM_RAW_MODULE") {
        Some(p) => PathBuf::from(p),
        None => common::patched_module(&vm),
    };
    vm.host_file(&ko, "/lib/modules/bcache.ko");
    vm
}

/// Guest shell: `stop_set CSET` stops a cache set and waits until bcache
/// has let it go: its sysfs directory goes first, then it leaves bcache's
/// list of sets and its cache device is closed, just before the kernel
/// says "Cache set CSET unregistered".
const STOP_SET: &str = r#"
stop_set() {
    _n=$(dmesg | grep -c "Cache set $1 unregistered" || :)
    echo 1 > /sys/fs/bcache/$1/stop
    wait_until 60 sh -c "[ \$(dmesg | grep -c 'Cache set $1 unregistered') -gt $_n ]"
}
"#;

/// Guest shell: `no_congestion CSET` turns the set's congestion tracking
/// off (both thresholds 0). With it on, a write that meets a cache device
/// slower than congested_write_threshold_us (20 ms) bypasses the cache: on
/// a loaded host (other VMs under TCG) an 8 MiB write left 356k to 6.1M
/// of it dirty, not 8.0M, whatever the module.
const NO_CONGESTION: &str = r#"
no_congestion() {
    echo 0 > /sys/fs/bcache/$1/congested_read_threshold_us
    echo 0 > /sys/fs/bcache/$1/congested_write_threshold_us
}
"#;

/// Guest shell (with STOP_SET and NO_CONGESTION): a writeback device
/// registered raw on a new cache set (vda) gets /root/data.bin written
/// through it, all of it dirty in the cache (no sequential or congestion
/// bypass, the writeback thread stopped); then device and set are stopped:
/// the data is in the cache, not on vdb. Sets U and CSET.
const DIRTY_IN_CACHE: &str = r#"
dirty_in_cache() {
    U=$1
    check make_cache bcache make -C /dev/vda
    CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
    check register_cache bcache register /dev/vda
    no_congestion $CSET
    check register_raw sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback' > /sys/fs/bcache/register_raw"
    B=$(bcache_of /dev/vdb)
    wait_for /sys/block/vdb/bcache/cache
    echo 0 > /sys/block/vdb/bcache/writeback_running
    echo 0 > /sys/block/vdb/bcache/sequential_cutoff
    check write dd if=/root/data.bin of="$B" bs=64k conv=fsync
    check_eq dirty dirty "$(cat /sys/block/vdb/bcache/state)"
    emit dirty_data "$(cat /sys/block/vdb/bcache/dirty_data)"
    check stop_backing bcache stop /dev/vdb
    wait_gone /sys/block/vdb/bcache
    stop_set $CSET
    echo 3 > /proc/sys/vm/drop_caches
    check_fails raw_lacks_dirty_data sh -c "cmp -s -n $(stat -c %s /root/data.bin) /dev/vdb /root/data.bin"
}
"#;

/// 8 MiB of data, dirty in the cache.
const DIRTY_LEN: usize = 8 << 20;

/// The guest's sha256 of the device and of the data written: `sum` and
/// `want` (emitted by the scenario), equal and non-empty.
fn assert_same_sum(out: &common::vm::VmOutput) {
    let (sum, want) = (out.expect_value("sum"), out.expect_value("want"));
    assert!(want.len() >= 64, "no checksum: {want:?}");
    assert_eq!(sum, want, "the device does not hold the data written (sha256)");
}



/// An ext4 file system with files, registered raw: the bcache device shows
/// the same files, and a write through it lands at the same offset of the
/// raw device (data offset 0).
#[test]
fn raw_registered_filesystem_keeps_its_files() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    let files: Vec<_> = (0..5u64)
        .map(|i| (format!("file{i}"), pattern(100_000 + i as usize * 77_777, 0xfeed_0000 + i)))
        .collect();
    for (name, data) in &files {
        vm.file(&format!("/root/expect/{name}"), data.clone(), false);
    }
    let disk = common::ext4_with_files(&scratch, "fs.img", 64 * MIB, &files, None);
    let tail = pattern(1 << 20, 0x7a11);
    vm.disk(&disk).module("ext4").file("/root/tail.bin", tail.clone(), false);
    let out = vm.run(&format!(
        r#"{RES}
        check has_register_raw test -e /sys/fs/bcache/register_raw
        check register_raw sh -c 'echo "/dev/vda 5d2c9a3e-1f4b-4c6d-8e7f-901a2b3c4d5e none" > /sys/fs/bcache/register_raw'
        B=$(bcache_of /dev/vda)
        check_eq no_superblock_written 2 "$(bcache super-show /dev/vda >/dev/null 2>&1; echo $?)"
        mkdir -p /mnt
        check mount mount -t ext4 -o ro "$B" /mnt
        for f in /root/expect/*; do check "same_${{f##*/}}" cmp "$f" "/mnt/${{f##*/}}"; done
        check umount umount /mnt
        check write_tail dd if=/root/tail.bin of="$B" bs=64k seek=1008 conv=fsync
        emit again "$(res sh -c 'echo "/dev/vda 5d2c9a3e-1f4b-4c6d-8e7f-901a2b3c4d5e none" > /sys/fs/bcache/register_raw')"
        "#
    ));
    assert!(out.value("again").unwrap().ends_with("status=1"), "registered twice");
    // data_offset 0: bcache sector N is raw sector N.
    let raw = common::vm::read_at(&disk, 1008 * 65536, tail.len());
    assert!(raw == tail, "the write through bcache is not at the same offset of the raw device");
}

/// A writeback device with dirty data in its cache, registered raw again
/// as dirty: it waits for its cache set, then serves everything, the dirty
/// part included. The uevents that replace superblock writes say so.
#[test]
fn raw_dirty_device_waits_for_its_cache_set() {
    let scratch = Scratch::new();
    let cache = scratch.image("cache.img", 300 * MIB);
    let backing = scratch.image("backing.img", 128 * MIB);
    let data = pattern(4 << 20, 0xd1d1);
    let mut vm = patched_vm();
    vm.disk(&cache).disk(&backing).file("/root/data.bin", data.clone(), false);
    let out = vm.run(&format!(
        r#"{RES}{STOP_SET}{NO_CONGESTION}
        U=0b0c0d0e-1a2b-4c3d-8e4f-5a6b7c8d9e0f
        # Record every raw-device uevent (they replace superblock writes).
        uevent sh -c '[ -n "$BCACHE_RAW" ] && echo "ev $BCACHE_STATE $BCACHE_SET_UUID $BCACHE_CACHE_MODE $BCACHE_LABEL" >> /tmp/uevents' &
        check make_cache bcache make -C /dev/vda
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        check register_cache bcache register /dev/vda
        no_congestion $CSET
        check register_raw sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback label=raw1' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        wait_for /sys/block/vdb/bcache/cache
        echo 0 > /sys/block/vdb/bcache/writeback_running
        check write dd if=/root/data.bin of="$B" bs=64k conv=fsync
        check_eq dirty dirty "$(cat /sys/block/vdb/bcache/state)"
        wait_until 30 grep -q "^ev dirty $CSET writeback raw1" /tmp/uevents
        # Stop both without writing back: the dirty data stays in the cache.
        check stop_backing bcache stop /dev/vdb
        wait_gone /sys/block/vdb/bcache
        stop_set $CSET
        check_fails raw_lacks_dirty_data sh -c "dd if=/dev/vdb bs=64k count=64 2>/dev/null | cmp -s - /root/data.bin"

        check register_raw_dirty sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=dirty label=raw1' > /sys/fs/bcache/register_raw"
        wait_for /sys/block/vdb/bcache/running
        check_eq waits 0 "$(cat /sys/block/vdb/bcache/running)"
        check_fails no_bcache_dev test -e /sys/block/vdb/bcache/dev
        check register_cache_again bcache register /dev/vda
        B=$(bcache_of /dev/vdb)
        check dirty_data_intact sh -c "dd if=$B bs=64k count=64 2>/dev/null | cmp - /root/data.bin"

        echo 1 > /sys/block/vdb/bcache/writeback_running
        # Written back: the kernel reports clean again (after attach's clean
        # and the dirty one).
        wait_until 60 sh -c '[ "$(cat /sys/block/vdb/bcache/state)" = clean ]'
        wait_until 30 sh -c "grep '^ev ' /tmp/uevents | sed -n '/^ev dirty/,\$p' | grep -q '^ev clean $CSET'"
        echo writearound > /sys/block/vdb/bcache/cache_mode
        wait_until 30 grep -q "^ev clean $CSET writearound raw1" /tmp/uevents
        echo relabelled > /sys/block/vdb/bcache/label
        wait_until 30 grep -q "^ev clean $CSET writearound relabelled" /tmp/uevents
        check detach bcache detach /dev/vdb
        wait_until 60 grep -q "^ev none 00000000-0000-0000-0000-000000000000" /tmp/uevents
        # bcache wrote behind the raw device's page cache.
        echo 3 > /proc/sys/vm/drop_caches
        check written_back sh -c "dd if=/dev/vdb bs=64k count=64 2>/dev/null | cmp - /root/data.bin"
        section uevents cat /tmp/uevents
        "#
    ));
    let events = out.section("uevents");
    let states: Vec<&str> = events.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    // attach (clean), first dirty write, writeback done (clean), cache_mode
    // and label changes (clean, with the new values), detach (none)
    for want in ["clean", "dirty", "clean", "none"] {
        assert!(states.contains(&want), "no {want} uevent in {events}");
    }
    let first_dirty = states.iter().position(|s| *s == "dirty").unwrap();
    assert_eq!(states[0], "clean", "attach comes first: {events}");
    assert!(states[first_dirty..].contains(&"none"), "detach after the dirty phase: {events}");
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    fn uuid(&mut self) -> String {
        uuid::Uuid::from_u64_pair(self.next(), self.next()).hyphenated().to_string()
    }
}

/// Lines that register_raw must refuse, of every kind the interface can
/// meet. `taken` is a registered device and its uuid; `cache` a registered
/// cache device; `formatted` a device with a bcache superblock; `free` an
/// unused device.
fn hostile_lines(n: usize, taken: (&str, &str), cache: &str, formatted: &str, free: &str) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_0bad_1dea_0001);
    let mut lines = Vec::with_capacity(n);
    for i in 0..n {
        let u = rng.uuid();
        let line: Vec<u8> = match i % 14 {
            0 => (0..1 + rng.below(200)).map(|_| rng.next() as u8).collect(),
            1 => vec![b'a' + (i % 26) as u8; 1025 + rng.below(3000) as usize],
            2 => {
                let mut l = format!("{free} {u} none").into_bytes();
                let at = rng.below(l.len() as u64) as usize;
                l.insert(at, 0);
                l
            }
            3 => {
                let mut bad = u.clone().into_bytes();
                let at = rng.below(bad.len() as u64) as usize;
                // Never a hex digit or a hyphen: the uuid must stay bad.
                bad[at] = if bad[at] == b'-' { b'0' } else { rng.pick(&["g", "z", "_", " ", "x"]).as_bytes()[0] };
                if i % 24 == 3 {
                    bad.truncate(35);
                }
                let mut l = format!("{free} ").into_bytes();
                l.extend(bad);
                l.extend(b" none");
                l
            }
            4 => format!("{free} {} none", taken.1).into_bytes(),
            5 => match rng.below(3) {
                // (An empty write never reaches the kernel.)
                0 => b"\n".to_vec(),
                1 => free.as_bytes().to_vec(),
                _ => format!("{free} {u}").into_bytes(),
            },
            6 => {
                let opt = rng.pick(&[
                    "data_offset=-1",
                    "data_offset=99999999999999999999999",
                    "data_offset=18446744073709551615",
                    "data_offset=1x",
                    "block_size=0",
                    "block_size=3",
                    "block_size=8192",
                    "block_size=-4096",
                    "block_size=256",
                    "data_offset=",
                ]);
                format!("{free} {u} none {opt}").into_bytes()
            }
            7 => format!("/dev/nonexistent{i} {u} none").into_bytes(),
            8 => format!("{cache} {u} none").into_bytes(),
            9 => format!("{} {u} none", taken.0).into_bytes(),
            10 => format!("{formatted} {u} none").into_bytes(),
            // A valid uuid with something after it (uuid_parse reads 36
            // characters only), as the device's or the cache set's uuid.
            12 => {
                let junk = rng.pick(&["junk", "0", "-", "f", "{}", "-0000", "ab-cd", "\u{e9}"]);
                if rng.below(2) == 0 {
                    format!("{free} {u}{junk} none").into_bytes()
                } else {
                    format!("{free} {u} {}{junk}", rng.uuid()).into_bytes()
                }
            }
            // size= the device cannot have, or that is no size at all
            // ({free} has 131072 sectors).
            13 => {
                let opt = rng.pick(&[
                    "size=0",
                    "size=-1",
                    "size=",
                    "size=1x",
                    "size=0x100",
                    "size=131073",
                    "size=18446744073709551615",
                    "size=99999999999999999999999",
                    "size=8 data_offset=8",
                    "data_offset=1024 size=1024",
                    "size=131072 size=131072",
                ]);
                format!("{free} {u} none {opt}").into_bytes()
            }
            _ => {
                let tail = rng.pick(&[
                    "cache_mode=writeback cache_mode=writeback",
                    "colour=blue",
                    "trailing",
                    "state=dirty",
                    "state=clean",
                    "state=gone",
                    "cache_mode=fast",
                    "label=0123456789012345678901234567890123",
                    "label=a\u{1}b",
                    "=",
                ]);
                format!("{free} {u} none {tail}").into_bytes()
            }
        };
        lines.push(line);
    }
    lines
}

/// Every byte as an octal escape for printf's %b, so any line, NULs
/// included, is written in one write(2) by the shell's printf builtin.
fn printf_escaped(line: &[u8]) -> String {
    line.iter().map(|b| if b.is_ascii_alphanumeric() { (*b as char).to_string() } else { format!("\\0{b:o}") }).collect()
}

/// 10,000 hostile lines: every one refused with an error, no oops, BUG,
/// WARN or sanitizer report, and the module still registers a good line.
#[test]
fn register_raw_refuses_hostile_input() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    for name in ["cache", "taken", "formatted", "free"] {
        let size = if name == "cache" { 300 * MIB } else { 64 * MIB };
        vm.disk(&scratch.image(&format!("{name}.img"), size));
    }
    let taken_uuid = "7e7e7e7e-0000-4000-8000-000000000001";
    let lines = hostile_lines(10_000, ("/dev/vdb", taken_uuid), "/dev/vda", "/dev/vdc", "/dev/vdd");
    let mut body = String::from("a=0; r=0\n");
    for (i, l) in lines.iter().enumerate() {
        body.push_str(&format!(
            "printf '%b' '{}' > /sys/fs/bcache/register_raw 2>/dev/null && {{ a=$((a+1)); echo {i} >> /tmp/accepted; }} || r=$((r+1))\n",
            printf_escaped(l)
        ));
    }
    body.push_str("emit accepted $a\nemit refused $r\n");
    vm.file("/root/hostile.sh", body, false);
    // Room for a reason logged per line.
    vm.kernel_arg("log_buf_len=16M");
    let out = vm.run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vda
        check register_cache bcache register /dev/vda
        check make_formatted bcache make -B /dev/vdc
        check taken bcache register --raw /dev/vdb --uuid {taken_uuid}
        bcache_of /dev/vdb
        kmsg_mark hostile
        . /root/hostile.sh
        touch /tmp/accepted
        section accepted_lines head -n 20 /tmp/accepted
        emit ours_refuses "$(res bcache register --raw /dev/vdd --uuid {taken_uuid})"
        emit ours_formatted "$(res bcache register --raw /dev/vdc --uuid 7e7e7e7e-0000-4000-8000-000000000002)"
        emit ours_dirty "$(res bcache register --raw /dev/vdd --uuid 7e7e7e7e-0000-4000-8000-000000000003 --state dirty)"
        check still_works bcache register --raw /dev/vdd --uuid 7e7e7e7e-0000-4000-8000-000000000004 --mode writeback --label fine
        bcache_of /dev/vdd
        check_eq mode "writethrough [writeback] writearound none" "$(cat /sys/block/vdd/bcache/cache_mode)"
        dmesg_section hostile_dmesg hostile
        "#
    ));
    let accepted: Vec<String> = out
        .section("accepted_lines")
        .lines()
        .filter_map(|i| i.trim().parse::<usize>().ok())
        .map(|i| format!("{i}: {:?}", String::from_utf8_lossy(&lines[i])))
        .collect();
    assert_eq!(out.value("accepted"), Some("0"), "register_raw accepted hostile lines:\n{}", accepted.join("\n"));
    assert_eq!(out.value("refused"), Some("10000"));
    let dmesg = out.section("hostile_dmesg");
    for bad in ["BUG:", "WARNING:", "Oops", "KASAN", "UBSAN", "general protection", "Call Trace"] {
        assert!(!dmesg.contains(bad), "{bad} in the kernel log:\n{dmesg}");
    }
    let refusals = dmesg.matches("register_raw: ").count();
    assert!(refusals >= 9_000, "only {refusals} refusals logged with a reason");
    // Our front end says why, in the kernel's words or its own.
    let ours = out.value("ours_refuses").unwrap();
    assert!(ours.contains("backing device uuid already registered") && ours.ends_with("status=1"), "{ours}");
    let formatted = out.value("ours_formatted").unwrap();
    assert!(formatted.contains("holds a bcache superblock of its own: use register"), "{formatted}");
    let dirty = out.value("ours_dirty").unwrap();
    assert!(dirty.contains("state dirty needs a cache set uuid"), "{dirty}");
}

/// A raw device registered dirty whose cache set never comes: `running`
/// (here through `bcache run --force`) starts it, and the uevent that
/// replaces the superblock write says stale.
#[test]
fn raw_forced_run_reports_stale() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    vm.disk(&scratch.image("b.img", 64 * MIB));
    let out = vm.run(&format!(
        r#"{RES}
        uevent sh -c '[ -n "$BCACHE_RAW" ] && echo "ev $BCACHE_STATE $BCACHE_UUID" >> /tmp/uevents' &
        check register bcache register --raw /dev/vda --uuid 3c3c3c3c-1111-4222-8333-444444444444 --cset 9d9d9d9d-5555-4666-8777-888888888888 --mode writeback --state dirty
        wait_for /sys/block/vda/bcache/running
        check_eq waits 0 "$(cat /sys/block/vda/bcache/running)"
        emit refused "$(res bcache run /dev/vda)"
        check forced bcache run --force /dev/vda
        bcache_of /dev/vda
        wait_until 30 grep -q "^ev stale 3c3c3c3c-1111-4222-8333-444444444444" /tmp/uevents
        check_eq state inconsistent "$(cat /sys/block/vda/bcache/state)"
        "#
    ));
    let refused = out.value("refused").unwrap();
    assert!(refused.contains("would lose those writes") && refused.ends_with("status=1"), "{refused}");
}

/// 8 MiB dirty in the cache of a writeback device; device and set stopped,
/// the set registered again. register_raw with state none is refused (the
/// set holds data for the uuid: attaching in state none would invalidate
/// its slot, and the dirty data with it); with state=dirty the device
/// comes back with all the data.
#[test]
fn raw_state_none_is_refused_while_the_set_holds_dirty_data() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    vm.disk(&scratch.image("cache.img", 300 * MIB)).disk(&scratch.image("backing.img", 64 * MIB));
    vm.file("/root/data.bin", pattern(DIRTY_LEN, 0xd1d2), false);
    let out = vm.run(&format!(
        r#"{RES}{STOP_SET}{NO_CONGESTION}{DIRTY_IN_CACHE}
        dirty_in_cache 4d4d4d4d-1a2b-4c3d-8e4f-5a6b7c8d9e01
        check register_cache_again bcache register /dev/vda
        kmsg_mark none
        emit none_line "$(res sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=none' > /sys/fs/bcache/register_raw")"
        check_fails none_not_registered test -e /sys/block/vdb/bcache
        dmesg_section none_dmesg none
        emit ours_none "$(res bcache register --raw /dev/vdb --uuid $U --cset $CSET --mode writeback)"
        check_fails still_not_registered test -e /sys/block/vdb/bcache
        check register_dirty sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=dirty' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        check attached test -e /sys/block/vdb/bcache/cache
        check_eq still_dirty dirty "$(cat /sys/block/vdb/bcache/state)"
        emit sum "$(dd if=$B bs=64k count={blocks} 2>/dev/null | sha256sum)"
        emit want "$(sha256sum < /root/data.bin)"
        check dirty_data_intact sh -c "dd if=$B bs=64k count={blocks} 2>/dev/null | cmp - /root/data.bin"
        "#,
        blocks = DIRTY_LEN / 65536,
    ));
    assert_eq!(out.expect_value("dirty_data"), "8.0M", "not 8 MiB dirty before the stop");
    let none = out.expect_value("none_line");
    assert!(none.ends_with("status=1") && none.contains("File exists"), "state none accepted: {none}");
    let dmesg = out.section("none_dmesg");
    assert!(
        dmesg.contains("register_raw: cache set holds data for this uuid: register with state=clean or state=dirty (or state=stale to drop that data)"),
        "{dmesg}"
    );
    let ours = out.expect_value("ours_none");
    assert!(ours.contains("cache set holds data for this uuid") && ours.ends_with("status=1"), "{ours}");
    assert_same_sum(&out);
}

/// The other order: the device is registered raw in state none before its
/// set, and runs at once. When the set comes, the attach is refused and
/// the slot kept (the old module invalidated it: the dirty data was gone);
/// the device stays detached. Stopped and registered again as dirty, it
/// has all its data.
#[test]
fn raw_state_none_device_does_not_take_the_slot_of_a_set_registered_after_it() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    vm.disk(&scratch.image("cache.img", 300 * MIB)).disk(&scratch.image("backing.img", 64 * MIB));
    vm.file("/root/data.bin", pattern(DIRTY_LEN, 0xd1d3), false);
    let out = vm.run(&format!(
        r#"{RES}{STOP_SET}{NO_CONGESTION}{DIRTY_IN_CACHE}
        dirty_in_cache 4d4d4d4d-1a2b-4c3d-8e4f-5a6b7c8d9e02
        check register_none sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback' > /sys/fs/bcache/register_raw"
        bcache_of /dev/vdb
        kmsg_mark set_after
        check register_cache_again bcache register /dev/vda
        wait_for /sys/fs/bcache/$CSET
        check_fails not_attached test -e /sys/block/vdb/bcache/cache
        check_eq still_running 1 "$(cat /sys/block/vdb/bcache/running)"
        check_eq still_none "no cache" "$(cat /sys/block/vdb/bcache/state)"
        dmesg_section set_after_dmesg set_after
        check stop_none bcache stop /dev/vdb
        wait_gone /sys/block/vdb/bcache
        check register_dirty sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=dirty' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        check attached test -e /sys/block/vdb/bcache/cache
        emit sum "$(dd if=$B bs=64k count={blocks} 2>/dev/null | sha256sum)"
        emit want "$(sha256sum < /root/data.bin)"
        check dirty_data_intact sh -c "dd if=$B bs=64k count={blocks} 2>/dev/null | cmp - /root/data.bin"
        "#,
        blocks = DIRTY_LEN / 65536,
    ));
    let dmesg = out.section("set_after_dmesg");
    assert!(
        dmesg.contains("Not attaching vdb to set ") && dmesg.contains("registered raw with state none"),
        "no refusal in the kernel log:\n{dmesg}"
    );
    assert_same_sum(&out);
}

/// A uuid field is exactly a uuid: one with anything after its 36
/// characters (which uuid_parse alone ignores) is refused, backing or
/// cache set uuid, and the device is not registered under the uuid it
/// starts with.
#[test]
fn register_raw_refuses_a_uuid_with_trailing_junk() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    vm.disk(&scratch.image("b.img", 64 * MIB));
    let out = vm.run(&format!(
        r#"{RES}
        U=1a1a1a1a-2b2b-4c4c-8d8d-3e3e3e3e3e3e
        S=5f5f5f5f-6a6a-4b4b-8c8c-7d7d7d7d7d7d
        kmsg_mark junk
        for l in "$U"junk "$U"0 "$U"- "${{U}}{{}}" "$U $S"junk "$U $S"0 "${{U%?}}" "$U ${{S%?}}"; do
            emit junk "$(res sh -c "echo '/dev/vda $l' > /sys/fs/bcache/register_raw")"
        done
        check_fails none_registered test -e /sys/block/vda/bcache
        dmesg_section junk_dmesg junk
        check good sh -c "echo '/dev/vda $U $S' > /sys/fs/bcache/register_raw"
        wait_for /sys/block/vda/bcache/running
        check_eq uuid "$U" "$(cat /sys/block/vda/bcache/backing_dev_uuid)"
        "#
    ));
    let junk = out.values("junk");
    assert_eq!(junk.len(), 8, "{junk:?}");
    for r in &junk {
        assert!(r.ends_with("status=1"), "a uuid with junk was accepted: {junk:?}");
    }
    let dmesg = out.section("junk_dmesg");
    assert_eq!(dmesg.matches("register_raw: bad backing device uuid").count(), 5, "{dmesg}");
    assert_eq!(dmesg.matches("register_raw: bad cache set uuid").count(), 3, "{dmesg}");
}

/// size= is the device size user space recorded: a device smaller than
/// that is refused (it must not shrink under its cache), one of that size
/// or larger registers. Our front end refuses first, with its own words.
#[test]
fn register_raw_refuses_a_device_smaller_than_its_recorded_size() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    vm.disk(&scratch.image("b.img", 64 * MIB));
    let sectors = 64 * MIB / 512;
    let out = vm.run(&format!(
        r#"{RES}
        U=2b2b2b2b-3c3c-4d4d-8e8e-4f4f4f4f4f4f
        check_eq sectors {sectors} "$(cat /sys/block/vda/size)"
        kmsg_mark size
        emit bigger "$(res sh -c "echo '/dev/vda $U none size={bigger}' > /sys/fs/bcache/register_raw")"
        check_fails not_registered test -e /sys/block/vda/bcache
        dmesg_section size_dmesg size
        emit ours_bigger "$(res bcache register --raw /dev/vda --uuid $U --size {bigger})"
        check equal sh -c "echo '/dev/vda $U none size={sectors}' > /sys/fs/bcache/register_raw"
        bcache_of /dev/vda
        check stop bcache stop /dev/vda
        wait_gone /sys/block/vda/bcache
        check grown sh -c "echo '/dev/vda $U none size={half}' > /sys/fs/bcache/register_raw"
        bcache_of /dev/vda
        check stop_again bcache stop /dev/vda
        wait_gone /sys/block/vda/bcache
        check ours_equal bcache register --raw /dev/vda --uuid $U --size {sectors}
        bcache_of /dev/vda
        "#,
        bigger = sectors + 1,
        half = sectors / 2,
    ));
    let bigger = out.expect_value("bigger");
    assert!(bigger.ends_with("status=1"), "a device smaller than size= registered: {bigger}");
    let dmesg = out.section("size_dmesg");
    let want = format!("register_raw: device has {sectors} sectors, fewer than size={}: a device must not shrink under its cache", sectors + 1);
    assert!(dmesg.contains(&want), "{dmesg}");
    let ours = out.expect_value("ours_bigger");
    assert!(ours.contains("must not shrink under its cache") && ours.ends_with("status=1"), "{ours}");
}

/// The uuids of flash-only volumes in the uuid table of a cache image
/// (bcache's uuid_entry: uuid at 0, label at 16, first_reg at 48, last_reg
/// at 52, invalidated at 56, flags at 60, sectors at 64; 128 bytes each, in
/// a bucket-aligned table) whose size is `sectors`.
fn flash_volume_uuids(img: &Path, sectors: u64) -> Vec<uuid::Uuid> {
    let data = std::fs::read(img).unwrap();
    let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let mut found: Vec<uuid::Uuid> = data
        .chunks_exact(128)
        .filter(|e| {
            le32(e, 60) == 1
                && u64::from_le_bytes(e[64..72].try_into().unwrap()) == sectors
                && le32(e, 56) == 0
                && le32(e, 48) != 0
                && le32(e, 48) == le32(e, 52)
                && e[16..48].iter().all(|&b| b == 0)
                && e[72..].iter().all(|&b| b == 0)
                && e[..16].iter().any(|&b| b != 0)
        })
        .map(|e| uuid::Uuid::from_slice(&e[..16]).unwrap())
        .collect();
    found.sort();
    found.dedup();
    found
}

/// A flash-only volume's uuid (learnt from the cache's uuid table on disk:
/// the kernel shows it nowhere) is refused at register_raw whatever the
/// state, and a raw device registered with it before the set comes does
/// not get its slot: neither in state clean (which would serve the
/// volume's data as the device's) nor in state stale (which would
/// invalidate the slot). The volume keeps its data.
#[test]
fn a_flash_only_volume_uuid_is_never_a_raw_device() {
    let scratch = Scratch::new();
    let cache = scratch.image("cache.img", 300 * MIB);
    let flash_data = pattern(2 << 20, 0xf1a5);
    let flash_sectors = 16 * MIB / 512;
    let mut vm = patched_vm();
    vm.disk(&cache).disk(&scratch.image("backing.img", 64 * MIB));
    vm.file("/root/flash.bin", flash_data, false);
    let volume = r#"
        flash_dev() {
            wait_for /sys/fs/bcache/$CSET/volume0
            _v=$(readlink -f /sys/fs/bcache/$CSET/volume0)
            _v=${_v%/bcache}
            wait_for /dev/${_v##*/}
            echo /dev/${_v##*/}
        }
        flash_intact() {
            cmp -n $(stat -c %s /root/flash.bin) "$(flash_dev)" /root/flash.bin
        }
    "#;
    let first = vm.run(&format!(
        r#"{RES}{STOP_SET}{volume}
        check make_cache bcache make -C /dev/vda
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        emit cset $CSET
        check register_cache bcache register /dev/vda
        check flash_vol_create sh -c "echo 16M > /sys/fs/bcache/$CSET/flash_vol_create"
        F=$(flash_dev)
        check write_flash dd if=/root/flash.bin of=$F bs=64k conv=fsync
        stop_set $CSET
        "#
    ));
    let cset = first.expect_value("cset").to_string();
    let uuids = flash_volume_uuids(&cache, flash_sectors);
    assert_eq!(uuids.len(), 1, "flash volume uuids in the cache's uuid table: {uuids:?}");
    let fu = uuids[0].hyphenated().to_string();
    let out = vm.run(&format!(
        r#"{RES}{STOP_SET}{volume}
        CSET={cset}
        FU={fu}
        check register_cache bcache register /dev/vda
        check flash_intact flash_intact
        kmsg_mark flash
        for l in "$FU none" "$FU $CSET state=clean" "$FU $CSET state=stale" "$FU $CSET"; do
            emit flash "$(res sh -c "echo '/dev/vdb $l' > /sys/fs/bcache/register_raw")"
        done
        check_fails not_registered test -e /sys/block/vdb/bcache
        dmesg_section flash_dmesg flash

        # Registered before the set: the attach is refused, the slot kept.
        stop_set $CSET
        kmsg_mark attach
        check register_clean sh -c "echo '/dev/vdb $FU $CSET state=clean' > /sys/fs/bcache/register_raw"
        wait_for /sys/block/vdb/bcache/running
        check register_cache_clean bcache register /dev/vda
        check flash_intact_clean flash_intact
        check_fails clean_not_attached test -e /sys/block/vdb/bcache/cache
        check_eq clean_waits 0 "$(cat /sys/block/vdb/bcache/running)"
        check stop_clean bcache stop /dev/vdb
        wait_gone /sys/block/vdb/bcache
        stop_set $CSET
        check register_stale sh -c "echo '/dev/vdb $FU $CSET state=stale' > /sys/fs/bcache/register_raw"
        bcache_of /dev/vdb
        check register_cache_stale bcache register /dev/vda
        check flash_intact_stale flash_intact
        check_fails stale_not_attached test -e /sys/block/vdb/bcache/cache
        dmesg_section attach_dmesg attach
        "#
    ));
    let flash = out.values("flash");
    assert_eq!(flash.len(), 4, "{flash:?}");
    for r in &flash {
        assert!(r.ends_with("status=1") && r.contains("File exists"), "a flash volume's uuid registered: {flash:?}");
    }
    let dmesg = out.section("flash_dmesg");
    assert_eq!(
        dmesg.matches("register_raw: uuid is that of a flash-only volume of a registered cache set").count(),
        4,
        "{dmesg}"
    );
    let attach = out.section("attach_dmesg");
    assert_eq!(attach.matches("is that of a flash-only volume of the set").count(), 2, "{attach}");
}

/// One line of KEY=VALUE fields (raw_state, or an event as recorded).
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|f| f.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// raw_state shows a raw device's superblock state from one snapshot: the
/// state as registered with seq 0, then at each change (attach, first
/// dirty write, writeback done, label, detach) what the change uevent
/// carried, under the same number as its BCACHE_SEQ. A device with a
/// superblock of its own has no raw_state.
#[test]
fn raw_state_follows_the_state_uevents() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    vm.disk(&scratch.image("cache.img", 300 * MIB))
        .disk(&scratch.image("raw.img", 64 * MIB))
        .disk(&scratch.image("formatted.img", 64 * MIB));
    vm.file("/root/data.bin", pattern(1 << 20, 0x5e9), false);
    let out = vm.run(&format!(
        r#"{RES}{NO_CONGESTION}
        U=6c6c6c6c-7d7d-4e4e-8f8f-909090909090
        uevent sh -c '[ -n "$BCACHE_RAW" ] && echo "seq=$BCACHE_SEQ state=$BCACHE_STATE set_uuid=$BCACHE_SET_UUID uuid=$BCACHE_UUID cache_mode=$BCACHE_CACHE_MODE label=$BCACHE_LABEL" >> /tmp/uevents' &
        touch /tmp/uevents
        check make_cache bcache make -C /dev/vda
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        emit cset $CSET
        check register_cache bcache register /dev/vda
        no_congestion $CSET
        check make_formatted bcache make -B /dev/vdc
        check register_formatted bcache register /dev/vdc
        wait_for /sys/block/vdc/bcache/running
        check_fails formatted_has_no_raw_state test -e /sys/block/vdc/bcache/raw_state

        # last_is STATE: the last raw uevent says STATE.
        last_is() {{ tail -n 1 /tmp/uevents | grep -q "^seq=[0-9]* state=$1 "; }}
        snap() {{ emit "rs_$1" "$(cat /sys/block/vdb/bcache/raw_state)"; emit "ev_$1" "$(tail -n 1 /tmp/uevents)"; }}

        check register_raw sh -c "echo '/dev/vdb $U none cache_mode=writeback label=st1' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        emit rs_registered "$(cat /sys/block/vdb/bcache/raw_state)"
        check attach sh -c "echo $CSET > /sys/block/vdb/bcache/attach"
        wait_until 30 last_is clean
        snap attach
        echo 0 > /sys/block/vdb/bcache/writeback_running
        # Written back as soon as it runs again (the delay is 30 s).
        echo 0 > /sys/block/vdb/bcache/writeback_delay
        check write dd if=/root/data.bin of="$B" bs=64k conv=fsync
        wait_until 30 last_is dirty
        snap dirty
        echo 1 > /sys/block/vdb/bcache/writeback_running
        wait_until 60 last_is clean
        snap clean
        echo 'a b%' > /sys/block/vdb/bcache/label
        wait_until 30 sh -c 'tail -n 1 /tmp/uevents | grep -q "label=a b%$"'
        snap label
        check detach sh -c "echo 1 > /sys/block/vdb/bcache/detach"
        wait_until 60 last_is none
        snap detach
        section uevents cat /tmp/uevents
        "#
    ));
    let cset = out.expect_value("cset");
    let zero = "00000000-0000-0000-0000-000000000000";
    let u = "6c6c6c6c-7d7d-4e4e-8f8f-909090909090";
    let registered = fields(out.expect_value("rs_registered"));
    let want0 = [("uuid", u), ("set_uuid", zero), ("state", "none"), ("cache_mode", "writeback"), ("label", "st1"), ("seq", "0"), ("uevent_errors", "0")];
    for (k, v) in want0 {
        assert_eq!(registered.get(k).map(String::as_str), Some(v), "raw_state as registered: {registered:?}");
    }
    let uevents = out.section("uevents");
    eprintln!("raw uevents:\n{uevents}");
    let events: Vec<&str> = uevents.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    // Numbered 1, 2, ... with no gap (none failed), in order.
    for (i, e) in events.iter().enumerate() {
        assert!(e.starts_with(&format!("seq={} ", i + 1)), "uevent {} is {e:?}: {events:#?}", i + 1);
    }
    let mut last_seq = 0;
    for (step, state, set, label) in [
        ("attach", "clean", cset, "st1"),
        ("dirty", "dirty", cset, "st1"),
        ("clean", "clean", cset, "st1"),
        ("label", "clean", cset, "a%20b%25"),
        ("detach", "none", zero, "a%20b%25"),
    ] {
        let rs = fields(out.expect_value(&format!("rs_{step}")));
        let ev_line = out.expect_value(&format!("ev_{step}"));
        let ev = fields(ev_line);
        eprintln!("{step}: raw_state {}", out.expect_value(&format!("rs_{step}")));
        let seq: u64 = rs["seq"].parse().unwrap();
        assert!(seq > last_seq, "{step}: seq {seq} after {last_seq}");
        last_seq = seq;
        assert_eq!(ev["seq"], rs["seq"], "{step}: raw_state {rs:?} and the last uevent {ev_line:?}");
        for (k, v) in [("state", state), ("set_uuid", set), ("uuid", u), ("cache_mode", "writeback"), ("label", label), ("uevent_errors", "0")] {
            assert_eq!(rs.get(k).map(String::as_str), Some(v), "{step}: raw_state {rs:?}");
        }
        for k in ["state", "set_uuid", "uuid", "cache_mode"] {
            assert_eq!(ev[k], rs[k], "{step}: {k} in raw_state {rs:?} and uevent {ev_line:?}");
        }
    }
    // The uevent carries the label as it is.
    assert_eq!(ev_line_label(out.expect_value("ev_label")), "a b%");
}

/// The label of a recorded uevent line: the rest of the line after "label=".
fn ev_line_label(line: &str) -> &str {
    line.split_once(" label=").map_or("", |(_, l)| l)
}

/// The size of the cache image of the tests of durability. bcache's
/// allocator writes the journal (bch_prio_write) each time it refills its
/// free_inc list, whose size grows with the cache: on a cache of 300 MiB it
/// holds 4 buckets, so one allocation in 4 (the bucket of a new uuid table,
/// say) is followed at once by a journal write, which makes the new table
/// durable by chance (the fault matrix found the hole in one run in 3). On
/// 16 GiB (sparse) it holds 128: a module that does not write the journal
/// itself is caught in nearly every run.
const DURABILITY_CACHE: u64 = 16 << 30;

/// Guest shell: what the cache set's journal delay is raised to before a
/// step whose durability is tested. bcache writes the journal entry that
/// points to a new uuid table only this long after the table (100 ms by
/// default, 65535 at most); a module that leaves the table to that entry
/// loses it to a power cut within that delay (unless another journal write
/// carries it first: see DURABILITY_CACHE), in nearly every run then, not
/// only in those whose cut falls within 100 ms. A module that writes the
/// journal before it reports the step does not care.
const WIDE_JOURNAL_DELAY: &str = r#"
wide_journal_delay() {
    echo 60000 > /sys/fs/bcache/$1/journal_delay_ms
    check_eq journal_delay_ms 60000 "$(cat /sys/fs/bcache/$1/journal_delay_ms)"
}
"#;

/// Found by the fault matrix (FAULT-MATRIX.md, "a write after a finished
/// detach, then a power cut"): a writeback device registered raw holds
/// dirty files in its cache set; writeback runs again and the device is
/// detached. Once user space sees the detach end (raw_state, the uevent:
/// state none, no set), a new file is written straight to the backing
/// device (the device runs uncached now) and the power is cut at once, the
/// set's journal delay raised to 60 s. The set must have the slot's
/// invalidation on disk: at the next boot it refuses the device registered
/// dirty on it ("Couldn't find uuid"), and registered as new (state none,
/// on the same set) the device reads back every file, the new one too,
/// byte for byte. The old module wrote the new uuid table but left the
/// journal entry that points to it to a journal delay later, and told user
/// space the detach was done before it even invalidated the slot: the set
/// came back with the slot and its old dirty keys, attached the device
/// registered dirty and served its old blocks over the new file.
#[test]
fn detach_end_is_durable_before_it_is_reported() {
    let scratch = Scratch::new();
    let before: Vec<_> = (0..2u64)
        .map(|i| (format!("before{i}"), pattern(150_000 + i as usize * 33_333, 0xbef0_0000 + i)))
        .collect();
    let dirty: Vec<_> = (0..3u64)
        .map(|i| (format!("dirty{i}"), pattern(700_000 + i as usize * 55_555, 0xd1e7_0000 + i)))
        .collect();
    let new = ("new".to_string(), pattern(600_000, 0x0e30_0001));
    let mut vm = patched_vm();
    for (name, data) in before.iter().chain(&dirty).chain(std::iter::once(&new)) {
        vm.file(&format!("/root/expect/{name}"), data.clone(), false);
    }
    let backing = common::ext4_with_files(&scratch, "backing.img", 64 * MIB, &before, None);
    vm.disk(&scratch.image("cache.img", DURABILITY_CACHE)).disk(&backing).module("ext4");
    let u = "8a8a8a8a-1b1b-4c2c-8d3d-4e4e4e4e4e4e";
    let first = vm.run(&format!(
        r#"{RES}{WIDE_JOURNAL_DELAY}{NO_CONGESTION}
        U={u}
        uevent sh -c '[ -n "$BCACHE_RAW" ] && echo "seq=$BCACHE_SEQ state=$BCACHE_STATE set_uuid=$BCACHE_SET_UUID" >> /tmp/uevents' &
        check make_cache bcache make -C /dev/vda
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        emit cset $CSET
        check register_cache bcache register /dev/vda
        wait_for /sys/fs/bcache/$CSET
        wide_journal_delay $CSET
        no_congestion $CSET
        check register_raw sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        wait_for /sys/block/vdb/bcache/cache
        echo 0 > /sys/block/vdb/bcache/writeback_running
        echo 0 > /sys/block/vdb/bcache/sequential_cutoff
        mkdir -p /mnt
        check mount_dirty mount -t ext4 "$B" /mnt
        for f in {dirty_names}; do check "write_$f" cp /root/expect/$f /mnt/$f; done
        # umount flushes: the dirty keys and the slot are in the set's journal.
        check umount_dirty umount /mnt
        check_eq dirty dirty "$(cat /sys/block/vdb/bcache/state)"
        emit dirty_data "$(cat /sys/block/vdb/bcache/dirty_data)"

        echo 0 > /sys/block/vdb/bcache/writeback_delay
        echo 1 > /sys/block/vdb/bcache/writeback_running
        kmsg_mark detach
        check detach sh -c 'echo 1 > /sys/block/vdb/bcache/detach'
        # The detach's end as user space sees it: raw_state (and the uevent).
        detached() {{ grep -q "set_uuid=00000000-0000-0000-0000-000000000000 state=none " /sys/block/vdb/bcache/raw_state; }}
        wait_until 180 detached
        emit detach_end_cs "$(now_cs)"
        emit raw_state "$(cat /sys/block/vdb/bcache/raw_state)"
        # The device runs uncached: the new file goes straight to vdb,
        # fsynced, and umount writes the file system's metadata there. No
        # sync of anything else.
        check mount_new mount -t ext4 "$B" /mnt
        check write_new dd if=/root/expect/new of=/mnt/new bs=64k conv=fsync
        check umount_new umount /mnt
        emit cut_cs "$(now_cs)"
        dmesg_section detach_dmesg detach
        section uevents cat /tmp/uevents
        power_cut
        "#,
        dirty_names = dirty.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" "),
    ));
    let cset = first.expect_value("cset").to_string();
    assert_ne!(first.expect_value("dirty_data"), "0.0k", "nothing dirty before the detach");
    let ms = |k: &str| first.expect_value(k).parse::<u64>().unwrap() * 10;
    eprintln!(
        "power cut {} ms after the detach was seen to end (journal delay 60000 ms); raw_state then: {}",
        ms("cut_cs") - ms("detach_end_cs"),
        first.expect_value("raw_state")
    );
    eprintln!("raw uevents:\n{}", first.section("uevents"));
    let out = vm.run(&format!(
        r#"{RES}{SAME_FILES}
        U={u}
        CSET={cset}
        check register_cache bcache register /dev/vda
        wait_for /sys/fs/bcache/$CSET
        kmsg_mark dirty
        check register_dirty sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=dirty' > /sys/fs/bcache/register_raw"
        wait_for /sys/block/vdb/bcache/running
        dmesg_section dirty_dmesg dirty
        if [ -e /sys/block/vdb/bcache/cache ]; then
            # The set kept the slot: what it serves for the device.
            B=$(bcache_of /dev/vdb)
            mkdir -p /mnt
            mount -t ext4 -o ro,noload "$B" /mnt && {{ ls -l /mnt; cmp /root/expect/new /mnt/new || :; umount /mnt; }} >&2
            fail "the cache set attached the device registered dirty: its slot survived the power cut"
        fi
        check_eq dirty_waits 0 "$(cat /sys/block/vdb/bcache/running)"
        check_fails dirty_not_running test -e /sys/block/vdb/bcache/dev
        # (Returns once the kernel has let the device go.)
        check stop_dirty bcache stop /dev/vdb
        check register_new sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=none' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        wait_for /sys/block/vdb/bcache/cache
        mkdir -p /mnt
        check mount mount -t ext4 "$B" /mnt
        same_files /mnt back
        section sums sh -c 'cd /mnt && sha256sum $(ls /root/expect)'
        section want sh -c 'cd /root/expect && sha256sum *'
        umount /mnt
        "#
    ));
    let dmesg = out.section("dirty_dmesg");
    assert!(dmesg.contains("Couldn't find uuid for vdb in set"), "the set did not refuse the device registered dirty:\n{dmesg}");
    let (sums, want) = (out.section("sums"), out.section("want"));
    assert_eq!(sums.lines().count(), before.len() + dirty.len() + 1, "{sums}");
    assert_eq!(sums, want, "files read back (sha256) and the files written");
}

/// The same for a device with a superblock of its own: dirty data in the
/// set, the device detached, and once its superblock on disk says state
/// none (no set), new data written over the old blocks straight to the
/// device and the power cut at once. The set comes back without the slot:
/// a device that claims the uuid dirty on that set (registered raw on a
/// blank disk: what a copy of the record would do) is refused, and the
/// device registered from its superblock runs detached with the new data.
/// The old module wrote state none before it even invalidated the slot
/// in memory: the set came back with the slot and its old dirty keys.
#[test]
fn formatted_detach_end_is_durable_before_it_is_reported() {
    let scratch = Scratch::new();
    let old = pattern(2 << 20, 0x01d0_0001);
    let new = pattern(2 << 20, 0x0e30_0002);
    let mut vm = patched_vm();
    vm.disk(&scratch.image("cache.img", DURABILITY_CACHE))
        .disk(&scratch.image("backing.img", 64 * MIB))
        .disk(&scratch.image("probe.img", 64 * MIB));
    vm.file("/root/old.bin", old, false).file("/root/new.bin", new, false);
    let first = vm.run(&format!(
        r#"{RES}{WIDE_JOURNAL_DELAY}{NO_CONGESTION}
        check make_cache bcache make -C /dev/vda
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        emit cset $CSET
        check register_cache bcache register /dev/vda
        wait_for /sys/fs/bcache/$CSET
        wide_journal_delay $CSET
        no_congestion $CSET
        check make_backing bcache make -B /dev/vdb
        U=$(bcache super-show --json /dev/vdb | sed -n 's/.*"uuid": "\(.*\)".*/\1/p')
        emit uuid $U
        check register_backing bcache register /dev/vdb
        B=$(bcache_of /dev/vdb)
        echo writeback > /sys/block/vdb/bcache/cache_mode
        check attach sh -c "echo $CSET > /sys/block/vdb/bcache/attach"
        wait_for /sys/block/vdb/bcache/cache
        echo 0 > /sys/block/vdb/bcache/writeback_running
        echo 0 > /sys/block/vdb/bcache/sequential_cutoff
        check write_old dd if=/root/old.bin of="$B" bs=64k conv=fsync
        check_eq dirty dirty "$(cat /sys/block/vdb/bcache/state)"
        emit dirty_data "$(cat /sys/block/vdb/bcache/dirty_data)"
        echo 0 > /sys/block/vdb/bcache/writeback_delay
        echo 1 > /sys/block/vdb/bcache/writeback_running
        check detach sh -c 'echo 1 > /sys/block/vdb/bcache/detach'
        # The detach's end as user space sees it: the superblock on disk.
        sb_none() {{
            echo 3 > /proc/sys/vm/drop_caches
            bcache super-show --json /dev/vdb | grep -q '"state": "none"'
        }}
        wait_until 180 sb_none
        emit detach_end_cs "$(now_cs)"
        check_eq state_none "no cache" "$(cat /sys/block/vdb/bcache/state)"
        # Uncached now: over the old blocks, straight to vdb.
        check write_new dd if=/root/new.bin of="$B" bs=64k conv=fsync
        emit cut_cs "$(now_cs)"
        power_cut
        "#
    ));
    let (cset, u) = (first.expect_value("cset").to_string(), first.expect_value("uuid").to_string());
    assert_eq!(u.len(), 36, "{u:?}");
    let ms = |k: &str| first.expect_value(k).parse::<u64>().unwrap() * 10;
    eprintln!("power cut {} ms after the superblock said state none (journal delay 60000 ms)", ms("cut_cs") - ms("detach_end_cs"));
    let out = vm.run(&format!(
        r#"{RES}
        U={u}
        CSET={cset}
        check register_cache bcache register /dev/vda
        wait_for /sys/fs/bcache/$CSET
        kmsg_mark probe
        check probe_dirty sh -c "echo '/dev/vdc $U $CSET cache_mode=writeback state=dirty' > /sys/fs/bcache/register_raw"
        wait_for /sys/block/vdc/bcache/running
        dmesg_section probe_dmesg probe
        check_fails probe_not_attached test -e /sys/block/vdc/bcache/cache
        check_eq probe_waits 0 "$(cat /sys/block/vdc/bcache/running)"
        # (Returns once the kernel has let the device go.)
        check stop_probe bcache stop /dev/vdc
        check register_backing bcache register /dev/vdb
        B=$(bcache_of /dev/vdb)
        check_eq sb_state none "$(bcache super-show --json /dev/vdb | sed -n 's/.*"state": "\(.*\)".*/\1/p')"
        check_fails not_attached test -e /sys/block/vdb/bcache/cache
        check new_data cmp -n $(stat -c %s /root/new.bin) "$B" /root/new.bin
        "#
    ));
    let dmesg = out.section("probe_dmesg");
    assert!(dmesg.contains("Couldn't find uuid for vdc in set"), "the set still has a slot for {u}:\n{dmesg}");
}

/// An attach that replaces a slot: a writeback device registered raw
/// leaves dirty data in its cache set and is stopped; its disk is written
/// since (straight, the device stopped), and it is registered again with
/// state=stale, which drops the set's data for it: the attach invalidates
/// the old slot, takes a new one and reports state clean on the set. The
/// power is cut at once (journal delay 60 s). The set must come back with
/// the new table: the device registered clean, as recorded, reads its
/// disk. The old module wrote the new table but left the journal entry
/// that points to it for later: the set came back with the old slot, and
/// the device registered clean was attached to it and served the dirty
/// data the stale state had dropped.
#[test]
fn stale_attach_is_durable_before_it_is_reported() {
    let scratch = Scratch::new();
    let mut vm = patched_vm();
    vm.disk(&scratch.image("cache.img", DURABILITY_CACHE)).disk(&scratch.image("backing.img", 64 * MIB));
    vm.file("/root/old.bin", pattern(2 << 20, 0x01d0_0003), false)
        .file("/root/new.bin", pattern(2 << 20, 0x0e30_0003), false);
    let u = "9b9b9b9b-2c2c-4d3d-8e4e-5f5f5f5f5f5f";
    let first = vm.run(&format!(
        r#"{RES}{WIDE_JOURNAL_DELAY}{NO_CONGESTION}
        U={u}
        check make_cache bcache make -C /dev/vda
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        emit cset $CSET
        check register_cache bcache register /dev/vda
        wait_for /sys/fs/bcache/$CSET
        wide_journal_delay $CSET
        no_congestion $CSET
        check register_raw sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        wait_for /sys/block/vdb/bcache/cache
        echo 0 > /sys/block/vdb/bcache/writeback_running
        echo 0 > /sys/block/vdb/bcache/sequential_cutoff
        check write_old dd if=/root/old.bin of="$B" bs=64k conv=fsync
        check_eq dirty dirty "$(cat /sys/block/vdb/bcache/state)"
        emit dirty_data "$(cat /sys/block/vdb/bcache/dirty_data)"
        # Stopped with its dirty data in the set (the set stays up).
        check stop_dirty bcache stop /dev/vdb
        check write_new dd if=/root/new.bin of=/dev/vdb bs=64k conv=fsync
        check register_stale sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=stale' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        # Reported: raw_state (and the uevent) say clean on the set.
        wait_until 60 grep -q "set_uuid=$CSET state=clean " /sys/block/vdb/bcache/raw_state
        emit attach_cs "$(now_cs)"
        check serves_new cmp -n $(stat -c %s /root/new.bin) "$B" /root/new.bin
        emit cut_cs "$(now_cs)"
        power_cut
        "#
    ));
    let cset = first.expect_value("cset").to_string();
    assert_ne!(first.expect_value("dirty_data"), "0.0k", "nothing dirty before the stop");
    let ms = |k: &str| first.expect_value(k).parse::<u64>().unwrap() * 10;
    eprintln!("power cut {} ms after the attach reported clean (journal delay 60000 ms)", ms("cut_cs") - ms("attach_cs"));
    let out = vm.run(&format!(
        r#"{RES}
        U={u}
        CSET={cset}
        check register_cache bcache register /dev/vda
        wait_for /sys/fs/bcache/$CSET
        check register_clean sh -c "echo '/dev/vdb $U $CSET cache_mode=writeback state=clean' > /sys/fs/bcache/register_raw"
        B=$(bcache_of /dev/vdb)
        check attached test -e /sys/block/vdb/bcache/cache
        emit dirty_data "$(cat /sys/block/vdb/bcache/dirty_data)"
        check serves_new cmp -n $(stat -c %s /root/new.bin) "$B" /root/new.bin
        "#
    ));
    eprintln!("dirty data of the device attached again: {}", out.expect_value("dirty_data"));
}
