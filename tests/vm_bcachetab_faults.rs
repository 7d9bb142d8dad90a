//! What happens to bcachetab's devices when something fails between two
//! steps of a transition: a state directory that cannot be written, a
//! tunable the kernel refuses, records made in an initramfs. Each test is
//! named after the finding it proves fixed (issue 8), injects the fault in
//! the real kernel's guest, loses power, and checks the data by content
//! at the next boots. Faults inside the tool come from `BCACHE_FAULT`
//! (src/fault.rs, debug builds).

mod common;

use common::vm::{Scratch, VmOutput, Vm};
use common::{pattern, RES, SAME_FILES};

const MIB: u64 = 1 << 20;

/// Where the test data lives on the backing device, and how dd reaches it.
const AT: &str = "bs=1M seek=8 count=1";
const READ: &str = "bs=1M skip=8 count=1";

fn guest() -> Vm {
    let mut vm = Vm::new();
    vm.module("ext4");
    vm
}

/// Copies bcachetab and the state file out of one boot into the next.
fn carry(vm: &mut Vm, out: &VmOutput) {
    vm.file("/etc/bcachetab", out.section("bcachetab"), false);
    vm.file("/var/lib/bcache/state", out.section("state"), false);
}

const SAVE: &str = r#"
    section bcachetab cat /etc/bcachetab
    section state cat /var/lib/bcache/state
"#;

/// A backing image holding `a` at 8 MiB, and a cache image.
fn disks(scratch: &Scratch, a: &[u8]) -> (std::path::PathBuf, std::path::PathBuf) {
    let backing = scratch.image("backing.img", 64 * MIB);
    let file = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, a, 8 * MIB).unwrap();
    (backing, scratch.image("cache.img", 300 * MIB))
}

/// Boot 1 of the timeout tests: a writethrough device with `timeout=1`
/// adopted with its cache; `b` written through it (so the cache holds a
/// copy), then the power is cut.
fn adopt_writethrough_with_timeout(scratch: &Scratch, backing: &std::path::Path, cache: &std::path::Path, b: &[u8]) -> VmOutput {
    let _ = scratch;
    let mut vm = guest();
    vm.disk(backing).disk(cache).file("/root/b", b.to_vec(), false);
    let out = vm.run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vdb
        check adopt bcache adopt /dev/vda --cache /dev/vdb --name d -o timeout=1
        wait_for /dev/bcache0
        check write_b dd if=/root/b of=/dev/bcache0 {AT} oflag=direct
        check cached_b sh -c 'dd if=/dev/bcache0 {READ} iflag=direct 2>/dev/null | cmp - /root/b'
        {SAVE}
        power_cut
        "#
    ));
    out.assert_ok();
    assert!(out.section("state").contains("attached="), "{}", out.section("state"));
    out
}

/// The last boot: the cache is back; the device must read `want` (what
/// was written while the cache was away), never the cache's old copy.
fn with_the_cache_back_reads(backing: &std::path::Path, cache: &std::path::Path, before: &VmOutput, want: &[u8]) {
    let mut vm = guest();
    vm.disk(backing).disk(cache).file("/root/want", want.to_vec(), false);
    carry(&mut vm, before);
    let out = vm.run(&format!(
        r#"{RES}
        check apply bcache tab apply --all
        wait_for /dev/bcache0
        check register_cache bcache register /dev/vdb
        wait_until 30 sh -c 'test -e /sys/block/dm-*/bcache/cache'
        check reads_what_was_written_without_the_cache sh -c 'dd if=/dev/bcache0 {READ} iflag=direct 2>/dev/null | cmp - /root/want'
        {SAVE}
        "#
    ));
    out.assert_ok();
    let state = out.section("state");
    assert!(!state.contains("stale=1") && state.contains("attached="), "attached again, afresh: {state}");
}

/// Finding: `tab wait` wrote running=1 and only then the stale mark; with
/// the state directory read-only the device ran anyway and, once the cache
/// was back, read the cache's old copy. Now the stale mark is written
/// first, and a device whose mark cannot be written does not run.
#[test]
fn timeout_run_with_an_unwritable_state_file_does_not_run_and_never_serves_old_data() {
    let scratch = Scratch::new();
    let (a, b, c) = (pattern(MIB as usize, 0xa), pattern(MIB as usize, 0xb), pattern(MIB as usize, 0xc));
    let (backing, cache) = disks(&scratch, &a);
    let out = adopt_writethrough_with_timeout(&scratch, &backing, &cache, &b);

    // Boot 2: the cache is gone; /var/lib/bcache is read-only when the
    // timeout passes; then writable again.
    let blank = scratch.image("blank.img", 300 * MIB);
    let mut vm = guest();
    vm.disk(&backing).disk(&blank).file("/root/c", c.clone(), false);
    carry(&mut vm, &out);
    let out2 = vm.run(&format!(
        r#"{RES}
        check apply bcache tab apply --all
        mount --bind /var/lib/bcache /var/lib/bcache
        mount -o remount,bind,ro /var/lib/bcache
        check_fails state_is_read_only touch /var/lib/bcache/probe
        emit wait_ro "$(res bcache tab wait --all)"
        emit bcache0 "$(test -e /dev/bcache0 && echo present || echo absent)"
        emit running "$(cat /sys/block/dm-*/bcache/running)"
        umount /var/lib/bcache
        emit wait_rw "$(res bcache tab wait --all)"
        wait_for /dev/bcache0
        check write_c dd if=/root/c of=/dev/bcache0 {AT} oflag=direct
        {SAVE}
        power_cut
        "#
    ));
    out2.assert_ok();
    let wait_ro = out2.expect_value("wait_ro");
    assert!(wait_ro.contains("cannot record the stale mark") && wait_ro.ends_with("status=1"), "{wait_ro}");
    assert_eq!(out2.expect_value("bcache0"), "absent", "ran without its stale mark recorded");
    assert_eq!(out2.expect_value("running"), "0");
    let wait_rw = out2.expect_value("wait_rw");
    assert!(wait_rw.contains("running without it") && wait_rw.ends_with("status=0"), "{wait_rw}");
    assert!(out2.section("state").contains("stale=1"), "{}", out2.section("state"));

    with_the_cache_back_reads(&backing, &cache, &out2, &c);
}

/// Finding: what the initramfs recorded (stale marks from `tab wait`)
/// went into its in-memory copy of the state file and was thrown away at
/// switch_root. Now it goes to /run/bcache/state.journal too, which
/// survives switch_root, and the system's file takes it over. Here the
/// initramfs is the state file turned into a copy, and switch_root the
/// system's file put back in its place (the root tests boot a real one).
#[test]
fn stale_mark_recorded_in_an_initramfs_survives_switch_root() {
    let scratch = Scratch::new();
    let (a, b, c) = (pattern(MIB as usize, 0xa), pattern(MIB as usize, 0xb), pattern(MIB as usize, 0xc));
    let (backing, cache) = disks(&scratch, &a);
    let out = adopt_writethrough_with_timeout(&scratch, &backing, &cache, &b);

    let blank = scratch.image("blank.img", 300 * MIB);
    let system = out.section("state");
    let copy = system.replacen(
        "# bcache state: written by bcache, do not edit",
        "# bcache state: a copy, possibly older than the system's",
        1,
    );
    assert_ne!(copy, system);
    let mut vm = guest();
    vm.disk(&backing).disk(&blank).file("/root/c", c.clone(), false).file("/root/system-state", system, false);
    vm.file("/etc/bcachetab", out.section("bcachetab"), false).file("/var/lib/bcache/state", copy, false);
    let out2 = vm.run(&format!(
        r#"{RES}
        check apply bcache tab apply --all
        emit wait "$(res bcache tab wait --all)"
        wait_for /dev/bcache0
        section journal cat /run/bcache/state.journal
        # switch_root: the system's own state file, as it was before this boot
        cp /root/system-state /var/lib/bcache/state
        check reconcile bcache tab reconcile
        emit journal_left "$(test -e /run/bcache/state.journal && echo yes || echo no)"
        check write_c dd if=/root/c of=/dev/bcache0 {AT} oflag=direct
        {SAVE}
        power_cut
        "#
    ));
    out2.assert_ok();
    // Registered stale from the copy (which may predate a stale mark), or
    // run by the timeout: either way it ran without its set.
    let wait = out2.expect_value("wait");
    assert!(wait.contains("running without it") || wait.contains("up: /dev/bcache0"), "{wait}");
    assert!(out2.section("journal").contains("stale=1"), "{}", out2.section("journal"));
    assert_eq!(out2.expect_value("journal_left"), "no");
    let state = out2.section("state");
    assert!(state.starts_with("# bcache state: written by bcache") && state.contains("stale=1"), "{state}");

    with_the_cache_back_reads(&backing, &cache, &out2, &c);
}

/// Finding: a failed tunable write in `tab apply` skipped the attach
/// record; the next boot registered the device as new to its set (state
/// none) and the kernel dropped its dirty data. Now the attach is recorded
/// before the tunables are written.
#[test]
fn failed_tunable_write_keeps_the_attach_record_and_the_dirty_data() {
    let scratch = Scratch::new();
    const FILES: u64 = 3;
    let data = |i: u64| pattern(150_000 + i as usize * 40_009, 0x7700 + i);
    let files: Vec<_> = (0..FILES).map(|i| (format!("file{i}"), data(i))).collect();
    let fs = common::ext4_with_files(&scratch, "fs.img", 64 * MIB, &files, None);
    let cache = scratch.image("cache.img", 300 * MIB);
    let extra = pattern(3 << 20, 0xd1e7);
    let expect = |vm: &mut Vm| {
        for (name, d) in &files {
            vm.file(&format!("/root/expect/{name}"), d.clone(), false);
        }
    };

    let mut vm = guest();
    vm.disk(&fs).disk(&cache).file("/root/extra.bin", extra.clone(), false);
    let out = vm.run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vdb
        emit adopt "$(res env BCACHE_FAULT=tunable:error bcache adopt /dev/vda --cache /dev/vdb --writeback --name d -o sequential_cutoff=1M)"
        wait_for /dev/bcache0
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        check write_extra cp /root/extra.bin /mnt/extra.bin
        check umount umount /mnt
        emit dirty "$(cat /sys/block/bcache0/bcache/state)"
        {SAVE}
        power_cut
        "#
    ));
    out.assert_ok();
    let adopt = out.expect_value("adopt");
    assert!(adopt.contains("fault injected at tunable") && !adopt.ends_with("status=0"), "{adopt}");
    assert_eq!(out.expect_value("dirty"), "dirty");
    let state = out.section("state");
    assert!(state.contains("attached=") && !state.contains("pending=1"), "the attach was not recorded: {state}");

    let mut vm2 = guest();
    vm2.disk(&fs).disk(&cache).file("/root/extra.bin", extra, false);
    expect(&mut vm2);
    carry(&mut vm2, &out);
    let out2 = vm2.run(&format!(
        r#"{RES}
        {SAME_FILES}
        check apply bcache tab apply --all
        emit waits "$(test -e /dev/bcache0 && echo running || echo waiting)"
        check register_cache bcache register /dev/vdb
        wait_for /dev/bcache0
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        same_files /mnt same
        check same_extra cmp /root/extra.bin /mnt/extra.bin
        check umount umount /mnt
        "#
    ));
    out2.assert_ok();
    assert_eq!(out2.expect_value("waits"), "waiting", "a device with dirty data ran before its set came");
}
