//! The state machine of a bcachetab device: for each transition, what is
//! recorded before the kernel is told, what the kernel is told, and what is
//! recorded after. The steps that carry them out are in
//! [`activate`](super::activate) (registration), [`transition`](super::transition)
//! (attach, detach, runs without the set) and [`events`](super::events) (what
//! the kernel reports); the record changes themselves are here, once.
//!
//! | transition | recorded before (durably; if it fails the kernel is not told) | the kernel | recorded after |
//! |---|---|---|---|
//! | registration (adopt, boot) | layout, mode (writeback kept while a set may hold dirty data), the set named as attached and pending, a stale mark for a stale registration ([`ahead_of_registration`]) | register_raw, or a header and register, in the state [`registration`] gives | the attach sysfs shows, confirmed ([`confirm_attach`]) |
//! | attach (`bcache attach`) | bcachetab names the set; the record names it, pending ([`ahead_of_attach`]) | `attach` | confirmed; on refusal both put back |
//! | first dirty write, clean | (nothing: a writeback device is registered dirty whatever the record says) | the kernel's own superblock write | the state it reports ([`note`]) |
//! | detach started | (nothing: the record keeps the set) | `detach` | bcachetab names no set |
//! | detach done | | the kernel drops its slot | the set forgotten, only from the kernel's word: `bcache detach` waits for the end sysfs shows and records it ([`note`] with state none, no set), as do the kernel's events |
//! | detach not seen to end (raw, a module whose detach end is durable) | | registered dirty on the set the record names ([`registration`]) | attached: detached again, the end recorded; refused for want of a slot (the detach ended): registered as new without a set, the end recorded |
//! | mode change (`bcache set-cachemode`) | bcachetab's mode, then the record's: writeback recorded before the kernel may write dirty, and kept while a set may hold dirty data ([`ahead_of_mode_change`]) | `cache_mode` | the mode reported ([`note`]) |
//! | forced run, timeout run | the stale mark ([`mark_stale`]) | `running` | |
//! | seen running without its set (run or registered by hand) | | | the stale mark, where the record says the set may hold a slot ([`seen_running_without_set`]) |
//! | set returns | | the set attaches the waiting device | confirmed; a dirty registration refused for want of a slot settled afresh when nothing says the set held data for it |

use uuid::Uuid;

use crate::layout::{header, Backing, Layout};
use crate::superblock::{BdevState, CacheMode};
use crate::sysfs::Sysfs;
use crate::tab::env::ApplyError;
use crate::tab::file::Entry;
use crate::tab::records::Record;

/// What the running bcache module offers a registration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kernel {
    /// register_raw (the patched module).
    pub register_raw: bool,
    /// The patched module says its detach has the set's invalidation of the
    /// device's slot on disk before it shows the end (`durable_detach` in
    /// /sys/fs/bcache/features): a set that still has the slot after a
    /// power cut never finished the detach. The stock module may lose the
    /// invalidation with its journal (FAULT-MATRIX.md).
    pub durable_detach: bool,
}

impl Kernel {
    /// The feature words of the patched module's /sys/fs/bcache/features.
    pub fn detect(sysfs: &Sysfs) -> Kernel {
        let Ok(dir) = sysfs.bcache_dir() else { return Kernel::default() };
        let features = std::fs::read_to_string(dir.join("features")).unwrap_or_default();
        Kernel {
            register_raw: dir.join("register_raw").exists(),
            durable_detach: features.split_ascii_whitespace().any(|w| w == "durable_detach"),
        }
    }
}

/// What the kernel is told about a device, and by which layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub layout: Layout,
    pub backing: Backing,
}

/// The dirty-data rules. A device whose cache set may hold dirty data for
/// it is registered dirty, so it waits for the set; a device run without
/// its set is registered stale, so the next attach drops the set's old
/// data; only what the state file proves relaxes this. A copy of the
/// state file (an initramfs's) may be out of date and proves less.
///
/// | what the record says            | writeback (or was, or dirty) | other modes |
/// |---------------------------------|------------------------------|-------------|
/// | stale                           | stale                        | stale       |
/// | a set (attached, or pending)    | dirty                        | clean       |
/// | new (adopt's, not a copy)       | none                         | none        |
/// | nothing, no mark, or a copy     | dirty                        | stale       |
///
/// "new" is adopt's mark on a device it declared under a uuid of its own
/// making ([`Record::proves_never_attached`]); a record without it (made
/// otherwise, or before the mark) proves nothing of what a set holds.
/// State none with a set is sent only for a device proved never attached:
/// the patched module refuses it where the set holds a slot (the attach
/// would drop the slot), and clean would make a device that never had a
/// set wait for one.
///
/// A device attached to a set its line no longer names (a detach whose end
/// was not recorded: an event lost, a read-only /var, a power cut) stays
/// down, for the operator, unless it is raw on a module whose detach end is
/// durable ([`Kernel::durable_detach`]): then it is registered dirty on that
/// set ([`finishes_detach`]), which either still has its slot (the detach
/// never finished: it attaches, and is detached again) or refuses it for
/// want of one (the detach ended: it is registered as new).
pub fn registration(
    entry: &Entry,
    record: Option<&Record>,
    is_copy: bool,
    kernel: Kernel,
) -> Result<Registration, ApplyError> {
    let has_raw = kernel.register_raw;
    let pinned = entry.options.layout;
    let recorded = record.and_then(|r| r.layout);
    let mut layout = pinned.or(recorded).unwrap_or(if has_raw { Layout::Raw } else { Layout::Header });
    if layout == Layout::Raw && !has_raw {
        if pinned == Some(Layout::Raw) {
            return Err(ApplyError::NoRegisterRaw);
        }
        layout = Layout::Header;
    }
    let attached = record.and_then(|r| r.attached);
    let stale = record.is_some_and(|r| r.stale);
    if let (Some(from), Some(set)) = (recorded, attached) {
        if from != layout && !stale {
            return Err(ApplyError::LayoutSwitch { from: from.name(), to: layout.name(), set });
        }
    }
    // A device attached to a set keeps it until a detach is recorded,
    // whatever bcachetab says: that set may hold its dirty data. A detach
    // not seen to finish is not finished by a later boot unless the set
    // cannot have lost the end of one that did: the stock kernel's journal
    // may (FAULT-MATRIX.md), and only the operator knows whether the disk
    // was written since.
    let mut finishing = None;
    if let Some(a) = attached.filter(|_| !stale) {
        if entry.cset != Some(a) {
            if !(entry.cset.is_none() && layout == Layout::Raw && kernel.durable_detach) {
                return Err(ApplyError::OtherSet { attached: a, named: entry.cset });
            }
            finishing = Some(a);
        }
    }
    let set_uuid = entry.cset.or(finishing);
    let mode = entry.options.mode;
    // The mode it last ran in, or the state the kernel last reported, may
    // have left dirty data in the set whatever bcachetab says now.
    let may_be_dirty = mode == CacheMode::Writeback
        || record.is_some_and(|r| r.mode == Some(CacheMode::Writeback) || r.state == Some(BdevState::Dirty));
    // Proved new to every set by an up-to-date record that adopt declared
    // fresh: a record made any other way may be a device a set holds.
    let never_attached = !is_copy && record.is_some_and(Record::proves_never_attached);
    let state = match set_uuid {
        None => BdevState::None,
        // Refused by the set if its slot is gone, whatever it held.
        Some(_) if finishing.is_some() => BdevState::Dirty,
        Some(_) if stale && is_copy && may_be_dirty => return Err(ApplyError::StaleCopy),
        Some(_) if stale => BdevState::Stale,
        Some(_) if never_attached => BdevState::None,
        Some(_) if may_be_dirty => BdevState::Dirty,
        // Holds no dirty data: waits for its set to keep the cache warm
        // (or its timeout), or, unproved (a copy may predate a stale mark),
        // drops what the set may hold.
        Some(_) if attached.is_some() && !is_copy => BdevState::Clean,
        Some(_) => BdevState::Stale,
    };
    let data_offset = match layout {
        Layout::Raw => entry.options.data_offset.unwrap_or(0),
        Layout::Header => header::HEADER_SECTORS,
    };
    // The kernel refuses a raw device smaller than it was adopted (a
    // header's table is built from the device as it is).
    let size = record.and_then(|r| r.identity.sectors).filter(|_| layout == Layout::Raw);
    let backing = Backing {
        uuid: entry.uuid,
        set_uuid,
        data_offset,
        block_size: entry.options.block_size,
        cache_mode: mode,
        state,
        label: entry.options.label.clone(),
        size,
    };
    Ok(Registration { layout, backing })
}


/// Whether `reg` registers the device of `entry` on a set its line no
/// longer names, to finish a detach not seen to end ([`registration`]).
pub fn finishes_detach(entry: &Entry, reg: &Registration) -> bool {
    entry.cset.is_none() && reg.backing.set_uuid.is_some()
}

/// Before a registration: its layout and mode, and the set it names as
/// attached but pending (that set may attach it now or whenever it comes,
/// with no step of ours in between). A power cut after this and before
/// the kernel acts leaves a dirty-or-clean registration at the next boot:
/// the device waits for a slot the set may not have, rather than drop one
/// it may have.
pub fn ahead_of_registration(r: &mut Record, reg: &Registration) {
    r.layout = Some(reg.layout);
    // Writeback stays recorded while a set may hold its dirty data.
    if !(r.mode == Some(CacheMode::Writeback) && r.attached.is_some()) {
        r.mode = Some(reg.backing.cache_mode);
    }
    if let Some(set) = reg.backing.set_uuid.filter(|_| r.attached.is_none()) {
        r.attached = Some(set);
        r.pending = true;
    }
    // It runs at once, without its set: the set's copy is dropped at the
    // next attach, whichever boot that is.
    if reg.backing.state == BdevState::Stale {
        r.stale = true;
    }
}

/// Before `bcache attach` tells the kernel: the set, pending until the
/// attach is seen.
pub fn ahead_of_attach(r: &mut Record, set: Uuid) {
    r.attached = Some(set);
    r.pending = true;
}

/// Before the kernel is told a new cache mode (`bcache set-cachemode`):
/// the mode, except that writeback stays recorded while a set may hold
/// dirty data for the device (a switch away from writeback leaves it to
/// the kernel's writeback, which the record cannot see end). Writeback
/// recorded before the kernel writes a byte dirty: a cut after leaves a
/// record that makes the device wait for its set.
pub fn ahead_of_mode_change(r: &mut Record, mode: CacheMode) {
    if !(r.mode == Some(CacheMode::Writeback) && r.attached.is_some()) {
        r.mode = Some(mode);
    }
}

/// Before a device runs without its set (forced, or its timeout): its
/// stale mark, so that the set's old data for it is dropped when the set
/// returns, never served.
pub fn mark_stale(r: &mut Record) {
    r.stale = true;
    r.state = Some(BdevState::Stale);
}

/// Whether a device seen running without the set its line names (`shown`:
/// the state the kernel shows, none or stale) needs the stale mark: its
/// record says the set may hold a slot for it, maybe with data older than
/// what it is written now (run by hand, or registered by hand with state
/// none). Not for a registration of ours with state none whose attach was
/// never seen: that is adopt's new device, which the set takes afresh when
/// it comes, and on a header nothing but a later reconcile would see that
/// attach and drop the mark before the next boot drops the set's data.
pub fn needs_stale_mark(r: &Record, shown: BdevState) -> bool {
    r.attached.is_some() && !r.stale && !(r.pending && shown == BdevState::None)
}

/// [`needs_stale_mark`], recorded.
pub fn seen_running_without_set(r: &mut Record, shown: BdevState) {
    if needs_stale_mark(r, shown) {
        mark_stale(r);
    }
}

/// The attach the kernel shows: the set holds a slot for the device, a
/// fresh one if it was stale.
pub fn confirm_attach(r: &mut Record, set: Uuid) {
    r.attached = Some(set);
    r.pending = false;
    r.stale = false;
}

/// Folds a superblock state into a record. `written_by_kernel`: only the
/// kernel wrote it (a raw device's event), so clean or dirty with a set
/// proves the attach, and the state is the kernel's; a header also holds
/// what this tool registered it with, so there only its stale and detach
/// marks count, and sysfs proves the attach ([`record_attachment`](super::transition::record_attachment)).
pub fn note(r: &mut Record, set: Option<Uuid>, st: Option<BdevState>, mode: Option<CacheMode>, written_by_kernel: bool) {
    match st {
        // Run without its set: its slot must be dropped at the next attach.
        Some(BdevState::Stale) => r.stale = true,
        // Attached (again): the set holds a slot, a fresh one after stale.
        Some(BdevState::Clean | BdevState::Dirty) => {
            if let Some(set) = set.filter(|_| written_by_kernel) {
                confirm_attach(r, set);
            }
        }
        // Detached: the set dropped its slot after writing dirty data back.
        Some(BdevState::None) if set.is_none() => {
            r.attached = None;
            r.pending = false;
            r.stale = false;
        }
        _ => {}
    }
    if st.is_some() && written_by_kernel {
        r.state = st;
    }
    // A header's mode may be the one registered: it only ever raises the
    // record to writeback (a mode changed by hand in sysfs).
    if mode.is_some() && (written_by_kernel || mode == Some(CacheMode::Writeback)) {
        r.mode = mode;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tab::file::{DeviceSpec, Options};

    /// The patched module before its detach end was durable, and the stock one.
    const RAW: Kernel = Kernel { register_raw: true, durable_detach: false };
    const STOCK: Kernel = Kernel { register_raw: false, durable_detach: false };

    fn entry(cset: Option<u128>, mode: CacheMode) -> Entry {
        Entry {
            line: 1,
            name: None,
            device: DeviceSpec::Path("/dev/vdb".into()),
            uuid: Uuid::from_u128(1),
            cset: cset.map(Uuid::from_u128),
            options: Options { mode, ..Options::default() },
        }
    }

    fn rec(attached: Option<u128>, stale: bool, layout: Layout) -> Record {
        // Without a set: as adopt declares a device.
        Record { layout: Some(layout), attached: attached.map(Uuid::from_u128), stale, new: attached.is_none(), ..Record::default() }
    }

    #[test]
    fn writeback_waits_unless_the_record_proves_otherwise() {
        let wb = entry(Some(9), CacheMode::Writeback);
        let state = |r: Option<&Record>, copy| registration(&wb, r, copy, RAW).map(|g| g.backing.state);
        // Unknown: assume dirty.
        assert_eq!(state(None, false).unwrap(), BdevState::Dirty);
        assert_eq!(state(Some(&rec(Some(9), false, Layout::Raw)), false).unwrap(), BdevState::Dirty);
        // Known never attached: attach afresh.
        assert_eq!(state(Some(&rec(None, false, Layout::Raw)), false).unwrap(), BdevState::None);
        // Finding: a record without adopt's mark (a refused attach undone,
        // tab identify, an event for a device with no record, adopt
        // --uuid, a state file from before the mark) proves nothing.
        let unmarked = Record { new: false, ..rec(None, false, Layout::Raw) };
        assert_eq!(state(Some(&unmarked), false).unwrap(), BdevState::Dirty);
        // ...but a copy may predate the attach.
        assert_eq!(state(Some(&rec(None, false, Layout::Raw)), true).unwrap(), BdevState::Dirty);
        assert_eq!(state(Some(&rec(Some(9), true, Layout::Raw)), false).unwrap(), BdevState::Stale);
        // An attach written ahead and not confirmed: the set may hold dirty data.
        let pending = Record { pending: true, ..rec(Some(9), false, Layout::Raw) };
        assert_eq!(state(Some(&pending), false).unwrap(), BdevState::Dirty);
        assert!(matches!(state(Some(&rec(Some(9), true, Layout::Raw)), true), Err(ApplyError::StaleCopy)));
    }

    #[test]
    fn writethrough_waits_only_when_attached() {
        let wt = entry(Some(9), CacheMode::Writethrough);
        let state = |r: Option<&Record>| registration(&wt, r, false, RAW).unwrap().backing.state;
        // Unknown: whatever the set holds for it is dropped, never served.
        assert_eq!(state(None), BdevState::Stale);
        // Known never attached: new to the set.
        assert_eq!(state(Some(&rec(None, false, Layout::Raw))), BdevState::None);
        let unmarked = Record { new: false, ..rec(None, false, Layout::Raw) };
        assert_eq!(state(Some(&unmarked)), BdevState::Stale);
        // Switched from writeback in bcachetab while the kernel last said dirty.
        let was_dirty = Record { state: Some(BdevState::Dirty), ..rec(Some(9), false, Layout::Raw) };
        assert_eq!(state(Some(&was_dirty)), BdevState::Dirty);
        let was_writeback = Record { mode: Some(CacheMode::Writeback), ..rec(Some(9), false, Layout::Raw) };
        assert_eq!(state(Some(&was_writeback)), BdevState::Dirty);
        // Attached, the attach not yet confirmed: the slot kept if there is one.
        let pending = Record { pending: true, ..rec(Some(9), false, Layout::Raw) };
        assert_eq!(state(Some(&pending)), BdevState::Clean);
        assert_eq!(state(Some(&rec(Some(9), false, Layout::Raw))), BdevState::Clean);
        assert_eq!(state(Some(&rec(Some(9), true, Layout::Raw))), BdevState::Stale);
    }

    #[test]
    fn layout_switch_and_other_set_are_refused_while_attached() {
        let wb = entry(Some(9), CacheMode::Writeback);
        let r = rec(Some(9), false, Layout::Raw);
        assert!(matches!(registration(&wb, Some(&r), false, STOCK), Err(ApplyError::LayoutSwitch { .. })));
        let free = rec(None, false, Layout::Raw);
        assert_eq!(registration(&wb, Some(&free), false, STOCK).unwrap().layout, Layout::Header);
        let moved = entry(Some(8), CacheMode::Writeback);
        assert!(matches!(registration(&moved, Some(&r), false, RAW), Err(ApplyError::OtherSet { .. })));
        let none = entry(None, CacheMode::Writethrough);
        assert!(matches!(registration(&none, Some(&r), false, RAW), Err(ApplyError::OtherSet { .. })));
    }

    #[test]
    fn a_detach_not_seen_to_end_is_finished_only_where_the_set_cannot_have_lost_its_end() {
        const DURABLE: Kernel = Kernel { register_raw: true, durable_detach: true };
        // bcachetab names no set (bcache detach edited it), the record still
        // names set 9: the end was never recorded.
        let detached = entry(None, CacheMode::Writeback);
        let raw = rec(Some(9), false, Layout::Raw);
        let reg = registration(&detached, Some(&raw), false, DURABLE).unwrap();
        // Registered dirty on the set: attached if it still has the slot,
        // refused ("Couldn't find uuid") if the detach ended.
        assert_eq!((reg.layout, reg.backing.set_uuid, reg.backing.state), (Layout::Raw, Some(Uuid::from_u128(9)), BdevState::Dirty));
        assert!(finishes_detach(&detached, &reg));
        // Whatever the mode: a writethrough device's set may hold dirty data
        // of the mode it had, and clean would take a new slot.
        let wt = entry(None, CacheMode::Writethrough);
        assert_eq!(registration(&wt, Some(&raw), false, DURABLE).unwrap().backing.state, BdevState::Dirty);
        // An attach written ahead and never seen: the set has the slot or not, the same.
        let pending = Record { pending: true, ..raw.clone() };
        assert_eq!(registration(&detached, Some(&pending), false, DURABLE).unwrap().backing.state, BdevState::Dirty);
        // A module without the durable end (the set may have the slot back
        // with its old data after a detach that ended), or a header on the
        // stock kernel: down, for the operator.
        assert!(matches!(registration(&detached, Some(&raw), false, RAW), Err(ApplyError::OtherSet { named: None, .. })));
        let header = rec(Some(9), false, Layout::Header);
        assert!(matches!(registration(&detached, Some(&header), false, STOCK), Err(ApplyError::OtherSet { .. })));
        // A header on the patched module: the stock kernel's header path.
        let pinned = Entry { options: Options { layout: Some(Layout::Header), ..detached.options.clone() }, ..detached.clone() };
        assert!(matches!(registration(&pinned, Some(&header), false, DURABLE), Err(ApplyError::OtherSet { .. })));
        // bcachetab names another set: not a detach.
        let moved = entry(Some(8), CacheMode::Writeback);
        assert!(matches!(registration(&moved, Some(&raw), false, DURABLE), Err(ApplyError::OtherSet { .. })));
        // Stale (it ran without the set): no set, as before.
        let stale = rec(Some(9), true, Layout::Raw);
        let reg = registration(&detached, Some(&stale), false, DURABLE).unwrap();
        assert_eq!((reg.backing.set_uuid, reg.backing.state), (None, BdevState::None));
        assert!(!finishes_detach(&detached, &reg));
        // Detached and recorded: no set.
        let free = rec(None, false, Layout::Raw);
        let reg = registration(&detached, Some(&free), false, DURABLE).unwrap();
        assert_eq!((reg.backing.set_uuid, reg.backing.state), (None, BdevState::None));
        // A line that names its set is no detach.
        let wb = entry(Some(9), CacheMode::Writeback);
        assert!(!finishes_detach(&wb, &registration(&wb, Some(&raw), false, DURABLE).unwrap()));
    }

    #[test]
    fn the_durable_detach_is_the_modules_word_not_register_raw() {
        let tmp = tempfile::tempdir().unwrap();
        let sysfs = Sysfs::with_root(tmp.path());
        assert_eq!(Kernel::detect(&sysfs), STOCK, "no bcache");
        let dir = tmp.path().join("sys/fs/bcache");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("register"), "").unwrap();
        assert_eq!(Kernel::detect(&sysfs), STOCK);
        std::fs::write(dir.join("register_raw"), "").unwrap();
        assert_eq!(Kernel::detect(&sysfs), RAW, "raw_state alone is no word: earlier patches had it");
        std::fs::write(dir.join("features"), "raw_state durable_detach\n").unwrap();
        assert_eq!(Kernel::detect(&sysfs), Kernel { register_raw: true, durable_detach: true });
        std::fs::write(dir.join("features"), "durable_detach_not\n").unwrap();
        assert_eq!(Kernel::detect(&sysfs), RAW);
    }

    #[test]
    fn the_end_of_a_detach_forgets_the_set() {
        let mut r = Record { mode: Some(CacheMode::Writeback), state: Some(BdevState::Dirty), ..rec(Some(9), false, Layout::Raw) };
        note(&mut r, None, Some(BdevState::None), None, true);
        assert_eq!((r.attached, r.pending, r.stale, r.state), (None, false, false, Some(BdevState::None)));
        // Registered again without a set: state none, never waiting.
        let detached = entry(None, CacheMode::Writeback);
        let reg = registration(&detached, Some(&r), false, RAW).unwrap();
        assert_eq!((reg.backing.set_uuid, reg.backing.state), (None, BdevState::None));
    }

    #[test]
    fn a_device_seen_running_without_its_set_is_marked_stale_only_where_the_set_may_hold_its_slot() {
        let seen = |mut r: Record, shown| {
            seen_running_without_set(&mut r, shown);
            r
        };
        // Attached (confirmed), then registered by hand with state none or run:
        // the next registration is stale, the set's old data dropped.
        for shown in [BdevState::None, BdevState::Stale] {
            let r = seen(rec(Some(9), false, Layout::Raw), shown);
            assert!(r.stale && r.state == Some(BdevState::Stale) && r.attached == Some(Uuid::from_u128(9)));
            let wb = entry(Some(9), CacheMode::Writeback);
            assert_eq!(registration(&wb, Some(&r), false, RAW).unwrap().backing.state, BdevState::Stale);
        }
        // Run by hand while an attach was pending: the set may have the slot.
        let pending = Record { pending: true, ..rec(Some(9), false, Layout::Raw) };
        assert!(seen(pending.clone(), BdevState::Stale).stale);
        // Adopt's new device registered with state none, its set not there:
        // the set attaches it afresh whenever it comes.
        assert_eq!(seen(pending.clone(), BdevState::None), pending);
        // No set recorded (a detach's end recorded), or stale already: unchanged.
        let free = rec(None, false, Layout::Raw);
        assert_eq!(seen(free.clone(), BdevState::None), free);
        let stale = Record { state: Some(BdevState::Stale), ..rec(Some(9), true, Layout::Raw) };
        assert_eq!(seen(stale.clone(), BdevState::Stale), stale);
        // A detach seen mid-way (its end shown before the tool recorded it):
        // the mark is harmless, the end forgets it with the set.
        let mut r = seen(rec(Some(9), false, Layout::Raw), BdevState::None);
        note(&mut r, None, Some(BdevState::None), None, true);
        assert_eq!((r.attached, r.pending, r.stale), (None, false, false));
        // The set attaching it (its return): the mark goes with the confirmation.
        let mut r = seen(rec(Some(9), false, Layout::Raw), BdevState::None);
        note(&mut r, Some(Uuid::from_u128(9)), Some(BdevState::Clean), None, true);
        assert!(!r.stale);
    }

    #[test]
    fn a_raw_registration_carries_the_adopted_size_for_the_kernel_to_check() {
        let wb = entry(Some(9), CacheMode::Writeback);
        let mut r = rec(Some(9), false, Layout::Raw);
        r.identity.sectors = Some(2048);
        assert_eq!(registration(&wb, Some(&r), false, RAW).unwrap().backing.size, Some(2048));
        // A header's table is built from the device as it is.
        r.layout = Some(Layout::Header);
        assert_eq!(registration(&wb, Some(&r), false, RAW).unwrap().backing.size, None);
        assert_eq!(registration(&wb, None, false, RAW).unwrap().backing.size, None);
    }

    #[test]
    fn a_mode_change_records_writeback_ahead_and_keeps_it_while_a_set_may_hold_dirty_data() {
        let mut r = rec(Some(7), false, Layout::Raw);
        r.mode = Some(CacheMode::Writethrough);
        ahead_of_mode_change(&mut r, CacheMode::Writeback);
        assert_eq!(r.mode, Some(CacheMode::Writeback));
        ahead_of_mode_change(&mut r, CacheMode::Writethrough);
        assert_eq!(r.mode, Some(CacheMode::Writeback), "the set may still hold dirty data");
        // No set: nothing can be dirty anywhere.
        let mut r = rec(None, false, Layout::Header);
        r.mode = Some(CacheMode::Writeback);
        ahead_of_mode_change(&mut r, CacheMode::Writearound);
        assert_eq!(r.mode, Some(CacheMode::Writearound));
        let mut r = Record::default();
        ahead_of_mode_change(&mut r, CacheMode::None);
        assert_eq!(r.mode, Some(CacheMode::None));
    }
}
