//! Which block device a bcachetab line names, and whether it is still the
//! device that was adopted for it.
//!
//! A line's name finds a device ([`Resolver`], [`device_ids`],
//! [`entry_for_device`]); the device's [`Identity`], recorded in the state
//! file when it is adopted, says whether it is the right one. A kernel
//! name such as /dev/sdb names whichever disk was found second at this
//! boot: registering another disk under a writeback device's uuid would
//! write that device's dirty data onto it.

use std::cell::{OnceCell, RefCell};
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;

use crate::tab::file::{self, DeviceIds, DeviceSpec, Entry, Tab};
use crate::device::{Access, Device};

/// Finds the devices lines name by looking at the system's block devices
/// (when no udev event says which one it is). A UUID= or LABEL= line
/// needs what is on the devices, and so does the identity of a device
/// known by its content only: each device is probed at most once per
/// resolver however many lines ask (a probe of every device for every
/// line took minutes for 24 devices in a TCG guest). Make a new one to see
/// devices that appeared since.
#[derive(Default)]
pub struct Resolver {
    candidates: OnceCell<Vec<PathBuf>>,
    probed: RefCell<FxHashMap<PathBuf, DeviceIds>>,
}

impl Resolver {
    pub fn resolve(&self, spec: &DeviceSpec) -> Option<PathBuf> {
        match spec {
            // The device itself, not a link to it: what lines and arguments
            // are compared by.
            DeviceSpec::Path(p) => fs::canonicalize(p).ok(),
            DeviceSpec::PartUuid(v) => link_target(&format!("/dev/disk/by-partuuid/{v}")),
            // Link names are escaped as udev escapes them, not as the line
            // does: compared unescaped, by the line's own rule.
            DeviceSpec::PartLabel(_) => fs::read_dir("/dev/disk/by-partlabel").ok()?.flatten().find_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let ids = DeviceIds { part_name: Some(file::unescape(&name).into_owned()), ..DeviceIds::default() };
                spec.matches(&ids).then(|| fs::canonicalize(e.path()).ok()).flatten()
            }),
            // /dev/disk/by-uuid names the bcache device once it is up (same
            // file system): probe the candidates themselves.
            DeviceSpec::Uuid(_) | DeviceSpec::Label(_) => self
                .candidates
                .get_or_init(candidates)
                .iter()
                .find(|dev| self.with_content(dev, |ids| spec.matches(ids)))
                .cloned(),
        }
    }

    /// What blkid says of the content of `dev` (canonical), probed once.
    fn with_content<R>(&self, dev: &Path, f: impl FnOnce(&DeviceIds) -> R) -> R {
        if let Some(ids) = self.probed.borrow().get(dev) {
            return f(ids);
        }
        let ids = identify(dev);
        let r = f(&ids);
        self.probed.borrow_mut().insert(dev.to_owned(), ids);
        r
    }

    /// The uuid of the content of `dev` (canonical), probed once.
    pub fn content_uuid(&self, dev: &Path) -> Option<String> {
        self.with_content(dev, |ids| ids.fs_uuid.clone())
    }
}

/// What names a device given by path, as udev would give it (DEVNAME,
/// DEVLINKS, ID_PART_ENTRY_*, and with `probe` ID_FS_UUID and ID_FS_LABEL),
/// read once: its canonical path and its ids. The probe reads what
/// libblkid needs of the device (most of a process's page faults): only
/// UUID= and LABEL= lines need it.
pub fn device_ids(dev: &Path, probe: bool) -> Option<(PathBuf, DeviceIds)> {
    let real = fs::canonicalize(dev).ok()?;
    // A link is the device's when it leads to the same inode: one stat,
    // where resolving each link's path took a readlink per component.
    let inode = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let this = inode(&real)?;
    let mut ids = if probe { identify(&real) } else { DeviceIds::default() };
    ids.devname = Some(real.to_string_lossy().into_owned());
    for dir in ["by-id", "by-path", "by-partuuid", "by-partlabel", "by-diskseq"] {
        let dir_path = Path::new("/dev/disk").join(dir);
        for e in fs::read_dir(&dir_path).into_iter().flatten().flatten() {
            if inode(&e.path()) != Some(this) {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            match dir {
                "by-partuuid" => ids.part_uuid = Some(name),
                "by-partlabel" => ids.part_name = Some(file::unescape(&name).into_owned()),
                _ => {}
            }
            ids.links.push(e.path().to_string_lossy().into_owned());
        }
    }
    Some((real, ids))
}

/// The line for a device given by path: its ids ([`device_ids`]) are
/// matched against every line, with no I/O per line; only then are path
/// lines outside /dev/disk (e.g. /dev/mapper links) followed.
pub fn entry_for_device<'t>(tab: &'t Tab, dev: &Path) -> Option<&'t Entry> {
    let (real, ids) = device_ids(dev, true)?;
    tab.matching(&ids).or_else(|| {
        tab.entries
            .iter()
            .find(|e| matches!(&e.device, DeviceSpec::Path(p) if fs::canonicalize(p).ok().as_ref() == Some(&real)))
    })
}

fn link_target(link: &str) -> Option<PathBuf> {
    fs::canonicalize(link).ok()
}

/// Block devices that may be backing devices: not bcache's own, not this
/// tool's headers, not empty loop devices.
fn candidates() -> Vec<PathBuf> {
    let Ok(dir) = fs::read_dir("/sys/class/block") else { return Vec::new() };
    let mut out: Vec<PathBuf> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let sys = e.path();
            let skip = ["bcache", "ram", "zram", "sr", "fd", "nbd"].iter().any(|p| name.starts_with(p))
                || (name.starts_with("loop") && !sys.join("loop/backing_file").exists())
                || fs::read_to_string(sys.join("dm/uuid")).is_ok_and(|u| u.starts_with("BCACHETAB-"))
                || fs::read_to_string(sys.join("size")).is_ok_and(|s| s.trim() == "0");
            (!skip).then(|| PathBuf::from("/dev").join(name))
        })
        .collect();
    out.sort();
    out
}

/// The uuid of a device's content (its file system's), as blkid reports it.
pub fn content_uuid(dev: &Path) -> Option<String> {
    identify(dev).fs_uuid
}

/// What blkid says of a device's content (ID_FS_UUID and ID_FS_LABEL).
fn identify(dev: &Path) -> DeviceIds {
    let sig = Device::open(dev, Access::Read).ok().and_then(|d| d.first_signature().ok().flatten());
    let Some(sig) = sig.filter(|s| !s.partition_table) else { return DeviceIds::default() };
    DeviceIds { fs_uuid: sig.uuid, fs_label: sig.label, ..DeviceIds::default() }
}

/// The hardware (or the kernel object) a device is on, as sysfs names it:
/// it follows the disk whatever name the kernel gives it at a boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskId {
    /// A world-wide name (SCSI, SATA, NVMe: `device/wwid` or `wwid`).
    Wwid(String),
    /// A serial number (virtio's `serial`, `device/serial`).
    Serial(String),
    /// A loop device's backing file.
    LoopFile(String),
    /// A device-mapper device's uuid (LVM's, dm-crypt's).
    DmUuid(String),
}

impl DiskId {
    fn kind(&self) -> &'static str {
        match self {
            DiskId::Wwid(_) => "wwid",
            DiskId::Serial(_) => "serial",
            DiskId::LoopFile(_) => "loop",
            DiskId::DmUuid(_) => "dm",
        }
    }

    fn value(&self) -> &str {
        match self {
            DiskId::Wwid(v) | DiskId::Serial(v) | DiskId::LoopFile(v) | DiskId::DmUuid(v) => v,
        }
    }

    fn of_kind(kind: &str, v: String) -> Option<DiskId> {
        Some(match kind {
            "wwid" => DiskId::Wwid(v),
            "serial" => DiskId::Serial(v),
            "loop" => DiskId::LoopFile(v),
            "dm" => DiskId::DmUuid(v),
            _ => return None,
        })
    }

    /// `KIND:VALUE`, as [`fmt::Display`] writes it.
    pub fn parse(s: &str) -> Option<DiskId> {
        let (kind, v) = s.split_once(':')?;
        DiskId::of_kind(kind, v.to_owned())
    }

    /// What sysfs says of the disk whose directory is `disk` (a partition's
    /// parent), the most specific first.
    fn read(disk: &Path) -> Option<DiskId> {
        const SOURCES: [(&str, &str); 6] = [
            ("wwid", "wwid"),
            ("device/wwid", "wwid"),
            ("serial", "serial"),
            ("device/serial", "serial"),
            ("loop/backing_file", "loop"),
            ("dm/uuid", "dm"),
        ];
        SOURCES.into_iter().find_map(|(rel, kind)| {
            let v = fs::read_to_string(disk.join(rel)).ok()?.trim().to_owned();
            (!v.is_empty()).then(|| DiskId::of_kind(kind, v)).flatten()
        })
    }
}

impl fmt::Display for DiskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.value())
    }
}

/// What a device was when it was adopted: recorded in its state record,
/// compared before every registration. `sectors` is set in every
/// recorded identity; a record without it (written before identities
/// were) is taken on trust, as it was then.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// Its size in 512-byte sectors when adopted, or the largest since: it
    /// may grow, never shrink (a cache may hold data past a new end).
    pub sectors: Option<u64>,
    pub disk: Option<DiskId>,
    /// Its number on its disk, when it is a partition.
    pub partition: Option<u32>,
    pub part_uuid: Option<String>,
    /// Its content's uuid, as blkid said when it was adopted.
    pub fs_uuid: Option<String>,
}

impl Identity {
    pub fn is_recorded(&self) -> bool {
        self.sectors.is_some()
    }

    /// Recorded, with nothing that tells the device from another of its
    /// size: no disk id (wwid, serial, loop file, dm uuid), no PARTUUID,
    /// no file system uuid. Such an identity proves nothing: another blank
    /// disk of that size passes [`check`] in its place.
    pub fn is_blank(&self) -> bool {
        self.is_recorded() && self.disk.is_none() && self.part_uuid.is_none() && self.fs_uuid.is_none()
    }

    /// Two blank identities of one size and partition number: nothing
    /// tells their devices apart, so either may be the other's under a new
    /// name (adopt and `tab identify` refuse it unless forced).
    pub fn indistinguishable(&self, other: &Identity) -> bool {
        self.is_blank() && other.is_blank() && self.sectors == other.sectors && self.partition == other.partition
    }

    /// Whether two recorded identities are one device (adopting a device
    /// twice): by its disk and partition where both have a disk, else by
    /// PARTUUID. Never by content: a copy of a disk is another device.
    /// Never for a blank identity: a size says nothing of which disk it is.
    pub fn same_device(&self, other: &Identity) -> bool {
        if self.is_blank() || other.is_blank() {
            return false;
        }
        match (&self.disk, &other.disk, &self.part_uuid, &other.part_uuid) {
            (Some(a), Some(b), ..) => a == b && self.partition == other.partition,
            (_, _, Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            _ => false,
        }
    }

    /// The `key=value` pairs of the state file; an unset field's value is
    /// empty (what a journal line clears).
    pub fn assignments(&self) -> [(&'static str, String); 5] {
        let text = |v: &Option<String>| v.as_deref().map_or(String::new(), |v| file::escape(v).into_owned());
        [
            ("sectors", self.sectors.map_or(String::new(), |s| s.to_string())),
            ("disk", text(&self.disk.as_ref().map(|d| d.to_string()))),
            ("partition", self.partition.map_or(String::new(), |p| p.to_string())),
            ("partuuid", text(&self.part_uuid)),
            ("fsuuid", text(&self.fs_uuid)),
        ]
    }

    pub const KEYS: [&'static str; 5] = ["sectors", "disk", "partition", "partuuid", "fsuuid"];

    /// Sets one of [`Identity::KEYS`] from the state file's text; an empty
    /// value clears it.
    pub(crate) fn assign(&mut self, k: &str, v: &str) -> Result<(), ()> {
        let text = (!v.is_empty()).then(|| file::unescape(v).into_owned());
        match k {
            "sectors" => self.sectors = text.map(|t| t.parse().map_err(|_| ())).transpose()?,
            "disk" => self.disk = text.map(|t| DiskId::parse(&t).ok_or(())).transpose()?,
            "partition" => self.partition = text.map(|t| t.parse().map_err(|_| ())).transpose()?,
            "partuuid" => self.part_uuid = text,
            "fsuuid" => self.fs_uuid = text,
            _ => return Err(()),
        }
        Ok(())
    }

    /// Folds a second record's identity into this one: the larger size; two
    /// different identities cannot be decided.
    pub fn merge(&mut self, other: Identity) -> Result<(), String> {
        if !other.is_recorded() {
            return Ok(());
        }
        if !self.is_recorded() {
            *self = other;
            return Ok(());
        }
        let sectors = self.sectors.max(other.sectors);
        if (Identity { sectors, ..self.clone() }) != (Identity { sectors, ..other.clone() }) {
            return Err(format!("identities {self} and {other}"));
        }
        self.sectors = sectors;
        Ok(())
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> =
            self.assignments().into_iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&words.join(","))
    }
}

/// What a device is now, each part read when a comparison asks for it:
/// sysfs for the disk, the partition and the size (cheap, and the same
/// text whichever command reads it); for the PARTUUID the udev event's
/// properties, else the /dev/disk links; for the content's uuid the
/// event's, else a probe (`content`: a [`Resolver`]'s, which probes a
/// device once).
pub struct Now<'a> {
    pub(crate) dev: PathBuf,
    /// /sys/dev/block/MAJOR:MINOR, found from the device number, so that
    /// any node or link to the device finds it.
    sys: Option<PathBuf>,
    event: Option<&'a DeviceIds>,
    content: &'a dyn Fn(&Path) -> Option<String>,
    fs_uuid: OnceCell<Option<String>>,
}

impl<'a> Now<'a> {
    /// `event`: the udev event's properties, when they are this device's.
    pub fn new(dev: &Path, event: Option<&'a DeviceIds>, content: &'a dyn Fn(&Path) -> Option<String>) -> Now<'a> {
        let dev = fs::canonicalize(dev).unwrap_or_else(|_| dev.to_owned());
        let sys = fs::metadata(&dev).ok().filter(|m| m.file_type().is_block_device()).and_then(|m| {
            let (major, minor) = (nix::sys::stat::major(m.rdev()), nix::sys::stat::minor(m.rdev()));
            fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).ok()
        });
        Now::with_sys(dev, sys, event, content)
    }

    fn with_sys(
        dev: PathBuf,
        sys: Option<PathBuf>,
        event: Option<&'a DeviceIds>,
        content: &'a dyn Fn(&Path) -> Option<String>,
    ) -> Now<'a> {
        let event = event.filter(|e| e.devname.as_deref().is_some_and(|d| Path::new(d) == dev));
        Now { dev, sys, event, content, fs_uuid: OnceCell::new() }
    }

    fn sys_attr(&self, name: &str) -> Option<String> {
        fs::read_to_string(self.sys.as_ref()?.join(name)).ok().map(|v| v.trim().to_owned())
    }

    fn sectors(&self) -> Option<u64> {
        self.sys_attr("size")?.parse().ok()
    }

    fn partition(&self) -> Option<u32> {
        self.sys_attr("partition")?.parse().ok()
    }

    fn disk(&self) -> Option<DiskId> {
        let sys = self.sys.as_ref()?;
        // A partition's directory is inside its disk's.
        let disk = if self.partition().is_some() { sys.parent()? } else { sys };
        DiskId::read(disk)
    }

    /// Its PARTUUID; None when it cannot be told (a partition, and no
    /// event or link says).
    fn part_uuid(&self) -> Option<Option<String>> {
        if let Some(e) = self.event {
            return Some(e.part_uuid.clone());
        }
        let linked = device_ids(&self.dev, false).and_then(|(_, ids)| ids.part_uuid);
        match linked {
            Some(u) => Some(Some(u)),
            None if self.partition().is_none() => Some(None),
            None => None,
        }
    }

    fn fs_uuid(&self) -> Option<String> {
        self.fs_uuid
            .get_or_init(|| {
                // udev may not have probed it (some rules skip devices):
                // its silence is confirmed by a probe.
                self.event.and_then(|e| e.fs_uuid.clone()).or_else(|| (self.content)(&self.dev))
            })
            .clone()
    }

    /// All of it, for the record.
    pub fn identity(&self) -> Identity {
        Identity {
            sectors: self.sectors(),
            disk: self.disk(),
            partition: self.partition(),
            part_uuid: self.part_uuid().flatten(),
            fs_uuid: self.fs_uuid(),
        }
    }
}

/// A device that is not what its line's record says it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error(
        "{dev} is not the device adopted for this line: its {field} was {recorded} when adopted and is {now} now \
         (were disks renamed? a line naming it by a /dev/disk/by-id link or PARTUUID= follows the disk); if it is \
         the same device (a copy of the disk in its place, its partition table rewritten, its file system remade \
         through its bcache device), record it as it is: bcache tab identify --force {line}"
    )]
    Other { dev: String, field: &'static str, recorded: String, now: String, line: String },
    #[error(
        "{dev} is smaller than when it was adopted ({recorded} sectors then, {now} now), and a cache may hold its data \
         past the new end: give it its size back; if it was shrunk on purpose after bcache detach, record it as it is: \
         bcache tab identify {line}"
    )]
    Shrunk { dev: String, recorded: u64, now: String, line: String },
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Same,
    /// The same device, larger than recorded: this is its new size.
    Grown(u64),
}

/// Compares a device with its record, the parts that tell disks apart
/// first. The content's uuid is compared only for a device without a disk
/// id (a virtio disk with no serial): where a disk id says it is the same
/// disk, a file system remade through its bcache device is no reason to
/// keep it down.
pub fn check(entry: &Entry, recorded: &Identity, now: &Now) -> Result<Verdict, Mismatch> {
    let Some(sectors) = recorded.sectors else { return Ok(Verdict::Same) };
    let line = entry.name.clone().unwrap_or_else(|| entry.uuid.hyphenated().to_string());
    let dev = now.dev.display().to_string();
    let shown = |v: Option<String>| v.unwrap_or_else(|| "none".into());
    let other = |field, recorded: Option<String>, now: Option<String>| {
        Err(Mismatch::Other { dev: dev.clone(), field, recorded: shown(recorded), now: shown(now), line: line.clone() })
    };
    let disk = now.disk();
    if disk != recorded.disk {
        return other("disk", recorded.disk.as_ref().map(|d| d.to_string()), disk.map(|d| d.to_string()));
    }
    let partition = now.partition();
    if partition != recorded.partition {
        return other("partition number", recorded.partition.map(|p| p.to_string()), partition.map(|p| p.to_string()));
    }
    if let Some(have) = now.part_uuid() {
        if !same_text(&have, &recorded.part_uuid) {
            return other("PARTUUID", recorded.part_uuid.clone(), have);
        }
    }
    // Before the content: a shrunk device may have lost its file system's
    // signature with its end.
    let verdict = match now.sectors() {
        Some(s) if s == sectors => Verdict::Same,
        Some(s) if s > sectors => Verdict::Grown(s),
        s => return Err(Mismatch::Shrunk { dev, recorded: sectors, now: shown(s.map(|s| s.to_string())), line }),
    };
    if recorded.disk.is_none() {
        let have = now.fs_uuid();
        if !same_text(&have, &recorded.fs_uuid) {
            return other("file system uuid", recorded.fs_uuid.clone(), have);
        }
    }
    Ok(verdict)
}

/// Uuids compare in any case.
fn same_text(a: &Option<String>, b: &Option<String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// [`check`] of a line's device as a [`Resolver`] found it (`tab check`,
/// `tab list`): its probes serve the comparison too. A line without a
/// record, or a record without an identity, is accepted.
pub fn check_found(resolver: &Resolver, entry: &Entry, recorded: Option<&Identity>, dev: &Path) -> Result<Verdict, Mismatch> {
    let content = |d: &Path| resolver.content_uuid(d);
    check(entry, recorded.unwrap_or(&Identity::default()), &Now::new(dev, None, &content))
}

/// A device two lines name (each by a name of its own: the parse already
/// refuses one name written twice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate<'t> {
    pub first: &'t Entry,
    pub again: &'t Entry,
    pub device: PathBuf,
}

impl fmt::Display for Duplicate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is {}, which line {} names too (as {}): one device has one line (its cached data is kept under \
             one uuid); remove one of them",
            self.again.device,
            self.device.display(),
            self.first.line,
            self.first.device
        )
    }
}

/// The lines that name a device an earlier line names: a link and its
/// node, LABEL= and UUID= of one file system.
pub fn duplicates<'t>(tab: &'t Tab, resolver: &Resolver) -> Vec<Duplicate<'t>> {
    let mut seen: FxHashMap<PathBuf, &Entry> = FxHashMap::default();
    let mut out = Vec::new();
    for e in &tab.entries {
        let Some(dev) = resolver.resolve(&e.device) else { continue };
        match seen.get(&dev) {
            Some(first) => out.push(Duplicate { first, again: e, device: dev }),
            None => {
                seen.insert(dev, e);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn entry() -> Entry {
        Entry {
            line: 1,
            name: Some("d".into()),
            device: DeviceSpec::Path("/dev/vda".into()),
            uuid: Uuid::from_u128(1),
            cset: None,
            options: Default::default(),
        }
    }

    #[test]
    fn identities_round_trip_through_their_assignments() {
        let id = Identity {
            sectors: Some(2048),
            disk: Some(DiskId::Serial("QM 0001#x".into())),
            partition: Some(2),
            part_uuid: Some("1234abcd-02".into()),
            fs_uuid: None,
        };
        let mut back = Identity::default();
        for (k, v) in id.assignments() {
            assert!(!v.contains(' ') && !v.contains('#'), "{k}={v} would split a state line");
            back.assign(k, &v).unwrap();
        }
        assert_eq!(back, id);
        assert_eq!(id.to_string(), "sectors=2048,disk=serial:QM\\x200001\\x23x,partition=2,partuuid=1234abcd-02");
        assert!(Identity::default().assign("disk", "floppy:1").is_err());
        assert!(Identity::default().assign("sectors", "-1").is_err());
    }

    #[test]
    fn one_device_is_one_disk_and_partition_or_one_partuuid() {
        let disk = |s: &str, p: Option<u32>| Identity {
            sectors: Some(8),
            disk: Some(DiskId::Serial(s.into())),
            partition: p,
            ..Identity::default()
        };
        assert!(disk("a", Some(1)).same_device(&disk("a", Some(1))));
        assert!(!disk("a", Some(1)).same_device(&disk("a", Some(2))), "two partitions of one disk");
        assert!(!disk("a", None).same_device(&disk("b", None)));
        let part = |u: &str| Identity { sectors: Some(8), part_uuid: Some(u.into()), ..Identity::default() };
        assert!(part("ab-01").same_device(&part("AB-01")));
        let content = |u: &str| Identity { sectors: Some(8), fs_uuid: Some(u.into()), ..Identity::default() };
        assert!(!content("x").same_device(&content("x")), "a copy of a disk is another device");
    }

    /// Finding: two disks with no serial, no PARTUUID, no file system and
    /// one size have the same identity: it tells neither from the other.
    #[test]
    fn blank_identities_of_one_size_are_not_the_same_device_but_indistinguishable() {
        let blank = |sectors| Identity { sectors: Some(sectors), ..Identity::default() };
        assert!(blank(8).is_blank() && !Identity::default().is_blank(), "an identity not recorded is not blank");
        assert!(!blank(8).same_device(&blank(8)), "a size proves nothing");
        assert!(blank(8).indistinguishable(&blank(8)));
        assert!(!blank(8).indistinguishable(&blank(16)), "told apart by their sizes");
        let part = |p| Identity { partition: Some(p), ..blank(8) };
        assert!(!part(1).indistinguishable(&part(2)));
        for id in [
            Identity { disk: Some(DiskId::Serial("a".into())), ..blank(8) },
            Identity { part_uuid: Some("ab-01".into()), ..blank(8) },
            Identity { fs_uuid: Some("f".into()), ..blank(8) },
        ] {
            assert!(!id.is_blank() && !id.indistinguishable(&id.clone()), "{id}");
        }
        // A blank record still accepts a blank device of its size: only
        // the size can be compared (adopt refuses such a writeback device
        // unless forced).
        let dir = tempfile::tempdir().unwrap();
        let sys = fake_sys("", 4096, 2048);
        let content = |_: &Path| None;
        let now = Now::with_sys(dir.path().join("vdb"), Some(sys.path().join("vdb")), None, &content);
        assert!(now.identity().is_blank(), "{}", now.identity());
        assert_eq!(check(&entry(), &blank(4096), &now), Ok(Verdict::Same));
    }

    #[test]
    fn a_second_record_merges_only_a_larger_size() {
        let a = Identity { sectors: Some(8), disk: Some(DiskId::Wwid("naa.5".into())), ..Identity::default() };
        let mut m = a.clone();
        m.merge(Identity { sectors: Some(16), ..a.clone() }).unwrap();
        assert_eq!(m.sectors, Some(16));
        m.merge(Identity::default()).unwrap();
        assert_eq!(m.sectors, Some(16));
        let e = m.merge(Identity { disk: Some(DiskId::Wwid("naa.6".into())), ..a.clone() }).unwrap_err();
        assert!(e.contains("disk=wwid:naa.5") && e.contains("disk=wwid:naa.6"), "{e}");
        let mut empty = Identity::default();
        empty.merge(a.clone()).unwrap();
        assert_eq!(empty, a);
    }

    /// A regular file stands for the device: no sysfs directory, so the
    /// disk, partition and size read as none.
    fn now_of_file<'a>(file: &Path, content: &'a dyn Fn(&Path) -> Option<String>) -> Now<'a> {
        Now::new(file, None, content)
    }

    #[test]
    fn identity_check_names_the_field_the_old_value_and_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        fs::write(&file, b"").unwrap();
        let content = |_: &Path| Some("aaaa".to_owned());
        let now = now_of_file(&file, &content);
        // No identity recorded (an older state file): accepted.
        assert_eq!(check(&entry(), &Identity::default(), &now), Ok(Verdict::Same));
        let serial = Identity { sectors: Some(8), disk: Some(DiskId::Serial("disk-a".into())), ..Identity::default() };
        let e = check(&entry(), &serial, &now).unwrap_err().to_string();
        assert!(
            e.contains("its disk was serial:disk-a when adopted and is none now") && e.contains("bcache tab identify --force d"),
            "{e}"
        );
        let sized = Identity { sectors: Some(8), ..Identity::default() };
        let e = check(&entry(), &sized, &now).unwrap_err().to_string();
        assert!(e.contains("smaller than when it was adopted (8 sectors then, none now)"), "{e}");
    }

    /// A sysfs tree of a disk with a serial (or none) and one partition.
    fn fake_sys(serial: &str, disk_sectors: u64, part_sectors: u64) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("vdb");
        fs::create_dir_all(disk.join("vdb1")).unwrap();
        fs::write(disk.join("serial"), format!("{serial}\n")).unwrap();
        fs::write(disk.join("size"), format!("{disk_sectors}\n")).unwrap();
        fs::write(disk.join("vdb1/partition"), "1\n").unwrap();
        fs::write(disk.join("vdb1/size"), format!("{part_sectors}\n")).unwrap();
        dir
    }

    #[test]
    fn sysfs_names_the_disk_of_a_partition_and_its_number() {
        let sys = fake_sys("disk-b", 4096, 2048);
        let content = |_: &Path| None;
        let part = Now::with_sys("/no-such/vdb1".into(), Some(sys.path().join("vdb/vdb1")), None, &content);
        let id = part.identity();
        assert_eq!((id.sectors, id.disk, id.partition), (Some(2048), Some(DiskId::Serial("disk-b".into())), Some(1)));
        // No link says its PARTUUID: a partition's is unknown, not none.
        assert_eq!(part.part_uuid(), None);
        let disk = Now::with_sys("/no-such/vdb".into(), Some(sys.path().join("vdb")), None, &content);
        assert_eq!((disk.partition(), disk.part_uuid()), (None, Some(None)));
        let blank = fake_sys("", 4096, 2048);
        let no_serial = Now::with_sys("/no-such/vdb".into(), Some(blank.path().join("vdb")), None, &content);
        assert_eq!(no_serial.disk(), None, "an empty serial is no serial");
    }

    /// Finding: the disk behind a kernel name changes when disks are found
    /// in another order; so does its serial, which refuses it.
    #[test]
    fn another_disk_under_the_same_name_is_refused_and_a_grown_one_accepted() {
        let sys = fake_sys("disk-d", 4096, 2048);
        let content = |_: &Path| Some("ffff".to_owned());
        let now = Now::with_sys("/no-such/vdb".into(), Some(sys.path().join("vdb")), None, &content);
        let c = Identity { sectors: Some(4096), disk: Some(DiskId::Serial("disk-c".into())), ..Identity::default() };
        let e = check(&entry(), &c, &now).unwrap_err().to_string();
        assert!(e.starts_with("/no-such/vdb is not the device adopted for this line: its disk was serial:disk-c when adopted and is serial:disk-d now"), "{e}");
        // The same disk: its content is not compared (remade through bcache).
        let d = Identity { disk: Some(DiskId::Serial("disk-d".into())), fs_uuid: Some("aaaa".into()), ..c.clone() };
        assert_eq!(check(&entry(), &d, &now), Ok(Verdict::Same));
        assert_eq!(check(&entry(), &Identity { sectors: Some(4000), ..d.clone() }, &now), Ok(Verdict::Grown(4096)));
        let e = check(&entry(), &Identity { sectors: Some(5000), ..d }, &now).unwrap_err().to_string();
        assert!(e.contains("(5000 sectors then, 4096 now)"), "{e}");
        // Without a disk id the content decides, in any case.
        let blank = fake_sys("", 4096, 2048);
        let now = Now::with_sys("/no-such/vdb".into(), Some(blank.path().join("vdb")), None, &content);
        let by_content = Identity { sectors: Some(4096), fs_uuid: Some("eeee".into()), ..Identity::default() };
        let e = check(&entry(), &by_content, &now).unwrap_err().to_string();
        assert!(e.contains("its file system uuid was eeee when adopted and is ffff now"), "{e}");
        assert_eq!(check(&entry(), &Identity { fs_uuid: Some("FFFF".into()), ..by_content }, &now), Ok(Verdict::Same));
        // A partition where a whole disk was adopted.
        let part = Now::with_sys("/no-such/vdb1".into(), Some(sys.path().join("vdb/vdb1")), None, &content);
        let whole = Identity { sectors: Some(2048), disk: Some(DiskId::Serial("disk-d".into())), ..Identity::default() };
        let e = check(&entry(), &whole, &part).unwrap_err().to_string();
        assert!(e.contains("its partition number was none when adopted and is 1 now"), "{e}");
    }

    #[test]
    fn udev_properties_of_the_device_are_used_and_those_of_another_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        fs::write(&file, b"").unwrap();
        let probed = std::cell::Cell::new(0);
        let content = |_: &Path| {
            probed.set(probed.get() + 1);
            Some("probed".to_owned())
        };
        let mine = DeviceIds {
            devname: Some(file.display().to_string()),
            fs_uuid: Some("from-udev".into()),
            part_uuid: Some("ab-01".into()),
            ..DeviceIds::default()
        };
        let now = Now::new(&file, Some(&mine), &content);
        assert_eq!(now.fs_uuid().as_deref(), Some("from-udev"));
        assert_eq!(now.part_uuid(), Some(Some("ab-01".into())));
        assert_eq!(probed.get(), 0, "probed although udev said");
        let theirs = DeviceIds { devname: Some("/dev/other".into()), ..mine.clone() };
        let now = Now::new(&file, Some(&theirs), &content);
        assert_eq!(now.fs_uuid().as_deref(), Some("probed"));
        assert_eq!(now.fs_uuid().as_deref(), Some("probed"));
        assert_eq!(probed.get(), 1, "probed twice");
        // udev's silence is confirmed by a probe.
        let silent = DeviceIds { fs_uuid: None, ..mine };
        assert_eq!(Now::new(&file, Some(&silent), &content).fs_uuid().as_deref(), Some("probed"));
    }

    #[test]
    fn a_resolver_probes_each_device_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        fs::write(&file, vec![0u8; 1 << 16]).unwrap();
        let r = Resolver::default();
        assert_eq!(r.content_uuid(&file), None);
        assert_eq!(r.probed.borrow().len(), 1);
        assert_eq!(r.content_uuid(&file), None);
        assert_eq!(r.probed.borrow().len(), 1);
    }
}
