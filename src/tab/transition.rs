//! The transitions of a registered bcachetab device other than its
//! registration: attach, detach, a run without its set (forced or after a
//! timeout), in the order [`rules`] gives.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use uuid::Uuid;

use crate::layout::header;
use crate::superblock::{BdevState, CacheMode};
use crate::tab::env::{fault, since_file, ApplyError, Env};
use crate::tab::file::{self, Entry, Tab};
use crate::tab::identity::Resolver;
use crate::tab::records::{Record, State};
use crate::tab::rules;
use crate::tab::status::{attached_set, live, status, Status};

/// Records that the device is attached to the set sysfs shows, if any:
/// the set now holds a slot for it (a fresh one if it was stale).
pub fn record_attachment(env: &Env, uuid: &Uuid, dir: &Path) -> Result<(), ApplyError> {
    if let Some(set) = attached_set(dir) {
        env.store().record_fact(*uuid, "the attach", |r| rules::confirm_attach(r, set))?;
    }
    Ok(())
}

/// Before an attach the kernel is told to make (`bcache attach`): the set,
/// pending until [`record_attachment`] sees it. Returns the record as it
/// was, for [`undo_attach`] when the kernel refuses.
pub fn before_attach(env: &Env, uuid: &Uuid, set: Uuid) -> Result<Option<Record>, ApplyError> {
    let before = State::load(&env.state)?.get(uuid).cloned();
    env.store().update(*uuid, "the attach", |r| rules::ahead_of_attach(r, set))?;
    Ok(before)
}

/// The kernel refused the attach [`before_attach`] recorded: nothing was
/// attached, so the record goes back to what it was.
pub fn undo_attach(env: &Env, uuid: &Uuid, before: Option<Record>) -> Result<(), ApplyError> {
    Ok(env.store().update(*uuid, "the refused attach", |r| *r = before.unwrap_or_default())?)
}

/// Whether `uuid` is a bcachetab device: a line names it, or the state
/// file knows it. Other backing devices have superblocks of their own,
/// which the kernel keeps.
pub fn is_tab_device(env: &Env, uuid: &Uuid) -> Result<bool, ApplyError> {
    let in_tab = Tab::load(&env.tab).map_err(|e| ApplyError::Io(env.tab.clone(), e))?.by_uuid(uuid).is_some();
    Ok(in_tab || State::load(&env.state)?.get(uuid).is_some())
}

/// The uuid of a registered backing device (sysfs directory `dir`) when
/// it is a bcachetab device ([`is_tab_device`]).
fn tab_device(env: &Env, dir: &Path) -> Result<Option<Uuid>, ApplyError> {
    let uuid = env.sysfs.read(&dir.join("backing_dev_uuid")).ok().and_then(|u| u.parse::<Uuid>().ok());
    Ok(match uuid {
        Some(u) if is_tab_device(env, &u)? => Some(u),
        _ => None,
    })
}

/// `bcache attach` of a registered backing device (its sysfs directory
/// `dir`) to a registered set. For a bcachetab device, its line and its
/// record name the set (pending) before the kernel is told, and go back
/// if the kernel refuses; true then. A power cut between leaves it
/// waiting for the set at the next boot: never registered as new to a set
/// that may hold its data.
pub fn attach(env: &Env, name: &str, dir: &Path, set: Uuid) -> Result<bool, ApplyError> {
    let tab_device = tab_device(env, dir)?;
    let Some(uuid) = tab_device else {
        env.sysfs.write(name, &dir.join("attach"), &set.hyphenated().to_string())?;
        return Ok(false);
    };
    let old_set = Tab::load(&env.tab).map_err(|e| ApplyError::Io(env.tab.clone(), e))?.by_uuid(&uuid).and_then(|e| e.cset);
    // bcachetab first: a cut before the record leaves a set named and none
    // recorded, which the next registration records ahead and attaches.
    file::set_cset(&env.tab, &uuid, Some(set))?;
    let before = match before_attach(env, &uuid, set) {
        Ok(before) => before,
        Err(e) => {
            file::set_cset(&env.tab, &uuid, old_set)?;
            return Err(e);
        }
    };
    fault(dir, "attach:before-kernel")?;
    if let Err(e) = env.sysfs.write(name, &dir.join("attach"), &set.hyphenated().to_string()) {
        file::set_cset(&env.tab, &uuid, old_set)?;
        undo_attach(env, &uuid, before)?;
        return Err(e.into());
    }
    fault(dir, "attach:after-kernel")?;
    record_attachment(env, &uuid, dir)?;
    if let Some(entry) = Tab::load(&env.tab).map_err(|e| ApplyError::Io(env.tab.clone(), e))?.by_uuid(&uuid) {
        write_tunables(env, entry, name, dir)?;
    }
    Ok(true)
}

/// `bcache set-cachemode` of a registered backing device (sysfs directory
/// `dir`). For a bcachetab device, its line's mode and then its record's
/// ([`rules::ahead_of_mode_change`]) change before the kernel is told, so
/// no boot after a cut registers a device that may have dirty data as
/// anything but writeback; if either cannot be written the kernel is not
/// told. True for a bcachetab device.
pub fn set_cache_mode(env: &Env, name: &str, dir: &Path, mode: CacheMode) -> Result<bool, ApplyError> {
    let tab_device = tab_device(env, dir)?;
    let Some(uuid) = tab_device else {
        env.sysfs.write(name, &dir.join("cache_mode"), mode.name())?;
        return Ok(false);
    };
    let old_mode = Tab::load(&env.tab).map_err(|e| ApplyError::Io(env.tab.clone(), e))?.by_uuid(&uuid).map(|e| e.options.mode);
    file::set_mode(&env.tab, &uuid, mode)?;
    let put_back = |env: &Env| -> Result<(), ApplyError> {
        if let Some(m) = old_mode {
            file::set_mode(&env.tab, &uuid, m)?;
        }
        Ok(())
    };
    let before = State::load(&env.state)?.get(&uuid).and_then(|r| r.mode);
    if let Err(e) = env.store().update(uuid, "the cache mode", |r| rules::ahead_of_mode_change(r, mode)) {
        put_back(env)?;
        return Err(e.into());
    }
    fault(dir, "cachemode:before-kernel")?;
    if let Err(e) = env.sysfs.write(name, &dir.join("cache_mode"), mode.name()) {
        put_back(env)?;
        // The mode only: what was recorded meanwhile (an attach, a stale
        // mark from the journal) stays.
        env.store().update(uuid, "the refused cache mode", |r| r.mode = before)?;
        return Err(e.into());
    }
    fault(dir, "cachemode:after-kernel")?;
    Ok(true)
}

/// A line's tunables, written to its registered device (sysfs directory
/// `dir`): after its registration, and after an attach, which turns
/// writeback_running on whatever was written before
/// (bch_cached_dev_writeback_start); a device registered again has every
/// tunable at its default.
pub fn write_tunables(env: &Env, entry: &Entry, shown: &str, dir: &Path) -> Result<(), ApplyError> {
    for t in &entry.options.tunables {
        fault(&dir.join(t.attr), "tunable")?;
        env.sysfs.write(shown, &dir.join(t.attr), &t.value)?;
    }
    Ok(())
}

/// `bcache run`: a registered backing device (sysfs directory `dir`) runs
/// without its set. `marks_stale`: it waits for its set (clean or dirty),
/// so the kernel marks it stale as it runs; a bcachetab device's record
/// says so first, or the next boot would serve the set's old data.
pub fn run_without_set(env: &Env, name: &str, dir: &Path, marks_stale: bool) -> Result<(), ApplyError> {
    let uuid = env.sysfs.read(&dir.join("backing_dev_uuid")).ok().and_then(|u| u.parse::<Uuid>().ok());
    if let Some(uuid) = uuid.filter(|u| marks_stale && is_tab_device(env, u).unwrap_or(true)) {
        mark_stale(env, &uuid)?;
    }
    fault(dir, "run:before-kernel")?;
    env.sysfs.write(name, &dir.join("running"), "1")?;
    fault(dir, "run:after-kernel")?;
    Ok(())
}

/// Before a device runs without its cache set (`bcache run --force`, a
/// timeout): its stale mark, so that the set's old data for it is dropped
/// when the set returns, never served. Durable before the kernel is told;
/// a device with no record gets one. If it cannot be written the device
/// must not run.
pub fn mark_stale(env: &Env, uuid: &Uuid) -> Result<(), ApplyError> {
    Ok(env.store().update(*uuid, "the stale mark", rules::mark_stale)?)
}

/// `bcache detach` of a registered backing device (sysfs directory `dir`)
/// from its set; then a bcachetab device's line names no set. Its record
/// keeps the set until the kernel shows the detach done: until then the
/// device is not registered without it. With `wait`, that end is waited
/// for ([`wait_detached`]) and recorded ([`record_detached`]): then a
/// write to the device, a power cut and the set's return cannot give the
/// set's old data back to it, whatever the set's journal lost.
pub fn detach(env: &Env, name: &str, dir: &Path, wait: Option<DetachWait>) -> Result<Detached, ApplyError> {
    let tab_device = tab_device(env, dir)?;
    fault(dir, "detach:before-kernel")?;
    // The kernel writes back dirty data before it lets go; the attribute
    // returns at once.
    env.sysfs.write(name, &dir.join("detach"), "1")?;
    fault(dir, "detach:after-kernel")?;
    let Some(uuid) = tab_device else { return Ok(Detached::NotTab) };
    let in_tab = file::set_cset(&env.tab, &uuid, None)?;
    let Some(wait) = wait else { return Ok(Detached::Started { in_tab }) };
    match wait_detached(env, &uuid, dir, wait) {
        Ended::Yes => {
            record_detached(env, &uuid)?;
            Ok(Detached::Finished { in_tab })
        }
        Ended::Stalled { dirty } => Ok(Detached::StillDetaching { in_tab, dirty }),
        Ended::Gone => Ok(Detached::Gone { in_tab }),
    }
}

/// How [`detach`] waits for the kernel's end of the detach.
pub struct DetachWait<'a> {
    /// Given up once the dirty data left (`dirty_data`) has not changed
    /// for this long: the writeback is stuck.
    pub stall: Duration,
    /// Given up after this long in any case.
    pub limit: Option<Duration>,
    /// Told of the dirty data left each time it changes, from a second
    /// into the wait (a writeback long enough to be worth showing).
    pub progress: &'a mut dyn FnMut(&str),
}

/// What [`detach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detached {
    /// Not a bcachetab device: the kernel was told; its own superblock
    /// records the end.
    NotTab,
    /// A bcachetab device (`in_tab`: its line named a set, which it names
    /// no more): the kernel was told, the end not waited for. The record
    /// keeps the set until an event or `bcache tab reconcile` shows the end.
    Started { in_tab: bool },
    /// The kernel showed the end and the state file records it.
    Finished { in_tab: bool },
    /// The dirty data left stopped changing before the end: the kernel
    /// goes on with the detach, the record keeps the set.
    StillDetaching { in_tab: bool, dirty: Option<String> },
    /// The device was stopped or removed before the end was seen.
    Gone { in_tab: bool },
}

/// What [`wait_detached`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Yes,
    Stalled { dirty: Option<String> },
    Gone,
}

/// Waits until the kernel shows that the device (sysfs directory `dir`)
/// let go of its set: the `cache` link gone, and the set no longer in what
/// the kernel holds of its superblock (a raw device's `raw_state`, a
/// header's superblock; with the patched module's fix both change only once
/// the set's slot for the device is invalidated on disk). Bounded: gives up
/// once `dirty_data` has not changed for `wait.stall`.
pub fn wait_detached(env: &Env, uuid: &Uuid, dir: &Path, wait: DetachWait) -> Ended {
    let start = Instant::now();
    let read = |attr: &str| fs::read_to_string(dir.join(attr)).ok().map(|s| s.trim().to_owned());
    let mut last = read("dirty_data");
    let mut changed = Instant::now();
    let mut shown = None;
    loop {
        if !dir.is_dir() {
            return Ended::Gone;
        }
        if detach_shown(env, uuid, dir) {
            return Ended::Yes;
        }
        let dirty = read("dirty_data");
        if dirty != last {
            last = dirty;
            changed = Instant::now();
        }
        if start.elapsed() >= Duration::from_secs(1) && shown != last {
            if let Some(d) = &last {
                (wait.progress)(d);
            }
            shown = last.clone();
        }
        if changed.elapsed() >= wait.stall || wait.limit.is_some_and(|l| start.elapsed() >= l) {
            return Ended::Stalled { dirty: last };
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the kernel shows the detach of the device (sysfs directory
/// `dir`) done.
pub fn detach_shown(env: &Env, uuid: &Uuid, dir: &Path) -> bool {
    if fs::symlink_metadata(dir.join("cache")).is_ok() || !dir.is_dir() {
        return false;
    }
    if let Ok(line) = fs::read_to_string(dir.join("raw_state")) {
        // The patched module's view of a raw device.
        let set = line.split_ascii_whitespace().find_map(|w| w.strip_prefix("set_uuid="));
        return set.and_then(|s| s.parse::<Uuid>().ok()).is_some_and(|s| s.is_nil());
    }
    match header::read_back(&env.run_dir, uuid) {
        // What the stock kernel wrote into the header.
        Some(sb) => sb.state() == BdevState::None && sb.set_uuid.is_nil(),
        None => true,
    }
}

/// A device registered on a set its line no longer names, to finish a
/// detach not seen to end ([`rules::finishes_detach`]), that the set
/// attached: it still had the device's slot, so the detach never ended. It
/// is detached again and, if the end comes within a bound (a registration
/// at boot must not wait for a long writeback), the end recorded; if not,
/// the kernel's event records it, or the next registration finishes it.
/// `name` names the device in messages.
pub fn finish_detach(env: &Env, uuid: &Uuid, name: &str, dir: &Path) -> Result<(), ApplyError> {
    let Some(set) = attached_set(dir) else { return Ok(()) };
    eprintln!("bcache: {name}: its detach from cache set {set} had not ended: detaching it again");
    env.sysfs.write(name, &dir.join("detach"), "1")?;
    let bound = Duration::from_secs(30);
    match wait_detached(env, uuid, dir, DetachWait { stall: bound, limit: Some(bound), progress: &mut |_| {} }) {
        Ended::Yes => record_detached(env, uuid),
        Ended::Stalled { dirty } => {
            eprintln!(
                "bcache: {name}: still detaching from cache set {set} ({} of dirty data left): its end is recorded \
                 from the kernel's event, or by bcache detach {name}",
                dirty.as_deref().unwrap_or("some")
            );
            Ok(())
        }
        Ended::Gone => Ok(()),
    }
}

/// The detach's end, seen in what the kernel shows: the record forgets the
/// set (the state file, or the journal under /run when it cannot be
/// written: the error says so).
pub fn record_detached(env: &Env, uuid: &Uuid) -> Result<(), ApplyError> {
    Ok(env.store().record_fact(*uuid, "the detach's end", |r| rules::note(r, None, Some(BdevState::None), None, true))?)
}

/// What [`wait`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waited {
    /// Up (with its set, or without one).
    Up(Status),
    /// Its timeout passed without the set: run without it, marked stale.
    RanWithout { after: Duration },
    /// No timeout applies (writeback, or no timeout= option): left as it is.
    NoTimeout(Status),
}

/// Waits for a registered device to come up with its cache set, up to its
/// `timeout=` counted from its registration at this boot; then runs it
/// without the set (for caches that may never return: ephemeral disks).
/// Never for writeback: dirty data must wait for its set.
pub fn wait(env: &Env, entry: &Entry) -> Result<Waited, ApplyError> {
    let timeout = match entry.options.timeout {
        Some(t) if entry.options.mode != CacheMode::Writeback => Duration::from_secs(t.into()),
        _ => return Ok(Waited::NoTimeout(status(env, &Resolver::default(), entry))),
    };
    let since = fs::metadata(since_file(env, &entry.uuid)).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
    let deadline = since + timeout;
    loop {
        // A new resolver at each look: the device may appear meanwhile.
        let (st, dir) = live(env, &Resolver::default(), entry);
        match (&st, dir) {
            (Status::Waiting { dirty: false, .. }, Some(dir)) if SystemTime::now() >= deadline => {
                mark_stale(env, &entry.uuid)?;
                fault(&dir, "run:before-kernel")?;
                let shown = dir.display().to_string();
                env.sysfs.write(&shown, &dir.join("running"), "1")?;
                fault(&dir, "run:after-kernel")?;
                return Ok(Waited::RanWithout { after: timeout });
            }
            (Status::Waiting { dirty: false, .. }, _) => std::thread::sleep(Duration::from_millis(200)),
            // Up, or something no timeout may change (dirty, down, missing).
            _ => return Ok(if matches!(st, Status::Up { .. }) { Waited::Up(st) } else { Waited::NoTimeout(st) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::superblock::{BackingParams, Label, Superblock, SB_START};
    use crate::sysfs::Sysfs;

    fn env(root: &Path) -> Env {
        Env { sysfs: Sysfs::with_root(root), run_dir: root.join("run"), ..Env::default() }
    }

    #[test]
    fn a_raw_detach_ends_when_the_link_is_gone_and_raw_state_names_no_set() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env(tmp.path());
        let dir = tmp.path().join("sys/block/vda/bcache");
        fs::create_dir_all(&dir).unwrap();
        let uuid = Uuid::from_u128(1);
        let raw = |set: Uuid, state: &str| {
            fs::write(dir.join("raw_state"), format!("uuid={uuid} set_uuid={set} state={state} cache_mode=writeback label= seq=4 uevent_errors=0\n"))
                .unwrap()
        };
        raw(Uuid::from_u128(9), "dirty");
        std::os::unix::fs::symlink("../../../fs/bcache/00000000-0000-0000-0000-000000000009", dir.join("cache")).unwrap();
        assert!(!detach_shown(&env, &uuid, &dir));
        // Written back (the stock order: state none before the slot goes),
        // still attached.
        raw(Uuid::nil(), "none");
        assert!(!detach_shown(&env, &uuid, &dir));
        fs::remove_file(dir.join("cache")).unwrap();
        assert!(detach_shown(&env, &uuid, &dir));
        // The link gone while the kernel still holds the set: not the end.
        raw(Uuid::from_u128(9), "dirty");
        assert!(!detach_shown(&env, &uuid, &dir));
        fs::remove_dir_all(&dir).unwrap();
        assert!(!detach_shown(&env, &uuid, &dir));
    }

    #[test]
    fn a_header_detach_ends_when_the_link_is_gone_and_the_header_says_none() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env(tmp.path());
        let dir = tmp.path().join("sys/block/dm-0/bcache");
        fs::create_dir_all(&dir).unwrap();
        let uuid = Uuid::from_u128(1);
        let header = |set: Uuid, state: BdevState| {
            let mut sb = Superblock::new_backing(&BackingParams {
                uuid,
                set_uuid: set,
                label: Label::new("").unwrap(),
                block_sectors: 1,
                bucket_sectors: 1024,
                data_offset: 16,
                cache_mode: CacheMode::Writeback,
            });
            sb.set_state(state);
            sb.seal();
            let mut bytes = vec![0u8; 8192];
            bytes[SB_START as usize..].copy_from_slice(&sb.to_bytes());
            let file = header::header_file(&env.run_dir, &uuid);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(file, bytes).unwrap();
        };
        header(Uuid::from_u128(9), BdevState::Dirty);
        assert!(!detach_shown(&env, &uuid, &dir), "registered dirty, not attached: no detach");
        header(Uuid::nil(), BdevState::None);
        assert!(detach_shown(&env, &uuid, &dir));
        std::os::unix::fs::symlink("../x", dir.join("cache")).unwrap();
        assert!(!detach_shown(&env, &uuid, &dir));
    }

    #[test]
    fn the_detach_wait_gives_up_when_the_dirty_data_stops_changing() {
        let tmp = tempfile::tempdir().unwrap();
        let env = env(tmp.path());
        let dir = tmp.path().join("sys/block/vda/bcache");
        fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("../x", dir.join("cache")).unwrap();
        fs::write(dir.join("dirty_data"), "1.5M\n").unwrap();
        let mut shown = Vec::new();
        let wait = DetachWait { stall: Duration::from_millis(1300), limit: None, progress: &mut |d| shown.push(d.to_owned()) };
        let ended = wait_detached(&env, &Uuid::from_u128(1), &dir, wait);
        assert_eq!(ended, Ended::Stalled { dirty: Some("1.5M".into()) });
        assert_eq!(shown, ["1.5M"], "shown once, a second in");
        let wait = DetachWait { stall: Duration::from_secs(60), limit: Some(Duration::from_millis(200)), progress: &mut |_| {} };
        assert!(matches!(wait_detached(&env, &Uuid::from_u128(1), &dir, wait), Ended::Stalled { .. }));
    }
}
