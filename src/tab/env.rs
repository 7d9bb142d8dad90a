//! What every step on a bcachetab device shares: where the files are,
//! the errors, the per-device lock and the fault points.

use std::io;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::device::DeviceError;
use crate::files::Lock;
use crate::layout::LayoutError;
use crate::sysfs::{Sysfs, SysfsError};
use crate::tab::file::{self, DeviceIds, EditError};
use crate::tab::identity::Mismatch;
use crate::tab::records::{self, StateError, Store};

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
            tab: PathBuf::from(file::DEFAULT_PATH),
            state: PathBuf::from(records::DEFAULT_PATH),
            run_dir: PathBuf::from("/run/bcache"),
            journal: Path::new("/run/bcache").join(records::JOURNAL_NAME),
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
    Layout(#[from] LayoutError),
    #[error(transparent)]
    Sysfs(#[from] SysfsError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("{}: {}", .0.display(), crate::os_error_text(.1))]
    Io(PathBuf, io::Error),
}

/// A step of a transition, where the tests inject faults ([`crate::fault`]).
pub(crate) fn fault(at: &Path, point: &str) -> Result<(), ApplyError> {
    crate::fault::point(point).map_err(|e| ApplyError::Io(at.to_owned(), e))
}

/// Serialises work on one device between processes (udev runs events of
/// different devices, and add and change of one, concurrently).
pub(crate) fn device_lock(env: &Env, uuid: &Uuid) -> Result<Lock, ApplyError> {
    Ok(Lock::take(&env.run_dir.join("lock").join(uuid.hyphenated().to_string())).map_err(StateError::from)?)
}

/// Where the time a device was registered at this boot is kept (its
/// modification time): the start of its timeout.
pub(crate) fn since_file(env: &Env, uuid: &Uuid) -> PathBuf {
    env.run_dir.join("since").join(uuid.hyphenated().to_string())
}

