//! The state bcachetab's devices carry from one boot to the next, which
//! bcachetab itself does not say: the layout each device is used with,
//! whether it has been attached to its cache set, and stale marks (a
//! device run without its set, whose cached data must never be served
//! again). Owned by the tool; written atomically.
//!
//! ```text
//! # bcache state: written by bcache, do not edit
//! 6f1c1e0a-3b44-4e0b-9c57-1f0f0b6a7d21 layout=raw attached=0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa state=dirty mode=writeback
//! ```
//!
//! A copy inside an initramfs may be older than the truth; a copy says so
//! in its first line, and the rules in [`crate::apply`] read it
//! conservatively.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use uuid::Uuid;

use crate::bcachetab::Layout;
use crate::os_error_text;
use crate::superblock::{BdevState, CacheMode};

pub const DEFAULT_PATH: &str = "/var/lib/bcache/state";

const HEADER: &str = "# bcache state: written by bcache, do not edit";
/// First line of a copy made for an initramfs.
pub const COPY_HEADER: &str = "# bcache state: a copy, possibly older than the system's";

/// What is known of one backing device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// The layout its data has been presented with.
    pub layout: Option<Layout>,
    /// The cache set it has been attached to: the set holds a slot for it,
    /// maybe with dirty data.
    pub attached: Option<Uuid>,
    /// Run without its set since it was last attached: the next attach must
    /// start from an invalidated slot.
    pub stale: bool,
    /// The state the kernel last reported.
    pub state: Option<BdevState>,
    pub mode: Option<CacheMode>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}:{line}: damaged state record ({what}); devices with a cache set are left down until it is repaired", path.display())]
    Damaged { path: PathBuf, line: usize, what: String },
    #[error("{}: {}", .0.display(), os_error_text(.1))]
    Io(PathBuf, io::Error),
}

/// The state file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub records: BTreeMap<Uuid, Record>,
    /// Read from a copy (an initramfs's), which may be out of date.
    pub is_copy: bool,
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
            let mut words = line.split_whitespace();
            let uuid: Uuid = words
                .next()
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| damaged("no uuid".into()))?;
            let mut rec = Record::default();
            for word in words {
                let (k, v) = word.split_once('=').ok_or_else(|| damaged(format!("'{word}'")))?;
                let bad = || damaged(format!("bad {k} '{v}'"));
                match k {
                    "layout" => rec.layout = Some(Layout::parse(v).ok_or_else(bad)?),
                    "attached" => rec.attached = Some(v.parse().map_err(|_| bad())?),
                    "stale" => rec.stale = v == "1",
                    "state" => {
                        rec.state = Some(BdevState::ALL.into_iter().find(|s| s.name() == v).ok_or_else(bad)?)
                    }
                    "mode" => rec.mode = Some(v.parse().map_err(|_| bad())?),
                    // Written by a newer version: kept out of decisions.
                    _ => {}
                }
            }
            state.records.insert(uuid, rec);
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
            if r.stale {
                f.write_str(" stale=1")?;
            }
            if let Some(s) = r.state {
                write!(f, " state={}", s.name())?;
            }
            if let Some(m) = r.mode {
                write!(f, " mode={}", m.name())?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

/// Replaces `path` with `contents` so that a crash leaves either the old
/// or the new file, durably: write a temporary file beside it, fsync it,
/// rename it over, fsync the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// An exclusive lock on a file beside `path`, held while the value lives:
/// many udev workers update the state at once.
pub struct Lock {
    _flock: nix::fcntl::Flock<fs::File>,
}

impl Lock {
    pub fn take(path: &Path) -> Result<Lock, StateError> {
        let lock_path = path.with_extension("lock");
        if let Some(dir) = lock_path.parent() {
            fs::create_dir_all(dir).map_err(|e| StateError::Io(dir.to_owned(), e))?;
        }
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StateError::Io(lock_path.clone(), e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(|flock| Lock { _flock: flock })
            .map_err(|(_, e)| StateError::Io(lock_path, io::Error::from(e)))
    }
}

/// Changes the record of `uuid` under the lock, and saves.
pub fn update(path: &Path, uuid: Uuid, change: impl FnOnce(&mut Record)) -> Result<(), StateError> {
    let _lock = Lock::take(path)?;
    let mut state = State::load(path)?;
    let before = state.records.get(&uuid).cloned();
    let rec = state.records.entry(uuid).or_default();
    change(rec);
    if before.as_ref() == Some(rec) {
        return Ok(());
    }
    state.save(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let u = Uuid::from_u128(7);
        let mut s = State::default();
        s.records.insert(
            u,
            Record {
                layout: Some(Layout::Header),
                attached: Some(Uuid::from_u128(9)),
                stale: true,
                state: Some(BdevState::Dirty),
                mode: Some(CacheMode::Writeback),
            },
        );
        let text = s.to_string();
        assert_eq!(State::parse(&text, Path::new("s")).unwrap(), s);
        let broken = text.replace("layout=header", "layout=sideways");
        let e = State::parse(&broken, Path::new("s")).unwrap_err().to_string();
        assert!(e.starts_with("s:2: damaged state record (bad layout 'sideways')"), "{e}");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/state");
        update(&p, Uuid::from_u128(1), |r| r.stale = true).unwrap();
        let s = State::load(&p).unwrap();
        assert!(s.get(&Uuid::from_u128(1)).unwrap().stale);
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}"); // state and state.lock
    }
}
