//! The register_raw patch (kernel/register_raw.patch) in the real kernel:
//! the module built by kernel/build.sh replaces Debian's bcache.ko in the
//! guest.

mod common;

use common::{pattern, RES};
use common::vm::{Scratch, Vm};

const MIB: u64 = 1 << 20;

fn patched_vm() -> Vm {
    let mut vm = Vm::new();
    let ko = common::patched_module(&vm);
    vm.host_file(&ko, "/lib/modules/bcache.ko");
    vm
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
        r#"{RES}
        U=0b0c0d0e-1a2b-4c3d-8e4f-5a6b7c8d9e0f
        # Record every raw-device uevent (they replace superblock writes).
        uevent sh -c '[ -n "$BCACHE_RAW" ] && echo "ev $BCACHE_STATE $BCACHE_SET_UUID $BCACHE_CACHE_MODE $BCACHE_LABEL" >> /tmp/uevents' &
        check make_cache bcache make -C /dev/vda
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        check register_cache bcache register /dev/vda
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
        echo 1 > /sys/fs/bcache/$CSET/stop
        wait_gone /sys/fs/bcache/$CSET
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
        let line: Vec<u8> = match i % 12 {
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
