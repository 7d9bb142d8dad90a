//! Bringing a bcachetab device up: the registration's transition (see
//! [`rules`]), by either layout, then its tunables; and the
//! settling of devices a returning set refused.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::device::{Access, Device};
use crate::files;
use crate::superblock::BdevState;
use crate::sysfs::{KernelLog, Registered, SetAction};
use crate::tab::env::{device_lock, fault, since_file, ApplyError, Env};
use crate::tab::file::{Entry, Tab};
use crate::tab::identity::Resolver;
use crate::tab::records::{Record, State};
use crate::tab::rules::{self, registration, Kernel, Registration};
use crate::tab::status::{attached_set, live_at, registered_as, Status};
use crate::tab::transition::{self, record_attachment};
use crate::tab::events::sync_headers;
use crate::tab::identify;

/// Registers the device of `entry` (found at `path`) unless it already is,
/// then sets its tunables. Idempotent.
///
/// The registration's transition, in order (the table in [`rules`]):
/// 1. before the kernel is told, durably,
///    [`rules::ahead_of_registration`]. If this cannot be written the
///    kernel is not touched.
/// 2. the kernel: the device's layout registers it as [`registration`]
///    says.
/// 3. after: the attach the kernel shows, confirmed (pending cleared, a
///    stale mark dropped: the set's slot is a fresh one); a device
///    registered to finish a detach ([`rules::finishes_detach`]) is
///    settled (refused: registered as new) or detached again (attached);
///    then the tunables, whose failure no longer touches what is recorded.
pub fn bring_up(env: &Env, entry: &Entry, path: &Path) -> Result<Status, ApplyError> {
    let _lock = device_lock(env, &entry.uuid)?;
    let dev = Device::open(path, Access::Read)?;
    if registered_as(env, entry, &dev).is_none() {
        let st = State::load(&env.state)?;
        identify::verify(env, entry, path, st.get(&entry.uuid))?;
        env.sysfs.bcache_dir()?;
        let reg = registration(entry, st.get(&entry.uuid), st.is_copy, Kernel::detect(&env.sysfs))?;
        env.store().update(entry.uuid, "the registration", |r| rules::ahead_of_registration(r, &reg))?;
        fault(path, "register:before-kernel")?;
        let shown = path.to_string_lossy().into_owned();
        let log = env.sysfs.kernel_log();
        let (node, mut dir) = register(env, entry, &reg, dev, path)?;
        let since = since_file(env, &entry.uuid);
        fs::create_dir_all(env.run_dir.join("since"))
            .and_then(|_| files::touch(&since))
            .map_err(|e| ApplyError::Io(since.clone(), e))?;
        fault(path, "register:after-kernel")?;
        let no_slot = log.map(|l| l.no_slot_devices()).unwrap_or_default();
        dir = settle_unconfirmed(env, entry, &reg, st.get(&entry.uuid), path, (&node, dir), &no_slot)?;
        record_attachment(env, &entry.uuid, &dir)?;
        if rules::finishes_detach(entry, &reg) {
            transition::finish_detach(env, &entry.uuid, &shown, &dir)?;
        }
        transition::write_tunables(env, entry, &shown, &dir)?;
    }
    Ok(live_at(env, entry, path).0)
}

/// A device registered dirty that its set refused for want of a slot
/// (`no_slot`, the kernel's words), when nothing says the set held dirty
/// data for it: an attach written ahead and never confirmed (a power cut
/// before the kernel acted), or one the set's journal lost (a power cut
/// within journal_delay_ms of the attach, before anything was written).
/// The set holds nothing for it, so it is registered again as new to the
/// set. So is a device registered to finish a detach
/// ([`rules::finishes_detach`]): the module says the slot's invalidation is
/// on disk before the detach ends, so no slot means the detach ended, its
/// dirty data written back; it is registered without a set, as its line
/// says, and the end recorded. A device the kernel reported dirty keeps
/// waiting: that data is gone with the slot, and only the operator may
/// accept it (`bcache run --force`). So does a device when the kernel's log
/// cannot say. Returns the registered device's sysfs directory.
fn settle_unconfirmed(
    env: &Env,
    entry: &Entry,
    reg: &Registration,
    record: Option<&Record>,
    path: &Path,
    (node, dir): (&Path, PathBuf),
    no_slot: &[String],
) -> Result<PathBuf, ApplyError> {
    let finishing = rules::finishes_detach(entry, reg);
    let nothing_to_lose = finishing
        || record.is_some_and(|r| {
            !r.stale && r.attached == reg.backing.set_uuid && (r.pending || r.state != Some(BdevState::Dirty))
        });
    let set_here = reg.backing.set_uuid.is_some_and(|s| env.sysfs.set_dir(&s).is_ok());
    // The kernel's name of the device: the directory /sys/dev/block/M:N links to.
    let name = dir.parent().and_then(|d| fs::canonicalize(d).ok()).and_then(|d| Some(d.file_name()?.to_string_lossy().into_owned()));
    let refused = name.is_some_and(|n| no_slot.contains(&n));
    if !(nothing_to_lose && reg.backing.state == BdevState::Dirty && set_here && refused && attached_set(&dir).is_none()) {
        return Ok(dir);
    }
    if finishing {
        eprintln!(
            "bcache: {}: its detach from cache set {} had ended (the set has no slot for it): registered \
             without a set",
            path.display(),
            reg.backing.set_uuid.map_or("-".into(), |s| s.to_string()),
        );
    } else if record.is_some_and(|r| !r.pending) {
        eprintln!(
            "bcache: warning: {}: cache set {} has no slot for {} although it was attached (lost with the \
             set's journal by a power cut just after the attach, or a new cache made with the set's uuid): \
             attached afresh",
            path.display(),
            reg.backing.set_uuid.map_or("-".into(), |s| s.to_string()),
            entry.uuid
        );
    }
    env.sysfs.release(node, &Registered::Backing(dir), SetAction::Stop)?;
    let mut fresh = reg.clone();
    fresh.backing.state = BdevState::None;
    if finishing {
        fresh.backing.set_uuid = None;
    }
    let dir = register(env, entry, &fresh, Device::open(path, Access::Read)?, path)?.1;
    if finishing {
        transition::record_detached(env, &entry.uuid)?;
    }
    Ok(dir)
}

/// After cache devices were registered (`bcache register`, from udev):
/// what the kernel wrote into the headers goes to the state file, a
/// waiting device the new set refused for want of a slot is settled
/// (`settle_unconfirmed`), and one registered to finish a detach that the
/// set attached is detached again; a device a new set attached gets its
/// line's tunables again. `log` is the kernel's log from before the
/// registration.
pub fn after_caches_registered(log: Option<KernelLog>) -> Result<(), ApplyError> {
    let env = Env::default();
    let tab = match Tab::load(&env.tab) {
        Ok(tab) if !tab.entries.is_empty() => tab,
        _ => return Ok(()),
    };
    // What a journal holds decides too (every registration path merges it
    // first: tab apply, adopt's record, and this).
    if let Err(e) = crate::tab::records::merge_journal(&env.store()) {
        eprintln!("bcache: {e}");
    }
    sync_headers(&env, &tab)?;
    // Read once: the refusals, and the attaches the new sets made.
    let logged = log.map(KernelLog::read);
    let no_slot = logged.as_ref().map(|l| l.no_slot_devices()).unwrap_or_default();
    let attached_now = logged.as_ref().map(|l| l.attached_devices()).unwrap_or_default();
    let st = State::load(&env.state)?;
    env.sysfs.bcache_dir()?;
    let kernel = Kernel::detect(&env.sysfs);
    let resolver = Resolver::default();
    let mut first_error = None;
    // Recorded attached; without a refusal, only a detach to finish (a line
    // that names no set) needs a look.
    let candidates = tab.entries.iter().filter(|e| {
        st.get(&e.uuid).is_some_and(|r| r.attached.is_some())
            && (!no_slot.is_empty() || !attached_now.is_empty() || e.cset.is_none())
    });
    for e in candidates {
        let Some(path) = resolver.resolve(&e.device) else { continue };
        // One device's failure leaves the others to be settled.
        let settled = (|| {
            let _lock = device_lock(&env, &e.uuid)?;
            let Some((node, rdev)) = registered_as(&env, e, &Device::open(&path, Access::Read)?) else { return Ok(()) };
            let dir = env.sysfs.backing_dir(&path.to_string_lossy(), rdev)?;
            let reg = registration(e, st.get(&e.uuid), st.is_copy, kernel)?;
            let dir = settle_unconfirmed(&env, e, &reg, st.get(&e.uuid), &path, (&node, dir), &no_slot)?;
            record_attachment(&env, &e.uuid, &dir)?;
            if rules::finishes_detach(e, &reg) {
                transition::finish_detach(&env, &e.uuid, &path.to_string_lossy(), &dir)?;
            }
            // Attached by a set that came after the device (or registered
            // again by the settle): the line's tunables, as after a
            // registration.
            let name = dir.parent().and_then(|d| fs::canonicalize(d).ok()).and_then(|d| Some(d.file_name()?.to_string_lossy().into_owned()));
            let by_the_set = name.is_some_and(|n| attached_now.contains(&n) || no_slot.contains(&n));
            if by_the_set && attached_set(&dir).is_some() {
                transition::write_tunables(&env, e, &path.to_string_lossy(), &dir)?;
            }
            Ok(())
        })();
        if let Err(err) = settled {
            eprintln!("bcache: {}:{}: {err}", env.tab.display(), e.line);
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Tells the kernel about `dev` (the device of `entry`, at `path`) as `reg`
/// says, by its layout; returns the registered device (the device itself,
/// or the header's dm device) and its sysfs directory.
fn register(
    env: &Env,
    entry: &Entry,
    reg: &Registration,
    dev: Device,
    path: &Path,
) -> Result<(PathBuf, PathBuf), ApplyError> {
    reg.layout.register(&env.sysfs, &env.run_dir, &reg.backing, dev, path)?;
    let dev = Device::open(path, Access::Read)?;
    let (node, rdev) = registered_as(env, entry, &dev).ok_or_else(|| {
        ApplyError::Io(path.to_owned(), io::Error::other("registered, but bcache does not show it"))
    })?;
    Ok((node, env.sysfs.backing_dir(&path.to_string_lossy(), rdev)?))
}
