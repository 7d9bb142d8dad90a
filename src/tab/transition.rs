//! The transitions of a registered bcachetab device other than its
//! registration: attach, detach, a run without its set (forced or after a
//! timeout), in the order [`rules`] gives.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::superblock::CacheMode;
use crate::tab::env::{fault, since_file, ApplyError, Env};
use crate::tab::file::{self, Entry, Tab};
use crate::tab::identity::Resolver;
use crate::tab::records::{Record, State};
use crate::tab::rules;
use crate::tab::status::{attached_set, live, status, Status};

/// Records that the device is attached to the set sysfs shows, if any:
/// the set now holds a slot for it (a fresh one if it was stale).
pub fn record_attachment(env: &Env, uuid: &Uuid, dir: &Path) -> Result<(), ApplyError> {
    if let Some(set) = attached_set(dir) {
        env.store().record_fact(*uuid, "the attach", |r| rules::confirm_attach(r, set))?;
    }
    Ok(())
}

/// Before an attach the kernel is told to make (`bcache attach`): the set,
/// pending until [`record_attachment`] sees it. Returns the record as it
/// was, for [`undo_attach`] when the kernel refuses.
pub fn before_attach(env: &Env, uuid: &Uuid, set: Uuid) -> Result<Option<Record>, ApplyError> {
    let before = State::load(&env.state)?.get(uuid).cloned();
    env.store().update(*uuid, "the attach", |r| rules::ahead_of_attach(r, set))?;
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
    file::set_cset(&env.tab, &uuid, Some(set))?;
    let before = match before_attach(env, &uuid, set) {
        Ok(before) => before,
        Err(e) => {
            file::set_cset(&env.tab, &uuid, old_set)?;
            return Err(e);
        }
    };
    fault(dir, "attach:before-kernel")?;
    if let Err(e) = env.sysfs.write(name, &dir.join("attach"), &set.hyphenated().to_string()) {
        file::set_cset(&env.tab, &uuid, old_set)?;
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
    Ok(env.store().update(*uuid, "the stale mark", rules::mark_stale)?)
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
        Some(u) if is_tab_device(env, &u)? => Ok(file::set_cset(&env.tab, &u, None)?),
        _ => Ok(false),
    }
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
