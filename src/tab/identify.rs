//! Checking, at each registration, that a line's device is the one its
//! record says was adopted, and recording a device's identity (`bcache tab
//! identify`).

use std::path::Path;

use crate::tab::adopt::indistinguishable_from;
use crate::tab::env::{ApplyError, Env};
use crate::tab::file::{Entry, Tab};
use crate::tab::identity::{check, content_uuid, Identity, Mismatch, Now, Verdict};
use crate::tab::records::{Record, State, StateError};

/// Before the kernel is told of a device (at every registration): refuses
/// a device that is not the one its record says was adopted, and records a
/// grown size. The udev event's properties in `env`, when they are the
/// device's, save a probe.
pub fn verify(env: &Env, entry: &Entry, dev: &Path, record: Option<&Record>) -> Result<(), ApplyError> {
    let Some(recorded) = record.map(|r| &r.identity).filter(|i| i.is_recorded()) else { return Ok(()) };
    let now = Now::new(dev, env.event.as_ref(), &content_uuid);
    if let Verdict::Grown(sectors) = check(entry, recorded, &now)? {
        env.store().update(entry.uuid, "the device's new size", |r| r.identity.sectors = Some(sectors))?;
    }
    Ok(())
}

/// Why `bcache tab identify` did not record a device.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    #[error(
        "{dev} is the device of {at} (its recorded identity: {identity}), not this line's: were disks renamed at \
         this boot? (bcache tab list shows what each line finds)"
    )]
    OtherLine { dev: String, at: String, identity: String },
    #[error(
        "{dev} cannot be told from the device of {at} (neither has a serial, wwid, PARTUUID or file system, both are \
         {sectors} sectors, and a cache set may hold data for one of them): it may be that line's device under another \
         name; if it is this line's, record it with bcache tab identify --force"
    )]
    Indistinguishable { dev: String, at: String, sectors: u64 },
    #[error(transparent)]
    Mismatch(#[from] Mismatch),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Records the identity of a line's device as it is now (`bcache tab
/// identify`). Never a device another line's record names; a device that
/// is not its record's but for its size only with `force`: recording the
/// wrong disk would let it be registered under this line's uuid.
pub fn record(env: &Env, tab: &Tab, entry: &Entry, dev: &Path, force: bool) -> Result<Identity, IdentifyError> {
    let now = Now::new(dev, None, &content_uuid);
    let identity = now.identity();
    let state = State::load(&env.state)?;
    let is_theirs = |e: &&Entry| e.uuid != entry.uuid && state.get(&e.uuid).is_some_and(|r| r.identity.same_device(&identity));
    if let Some(e) = tab.entries.iter().find(is_theirs) {
        let (dev, at) = (now.dev.display().to_string(), e.at(&tab.path));
        return Err(IdentifyError::OtherLine { dev, at, identity: identity.to_string() });
    }
    // A blank identity (its size only) names no other line's device, nor
    // proves it is not one.
    let with_set = entry.cset.is_some() || state.get(&entry.uuid).is_some_and(|r| r.attached.is_some());
    let others = Tab { entries: tab.entries.iter().filter(|e| e.uuid != entry.uuid).cloned().collect(), ..Tab::default() };
    if let Some(e) = indistinguishable_from(&others, &state, &identity, with_set).filter(|_| !force) {
        let (dev, at) = (now.dev.display().to_string(), e.at(&tab.path));
        return Err(IdentifyError::Indistinguishable { dev, at, sectors: identity.sectors.unwrap_or_default() });
    }
    let recorded = state.get(&entry.uuid).map(|r| r.identity.clone()).unwrap_or_default();
    match check(entry, &recorded, &now) {
        Err(m @ Mismatch::Other { .. }) if !force => return Err(m.into()),
        _ => {}
    }
    env.store().update(entry.uuid, "the device's identity", |r| r.identity = identity.clone())?;
    Ok(identity)
}
