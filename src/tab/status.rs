//! What the kernel shows of a bcachetab device now.

use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::device::{Access, Device};
use crate::layout::header;
use crate::superblock::{BdevState, CacheMode};
use crate::sysfs::{Registered, Sysfs};
use crate::tab::env::Env;
use crate::tab::file::Entry;
use crate::tab::identity::Resolver;
use crate::tab::records::State;
use crate::tab::rules;

/// A device's live status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// No device matches the line.
    Missing,
    /// Present, not registered.
    Down { device: String },
    /// Running as /dev/bcacheN; `without_set` when its line names a set
    /// and it runs attached to none ([`running_without_set`]).
    Up {
        device: String,
        bcache: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        without_set: Option<WithoutSet>,
    },
    /// Registered, waiting for its cache set.
    Waiting { device: String, set: Option<Uuid>, dirty: bool },
}

/// A device running without the cache set its line names.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WithoutSet {
    pub set: Uuid,
    pub mark: Mark,
}

/// What its record does about the set's data for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// Marked stale: the set's data for it is dropped at its next attach.
    Stale,
    /// The record says the set may hold a slot for it, but has no stale
    /// mark (not recorded yet, or the state file could not be written):
    /// the next registration may give it the set's old data.
    Unmarked,
    /// Nothing of the set's to drop: it attaches afresh.
    Afresh,
}

impl std::fmt::Display for WithoutSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = self.set;
        match self.mark {
            Mark::Stale => write!(
                f,
                "running without cache set {set}: the set's data for it is dropped at its next attach (marked stale)"
            ),
            Mark::Unmarked => write!(
                f,
                "running without cache set {set}, not marked stale: its next registration may give it the set's \
                 old data; bcache tab check records the mark, or says why it cannot"
            ),
            Mark::Afresh => write!(f, "running without cache set {set}: it attaches to it afresh"),
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Missing => f.write_str("missing: no device matches"),
            Status::Down { .. } => f.write_str("down"),
            Status::Up { bcache, without_set: None, .. } => write!(f, "up: {bcache}"),
            Status::Up { bcache, without_set: Some(w), .. } => write!(f, "up: {bcache}, {w}"),
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

/// The device registered for an entry, if any: the device itself (raw),
/// or the dm device of its header.
pub(crate) fn registered_as(env: &Env, entry: &Entry, dev: &Device) -> Option<(PathBuf, u64)> {
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

/// The cache set a registered backing device is attached to, from its
/// `cache` link.
pub fn attached_set(dir: &Path) -> Option<Uuid> {
    fs::read_link(dir.join("cache")).ok()?.file_name()?.to_str()?.parse().ok()
}

/// The set a running device's line names and the state the kernel shows
/// for it, when it runs without that set: no `cache` link, and its
/// superblock as the kernel holds it says no set (none) or run without
/// one (stale), or clean while the set is not registered at all: a set
/// that failed with I/O errors detaches a clean device and keeps it
/// running (stop_when_cache_set_failed=auto), its slot's invalidation
/// never reaching the failed cache, which may hold the device's old
/// blocks when it comes back. The kernel's attach writes clean or dirty
/// before it links the set (which is registered then), and a set's stop
/// unlinks it before its directory goes (the device's own goes first):
/// neither window counts. A device attached to another set is not this
/// (its registration is refused).
pub(crate) fn running_without_set(sysfs: &Sysfs, entry: &Entry, dir: &Path) -> Option<(Uuid, BdevState)> {
    let set = entry.cset?;
    let read = |attr: &str| fs::read_to_string(dir.join(attr)).map(|s| s.trim().to_owned()).ok();
    if read("running").as_deref() != Some("1") || fs::symlink_metadata(dir.join("cache")).is_ok() {
        return None;
    }
    // The kernel's names for the superblock states (sysfs.c).
    let shown = match read("state")?.as_str() {
        "no cache" => BdevState::None,
        "inconsistent" => BdevState::Stale,
        "clean" if sysfs.set_dir(&set).is_err() => BdevState::Clean,
        _ => return None,
    };
    Some((set, shown))
}

/// The live status of a line's device.
pub fn status(env: &Env, resolver: &Resolver, entry: &Entry) -> Status {
    live(env, resolver, entry).0
}

/// The status, and the sysfs directory of the registered device.
pub(crate) fn live(env: &Env, resolver: &Resolver, entry: &Entry) -> (Status, Option<PathBuf>) {
    match resolver.resolve(&entry.device) {
        Some(path) => live_at(env, entry, &path),
        None => (Status::Missing, None),
    }
}

/// [`live`] for the line's device, found at `path`.
pub(crate) fn live_at(env: &Env, entry: &Entry, path: &Path) -> (Status, Option<PathBuf>) {
    let device = path.to_string_lossy().into_owned();
    let dir = Device::open(path, Access::Read)
        .ok()
        .and_then(|dev| registered_as(env, entry, &dev))
        .and_then(|(_, rdev)| env.sysfs.backing_dir(&device, rdev).ok());
    let Some(dir) = dir else { return (Status::Down { device }, None) };
    (registered_status(env, entry, device, &dir), Some(dir))
}

/// The status of a line's device registered with sysfs directory `dir`.
fn registered_status(env: &Env, entry: &Entry, device: String, dir: &Path) -> Status {
    let read = |attr: &str| fs::read_to_string(dir.join(attr)).map(|s| s.trim().to_owned()).ok();
    // The bcache disk is the directory `dev` links to, once it runs.
    let bcache = fs::read_link(dir.join("dev"))
        .ok()
        .and_then(|l| Some(format!("/dev/{}", l.file_name()?.to_str()?)));
    match (read("running").as_deref(), bcache) {
        (Some("1"), Some(bcache)) => {
            let without_set = running_without_set(&env.sysfs, entry, dir).map(|(set, shown)| {
                // A state file that cannot be read proves nothing.
                let mark = match State::load(&env.state).map(|s| s.get(&entry.uuid).cloned().unwrap_or_default()) {
                    Ok(r) if r.stale => Mark::Stale,
                    Ok(r) if !rules::needs_stale_mark(&r, shown) => Mark::Afresh,
                    _ => Mark::Unmarked,
                };
                WithoutSet { set, mark }
            });
            Status::Up { device, bcache, without_set }
        }
        _ => Status::Waiting {
            device,
            set: entry.cset,
            dirty: read("state").as_deref() == Some("dirty") || entry.options.mode == CacheMode::Writeback,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tab::file::{DeviceSpec, Options};
    use crate::tab::records::Record;

    const SET: Uuid = Uuid::from_u128(9);

    /// A registered backing device's sysfs directory, running as bcache0,
    /// its line naming SET, its record attached to SET.
    fn fixture(root: &Path) -> (Env, Entry, PathBuf) {
        let env = Env { state: root.join("state"), journal: root.join("journal"), sysfs: Sysfs::with_root(root), ..Env::default() };
        // The module, and SET registered.
        fs::create_dir_all(root.join("sys/fs/bcache").join(SET.to_string())).unwrap();
        fs::write(root.join("sys/fs/bcache/register"), "").unwrap();
        let entry = Entry {
            line: 1,
            name: None,
            device: DeviceSpec::Path("/dev/vda".into()),
            uuid: Uuid::from_u128(1),
            cset: Some(SET),
            options: Options { mode: CacheMode::Writeback, ..Options::default() },
        };
        let dir = root.join("sys/block/vda/bcache");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("running"), "1\n").unwrap();
        std::os::unix::fs::symlink("../../bcache0", dir.join("dev")).unwrap();
        env.store().update(entry.uuid, "a test", |r| *r = Record { attached: Some(SET), ..Record::default() }).unwrap();
        (env, entry, dir)
    }

    fn up(env: &Env, entry: &Entry, dir: &Path) -> Status {
        registered_status(env, entry, "/dev/vda".into(), dir)
    }

    #[test]
    fn a_device_running_without_its_lines_set_says_so_and_what_its_record_does_about_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (env, entry, dir) = fixture(tmp.path());
        let state = |s: &str| fs::write(dir.join("state"), format!("{s}\n")).unwrap();
        let link = || std::os::unix::fs::symlink(format!("../../../fs/bcache/{SET}"), dir.join("cache")).unwrap();
        // Attached: plain up.
        state("dirty");
        link();
        assert_eq!(up(&env, &entry, &dir).to_string(), "up: /dev/bcache0");
        // The kernel's attach runs the device before it links the set, and
        // a set's stop unlinks it before the directory goes: clean or dirty
        // without the link is neither.
        fs::remove_file(dir.join("cache")).unwrap();
        for s in ["clean", "dirty"] {
            state(s);
            assert_eq!(running_without_set(&env.sysfs, &entry, &dir), None, "{s}");
        }
        // Clean without the link and without the set: a set that failed
        // with I/O errors kept its clean device running, detached.
        let set_dir = tmp.path().join("sys/fs/bcache").join(SET.to_string());
        fs::remove_dir(&set_dir).unwrap();
        state("clean");
        assert_eq!(running_without_set(&env.sysfs, &entry, &dir), Some((SET, BdevState::Clean)));
        assert!(rules::needs_stale_mark(&Record { attached: Some(SET), ..Record::default() }, BdevState::Clean));
        // A failed set stops a dirty device: dirty and running is an attach.
        state("dirty");
        assert_eq!(running_without_set(&env.sysfs, &entry, &dir), None);
        fs::create_dir(&set_dir).unwrap();
        // Registered by hand with state none, or run without it (stale).
        state("no cache");
        assert_eq!(running_without_set(&env.sysfs, &entry, &dir), Some((SET, BdevState::None)));
        let shown = up(&env, &entry, &dir);
        assert!(matches!(&shown, Status::Up { without_set: Some(WithoutSet { mark: Mark::Unmarked, .. }), .. }), "{shown:?}");
        assert!(shown.to_string().starts_with("up: /dev/bcache0, running without cache set"), "{shown}");
        state("inconsistent");
        assert_eq!(running_without_set(&env.sysfs, &entry, &dir), Some((SET, BdevState::Stale)));
        env.store().update(entry.uuid, "a test", |r| seen_running(r, BdevState::Stale)).unwrap();
        let shown = up(&env, &entry, &dir).to_string();
        assert_eq!(
            shown,
            format!("up: /dev/bcache0, running without cache set {SET}: the set's data for it is dropped at its next attach (marked stale)")
        );
        let json = serde_json::to_value(up(&env, &entry, &dir)).unwrap();
        assert_eq!(json["status"], "up");
        assert_eq!(json["without_set"], serde_json::json!({ "set": SET.to_string(), "mark": "stale" }));
        // Waiting (not running) is not running without the set.
        fs::write(dir.join("running"), "0\n").unwrap();
        assert_eq!(running_without_set(&env.sysfs, &entry, &dir), None);
        assert!(matches!(up(&env, &entry, &dir), Status::Waiting { .. }));
        fs::write(dir.join("running"), "1\n").unwrap();
        // A line naming no set: never.
        let no_set = Entry { cset: None, ..entry.clone() };
        assert_eq!(running_without_set(&env.sysfs, &no_set, &dir), None);
        assert_eq!(up(&env, &no_set, &dir).to_string(), "up: /dev/bcache0");
        assert!(serde_json::to_value(up(&env, &no_set, &dir)).unwrap().get("without_set").is_none());
    }

    #[test]
    fn an_adopted_new_device_up_before_its_set_is_not_marked() {
        let tmp = tempfile::tempdir().unwrap();
        let (env, entry, dir) = fixture(tmp.path());
        fs::write(dir.join("state"), "no cache\n").unwrap();
        // Registered by us with state none, the attach written ahead.
        env.store().update(entry.uuid, "a test", |r| r.pending = true).unwrap();
        let shown = up(&env, &entry, &dir);
        assert!(matches!(&shown, Status::Up { without_set: Some(WithoutSet { mark: Mark::Afresh, .. }), .. }), "{shown:?}");
        assert_eq!(shown.to_string(), format!("up: /dev/bcache0, running without cache set {SET}: it attaches to it afresh"));
    }

    fn seen_running(r: &mut Record, shown: BdevState) {
        rules::seen_running_without_set(r, shown)
    }
}
