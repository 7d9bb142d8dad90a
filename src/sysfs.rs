//! The bcache driver's sysfs interface: registering devices, attaching and
//! detaching them, and reading their state.
//!
//! Every path is taken relative to a root (normally `/`), so unit tests can
//! run against a fake tree; the real kernel is tested in the VM.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
    #[error("{dev}: {why}")]
    NotReleased { dev: String, why: String },
    #[error("{}: {}", .0.display(), os_error_text(.1))]
    Io(PathBuf, io::Error),
}

/// How long a stop or unregister waits for the kernel to let go: the
/// sysfs write only queues the teardown, which finishes in kernel workers
/// (and, for a cache set, after its backing devices have detached), slow
/// under TCG or load.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a cache set is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetAction {
    /// `stop`: the set and the backing devices attached to it stop.
    Stop,
    /// `unregister`: the set stops; its backing devices are detached and
    /// stay registered.
    Unregister,
}

impl SetAction {
    pub fn attr(self) -> &'static str {
        match self {
            SetAction::Stop => "stop",
            SetAction::Unregister => "unregister",
        }
    }
}

/// A device a stop must see released: its bcache directory gone, and its
/// node (when known) openable exclusively, which is what `register` and
/// `make` need.
#[derive(Debug, Clone)]
struct Member {
    dir: PathBuf,
    node: Option<PathBuf>,
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

    /// Stops what bcache holds on `dev` and returns once the kernel has let
    /// go of it: a backing device is stopped, a cache device's set gets
    /// `action`.
    pub fn release(&self, dev: &Path, reg: &Registered, action: SetAction) -> Result<(), SysfsError> {
        self.release_within(dev, reg, action, RELEASE_TIMEOUT)
    }

    fn release_within(
        &self,
        dev: &Path,
        reg: &Registered,
        action: SetAction,
        timeout: Duration,
    ) -> Result<(), SysfsError> {
        let name = dev.display().to_string();
        let given = |dir: &Path| Member { dir: dir.to_owned(), node: Some(dev.to_owned()) };
        match reg {
            Registered::Backing(dir) => {
                self.write(&name, &dir.join("stop"), "1")?;
                self.wait_released(&name, "stop", None, &[given(dir)], timeout)
            }
            Registered::Cache { set: Some(set), dir } => {
                self.release_set_within(&name, set, action, Some(given(dir)), timeout)
            }
            Registered::Cache { set: None, dir } => Err(SysfsError::Refused {
                dev: name,
                reason: format!(
                    "a cache device without a cache set ({} has no set link): its set is still \
                     starting or stopping; try again in a moment",
                    dir.display()
                ),
            }),
        }
    }

    /// Stops or unregisters a cache set and returns once the kernel has
    /// let go of its cache devices (and, for `stop`, of its backing
    /// devices).
    pub fn release_set(&self, set: &Uuid, action: SetAction) -> Result<(), SysfsError> {
        self.release_set_within(&set.hyphenated().to_string(), set, action, None, RELEASE_TIMEOUT)
    }

    fn release_set_within(
        &self,
        name: &str,
        set: &Uuid,
        action: SetAction,
        given: Option<Member>,
        timeout: Duration,
    ) -> Result<(), SysfsError> {
        let dir = self.set_dir(set)?;
        // Read before the write: the links go with the set.
        let mut members = self.set_members(&dir, action == SetAction::Stop);
        members.extend(given);
        self.write(name, &dir.join(action.attr()), "1")?;
        self.wait_released(name, action.attr(), Some((set, &dir)), &members, timeout)
    }

    /// The cache devices of a set (and its backing devices with
    /// `backing`), from its `cacheN` and `bdevN` links.
    fn set_members(&self, set_dir: &Path, backing: bool) -> Vec<Member> {
        let Ok(entries) = fs::read_dir(set_dir) else { return Vec::new() };
        let mut members = Vec::new();
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(file) = file.to_str() else { continue };
            let numbered = |prefix: &str| {
                file.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            };
            if !(numbered("cache") || backing && numbered("bdev")) {
                continue;
            }
            // The link leads to BLOCKDEV/bcache; BLOCKDEV/uevent names the node.
            let Ok(dir) = fs::canonicalize(e.path()) else { continue };
            let node = dir
                .parent()
                .and_then(|blk| fs::read_to_string(blk.join("uevent")).ok())
                .and_then(|u| u.lines().find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_owned)))
                .map(|n| self.path(&format!("dev/{n}")));
            members.push(Member { dir, node });
        }
        members
    }

    /// Polls, with a short backoff, until the set directory and every
    /// member's bcache directory are gone and every member opens
    /// exclusively; or fails naming what is still held after `timeout`.
    fn wait_released(
        &self,
        name: &str,
        action: &str,
        set: Option<(&Uuid, &Path)>,
        members: &[Member],
        timeout: Duration,
    ) -> Result<(), SysfsError> {
        let start = Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            let Some(held) = still_held(set, members) else { return Ok(()) };
            if start.elapsed() >= timeout {
                let secs = timeout.as_secs();
                return Err(SysfsError::NotReleased { dev: name.to_owned(), why: held.explain(name, action, secs) });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
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
        // Zero would divide by zero in the alignment checks; no zoned
        // device reports it, but a fake or broken sysfs could.
        fs::read_to_string(dir.join("queue/chunk_sectors")).ok()?.trim().parse().ok().filter(|&z| z > 0)
    }
}

/// What the kernel still holds after a stop.
#[derive(Debug, PartialEq, Eq)]
enum Held {
    Set(Uuid),
    Dir(PathBuf),
    Open(PathBuf),
}

impl Held {
    fn explain(&self, dev: &str, action: &str, secs: u64) -> String {
        match self {
            Held::Set(set) => format!(
                "cache set {set} still registered {secs} s after '{action}': its backing devices \
                 may still be writing back dirty data (see their bcache/dirty_data), or a flash \
                 volume is open; wait for them, then check /sys/fs/bcache/{set}"
            ),
            Held::Dir(dir) => format!(
                "still registered with bcache ({} exists) {secs} s after '{action}': if its \
                 /dev/bcacheN is mounted or open, unmount or close it and the kernel finishes",
                dir.display()
            ),
            Held::Open(node) => {
                let node = node.display().to_string();
                let which = if node == dev { String::new() } else { format!("{node} ") };
                format!(
                    "{which}still open exclusively {secs} s after '{action}': by bcache while its \
                     /dev/bcacheN is mounted or open (unmount or close it, and the kernel finishes \
                     the {action}), or by another program (see fuser -v {node})"
                )
            }
        }
    }
}

/// The first thing of a stopping set or device the kernel still holds.
fn still_held(set: Option<(&Uuid, &Path)>, members: &[Member]) -> Option<Held> {
    if let Some((uuid, dir)) = set {
        if dir.exists() {
            return Some(Held::Set(*uuid));
        }
    }
    if let Some(m) = members.iter().find(|m| m.dir.exists()) {
        return Some(Held::Dir(m.dir.clone()));
    }
    // The sysfs directory goes first and the block device's exclusive claim
    // a moment later (the kernel's final fput is deferred to a worker).
    members.iter().filter_map(|m| m.node.as_deref()).find(|n| opened_exclusively(n)).map(|n| Held::Open(n.to_owned()))
}

/// Whether something holds a block device exclusively: an `O_EXCL` open
/// fails with EBUSY. Read-only, so closing it sends udev no change event;
/// on a regular file `O_EXCL` is ignored.
fn opened_exclusively(node: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let open = fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_EXCL).open(node);
    matches!(open, Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY))
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
    fn find(self, reason: fn(&str) -> Option<&str>) -> Option<String> {
        self.messages().iter().rev().find_map(|m| reason(m)).map(str::to_owned)
    }

    /// The messages logged since `open`, the first line of each.
    fn messages(mut self) -> Vec<String> {
        use std::io::Read;
        let mut buf = vec![0u8; 8192];
        let mut out = Vec::new();
        // Each read returns one record; EAGAIN marks the end of the log.
        while let Ok(n) = self.0.read(&mut buf) {
            if n == 0 {
                break;
            }
            let rec = String::from_utf8_lossy(&buf[..n]);
            // "PRIO,SEQ,TIME,FLAGS;MESSAGE": only the kernel's own (facility
            // 0, PRIO < 8), not what a program wrote to /dev/kmsg.
            let Some((head, msg)) = rec.split_once(';') else { continue };
            if head.split(',').next().and_then(|p| p.parse::<u32>().ok()).is_none_or(|p| p >= 8) {
                continue;
            }
            out.push(msg.lines().next().unwrap_or("").to_owned());
        }
        out
    }
}

/// What the kernel logs from a moment on: read after a write to learn
/// what the kernel made of it (the attach a registration tries is only
/// reported there).
pub struct KernelLog(KmsgTail);

impl KernelLog {
    /// The backing devices (kernel names, e.g. vdb or dm-0) the kernel
    /// refused to attach because their cache set has no slot for their
    /// uuid: the proof that the set holds nothing for them.
    pub fn no_slot_devices(self) -> Vec<String> {
        self.read().no_slot_devices()
    }

    /// What was logged since, read once, for more than one question.
    pub fn read(self) -> Logged {
        Logged(self.0.messages())
    }
}

/// The kernel's messages logged since a [`KernelLog`] was opened.
pub struct Logged(Vec<String>);

impl Logged {
    /// See [`KernelLog::no_slot_devices`].
    pub fn no_slot_devices(&self) -> Vec<String> {
        self.0.iter().filter_map(|m| no_slot_device(m)).map(str::to_owned).collect()
    }

    /// The backing devices (kernel names) the kernel attached to a cache
    /// set: "Caching DEV as bcacheN on set UUID".
    pub fn attached_devices(&self) -> Vec<String> {
        self.0.iter().filter_map(|m| attached_device(m)).map(str::to_owned).collect()
    }
}

/// The device of a "bcache: bch_cached_dev_attach() Caching DEV as bcacheN
/// on set UUID" message.
fn attached_device(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix("bcache: bch_cached_dev_attach() Caching ")?;
    let (dev, rest) = rest.split_once(' ')?;
    (rest.starts_with("as ") && rest.contains(" on set ") && !dev.is_empty()).then_some(dev)
}

impl Sysfs {
    /// The kernel log from now on, when it can be read.
    pub fn kernel_log(&self) -> Option<KernelLog> {
        KmsgTail::open(&self.path("dev/kmsg")).map(KernelLog)
    }
}

/// The device of a "bcache: bch_cached_dev_attach() Couldn't find uuid for
/// DEV in set" message.
fn no_slot_device(msg: &str) -> Option<&str> {
    let dev = msg.strip_prefix("bcache: bch_cached_dev_attach() Couldn't find uuid for ")?.strip_suffix(" in set")?;
    (!dev.is_empty() && !dev.contains(char::is_whitespace)).then_some(dev)
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

    /// A fake tree with a registered block device NAME (its sysfs
    /// directory, a bcache directory, uevent) and its node under dev/.
    fn fake_block(root: &Path, name: &str) -> (PathBuf, PathBuf) {
        let blk = root.join("sys/devices/virtual/block").join(name);
        fs::create_dir_all(blk.join("bcache")).unwrap();
        fs::write(blk.join("uevent"), format!("MAJOR=254\nDEVNAME={name}\n")).unwrap();
        fs::write(blk.join("bcache/stop"), "").unwrap();
        fs::create_dir_all(root.join("dev")).unwrap();
        let node = root.join("dev").join(name);
        fs::write(&node, "").unwrap();
        (blk.join("bcache"), node)
    }

    /// The kernel's part of a release: once `trigger` has been written,
    /// `paths` go, a little later. (A fake that removed them on a timer
    /// raced the write itself on a loaded machine: 1 run in 25.)
    fn gone_after_write(trigger: PathBuf, paths: Vec<PathBuf>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let bound = Instant::now() + Duration::from_secs(10);
            while fs::read_to_string(&trigger).unwrap_or_default() != "1\n" {
                assert!(Instant::now() < bound, "{} never written", trigger.display());
                std::thread::sleep(Duration::from_millis(1));
            }
            // Still there for a moment after the write, as in the kernel.
            std::thread::sleep(Duration::from_millis(20));
            for p in paths {
                fs::remove_dir_all(p).unwrap();
            }
        })
    }

    #[test]
    fn stop_returns_only_once_the_bcache_directory_is_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, node) = fake_block(tmp.path(), "vdb");
        let sysfs = Sysfs::with_root(tmp.path());
        let reg = Registered::Backing(dir.clone());
        // The kernel's part: stop was written, the directory goes later.
        let stop_file = dir.join("stop");
        let kernel = std::thread::spawn({
            let dir = dir.clone();
            move || {
                while fs::read_to_string(&stop_file).unwrap_or_default() != "1\n" {
                    std::thread::sleep(Duration::from_millis(1));
                }
                std::thread::sleep(Duration::from_millis(40));
                fs::remove_dir_all(dir).unwrap();
            }
        });
        let start = Instant::now();
        sysfs.release_within(&node, &reg, SetAction::Stop, Duration::from_secs(10)).unwrap();
        assert!(start.elapsed() >= Duration::from_millis(40));
        assert!(!dir.exists());
        kernel.join().unwrap();
    }

    #[test]
    fn a_device_never_released_is_a_one_line_error_naming_what_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let (dir, node) = fake_block(tmp.path(), "vdb");
        let sysfs = Sysfs::with_root(tmp.path());
        let err = sysfs
            .release_within(&node, &Registered::Backing(dir.clone()), SetAction::Stop, Duration::from_millis(30))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("still registered with bcache ({} exists)", dir.display())), "{err}");
        assert!(err.contains("after 'stop'") && err.contains("unmount or close it"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn a_set_stop_waits_for_the_set_its_caches_and_its_backing_devices() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let set = Uuid::new_v4();
        let set_dir = root.join("sys/fs/bcache").join(set.to_string());
        fs::create_dir_all(&set_dir).unwrap();
        fs::write(set_dir.join("stop"), "").unwrap();
        fs::write(set_dir.join("unregister"), "").unwrap();
        fs::write(root.join("sys/fs/bcache/register"), "").unwrap();
        let (cache, _) = fake_block(root, "vda");
        let (bdev, _) = fake_block(root, "vdb");
        std::os::unix::fs::symlink(&cache, set_dir.join("cache0")).unwrap();
        std::os::unix::fs::symlink(&bdev, set_dir.join("bdev0")).unwrap();
        let sysfs = Sysfs::with_root(root);

        let members = sysfs.set_members(&set_dir, true);
        let mut nodes: Vec<_> = members.iter().filter_map(|m| m.node.clone()).collect();
        nodes.sort();
        assert_eq!(nodes, [root.join("dev/vda"), root.join("dev/vdb")]);
        assert_eq!(sysfs.set_members(&set_dir, false).len(), 1, "unregister leaves backing devices registered");

        // The set goes first; its backing device is still being torn down.
        let kernel = gone_after_write(set_dir.join("stop"), vec![set_dir.clone(), cache.clone()]);
        let err = sysfs
            .release_set_within("x", &set, SetAction::Stop, None, Duration::from_millis(200))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("({} exists)", bdev.display())), "{err}");
        kernel.join().unwrap();
    }

    #[test]
    fn a_set_unregister_returns_once_the_set_and_its_cache_are_gone() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let set = Uuid::new_v4();
        let set_dir = root.join("sys/fs/bcache").join(set.to_string());
        fs::create_dir_all(&set_dir).unwrap();
        fs::write(set_dir.join("stop"), "").unwrap();
        fs::write(set_dir.join("unregister"), "").unwrap();
        fs::write(root.join("sys/fs/bcache/register"), "").unwrap();
        let (cache, _) = fake_block(root, "vda");
        std::os::unix::fs::symlink(&cache, set_dir.join("cache0")).unwrap();
        let sysfs = Sysfs::with_root(root);
        let kernel = gone_after_write(set_dir.join("unregister"), vec![set_dir.clone(), cache.clone()]);
        sysfs.release_set_within("x", &set, SetAction::Unregister, None, Duration::from_secs(10)).unwrap();
        assert!(!set_dir.exists() && !cache.exists());
        kernel.join().unwrap();
        let err = sysfs.release_set(&set, SetAction::Unregister).unwrap_err();
        assert!(matches!(err, SysfsError::NoSuchSet(_)), "{err}");
    }

    #[test]
    fn register_errors_are_read_with_or_without_the_path() {
        let r = |m| register_error_reason(m);
        assert_eq!(r("bcache: register_bcache() error : Bad UUID"), Some("Bad UUID"));
        assert_eq!(r("bcache: register_bcache() error /dev/sdb: device busy"), Some("device busy"));
        assert_eq!(r("bcache: bch_cached_dev_attach() Couldn't find uuid"), None);
    }

    #[test]
    fn an_attach_is_read_from_the_kernels_message() {
        let logged = Logged(vec![
            "bcache: bch_cached_dev_attach() Caching vdb as bcache0 on set 0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa".into(),
            "bcache: bch_cached_dev_attach() Couldn't find uuid for dm-1 in set".into(),
            "bcache: bch_cached_dev_attach() Caching dm-0 as bcache1 on set 0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa".into(),
            "bcache: bch_cached_dev_attach() Caching".into(),
        ]);
        assert_eq!(logged.attached_devices(), ["vdb", "dm-0"]);
        assert_eq!(logged.no_slot_devices(), ["dm-1"]);
    }
}
