//! The bcache driver's sysfs interface: registering devices, attaching and
//! detaching them, and reading their state.
//!
//! Every path is taken relative to a root (normally `/`), so unit tests can
//! run against a fake tree; the real kernel is tested in the VM.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::os_error_text;

/// Failures talking to the kernel, with the reason in the words an
/// operator needs.
#[derive(Debug, thiserror::Error)]
pub enum SysfsError {
    #[error("the bcache module is not loaded (no {0}); run: modprobe bcache")]
    NotLoaded(PathBuf),
    #[error("{dev}: already registered")]
    AlreadyRegistered { dev: String },
    #[error("{dev}: device is busy (held by another driver or opened exclusively)")]
    Busy { dev: String },
    #[error("{dev}: the kernel refused it: {reason}")]
    Refused { dev: String, reason: String },
    #[error("{dev}: {what} failed: {}", os_error_text(.error))]
    Write { dev: String, what: String, error: io::Error },
    #[error("{dev}: not registered with bcache (no {path})")]
    NotRegistered { dev: String, path: PathBuf },
    #[error("this kernel's bcache module has no register_raw (build and load kernel/'s module: kernel/build.sh)")]
    NoRegisterRaw,
    #[error("no cache set {0} is registered")]
    NoSuchSet(Uuid),
    #[error("{}: {}", .0.display(), os_error_text(.1))]
    Io(PathBuf, io::Error),
}

/// The kernel's sysfs as seen from a root directory.
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs { root: PathBuf::from("/") }
    }
}

/// What a registered block device is to bcache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A backing device; the directory is `/sys/block/<dev>/bcache`.
    Backing(PathBuf),
    /// A cache device, member of the set.
    Cache { dir: PathBuf, set: Option<Uuid> },
}

impl Sysfs {
    pub fn with_root(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// `/sys/fs/bcache`, or an error telling how to load the module.
    pub fn bcache_dir(&self) -> Result<PathBuf, SysfsError> {
        let dir = self.path("sys/fs/bcache");
        if dir.join("register").exists() {
            Ok(dir)
        } else {
            Err(SysfsError::NotLoaded(dir))
        }
    }

    pub fn set_dir(&self, set: &Uuid) -> Result<PathBuf, SysfsError> {
        let dir = self.bcache_dir()?.join(set.hyphenated().to_string());
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(SysfsError::NoSuchSet(*set))
        }
    }

    /// The sysfs directory of a block device from its device number:
    /// `/sys/dev/block/MAJ:MIN`.
    pub fn block_dir(&self, rdev: u64) -> PathBuf {
        let (maj, min) = (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev));
        self.path(&format!("sys/dev/block/{maj}:{min}"))
    }

    /// Registers a device with `/sys/fs/bcache/register`, or with
    /// `register_quiet` (which the kernel answers with success for a device
    /// already registered, as udev wants). The kernel's reason for a
    /// refusal is read from the kernel log (`kmsg`) when it can be.
    pub fn register(&self, dev: &str, quiet: bool) -> Result<(), SysfsError> {
        let attr = if quiet { "register_quiet" } else { "register" };
        self.write_explained(dev, attr, dev, register_error_reason)
    }

    /// Registers a backing device without a superblock through the
    /// register_raw interface of the patched module (kernel/).
    pub fn register_raw(&self, dev: &str, line: &str) -> Result<(), SysfsError> {
        if !self.bcache_dir()?.join("register_raw").exists() {
            return Err(SysfsError::NoRegisterRaw);
        }
        self.write_explained(dev, "register_raw", line, register_raw_error_reason)
    }

    /// Writes a /sys/fs/bcache attribute, and on failure finds the
    /// kernel's reason in the log with `reason`.
    fn write_explained(
        &self,
        dev: &str,
        attr: &str,
        value: &str,
        reason: fn(&str) -> Option<&str>,
    ) -> Result<(), SysfsError> {
        let file = self.bcache_dir()?.join(attr);
        let kmsg = KmsgTail::open(&self.path("dev/kmsg"));
        write_attr(&file, value).map_err(|e| {
            let why = kmsg.and_then(|k| k.find(reason));
            match (e.raw_os_error(), why.as_deref()) {
                (_, Some("device already registered")) => {
                    SysfsError::AlreadyRegistered { dev: dev.to_owned() }
                }
                (_, Some("device busy")) => SysfsError::Busy { dev: dev.to_owned() },
                (Some(nix::libc::EBUSY), None) => SysfsError::Busy { dev: dev.to_owned() },
                (_, Some(r)) => SysfsError::Refused { dev: dev.to_owned(), reason: r.to_owned() },
                (_, None) => SysfsError::Write { dev: dev.to_owned(), what: attr.into(), error: e },
            }
        })
    }

    /// What bcache holds this device as, if anything.
    pub fn registered(&self, rdev: u64) -> Option<Registered> {
        let dir = self.block_dir(rdev).join("bcache");
        if !dir.is_dir() {
            return None;
        }
        if dir.join("running").exists() {
            return Some(Registered::Backing(dir));
        }
        let set = fs::read_link(dir.join("set"))
            .ok()
            .and_then(|l| l.file_name()?.to_str()?.parse().ok());
        Some(Registered::Cache { dir, set })
    }

    /// The backing device directory of a registered backing device.
    pub fn backing_dir(&self, dev: &str, rdev: u64) -> Result<PathBuf, SysfsError> {
        match self.registered(rdev) {
            Some(Registered::Backing(dir)) => Ok(dir),
            Some(Registered::Cache { .. }) => Err(SysfsError::Refused {
                dev: dev.to_owned(),
                reason: "this is a cache device, not a backing device".into(),
            }),
            None => Err(SysfsError::NotRegistered {
                dev: dev.to_owned(),
                path: self.block_dir(rdev).join("bcache"),
            }),
        }
    }

    /// Writes one attribute, naming `dev` and the action on failure.
    pub fn write(&self, dev: &str, file: &Path, value: &str) -> Result<(), SysfsError> {
        write_attr(file, value).map_err(|error| SysfsError::Write {
            dev: dev.to_owned(),
            what: format!("writing '{value}' to {}", file.display()),
            error,
        })
    }

    pub fn read(&self, file: &Path) -> Result<String, SysfsError> {
        fs::read_to_string(file)
            .map(|s| s.trim_end_matches('\n').to_owned())
            .map_err(|e| SysfsError::Io(file.to_owned(), e))
    }

    /// Zone size in sectors of a zoned block device, `None` when the device
    /// is not zoned (or not a block device sysfs knows).
    pub fn zone_sectors(&self, rdev: u64) -> Option<u64> {
        let mut dir = self.block_dir(rdev);
        if dir.join("partition").exists() {
            dir = dir.join("..");
        }
        let zoned = fs::read_to_string(dir.join("queue/zoned")).ok()?;
        if zoned.trim() == "none" {
            return None;
        }
        fs::read_to_string(dir.join("queue/chunk_sectors")).ok()?.trim().parse().ok()
    }
}

/// Writes a sysfs attribute in one `write(2)`, as the kernel expects.
fn write_attr(file: &Path, value: &str) -> io::Result<()> {
    let mut f = fs::OpenOptions::new().write(true).open(file)?;
    let mut line = value.to_owned();
    line.push('\n');
    f.write_all(line.as_bytes())
}

/// The kernel log from a point on, to find what the kernel said about an
/// operation just performed.
struct KmsgTail(fs::File);

impl KmsgTail {
    fn open(path: &Path) -> Option<KmsgTail> {
        use std::io::Seek;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(path)
            .ok()?;
        f.seek(io::SeekFrom::End(0)).ok()?;
        Some(KmsgTail(f))
    }

    /// The last reason `reason` finds in the records logged since
    /// `open`: the write that provoked it was ours, just before.
    fn find(mut self, reason: fn(&str) -> Option<&str>) -> Option<String> {
        use std::io::Read;
        let mut buf = vec![0u8; 8192];
        let mut found = None;
        // Each read returns one record; EAGAIN marks the end of the log.
        while let Ok(n) = self.0.read(&mut buf) {
            if n == 0 {
                break;
            }
            let rec = String::from_utf8_lossy(&buf[..n]);
            let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
            if let Some(r) = reason(msg.lines().next().unwrap_or("")) {
                found = Some(r.to_owned());
            }
        }
        found
    }
}

/// The reason of a "bcache: register_bcache() error DEV: REASON" message.
/// Kernels from 6.x print the path as empty (they free it first).
pub fn register_error_reason(msg: &str) -> Option<&str> {
    let (_, rest) = msg.split_once("register_bcache() error ")?;
    Some(rest.split_once(": ")?.1.trim())
}

/// The reason of a "bcache: register_raw() register_raw: REASON" message.
pub fn register_raw_error_reason(msg: &str) -> Option<&str> {
    Some(msg.split_once("register_raw: ")?.1.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_module_says_how_to_load_it() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Sysfs::with_root(tmp.path()).register("/dev/x", false).unwrap_err();
        assert!(err.to_string().contains("modprobe bcache"), "{err}");
    }

    #[test]
    fn register_errors_are_read_with_or_without_the_path() {
        let r = |m| register_error_reason(m);
        assert_eq!(r("bcache: register_bcache() error : Bad UUID"), Some("Bad UUID"));
        assert_eq!(r("bcache: register_bcache() error /dev/sdb: device busy"), Some("device busy"));
        assert_eq!(r("bcache: bch_cached_dev_attach() Couldn't find uuid"), None);
    }
}
