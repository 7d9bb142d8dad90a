//! Bringing bcachetab's devices up: which device a line names, what the
//! kernel is told about it (the dirty-data rules), registration through
//! either layout, the tunables, and each device's live status.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::bcachetab::{DeviceIds, Entry, Layout, Tab};
use crate::device::{Access, Device, DeviceError};
use crate::header::{self, HeaderError, HeaderParams};
use crate::identity::{self, Mismatch, Resolver};
use crate::raw::{RawBacking, RawError};
use crate::state::{self, Record, State, StateError, Store};
use crate::superblock::{BdevState, CacheMode};
use crate::sysfs::{Registered, SetAction, Sysfs, SysfsError};

/// Where bcachetab, the state file and the run-time files are.
#[derive(Debug, Clone)]
pub struct Env {
    pub sysfs: Sysfs,
    pub tab: PathBuf,
    pub state: PathBuf,
    /// Run-time files: headers, locks (normally /run/bcache).
    pub run_dir: PathBuf,
    /// What an initramfs recorded, for the system's state file (normally
    /// /run/bcache/state.journal: /run survives switch_root).
    pub journal: PathBuf,
    /// The udev event's properties of the device being brought up (`tab
    /// apply --udev`): what identifies it is read from them, not probed.
    pub event: Option<DeviceIds>,
}

impl Env {
    /// The state file, and the journal beside the run-time files.
    pub fn store(&self) -> Store<'_> {
        Store { path: &self.state, journal: &self.journal }
    }
}

impl Default for Env {
    fn default() -> Env {
        Env {
            sysfs: Sysfs::default(),
            tab: PathBuf::from(crate::bcachetab::DEFAULT_PATH),
            state: PathBuf::from(state::DEFAULT_PATH),
            run_dir: PathBuf::from("/run/bcache"),
            journal: Path::new("/run/bcache").join(state::JOURNAL_NAME),
            event: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no device is {0}")]
    NotFound(String),
    #[error(
        "its layout is recorded as {from} but would now be {to}, and cache set {set} may hold data for it \
         (cached extents are keyed by the backing device's sectors): detach it first (bcache detach, which \
         writes dirty data back), or pin layout={from}"
    )]
    LayoutSwitch { from: &'static str, to: &'static str, set: Uuid },
    #[error("layout=raw needs the register_raw interface of the patched module (kernel/), which this kernel lacks")]
    NoRegisterRaw,
    #[error(
        "it is attached to cache set {attached} but bcachetab names {} : detach it from {attached} first \
         (bcache detach writes its dirty data back)", .named.map_or("none".to_owned(), |n| n.to_string())
    )]
    OtherSet { attached: Uuid, named: Option<Uuid> },
    #[error(
        "the state file here is a copy (an initramfs's) that marks it stale, but it may have been attached \
         again since: left for the system to bring up (update the initramfs after bcache run --force)"
    )]
    StaleCopy,
    #[error(transparent)]
    Identity(#[from] Mismatch),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Raw(#[from] RawError),
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Edit(#[from] crate::bcachetab::EditError),
    #[error("{}: {}", .0.display(), crate::os_error_text(.1))]
    Io(PathBuf, io::Error),
}

/// What the kernel is told about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub layout: Layout,
    pub set_uuid: Option<Uuid>,
    pub state: BdevState,
    pub mode: CacheMode,
    pub data_offset: u64,
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
/// | never attached (file, not copy) | none                         | none        |
/// | nothing, or a copy              | dirty                        | stale       |
///
/// State none with a set is sent only for a device proved never attached:
/// the patched module refuses it where the set holds a slot (the attach
/// would drop the slot), and clean would make a device that never had a
/// set wait for one.
pub fn registration(
    entry: &Entry,
    record: Option<&Record>,
    is_copy: bool,
    has_raw: bool,
) -> Result<Registration, ApplyError> {
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
    // not seen to finish is not finished by a later boot: the set's journal
    // may have lost the end of one that did (FAULT-MATRIX.md), and only the
    // operator knows whether the disk was written since.
    if let Some(a) = attached.filter(|_| !stale) {
        if entry.cset != Some(a) {
            return Err(ApplyError::OtherSet { attached: a, named: entry.cset });
        }
    }
    let set_uuid = entry.cset;
    let mode = entry.options.mode;
    // The mode it last ran in, or the state the kernel last reported, may
    // have left dirty data in the set whatever bcachetab says now.
    let may_be_dirty = mode == CacheMode::Writeback
        || record.is_some_and(|r| r.mode == Some(CacheMode::Writeback) || r.state == Some(BdevState::Dirty));
    // Proved new to every set by an up-to-date record.
    let never_attached = !is_copy && record.is_some() && attached.is_none();
    let state = match set_uuid {
        None => BdevState::None,
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
    Ok(Registration { layout, set_uuid, state, mode, data_offset })
}

/// A device's live status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// No device matches the line.
    Missing,
    /// Present, not registered.
    Down { device: String },
    /// Running as /dev/bcacheN.
    Up { device: String, bcache: String },
    /// Registered, waiting for its cache set.
    Waiting { device: String, set: Option<Uuid>, dirty: bool },
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Missing => f.write_str("missing: no device matches"),
            Status::Down { .. } => f.write_str("down"),
            Status::Up { bcache, .. } => write!(f, "up: {bcache}"),
            Status::Waiting { set, dirty, .. } => {
                let set = set.map_or("its cache set".to_owned(), |s| format!("cache set {s}"));
                if *dirty {
                    write!(f, "waiting for {set}: it may hold dirty data (bcache run --force loses it)")
                } else {
                    write!(f, "waiting for {set}")
                }
            }
        }
    }
}

/// Properties of a block device, as a udev event would carry them.
pub type Props<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A step of a transition, where the tests inject faults ([`crate::fault`]).
fn fault(at: &Path, point: &str) -> Result<(), ApplyError> {
    crate::fault::point(point).map_err(|e| ApplyError::Io(at.to_owned(), e))
}

/// Serialises work on one device between processes (udev runs events of
/// different devices, and add and change of one, concurrently).
fn device_lock(env: &Env, uuid: &Uuid) -> Result<state::Lock, ApplyError> {
    Ok(state::Lock::take(&env.run_dir.join("lock").join(uuid.hyphenated().to_string()))?)
}

/// The device registered for an entry, if any: the device itself (raw),
/// or the dm device of its header.
fn registered_as(env: &Env, entry: &Entry, dev: &Device) -> Option<(PathBuf, u64)> {
    // The device itself first: one stat in sysfs, where the header's
    // lookup opens device-mapper's control device and asks it.
    if let Some(rdev) = dev.rdev() {
        if let Some(Registered::Backing(dir)) = env.sysfs.registered(rdev) {
            // The line's own registration, not another line's device found
            // at this path after a rename.
            let uuid = env.sysfs.read(&dir.join("backing_dev_uuid")).ok().and_then(|u| u.parse::<Uuid>().ok());
            return (uuid == Some(entry.uuid)).then(|| (dev.path().to_owned(), rdev));
        }
    }
    // A header's dm device stays when its bcache device stops.
    header::find(&entry.uuid).filter(|(_, rdev)| env.sysfs.registered(*rdev).is_some())
}

/// Registers the device of `entry` (found at `path`) unless it already is,
/// then sets its tunables. Idempotent.
///
/// The registration's transition, in order (see also [`record_attachment`],
/// [`mark_stale`] and [`record_uevent`], the other transitions):
/// 1. before the kernel is told, durably: the layout and mode, and, when
///    the set is registered (the kernel attaches at once), the set as
///    attached but pending. If this cannot be written the kernel is not
///    touched. A power cut after it and before the kernel acts leaves a
///    dirty-or-clean registration at the next boot: the device waits for
///    a slot the set may not have, rather than drop one it may have.
/// 2. the kernel: register_raw, or a header joined in front and register.
/// 3. after: the attach the kernel shows, confirmed (pending cleared, a
///    stale mark dropped: the set's slot is a fresh one); then the
///    tunables, whose failure no longer touches what is recorded.
pub fn bring_up(env: &Env, entry: &Entry, path: &Path) -> Result<Status, ApplyError> {
    let _lock = device_lock(env, &entry.uuid)?;
    let dev = Device::open(path, Access::Read)?;
    if registered_as(env, entry, &dev).is_none() {
        let st = State::load(&env.state)?;
        identity::verify(env, entry, path, st.get(&entry.uuid))?;
        let has_raw = env.sysfs.bcache_dir()?.join("register_raw").exists();
        let reg = registration(entry, st.get(&entry.uuid), st.is_copy, has_raw)?;
        // The set named may attach it now or whenever it comes, with no
        // step of ours in between: it is recorded first, pending.
        env.store().update(entry.uuid, "the registration", |r| {
            r.layout = Some(reg.layout);
            // Writeback stays recorded while a set may hold its dirty data.
            if !(r.mode == Some(CacheMode::Writeback) && r.attached.is_some()) {
                r.mode = Some(reg.mode);
            }
            if let Some(set) = reg.set_uuid.filter(|_| r.attached.is_none()) {
                r.attached = Some(set);
                r.pending = true;
            }
            // It runs at once, without its set: the set's copy is dropped at
            // the next attach, whichever boot that is.
            if reg.state == BdevState::Stale {
                r.stale = true;
            }
        })?;
        fault(path, "register:before-kernel")?;
        let shown = path.to_string_lossy().into_owned();
        let log = env.sysfs.kernel_log();
        let (node, mut dir) = register(env, entry, &reg, dev, path)?;
        let since = since_file(env, &entry.uuid);
        fs::create_dir_all(env.run_dir.join("since"))
            .and_then(|_| state::touch(&since))
            .map_err(|e| ApplyError::Io(since.clone(), e))?;
        fault(path, "register:after-kernel")?;
        let no_slot = log.map(|l| l.no_slot_devices()).unwrap_or_default();
        dir = settle_unconfirmed(env, entry, &reg, st.get(&entry.uuid), path, (&node, dir), &no_slot)?;
        record_attachment(env, &entry.uuid, &dir)?;
        for t in &entry.options.tunables {
            fault(&dir.join(t.attr), "tunable")?;
            env.sysfs.write(&shown, &dir.join(t.attr), &t.value)?;
        }
    }
    Ok(live_at(env, entry, path).0)
}

/// A device registered dirty that its set refused for want of a slot
/// (`no_slot`, the kernel's words), when nothing says the set held dirty
/// data for it: an attach written ahead and never confirmed (a power cut
/// before the kernel acted), or one the set's journal lost (a power cut
/// within journal_delay_ms of the attach, before anything was written).
/// The set holds nothing for it, so it is registered again as new to the
/// set. A device the kernel reported dirty keeps waiting: that data is
/// gone with the slot, and only the operator may accept it (`bcache run
/// --force`). So does a device when the kernel's log cannot say. Returns
/// the registered device's sysfs directory.
fn settle_unconfirmed(
    env: &Env,
    entry: &Entry,
    reg: &Registration,
    record: Option<&Record>,
    path: &Path,
    (node, dir): (&Path, PathBuf),
    no_slot: &[String],
) -> Result<PathBuf, ApplyError> {
    let nothing_to_lose = record.is_some_and(|r| {
        !r.stale && r.attached == reg.set_uuid && (r.pending || r.state != Some(BdevState::Dirty))
    });
    let set_here = reg.set_uuid.is_some_and(|s| env.sysfs.set_dir(&s).is_ok());
    // The kernel's name of the device: the directory /sys/dev/block/M:N links to.
    let name = dir.parent().and_then(|d| fs::canonicalize(d).ok()).and_then(|d| Some(d.file_name()?.to_string_lossy().into_owned()));
    let refused = name.is_some_and(|n| no_slot.contains(&n));
    if !(nothing_to_lose && reg.state == BdevState::Dirty && set_here && refused && attached_set(&dir).is_none()) {
        return Ok(dir);
    }
    if record.is_some_and(|r| !r.pending) {
        eprintln!(
            "bcache: warning: {}: cache set {} has no slot for {} although it was attached (lost with the \
             set's journal by a power cut just after the attach, or a new cache made with the set's uuid): \
             attached afresh",
            path.display(),
            reg.set_uuid.map_or("-".into(), |s| s.to_string()),
            entry.uuid
        );
    }
    env.sysfs.release(node, &Registered::Backing(dir), SetAction::Stop)?;
    let fresh = Registration { state: BdevState::None, ..reg.clone() };
    Ok(register(env, entry, &fresh, Device::open(path, Access::Read)?, path)?.1)
}

/// After cache devices were registered (`bcache register`, from udev):
/// what the kernel wrote into the headers goes to the state file, and a
/// waiting device the new set refused for want of a slot is settled
/// ([`settle_unconfirmed`]). `log` is the kernel's log from before the
/// registration.
pub fn after_caches_registered(log: Option<crate::sysfs::KernelLog>) -> Result<(), ApplyError> {
    let env = Env::default();
    let tab = match Tab::load(&env.tab) {
        Ok(tab) if !tab.entries.is_empty() => tab,
        _ => return Ok(()),
    };
    sync_headers(&env, &tab)?;
    let no_slot = log.map(|l| l.no_slot_devices()).unwrap_or_default();
    if no_slot.is_empty() {
        return Ok(());
    }
    let st = State::load(&env.state)?;
    let has_raw = env.sysfs.bcache_dir()?.join("register_raw").exists();
    let resolver = Resolver::default();
    let mut first_error = None;
    for e in tab.entries.iter().filter(|e| st.get(&e.uuid).is_some_and(|r| r.attached.is_some())) {
        let Some(path) = resolver.resolve(&e.device) else { continue };
        // One device's failure leaves the others to be settled.
        let settled = (|| {
            let _lock = device_lock(&env, &e.uuid)?;
            let Some((node, rdev)) = registered_as(&env, e, &Device::open(&path, Access::Read)?) else { return Ok(()) };
            let dir = env.sysfs.backing_dir(&path.to_string_lossy(), rdev)?;
            let reg = registration(e, st.get(&e.uuid), st.is_copy, has_raw)?;
            let dir = settle_unconfirmed(&env, e, &reg, st.get(&e.uuid), &path, (&node, dir), &no_slot)?;
            record_attachment(&env, &e.uuid, &dir)
        })();
        if let Err(err) = settled {
            eprintln!("bcache: {}:{}: {err}", env.tab.display(), e.line);
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// `bcache detach` of a registered backing device (sysfs directory `dir`)
/// from its set; then a bcachetab device's line names no set. Its record
/// keeps the set until the kernel reports the detach done: until then the
/// device is not registered without it. True for a bcachetab device.
pub fn detach(env: &Env, name: &str, dir: &Path) -> Result<bool, ApplyError> {
    let uuid = env.sysfs.read(&dir.join("backing_dev_uuid")).ok().and_then(|u| u.parse::<Uuid>().ok());
    fault(dir, "detach:before-kernel")?;
    // The kernel writes back dirty data before it lets go; the attribute
    // returns at once.
    env.sysfs.write(name, &dir.join("detach"), "1")?;
    fault(dir, "detach:after-kernel")?;
    match uuid {
        Some(u) if is_tab_device(env, &u)? => Ok(crate::bcachetab::set_cset(&env.tab, &u, None)?),
        _ => Ok(false),
    }
}

/// Tells the kernel about `dev` (the device of `entry`, at `path`) as `reg`
/// says, by either layout; returns the registered device (the device
/// itself, or the header's dm device) and its sysfs directory.
fn register(
    env: &Env,
    entry: &Entry,
    reg: &Registration,
    dev: Device,
    path: &Path,
) -> Result<(PathBuf, PathBuf), ApplyError> {
    let shown = path.to_string_lossy().into_owned();
    match reg.layout {
        Layout::Raw => {
            let raw = RawBacking {
                uuid: entry.uuid,
                set_uuid: reg.set_uuid,
                data_offset: reg.data_offset,
                block_size: entry.options.block_size,
                cache_mode: reg.mode,
                state: reg.state,
                label: entry.options.label.clone(),
                size: None,
            };
            raw.validate(&dev)?;
            env.sysfs.register_raw(&shown, &raw.line(&shown))?;
        }
        Layout::Header => {
            let joined = header::set_up(
                &env.run_dir,
                &dev,
                &HeaderParams {
                    uuid: entry.uuid,
                    set_uuid: reg.set_uuid,
                    state: reg.state,
                    cache_mode: reg.mode,
                    label: &entry.options.label,
                    block_size: entry.options.block_size.unwrap_or(dev.logical_block_size()),
                },
            )?;
            drop(dev);
            env.sysfs.register(&joined.to_string_lossy(), false)?;
        }
    }
    let dev = Device::open(path, Access::Read)?;
    let (node, rdev) = registered_as(env, entry, &dev).ok_or_else(|| {
        ApplyError::Io(path.to_owned(), io::Error::other("registered, but bcache does not show it"))
    })?;
    Ok((node, env.sysfs.backing_dir(&shown, rdev)?))
}

/// The cache set a registered backing device is attached to, from its
/// `cache` link.
pub fn attached_set(dir: &Path) -> Option<Uuid> {
    fs::read_link(dir.join("cache")).ok()?.file_name()?.to_str()?.parse().ok()
}

/// Records that the device is attached to the set sysfs shows, if any:
/// the set now holds a slot for it (a fresh one if it was stale).
pub fn record_attachment(env: &Env, uuid: &Uuid, dir: &Path) -> Result<(), ApplyError> {
    if let Some(set) = attached_set(dir) {
        env.store().record_fact(*uuid, "the attach", |r| confirm_attach(r, set))?;
    }
    Ok(())
}

fn confirm_attach(r: &mut Record, set: Uuid) {
    r.attached = Some(set);
    r.pending = false;
    r.stale = false;
}

/// Before an attach the kernel is told to make (`bcache attach`): the set,
/// pending until [`record_attachment`] sees it. Returns the record as it
/// was, for [`undo_attach`] when the kernel refuses.
pub fn before_attach(env: &Env, uuid: &Uuid, set: Uuid) -> Result<Option<Record>, ApplyError> {
    let before = State::load(&env.state)?.get(uuid).cloned();
    env.store().update(*uuid, "the attach", |r| {
        r.attached = Some(set);
        r.pending = true;
    })?;
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

/// `bcache attach` of a registered backing device (its sysfs directory
/// `dir`) to a registered set. For a bcachetab device, its line and its
/// record name the set (pending) before the kernel is told, and go back
/// if the kernel refuses; true then. A power cut between leaves it
/// waiting for the set at the next boot: never registered as new to a set
/// that may hold its data.
pub fn attach(env: &Env, name: &str, dir: &Path, set: Uuid) -> Result<bool, ApplyError> {
    let uuid = env.sysfs.read(&dir.join("backing_dev_uuid")).ok().and_then(|u| u.parse::<Uuid>().ok());
    let tab_device = match uuid {
        Some(u) if is_tab_device(env, &u)? => Some(u),
        _ => None,
    };
    let Some(uuid) = tab_device else {
        env.sysfs.write(name, &dir.join("attach"), &set.hyphenated().to_string())?;
        return Ok(false);
    };
    let old_set = Tab::load(&env.tab).map_err(|e| ApplyError::Io(env.tab.clone(), e))?.by_uuid(&uuid).and_then(|e| e.cset);
    // bcachetab first: a cut before the record leaves a set named and none
    // recorded, which the next registration records ahead and attaches.
    crate::bcachetab::set_cset(&env.tab, &uuid, Some(set))?;
    let before = match before_attach(env, &uuid, set) {
        Ok(before) => before,
        Err(e) => {
            crate::bcachetab::set_cset(&env.tab, &uuid, old_set)?;
            return Err(e);
        }
    };
    fault(dir, "attach:before-kernel")?;
    if let Err(e) = env.sysfs.write(name, &dir.join("attach"), &set.hyphenated().to_string()) {
        crate::bcachetab::set_cset(&env.tab, &uuid, old_set)?;
        undo_attach(env, &uuid, before)?;
        return Err(e.into());
    }
    fault(dir, "attach:after-kernel")?;
    record_attachment(env, &uuid, dir)?;
    Ok(true)
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
    Ok(env.store().update(*uuid, "the stale mark", |r| {
        r.stale = true;
        r.state = Some(BdevState::Stale);
    })?)
}

/// The live status of a line's device.
pub fn status(env: &Env, resolver: &Resolver, entry: &Entry) -> Status {
    live(env, resolver, entry).0
}

/// The status, and the sysfs directory of the registered device.
fn live(env: &Env, resolver: &Resolver, entry: &Entry) -> (Status, Option<PathBuf>) {
    match resolver.resolve(&entry.device) {
        Some(path) => live_at(env, entry, &path),
        None => (Status::Missing, None),
    }
}

/// [`live`] for the line's device, found at `path`.
fn live_at(env: &Env, entry: &Entry, path: &Path) -> (Status, Option<PathBuf>) {
    let device = path.to_string_lossy().into_owned();
    let dir = Device::open(path, Access::Read)
        .ok()
        .and_then(|dev| registered_as(env, entry, &dev))
        .and_then(|(_, rdev)| env.sysfs.backing_dir(&device, rdev).ok());
    let Some(dir) = dir else { return (Status::Down { device }, None) };
    let read = |attr: &str| fs::read_to_string(dir.join(attr)).map(|s| s.trim().to_owned()).ok();
    // The bcache disk is the directory `dev` links to, once it runs.
    let bcache = fs::read_link(dir.join("dev"))
        .ok()
        .and_then(|l| Some(format!("/dev/{}", l.file_name()?.to_str()?)));
    let status = match (read("running").as_deref(), bcache) {
        (Some("1"), Some(bcache)) => Status::Up { device, bcache },
        _ => Status::Waiting {
            device,
            set: entry.cset,
            dirty: read("state").as_deref() == Some("dirty") || entry.options.mode == CacheMode::Writeback,
        },
    };
    (status, Some(dir))
}

/// Where the time a device was registered at this boot is kept (its
/// modification time): the start of its timeout.
fn since_file(env: &Env, uuid: &Uuid) -> PathBuf {
    env.run_dir.join("since").join(uuid.hyphenated().to_string())
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

/// Records a state change the kernel reported for a raw-registered device
/// (the change uevent of register_raw: BCACHE_UUID, BCACHE_STATE, ...).
pub fn record_uevent(env: &Env, props: Props) -> Result<(), ApplyError> {
    let Some(uuid) = props("BCACHE_UUID").and_then(|u| u.parse::<Uuid>().ok()) else {
        return Ok(());
    };
    let set = props("BCACHE_SET_UUID").and_then(|u| u.parse::<Uuid>().ok()).filter(|u| !u.is_nil());
    let st = props("BCACHE_STATE").and_then(|s| BdevState::ALL.into_iter().find(|x| x.name() == s));
    let mode = props("BCACHE_CACHE_MODE").and_then(|m| m.parse().ok());
    env.store().record_fact(uuid, "the state the kernel reported", |r| note(r, set, st, mode, true))?;
    Ok(())
}

/// Folds a superblock state into a record. `written_by_kernel`: only the
/// kernel wrote it (a raw device's event), so clean or dirty with a set
/// proves the attach, and the state is the kernel's; a header also holds
/// what this tool registered it with, so there only its stale and detach
/// marks count, and sysfs proves the attach ([`record_attachment`]).
fn note(r: &mut Record, set: Option<Uuid>, st: Option<BdevState>, mode: Option<CacheMode>, written_by_kernel: bool) {
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

/// Brings the state file up to what happened while it could not be
/// written or was a copy, and to what the kernel shows now: the journal
/// an initramfs (or a failed record) left, what the kernel wrote into the
/// headers, and the attach of each registered device. Towards the
/// conservative side only: an attach is recorded, a detach only as the
/// kernel reported it. True when a journal was merged.
pub fn reconcile(env: &Env, tab: &Tab) -> Result<bool, ApplyError> {
    let merged = state::merge_journal(&env.store())?;
    sync_headers(env, tab)?;
    let resolver = Resolver::default();
    for e in &tab.entries {
        if let (_, Some(dir)) = live(env, &resolver, e) {
            if let Some(k) = KernelView::read(&dir).filter(|k| k.seq > 0 && k.uuid == e.uuid) {
                env.store().record_fact(e.uuid, "the state the kernel shows", |r| {
                    note(r, k.set, Some(k.state), Some(k.mode), true)
                })?;
            }
            record_attachment(env, &e.uuid, &dir)?;
        }
    }
    Ok(merged)
}

/// What the patched module shows of a raw-registered device
/// (`raw_state`): its superblock as the kernel holds it now, whatever
/// uevents were lost. `seq` counts the kernel's changes since the
/// registration: at 0 it is what this tool registered.
#[derive(Debug, PartialEq, Eq)]
struct KernelView {
    uuid: Uuid,
    set: Option<Uuid>,
    state: BdevState,
    mode: CacheMode,
    seq: u64,
}

impl KernelView {
    fn read(dir: &Path) -> Option<KernelView> {
        KernelView::parse(&fs::read_to_string(dir.join("raw_state")).ok()?)
    }

    fn parse(line: &str) -> Option<KernelView> {
        let field = |key: &str| {
            line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        Some(KernelView {
            uuid: field("uuid")?.parse().ok()?,
            set: Some(field("set_uuid")?.parse::<Uuid>().ok()?).filter(|u| !u.is_nil()),
            state: BdevState::ALL.into_iter().find(|s| Some(s.name()) == field("state"))?,
            mode: field("cache_mode")?.parse().ok()?,
            seq: field("seq")?.parse().ok()?,
        })
    }
}

/// Reads back what the kernel wrote into the headers set up at this boot
/// (stock kernels emit no uevent for it) into the state file.
pub fn sync_headers(env: &Env, tab: &Tab) -> Result<(), ApplyError> {
    for e in &tab.entries {
        if let Some(sb) = header::read_back(&env.run_dir, &e.uuid) {
            let set = Some(sb.set_uuid).filter(|u| !u.is_nil());
            let (st, mode) = (Some(sb.state()), sb.cache_mode());
            env.store().record_fact(e.uuid, "the state the kernel wrote", |r| note(r, set, st, mode, false))?;
            let dir = header::find(&e.uuid).and_then(|(node, rdev)| env.sysfs.backing_dir(&node.to_string_lossy(), rdev).ok());
            if let Some(dir) = dir {
                record_attachment(env, &e.uuid, &dir)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bcachetab::{DeviceSpec, Options};

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
        Record { layout: Some(layout), attached: attached.map(Uuid::from_u128), stale, ..Record::default() }
    }

    #[test]
    fn raw_state_is_read_field_by_field() {
        let line = "uuid=00000000-0000-0000-0000-000000000001 set_uuid=00000000-0000-0000-0000-000000000009 \
                    state=dirty cache_mode=writeback label=a%20b seq=3 uevent_errors=0\n";
        let k = KernelView::parse(line).unwrap();
        assert_eq!(
            k,
            KernelView {
                uuid: Uuid::from_u128(1),
                set: Some(Uuid::from_u128(9)),
                state: BdevState::Dirty,
                mode: CacheMode::Writeback,
                seq: 3
            }
        );
        let detached = line.replace("00000000-0000-0000-0000-000000000009", &Uuid::nil().to_string());
        assert_eq!(KernelView::parse(&detached).unwrap().set, None);
        assert!(KernelView::parse("uuid=x seq=1").is_none());
    }

    #[test]
    fn writeback_waits_unless_the_record_proves_otherwise() {
        let wb = entry(Some(9), CacheMode::Writeback);
        let state = |r: Option<&Record>, copy| registration(&wb, r, copy, true).map(|g| g.state);
        // Unknown: assume dirty.
        assert_eq!(state(None, false).unwrap(), BdevState::Dirty);
        assert_eq!(state(Some(&rec(Some(9), false, Layout::Raw)), false).unwrap(), BdevState::Dirty);
        // Known never attached: attach afresh.
        assert_eq!(state(Some(&rec(None, false, Layout::Raw)), false).unwrap(), BdevState::None);
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
        let state = |r: Option<&Record>| registration(&wt, r, false, true).unwrap().state;
        // Unknown: whatever the set holds for it is dropped, never served.
        assert_eq!(state(None), BdevState::Stale);
        // Known never attached: new to the set.
        assert_eq!(state(Some(&rec(None, false, Layout::Raw))), BdevState::None);
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
        assert!(matches!(registration(&wb, Some(&r), false, false), Err(ApplyError::LayoutSwitch { .. })));
        let free = rec(None, false, Layout::Raw);
        assert_eq!(registration(&wb, Some(&free), false, false).unwrap().layout, Layout::Header);
        let moved = entry(Some(8), CacheMode::Writeback);
        assert!(matches!(registration(&moved, Some(&r), false, true), Err(ApplyError::OtherSet { .. })));
        let none = entry(None, CacheMode::Writethrough);
        assert!(matches!(registration(&none, Some(&r), false, true), Err(ApplyError::OtherSet { .. })));
    }
}
