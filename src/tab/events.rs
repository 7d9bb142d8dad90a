//! What the kernel reports of a device, and reconciling the records with
//! it: raw devices' uevents and `raw_state`, the headers' superblocks, the
//! journal of what an initramfs recorded.

use std::fs;
use std::path::Path;

use uuid::Uuid;

use crate::layout::header;
use crate::superblock::{BdevState, CacheMode};
use crate::tab::env::{ApplyError, Env};
use crate::tab::file::{Entry, Tab};
use crate::tab::identity::Resolver;
use crate::tab::records;
use crate::tab::rules::{note, seen_running_without_set};
use crate::tab::status::{live, live_at, running_without_set, Status};
use crate::tab::transition::record_attachment;

/// Properties of a block device, as a udev event would carry them.
pub type Props<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Records a state change the kernel reported for a raw-registered device
/// (the change uevent of register_raw: BCACHE_UUID, BCACHE_STATE, ...).
pub fn record_uevent(env: &Env, props: Props) -> Result<(), ApplyError> {
    let Some(uuid) = props("BCACHE_UUID").and_then(|u| u.parse::<Uuid>().ok()) else {
        return Ok(());
    };
    let set = props("BCACHE_SET_UUID").and_then(|u| u.parse::<Uuid>().ok()).filter(|u| !u.is_nil());
    let st = props("BCACHE_STATE").and_then(|s| BdevState::ALL.into_iter().find(|x| x.name() == s));
    let mode = props("BCACHE_CACHE_MODE").and_then(|m| m.parse().ok());
    env.store().record_fact(uuid, "the state the kernel reported", |r| note(r, set, st, mode, true))?;
    Ok(())
}

/// Brings the state file up to what happened while it could not be
/// written or was a copy, and to what the kernel shows now: the journal
/// an initramfs (or a failed record) left, what the kernel wrote into the
/// headers, the attach of each registered device, and the stale mark of
/// one running without the set its line names where the set may hold a
/// slot for it. Towards the conservative side only: an attach is
/// recorded, a detach only as the kernel reported it. True when a journal
/// was merged.
pub fn reconcile(env: &Env, tab: &Tab) -> Result<bool, ApplyError> {
    let merged = records::merge_journal(&env.store())?;
    sync_headers(env, tab)?;
    let resolver = Resolver::default();
    for e in &tab.entries {
        if let (_, Some(dir)) = live(env, &resolver, e) {
            if let Some(k) = KernelView::read(&dir).filter(|k| k.seq > 0 && k.uuid == e.uuid) {
                env.store().record_fact(e.uuid, "the state the kernel shows", |r| {
                    note(r, k.set, Some(k.state), Some(k.mode), true)
                })?;
            }
            // After the kernel's own view (a detach's end forgets the set
            // first), before the attach (one made meanwhile confirms it).
            mark_without_set(env, e, &dir)?;
            record_attachment(env, &e.uuid, &dir)?;
        }
    }
    Ok(merged)
}

/// The stale mark of a line's device (sysfs directory `dir`) running
/// without its set ([`running_without_set`]) by a step that did not record
/// it (a register by hand with state none, a run): the set may give it old
/// data at the next attach unless its slot is dropped.
fn mark_without_set(env: &Env, entry: &Entry, dir: &Path) -> Result<(), ApplyError> {
    if running_without_set(&env.sysfs, entry, dir).is_some() {
        env.store().record_fact(entry.uuid, "the stale mark of a device running without its set", |r| {
            // Looked at again under the state file's lock: a set that
            // attached the device since, and whose attach (and a dirty
            // write after) was recorded meanwhile, must not be marked
            // over, or the next registration drops that dirty data.
            if let Some((_, shown)) = running_without_set(&env.sysfs, entry, dir) {
                seen_running_without_set(r, shown)
            }
        })?;
    }
    Ok(())
}

/// [`reconcile`]'s stale mark for one line's device, found at `path`
/// (`tab apply` of a device already up); its status after.
pub fn mark_if_without_set(env: &Env, entry: &Entry, path: &Path) -> Result<Status, ApplyError> {
    if let (_, Some(dir)) = live_at(env, entry, path) {
        mark_without_set(env, entry, &dir)?;
    }
    Ok(live_at(env, entry, path).0)
}

/// What the patched module shows of a raw-registered device
/// (`raw_state`): its superblock as the kernel holds it now, whatever
/// uevents were lost. `seq` counts the kernel's changes since the
/// registration: at 0 it is what this tool registered.
#[derive(Debug, PartialEq, Eq)]
struct KernelView {
    uuid: Uuid,
    set: Option<Uuid>,
    state: BdevState,
    mode: CacheMode,
    seq: u64,
}

impl KernelView {
    fn read(dir: &Path) -> Option<KernelView> {
        KernelView::parse(&fs::read_to_string(dir.join("raw_state")).ok()?)
    }

    fn parse(line: &str) -> Option<KernelView> {
        let field = |key: &str| {
            line.split_ascii_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        };
        Some(KernelView {
            uuid: field("uuid")?.parse().ok()?,
            set: Some(field("set_uuid")?.parse::<Uuid>().ok()?).filter(|u| !u.is_nil()),
            state: BdevState::ALL.into_iter().find(|s| Some(s.name()) == field("state"))?,
            mode: field("cache_mode")?.parse().ok()?,
            seq: field("seq")?.parse().ok()?,
        })
    }
}

/// Reads back what the kernel wrote into the headers set up at this boot
/// (stock kernels emit no uevent for it) into the state file.
pub fn sync_headers(env: &Env, tab: &Tab) -> Result<(), ApplyError> {
    for e in &tab.entries {
        if let Some(sb) = header::read_back(&env.run_dir, &e.uuid) {
            let set = Some(sb.set_uuid).filter(|u| !u.is_nil());
            let (st, mode) = (Some(sb.state()), sb.cache_mode());
            env.store().record_fact(e.uuid, "the state the kernel wrote", |r| note(r, set, st, mode, false))?;
            let dir = header::find(&e.uuid).and_then(|(node, rdev)| env.sysfs.backing_dir(&node.to_string_lossy(), rdev).ok());
            if let Some(dir) = dir {
                record_attachment(env, &e.uuid, &dir)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_state_is_read_field_by_field() {
        let line = "uuid=00000000-0000-0000-0000-000000000001 set_uuid=00000000-0000-0000-0000-000000000009 \
                    state=dirty cache_mode=writeback label=a%20b seq=3 uevent_errors=0\n";
        let k = KernelView::parse(line).unwrap();
        assert_eq!(
            k,
            KernelView {
                uuid: Uuid::from_u128(1),
                set: Some(Uuid::from_u128(9)),
                state: BdevState::Dirty,
                mode: CacheMode::Writeback,
                seq: 3
            }
        );
        let detached = line.replace("00000000-0000-0000-0000-000000000009", &Uuid::nil().to_string());
        assert_eq!(KernelView::parse(&detached).unwrap().set, None);
        assert!(KernelView::parse("uuid=x seq=1").is_none());
    }
}
