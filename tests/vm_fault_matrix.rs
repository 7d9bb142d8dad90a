//! The fault matrix (issue 8, FAULT-MATRIX.md): for each transition of an
//! adopted device and each fault between its steps, one test, on both
//! layouts (raw with the patched module, header on the stock kernel).
//!
//! Every cell runs the same three boots:
//! 1. an existing ext4 with files is adopted with a writeback cache (or
//!    writethrough with a timeout, for the timeout run, or without, for
//!    the mode change); the transition
//!    runs with its fault; if the device is up after it, one more file is
//!    written through it; then the power is cut.
//! 2. the cache is gone (a blank disk in its place): `tab apply --all` and
//!    `tab wait --all`. A device whose set held dirty data at the cut must
//!    not run. If it runs, its files are checked and one more is written.
//! 3. the cache is back: the device must come up with every file written
//!    in boots 1 and 2 intact (compared byte for byte): what the cache held
//!    for a device that ran without it is never served.
//!
//! The faults: `cut-before` and `cut-after` crash the tool just before and
//! just after it tells the kernel (`BCACHE_FAULT`, src/fault.rs) and cut
//! the power; `event-lost` runs the transition with nothing recording the
//! kernel's state-change events (no udev in this guest); `var-ro` runs it
//! with an event recorder (busybox uevent running `bcache tab record`, as
//! 61-bcachetab.rules does) while /var/lib/bcache is read-only; `cut`
//! (the detach only) runs it with the recorder, writes a new file once it
//! is done and cuts the power at once. For a transition the kernel makes
//! alone (the first dirty write), the cuts fall before and after the write;
//! for the writeback to clean, right after it is started and once the
//! state reads clean.
//!
//! The detach's cells other than the cuts around the kernel raise the set's
//! journal delay to 60 s first: a set that leaves the invalidation of the
//! device's slot to its next journal write (the stock kernel) then loses it
//! to the cut in every run, not in the one in three whose cut falls within
//! the default 100 ms.

mod common;

use common::vm::{Scratch, Vm, VmOutput};
use common::{pattern, RES, SAME_FILES};

const MIB: u64 = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Raw,
    Header,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    CutBefore,
    CutAfter,
    EventLost,
    VarReadOnly,
    /// The power cut alone, right after the step and one more write, with
    /// the recorder running (as udev would).
    Cut,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transition {
    /// `bcache adopt` with a registered cache set, writeback.
    Adopt,
    /// `bcache attach` of an adopted device that had no set.
    Attach,
    /// The kernel's first dirty write (no tool step).
    FirstDirty,
    /// The kernel writes the dirty data back until the device is clean
    /// (`writeback_running` turned on; no tool step).
    Clean,
    /// `bcache set-cachemode` of an adopted writethrough device to
    /// writeback, with writeback_running=0: what is written after stays
    /// dirty in the set.
    ModeChange,
    /// `bcache tab wait`: a writethrough device with timeout=1 runs
    /// without its set (in boot 2, where the set is missing).
    TimeoutRun,
    /// `bcache run --force` of a dirty device whose set is missing (in
    /// boot 2): its dirty data is given up, and must never be served.
    ForcedRun,
    /// `bcache detach` of a dirty device: the kernel writes back, then
    /// lets go of the set.
    Detach,
    /// The set returns (`bcache register` of the cache, as udev runs it)
    /// while the dirty device waits for it, in a boot between 1 and 2.
    SetReturns,
    /// bcachetab edited to name no set while the device is attached with
    /// dirty data, the kernel never told: what a detach cut before the
    /// kernel finished it leaves in the files (bcachetab names no set, the
    /// record names the set), with the slot and its dirty data still in
    /// the set for sure.
    LineDropsSet,
}

/// Files of the file system before adoption.
const FILES: u64 = 3;

fn file_data(i: u64) -> Vec<u8> {
    pattern(120_000 + i as usize * 30_011, 0x4a00 + i)
}

/// Files written through bcache: in boot 1 after the transition (b1), in
/// boot 2 without the cache (b2), and in boot 1 before it (b0).
fn written(name: &str) -> Vec<u8> {
    let seed = name.bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64));
    pattern(2 << 20, seed)
}

fn guest(layout: Layout) -> Vm {
    let mut vm = Vm::new();
    if layout == Layout::Raw {
        let ko = common::patched_module(&vm);
        vm.host_file(&ko, "/lib/modules/bcache.ko");
    }
    vm.module("ext4");
    for i in 0..FILES {
        vm.file(&format!("/root/expect/file{i}"), file_data(i), false);
    }
    for b in ["b0", "b1", "b2"] {
        vm.file(&format!("/root/new/{b}"), written(b), false);
    }
    vm
}

/// bcachetab and the state file, for the next boot (empty when a refused
/// step left none).
const SAVE: &str = r#"
    section bcachetab sh -c 'cat /etc/bcachetab 2>/dev/null; true'
    section state sh -c 'cat /var/lib/bcache/state 2>/dev/null; true'
"#;

/// Guest functions: the registered backing device, a write through the
/// bcache device, the kernel's view at the cut, and the event recorder.
const LIB: &str = r#"
backing() {
    for d in /sys/block/*/bcache/running; do
        d=${d%/bcache/running}; d=${d##*/}
        case $d in bcache*) ;; *) echo /dev/$d; return 0 ;; esac
    done
    return 1
}
write_new() {
    mkdir -p /mnt
    mount -t ext4 /dev/bcache0 /mnt && cp /root/new/$1 /mnt/$1 && umount /mnt && echo "$1" >> /root/wrote
}
sysdir() {
    b=$(backing) && echo /sys/block/${b#/dev/}/bcache
}
attached() {
    test -e "$(sysdir)/cache"
}
at_cut() {
    emit wrote "$(cat /root/wrote 2>/dev/null | tr '\n' ' ')"
    emit kernel_state "$(cat "$(sysdir)/state" 2>/dev/null || echo unregistered)"
}
record_events() {
    uevent sh -c '[ "$BCACHE_RAW" = 1 ] && bcache tab record' &
}
var_read_only() {
    mkdir -p /var/lib/bcache && mount --bind /var/lib/bcache /var/lib/bcache && mount -o remount,bind,ro /var/lib/bcache
}
start_writeback() {
    echo 1 > "$(sysdir)/writeback_running"
}
clean() {
    test "$(cat "$(sysdir)/state" 2>/dev/null)" = clean
}
wide_journal_delay() {
    for s in /sys/fs/bcache/*-*-*-*-*; do
        echo 60000 > $s/journal_delay_ms
        check_eq journal_delay_ms 60000 "$(cat $s/journal_delay_ms)"
    done
}
"#;

fn adopt(mode: &str) -> String {
    format!("bcache adopt /dev/vda --cache /dev/vdb {mode} --name d -o writeback_running=0")
}

/// Boot 1's script for a cell.
fn boot1(t: Transition, f: Fault) -> String {
    let fault = |point: &str| match f {
        Fault::CutBefore => format!("env BCACHE_FAULT={point}:before-kernel:crash "),
        Fault::CutAfter => format!("env BCACHE_FAULT={point}:after-kernel:crash "),
        _ => String::new(),
    };
    let around = match f {
        Fault::VarReadOnly => "record_events\n        var_read_only",
        Fault::CutAfter | Fault::CutBefore | Fault::Cut => "record_events",
        Fault::EventLost => "",
    };
    let (prepare, step) = match t {
        Transition::Adopt => (String::new(), format!("{}{}", fault("register"), adopt("--writeback"))),
        Transition::Attach => (
            "check adopt_without_set bcache adopt /dev/vda --writeback --name d -o writeback_running=0\n        \
             wait_for /dev/bcache0\n        check write_b0 write_new b0\n        \
             check register_cache bcache register /dev/vdb"
                .to_owned(),
            format!("{}bcache attach /dev/vdb $(backing)", fault("attach")),
        ),
        Transition::FirstDirty => (
            format!("check adopt {}\n        wait_for /dev/bcache0", adopt("--writeback")),
            match f {
                // The kernel's step: the cut falls before or after the write.
                Fault::CutBefore => "true".to_owned(),
                _ => "write_new b0".to_owned(),
            },
        ),
        Transition::Clean => (
            format!("check adopt {}\n        wait_for /dev/bcache0\n        check write_b0 write_new b0", adopt("--writeback")),
            match f {
                // The cut falls while the writeback is under way, or before
                // it starts: the kernel's state at the cut says which.
                Fault::CutBefore => "start_writeback".to_owned(),
                _ => "start_writeback && wait_until 60 clean".to_owned(),
            },
        ),
        Transition::ModeChange => (
            format!("check adopt {}\n        wait_for /dev/bcache0\n        check write_b0 write_new b0", adopt("")),
            format!("{}bcache set-cachemode $(backing) writeback", fault("cachemode")),
        ),
        Transition::TimeoutRun => (
            format!("check adopt {}\n        wait_for /dev/bcache0\n        check write_b0 write_new b0", adopt("-o timeout=1")),
            "true".to_owned(),
        ),
        Transition::Detach => (
            format!(
                "check adopt {}\n        wait_for /dev/bcache0\n        check write_b0 write_new b0{}",
                adopt("--writeback"),
                if matches!(f, Fault::CutBefore | Fault::CutAfter) { "" } else { "\n        wide_journal_delay" }
            ),
            format!("{}bcache detach $(backing)", fault("detach")),
        ),
        Transition::LineDropsSet => (
            format!("check adopt {}\n        wait_for /dev/bcache0\n        check write_b0 write_new b0", adopt("--writeback")),
            r#"sh -c "awk -F'\t' -v OFS='\t' '\$1 == \"d\" { \$4 = \"-\" } 1' /etc/bcachetab > /tmp/tab && cat /tmp/tab > /etc/bcachetab""#
                .to_owned(),
        ),
        Transition::ForcedRun | Transition::SetReturns => (
            format!("check adopt {}\n        wait_for /dev/bcache0\n        check write_b0 write_new b0", adopt("--writeback")),
            "true".to_owned(),
        ),
    };
    // One more file through the device if it is up after the step (after
    // a crash too: the kernel may have acted), except where the cut falls
    // before the kernel's own step.
    let post = match (t, f) {
        (Transition::FirstDirty | Transition::Clean, Fault::CutBefore) | (Transition::ForcedRun | Transition::SetReturns, _) => "",
        // Clean at the cut, nothing written after: what the writeback
        // leaves, alone.
        (Transition::Clean, Fault::CutAfter) => "",
        // A write after a detach the tool did not see to its end (it crashed
        // once the kernel was told): served over by the set's old dirty data
        // at the next attach on the stock kernel, whose journal may lose the
        // slot's invalidation. Open, FAULT-MATRIX.md.
        (Transition::Detach, Fault::CutAfter) => "",
        _ => "test -e /dev/bcache0 && write_new b1",
    };
    format!(
        r#"{RES}{LIB}
        check make_cache bcache make -C /dev/vdb
        {prepare}
        {around}
        emit step "$(res {step})"
        {post}
        at_cut
        emit features "$(cat /sys/fs/bcache/features 2>/dev/null)"
        section journal sh -c 'cat /run/bcache/state.journal 2>/dev/null; true'
        {SAVE}
        power_cut
        "#
    )
}

/// Boot 2's script (no cache): for the timeout run, its step with the fault.
fn boot2(t: Transition, f: Fault) -> String {
    let runs = matches!(t, Transition::TimeoutRun | Transition::ForcedRun);
    let wait = if runs {
        let (around, crash) = match f {
            Fault::CutBefore => ("record_events", "env BCACHE_FAULT=run:before-kernel:crash "),
            Fault::CutAfter => ("record_events", "env BCACHE_FAULT=run:after-kernel:crash "),
            Fault::VarReadOnly => ("record_events\n        var_read_only", ""),
            Fault::EventLost | Fault::Cut => ("", ""),
        };
        let run = if t == Transition::ForcedRun { "bcache run --force $(backing)" } else { "bcache tab wait --all" };
        format!("{around}\n        emit wait \"$(res {crash}{run})\"")
    } else {
        "emit wait \"$(res bcache tab wait --all)\"".to_owned()
    };
    // The run's cuts: the power goes right after the crash.
    let after_cut = if runs && matches!(f, Fault::CutBefore | Fault::CutAfter) {
        format!("section list bcache tab list\n        {SAVE}\n        power_cut")
    } else {
        String::new()
    };
    format!(
        r#"{RES}{SAME_FILES}{LIB}
        emit apply "$(res bcache tab apply --all)"
        {wait}
        {after_cut}
        if [ -e /dev/bcache0 ]; then
            emit ran_without_set yes
            mkdir -p /mnt
            check mount_without_set mount -t ext4 /dev/bcache0 /mnt
            same_files /mnt without_set
            for b in $(cat /root/wrote-before 2>/dev/null); do check "without_set_$b" cmp /root/new/$b /mnt/$b; done
            umount /mnt
            check write_b2 write_new b2
        else
            emit ran_without_set no
        fi
        section list bcache tab list
        {SAVE}
        power_cut
        "#
    )
}

/// The boot between 1 and 2 where the set returns (SetReturns): the
/// device waits, the cache is registered with the fault, one more file is
/// written if the device is up, and the power is cut.
fn set_returns(f: Fault) -> String {
    let (around, crash) = match f {
        Fault::CutBefore => ("record_events", "env BCACHE_FAULT=caches:before-kernel:crash "),
        Fault::CutAfter => ("record_events", "env BCACHE_FAULT=caches:after-kernel:crash "),
        Fault::VarReadOnly => ("record_events\n        var_read_only", ""),
        Fault::EventLost | Fault::Cut => ("", ""),
    };
    format!(
        r#"{RES}{LIB}
        emit apply "$(res bcache tab apply --all)"
        {around}
        emit step "$(res {crash}bcache register /dev/vdb)"
        test -e /dev/bcache0 && write_new b1
        at_cut
        {SAVE}
        power_cut
        "#
    )
}

/// Boot 3's script (the cache is back): every file must be there.
/// Whether the device is attached to its set at the end of boot 3.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ends {
    Attached,
    Detached,
    /// A detach the boot goes on with: either, by the time of the check.
    Either,
    /// Left down by the rules, for the operator: then the files are read
    /// from the disk itself (read-only), which must hold them all.
    Down,
    /// Left down by the rules, its dirty data in the set: the operator
    /// names the set in bcachetab again, and it comes up attached with
    /// every file.
    DownUntilNamed,
}

fn boot3(ends: Ends) -> String {
    if ends == Ends::DownUntilNamed {
        return format!(
            r#"{RES}{SAME_FILES}{LIB}
        emit apply "$(res bcache tab apply --all)"
        check register_cache bcache register /dev/vdb
        check_fails came_up test -e /dev/bcache0
        section list bcache tab list
        S=$(sed -n 's/.* attached=\([0-9a-f-]*\).*/\1/p' /var/lib/bcache/state | head -n 1)
        awk -F'\t' -v OFS='\t' -v s="$S" '$1 == "d" {{ $4 = s }} 1' /etc/bcachetab > /tmp/tab && cat /tmp/tab > /etc/bcachetab
        emit apply_named "$(res bcache tab apply --all)"
        wait_for /dev/bcache0 60
        wait_until 60 attached
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        same_files /mnt back
        for b in $(cat /root/wrote-before); do check "back_$b" cmp /root/new/$b /mnt/$b; done
        umount /mnt
        {SAVE}
        "#
        );
    }
    if ends == Ends::Down {
        return format!(
            r#"{RES}{SAME_FILES}{LIB}
        emit apply "$(res bcache tab apply --all)"
        check register_cache bcache register /dev/vdb
        check_fails came_up test -e /dev/bcache0
        section list bcache tab list
        mkdir -p /mnt
        check mount_disk mount -t ext4 -o ro,noload /dev/vda /mnt
        same_files /mnt back
        for b in $(cat /root/wrote-before); do check "back_$b" cmp /root/new/$b /mnt/$b; done
        umount /mnt
        {SAVE}
        "#
        );
    }
    let attached = match ends {
        Ends::Attached => "wait_until 60 attached",
        Ends::Detached => "check_fails attached attached",
        Ends::Either => "",
        Ends::Down | Ends::DownUntilNamed => unreachable!(),
    };
    format!(
        r#"{RES}{SAME_FILES}{LIB}
        emit apply "$(res bcache tab apply --all)"
        check register_cache bcache register /dev/vdb
        wait_for /dev/bcache0 60
        {attached}
        mkdir -p /mnt
        check mount mount -t ext4 /dev/bcache0 /mnt
        same_files /mnt back
        for b in $(cat /root/wrote-before); do check "back_$b" cmp /root/new/$b /mnt/$b; done
        umount /mnt
        section list bcache tab list
        {SAVE}
        "#
    )
}

fn carry(vm: &mut Vm, out: &VmOutput, wrote: &[String]) {
    vm.file("/etc/bcachetab", out.section("bcachetab"), false);
    vm.file("/var/lib/bcache/state", out.section("state"), false);
    vm.file("/root/wrote-before", wrote.join("\n") + "\n", false);
}

fn words(v: Option<&str>) -> Vec<String> {
    v.unwrap_or("").split_whitespace().map(str::to_owned).collect()
}

/// The cache set a state file's text (or a journal's) names for the device.
fn recorded_set(state: &str) -> Option<String> {
    state
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(str::split_whitespace)
        .filter_map(|w| w.strip_prefix("attached="))
        .rfind(|s| *s != "none")
        .map(str::to_owned)
}

fn cell(t: Transition, f: Fault, layout: Layout) {
    let scratch = Scratch::new();
    let files: Vec<_> = (0..FILES).map(|i| (format!("file{i}"), file_data(i))).collect();
    let fs = common::ext4_with_files(&scratch, "fs.img", 64 * MIB, &files, None);
    let cache = scratch.image("cache.img", 300 * MIB);
    let blank = scratch.image("blank.img", 300 * MIB);
    let fs_before = std::fs::read(&fs).unwrap();

    let mut vm = guest(layout);
    vm.disk(&fs).disk(&cache);
    let out1 = vm.run(&boot1(t, f));
    out1.assert_ok();
    let crash_in_boot1 =
        matches!(f, Fault::CutBefore | Fault::CutAfter) && matches!(t, Transition::Adopt | Transition::Attach | Transition::Detach | Transition::ModeChange);
    if crash_in_boot1 {
        let step = out1.expect_value("step");
        assert!(step.contains("fault injected: crash at"), "the fault was not injected: {step}");
    }
    let mut wrote = words(out1.value("wrote"));
    // A step whose record cannot be written is refused before the kernel
    // is told: the adopt leaves nothing behind, and the cell ends there.
    if f == Fault::VarReadOnly && t == Transition::Adopt {
        let step = out1.expect_value("step");
        assert!(step.contains("nothing was changed") && !step.ends_with("status=0"), "{step}");
        assert!(wrote.is_empty(), "{wrote:?}");
        assert_eq!(std::fs::read(&fs).unwrap(), fs_before, "the raw disk changed");
        assert!(out1.try_section("bcachetab").is_none_or(|t| !t.contains("/dev/")), "a line was added");
        return;
    }
    if f == Fault::VarReadOnly && t == Transition::Attach {
        let step = out1.expect_value("step");
        assert!(step.contains("nothing was changed") && !step.ends_with("status=0"), "{step}");
    }
    if f == Fault::VarReadOnly && t == Transition::ModeChange {
        // Refused before the kernel: still writethrough, b1 on the disk.
        let step = out1.expect_value("step");
        assert!(step.contains("nothing was changed") && !step.ends_with("status=0"), "{step}");
        let tab = out1.section("bcachetab");
        assert!(!tab.contains("mode=writeback"), "bcachetab changed:\n{tab}");
        assert_ne!(out1.value("kernel_state"), Some("dirty"), "the kernel was told");
    }
    if t == Transition::ModeChange && f != Fault::VarReadOnly {
        let tab = out1.section("bcachetab");
        assert!(tab.contains("mode=writeback"), "bcachetab's mode not changed first:\n{tab}");
    }
    // The cells that must prove a dirty set is waited for have one.
    if matches!((t, f), (Transition::ModeChange, Fault::CutAfter | Fault::EventLost) | (Transition::Clean, Fault::EventLost | Fault::VarReadOnly)) {
        assert_eq!(out1.value("kernel_state"), Some("dirty"), "nothing dirty at the cut");
    }
    if t == Transition::Detach && !matches!(f, Fault::CutBefore | Fault::CutAfter) {
        // bcache detach waited for the end: the device ran uncached when the
        // new file was written.
        assert!(wrote.contains(&"b1".to_owned()), "no file written after the detach: {wrote:?}");
        let step = out1.expect_value("step");
        let state = out1.section("state");
        if f == Fault::VarReadOnly {
            // The end went to the journal in /run, which the cut takes.
            assert!(step.contains("state.journal") && !step.ends_with("status=0"), "{step}");
            let journal = out1.section("journal");
            assert!(journal.contains("state=none"), "the detach's end was not journaled:\n{journal}");
            assert!(recorded_set(&state).is_some(), "the read-only state file changed:\n{state}");
        } else {
            assert!(step.ends_with("status=0"), "{step}");
            assert_eq!(recorded_set(&state), None, "the detach's end was not recorded:\n{state}");
        }
    }
    if t == Transition::LineDropsSet {
        let tab = out1.section("bcachetab");
        assert!(tab.lines().any(|l| l.starts_with("d\t") && l.split('\t').nth(3) == Some("-")), "bcachetab still names the set:\n{tab}");
        assert!(recorded_set(&out1.section("state")).is_some(), "the record lost the set");
    }
    let dirty_at_cut = out1.value("kernel_state") == Some("dirty");
    if matches!(f, Fault::CutBefore) && matches!(t, Transition::Adopt) {
        assert!(wrote.is_empty(), "the crash before the kernel left a device up: {wrote:?}");
        assert_eq!(std::fs::read(&fs).unwrap(), fs_before, "the raw disk changed before the kernel was told");
    }

    let (out1, dirty_at_cut) = if t == Transition::SetReturns {
        let mut vm = guest(layout);
        vm.disk(&fs).disk(&cache);
        carry(&mut vm, &out1, &wrote);
        let out = vm.run(&set_returns(f));
        out.assert_ok();
        if matches!(f, Fault::CutBefore | Fault::CutAfter) {
            let step = out.expect_value("step");
            assert!(step.contains("fault injected: crash at"), "the fault was not injected: {step}");
        }
        wrote.extend(words(out.value("wrote")));
        let dirty = dirty_at_cut || out.value("kernel_state") == Some("dirty");
        (out, dirty)
    } else {
        (out1, dirty_at_cut)
    };

    let mut vm2 = guest(layout);
    vm2.disk(&fs).disk(&blank);
    // A forced run gives up what was dirty (b0): a device that runs must
    // not be asked for it.
    let expected: Vec<String> = wrote.iter().filter(|w| t != Transition::ForcedRun || *w != "b0").cloned().collect();
    carry(&mut vm2, &out1, &expected);
    let out2 = vm2.run(&boot2(t, f));
    out2.assert_ok();
    let runs = matches!(t, Transition::TimeoutRun | Transition::ForcedRun);
    if runs && matches!(f, Fault::CutBefore | Fault::CutAfter) {
        let wait = out2.expect_value("wait");
        assert!(wait.contains("fault injected: crash at"), "the fault was not injected: {wait}");
    }
    if t == Transition::ForcedRun {
        if f == Fault::VarReadOnly {
            let wait = out2.expect_value("wait");
            assert!(wait.contains("nothing was changed") && !wait.ends_with("status=0"), "{wait}");
        } else {
            // Given up by the operator, from the stale mark on (written
            // before the kernel is told): b0 was dirty in the set.
            wrote.retain(|w| w != "b0");
        }
    }
    let ran = out2.value("ran_without_set") == Some("yes");
    if t == Transition::Detach && !matches!(f, Fault::CutBefore | Fault::CutAfter) {
        // Recorded detached: up without its set. The end lost with /run:
        // kept for the set its record names (raw: waiting for it; header:
        // down), whatever the set may hold.
        assert_eq!(ran, f != Fault::VarReadOnly, "the device ran (or did not) without its set:\n{}", out2.section("list"));
    }
    assert!(
        !(ran && dirty_at_cut && t != Transition::ForcedRun),
        "a device whose set held dirty data ran without it (state at the cut {:?}):\n{}",
        out1.value("kernel_state"),
        out2.section("list")
    );
    if t == Transition::Clean {
        // Clean at the cut or not, the line is writeback: without its set
        // it waits, as the record keeps writeback.
        assert!(!ran, "a writeback device ran without its set after its writeback:\n{}", out2.section("list"));
    }
    wrote.extend(words(out2.value("wrote")));

    let mut vm3 = guest(layout);
    vm3.disk(&fs).disk(&cache);
    carry(&mut vm3, &out2, &wrote);
    // The line names a set unless the attach was refused.
    // The module says its detach's end is durable (the set's invalidation
    // of the slot on disk before the end shows): then a set that still has
    // the slot never finished the detach.
    let durable = layout == Layout::Raw && out1.value("features").is_some_and(|f| f.split_whitespace().any(|w| w == "durable_detach"));
    // The patched module of this repository says so, so the cells whose
    // outcome turns on it prove its branch (boot 1 of the others may end
    // before the module is loaded).
    if matches!(t, Transition::Detach | Transition::LineDropsSet) {
        assert_eq!(durable, layout == Layout::Raw, "features: {:?}", out1.value("features"));
    }
    let ends = match (t, f) {
        (Transition::Attach, Fault::VarReadOnly) => Ends::Detached,
        (Transition::Detach, Fault::CutBefore) => Ends::Attached,
        (Transition::Detach, Fault::CutAfter) => Ends::Either,
        // The end not recorded: the stock kernel's set may have the slot
        // back with its old data, which the disk written since must not
        // get (down, for the operator); with the durable end, the set's
        // refusal tells a detach that ended from one that never did.
        (Transition::Detach, Fault::VarReadOnly) if !durable => Ends::Down,
        (Transition::Detach, _) => Ends::Detached,
        // The set has the slot with dirty data: with the durable end, it
        // attaches the device registered dirty on it and the tool detaches
        // it (writes it back); without, down until the operator decides.
        (Transition::LineDropsSet, _) if durable => Ends::Detached,
        (Transition::LineDropsSet, _) => Ends::DownUntilNamed,
        _ => Ends::Attached,
    };
    let out3 = vm3.run(&boot3(ends));
    out3.assert_ok();
    match ends {
        Ends::Down | Ends::DownUntilNamed => {
            let list = out3.section("list");
            assert!(list.contains("bcachetab names none"), "not down for the operator:\n{list}");
        }
        Ends::Detached if matches!(t, Transition::Detach | Transition::LineDropsSet) => {
            let state = out3.section("state");
            assert_eq!(recorded_set(&state), None, "the detach's end is not recorded:\n{state}");
        }
        _ => {}
    }
}

macro_rules! cells {
    ($($name:ident: $t:ident $f:ident $l:ident;)*) => {
        $(
            #[test]
            fn $name() {
                cell(Transition::$t, Fault::$f, Layout::$l);
            }
        )*
    };
}

cells! {
    adopt_cut_before_kernel_raw: Adopt CutBefore Raw;
    adopt_cut_before_kernel_header: Adopt CutBefore Header;
    adopt_cut_after_kernel_raw: Adopt CutAfter Raw;
    adopt_cut_after_kernel_header: Adopt CutAfter Header;
    adopt_event_lost_raw: Adopt EventLost Raw;
    adopt_event_lost_header: Adopt EventLost Header;
    adopt_var_read_only_raw: Adopt VarReadOnly Raw;
    adopt_var_read_only_header: Adopt VarReadOnly Header;
    attach_cut_before_kernel_raw: Attach CutBefore Raw;
    attach_cut_before_kernel_header: Attach CutBefore Header;
    attach_cut_after_kernel_raw: Attach CutAfter Raw;
    attach_cut_after_kernel_header: Attach CutAfter Header;
    attach_event_lost_raw: Attach EventLost Raw;
    attach_event_lost_header: Attach EventLost Header;
    attach_var_read_only_raw: Attach VarReadOnly Raw;
    attach_var_read_only_header: Attach VarReadOnly Header;
    first_dirty_write_cut_before_raw: FirstDirty CutBefore Raw;
    first_dirty_write_cut_before_header: FirstDirty CutBefore Header;
    first_dirty_write_cut_after_raw: FirstDirty CutAfter Raw;
    first_dirty_write_cut_after_header: FirstDirty CutAfter Header;
    first_dirty_write_event_lost_raw: FirstDirty EventLost Raw;
    first_dirty_write_event_lost_header: FirstDirty EventLost Header;
    first_dirty_write_var_read_only_raw: FirstDirty VarReadOnly Raw;
    first_dirty_write_var_read_only_header: FirstDirty VarReadOnly Header;
    clean_cut_before_raw: Clean CutBefore Raw;
    clean_cut_before_header: Clean CutBefore Header;
    clean_cut_after_raw: Clean CutAfter Raw;
    clean_cut_after_header: Clean CutAfter Header;
    clean_event_lost_raw: Clean EventLost Raw;
    clean_event_lost_header: Clean EventLost Header;
    clean_var_read_only_raw: Clean VarReadOnly Raw;
    clean_var_read_only_header: Clean VarReadOnly Header;
    mode_change_cut_before_kernel_raw: ModeChange CutBefore Raw;
    mode_change_cut_before_kernel_header: ModeChange CutBefore Header;
    mode_change_cut_after_kernel_raw: ModeChange CutAfter Raw;
    mode_change_cut_after_kernel_header: ModeChange CutAfter Header;
    mode_change_event_lost_raw: ModeChange EventLost Raw;
    mode_change_event_lost_header: ModeChange EventLost Header;
    mode_change_var_read_only_raw: ModeChange VarReadOnly Raw;
    mode_change_var_read_only_header: ModeChange VarReadOnly Header;
    timeout_run_cut_before_kernel_raw: TimeoutRun CutBefore Raw;
    timeout_run_cut_before_kernel_header: TimeoutRun CutBefore Header;
    timeout_run_cut_after_kernel_raw: TimeoutRun CutAfter Raw;
    timeout_run_cut_after_kernel_header: TimeoutRun CutAfter Header;
    timeout_run_event_lost_raw: TimeoutRun EventLost Raw;
    timeout_run_event_lost_header: TimeoutRun EventLost Header;
    timeout_run_var_read_only_raw: TimeoutRun VarReadOnly Raw;
    timeout_run_var_read_only_header: TimeoutRun VarReadOnly Header;
    forced_run_cut_before_kernel_raw: ForcedRun CutBefore Raw;
    forced_run_cut_before_kernel_header: ForcedRun CutBefore Header;
    forced_run_cut_after_kernel_raw: ForcedRun CutAfter Raw;
    forced_run_cut_after_kernel_header: ForcedRun CutAfter Header;
    forced_run_event_lost_raw: ForcedRun EventLost Raw;
    forced_run_event_lost_header: ForcedRun EventLost Header;
    forced_run_var_read_only_raw: ForcedRun VarReadOnly Raw;
    forced_run_var_read_only_header: ForcedRun VarReadOnly Header;
    detach_cut_before_kernel_raw: Detach CutBefore Raw;
    detach_cut_before_kernel_header: Detach CutBefore Header;
    detach_cut_after_kernel_raw: Detach CutAfter Raw;
    detach_cut_after_kernel_header: Detach CutAfter Header;
    detach_event_lost_raw: Detach EventLost Raw;
    detach_event_lost_header: Detach EventLost Header;
    detach_var_read_only_raw: Detach VarReadOnly Raw;
    detach_var_read_only_header: Detach VarReadOnly Header;
    detach_then_write_then_cut_raw: Detach Cut Raw;
    detach_then_write_then_cut_header: Detach Cut Header;
    line_drops_set_raw: LineDropsSet Cut Raw;
    line_drops_set_header: LineDropsSet Cut Header;
    set_returns_cut_before_kernel_raw: SetReturns CutBefore Raw;
    set_returns_cut_before_kernel_header: SetReturns CutBefore Header;
    set_returns_cut_after_kernel_raw: SetReturns CutAfter Raw;
    set_returns_cut_after_kernel_header: SetReturns CutAfter Header;
    set_returns_event_lost_raw: SetReturns EventLost Raw;
    set_returns_event_lost_header: SetReturns EventLost Header;
    set_returns_var_read_only_raw: SetReturns VarReadOnly Raw;
    set_returns_var_read_only_header: SetReturns VarReadOnly Header;
}
