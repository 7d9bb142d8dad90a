//! The state bcachetab's devices carry from one boot to the next, which
//! bcachetab itself does not say: the layout each device is used with,
//! the cache set that may hold a slot for it, and stale marks (a device
//! run without its set, whose cached data must never be served again).
//! Owned by the tool; written atomically and durably.
//!
//! ```text
//! # bcache state: written by bcache, do not edit
//! 6f1c1e0a-3b44-4e0b-9c57-1f0f0b6a7d21 layout=raw attached=0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa state=dirty mode=writeback sectors=209715200 disk=serial:S3Z9NB0K
//! ```
//!
//! A copy inside an initramfs may be older than the truth; a copy says so
//! in its first line, and the rules in [`rules`](crate::tab::rules) read it
//! conservatively. What is recorded while the state file is such a copy
//! also goes to a journal under /run, which survives switch_root: each of
//! its lines holds the keys one change set, and [`merge_journal`] applies
//! them to the system's file once it is writable.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::files::{write_atomically, Lock, PathError, NO_FOLLOW};
use crate::layout::Layout;
use crate::os_error_text;
use crate::tab::identity::Identity;
use crate::superblock::{BdevState, CacheMode};

pub const DEFAULT_PATH: &str = "/var/lib/bcache/state";

/// Where changes recorded in a copy go, to be merged into the system's
/// state file after switch_root (its name under the run-time directory).
pub const JOURNAL_NAME: &str = "state.journal";

const HEADER: &str = "# bcache state: written by bcache, do not edit";
/// First line of a copy made for an initramfs.
pub const COPY_HEADER: &str = "# bcache state: a copy, possibly older than the system's";

/// What is known of one backing device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The layout its data has been presented with.
    pub layout: Option<Layout>,
    /// The cache set that may hold a slot for it, maybe with dirty data.
    /// Written before the kernel is told to attach; cleared only when the
    /// kernel reports a completed detach.
    pub attached: Option<Uuid>,
    /// `attached` was written ahead of the kernel and the kernel has not
    /// confirmed the attach yet: the set may have no slot for it.
    pub pending: bool,
    /// Run without its set since it was last attached: the next attach must
    /// start from an invalidated slot.
    pub stale: bool,
    /// The state the kernel last reported.
    pub state: Option<BdevState>,
    pub mode: Option<CacheMode>,
    /// What the device was when adopted: a device that is not is never
    /// registered under this uuid.
    pub identity: Identity,
    /// Declared by `bcache adopt` under a uuid of its own making, with no
    /// set named for it since (`new=1`): the proof that no cache set holds
    /// a slot for it ([`Record::proves_never_attached`]). Set by nothing
    /// else: a record made any other way (a refused attach undone, `tab
    /// identify`, a kernel event or a journal line for a device with no
    /// record, an adopt of a uuid given with `--uuid`, a state file written
    /// before the mark) says nothing of what the sets hold. Dropped once a
    /// set is named.
    pub new: bool,
    /// Keys a newer version wrote, kept as they are.
    pub unknown: Vec<(String, String)>,
}

const KEYS: [&str; 7] = ["layout", "attached", "pending", "stale", "state", "mode", "new"];

impl Record {
    /// Whether the record proves that no cache set holds a slot for the
    /// device: adopt declared it fresh and no set was named since. A
    /// record without the mark (made otherwise, or before the mark) may
    /// belong to a device a set holds data for.
    pub fn proves_never_attached(&self) -> bool {
        self.new && self.attached.is_none()
    }

    /// A record that names a set is new to no set.
    fn normalize(&mut self) {
        if self.attached.is_some() {
            self.new = false;
        }
    }

    /// One of [`KEYS`] as the file writes it; empty when unset.
    fn value(&self, k: &str) -> String {
        match k {
            "layout" => self.layout.map_or("", |l| l.name()).to_owned(),
            "attached" => self.attached.map_or("none".to_owned(), |a| a.hyphenated().to_string()),
            "pending" => u8::from(self.pending).to_string(),
            "stale" => u8::from(self.stale).to_string(),
            "state" => self.state.map_or("", |s| s.name()).to_owned(),
            "mode" => self.mode.map_or("", |m| m.name()).to_owned(),
            "new" => u8::from(self.new).to_string(),
            _ => String::new(),
        }
    }

    /// Sets one key from the file's text; `none` clears a uuid, `0` a mark.
    fn assign(&mut self, k: &str, v: &str) -> Result<(), ()> {
        let flag = |v: &str| match v {
            "1" => Ok(true),
            "0" => Ok(false),
            _ => Err(()),
        };
        match k {
            "layout" => self.layout = Some(Layout::parse(v).ok_or(())?),
            "attached" => self.attached = if v == "none" { None } else { Some(v.parse().map_err(|_| ())?) },
            "pending" => self.pending = flag(v)?,
            "stale" => self.stale = flag(v)?,
            "state" => self.state = Some(BdevState::ALL.into_iter().find(|s| s.name() == v).ok_or(())?),
            "mode" => self.mode = Some(v.parse().map_err(|_| ())?),
            "new" => self.new = flag(v)?,
            k if Identity::KEYS.contains(&k) => self.identity.assign(k, v)?,
            _ => match self.unknown.iter_mut().find(|(key, _)| key == k) {
                Some(kv) => kv.1 = v.to_owned(),
                None => self.unknown.push((k.to_owned(), v.to_owned())),
            },
        }
        Ok(())
    }

    /// Every known key's value, defaults written out (`none`, `0`), and the
    /// unknown keys: what a journal line compares.
    fn assignments(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = KEYS
            .iter()
            .map(|&k| (k.to_owned(), self.value(k)))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        // Written out empty when unset, once recorded: a journal line can
        // then clear one.
        if self.identity.is_recorded() {
            out.extend(self.identity.assignments().into_iter().map(|(k, v)| (k.to_owned(), v)));
        }
        out.extend(self.unknown.iter().cloned());
        out
    }

    /// What `after` changed of `self`, as `key=value` words.
    fn delta(&self, after: &Record) -> Vec<String> {
        let before = self.assignments();
        after.assignments().into_iter().filter(|kv| !before.contains(kv)).map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Folds a second record of the same device into this one, towards
    /// the conservative side: a stale mark or a set from either is kept,
    /// writeback from either is kept, the larger size. Two different
    /// layouts, sets or identities cannot be decided.
    fn merge(&mut self, other: Record) -> Result<(), String> {
        if let (Some(a), Some(b)) = (self.layout, other.layout) {
            if a != b {
                return Err(format!("layouts {} and {}", a.name(), b.name()));
            }
        }
        if let (Some(a), Some(b)) = (self.attached, other.attached) {
            if a != b {
                return Err(format!("cache sets {a} and {b}"));
            }
        }
        self.pending = match (self.attached, other.attached) {
            (Some(_), Some(_)) => self.pending && other.pending,
            (None, Some(_)) => other.pending,
            _ => self.pending,
        };
        self.layout = self.layout.or(other.layout);
        self.attached = self.attached.or(other.attached);
        self.stale |= other.stale;
        // New only if both say so.
        self.new &= other.new;
        if other.mode == Some(CacheMode::Writeback) || self.mode.is_none() {
            self.mode = other.mode.or(self.mode);
        }
        self.state = other.state.or(self.state);
        self.identity.merge(other.identity)?;
        for (k, v) in other.unknown {
            if !self.unknown.iter().any(|(key, _)| *key == k) {
                self.unknown.push((k, v));
            }
        }
        self.normalize();
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}:{line}: damaged state record ({what}); devices with a cache set are left down until it is repaired", path.display())]
    Damaged { path: PathBuf, line: usize, what: String },
    #[error("{}: {}", .0.display(), os_error_text(.1))]
    Io(PathBuf, io::Error),
    #[error(
        "{}: cannot record {what} ({}): nothing was changed; make it writable (is /var read-only or full?) and run the command again",
        .path.display(), os_error_text(.error)
    )]
    WriteAhead { path: PathBuf, what: String, error: io::Error },
}

impl From<PathError> for StateError {
    fn from(PathError(path, e): PathError) -> StateError {
        StateError::Io(path, e)
    }
}

/// The state file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub records: BTreeMap<Uuid, Record>,
    /// Read from a copy (an initramfs's), which may be out of date.
    pub is_copy: bool,
    /// Devices recorded more than once ("FILE:LINE: ..."): merged
    /// conservatively, and reported by `bcache tab check` and `tab list`.
    pub conflicts: Vec<String>,
}

impl State {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<State, StateError> {
        match fs::read_to_string(path) {
            Ok(text) => State::parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StateError::Io(path.to_owned(), e)),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<State, StateError> {
        let mut state = State { is_copy: text.lines().next() == Some(COPY_HEADER), ..State::default() };
        for (i, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let damaged = |what: String| StateError::Damaged { path: path.to_owned(), line: i + 1, what };
            let (uuid, rec) = parse_line(line, &Record::default()).map_err(damaged)?;
            match state.records.get_mut(&uuid) {
                None => {
                    state.records.insert(uuid, rec);
                }
                Some(first) => {
                    first.merge(rec).map_err(|w| damaged(format!("a second record of {uuid} with {w}")))?;
                    state.conflicts.push(format!(
                        "{}:{}: a second record of {uuid}, merged with the first (stale and set marks of both kept)",
                        path.display(),
                        i + 1
                    ));
                }
            }
        }
        Ok(state)
    }

    pub fn get(&self, uuid: &Uuid) -> Option<&Record> {
        self.records.get(uuid)
    }

    /// Writes the whole state to `path`, atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        write_atomically(path, self.to_string().as_bytes()).map_err(|e| StateError::Io(path.to_owned(), e))
    }
}

/// One record's line: its uuid and its keys, assigned over `base`.
fn parse_line(line: &str, base: &Record) -> Result<(Uuid, Record), String> {
    let mut words = line.split_ascii_whitespace();
    let uuid: Uuid = words.next().and_then(|w| w.parse().ok()).ok_or("no uuid")?;
    let mut rec = base.clone();
    for word in words {
        let (k, v) = word.split_once('=').ok_or_else(|| format!("'{word}'"))?;
        rec.assign(k, v).map_err(|_| format!("bad {k} '{v}'"))?;
    }
    rec.normalize();
    Ok((uuid, rec))
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", if self.is_copy { COPY_HEADER } else { HEADER })?;
        for (uuid, r) in &self.records {
            write!(f, "{}", uuid.hyphenated())?;
            if let Some(l) = r.layout {
                write!(f, " layout={}", l.name())?;
            }
            if let Some(a) = r.attached {
                write!(f, " attached={}", a.hyphenated())?;
            }
            if r.new {
                f.write_str(" new=1")?;
            }
            if r.pending {
                f.write_str(" pending=1")?;
            }
            if r.stale {
                f.write_str(" stale=1")?;
            }
            if let Some(s) = r.state {
                write!(f, " state={}", s.name())?;
            }
            if let Some(m) = r.mode {
                write!(f, " mode={}", m.name())?;
            }
            for (k, v) in r.identity.assignments().iter().filter(|(_, v)| !v.is_empty()) {
                write!(f, " {k}={v}")?;
            }
            for (k, v) in &r.unknown {
                write!(f, " {k}={v}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Where the state lives: the file, and the journal that takes what is
/// recorded while the file is an initramfs's copy, or a fact the file
/// could not take.
///
/// The journal's lines are changes in the order they were made, each over
/// the record as it was then. Every change of the system's file merges a
/// journal first, under both locks (the journal's, then the file's), so a
/// line is never applied over a change made after it: the file written
/// directly after switch_root, or once a read-only /var is writable again,
/// takes the journal before its own change.
#[derive(Debug, Clone, Copy)]
pub struct Store<'a> {
    pub path: &'a Path,
    pub journal: &'a Path,
}

impl Store<'_> {
    /// Changes the record of `uuid` under the lock, and saves durably:
    /// when this returns Ok, the change survives a power cut (or, in an
    /// initramfs, switch_root). `what` names the change in the error that
    /// says nothing was recorded.
    pub fn update(&self, uuid: Uuid, what: &str, change: impl FnOnce(&mut Record)) -> Result<(), StateError> {
        let mut change = Some(change);
        self.change(uuid, what, &mut |r| change.take().expect("called once without a journal")(r), false)
    }

    /// [`Store::update`] for what the kernel has done already (a state
    /// change it reported): when the file cannot be written (or locked, or
    /// read), the change still goes to the journal, merged by the next
    /// command that can write the file, and the error is returned. The
    /// journal's line holds what the change did to the record as the file
    /// and the journal say it is, and every key the change sets whatever
    /// the record said (an attach seen clears a stale mark) when that
    /// record is not known for sure (a copy, a file that cannot be read).
    pub fn record_fact(&self, uuid: Uuid, what: &str, mut change: impl FnMut(&mut Record)) -> Result<(), StateError> {
        self.change(uuid, what, &mut change, true)
    }

    fn change(
        &self,
        uuid: Uuid,
        what: &str,
        change: &mut dyn FnMut(&mut Record),
        fact: bool,
    ) -> Result<(), StateError> {
        let failed = |path: &Path, error: io::Error| StateError::WriteAhead {
            path: path.to_owned(),
            what: format!("{what} of {uuid}"),
            error,
        };
        let line = |words: Vec<String>| format!("{} {}\n", uuid.hyphenated(), words.join(" "));
        // Taken even when the file's lock cannot be (a read-only /var): a
        // fact journaled then keeps its place among the others.
        let _order = journal_lock(self.journal);
        let mut journaled = false;
        let result = (|| {
            let _lock = Lock::take(self.path).map_err(|PathError(p, error)| failed(&p, error))?;
            let existed = fs::symlink_metadata(self.path).is_ok();
            let mut state = State::load(self.path)?;
            let text = read_journal(self.journal).map_err(|e| failed(self.journal, e))?;
            // What the journal holds was recorded before this change: in
            // first, in a write of its own (a crash before the journal is
            // removed applies it again over the same file, which gives the
            // same file).
            if existed && !state.is_copy && !text.trim().is_empty() {
                apply_journal(&mut state, &text, self.journal)?;
                write_atomically(self.path, state.to_string().as_bytes()).map_err(|e| failed(self.path, e))?;
                remove_journal(self.journal).map_err(|e| failed(self.journal, e))?;
            }
            let before = state.records.get(&uuid).cloned();
            let rec = state.records.entry(uuid).or_default();
            change(rec);
            rec.normalize();
            let after = rec.clone();
            // A copy's changes go to the journal for the system's file; so
            // do changes of a file that is not there while a journal is (a
            // /var not mounted yet), to keep their order with its lines.
            if state.is_copy || (!existed && !text.trim().is_empty()) {
                let before = before.clone().unwrap_or_default();
                let sets = if fact { assigned_keys(change) } else { Vec::new() };
                let words = journal_words(&before, &after, &sets, &journal_view(&text, &uuid).1);
                if !words.is_empty() {
                    append_journal(self.journal, &line(words)).map_err(|e| failed(self.journal, e))?;
                    journaled = true;
                }
            }
            if before.as_ref() == Some(&after) {
                return Ok(());
            }
            write_atomically(self.path, state.to_string().as_bytes()).map_err(|e| failed(self.path, e))
        })();
        if result.is_err() && fact && !journaled {
            let text = read_journal(self.journal).unwrap_or_default();
            // The record as the file and the journal say, when the file can
            // be read (a read-only /var can): the line then is exact, for
            // the journal is merged into this file before anything else
            // changes it. Otherwise what the journal alone says of it.
            let there = fs::symlink_metadata(self.path).is_ok();
            let known = State::load(self.path).ok().filter(|s| there && !s.is_copy).and_then(|mut s| {
                apply_journal(&mut s, &text, self.journal).ok()?;
                Some(s.records.get(&uuid).cloned().unwrap_or_default())
            });
            let exact = known.is_some();
            let (view, last) = journal_view(&text, &uuid);
            let before = known.unwrap_or(view);
            let mut after = before.clone();
            change(&mut after);
            after.normalize();
            let sets = if exact { Vec::new() } else { assigned_keys(change) };
            let words = journal_words(&before, &after, &sets, &last);
            if !words.is_empty() {
                append_journal(self.journal, &line(words)).map_err(|e| failed(self.journal, e))?;
            }
        }
        result
    }
}

/// The lock that orders the changes of a store and its journal
/// (JOURNAL.lock beside the journal), when it can be taken.
fn journal_lock(journal: &Path) -> Option<Lock> {
    // Lock::take replaces the path's last extension with "lock".
    let mut name = journal.as_os_str().to_owned();
    name.push(".order");
    Lock::take(Path::new(&name)).ok()
}

fn read_journal(journal: &Path) -> io::Result<String> {
    match fs::read_to_string(journal) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        r => r,
    }
}

fn remove_journal(journal: &Path) -> io::Result<()> {
    match fs::remove_file(journal) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The keys a change sets whatever the record held (those it gives the
/// same value in a record with every mark and one with none): what a fact
/// asserts, where the record it applies to is not known for sure.
fn assigned_keys(change: &mut dyn FnMut(&mut Record)) -> Vec<&'static str> {
    let mut low = Record::default();
    let mut high = Record {
        layout: Some(Layout::Header),
        attached: Some(Uuid::from_u128(u128::MAX)),
        pending: true,
        stale: true,
        state: Some(BdevState::Dirty),
        mode: Some(CacheMode::Writeback),
        new: true,
        ..Record::default()
    };
    change(&mut low);
    change(&mut high);
    KEYS.into_iter().filter(|k| low.value(k) == high.value(k)).collect()
}

/// A journal line's words: what `after` changed of `before`, and the keys
/// of `sets` as `after` has them, unless the journal says so last already
/// (`last`).
fn journal_words(before: &Record, after: &Record, sets: &[&str], last: &BTreeMap<String, String>) -> Vec<String> {
    let mut words = before.delta(after);
    for &k in sets {
        let v = after.value(k);
        let said = words.iter().any(|w| w.split_once('=').is_some_and(|(key, _)| key == k));
        if !v.is_empty() && !said && last.get(k) != Some(&v) {
            words.push(format!("{k}={v}"));
        }
    }
    words
}

/// What the journal alone says of `uuid`: its lines applied over an empty
/// record, and the last value of each key they set. Damaged lines are
/// left out (the merge reports them).
fn journal_view(text: &str, uuid: &Uuid) -> (Record, BTreeMap<String, String>) {
    let mut rec = Record::default();
    let mut last = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        if words.next().and_then(|w| w.parse::<Uuid>().ok()).as_ref() != Some(uuid) {
            continue;
        }
        if let Ok((_, r)) = parse_line(line, &rec) {
            rec = r;
            last.extend(words.filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())));
        }
    }
    (rec, last)
}

/// Applies a journal's lines to a state, in their order: each sets the
/// keys it holds over the record as it is.
fn apply_journal(state: &mut State, text: &str, journal: &Path) -> Result<(), StateError> {
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let damaged = |what: String| StateError::Damaged { path: journal.to_owned(), line: i + 1, what };
        let uuid = line.split_ascii_whitespace().next().and_then(|w| w.parse::<Uuid>().ok());
        let base = uuid.and_then(|u| state.records.get(&u)).cloned().unwrap_or_default();
        let (uuid, rec) = parse_line(line, &base).map_err(damaged)?;
        state.records.insert(uuid, rec);
    }
    Ok(())
}

fn append_journal(journal: &Path, line: &str) -> io::Result<()> {
    if let Some(dir) = journal.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut f =
        fs::OpenOptions::new().append(true).create(true).mode(0o600).custom_flags(NO_FOLLOW).open(journal)?;
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// Applies the journal an initramfs (or a fact the file could not take)
/// left under /run to the system's state file, then removes it; true when
/// there was one. Its lines are changes made at this boot, after what the
/// file holds (every write of the file merges the journal first): each
/// key is set over the file's record, so what happened since a copy was
/// made and the journal does not say stays. Applying a journal twice (a
/// crash before its removal) gives the same file. Nothing is merged into a
/// copy.
pub fn merge_journal(store: &Store) -> Result<bool, StateError> {
    let _order = journal_lock(store.journal);
    let text = match fs::read_to_string(store.journal) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(StateError::Io(store.journal.to_owned(), e)),
    };
    // A missing file may be a /var not mounted yet: the journal waits.
    if !store.path.exists() {
        return Ok(false);
    }
    let _lock = Lock::take(store.path)?;
    let mut state = State::load(store.path)?;
    if state.is_copy {
        return Ok(false);
    }
    apply_journal(&mut state, &text, store.journal)?;
    state.save(store.path)?;
    remove_journal(store.journal).map_err(|e| StateError::Io(store.journal.to_owned(), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store<'a>(path: &'a Path, journal: &'a Path) -> Store<'a> {
        Store { path, journal }
    }

    #[test]
    fn round_trip_and_damage() {
        let u = Uuid::from_u128(7);
        let mut s = State::default();
        s.records.insert(
            u,
            Record {
                layout: Some(Layout::Header),
                attached: Some(Uuid::from_u128(9)),
                pending: true,
                stale: true,
                state: Some(BdevState::Dirty),
                mode: Some(CacheMode::Writeback),
                new: false,
                identity: Identity {
                    sectors: Some(4096),
                    disk: Some(crate::tab::identity::DiskId::Serial("QM 1".into())),
                    partition: Some(1),
                    part_uuid: Some("1234abcd-01".into()),
                    fs_uuid: None,
                },
                unknown: vec![("size".into(), "2048".into())],
            },
        );
        let text = s.to_string();
        assert_eq!(State::parse(&text, Path::new("s")).unwrap(), s);
        let broken = text.replace("layout=header", "layout=sideways");
        let e = State::parse(&broken, Path::new("s")).unwrap_err().to_string();
        assert!(e.starts_with("s:2: damaged state record (bad layout 'sideways')"), "{e}");
    }

    #[test]
    fn unknown_state_keys_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let u = "00000000-0000-0000-0000-000000000001";
        fs::write(&p, format!("{HEADER}\n{u} layout=raw identity=wwn-0x5 size=99\n")).unwrap();
        store(&p, &dir.path().join("j")).update(Uuid::from_u128(1), "a test", |r| r.stale = true).unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains(&format!("{u} layout=raw stale=1 identity=wwn-0x5 size=99")), "{text}");
    }

    #[test]
    fn an_identity_goes_through_the_journal_and_a_cleared_field_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        let system = dir.path().join("system");
        let journal = dir.path().join("state.journal");
        let u = Uuid::from_u128(1);
        let line = format!("{} sectors=8 disk=serial:a\\x20b fsuuid=ab", u.hyphenated());
        fs::write(&copy, format!("{COPY_HEADER}\n{line}\n")).unwrap();
        fs::write(&system, format!("{HEADER}\n{line}\n")).unwrap();
        store(&copy, &journal)
            .update(u, "a test", |r| {
                r.identity.sectors = Some(16);
                r.identity.fs_uuid = None;
            })
            .unwrap();
        merge_journal(&store(&system, &journal)).unwrap();
        let id = State::load(&system).unwrap().get(&u).unwrap().identity.clone();
        assert_eq!((id.sectors, id.fs_uuid), (Some(16), None));
        assert_eq!(id.disk, Some(crate::tab::identity::DiskId::Serial("a b".into())));
        // Two records of one device with two disks: undecidable.
        let two = format!("{HEADER}\n{line}\n{} sectors=8 disk=serial:c\n", u.hyphenated());
        let e = State::parse(&two, Path::new("s")).unwrap_err().to_string();
        assert!(e.contains("damaged state record (a second record of") && e.contains("identities"), "{e}");
    }

    #[test]
    fn conflicting_records_are_merged_conservatively_and_reported() {
        let u = "00000000-0000-0000-0000-000000000001";
        let set = "00000000-0000-0000-0000-000000000009";
        let text = format!("{HEADER}\n{u} layout=raw attached={set} mode=writeback\n{u} layout=raw stale=1 mode=writethrough\n");
        let s = State::parse(&text, Path::new("s")).unwrap();
        let r = s.get(&Uuid::from_u128(1)).unwrap();
        assert!(r.stale, "the stale mark of the second record was dropped");
        assert_eq!(r.attached, Some(Uuid::from_u128(9)));
        assert_eq!(r.mode, Some(CacheMode::Writeback));
        assert_eq!(s.conflicts.len(), 1);
        assert!(s.conflicts[0].starts_with("s:3: a second record of"), "{:?}", s.conflicts);
        let other = format!("{HEADER}\n{u} attached={set}\n{u} attached=00000000-0000-0000-0000-000000000008\n");
        let e = State::parse(&other, Path::new("s")).unwrap_err().to_string();
        assert!(e.contains("s:3: damaged state record (a second record of"), "{e}");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state");
        store(&p, &dir.path().join("j")).update(Uuid::from_u128(1), "a test", |r| r.stale = true).unwrap();
        let s = State::load(&p).unwrap();
        assert!(s.get(&Uuid::from_u128(1)).unwrap().stale);
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}"); // state and state.lock
    }

    #[test]
    fn planted_symlinks_are_not_followed_for_temporary_and_lock_files() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "root's file\n").unwrap();
        let p = dir.path().join("state");
        std::os::unix::fs::symlink(&victim, dir.path().join("state.lock")).unwrap();
        let e = store(&p, &dir.path().join("j")).update(Uuid::from_u128(1), "a test", |r| r.stale = true);
        assert!(e.is_err(), "a symlink as the lock file was followed");
        fs::remove_file(dir.path().join("state.lock")).unwrap();
        // The temporary file's first name taken by a link: another name.
        std::os::unix::fs::symlink(&victim, dir.path().join(format!(".state.{}.0", std::process::id()))).unwrap();
        store(&p, &dir.path().join("j")).update(Uuid::from_u128(1), "a test", |r| r.stale = true).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's file\n");
        assert!(State::load(&p).unwrap().get(&Uuid::from_u128(1)).unwrap().stale);
    }

    #[test]
    fn a_symlinked_file_keeps_its_link_mode_and_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real-tab");
        fs::write(&real, "old\n").unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o640)).unwrap();
        let link = dir.path().join("bcachetab");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomically(&link, b"new\n").unwrap();
        assert!(fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link was replaced");
        assert_eq!(fs::read_to_string(&real).unwrap(), "new\n");
        assert_eq!(fs::metadata(&real).unwrap().permissions().mode() & 0o7777, 0o640);
        std::os::unix::fs::symlink(dir.path().join("nowhere"), dir.path().join("dangling")).unwrap();
        assert!(write_atomically(&dir.path().join("dangling"), b"x").is_err());
        assert!(!dir.path().join("nowhere").exists());
    }

    #[test]
    fn a_copy_journals_its_changes_and_the_system_file_takes_them_over_its_newer_records() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        let system = dir.path().join("system");
        let journal = dir.path().join("run/state.journal");
        let (a, b, set) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(9));
        // The copy predates a's attach; the system's file has it.
        fs::write(&copy, format!("{COPY_HEADER}\n{} layout=raw\n", a.hyphenated())).unwrap();
        fs::write(&system, format!("{HEADER}\n{} layout=raw attached={} mode=writeback\n", a.hyphenated(), set.hyphenated()))
            .unwrap();
        let initramfs = store(&copy, &journal);
        initramfs.update(a, "a test", |r| r.stale = true).unwrap();
        initramfs.update(b, "a test", |r| r.layout = Some(Layout::Header)).unwrap();
        let sys = store(&system, &journal);
        assert!(merge_journal(&sys).unwrap());
        assert!(!journal.exists());
        let s = State::load(&system).unwrap();
        let ra = s.get(&a).unwrap();
        assert!(ra.stale && ra.attached == Some(set) && ra.mode == Some(CacheMode::Writeback), "{ra:?}");
        assert_eq!(s.get(&b).unwrap().layout, Some(Layout::Header));
        assert!(!merge_journal(&sys).unwrap(), "merged twice");
        // A detach recorded in the copy clears the set in the system's file.
        initramfs.update(a, "a test", |r| r.attached = Some(set)).unwrap();
        initramfs.update(a, "a test", |r| r.attached = None).unwrap();
        merge_journal(&sys).unwrap();
        assert_eq!(State::load(&system).unwrap().get(&a).unwrap().attached, None);
        // Nothing merges into a copy.
        initramfs.update(a, "a test", |r| r.stale = false).unwrap();
        assert!(!merge_journal(&initramfs).unwrap());
    }

    fn record(path: &Path, u: Uuid) -> Record {
        State::load(path).unwrap().get(&u).cloned().unwrap_or_default()
    }

    /// Finding: a record without `attached=` counted as never attached
    /// however it was made, and a device a set held data for was
    /// registered as new to it (the kernel drops the set's slot for it).
    #[test]
    fn records_made_otherwise_than_by_adopt_do_not_prove_a_device_new() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state");
        let j = dir.path().join("state.journal");
        let st = store(&p, &j);
        let (set, mut n) = (Uuid::from_u128(9), 0);
        let mut fresh = || {
            n += 1;
            Uuid::from_u128(n)
        };
        // A refused attach undone over no record (transition::undo_attach).
        let u = fresh();
        st.update(u, "a test", |r| crate::tab::rules::ahead_of_attach(r, set)).unwrap();
        st.update(u, "a test", |r| *r = Record::default()).unwrap();
        assert!(!record(&p, u).proves_never_attached());
        // tab identify of a device with no record.
        let u = fresh();
        st.update(u, "a test", |r| r.identity.sectors = Some(8)).unwrap();
        assert!(!record(&p, u).proves_never_attached());
        // The kernel's event for a uuid with no record.
        let u = fresh();
        st.record_fact(u, "a test", |r| r.mode = Some(CacheMode::Writeback)).unwrap();
        assert!(!record(&p, u).proves_never_attached());
        // A journal line for a uuid with no record.
        let u = fresh();
        fs::write(&j, format!("{} layout=raw sectors=8\n", u.hyphenated())).unwrap();
        assert!(merge_journal(&st).unwrap());
        assert!(!record(&p, u).proves_never_attached());
        // A state file written before the mark.
        let old = State::parse(&format!("{HEADER}\n{} layout=raw sectors=8\n", u.hyphenated()), &p).unwrap();
        assert!(!old.get(&u).unwrap().proves_never_attached());
        // adopt's fresh declaration: new until a set is named, and not
        // again after a detach (the set's journal may lose its end).
        let u = fresh();
        st.update(u, "a test", |r| r.new = true).unwrap();
        assert!(record(&p, u).proves_never_attached());
        assert!(fs::read_to_string(&p).unwrap().contains(&format!("{} new=1", u.hyphenated())));
        st.update(u, "a test", |r| crate::tab::rules::ahead_of_attach(r, set)).unwrap();
        assert!(!record(&p, u).new, "{:?}", record(&p, u));
        st.update(u, "a test", |r| r.attached = None).unwrap();
        assert!(!record(&p, u).proves_never_attached());
    }

    #[test]
    fn the_new_mark_round_trips_and_goes_with_a_set() {
        let u = "00000000-0000-0000-0000-000000000001";
        let set = "00000000-0000-0000-0000-000000000009";
        let s = State::parse(&format!("{HEADER}\n{u} layout=raw new=1 sectors=8\n"), Path::new("s")).unwrap();
        assert!(s.get(&Uuid::from_u128(1)).unwrap().proves_never_attached());
        assert_eq!(State::parse(&s.to_string(), Path::new("s")).unwrap(), s);
        // A set named: new to no set, whatever the line says.
        let s = State::parse(&format!("{HEADER}\n{u} new=1 attached={set}\n"), Path::new("s")).unwrap();
        assert!(!s.get(&Uuid::from_u128(1)).unwrap().new);
        assert!(!s.to_string().contains("new="), "{s}");
        // Two records of one device: new only if both say so.
        let s = State::parse(&format!("{HEADER}\n{u} new=1\n{u} sectors=8\n"), Path::new("s")).unwrap();
        assert!(!s.get(&Uuid::from_u128(1)).unwrap().new);
    }

    /// Finding: the journal's lines were applied over the file in the order
    /// merged: a change written to the file directly after switch_root
    /// (or once /var was writable again) was undone by an older line.
    #[test]
    fn a_direct_write_after_the_journal_is_not_undone_by_its_older_lines() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        let system = dir.path().join("system");
        let journal = dir.path().join("run/state.journal");
        let (u, set) = (Uuid::from_u128(1), Uuid::from_u128(9));
        let line = format!("{} layout=raw attached={} mode=writethrough", u.hyphenated(), set.hyphenated());
        let (initramfs, sys) = (store(&copy, &journal), store(&system, &journal));
        // The initramfs saw the attach (a fresh slot, stale mark dropped);
        // then the system ran the device without its set (stale again).
        fs::write(&copy, format!("{COPY_HEADER}\n{line} stale=1\n")).unwrap();
        fs::write(&system, format!("{HEADER}\n{line} stale=1\n")).unwrap();
        initramfs.record_fact(u, "a test", |r| crate::tab::rules::confirm_attach(r, set)).unwrap();
        sys.update(u, "a test", crate::tab::rules::mark_stale).unwrap();
        assert!(!journal.exists(), "the direct write did not take the journal first");
        merge_journal(&sys).unwrap();
        assert!(record(&system, u).stale, "the older attach dropped the newer stale mark");
        // The other way round: the initramfs ran it without its set, then
        // the system saw it attached afresh.
        fs::write(&copy, format!("{COPY_HEADER}\n{line}\n")).unwrap();
        fs::write(&system, format!("{HEADER}\n{line}\n")).unwrap();
        initramfs.update(u, "a test", crate::tab::rules::mark_stale).unwrap();
        sys.record_fact(u, "a test", |r| crate::tab::rules::confirm_attach(r, set)).unwrap();
        merge_journal(&sys).unwrap();
        assert!(!record(&system, u).stale, "the older stale mark would drop the fresh slot's data");
    }

    /// A crash after the merged file is written and before the journal is
    /// removed: the journal is applied again over the same file first, and
    /// the change that follows it stays.
    #[test]
    fn a_journal_merged_twice_gives_the_same_file_and_keeps_what_came_after() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("system");
        let journal = dir.path().join("state.journal");
        let (u, set) = (Uuid::from_u128(1), Uuid::from_u128(9));
        fs::write(&system, format!("{HEADER}\n{} layout=raw attached={} stale=1\n", u.hyphenated(), set.hyphenated()))
            .unwrap();
        let lines = format!("{} pending=0 stale=0\n{} state=clean\n", u.hyphenated(), u.hyphenated());
        fs::write(&journal, &lines).unwrap();
        let sys = store(&system, &journal);
        merge_journal(&sys).unwrap();
        let once = fs::read_to_string(&system).unwrap();
        fs::write(&journal, &lines).unwrap();
        merge_journal(&sys).unwrap();
        assert_eq!(fs::read_to_string(&system).unwrap(), once);
        fs::write(&journal, &lines).unwrap();
        sys.update(u, "a test", crate::tab::rules::mark_stale).unwrap();
        let r = record(&system, u);
        assert!(r.stale && r.state == Some(BdevState::Stale), "{r:?}");
        assert!(!journal.exists());
    }

    /// Finding: a fact the file could not take was journaled over an empty
    /// record, so what it cleared (a stale mark, the set at a detach's end)
    /// was not in its line, and the merge kept the file's old marks.
    #[test]
    fn a_fact_the_file_could_not_take_is_journaled_against_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let system = dir.path().join("state");
        let journal = dir.path().join("run/state.journal");
        let (u, set) = (Uuid::from_u128(1), Uuid::from_u128(9));
        let sys = store(&system, &journal);
        let marked = format!("{HEADER}\n{} layout=raw attached={} pending=1 stale=1\n", u.hyphenated(), set.hyphenated());
        fs::write(&system, &marked).unwrap();
        // Readable, but no change can be made (the lock cannot be taken,
        // as on a read-only /var).
        let blocker = dir.path().join("state.lock");
        fs::create_dir(&blocker).unwrap();
        assert!(sys.record_fact(u, "a test", |r| crate::tab::rules::confirm_attach(r, set)).is_err());
        assert_eq!(fs::read_to_string(&journal).unwrap(), format!("{} pending=0 stale=0\n", u.hyphenated()));
        // Nothing more to say: no second line.
        assert!(sys.record_fact(u, "a test", |r| crate::tab::rules::confirm_attach(r, set)).is_err());
        assert_eq!(fs::read_to_string(&journal).unwrap().lines().count(), 1);
        // The detach's end, over the record the journal makes of it.
        let detached = |r: &mut Record| {
            r.attached = None;
            r.pending = false;
            r.stale = false;
            r.state = Some(BdevState::None);
        };
        assert!(sys.record_fact(u, "a test", detached).is_err());
        fs::remove_dir(&blocker).unwrap();
        assert!(merge_journal(&sys).unwrap());
        let r = record(&system, u);
        assert!(r.attached.is_none() && !r.stale && !r.pending, "{r:?}");

        // A file that cannot be read at all: the line holds every key the
        // fact sets, whatever the record said.
        fs::write(&system, &marked).unwrap();
        let hidden = dir.path().join("state.hidden");
        fs::rename(&system, &hidden).unwrap();
        fs::create_dir(&system).unwrap();
        assert!(sys.record_fact(u, "a test", |r| crate::tab::rules::confirm_attach(r, set)).is_err());
        let text = fs::read_to_string(&journal).unwrap();
        assert_eq!(text, format!("{} attached={} pending=0 stale=0\n", u.hyphenated(), set.hyphenated()));
        fs::remove_dir(&system).unwrap();
        fs::rename(&hidden, &system).unwrap();
        assert!(merge_journal(&sys).unwrap());
        let r = record(&system, u);
        assert!(r.attached == Some(set) && !r.stale && !r.pending, "{r:?}");
    }

    /// A fact seen in the initramfs that its copy already held (the copy
    /// predates a stale mark the system's file has): its line says what
    /// the fact sets, once.
    #[test]
    fn a_fact_in_a_copy_is_journaled_even_when_the_copy_already_held_it() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy");
        let system = dir.path().join("system");
        let journal = dir.path().join("state.journal");
        let (u, set) = (Uuid::from_u128(1), Uuid::from_u128(9));
        let line = format!("{} layout=raw attached={}", u.hyphenated(), set.hyphenated());
        fs::write(&copy, format!("{COPY_HEADER}\n{line}\n")).unwrap();
        fs::write(&system, format!("{HEADER}\n{line} stale=1\n")).unwrap();
        let initramfs = store(&copy, &journal);
        initramfs.record_fact(u, "a test", |r| crate::tab::rules::confirm_attach(r, set)).unwrap();
        initramfs.record_fact(u, "a test", |r| crate::tab::rules::confirm_attach(r, set)).unwrap();
        assert_eq!(fs::read_to_string(&journal).unwrap().lines().count(), 1);
        merge_journal(&store(&system, &journal)).unwrap();
        assert!(!record(&system, u).stale);
        // A write-ahead change that changes nothing of the copy journals
        // nothing.
        initramfs.update(u, "a test", |r| r.layout = Some(Layout::Raw)).unwrap();
        assert!(!journal.exists());
    }

    #[test]
    fn write_ahead_fails_with_nothing_changed_when_the_file_cannot_be_written() {
        // Root writes through mode bits: a directory that is a file fails
        // for every user (the VM tests use a read-only mount).
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("var");
        fs::write(&blocker, "").unwrap();
        let p = blocker.join("state");
        let e = store(&p, &dir.path().join("j")).update(Uuid::from_u128(1), "the stale mark", |r| r.stale = true);
        let e = e.unwrap_err().to_string();
        assert!(e.contains("cannot record the stale mark of") && e.contains("nothing was changed"), "{e}");
        assert!(!dir.path().join("j").exists(), "a write-ahead record went to the journal");
        // A fact the kernel reported goes to the journal instead.
        let e = store(&p, &dir.path().join("j")).record_fact(Uuid::from_u128(1), "the attach", |r| r.stale = true);
        assert!(e.is_err());
        assert_eq!(fs::read_to_string(dir.path().join("j")).unwrap(), "00000000-0000-0000-0000-000000000001 stale=1\n");
    }
}
