//! `bcache adopt`: an existing device declared in bcachetab, its data kept,
//! and brought up.
//!
//! Everything that decides whether the device may have a line is checked
//! under bcachetab's lock, and the line is appended under the same lock:
//! two adopts of one device (by one name or two) give one line, never two
//! lines with two uuids for one disk.

use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::tab::{activate, events};
use crate::tab::env::{ApplyError, Env};
use crate::tab::status::Status;
use crate::tab::file::{self, DeviceSpec, EditError, Entry, Options, Tab};
use crate::device::{Access, Device, DeviceError};
use crate::tab::identity::{self, Identity, Now, Resolver};
use crate::tab::records::{State, StateError};
use crate::superblock::{CacheMode, Role};
use crate::sysfs::SysfsError;

/// What `bcache adopt` was asked.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub device: PathBuf,
    /// A cache device of the set to attach to (registered if it is not).
    pub cache: Option<PathBuf>,
    pub cset: Option<Uuid>,
    pub mode: CacheMode,
    pub name: Option<String>,
    pub label: Option<String>,
    pub uuid: Option<Uuid>,
    /// How bcachetab is to name the device, as written (`--spec`).
    pub spec: Option<String>,
    /// `KEY=VALUE` options of the line.
    pub options: Vec<String>,
    /// A writeback device by a name that may find another disk.
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error("{0}: {1}")]
    Argument(&'static str, String),
    #[error("{dev}: already in {at} as {spec}{next}")]
    Already { dev: String, at: String, spec: DeviceSpec, next: String },
    #[error(
        "{dev}: {spec} may name another disk after a reboot ({why}), and this device's dirty data in the cache would \
         then be written onto that disk: name it by a /dev/disk/by-id link, PARTUUID=, UUID= or LABEL= (--spec), or \
         pass --force (then at a boot where the name finds another disk, that disk is refused, not registered)"
    )]
    Unstable { dev: String, spec: DeviceSpec, why: &'static str },
    #[error(
        "{dev}: has no serial or wwid, no PARTUUID and no file system: its identity would be its size only, and at a \
         boot where its name finds another such disk of that size, that disk would be registered in its place and this \
         device's dirty data written onto it: give it a partition table or a file system first, or pass --force"
    )]
    NoIdentity { dev: String },
    #[error(
        "{dev}: cannot be told from the device of {at} (neither has a serial, wwid, PARTUUID or file system, both are \
         {sectors} sectors, and a cache set may hold data for one of them): if it is that device under another name, \
         bcache tab apply {line} brings it up; if not, give one of them a partition table or a file system, or pass \
         --force"
    )]
    Indistinguishable { dev: String, at: String, sectors: u64, line: String },
    #[error("{dev}: {spec} names {found}, not this device: {next}")]
    SpecElsewhere { dev: String, spec: DeviceSpec, found: String, next: &'static str },
    #[error("{0} (unmount it and stop what uses it first)")]
    Busy(DeviceError),
    #[error("{0}: holds a bcache superblock of its own: use bcache register")]
    HasSuperblock(String),
    #[error("{0}: not a block device")]
    NotBlock(String),
    #[error("{0}: zoned devices cannot be used in writeback mode")]
    Zoned(String),
    #[error("{0}: not a bcache cache device")]
    NotCache(String),
    #[error(
        "{dev}: block size {block} is below the cache set's ({set} bytes): the kernel would refuse to attach it \
         (pass -o block={set})"
    )]
    BlockSize { dev: String, block: u32, set: u64 },
    #[error("uuid {uuid} is already used by {at}: leave --uuid out for a new one")]
    UuidUsed { uuid: Uuid, at: String },
    #[error("name {name} is already used by {at}: choose another with --name")]
    NameUsed { name: String, at: String },
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// A line written for a device: the entry, and the device it names now.
#[derive(Debug, Clone)]
pub struct Declared {
    pub entry: Entry,
    pub device: PathBuf,
}

/// The line's options, checked by bcachetab's own parser (the combination
/// rules too: timeout= needs a set, so they are told whether one comes).
fn line_options(req: &Request) -> Result<Options, AdoptError> {
    let mut opts: Vec<String> = Vec::new();
    if req.mode != CacheMode::default() {
        opts.push(format!("mode={}", req.mode.name()));
    }
    if let Some(l) = &req.label {
        opts.push(format!("label={l}"));
    }
    opts.extend(req.options.iter().cloned());
    if opts.is_empty() {
        return Ok(Options::default());
    }
    let set = if req.cache.is_some() || req.cset.is_some() { Uuid::from_u128(2).to_string() } else { "-".into() };
    let probe = format!("- /dev/x {} {set} {}", Uuid::from_u128(1), opts.join(","));
    let t = Tab::parse(&probe, Path::new("--option"));
    match (t.entries.first(), t.errors.first()) {
        (Some(e), _) => Ok(e.options.clone()),
        (None, Some(err)) => Err(AdoptError::Argument("--option", format!("{}: {}", err.field, err.message))),
        (None, None) => unreachable!("one line gives an entry or an error"),
    }
}

/// The stable name bcachetab records for a device: a /dev/disk/by-id link
/// (WWN first), else PARTUUID=, else the content's UUID=, else the path.
fn stable_spec(real: &Path, resolver: &Resolver) -> DeviceSpec {
    let ids = identity::device_ids(real, false).map(|(_, ids)| ids).unwrap_or_default();
    let mut by_id: Vec<&String> = ids.links.iter().filter(|l| l.starts_with("/dev/disk/by-id/")).collect();
    by_id.sort_by_key(|l| (!l.starts_with("/dev/disk/by-id/wwn-"), *l));
    if let Some(link) = by_id.first() {
        return DeviceSpec::Path(PathBuf::from(link));
    }
    if let Some(p) = ids.part_uuid {
        return DeviceSpec::PartUuid(p.to_ascii_lowercase());
    }
    match resolver.content_uuid(real) {
        Some(uuid) => DeviceSpec::Uuid(uuid.to_ascii_lowercase()),
        None => DeviceSpec::Path(real.to_owned()),
    }
}

/// Checks everything and writes the device's record (its identity) and
/// its line, under bcachetab's lock; the device is not brought up (see
/// [`start`]).
pub fn declare(env: &Env, req: &Request) -> Result<Declared, AdoptError> {
    let shown = req.device.display().to_string();
    if let Some(n) = &req.name {
        file::check_name(n).map_err(|m| AdoptError::Argument("--name", m))?;
    }
    let options = line_options(req)?;
    let given = match &req.spec {
        Some(s) => Some(DeviceSpec::parse(s).map_err(|m| AdoptError::Argument("--spec", m))?),
        None => None,
    };
    // The same device however it is named (a link, a node, /dev//sdb).
    let real = std::fs::canonicalize(&req.device)
        .map_err(|error| DeviceError::Open { path: req.device.clone(), error })?;
    let resolver = Resolver::default();

    let lock = file::Locked::take(&env.tab)?;
    let tab = lock.tab()?;
    if let Some(e) = identity::entry_for_device(&tab, &real) {
        let next = format!(": bcache tab apply {shown} brings it up");
        return Err(AdoptError::Already { dev: shown, at: e.at(&tab.path), spec: e.device.clone(), next });
    }
    // A line whose name finds another device (or none) at this boot, for a
    // device whose record says it is this one.
    let content = |d: &Path| resolver.content_uuid(d);
    let now = Now::new(&real, None, &content).identity();
    let state = State::load(&env.state)?;
    if let Some(e) = recorded_as(&tab, &state, &now) {
        let next = format!(
            ", which finds another device at this boot (this one is its record's: {now}): name it there by a \
             /dev/disk/by-id link or PARTUUID="
        );
        return Err(AdoptError::Already { dev: shown, at: e.at(&tab.path), spec: e.device.clone(), next });
    }
    // A blank identity (its size only) tells it from no other blank disk of
    // that size: not another line's where a set may hold data for either
    // (it may be that line's device under a new name), and never a
    // writeback device's but by --force.
    let with_set = req.cache.is_some() || req.cset.is_some();
    if let Some(e) = indistinguishable_from(&tab, &state, &now, with_set).filter(|_| !req.force) {
        let line = e.name.clone().unwrap_or_else(|| e.uuid.hyphenated().to_string());
        let sectors = now.sectors.unwrap_or_default();
        return Err(AdoptError::Indistinguishable { dev: shown, at: e.at(&tab.path), sectors, line });
    }
    if options.mode == CacheMode::Writeback && now.is_blank() && !req.force {
        return Err(AdoptError::NoIdentity { dev: shown });
    }
    let spec = given.clone().unwrap_or_else(|| stable_spec(&real, &resolver));
    if options.mode == CacheMode::Writeback && !spec.is_stable() && !req.force {
        let why = if given.is_some() {
            "the kernel names disks in the order it finds them"
        } else {
            "no /dev/disk/by-id link, PARTUUID or file system uuid was found for it"
        };
        return Err(AdoptError::Unstable { dev: shown, spec, why });
    }
    match resolver.resolve(&spec) {
        Some(found) if found == real => {}
        found => {
            let found = found.map_or("no device".to_owned(), |f| f.display().to_string());
            let next = if given.is_some() {
                "give --spec a name of this device, or leave it out"
            } else {
                "another device holds the same file system; pass --spec with a /dev/disk/by-id link or PARTUUID="
            };
            return Err(AdoptError::SpecElsewhere { dev: shown, spec, found, next });
        }
    }
    let uuid = req.uuid.unwrap_or_else(Uuid::new_v4);
    if let Some(e) = tab.by_uuid(&uuid) {
        return Err(AdoptError::UuidUsed { uuid, at: e.at(&tab.path) });
    }
    if let Some(e) = req.name.as_deref().and_then(|n| tab.by_name(n)) {
        return Err(AdoptError::NameUsed { name: e.name.clone().unwrap_or_default(), at: e.at(&tab.path) });
    }

    // The device: not in use, not a bcache device of its own.
    let dev = Device::open(&req.device, Access::WriteExclusive).map_err(AdoptError::Busy)?;
    if dev.signatures()?.iter().any(|s| s.is_bcache()) {
        return Err(AdoptError::HasSuperblock(shown));
    }
    let rdev = dev.rdev().ok_or_else(|| AdoptError::NotBlock(shown.clone()))?;
    if options.mode == CacheMode::Writeback && env.sysfs.zone_sectors(rdev).is_some() {
        return Err(AdoptError::Zoned(shown));
    }
    let cset = match (&req.cache, req.cset) {
        (Some(cache), _) => Some(cache_set(env, cache, &dev, &options)?),
        (None, c) => c,
    };
    drop(dev);

    let entry = Entry { line: 0, name: req.name.clone(), device: spec, uuid, cset, options };
    // A uuid of adopt's own making is new to every cache set: marked so,
    // the device attaches afresh instead of waiting for a slot that does
    // not exist. One given with --uuid may be known to a set (a device
    // adopted again after its line or its record was lost): unmarked, it
    // is registered as one a set may hold data for. Its identity keeps
    // another disk from being registered in its place.
    let fresh = req.uuid.is_none();
    env.store().update(uuid, "the new device", |r| {
        r.identity = now.clone();
        r.new |= fresh;
    })?;
    let line = lock.append(&entry)?;
    Ok(Declared { entry: Entry { line, ..entry }, device: real })
}

/// The set of a cache device, checked against the device like make does;
/// the cache is registered if it is not.
fn cache_set(env: &Env, cache: &Path, dev: &Device, options: &Options) -> Result<Uuid, AdoptError> {
    let cdev = Device::open(cache, Access::Read)?;
    let sb = cdev.read_superblock()?;
    if !sb.magic_ok() || sb.role() != Some(Role::Cache) {
        return Err(AdoptError::NotCache(cache.display().to_string()));
    }
    let block = options.block_size.unwrap_or(dev.logical_block_size());
    let set = u64::from(sb.block_size) * 512;
    if u64::from(block) < set {
        return Err(AdoptError::BlockSize { dev: dev.path().display().to_string(), block, set });
    }
    let rdev = cdev.rdev();
    drop(cdev);
    if rdev.and_then(|r| env.sysfs.registered(r)).is_none() {
        let path = std::path::absolute(cache).map_err(|error| DeviceError::Open { path: cache.to_owned(), error })?;
        env.sysfs.register(&path.display().to_string(), true)?;
    }
    Ok(sb.set_uuid)
}

/// Brings a declared device up, and reads back what the kernel wrote into
/// its header.
pub fn start(env: &Env, d: &Declared) -> Result<Status, ApplyError> {
    let st = activate::bring_up(env, &d.entry, &d.device)?;
    let _ = events::sync_headers(env, &Tab { entries: vec![d.entry.clone()], ..Tab::default() });
    Ok(st)
}

/// The line whose record says its device is the one `now` describes.
fn recorded_as<'t>(tab: &'t Tab, state: &State, now: &Identity) -> Option<&'t Entry> {
    tab.entries.iter().find(|e| state.get(&e.uuid).is_some_and(|r| r.identity.same_device(now)))
}

/// A line whose record is as blank as `now` and of its size, where a
/// cache set may hold data for either (`with_set`: the device `now` is
/// has one): its device and this one cannot be told apart, and a swap
/// would serve one's cached data as the other's. Without a set a swap
/// only shows each disk under the other's name, as it would without
/// bcache.
pub(crate) fn indistinguishable_from<'t>(tab: &'t Tab, state: &State, now: &Identity, with_set: bool) -> Option<&'t Entry> {
    tab.entries.iter().find(|e| {
        state.get(&e.uuid).is_some_and(|r| {
            r.identity.indistinguishable(now) && (with_set || e.cset.is_some() || r.attached.is_some())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tab::identity::DiskId;

    #[test]
    fn options_are_checked_by_the_parser_with_the_set_known() {
        let req = Request { mode: CacheMode::Writeback, options: vec!["sequential_cutoff=1M".into()], ..Request::default() };
        let o = line_options(&req).unwrap();
        assert_eq!((o.mode, o.tunables[0].value.as_str()), (CacheMode::Writeback, "1048576"));
        let timeout = Request { options: vec!["timeout=5".into()], ..Request::default() };
        let e = line_options(&timeout).unwrap_err().to_string();
        assert_eq!(e, "--option: timeout: only a device with a cache set waits");
        assert!(line_options(&Request { cset: Some(Uuid::from_u128(3)), ..timeout }).is_ok());
    }

    #[test]
    fn a_device_recorded_for_a_line_is_that_lines_whatever_the_line_names_now() {
        let tab = Tab::parse(
            "a /dev/vda 00000000-0000-4000-8000-000000000001 -\nb /dev/vdb 00000000-0000-4000-8000-000000000002 -\n",
            Path::new("/etc/bcachetab"),
        );
        let text = "00000000-0000-4000-8000-000000000002 sectors=8 disk=serial:disk-a\n\
                    00000000-0000-4000-8000-000000000009 sectors=8 disk=serial:disk-b\n";
        let state = State::parse(text, Path::new("state")).unwrap();
        let now = |s: &str| Identity { sectors: Some(8), disk: Some(DiskId::Serial(s.into())), ..Identity::default() };
        assert_eq!(recorded_as(&tab, &state, &now("disk-a")).map(|e| e.line), Some(2));
        assert!(recorded_as(&tab, &state, &now("disk-b")).is_none(), "a record without a line is no line");
    }

    /// Finding: two blank disks (no serial, PARTUUID or file system) of one
    /// size had one identity: a blank device is no line's by its identity,
    /// and is found indistinguishable from a line's blank record.
    #[test]
    fn a_blank_device_is_no_lines_by_identity_and_indistinguishable_from_a_blank_record() {
        let tab = Tab::parse(
            "a /dev/vda 00000000-0000-4000-8000-000000000001 -\nb /dev/vdb 00000000-0000-4000-8000-000000000002 -\n\
             c /dev/vdc 00000000-0000-4000-8000-000000000003 00000000-0000-4000-8000-000000000009\n",
            Path::new("/etc/bcachetab"),
        );
        let text = "00000000-0000-4000-8000-000000000001 sectors=16 disk=serial:disk-a\n\
                    00000000-0000-4000-8000-000000000002 sectors=8\n\
                    00000000-0000-4000-8000-000000000003 sectors=4\n";
        let state = State::parse(text, Path::new("state")).unwrap();
        let blank = |sectors| Identity { sectors: Some(sectors), ..Identity::default() };
        assert!(recorded_as(&tab, &state, &blank(8)).is_none());
        assert_eq!(indistinguishable_from(&tab, &state, &blank(8), true).map(|e| e.line), Some(2));
        assert!(indistinguishable_from(&tab, &state, &blank(16), true).is_none(), "another size");
        // No set for either: a swap caches nothing under the wrong uuid.
        assert!(indistinguishable_from(&tab, &state, &blank(8), false).is_none());
        assert_eq!(indistinguishable_from(&tab, &state, &blank(4), false).map(|e| e.line), Some(3));
    }
}
