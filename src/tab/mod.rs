//! bcachetab devices: existing disks put behind bcache without a superblock
//! of their own. The path from a line to the kernel, one module a step:
//!
//! 1. [`file`](mod@file): bcachetab(5), the lines and their options.
//! 2. [`records`]: the state file, what bcachetab does not say (layout,
//!    the set a device may have been attached to, stale marks, identity),
//!    written ahead of the kernel, and the journal that carries what an
//!    initramfs recorded across switch_root.
//! 3. [`identity`]: which device a line names, and whether it is the one
//!    adopted; [`identify`] checks it at each registration.
//! 4. [`rules`]: the state machine: what the kernel is told at each
//!    registration, and every transition's record changes.
//! 5. [`activate`]: the registration by either [layout](crate::layout),
//!    [`transition`]: attach, detach, runs without the set.
//! 6. [`status`] and [`events`]: what the kernel shows and reports, and
//!    reconciling the records with it.
//! 7. [`adopt`]: putting a device under bcachetab.
//!
//! [`env`](mod@env) holds what they share (where the files are, the errors).

pub mod activate;
pub mod adopt;
pub mod env;
pub mod events;
pub mod file;
pub mod identify;
pub mod identity;
pub mod records;
pub mod rules;
pub mod status;
pub mod transition;

pub use env::{ApplyError, Env};
