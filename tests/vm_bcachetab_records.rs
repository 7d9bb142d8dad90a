//! What the state file's records prove, in the real kernel: a record that
//! adopt did not declare fresh is no proof that a device is new to its
//! cache set (registered as new, the kernel drops the set's slot and the
//! dirty data in it); a record from before that mark still comes up with
//! its set; a line's tunables when the set attaches after the device;
//! blank disks (no serial, PARTUUID or file system), which their size alone
//! cannot tell apart; a device found running without its set, marked
//! stale. Each test is named after the finding it fixes.

mod common;

use common::vm::{Scratch, Vm, VmOutput};
use common::{pattern, RES};

const MIB: u64 = 1 << 20;

/// Data at 8 MiB of the backing disk: A before adoption, B written
/// through the cache (dirty in the set at the power cut).
const AT: &str = "bs=1M seek=8 count=1";
const READ: &str = "bs=1M skip=8 count=1";

const SAVE: &str = r#"
    section bcachetab cat /etc/bcachetab
    section state cat /var/lib/bcache/state
"#;

fn guest(patched: bool) -> Vm {
    let mut vm = Vm::new();
    if patched {
        let ko = common::patched_module(&vm);
        vm.host_file(&ko, "/lib/modules/bcache.ko");
    }
    vm
}

fn report(what: &str, out: &VmOutput) {
    eprintln!("--- {what}\n{}", out.report());
}

/// A backing disk holding A at 8 MiB, and its cache's image.
fn disks(scratch: &Scratch) -> (std::path::PathBuf, std::path::PathBuf) {
    let backing = scratch.image("backing.img", 64 * MIB);
    let file = std::fs::OpenOptions::new().write(true).open(&backing).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &pattern(MIB as usize, 0xa), 8 * MIB).unwrap();
    (backing, scratch.image("cache.img", 300 * MIB))
}

/// Boot 1: adopt the blank disk with its cache in writeback, write B
/// (dirty, writeback stopped), cut the power. Returns the boot's output.
fn adopt_write_dirty_and_cut(backing: &std::path::Path, cache: &std::path::Path) -> VmOutput {
    let mut vm = guest(false);
    vm.disk(backing).disk(cache).file("/root/b", pattern(MIB as usize, 0xb), false);
    let out = vm.run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vdb
        check adopt bcache adopt /dev/vda --cache /dev/vdb --writeback --name d --force -o writeback_running=0
        wait_for /dev/bcache0
        check write_b dd if=/root/b of=/dev/bcache0 {AT} oflag=direct conv=fsync
        emit state "$(cat /sys/block/bcache0/bcache/state)"
        {SAVE}
        power_cut
        "#
    ));
    report("boot 1: adopt, dirty write, power cut", &out);
    assert_eq!(out.expect_value("state"), "dirty");
    out
}

/// The line's uuid (its third field).
fn line_uuid(tab: &str) -> String {
    let line = tab.lines().find(|l| l.split_whitespace().next() == Some("d")).unwrap_or_else(|| panic!("no line d in {tab}"));
    line.split_whitespace().nth(2).unwrap().to_owned()
}

/// Finding: `bcache tab identify` of a device with no record wrote a
/// record without `attached=`, which counted as never attached: the next
/// registration told the kernel the device was new to its set, and the
/// stock kernel dropped the set's slot for it, dirty data and all (the
/// disk read A, not B). Now only adopt's fresh declaration proves a device
/// new; this one is registered dirty and attaches with its data.
#[test]
fn tab_identify_over_no_record_keeps_the_sets_dirty_data() {
    let scratch = Scratch::new();
    let (backing, cache) = disks(&scratch);
    let out = adopt_write_dirty_and_cut(&backing, &cache);

    // Boot 2: the state file lost; the operator records the device again.
    let mut vm = guest(false);
    vm.disk(&backing).disk(&cache).file("/root/b", pattern(MIB as usize, 0xb), false);
    vm.file("/etc/bcachetab", out.section("bcachetab"), false);
    let out2 = vm.run(&format!(
        r#"{RES}
        check identify bcache tab identify d
        section recorded cat /var/lib/bcache/state
        emit apply "$(res bcache tab apply --all)"
        section waiting bcache tab list
        check register_cache bcache register /dev/vdb
        wait_for /dev/bcache0
        wait_until 30 test -e /sys/block/bcache0/bcache/cache
        check reads_b sh -c 'dd if=/dev/bcache0 {READ} iflag=direct 2>/dev/null | cmp - /root/b'
        {SAVE}
        "#
    ));
    report("boot 2: tab identify, apply, the cache back", &out2);
    out2.assert_ok();
    assert!(!out2.section("recorded").contains("new="), "{}", out2.section("recorded"));
    let waiting = out2.section("waiting");
    assert!(waiting.contains("waiting for cache set") && waiting.contains("dirty"), "{waiting}");
}

/// Finding: `bcache adopt --uuid U` recorded U as never attached, though a
/// set may know U (a device adopted again after its line and record were
/// lost): registered as new, the set's slot for it was dropped with its
/// dirty data. A given uuid is not marked new: the device attaches with
/// the set's data.
#[test]
fn adopt_of_a_given_uuid_keeps_the_sets_dirty_data() {
    let scratch = Scratch::new();
    let (backing, cache) = disks(&scratch);
    let out = adopt_write_dirty_and_cut(&backing, &cache);
    let uuid = line_uuid(&out.section("bcachetab"));

    // Boot 2: bcachetab and the state file both lost; adopted again by uuid.
    let mut vm = guest(false);
    vm.disk(&backing).disk(&cache).file("/root/b", pattern(MIB as usize, 0xb), false);
    let out2 = vm.run(&format!(
        r#"{RES}
        check adopt bcache adopt /dev/vda --uuid {uuid} --cache /dev/vdb --writeback --name d --force
        wait_for /dev/bcache0
        wait_until 30 test -e /sys/block/bcache0/bcache/cache
        check reads_b sh -c 'dd if=/dev/bcache0 {READ} iflag=direct 2>/dev/null | cmp - /root/b'
        {SAVE}
        "#
    ));
    report("boot 2: adopt --uuid", &out2);
    out2.assert_ok();
    assert!(!out2.section("state").contains("new="), "{}", out2.section("state"));
}

/// The script that writes a bcachetab line for the blank disk /dev/vda in
/// writeback with the set of the cache /dev/vdb (made here), and a state
/// record for it as a version before the mark wrote one (no `new=`, never
/// attached: the set has no slot for it).
fn upgraded_record(patched: bool) -> String {
    let layout = if patched { "raw" } else { "header" };
    format!(
        r#"
        check make_cache bcache make -C /dev/vdb
        CSET=$(bcache super-show --json /dev/vdb | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        U=4e4e4e4e-0000-4000-8000-000000000001
        echo "d /dev/vda $U $CSET mode=writeback,writeback_running=0,sequential_cutoff=1M,writeback_percent=40" > /etc/bcachetab
        mkdir -p /var/lib/bcache
        printf '# bcache state: written by bcache, do not edit\n%s layout={layout} mode=writeback sectors=%s\n' \
            $U "$(cat /sys/block/vda/size)" > /var/lib/bcache/state
        "#
    )
}

/// Waits for a bcache device attached to a set, and names it $B (a device
/// registered again by a settle may get another number).
const ATTACHED: &str = r#"
        wait_until 60 sh -c 'for b in /sys/block/bcache*; do test -e "$b/bcache/cache" && exit 0; done; exit 1'
        B=$(for b in /sys/block/bcache*; do test -e "$b/bcache/cache" && basename "$b"; done | head -1)
"#;

/// The tunables of $B.
const TUNABLES: &str = r#"
        emit running "$(cat /sys/block/$B/bcache/writeback_running)"
        emit cutoff "$(cat /sys/block/$B/bcache/sequential_cutoff)"
        emit percent "$(cat /sys/block/$B/bcache/writeback_percent)"
"#;

fn assert_tunables(out: &VmOutput) {
    assert_eq!(out.expect_value("running"), "0", "writeback_running from bcachetab");
    assert_eq!(out.expect_value("cutoff"), "1.0M");
    assert_eq!(out.expect_value("percent"), "40");
}

/// A state file written before adopt's mark: its records prove nothing
/// now, so a writeback device that was in fact never attached is
/// registered dirty and refused by its set for want of a slot. It must not
/// wait for ever: registered before its set, it is settled when the set
/// comes (the attach recorded ahead and never seen), with its tunables.
fn a_record_from_before_the_mark_is_settled_when_its_set_comes(patched: bool) {
    let scratch = Scratch::new();
    let (backing, cache) = disks(&scratch);
    let out = guest(patched).disk(&backing).disk(&cache).file("/root/a", pattern(MIB as usize, 0xa), false).run(&format!(
        r#"{RES}
        {upgraded}
        emit apply "$(res bcache tab apply --all)"
        section waiting bcache tab list
        check register_cache bcache register /dev/vdb
        {ATTACHED}
        check reads_a sh -c "dd if=/dev/$B {READ} iflag=direct 2>/dev/null | cmp - /root/a"
        {TUNABLES}
        {SAVE}
        "#,
        upgraded = upgraded_record(patched)
    ));
    report("a record from before the mark, its set registered after it", &out);
    out.assert_ok();
    let waiting = out.section("waiting");
    assert!(waiting.contains("waiting for cache set") && waiting.contains("dirty"), "{waiting}");
    assert_tunables(&out);
    let state = out.section("state");
    assert!(state.contains("attached=") && !state.contains("pending=1"), "{state}");
}

#[test]
fn a_record_from_before_the_mark_is_settled_when_its_set_comes_header() {
    a_record_from_before_the_mark_is_settled_when_its_set_comes(false);
}

#[test]
fn a_record_from_before_the_mark_is_settled_when_its_set_comes_raw() {
    a_record_from_before_the_mark_is_settled_when_its_set_comes(true);
}

/// The same record with its set registered first: refused at this boot
/// (nothing recorded then says the set holds nothing for it), the attach
/// recorded ahead; at the next boot the refusal settles it.
#[test]
fn a_record_from_before_the_mark_waits_one_boot_when_its_set_is_there_first() {
    let scratch = Scratch::new();
    let (backing, cache) = disks(&scratch);
    let out = guest(false).disk(&backing).disk(&cache).run(&format!(
        r#"{RES}
        {upgraded}
        check register_cache bcache register /dev/vdb
        emit apply "$(res bcache tab apply --all)"
        section waiting bcache tab list
        {SAVE}
        "#,
        upgraded = upgraded_record(false)
    ));
    report("boot 1: the set first", &out);
    out.assert_ok();
    let waiting = out.section("waiting");
    assert!(waiting.contains("waiting for cache set") && waiting.contains("dirty"), "{waiting}");
    assert!(out.section("state").contains("pending=1"), "{}", out.section("state"));

    let mut vm = guest(false);
    vm.disk(&backing).disk(&cache).file("/root/a", pattern(MIB as usize, 0xa), false);
    vm.file("/etc/bcachetab", out.section("bcachetab"), false).file("/var/lib/bcache/state", out.section("state"), false);
    let out2 = vm.run(&format!(
        r#"{RES}
        check register_cache bcache register /dev/vdb
        check apply bcache tab apply --all
        {ATTACHED}
        check reads_a sh -c "dd if=/dev/$B {READ} iflag=direct 2>/dev/null | cmp - /root/a"
        {TUNABLES}
        {SAVE}
        "#
    ));
    report("boot 2: settled", &out2);
    out2.assert_ok();
    assert_tunables(&out2);
}

/// Finding: a line's tunables were written only when the tool registered
/// the device; a set registered after it attached it later by itself, and
/// the kernel's attach starts the writeback thread with
/// writeback_running=1 (bch_cached_dev_writeback_start), whatever the line
/// said. Now they are written again after such an attach; the others
/// (sequential_cutoff, writeback_percent) survive it, as the kernel keeps
/// them.
fn tunables_survive_a_later_attach(patched: bool) {
    let scratch = Scratch::new();
    let (backing, cache) = disks(&scratch);
    let out = guest(patched).disk(&backing).disk(&cache).run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vdb
        CSET=$(bcache super-show --json /dev/vdb | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        check adopt bcache adopt /dev/vda --cset $CSET --writeback --name d --force \
            -o writeback_running=0,sequential_cutoff=1M,writeback_percent=40
        wait_for /dev/bcache0
        emit before "$(test -e /sys/block/bcache0/bcache/cache && echo attached || echo alone)"
        emit running_alone "$(cat /sys/block/bcache0/bcache/writeback_running)"
        check register_cache bcache register /dev/vdb
        {ATTACHED}
        {TUNABLES}
        {SAVE}
        "#
    ));
    report("adopt with a set not registered, then its cache", &out);
    out.assert_ok();
    assert_eq!(out.expect_value("before"), "alone", "new to its set: up at once, without it");
    assert_tunables(&out);
}

#[test]
fn tunables_survive_a_later_attach_header() {
    tunables_survive_a_later_attach(false);
}

#[test]
fn tunables_survive_a_later_attach_raw() {
    tunables_survive_a_later_attach(true);
}

/// Finding (after the fix above): `bcache attach` of a line's device left
/// writeback_running as the kernel's attach sets it (1), whatever the line
/// says. The line's tunables are written again after the attach.
fn tunables_survive_bcache_attach(patched: bool) {
    let scratch = Scratch::new();
    let (backing, cache) = disks(&scratch);
    let out = guest(patched).disk(&backing).disk(&cache).run(&format!(
        r#"{RES}
        check adopt bcache adopt /dev/vda --name d --force -o writeback_running=0,sequential_cutoff=1M,writeback_percent=40
        wait_for /dev/bcache0
        check make_cache bcache make -C /dev/vdb
        check register_cache bcache register /dev/vdb
        wait_until 60 test -e /sys/block/vdb/bcache/set
        CSET=$(basename "$(readlink -f /sys/block/vdb/bcache/set)")
        check attach bcache attach $CSET /dev/bcache0
        {ATTACHED}
        {TUNABLES}
        {SAVE}
        "#
    ));
    report("adopt without a set, then bcache attach", &out);
    out.assert_ok();
    assert_tunables(&out);
}

#[test]
fn tunables_survive_bcache_attach_header() {
    tunables_survive_bcache_attach(false);
}

#[test]
fn tunables_survive_bcache_attach_raw() {
    tunables_survive_bcache_attach(true);
}

/// Finding: two disks with no serial, no PARTUUID, no file system and one
/// size had the same identity, which tells neither from the other: adopt
/// refuses such a writeback device unless forced (its record could not
/// keep another such disk from being registered in its place), and a blank
/// device of the size of another line's blank record where a cache set may
/// hold data for either, unless forced (it may be that line's device under
/// a new name); so does tab identify. (Without a set, six such disks are
/// adopted in tests/vm_bcachetab_identity.rs.)
#[test]
fn blank_disks_of_one_size_are_refused_unless_forced() {
    let scratch = Scratch::new();
    let (a, b, c) = (scratch.image("a.img", 64 * MIB), scratch.image("b.img", 64 * MIB), scratch.image("c.img", 32 * MIB));
    let out = guest(false).disk(&a).disk(&b).disk(&c).run(&format!(
        r#"{RES}
        emit blank_wb "$(res bcache adopt /dev/vda --writeback --name a)"
        check forced_wb bcache adopt /dev/vda --cset 0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa --writeback --name a --force
        emit same_size "$(res bcache adopt /dev/vdb --name b)"
        emit other_size "$(res bcache adopt /dev/vdc --name c)"
        check forced_same_size bcache adopt /dev/vdb --name b --force
        emit identify "$(res bcache tab identify a)"
        emit identify_forced "$(res bcache tab identify --force a)"
        {SAVE}
        "#
    ));
    report("blank disks", &out);
    out.assert_ok();
    let blank_wb = out.expect_value("blank_wb");
    assert!(blank_wb.contains("its identity would be its size only") && blank_wb.ends_with("status=1"), "{blank_wb}");
    let same = out.expect_value("same_size");
    assert!(same.contains("cannot be told from the device of /etc/bcachetab:") && same.ends_with("status=1"), "{same}");
    assert!(out.expect_value("other_size").ends_with("status=0"), "{}", out.expect_value("other_size"));
    let identify = out.expect_value("identify");
    assert!(identify.contains("cannot be told from the device of") && identify.ends_with("status=1"), "{identify}");
    assert!(out.expect_value("identify_forced").ends_with("status=0"), "{}", out.expect_value("identify_forced"));
    assert_eq!(out.section("bcachetab").lines().filter(|l| !l.starts_with('#')).count(), 3, "{}", out.section("bcachetab"));
}

/// Finding (the soak): a raw writeback device registered again by hand
/// with `--state none` before its set, which held its dirty data, ran
/// without the set (the patched module refuses that attach), and
/// `bcache tab list` showed it plainly "up", its record unchanged: the
/// next registration was dirty and took back the set's old data over what
/// was written since. Now `tab apply` and `tab list` say it runs without
/// its set and record the stale mark; at the next boot the set drops its old data
/// for it, and the device reads what was written last.
#[test]
fn a_device_running_without_its_set_is_shown_so_and_marked_stale() {
    let scratch = Scratch::new();
    let (backing, cache) = disks(&scratch);
    let mut vm = guest(true);
    vm.disk(&backing).disk(&cache);
    vm.file("/root/a", pattern(MIB as usize, 0xa), false)
        .file("/root/b", pattern(MIB as usize, 0xb), false)
        .file("/root/c", pattern(MIB as usize, 0xc), false);
    let out = vm.run(&format!(
        r#"{RES}
        check make_cache bcache make -C /dev/vdb
        CSET=$(bcache super-show --json /dev/vdb | sed -n 's/.*"set_uuid": "\(.*\)".*/\1/p')
        check adopt bcache adopt /dev/vda --cache /dev/vdb --writeback --name d --force -o writeback_running=0
        wait_for /dev/bcache0
        wait_until 30 test -e /sys/block/vda/bcache/cache
        check write_b dd if=/root/b of=/dev/bcache0 {AT} oflag=direct conv=fsync
        emit dirty "$(cat /sys/block/vda/bcache/state)"
        U=$(awk '$1 == "d" {{ print $3 }}' /etc/bcachetab)
        # The set stops with its device; it keeps the slot and B, dirty.
        echo 1 > /sys/fs/bcache/$CSET/stop
        wait_until 30 sh -c "! test -e /sys/block/vda/bcache && ! test -e /sys/fs/bcache/$CSET"
        # The module refuses state none while the set is there and holds a
        # slot: registered by hand before it, then the set.
        check register_by_hand bcache register --raw /dev/vda --uuid $U --cset $CSET --mode writeback --state none
        wait_until 30 test -e /sys/block/vda/bcache/dev
        B=$(basename "$(readlink /sys/block/vda/bcache/dev)")
        check register_cache bcache register /dev/vdb
        wait_until 30 test -e /sys/fs/bcache/$CSET
        emit alone "$(test -e /sys/block/vda/bcache/cache && echo attached || echo alone)"
        # The disk's own blocks: A, not the set's B.
        check reads_a sh -c "dd if=/dev/$B {READ} iflag=direct 2>/dev/null | cmp - /root/a"
        section applied bcache tab apply --all
        section list bcache tab list
        section marked cat /var/lib/bcache/state
        check tab_check bcache tab check
        check write_c dd if=/root/c of=/dev/$B {AT} oflag=direct conv=fsync
        {SAVE}
        power_cut
        "#
    ));
    report("boot 1: adopted, B dirty in the set, registered by hand before it, C written", &out);
    out.assert_ok();
    assert_eq!(out.expect_value("dirty"), "dirty");
    assert_eq!(out.expect_value("alone"), "alone", "the patched module refuses the state-none attach");
    // tab apply of the device found up marks it, as tab list would.
    for what in ["applied", "list"] {
        let shown = out.section(what);
        assert!(shown.contains("up: /dev/bcache") && shown.contains("running without cache set"), "{what}: {shown}");
        assert!(shown.contains("(marked stale)"), "{what}: {shown}");
    }
    assert!(out.section("marked").contains("stale=1"), "{}", out.section("marked"));

    // Boot 2: the cache and the device back; the set's B dropped, C read.
    let mut vm = guest(true);
    vm.disk(&backing).disk(&cache).file("/root/c", pattern(MIB as usize, 0xc), false);
    vm.file("/etc/bcachetab", out.section("bcachetab"), false).file("/var/lib/bcache/state", out.section("state"), false);
    let out2 = vm.run(&format!(
        r#"{RES}
        check register_cache bcache register /dev/vdb
        check apply bcache tab apply --all
        {ATTACHED}
        check reads_c sh -c "dd if=/dev/$B {READ} iflag=direct 2>/dev/null | cmp - /root/c"
        section list bcache tab list
        {SAVE}
        "#
    ));
    report("boot 2: the cache back", &out2);
    out2.assert_ok();
    let list = out2.section("list");
    assert!(list.contains("up: /dev/bcache") && !list.contains("running without"), "{list}");
    let state = out2.section("state");
    assert!(state.contains("attached=") && !state.contains("stale=1"), "{state}");
}
