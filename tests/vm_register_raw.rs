//! The register_raw patch (kernel/register_raw.patch) in the real kernel:
//! the module built by kernel/build.sh replaces Debian's bcache.ko in the
//! guest.

mod common;

use common::pattern;
use common::vm::{Scratch, Vm};

const MIB: u64 = 1 << 20;

fn patched_vm() -> Vm {
    let mut vm = Vm::new();
    let ko = common::patched_module(&vm);
    vm.host_file(&ko, "/lib/modules/bcache.ko");
    vm
}


/// `res CMD...` prints CMD's output and exit status on one line.
const RES: &str = r#"res() { _o=$("$@" 2>&1) && _s=0 || _s=$?; printf '%s status=%s' "$(echo "$_o" | tr '\n' ' ')" "$_s"; }
"#;

/// An ext4 file system with files, registered raw: the bcache device shows
/// the same files, and a write through it lands at the same offset of the
/// raw device (data offset 0).
#[test]
fn raw_registered_filesystem_keeps_its_files() {
    let scratch = Scratch::new();
    let files = scratch.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let mut vm = patched_vm();
    for i in 0..5u64 {
        let data = pattern(100_000 + i as usize * 77_777, 0xfeed_0000 + i);
        std::fs::write(files.join(format!("file{i}")), &data).unwrap();
        vm.file(&format!("/root/expect/file{i}"), data, false);
    }
    let disk = scratch.image("fs.img", 64 * MIB);
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&files)
        .arg(&disk)
        .status()
        .unwrap();
    assert!(mkfs.success(), "mkfs.ext4 -d (e2fsprogs) is needed");
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
        wait_until 60 grep -q "^ev clean $CSET" /tmp/uevents
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
    // attach (clean), first dirty write, writeback done (clean), detach (none)
    for want in ["clean", "dirty", "clean", "none"] {
        assert!(states.contains(&want), "no {want} uevent in {events}");
    }
    let first_dirty = states.iter().position(|s| *s == "dirty").unwrap();
    assert_eq!(states[0], "clean", "attach comes first: {events}");
    assert!(states[first_dirty..].contains(&"none"), "detach after the dirty phase: {events}");
}
