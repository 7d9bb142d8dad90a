//! `bcache` against the real bcache module of Debian's 6.12 kernel, in QEMU:
//! devices made by `bcache make` register and carry data, the sysfs
//! commands work, and every `read_super` refusal reads the same in the
//! kernel's log and in our validator.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bcache::superblock::*;
use common::{pattern, RES};
use common::vm::{Scratch, Vm};
use uuid::Uuid;

const MIB: u64 = 1 << 20;


fn scenario(body: &str) -> String {
    format!("{RES}{body}")
}

/// A guest with Debian's bcache module, or with BCACHE_VM_PATCHED=1 the
/// register_raw one built by kernel/build.sh: stock behaviour must not
/// change under the patch.
fn new_vm() -> Vm {
    let mut vm = Vm::new();
    if std::env::var_os("BCACHE_VM_PATCHED").is_some_and(|v| v == "1") {
        let ko = common::patched_module(&vm);
        vm.host_file(&ko, "/lib/modules/bcache.ko");
    }
    vm
}


fn write_sb(img: &Path, sb: &Superblock) {
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&sb.to_bytes(), SB_START).unwrap();
}

fn read_sb(img: &Path) -> Superblock {
    let mut buf = vec![0u8; SB_BLOCK_LEN];
    std::fs::File::open(img).unwrap().read_exact_at(&mut buf, SB_START).unwrap();
    Superblock::parse(&buf).unwrap()
}

fn backing_sb(set: Uuid, state: BdevState) -> Superblock {
    let mut sb = Superblock::new_backing(&BackingParams {
        uuid: Uuid::new_v4(),
        set_uuid: set,
        label: Label::default(),
        block_sectors: 8,
        bucket_sectors: 1024,
        data_offset: 16,
        cache_mode: CacheMode::Writeback,
    });
    sb.set_state(state);
    sb.seal();
    sb
}

/// The full life of a cache set made by `bcache make` in the guest.
#[test]
fn make_register_io_attach_detach_stop() {
    let scratch = Scratch::new();
    let cache = scratch.image("cache.img", 300 * MIB);
    let backing = scratch.image("backing.img", 128 * MIB);
    let spare = scratch.image("spare.img", 128 * MIB);
    let data = pattern(1 << 20, 0xbcac_4e00_0000_0001);
    let mut vm = new_vm();
    vm.disk(&cache).disk(&backing).disk(&spare).file("/root/data.bin", data.clone(), false);
    let out = vm.run(&scenario(
        r#"
        check make bcache make -C /dev/vda -B /dev/vdb --writeback -l tier1
        check register bcache register /dev/vda /dev/vdb
        B=$(bcache_of /dev/vdb)
        emit bdev "$B"
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        emit cset "$CSET"
        wait_for /sys/block/vdb/bcache/cache
        check_eq mode_writeback "writethrough [writeback] writearound none" "$(cat /sys/block/vdb/bcache/cache_mode)"
        check_eq label tier1 "$(cat /sys/block/vdb/bcache/label)"
        check write dd if=/root/data.bin of="$B" bs=64k conv=fsync
        echo 3 > /proc/sys/vm/drop_caches
        check read_back sh -c "dd if=$B bs=64k count=16 2>/dev/null | cmp - /root/data.bin"
        section show bcache super-show /dev/vdb

        emit again "$(res bcache register /dev/vdb)"
        check register_quiet bcache register --quiet /dev/vdb

        check detach bcache detach /dev/vdb
        wait_gone /sys/block/vdb/bcache/cache
        check_eq detached_state "no cache" "$(cat /sys/block/vdb/bcache/state)"
        emit detach_again "$(res bcache detach /dev/vdb)"
        check attach_by_cache_device bcache attach /dev/vda /dev/vdb
        wait_for /sys/block/vdb/bcache/cache
        check detach2 bcache detach /dev/vdb
        wait_gone /sys/block/vdb/bcache/cache
        check attach_by_uuid bcache attach "$CSET" /dev/vdb
        wait_for /sys/block/vdb/bcache/cache
        emit attach_unknown "$(res bcache attach 01234567-89ab-4def-8123-456789abcdef /dev/vdb)"
        emit attach_unregistered "$(res bcache attach "$CSET" /dev/vdc)"

        check stop bcache stop /dev/vdb
        check_fails stopped_bcache_dev_gone test -e "$B"
        check_fails stopped_dir_gone test -e /sys/block/vdb/bcache
        check reregister bcache register /dev/vdb
        B=$(bcache_of /dev/vdb)
        wait_for /sys/block/vdb/bcache/cache
        check read_after_reregister sh -c "dd if=$B bs=64k count=16 2>/dev/null | cmp - /root/data.bin"

        check format_spare bcache make -B /dev/vdc
        check register_spare bcache register /dev/vdc
        S=$(bcache_of /dev/vdc)
        emit busy "$(res bcache make -B --wipe-bcache /dev/vdc)"
        check force_format bcache make -B --wipe-bcache --force /dev/vdc

        check unregister bcache unregister "$CSET"
        check_fails unregistered_set_gone test -e "/sys/fs/bcache/$CSET"
        check stop_backing bcache stop /dev/vdb
        check_fails stopped_backing_gone test -e /sys/block/vdb/bcache
        emit not_registered "$(res bcache detach /dev/vdb)"
        "#,
    ));
    assert!(out.value("bdev").unwrap().starts_with("/dev/bcache"));
    // What the README's demo command shows (with --nocapture).
    eprintln!("guest: bcache super-show /dev/vdb while attached:\n{}", out.section("show"));
    let kernel: Vec<&str> = out.dmesg.lines().filter(|l| l.contains("bcache:")).collect();
    eprintln!("guest kernel log:\n{}", kernel.join("\n"));
    // Written in writeback mode: the kernel marked the superblock dirty.
    assert!(out.section("show").contains("dev.data.cache_state\t2 [dirty]"), "attached with dirty data");
    let again = out.value("again").unwrap();
    assert!(again.contains("/dev/vdb: already registered") && again.ends_with("status=1"), "{again}");
    let detach_again = out.value("detach_again").unwrap();
    assert!(detach_again.contains("not attached to a cache set") && detach_again.ends_with("status=1"), "{detach_again}");
    let unknown = out.value("attach_unknown").unwrap();
    assert!(unknown.contains("no cache set 01234567-89ab-4def-8123-456789abcdef is registered"), "{unknown}");
    let unreg = out.value("attach_unregistered").unwrap();
    assert!(unreg.contains("/dev/vdc: not registered with bcache"), "{unreg}");
    let busy = out.value("busy").unwrap();
    assert!(busy.contains("registered with bcache; stop it first, or pass --force") && busy.ends_with("status=1"), "{busy}");
    let gone = out.value("not_registered").unwrap();
    assert!(gone.contains("not registered with bcache") && gone.ends_with("status=1"), "{gone}");

    // Written through bcache, found at the data offset of the backing
    // device (writeback data reached it at detach, stop and unregister).
    let on_disk = common::vm::read_at(&backing, 16 * 512, data.len());
    assert!(on_disk == data, "the data is not on the backing device at sector 16");
    let sb = read_sb(&backing);
    assert_eq!(sb.state(), BdevState::None, "detached: state none");
    assert_eq!(sb.label_bytes(), b"tier1");
}

/// `bcache stop` and `unregister` return once the kernel has let go, so a
/// `register` at once finds the device free, round after round: a backing
/// device, a cache set stopped (which stops its backing device too),
/// unregistered by uuid and by its cache device. (Issue 8: a register right after a stop
/// was refused as busy, the stop having returned before the kernel's
/// deferred release of the device.) A stop the kernel cannot finish, its
/// /dev/bcacheN held open, fails after the bound and says why.
#[test]
fn register_right_after_stop_finds_the_device_free() {
    const ROUNDS: u32 = 20;
    let scratch = Scratch::new();
    let cache = scratch.image("cache.img", 300 * MIB);
    let backing = scratch.image("backing.img", 64 * MIB);
    let mut vm = new_vm();
    vm.disk(&cache).disk(&backing);
    let out = vm.run(&scenario(&format!(
        r#"
        check make bcache make -C /dev/vda -B /dev/vdb
        check register bcache register /dev/vda /dev/vdb
        CSET=$(bcache super-show --json /dev/vda | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        check attached test -e /sys/block/vdb/bcache/cache
        fails=0
        first=
        # A refusal is counted, and the round carries on from the state it
        # expects once the kernel is done, so one slow release does not
        # fail every round after it.
        down() {{
            if ! _o=$("$@" 2>&1); then
                fails=$((fails + 1)); [ -n "$first" ] || first="round $i: $*: $_o"
            fi
        }}
        up() {{
            for _d in "$@"; do
                if ! _o=$(bcache register "$_d" 2>&1); then
                    fails=$((fails + 1)); [ -n "$first" ] || first="round $i: register $_d: $_o"
                    wait_until 60 bcache register "$_d"
                fi
            done
        }}
        start=$(now_cs)
        i=0
        while [ $i -lt {ROUNDS} ]; do
            i=$((i + 1))
            down bcache stop /dev/vda
            up /dev/vda /dev/vdb
            down bcache stop /dev/vdb
            up /dev/vdb
            # Unregister detaches the backing device for good (the kernel
            # clears its set uuid): attached again by hand.
            down bcache unregister "$CSET"
            up /dev/vda
            down bcache attach "$CSET" /dev/vdb
            down bcache unregister /dev/vda
            up /dev/vda
            down bcache attach "$CSET" /dev/vdb
        done
        emit rounds $i
        emit fails $fails
        emit first "$first"
        emit centiseconds $(( $(now_cs) - start ))
        wait_for /sys/block/vdb/bcache/cache
        check_eq still_attached "$CSET" "$(basename "$(readlink /sys/block/vdb/bcache/cache)")"

        # An open /dev/bcacheN holds the backing device past the bound.
        B=$(bcache_of /dev/vdb)
        exec 3<"$B"
        emit held "$(res bcache stop /dev/vdb)"
        exec 3<&-
        # Nothing of ours to wait on: the kernel finishes once it is closed.
        check register_after_close wait_until 30 bcache register /dev/vdb
        "#
    )));
    let fails = out.value("fails").unwrap();
    eprintln!("{ROUNDS} rounds in {} cs", out.value("centiseconds").unwrap_or("?"));
    assert_eq!(out.value("rounds"), Some(ROUNDS.to_string().as_str()));
    assert!(fails == "0", "{fails} refusals in {ROUNDS} rounds; the first: {}", out.value("first").unwrap_or(""));
    let held = out.value("held").unwrap();
    assert!(
        held.starts_with("bcache stop: /dev/vdb: still open exclusively 30 s after 'stop': by bcache while its /dev/bcacheN is mounted or open")
            && held.ends_with("status=1"),
        "{held}"
    );
}

/// A dirty device waits for its cache set; `run` refuses it without
/// --force, and with --force the kernel runs it and marks it stale. A
/// clean one runs on a plain `run`. A mounted device cannot be formatted.
#[test]
fn dirty_devices_wait_and_busy_devices_are_refused() {
    let scratch = Scratch::new();
    let dirty = scratch.image("dirty.img", 64 * MIB);
    let clean = scratch.image("clean.img", 64 * MIB);
    let fs = scratch.image("fs.img", 64 * MIB);
    let absent_set = Uuid::new_v4();
    write_sb(&dirty, &backing_sb(absent_set, BdevState::Dirty));
    write_sb(&clean, &backing_sb(absent_set, BdevState::Clean));
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(&fs)
        .status()
        .unwrap();
    assert!(mkfs.success(), "mkfs.ext4 (e2fsprogs) is needed");
    let mut vm = new_vm();
    vm.disk(&dirty).disk(&clean).disk(&fs).module("ext4");
    let out = vm.run(&scenario(
        r#"
        check register bcache register /dev/vda /dev/vdb
        wait_for /sys/block/vda/bcache/running
        check_eq dirty_state dirty "$(cat /sys/block/vda/bcache/state)"
        check_eq dirty_waits 0 "$(cat /sys/block/vda/bcache/running)"
        check_fails dirty_has_no_bcache_dev test -e /sys/block/vda/bcache/dev
        emit run_refused "$(res bcache run /dev/vda)"
        check_eq still_waiting 0 "$(cat /sys/block/vda/bcache/running)"
        emit run_forced "$(res bcache run --force /dev/vda)"
        bcache_of /dev/vda
        check_eq forced_stale inconsistent "$(cat /sys/block/vda/bcache/state)"

        check_eq clean_waits 0 "$(cat /sys/block/vdb/bcache/running)"
        check run_clean bcache run /dev/vdb
        bcache_of /dev/vdb

        mkdir -p /mnt
        # Read-only: the file system writes nothing, any change would be ours.
        check mount mount -t ext4 -o ro /dev/vdc /mnt
        before=$(md5sum < /dev/vdc)
        emit mounted "$(res bcache make -B /dev/vdc)"
        check_eq mounted_unchanged "$before" "$(md5sum < /dev/vdc)"
        check umount umount /mnt
        before=$(md5sum < /dev/vdc)
        emit has_fs "$(res bcache make -B /dev/vdc)"
        check_eq fs_unchanged "$before" "$(md5sum < /dev/vdc)"
        "#,
    ));
    let refused = out.value("run_refused").unwrap();
    assert!(refused.contains("would lose those writes") && refused.ends_with("status=1"), "{refused}");
    let forced = out.value("run_forced").unwrap();
    assert!(forced.contains("warning") && forced.ends_with("status=0"), "{forced}");
    let mounted = out.value("mounted").unwrap();
    assert!(mounted.contains("/dev/vdc: device is in use") && mounted.ends_with("status=1"), "{mounted}");
    let has_fs = out.value("has_fs").unwrap();
    assert!(has_fs.contains("contains a ext4 signature") && has_fs.ends_with("status=1"), "{has_fs}");
    // The kernel recorded the forced run in the superblock.
    assert_eq!(read_sb(&dirty).state(), BdevState::Stale);
}

/// One crafted superblock per `read_super` refusal.
struct Case {
    name: &'static str,
    want: Rejection,
    sb: Superblock,
    /// Device size in bytes.
    size: u64,
    /// Logical block size of the virtual disk.
    lbs: u32,
}

fn cache_sb(sectors: u64) -> Superblock {
    Superblock::new_cache(&CacheParams {
        uuid: Uuid::new_v4(),
        set_uuid: Uuid::new_v4(),
        label: Label::default(),
        block_sectors: 8,
        bucket_sectors: 128,
        device_sectors: sectors,
        discard: false,
        replacement: Replacement::Lru,
    })
}

fn cases() -> Vec<Case> {
    use Rejection::*;
    const SIZE: u64 = 64 * MIB;
    let sectors = SIZE / 512;
    let cache = |name, want, change: fn(&mut Superblock)| {
        let mut sb = cache_sb(sectors);
        change(&mut sb);
        sb.seal();
        Case { name, want, sb, size: SIZE, lbs: 512 }
    };
    let backing = |name, want, change: fn(&mut Superblock)| {
        let mut sb = backing_sb(Uuid::nil(), BdevState::None);
        change(&mut sb);
        sb.seal();
        Case { name, want, sb, size: SIZE, lbs: 512 }
    };
    let mut v = vec![
        cache("bad_magic", BadMagic, |s| s.magic[0] ^= 0xff),
        backing("bad_uuid", BadUuid, |s| s.uuid = Uuid::nil()),
        backing("bad_data_offset", BadDataOffset, |s| { s.version = 4; s.nbuckets_or_data_offset = 8 }),
        backing("unsupported_version", UnsupportedVersion, |s| s.version = 2),
        cache("compat_feature", UnsupportedCompatFeature, |s| { s.version = 5; s.feature_compat = 1 }),
        cache("ro_compat_feature", UnsupportedRoCompatFeature, |s| { s.version = 5; s.feature_ro_compat = 1 }),
        cache("incompat_feature", UnsupportedIncompatFeature, |s| { s.version = 5; s.feature_incompat = 0x80 }),
        cache("too_many_buckets", TooManyBuckets, |s| s.nbuckets_or_data_offset = 1 << 63),
        cache("not_enough_buckets", NotEnoughBuckets, |s| s.nbuckets_or_data_offset = 100),
        cache("block_not_pow2", BlockSizeNotPowerOfTwo, |s| s.block_size = 6),
        cache("block_above_page", BlockSizeAbovePage, |s| s.block_size = 16),
        cache("bucket_not_pow2", BucketSizeNotPowerOfTwo, |s| s.bucket_size = 96),
        cache("bucket_below_page", BucketSizeBelowPage, |s| s.bucket_size = 4),
        cache("device_too_small", DeviceTooSmall, |s| s.nbuckets_or_data_offset *= 2),
        cache("bad_set_uuid", BadSetUuid, |s| s.set_uuid = Uuid::nil()),
        cache("bad_cache_number", BadCacheNumber, |s| { s.nr_in_set = 2; s.nr_this_dev = 2 }),
        cache("journal_not_sequential", JournalNotSequential, |s| { s.keys = 2; s.d[0] = 1; s.d[1] = 5 }),
        cache("journal_past_end", TooManyJournalBuckets, |s| {
            s.nbuckets_or_data_offset = 200;
            s.first_bucket = 190;
            s.keys = 20;
            for i in 0..20 {
                s.d[i] = 190 + i as u64;
            }
        }),
        cache("first_bucket_in_super", FirstBucketInSuper, |s| s.first_bucket = 0),
    ];
    let mut bad_offset = cache_sb(sectors);
    bad_offset.offset = 7;
    bad_offset.seal();
    v.push(Case { name: "bad_offset", want: BadOffset, sb: bad_offset, size: SIZE, lbs: 512 });
    let mut bad_csum = cache_sb(sectors);
    bad_csum.csum ^= 1;
    v.push(Case { name: "bad_checksum", want: BadChecksum, sb: bad_csum, size: SIZE, lbs: 512 });
    let mut small_block = backing_sb(Uuid::nil(), BdevState::None);
    small_block.block_size = 1;
    small_block.seal();
    v.push(Case { name: "block_below_device", want: BlockSizeBelowDevice, sb: small_block, size: SIZE, lbs: 4096 });
    v
}

/// The kernel's reason for each refused superblock equals our validator's,
/// both through the library and through `bcache register`.
#[test]
fn read_super_refusals_match_the_kernel() {
    let cases = cases();
    let scratch = Scratch::new();
    // Two boots: a PCI bus has room for a dozen disks comfortably.
    for chunk in cases.chunks(12) {
        let mut vm = new_vm();
        let mut images: Vec<PathBuf> = Vec::new();
        for c in chunk {
            let img = scratch.image(&format!("{}.img", c.name), c.size);
            write_sb(&img, &c.sb);
            let geom = DeviceGeometry { logical_block_size: c.lbs, sectors: c.size / 512 };
            assert_eq!(read_sb(&img).validate(&geom), Err(c.want), "{}: library", c.name);
            vm.disk_with_block_size(&img, c.lbs);
            images.push(img);
        }
        let mut script = String::new();
        for (i, c) in chunk.iter().enumerate() {
            let dev = vm.dev(i);
            script.push_str(&format!(
                "emit {n}.ours \"$(res bcache register {dev})\"\n\
                 kmsg_mark {n}\n\
                 if echo {dev} > /sys/fs/bcache/register; then emit {n}.kernel accepted; fi\n\
                 emit {n}.dmesg \"$(dmesg_since {n} | grep register_bcache | tail -n 1)\"\n",
                n = c.name
            ));
        }
        let out = vm.run(&scenario(&script));
        for (i, c) in chunk.iter().enumerate() {
            let dev = vm.dev(i);
            let want = c.want.to_string();
            assert_eq!(out.value(&format!("{}.kernel", c.name)), None, "{}: the kernel accepted it", c.name);
            let dmesg = out.value(&format!("{}.dmesg", c.name)).unwrap_or("");
            let kernel_reason = bcache::sysfs::register_error_reason(dmesg)
                .unwrap_or_else(|| panic!("{}: no register_bcache error in dmesg: {dmesg:?}", c.name));
            assert_eq!(kernel_reason, want, "{}: the kernel's reason", c.name);
            let ours = out.value(&format!("{}.ours", c.name)).unwrap();
            assert!(
                ours.contains(&format!("{dev}: not a valid bcache device: {want}")) && ours.ends_with("status=1"),
                "{}: bcache register said {ours:?}",
                c.name
            );
        }
    }
}

/// A cache with 512 buckets passes read_super but the kernel cannot use it:
/// `bcache make` refuses it, and the kernel agrees.
#[test]
fn caches_need_more_than_512_buckets() {
    let scratch = Scratch::new();
    let small = scratch.image("small.img", 512 * 128 * 512);
    let big = scratch.image("big.img", 513 * 128 * 512);
    write_sb(&small, &cache_sb(512 * 128));
    let mut vm = new_vm();
    // One vCPU: a new cache set turns CACHE_SYNC on a few instructions before it
    // opens its first journal entry (run_cache_set), and an allocator thread that
    // fills free_inc on another CPU in between journals with none: a NULL
    // dereference in bch_journal, seen once here. A 513-bucket cache (free list of 1)
    // reaches that point at once. With one CPU and no preemption point in that
    // window (Debian's kernel defaults to voluntary preemption; preempt=full
    // would reopen it), the allocator cannot run inside it.
    vm.cpus(1).disk(&small).disk(&big);
    let out = vm.run(&scenario(
        r#"
        emit make_small "$(res bcache make -C -b 64k /dev/vda)"
        check make_big bcache make -C -b 64k /dev/vdb
        check_fails kernel_refuses_small sh -c 'echo /dev/vda > /sys/fs/bcache/register'
        dmesg_section small_dmesg
        check kernel_takes_big sh -c 'echo /dev/vdb > /sys/fs/bcache/register'
        "#,
    ));
    let make = out.value("make_small").unwrap();
    assert!(make.contains("too small for a cache: 512 buckets") && make.ends_with("status=1"), "{make}");
    let dmesg = out.section("small_dmesg");
    assert!(dmesg.contains("cache device is too small"), "the kernel says why: {dmesg}");
}

/// A zoned backing device (null_blk, host-managed zones of 4 MiB, the
/// first one conventional): the data starts at the zone size by default,
/// an offset off the zone grid and writeback are refused.
#[test]
fn zoned_backing_devices() {
    let mut vm = new_vm();
    vm.module("configfs");
    let out = vm.run(&scenario(
        r#"
        insmod /lib/modules/null_blk.ko nr_devices=1 zoned=1 zone_size=4 zone_nr_conv=1 gb=1 memory_backed=1 bs=512
        wait_for /dev/nullb0
        check_eq zoned host-managed "$(cat /sys/block/nullb0/queue/zoned)"
        emit writeback "$(res bcache make -B --writeback /dev/nullb0)"
        emit unaligned "$(res bcache make -B -o 2048 /dev/nullb0)"
        check make bcache make -B /dev/nullb0
        section show bcache super-show /dev/nullb0
        "#,
    ));
    let wb = out.value("writeback").unwrap();
    assert!(wb.contains("writeback is not supported on zoned backing devices") && wb.ends_with("status=1"), "{wb}");
    let un = out.value("unaligned").unwrap();
    assert!(un.contains("multiple of the zone size (8192 sectors)") && un.ends_with("status=1"), "{un}");
    let show = out.section("show");
    assert!(show.contains("sb.version\t\t4 [backing device]") && show.contains("dev.data.first_sector\t8192"), "{show}");
}
