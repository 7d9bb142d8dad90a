//! A root file system on an adopted device (bcachetab(5)) boots through an
//! initramfs built by mkinitramfs with the project's initramfs-tools hook
//! (initramfs/initramfs-tools-hook) and local-block script
//! (initramfs/initramfs-tools-local-block), and through one built by dracut
//! with the project's module (initramfs/dracut/90bcachetab; the boots of the
//! dracut variant are described at `root_on_adopted_device_dracut`).
//!
//! Boot 1, a Debian userland guest (`Vm::debian`, udevd by hand): /dev/vda
//! holds an ext4 root file system made on the host (busybox, our binary, an
//! /sbin/init that reports and powers off). It is adopted with a writeback
//! cache on /dev/vdb (`bcache adopt --writeback --name root`); bcachetab, the
//! state file and a marker file are written into the root through
//! /dev/bcache/root (the marker stays dirty in the cache); the hook and script
//! are installed where the README says, and `mkinitramfs` builds an initramfs
//! for the guest's kernel, which goes back to the host on a spare disk.
//!
//! Boot 2: QEMU boots the kernel with that initramfs and `root=UUID=<the file
//! system's uuid>`: the initramfs's udev brings the device up from its copy of
//! bcachetab and the state file, the uuid resolves to the bcache device (not
//! the raw one, which holds the same file system), and the root's /sbin/init
//! reports that / is /dev/bcacheN with the marker read from the cache.
//!
//! Boot 3: `root=/dev/bcache/root` with a blank disk where the cache was: the writeback
//! device waits for its cache set, the root never comes up, and the console
//! says why (the local-block script prints `bcache tab list`).
//!
//! On the stock kernel (layout header: dm-linear, loop, dm's udev rules in the
//! initramfs) and on the patched module (layout raw: the hook takes the
//! bcache.ko that modprobe resolves, the patched one in updates/).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::vm::{self, Scratch, Vm, VmOutput};

const MIB: u64 = 1 << 20;
const ROOT_UUID: &str = "5b0e2a6c-1d7f-4c3a-8e95-2f4a6b8c0d13";
const MARKER: &str = "written-through-bcache-writeback";
/// The spare disk that carries the initramfs back to the host.
const CARRIER_SIZE: u64 = 96 * MIB;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// /sbin/init of the adopted root: reports on the harness's ports (out, meta;
/// virtio_console is built into Debian's kernel) what / is, then powers off.
const ROOT_INIT: &str = r#"#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc 2>/dev/null
mount -t sysfs sysfs /sys 2>/dev/null
mount -t devtmpfs devtmpfs /dev 2>/dev/null
port() {
    for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/${p##*/}" ] && echo "/dev/${p##*/}" && return
    done
    echo /dev/console
}
OUT=$(port out)
META=$(port meta)
exec > "$OUT" 2> "$(port err)"
echo "root init: / is up, reporting on $OUT" > /dev/console
emit() { k=$1; shift; echo "@@ $k $*"; }
section() { s=$1; shift; echo "@@BEGIN $s"; "$@" 2>&1; echo "@@END $s"; }
rootdev=$(awk '$5 == "/" { d = $3 } END { print d }' /proc/self/mountinfo)
emit root_dev "$rootdev"
for b in /sys/block/*; do
    [ "$(cat "$b/dev")" = "$rootdev" ] || continue
    emit root_block "${b##*/}"
    if [ -e "$b/bcache" ]; then
        bk=$(readlink -f "$b/bcache")
        bk=${bk%/bcache}
        emit root_backing "${bk##*/}"
        emit root_state "$(cat "$b/bcache/state")"
        emit root_mode "$(cat "$b/bcache/cache_mode")"
        [ -e "$b/bcache/cache" ] && emit root_cache "$(basename "$(readlink -f "$b/bcache/cache")")"
        if [ -e "$b/bcache/cache/cache0" ]; then
            c=$(readlink -f "$b/bcache/cache/cache0")
            c=${c%/bcache}
            emit root_cache_dev "${c##*/}"
        fi
    fi
done
emit by_name "$(readlink -f /dev/bcache/root)"
emit by_uuid "$(readlink -f /dev/disk/by-uuid/__ROOT_UUID__)"
emit marker "$(cat /marker)"
emit register_raw "$(test -e /sys/fs/bcache/register_raw && echo yes || echo no)"
emit cmdline "$(cat /proc/cmdline)"
section mounts cat /proc/mounts
section list bcache tab list
section headers ls /run/bcache/header
section links ls -lR /dev/bcache /dev/disk/by-uuid
{
    echo "@@DMESG-BEGIN"
    dmesg
    echo "@@DMESG-END"
    echo "@@STATUS 0"
} > "$META"
echo "@@STATUS 0" > /dev/console
poweroff -f
"#;

/// An ext4 image holding a busybox userland, our binary (with its shared
/// libraries, for `bcache tab list`) and ROOT_INIT as /sbin/init.
fn root_image(scratch: &Scratch) -> PathBuf {
    let dir = scratch.path().join("rootfs");
    let mk = |p: &str| std::fs::create_dir_all(dir.join(p.trim_start_matches('/'))).unwrap();
    for d in ["/bin", "/sbin", "/usr/bin", "/usr/sbin", "/proc", "/sys", "/dev", "/run", "/tmp", "/etc", "/var/lib/bcache", "/root"] {
        mk(d);
    }
    let copy = |host: &Path, guest: &str| {
        let dest = dir.join(guest.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(host, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", host.display()));
    };
    let busybox = vm::find_host_program("busybox").expect("busybox (apt-get install busybox-static)");
    copy(&busybox, "/bin/busybox");
    let list = Command::new(&busybox).arg("--list-full").output().expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(|l| l.trim().trim_start_matches('/')).filter(|l| !l.is_empty()) {
        let link = dir.join(applet);
        if !link.ends_with("busybox") && !link.exists() {
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
        }
    }
    let bcache = PathBuf::from(env!("CARGO_BIN_EXE_bcache"));
    copy(&bcache, "/usr/sbin/bcache");
    for lib in vm::shared_libraries(&bcache) {
        copy(&lib, &lib.to_string_lossy());
    }
    let init = dir.join("sbin/init");
    let _ = std::fs::remove_file(&init);
    std::fs::write(&init, ROOT_INIT.replace("__ROOT_UUID__", ROOT_UUID)).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = scratch.image("root.img", 128 * MIB);
    let out = Command::new("mkfs.ext4").args(["-q", "-F", "-U", ROOT_UUID, "-L", "bcroot", "-d"]).arg(&dir).arg(&img).output().unwrap();
    assert!(out.status.success(), "mkfs.ext4 -d: {}", String::from_utf8_lossy(&out.stderr));
    img
}

fn boot_report(what: &str, out: &VmOutput) {
    eprintln!(
        "{what}: {:.1} s in QEMU{}",
        out.elapsed.as_secs_f64(),
        out.scenario_start.map(|s| format!(", scenario at {s:.1} s")).unwrap_or_default()
    );
}

/// What builds the initramfs in boot 1.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Builder {
    /// mkinitramfs with initramfs/initramfs-tools-*.
    InitramfsTools,
    /// dracut (dracut-core) with initramfs/dracut/90bcachetab, without
    /// systemd in the initramfs (dracut's shell init and initqueue hooks).
    Dracut,
}

/// The dracut module's files, where the README installs them.
const DRACUT_MODULE: &[&str] = &["module-setup.sh", "bcache-wait.sh", "bcache-timeout.sh", "bcache-root.sh"];

/// Boot 1: adopt, write into the root, build the initramfs with the
/// project's hook or dracut module; returns the initramfs image (on the
/// host) and the cache set's uuid.
fn build_initramfs(scratch: &Scratch, root: &Path, cache: &Path, patched: bool, builder: Builder) -> (PathBuf, String) {
    let system = scratch.system_disk("system.img");
    let carrier = scratch.image("carrier.img", CARRIER_SIZE);
    let mut vm = Vm::debian(&system);
    vm.debian_init(vm::DebianInit::Udevd)
        .disk(root)
        .disk(cache)
        .disk(&carrier)
        // installed as the README says
        .host_file(&repo("udev/61-bcachetab.rules"), "/usr/lib/udev/rules.d/61-bcachetab.rules")
        .host_file(&repo("udev/69-bcache.rules"), "/usr/lib/udev/rules.d/69-bcache.rules")
        .symlink("/usr/sbin/bcachetab-apply", "bcache")
        // an initramfs build is thousands of processes: minutes under TCG
        .timeout(std::time::Duration::from_secs(900));
    match builder {
        Builder::InitramfsTools => {
            vm.host_file(&repo("initramfs/initramfs-tools-hook"), "/usr/share/initramfs-tools/hooks/bcache")
                .host_file(&repo("initramfs/initramfs-tools-local-block"), "/usr/share/initramfs-tools/scripts/local-block/bcache")
                .host_file(&repo("initramfs/initramfs-tools-local-premount"), "/usr/share/initramfs-tools/scripts/local-premount/bcache")
                // the machine's own initramfs-tools configuration: its disk and root
                // file system drivers (MODULES=most would take minutes under TCG)
                .file("/etc/initramfs-tools/conf.d/bcache-vm.conf", "MODULES=list\nRESUME=none\n", false)
                .file("/etc/initramfs-tools/modules", "virtio_blk\next4\n", false);
        }
        Builder::Dracut => {
            for f in DRACUT_MODULE {
                vm.host_file(&repo(&format!("initramfs/dracut/90bcachetab/{f}")), &format!("/usr/lib/dracut/modules.d/90bcachetab/{f}"));
            }
        }
    }
    // as the kernel package installs it: mkinitramfs checks the compression there
    let config = vm.assets().dir.join("config");
    let release = vm.assets().release.clone();
    vm.host_file(&config, &format!("/boot/config-{release}"));
    if patched {
        let ko = common::patched_module(&vm);
        vm.module_override(&ko);
    }
    let layout = if patched { "raw" } else { "header" };
    let build = match builder {
        Builder::InitramfsTools => MKINITRAMFS,
        Builder::Dracut => DRACUT,
    };
    let out = vm.run(&format!(
        r#"
        check make_cache bcache make -C /dev/vdb
        wait_until 30 test -e /sys/block/vdb/bcache
        # writeback_running=0 (a bcachetab tunable): nothing is written back,
        # so the marker is still only in the cache at every later boot.
        check adopt bcache adopt /dev/vda --cache /dev/vdb --writeback --name root -o writeback_running=0
        udevadm settle
        wait_for /dev/bcache/root
        B=$(basename "$(readlink -f /dev/bcache/root)")
        mkdir -p /mnt/r
        check mount mount /dev/bcache/root /mnt/r
        # the system's bcachetab and state live on its root file system
        cp /etc/bcachetab /mnt/r/etc/bcachetab
        cp /var/lib/bcache/state /mnt/r/var/lib/bcache/state
        echo {MARKER} > /mnt/r/marker
        check umount umount /mnt/r
        emit bdev_state "$(cat /sys/block/$B/bcache/state)"
        section tab cat /etc/bcachetab
        section state cat /var/lib/bcache/state
        emit bcache_ko "$(modinfo -n bcache)"
        T0=$(cut -d' ' -f1 /proc/uptime)
        {build}
        emit build_s "$T0 $(cut -d' ' -f1 /proc/uptime)"
        SIZE=$(stat -c %s /tmp/initrd.img)
        test "$SIZE" -le {CARRIER_SIZE} || fail "initramfs of $SIZE bytes does not fit the carrier disk"
        check carry dd if=/tmp/initrd.img of=/dev/vdc bs=1M conv=fsync status=none
        emit initrd_size "$SIZE"
        "#
    ));
    boot_report("boot 1 (adopt, initramfs build)", &out);
    if let Some((a, b)) = out.expect_value("build_s").split_once(' ') {
        let (a, b): (f64, f64) = (a.parse().unwrap(), b.parse().unwrap());
        eprintln!("initramfs build in the guest: {:.1} s", b - a);
    }
    assert_eq!(out.expect_value("bdev_state"), "dirty", "the marker is dirty in the cache");
    assert!(out.section("state").contains(&format!("layout={layout}")), "{}", out.section("state"));
    if patched {
        assert!(out.expect_value("bcache_ko").contains("/updates/"), "modprobe resolves the patched module: {}", out.expect_value("bcache_ko"));
    }

    // What the hook or module put in. Listings name a file by its path at
    // the end of the line, or before " -> " for a symbolic link (lsinitrd).
    let contents = out.section("contents");
    // dracut keeps modules compressed as the kernel package ships them.
    let has = |suffix: &str| {
        contents.lines().any(|l| {
            let path = l.split(" -> ").next().unwrap_or_default().trim_end();
            let path = [".xz", ".zst", ".gz"].iter().find_map(|z| path.strip_suffix(z).filter(|p| p.ends_with(".ko"))).unwrap_or(path);
            path.ends_with(suffix)
        })
    };
    let scripts: &[&str] = match builder {
        Builder::InitramfsTools => &["scripts/local-block/bcache", "scripts/local-premount/bcache"],
        Builder::Dracut => &[
            "/hooks/initqueue/settled/90-bcache-wait.sh",
            "/hooks/initqueue/timeout/90-bcache-timeout.sh",
            "/hooks/pre-mount/90-bcache-root.sh",
        ],
    };
    for f in [
        "usr/sbin/bcache",
        "usr/sbin/bcachetab-apply",
        "/udev/rules.d/61-bcachetab.rules",
        "/udev/rules.d/69-bcache.rules",
        "/udev/rules.d/95-dm-notify.rules",
        "etc/bcachetab",
        "var/lib/bcache/state",
        "/md/dm-mod.ko",
        "/block/loop.ko",
        if patched { "/updates/bcache.ko" } else { "/md/bcache/bcache.ko" },
    ]
    .iter()
    .chain(scripts)
    {
        assert!(has(f), "the initramfs has no {f}:\n{contents}");
    }
    // dracut's dm module takes all of drivers/md, the stock bcache.ko with
    // it; modprobe prefers updates/, as the root's register_raw shows.
    if patched && builder == Builder::InitramfsTools {
        assert!(!has("/md/bcache/bcache.ko"), "the stock bcache.ko is in the initramfs beside the patched one:\n{contents}");
    }
    if builder == Builder::InitramfsTools {
        for (order, script) in [("block_order", "/scripts/local-block/bcache"), ("premount_order", "/scripts/local-premount/bcache")] {
            assert!(out.section(order).contains(script), "{script} is not run by the initramfs (not executable?):\n{}", out.section(order));
        }
    }
    let copy = out.section("state_copy");
    let mut lines = copy.lines();
    assert_eq!(lines.next(), Some(bcache::tab::records::COPY_HEADER), "{copy}");
    let line: Vec<String> = out.section("tab").lines().find(|l| l.split_whitespace().next() == Some("root")).map(|l| l.split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
    assert!(line.len() >= 4, "no root line with a cache set in bcachetab: {}", out.section("tab"));
    let (uuid, cset) = (line[2].clone(), line[3].clone());
    assert!(lines.any(|l| l.starts_with(&uuid) && l.contains(&format!("layout={layout}"))), "{copy}");

    let size: usize = out.expect_value("initrd_size").parse().unwrap();
    let img = scratch.path().join("initrd.img");
    std::fs::write(&img, vm::read_at(&carrier, 0, size)).unwrap();
    (img, cset)
}

/// Boot 1's initramfs build with initramfs-tools: the image, its listing,
/// the state copy, the scripts initramfs-tools will run.
const MKINITRAMFS: &str = r#"
        # its progress (-v) with the guest's uptime, on stderr
        mkinitramfs -v -c zstd -l 1 -o /tmp/initrd.img "$VM_KERNEL_RELEASE" 2>&1 \
            | while IFS= read -r l; do echo "$(cut -d' ' -f1 /proc/uptime) $l"; done >&2
        check mkinitramfs test "${PIPESTATUS[0]}" = 0
        section contents lsinitramfs /tmp/initrd.img
        mkdir /tmp/x
        unmkinitramfs /tmp/initrd.img /tmp/x
        S=$(find /tmp/x -path '*/var/lib/bcache/state' | head -1)
        section state_copy cat "$S"
        # mkinitramfs runs only the executable scripts, those in ORDER
        section block_order cat "$(find /tmp/x -path '*/scripts/local-block/ORDER' | head -1)"
        section premount_order cat "$(find /tmp/x -path '*/scripts/local-premount/ORDER' | head -1)"
"#;

/// The same with dracut.
const DRACUT: &str = r#"
        # the modules a root on an adopted disk needs, and no others (the
        # whole default set would take far longer under TCG); its progress
        # with the guest's uptime, on stderr
        dracut --force --no-hostonly --no-hostonly-cmdline --no-early-microcode \
            --modules "bash udev-rules base fs-lib rootfs-block kernel-modules bcachetab" \
            --drivers "virtio_blk ext4" --compress "zstd -1" --kver "$VM_KERNEL_RELEASE" /tmp/initrd.img 2>&1 \
            | while IFS= read -r l; do echo "$(cut -d' ' -f1 /proc/uptime) $l"; done >&2
        check dracut test "${PIPESTATUS[0]}" = 0
        section contents lsinitrd /tmp/initrd.img
        section state_copy lsinitrd -f var/lib/bcache/state /tmp/initrd.img
"#;

/// Boots the initramfs with the root's disk and `cache` as its disks.
fn boot_root(initrd: &Path, root: &Path, cache: &Path, root_arg: &str) -> VmOutput {
    let mut vm = Vm::new();
    vm.disk(root)
        .disk(cache)
        .boot_initrd(initrd)
        // no rootdelay=: initramfs-tools' init sleeps that long before
        // looking for the root; it waits at most 30 s for its device anyway
        .kernel_arg(root_arg);
    vm.boot()
}

fn root_on_adopted_device(patched: bool) {
    let scratch = Scratch::new();
    let root = root_image(&scratch);
    let cache = scratch.image("cache.img", 300 * MIB);
    let (initrd, cset) = build_initramfs(&scratch, &root, &cache, patched, Builder::InitramfsTools);

    // Boot 2: through the initramfs, with the cache, root=UUID= (the raw disk
    // holds the same uuid: the root must still be the bcache device).
    let out = boot_root(&initrd, &root, &cache, &format!("root=UUID={ROOT_UUID}"));
    boot_report("boot 2 (root=UUID=, with the cache)", &out);
    assert_root_is_bcache(&out, patched, &cset);
    eprintln!(
        "boot 2: root=UUID= resolved to {}",
        if out.console.contains("is the raw device of this bcachetab line") { "the raw disk (the local-premount script took the bcache device)" } else { "the bcache device" }
    );

    // Boot 3: root=/dev/vda, the raw disk itself, with the cache: the
    // local-premount script mounts the line's bcache device instead.
    let out = boot_root(&initrd, &root, &cache, "root=/dev/vda");
    boot_report("boot 3 (root=/dev/vda, with the cache)", &out);
    assert_root_is_bcache(&out, patched, &cset);
    assert!(
        out.console.contains("is the raw device of this bcachetab line") && out.console.contains("bcache: the root is /dev/bcache/root"),
        "the local-premount script did not say it took /dev/bcache/root:\n{}",
        vm_tail(&out.console)
    );

    // Boot 4: a blank disk where the cache was, root=/dev/bcache/root: the root
    // must not come up; initramfs-tools waits for it and gives up.
    let blank = scratch.image("blank.img", 300 * MIB);
    let out = boot_root(&initrd, &root, &blank, "root=/dev/bcache/root");
    boot_report("boot 4 (root=/dev/bcache/root, cache missing)", &out);
    if out.status.is_some() {
        out.fail("the root came up without its writeback cache");
    }
    let console = &out.console;
    assert!(console.contains("bcache: waiting for the root device"), "the local-block script says why:\n{}", vm_tail(console));
    assert!(console.contains("waiting for cache set") && console.contains("dirty data"), "{}", vm_tail(console));
    assert!(console.contains("Gave up waiting for root file system device"), "{}", vm_tail(console));

    // Boot 5: the same with root=UUID=: blkid finds the uuid on the raw disk at
    // once (the bcache device does not exist). The local-premount script must
    // refuse to mount it: the cache (blank here) may hold dirty data for it.
    let out = boot_root(&initrd, &root, &blank, &format!("root=UUID={ROOT_UUID}"));
    boot_report("boot 5 (root=UUID=, cache missing)", &out);
    if out.status.is_some() {
        out.fail(&format!("the root came up without its writeback cache: / was {}", out.value("root_block").unwrap_or_default()));
    }
    let console = &out.console;
    assert_raw_root_refused(console, "the local-premount script");
    assert!(console.contains("waiting for cache set") && console.contains("dirty data"), "{}", vm_tail(console));
    assert!(!console.contains("Gave up waiting for root file system device"), "root=UUID= resolved at once (to the raw disk):\n{}", vm_tail(console));
}

/// The same root, booted through an initramfs that dracut built with the
/// project's module (dracut's shell init, no systemd in the initramfs).
fn root_on_adopted_device_dracut(patched: bool) {
    let scratch = Scratch::new();
    let root = root_image(&scratch);
    let cache = scratch.image("cache.img", 300 * MIB);
    let (initrd, cset) = build_initramfs(&scratch, &root, &cache, patched, Builder::Dracut);
    // dracut gives up on a root that does not come after rd.retry seconds
    // (180 by default); it then powers off instead of opening a shell.
    let args = |root: &str| format!("{root} rd.retry=30 rd.shell=0 rd.emergency=poweroff");

    // Boot 2: root=UUID= with the cache. dracut waits for
    // /dev/disk/by-uuid/UUID, which 61-bcachetab.rules gives the bcache
    // device only (the raw disk holds the same file system).
    let out = boot_root(&initrd, &root, &cache, &args(&format!("root=UUID={ROOT_UUID}")));
    boot_report("boot 2 (dracut, root=UUID=, with the cache)", &out);
    assert_root_is_bcache(&out, patched, &cset);

    // Boot 3: a blank disk where the cache was, root=/dev/bcache/root: the
    // writeback device waits for its set, the root never comes, and the
    // timeout hook says which device waits for what before dracut gives up.
    let blank = scratch.image("blank.img", 300 * MIB);
    let out = boot_root(&initrd, &root, &blank, &args("root=/dev/bcache/root"));
    boot_report("boot 3 (dracut, root=/dev/bcache/root, cache missing)", &out);
    if out.status.is_some() {
        out.fail("the root came up without its writeback cache");
    }
    let console = &out.console;
    assert!(console.contains("bcache: bcachetab's devices:"), "the timeout hook did not run:\n{}", vm_tail(console));
    assert!(console.contains("waiting for cache set") && console.contains("dirty data"), "{}", vm_tail(console));
    assert!(console.contains("Could not boot"), "dracut did not give up on the root:\n{}", vm_tail(console));

    // Boot 4: root=/dev/vda, the raw disk itself, cache missing: it is there
    // at once, and the pre-mount hook refuses to mount it (the cache may hold
    // dirty data for it).
    let out = boot_root(&initrd, &root, &blank, &args("root=/dev/vda"));
    boot_report("boot 4 (dracut, root=/dev/vda, cache missing)", &out);
    if out.status.is_some() {
        out.fail(&format!("the raw disk was mounted as the root: / was {}", out.value("root_block").unwrap_or_default()));
    }
    assert_raw_root_refused(&out.console, "the pre-mount hook");
}

/// `script` refused to mount the raw disk /dev/vda as the root, and said
/// which line it belongs to and what to boot with instead.
fn assert_raw_root_refused(console: &str, script: &str) {
    assert!(
        console.contains("bcache: refusing to mount /dev/vda, the raw device of bcachetab line 'root\tUUID=")
            && console.contains("Boot with root=/dev/bcache/root."),
        "{script} refuses the raw disk and says why:\n{}",
        vm_tail(console)
    );
}

/// / is the bcache device of the adopted disk, attached to its cache, with the
/// marker that was left dirty in the cache.
fn assert_root_is_bcache(out: &VmOutput, patched: bool, cset: &str) {
    out.assert_ok();
    let block = out.expect_value("root_block");
    assert!(block.starts_with("bcache"), "/ is {block} ({}), not a bcache device:\n{}", out.expect_value("root_dev"), out.section("mounts"));
    assert_eq!(out.expect_value("by_name"), format!("/dev/{block}"), "/dev/bcache/root:\n{}", out.section("links"));
    assert_eq!(out.expect_value("by_uuid"), format!("/dev/{block}"), "the file system's by-uuid link is the bcache device's");
    let backing = out.expect_value("root_backing");
    if patched {
        assert_eq!(backing, "vda", "layout raw: the device itself is the backing device");
        assert_eq!(out.expect_value("register_raw"), "yes", "the patched module came from the initramfs");
    } else {
        assert!(backing.starts_with("dm-"), "layout header: the backing device is the dm-linear one, not {backing}");
        assert!(!out.section("headers").trim().is_empty(), "the header file in /run/bcache/header: {}", out.section("headers"));
    }
    assert_eq!(out.expect_value("root_mode"), "writethrough [writeback] writearound none");
    // bcache/cache links to the cache set's directory, /sys/fs/bcache/CSET
    assert_eq!(out.expect_value("root_cache"), cset, "attached to its cache set");
    assert_eq!(out.expect_value("root_cache_dev"), "vdb", "the cache set's cache device");
    assert_eq!(out.expect_value("marker"), MARKER, "the dirty marker is read from the cache");
    let list = out.section("list");
    assert!(list.lines().any(|l| l.split_whitespace().next() == Some("root") && l.contains("up: /dev/bcache")), "bcache tab list:\n{list}");
}

fn vm_tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

#[test]
fn stock_kernel_root_on_adopted_device_boots_through_initramfs_tools() {
    root_on_adopted_device(false);
}

#[test]
fn patched_module_root_on_adopted_device_boots_through_initramfs_tools() {
    root_on_adopted_device(true);
}

#[test]
fn stock_kernel_root_on_adopted_device_boots_through_dracut() {
    root_on_adopted_device_dracut(false);
}

#[test]
fn patched_module_root_on_adopted_device_boots_through_dracut() {
    root_on_adopted_device_dracut(true);
}

/// The hook and the dracut module write the state copy's first line exactly as
/// the tool recognises it (records::COPY_HEADER).
#[test]
fn initramfs_integrations_write_the_copy_header() {
    for f in ["initramfs/initramfs-tools-hook", "initramfs/dracut/90bcachetab/module-setup.sh"] {
        let text = std::fs::read_to_string(repo(f)).unwrap();
        assert!(text.contains(&format!("\"{}\"", bcache::tab::records::COPY_HEADER)), "{f} does not write records::COPY_HEADER");
    }
}
