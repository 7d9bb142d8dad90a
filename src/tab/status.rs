//! What the kernel shows of a bcachetab device now.

use std::fs;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::device::{Access, Device};
use crate::layout::header;
use crate::superblock::CacheMode;
use crate::sysfs::Registered;
use crate::tab::env::Env;
use crate::tab::file::Entry;
use crate::tab::identity::Resolver;

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
