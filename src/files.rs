//! Files the tool writes as root, often from udev: replaced atomically
//! and durably, never through a planted symlink, locked between the
//! processes that share them.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::os_error_text;

/// An I/O error on a file, with the file's name. Its text says the system's
/// words already: no source, or a chain would print them twice.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", .0.display(), os_error_text(.1))]
pub struct PathError(pub PathBuf, pub io::Error);

/// Flags for every file the tool creates: a planted symlink is never
/// followed, and no descriptor leaks into the programs udev runs.
pub const NO_FOLLOW: i32 = nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC;

/// Replaces `path` with `contents` so that a crash leaves either the old
/// or the new file, durably: write a new temporary file beside it, fsync
/// it, rename it over, fsync the directory. A symlink at `path` is
/// followed (its target is replaced, the link kept); the file's mode and
/// owner are kept (0644 and the caller's for a new file).
pub fn write_atomically(path: &Path, contents: &[u8]) -> io::Result<()> {
    let target = match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => fs::canonicalize(path).map_err(|e| {
            io::Error::new(e.kind(), format!("a symlink to nowhere ({}); refused", os_error_text(&e)))
        })?,
        _ => path.to_owned(),
    };
    let existing = fs::metadata(&target).ok();
    let dir = target.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mode = existing.as_ref().map_or(0o644, |m| m.mode() & 0o7777);
    let (tmp, mut f) = create_temp(dir, &name, mode)?;
    let result = (|| {
        if let Some(m) = &existing {
            let meta = f.metadata()?;
            if (meta.uid(), meta.gid()) != (m.uid(), m.gid()) {
                std::os::unix::fs::fchown(&f, Some(m.uid()), Some(m.gid()))?;
            }
            // The umask may have taken bits away at creation.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        }
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, &target)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `path` empty, or empties it, never through a symlink: its
/// modification time is the mark.
pub fn touch(path: &Path) -> io::Result<()> {
    fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).custom_flags(NO_FOLLOW).open(path).map(drop)
}

/// A new file `.NAME.PID.N` in `dir`, created exclusively.
fn create_temp(dir: &Path, name: &str, mode: u32) -> io::Result<(PathBuf, fs::File)> {
    let mut n = 0u32;
    loop {
        let tmp = dir.join(format!(".{name}.{}.{n}", std::process::id()));
        match fs::OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(NO_FOLLOW).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            // Left by a process of the same pid that crashed, or planted.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 100 => n += 1,
            Err(e) => return Err(e),
        }
    }
}

/// An exclusive lock on a file beside `path`, held while the value lives:
/// many udev workers update the state at once.
pub struct Lock {
    _flock: nix::fcntl::Flock<fs::File>,
}

impl Lock {
    pub fn take(path: &Path) -> Result<Lock, PathError> {
        let lock_path = path.with_extension("lock");
        if let Some(dir) = lock_path.parent() {
            fs::create_dir_all(dir).map_err(|e| PathError(dir.to_owned(), e))?;
        }
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(NO_FOLLOW)
            .open(&lock_path)
            .map_err(|e| PathError(lock_path.clone(), e))?;
        nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map(|flock| Lock { _flock: flock })
            .map_err(|(_, e)| PathError(lock_path, io::Error::from(e)))
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_that_cannot_be_taken_says_why_once() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        // Its directory is a file.
        let e = Lock::take(&file.join("tab")).err().expect("no lock under a file");
        let chain = format!("{:#}", anyhow::Error::new(e));
        assert_eq!(chain.matches("File exists").count(), 1, "{chain}");
    }
}
