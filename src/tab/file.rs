//! `/etc/bcachetab`: the backing devices used with bcache without a
//! superblock of their own, declared once, one per line (bcachetab(5)).
//!
//! ```text
//! # name  device                        uuid                                  cset                                  options
//! data0   /dev/disk/by-id/wwn-0x5000c5  6f1c1e0a-3b44-4e0b-9c57-1f0f0b6a7d21  0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa  mode=writeback,sequential_cutoff=4M
//! ```
//!
//! Parsing never stops at a bad line: each problem is reported with the
//! file, the line and the field, and the good lines are kept, so that one
//! typo does not keep every other device down at boot.

use std::borrow::Cow;
use std::fmt;
use std::path::{Path, PathBuf};

use rustc_hash::FxHashMap;
use uuid::Uuid;

use crate::layout::Layout;
use crate::superblock::{CacheMode, LABEL_LEN};
use crate::units::parse_bytes;

/// Where bcachetab lives unless told otherwise.
pub const DEFAULT_PATH: &str = "/etc/bcachetab";

/// How a line names its backing device. Stable names (UUID=, PARTUUID=,
/// PARTLABEL=, LABEL=, /dev/disk/by-id/...) survive renumbering; a plain
/// path does not.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSpec {
    /// The filesystem (or other content) uuid, as blkid reports it.
    Uuid(String),
    /// The filesystem label, [`escape`]d as the line holds it.
    Label(String),
    /// The partition's uuid in its partition table.
    PartUuid(String),
    /// The partition's name in a GPT, [`escape`]d as the line holds it.
    PartLabel(String),
    /// A path under /dev, e.g. a /dev/disk/by-id link, without repeated
    /// slashes or `.` components.
    Path(PathBuf),
}

/// Whether a byte of a label cannot stand as it is in a field: the line
/// splitter's separators, the comment sign, the escape sign itself.
fn needs_escape(b: u8) -> bool {
    b.is_ascii_whitespace() || b.is_ascii_control() || b == b'#' || b == b'\\'
}

/// A label or partition name as a bcachetab field (or a state file value)
/// holds it: whitespace, control characters, `#` and `\` as `\xHH`, the
/// escapes of udev's /dev/disk/by-label names (`my\x20disk`).
pub fn escape(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(needs_escape) {
        return Cow::Borrowed(raw);
    }
    let mut out = String::with_capacity(raw.len() + 8);
    for c in raw.chars() {
        match u8::try_from(c) {
            Ok(b) if needs_escape(b) => out.push_str(&format!("\\x{b:02x}")),
            _ => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The bytes `text` stands for: each `\xHH` one byte (udev's and
/// [`escape`]'s escapes), anything else as it is.
fn unescaped(text: &str) -> impl Iterator<Item = u8> + '_ {
    let b = text.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let hex = |j: usize| b.get(j).and_then(|&c| (c as char).to_digit(16));
        let byte = match (b.get(i)?, b.get(i + 1), hex(i + 2), hex(i + 3)) {
            (b'\\', Some(b'x'), Some(h), Some(l)) => {
                i += 4;
                (h * 16 + l) as u8
            }
            (&c, ..) => {
                i += 1;
                c
            }
        };
        Some(byte)
    })
}

/// The text `\xHH` escapes stand for (ID_FS_LABEL_ENC, a by-partlabel
/// link's name, a bcachetab label).
pub fn unescape(text: &str) -> Cow<'_, str> {
    if !text.contains("\\x") {
        return Cow::Borrowed(text);
    }
    let bytes: Vec<u8> = unescaped(text).collect();
    Cow::Owned(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// Whether an escaped label names the label `raw`: as [`unescape`] reads
/// it (escapes that are not UTF-8 read as U+FFFD, as the parse keeps
/// them), allocating only for a label with escapes (every line of the
/// one-device lookup is compared).
fn names_label(escaped: &str, raw: &str) -> bool {
    if !escaped.contains("\\x") {
        return escaped == raw;
    }
    unescape(escaped) == raw
}

/// Two paths equal component by component (`/dev//loop0` is `/dev/loop0`).
/// The one-device lookup compares every path line with every link of the
/// device, and building components costs ten times the bytes; so the
/// bytes decide where they can. Past their common prefix (the same
/// components so far), if neither path goes on with a separator or a dot,
/// the component each is in has different bytes at the same offset, or
/// one path ends inside a component the other extends: no separator or
/// "." component can make them equal. Only a path that continues with '/'
/// or '.' there is compared component by component.
fn same_path(a: &str, b: &str) -> bool {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let common = x.iter().zip(y).take_while(|(p, q)| p == q).count();
    let may_fold = |s: &[u8]| matches!(s.get(common), Some(b'/' | b'.'));
    if x.len() == y.len() && common == x.len() {
        return true;
    }
    (may_fold(x) || may_fold(y)) && Path::new(a) == Path::new(b)
}

/// A device field as written, borrowed from the text: what a
/// [`DeviceSpec`] holds, without allocating (the one-device lookup reads
/// every line's device field).
#[derive(Debug, Clone, Copy)]
enum SpecRef<'a> {
    Uuid(&'a str),
    Label(&'a str),
    PartUuid(&'a str),
    PartLabel(&'a str),
    Path(&'a str),
}

impl<'a> SpecRef<'a> {
    /// The kind of name, by its prefix; None for what names no device.
    fn classify(s: &'a str) -> Option<SpecRef<'a>> {
        Some(if let Some(v) = s.strip_prefix("UUID=") {
            SpecRef::Uuid(v)
        } else if let Some(v) = s.strip_prefix("PARTUUID=") {
            SpecRef::PartUuid(v)
        } else if let Some(v) = s.strip_prefix("PARTLABEL=") {
            SpecRef::PartLabel(v)
        } else if let Some(v) = s.strip_prefix("LABEL=") {
            SpecRef::Label(v)
        } else if s.starts_with("/dev/") {
            SpecRef::Path(s)
        } else {
            return None;
        })
    }

    fn parse(s: &'a str) -> Result<SpecRef<'a>, String> {
        // Only labels have escapes; anything else with a separator in it
        // (given on the command line) would break the line it goes into.
        let plain = |s: &str| !s.bytes().any(needs_escape);
        let spec = SpecRef::classify(s).ok_or_else(|| {
            format!("'{s}' is not a device (UUID=, PARTUUID=, PARTLABEL=, LABEL= or a /dev path)")
        })?;
        match spec {
            // What normalising leaves must still be under /dev.
            SpecRef::Path(p) if !p["/dev/".len()..].split('/').any(|c| !c.is_empty() && c != ".") => {
                Err(format!("'{s}' names nothing under /dev"))
            }
            SpecRef::Path(p) if !plain(p) => {
                Err(format!("'{s}': a path with whitespace, '#' or '\\' cannot be written in bcachetab"))
            }
            SpecRef::Uuid(v) | SpecRef::PartUuid(v) | SpecRef::PartLabel(v) | SpecRef::Label(v) if v.is_empty() => {
                Err(format!("'{s}' names nothing"))
            }
            SpecRef::Uuid(v) | SpecRef::PartUuid(v) if !plain(v) => Err(format!("'{s}' is not a uuid")),
            _ => Ok(spec),
        }
    }

    /// [`SpecRef::parse`] of a field that names the device `ids`
    /// describes, if it does: the one-device lookup compares every line's
    /// field, and checks only the lines that name the device.
    fn parse_if_names(s: &'a str, ids: &DeviceIds) -> Option<SpecRef<'a>> {
        SpecRef::classify(s).filter(|spec| spec.matches(ids)).and_then(|_| SpecRef::parse(s).ok())
    }

    /// Whether the block device `ids` describes is the one named (uuids in
    /// any case, labels unescaped, paths component by component). The one
    /// comparison of every path: udev's event, `tab apply DEV`, adopt.
    fn matches(self, ids: &DeviceIds) -> bool {
        let eq = |have: &Option<String>, want: &str| have.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(want));
        let label = |have: &Option<String>, want: &str| have.as_deref().is_some_and(|v| names_label(want, v));
        match self {
            SpecRef::Uuid(u) => eq(&ids.fs_uuid, u),
            SpecRef::Label(l) => label(&ids.fs_label, l),
            SpecRef::PartUuid(u) => eq(&ids.part_uuid, u),
            SpecRef::PartLabel(l) => label(&ids.part_name, l),
            SpecRef::Path(p) => ids.devname.iter().chain(&ids.links).any(|d| same_path(d, p)),
        }
    }

    /// Whether two lines name the same device by the same name (the
    /// duplicate rule of the parse; `bcache tab check` also finds one
    /// device named two ways).
    fn same(self, other: SpecRef) -> bool {
        match (self, other) {
            (SpecRef::Uuid(a), SpecRef::Uuid(b)) | (SpecRef::PartUuid(a), SpecRef::PartUuid(b)) => a.eq_ignore_ascii_case(b),
            (SpecRef::Label(a), SpecRef::Label(b)) | (SpecRef::PartLabel(a), SpecRef::PartLabel(b)) => {
                unescaped(a).eq(unescaped(b))
            }
            (SpecRef::Path(a), SpecRef::Path(b)) => same_path(a, b),
            _ => false,
        }
    }
}

impl DeviceSpec {
    pub fn parse(s: &str) -> Result<DeviceSpec, String> {
        Ok(match SpecRef::parse(s)? {
            SpecRef::Uuid(v) => DeviceSpec::Uuid(v.to_ascii_lowercase()),
            SpecRef::PartUuid(v) => DeviceSpec::PartUuid(v.to_ascii_lowercase()),
            SpecRef::PartLabel(v) => DeviceSpec::PartLabel(escape(&unescape(v)).into_owned()),
            SpecRef::Label(v) => DeviceSpec::Label(escape(&unescape(v)).into_owned()),
            SpecRef::Path(p) => DeviceSpec::Path(Path::new(p).components().collect()),
        })
    }

    /// Whether the name survives the disks being found in another order
    /// at the next boot: a /dev/disk/by-id link, PARTUUID=, UUID= or
    /// LABEL=. A kernel name (/dev/sdX, /dev/vdX, /dev/loopN) does not;
    /// by-path follows the port, by-uuid names the bcache device once it
    /// is up, and partition names are often a tool's default.
    pub fn is_stable(&self) -> bool {
        match self {
            DeviceSpec::Uuid(_) | DeviceSpec::PartUuid(_) | DeviceSpec::Label(_) => true,
            DeviceSpec::PartLabel(_) => false,
            DeviceSpec::Path(p) => p.starts_with("/dev/disk/by-id/"),
        }
    }

    fn as_ref(&self) -> SpecRef<'_> {
        match self {
            DeviceSpec::Uuid(v) => SpecRef::Uuid(v),
            DeviceSpec::Label(v) => SpecRef::Label(v),
            DeviceSpec::PartUuid(v) => SpecRef::PartUuid(v),
            DeviceSpec::PartLabel(v) => SpecRef::PartLabel(v),
            // Made from a &str by parse: always UTF-8.
            DeviceSpec::Path(p) => SpecRef::Path(p.to_str().unwrap_or_default()),
        }
    }

    /// Whether the block device `ids` describes is the one named.
    pub fn matches(&self, ids: &DeviceIds) -> bool {
        self.as_ref().matches(ids)
    }
}

/// What names a block device, as udev's properties of it say (DEVNAME,
/// DEVLINKS, ID_FS_UUID, ID_FS_LABEL, ID_PART_ENTRY_UUID,
/// ID_PART_ENTRY_NAME): gathered once, then matched against every line.
/// Labels and partition names are held as they are, unescaped.
#[derive(Debug, Clone, Default)]
pub struct DeviceIds {
    pub devname: Option<String>,
    /// Full paths of the links to it (/dev/disk/by-id/...).
    pub links: Vec<String>,
    pub fs_uuid: Option<String>,
    pub fs_label: Option<String>,
    pub part_uuid: Option<String>,
    pub part_name: Option<String>,
}

impl DeviceIds {
    /// From a udev event's properties (DEVLINKS space-separated).
    pub fn from_props(props: &dyn Fn(&str) -> Option<String>) -> DeviceIds {
        DeviceIds {
            devname: props("DEVNAME"),
            links: props("DEVLINKS").map(|l| l.split_whitespace().map(str::to_owned).collect()).unwrap_or_default(),
            fs_uuid: props("ID_FS_UUID"),
            // ID_FS_LABEL has whitespace made '_' ("my disk" is "my_disk"):
            // the encoded one is the label itself, as libblkid reads it.
            fs_label: props("ID_FS_LABEL_ENC").map(|l| unescape(&l).into_owned()).or_else(|| props("ID_FS_LABEL")),
            part_uuid: props("ID_PART_ENTRY_UUID"),
            part_name: props("ID_PART_ENTRY_NAME").map(|n| unescape(&n).into_owned()),
        }
    }
}

impl DeviceSpec {
    /// What two lines naming the same device have in common: the kind of
    /// name and the name.
    fn key(&self) -> (u8, &str) {
        match self {
            DeviceSpec::Uuid(v) => (0, v),
            DeviceSpec::Label(v) => (1, v),
            DeviceSpec::PartUuid(v) => (2, v),
            DeviceSpec::PartLabel(v) => (3, v),
            DeviceSpec::Path(p) => (4, p.to_str().unwrap_or("")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Uuid(v) => write!(f, "UUID={v}"),
            DeviceSpec::Label(v) => write!(f, "LABEL={v}"),
            DeviceSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DeviceSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
            DeviceSpec::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The kind of value a backing device attribute in sysfs takes.
#[derive(Clone, Copy)]
enum Kind {
    /// Bytes, with the k/M/G suffixes the kernel accepts.
    Size,
    Number,
    Flag,
    Choice(&'static [&'static str]),
}

/// The tunables of a backing device (/sys/block/<dev>/bcache/) that the
/// kernel forgets at every registration, so bcachetab sets them again.
const TUNABLES: &[(&str, Kind)] = &[
    ("sequential_cutoff", Kind::Size),
    ("readahead_cache_policy", Kind::Choice(&["all", "meta-only"])),
    ("stop_when_cache_set_failed", Kind::Choice(&["auto", "always"])),
    ("writeback_metadata", Kind::Flag),
    ("writeback_running", Kind::Flag),
    ("writeback_delay", Kind::Number),
    ("writeback_percent", Kind::Number),
    ("writeback_rate", Kind::Size),
    ("writeback_consider_fragment", Kind::Flag),
    ("writeback_rate_update_seconds", Kind::Number),
    ("writeback_rate_i_term_inverse", Kind::Number),
    ("writeback_rate_p_term_inverse", Kind::Number),
    ("writeback_rate_fp_term_low", Kind::Number),
    ("writeback_rate_fp_term_mid", Kind::Number),
    ("writeback_rate_fp_term_high", Kind::Number),
    ("writeback_rate_minimum", Kind::Number),
    ("io_error_limit", Kind::Number),
    ("io_disable", Kind::Flag),
];

/// The option names bcachetab knows besides the tunables.
const OPTIONS: &[&str] = &["mode", "layout", "offset", "block", "label", "timeout"];

/// Every option bcachetab takes, tunables included.
pub fn option_names() -> impl Iterator<Item = &'static str> {
    OPTIONS.iter().copied().chain(TUNABLES.iter().map(|(n, _)| *n))
}

/// A sysfs attribute and the value to write to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Tunable {
    pub attr: &'static str,
    pub value: String,
}

/// The options field of a line.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct Options {
    pub mode: CacheMode,
    /// Pinned layout; otherwise the one recorded for the device, or the
    /// kernel's best.
    pub layout: Option<Layout>,
    /// Sectors before the data on the device itself (raw layout only).
    pub data_offset: Option<u64>,
    /// Bytes; the device's logical block size when not given.
    pub block_size: Option<u32>,
    pub label: String,
    /// Seconds a device with a cache set (not in writeback) waits for the
    /// set before it runs without it: for caches that may not come back
    /// (ephemeral disks).
    pub timeout: Option<u32>,
    pub tunables: Vec<Tunable>,
}

/// One line of bcachetab.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// 1-based line number in the file.
    pub line: usize,
    /// Name for `/dev/bcache/<name>`, if any.
    pub name: Option<String>,
    pub device: DeviceSpec,
    /// The backing device's bcache uuid. It must never change: the cache
    /// set finds the device's cached (and dirty) data by it.
    pub uuid: Uuid,
    pub cset: Option<Uuid>,
    pub options: Options,
}

/// A problem found in bcachetab: `file:line: field: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {field}: {message}", path.display())]
pub struct TabError {
    pub path: PathBuf,
    pub line: usize,
    pub field: String,
    pub message: String,
}

/// A parsed bcachetab: the good lines and the problems of the bad ones.
#[derive(Debug, Clone, Default)]
pub struct Tab {
    pub path: PathBuf,
    pub entries: Vec<Entry>,
    pub errors: Vec<TabError>,
}

impl Tab {
    /// Reads and parses a bcachetab; a missing file is an empty table.
    pub fn load(path: &Path) -> std::io::Result<Tab> {
        Ok(Tab::parse(&read_text(path)?, path))
    }

    pub fn parse(text: &str, path: &Path) -> Tab {
        let mut tab = Tab { path: path.to_owned(), ..Tab::default() };
        for (line, words) in (Lines { text, line: 0 }) {
            if words.count == 0 {
                continue;
            }
            match parse_line(&words, line) {
                Ok(e) => tab.entries.push(e),
                Err((field, message)) => tab.errors.push(tab.error(line, field, message)),
            }
        }
        tab.drop_duplicates();
        tab
    }

    /// Refuses the later of two lines with the same uuid (it would give two
    /// devices one slot in the cache set), name or device; the first is
    /// kept. Keys are borrowed from the entries and hashed with FxHash:
    /// SipHash, or B-trees comparing long /dev/disk/by-id paths that share
    /// their first 30 bytes, were most of a 1000-line file's parse.
    fn drop_duplicates(&mut self) {
        let mut refused: Vec<(usize, &'static str, usize)> = Vec::new();
        {
            let n = self.entries.len();
            let mut uuids: FxHashMap<&Uuid, usize> = FxHashMap::with_capacity_and_hasher(n, Default::default());
            let mut names: FxHashMap<&str, usize> = FxHashMap::with_capacity_and_hasher(n, Default::default());
            let mut devices: FxHashMap<(u8, &str), usize> = FxHashMap::with_capacity_and_hasher(n, Default::default());
            for (i, e) in self.entries.iter().enumerate() {
                let first = uuids.get(&e.uuid).map(|&l| ("uuid", l)).or_else(|| {
                    let by_name = e.name.as_deref().and_then(|n| names.get(n));
                    by_name.map(|&l| ("name", l)).or_else(|| devices.get(&e.device.key()).map(|&l| ("device", l)))
                });
                match first {
                    Some((field, first_line)) => refused.push((i, field, first_line)),
                    None => {
                        uuids.insert(&e.uuid, e.line);
                        if let Some(n) = &e.name {
                            names.insert(n, e.line);
                        }
                        devices.insert(e.device.key(), e.line);
                    }
                }
            }
        }
        if refused.is_empty() {
            return;
        }
        for &(i, field, first_line) in refused.iter().rev() {
            let e = self.entries.remove(i);
            let message = format!("{field} already used on line {first_line}");
            self.errors.push(self.error(e.line, field, message));
        }
        self.errors.sort_by_key(|e| e.line);
    }

    fn error(&self, line: usize, field: &str, message: String) -> TabError {
        TabError { path: self.path.clone(), line, field: field.to_owned(), message }
    }

    pub fn by_uuid(&self, uuid: &Uuid) -> Option<&Entry> {
        self.entries.iter().find(|e| &e.uuid == uuid)
    }

    pub fn by_name(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name.as_deref() == Some(name))
    }

    /// The entry for the device `ids` describes.
    pub fn matching(&self, ids: &DeviceIds) -> Option<&Entry> {
        self.entries.iter().find(|e| e.device.matches(ids))
    }

    /// `Tab::parse(text, path).matching(ids)` for one device (a udev
    /// event's, `bcachetab-apply DEV`'s) without parsing every line: each
    /// line is split into fields and only those naming the device are
    /// parsed. The first good one is the entry unless an earlier line has
    /// its uuid, name or device; then the whole table decides, as
    /// `parse` does. Also returns the problems of the lines naming the
    /// device (`bcache tab check` reports the others). Parsing 1000 lines
    /// in full for every udev event cost ten times this.
    pub fn find_device(text: &str, path: &Path, ids: &DeviceIds) -> (Option<Entry>, Vec<TabError>) {
        let lines: Vec<(usize, Words)> = Lines { text, line: 0 }.filter(|(_, w)| w.count > 0).collect();
        let names_device = |w: &Words| w.count >= 2 && SpecRef::parse_if_names(w.fields[1], ids).is_some();
        let error = |line: usize, (field, message): FieldError| TabError { path: path.to_owned(), line, field: field.to_owned(), message };
        let mut errors = Vec::new();
        for (k, (line, words)) in lines.iter().enumerate() {
            if !names_device(words) {
                continue;
            }
            let entry = match parse_line(words, *line) {
                Ok(e) => e,
                Err(e) => {
                    errors.push(error(*line, e));
                    continue;
                }
            };
            let spec = entry.device.as_ref();
            let shares_key = |w: &Words| {
                (w.count >= 3 && Uuid::try_parse(w.fields[2]).is_ok_and(|u| u == entry.uuid))
                    || entry.name.as_deref().is_some_and(|n| w.fields[0] == n)
                    // A broken line that may share it sends the lookup to
                    // the full parse too, which decides.
                    || (w.count >= 2 && SpecRef::classify(w.fields[1]).is_some_and(|s| s.same(spec)))
            };
            if lines[..k].iter().any(|(_, w)| shares_key(w)) {
                let tab = Tab::parse(text, path);
                let naming: Vec<usize> = lines.iter().filter(|(_, w)| names_device(w)).map(|(l, _)| *l).collect();
                let errors = tab.errors.iter().filter(|e| naming.contains(&e.line)).cloned().collect();
                return (tab.matching(ids).cloned(), errors);
            }
            return (Some(entry), errors);
        }
        (None, errors)
    }
}

/// A bcachetab's text; empty when the file is missing.
pub fn read_text(path: &Path) -> std::io::Result<String> {
    match std::fs::read(path) {
        // Validating UTF-8 is cheaper than the lossy conversion, which only
        // a broken file needs.
        Ok(bytes) => Ok(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Why bcachetab could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{}: {}", .0.display(), crate::os_error_text(.1))]
    Io(PathBuf, std::io::Error),
    #[error(transparent)]
    Lock(#[from] crate::files::PathError),
    #[error("{}: {}", .0.display(), .1)]
    Refused(PathBuf, String),
}

/// bcachetab's lock (adopt, attach and detach of several devices may run
/// at once), held while the value lives: what is read under it stays true
/// until the change is written (adopt checks that no line names the
/// device, then appends one).
pub struct Locked<'p> {
    path: &'p Path,
    _lock: crate::files::Lock,
}

impl<'p> Locked<'p> {
    pub fn take(path: &'p Path) -> Result<Locked<'p>, EditError> {
        Ok(Locked { path, _lock: crate::files::Lock::take(path)? })
    }

    /// The table as it is; a missing file is an empty one.
    pub fn tab(&self) -> Result<Tab, EditError> {
        Tab::load(self.path).map_err(|e| EditError::Io(self.path.to_owned(), e))
    }

    /// Replaces bcachetab atomically: `edit` gets the parsed table and its
    /// lines, and changes the lines. A missing file starts with a header
    /// comment.
    pub fn edit<R>(&self, edit: impl FnOnce(&Tab, &mut Vec<String>) -> Result<R, String>) -> Result<R, EditError> {
        let path = self.path;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "# bcachetab(5): name device uuid cset options\n".to_owned(),
            Err(e) => return Err(EditError::Io(path.to_owned(), e)),
        };
        let tab = Tab::parse(&text, path);
        let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let result = edit(&tab, &mut lines).map_err(|m| EditError::Refused(path.to_owned(), m))?;
        let mut out = lines.join("\n");
        out.push('\n');
        crate::files::write_atomically(path, out.as_bytes()).map_err(|e| EditError::Io(path.to_owned(), e))?;
        Ok(result)
    }

    /// Appends a line for `entry`; returns its line number.
    pub fn append(&self, entry: &Entry) -> Result<usize, EditError> {
        self.edit(|tab, lines| {
            if tab.by_uuid(&entry.uuid).is_some() || entry.name.as_ref().is_some_and(|n| tab.by_name(n).is_some()) {
                return Err("a line with this uuid or name is there already".into());
            }
            lines.push(entry.to_string());
            Ok(lines.len())
        })
    }
}

/// [`Locked::edit`] under a lock of its own.
pub fn edit<R>(path: &Path, edit: impl FnOnce(&Tab, &mut Vec<String>) -> Result<R, String>) -> Result<R, EditError> {
    Locked::take(path)?.edit(edit)
}

/// Sets the cache set of the line for `uuid` (after attach or detach);
/// false when no line has that uuid.
pub fn set_cset(path: &Path, uuid: &Uuid, cset: Option<Uuid>) -> Result<bool, EditError> {
    edit(path, |tab, lines| {
        let Some(e) = tab.by_uuid(uuid) else { return Ok(false) };
        let changed = Entry { cset, ..e.clone() };
        lines[e.line - 1] = changed.to_string();
        Ok(true)
    })
}

/// The mode of the line of `uuid`, if one names it (false if none does).
/// Refused, the file unchanged, where the line could not be read back: a
/// timeout= with writeback, which never runs without its set.
pub fn set_mode(path: &Path, uuid: &Uuid, mode: CacheMode) -> Result<bool, EditError> {
    edit(path, |tab, lines| {
        let Some(e) = tab.by_uuid(uuid) else { return Ok(false) };
        if mode == CacheMode::Writeback && e.options.timeout.is_some() {
            return Err(format!(
                "line {}: has timeout=, which a writeback device cannot have (it never runs without its \
                 cache set): remove timeout= first",
                e.line
            ));
        }
        let changed = Entry { options: Options { mode, ..e.options.clone() }, ..e.clone() };
        lines[e.line - 1] = changed.to_string();
        Ok(true)
    })
}

type FieldError = (&'static str, String);

/// The words of one line: up to six kept (five fields and the first
/// word too many), all counted.
struct Words<'a> {
    fields: [&'a str; 6],
    count: usize,
}

/// The lines of a bcachetab and their words: words are separated by ASCII
/// whitespace, and `#` starts a comment that runs to the end of the line.
/// Lines and comments are found with memchr (SIMD): a byte at a time, or
/// str's char searches, these scans were a third of a 1000-line file's
/// parse.
struct Lines<'a> {
    text: &'a str,
    line: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, Words<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.text.is_empty() {
            return None;
        }
        self.line += 1;
        // '\n' and '#' are ASCII: splitting there never splits a character.
        let (raw, rest) = match memchr::memchr(b'\n', self.text.as_bytes()) {
            Some(i) => (&self.text[..i], &self.text[i + 1..]),
            None => (self.text, ""),
        };
        self.text = rest;
        let content = memchr::memchr(b'#', raw.as_bytes()).map_or(raw, |i| &raw[..i]);
        let mut words = Words { fields: [""; 6], count: 0 };
        let mut push = |w: &'a str| {
            if let Some(slot) = words.fields.get_mut(words.count) {
                *slot = w;
            }
            words.count += 1;
        };
        let bytes = content.as_bytes();
        // Spaces and tabs are found with memchr2 too; the rarer ASCII
        // whitespace (the CR of a CRLF file, form feed) needs the slower
        // general split.
        if memchr::memchr2(b'\r', b'\x0c', bytes).is_some() {
            content.split_ascii_whitespace().for_each(push);
        } else {
            let mut start = 0;
            for end in memchr::memchr2_iter(b' ', b'\t', bytes).chain([bytes.len()]) {
                if end > start {
                    push(&content[start..end]);
                }
                start = end + 1;
            }
        }
        Some((self.line, words))
    }
}

fn parse_line(words: &Words, line: usize) -> Result<Entry, FieldError> {
    let (fields, n) = (&words.fields, words.count);
    if n < 4 {
        let missing = ["name", "device", "uuid", "cset"][n];
        return Err((missing, "missing (a line is: name device uuid cset [options])".into()));
    }
    if n > 5 {
        return Err(("options", format!("unexpected '{}' after the options", fields[5])));
    }
    let name = match fields[0] {
        "-" => None,
        n => Some(check_name(n).map_err(|m| ("name", m))?.to_owned()),
    };
    let device = DeviceSpec::parse(fields[1]).map_err(|m| ("device", m))?;
    let uuid = parse_uuid(fields[2]).map_err(|m| ("uuid", m))?;
    let cset = match fields[3] {
        "-" | "none" => None,
        s => Some(parse_uuid(s).map_err(|m| ("cset", m))?),
    };
    let options = match fields[4] {
        "" | "-" => Options::default(),
        s => parse_options(s)?,
    };
    if options.timeout.is_some() && options.mode == CacheMode::Writeback {
        return Err(("timeout", "a writeback device never runs without its cache set: no timeout".into()));
    }
    if options.timeout.is_some() && cset.is_none() {
        return Err(("timeout", "only a device with a cache set waits".into()));
    }
    if options.data_offset.is_some_and(|o| o != 0) && options.layout == Some(Layout::Header) {
        return Err(("offset", "the header layout puts the data at the device's first sector: no offset".into()));
    }
    Ok(Entry { line, name, device, uuid, cset, options })
}

/// Names become `/dev/bcache/<name>` and part of a device-mapper name.
pub fn check_name(n: &str) -> Result<&str, String> {
    let ok = n.len() <= 64
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+'))
        && !n.starts_with(['.', '-'])
        && !n.starts_with("by-");
    if ok {
        Ok(n)
    } else {
        Err(format!(
            "'{n}' is not a name (up to 64 of A-Z a-z 0-9 . _ - +, not starting with '.', '-' or 'by-')"
        ))
    }
}

fn parse_uuid(s: &str) -> Result<Uuid, String> {
    let u = Uuid::try_parse(s).map_err(|_| format!("'{s}' is not a uuid"))?;
    if u.is_nil() {
        return Err("the nil uuid is not allowed".into());
    }
    Ok(u)
}

fn parse_options(s: &str) -> Result<Options, FieldError> {
    let mut o = Options::default();
    // Bit i: the i-th of option_names() was given.
    const _: () = assert!(OPTIONS.len() + TUNABLES.len() <= 64);
    let mut seen = 0u64;
    for opt in s.split(',') {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        let Some((i, key)) = option_names().enumerate().find(|(_, k)| *k == key) else {
            return Err(("options", format!("unknown option '{key}'")));
        };
        if seen & (1 << i) != 0 {
            return Err(("options", format!("option '{key}' given twice")));
        }
        seen |= 1 << i;
        if value.is_empty() {
            return Err(("options", format!("option '{key}' needs a value ({key}=...)")));
        }
        let field = |m: String| (key, m);
        match key {
            "mode" => o.mode = value.parse().map_err(field)?,
            "layout" => {
                o.layout = Some(Layout::parse(value).ok_or_else(|| field(format!("unknown layout '{value}' (raw, header)")))?)
            }
            "offset" => o.data_offset = Some(parse_number(value).map_err(field)?),
            "block" => {
                let b = parse_bytes(value).map_err(|e| field(e.to_string()))?;
                if !b.is_power_of_two() || !(512..=4096).contains(&b) {
                    return Err(field(format!("block size {value} is not a power of two from 512 to 4096")));
                }
                o.block_size = Some(b as u32);
            }
            "label" => {
                // What a superblock on disk can hold (the header layout's).
                if value.len() >= LABEL_LEN {
                    return Err(field(format!("label is {} bytes long; at most {} fit", value.len(), LABEL_LEN - 1)));
                }
                o.label = value.to_owned();
            }
            "timeout" => {
                let t = parse_number(value).map_err(field)?;
                o.timeout = Some(u32::try_from(t).map_err(|_| field(format!("'{value}' seconds is too long")))?);
            }
            attr => {
                let kind = TUNABLES.iter().find(|(n, _)| *n == attr).map(|(_, k)| *k).expect("known tunable");
                let value = check_value(kind, value).map_err(field)?;
                o.tunables.push(Tunable { attr, value });
            }
        }
    }
    Ok(o)
}

fn parse_number(s: &str) -> Result<u64, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{s}' is not a number"));
    }
    s.parse().map_err(|_| format!("'{s}' is too large"))
}

/// Checks a tunable's value and returns it as the kernel takes it: sizes
/// in plain bytes (sysfs takes no suffix).
fn check_value(kind: Kind, value: &str) -> Result<String, String> {
    match kind {
        Kind::Size => parse_bytes(value).map(|b| b.to_string()).map_err(|e| e.to_string()),
        Kind::Number => parse_number(value).map(|n| n.to_string()),
        Kind::Flag if matches!(value, "0" | "1") => Ok(value.to_owned()),
        Kind::Flag => Err(format!("'{value}' is not 0 or 1")),
        Kind::Choice(names) if names.contains(&value) => Ok(value.to_owned()),
        Kind::Choice(names) => Err(format!("'{value}' is not one of {}", names.join(", "))),
    }
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.mode != CacheMode::default() {
            parts.push(format!("mode={}", self.mode.name()));
        }
        if let Some(l) = self.layout {
            parts.push(format!("layout={}", l.name()));
        }
        if let Some(o) = self.data_offset {
            parts.push(format!("offset={o}"));
        }
        if let Some(b) = self.block_size {
            parts.push(format!("block={b}"));
        }
        if !self.label.is_empty() {
            parts.push(format!("label={}", self.label));
        }
        if let Some(t) = self.timeout {
            parts.push(format!("timeout={t}"));
        }
        parts.extend(self.tunables.iter().map(|t| format!("{}={}", t.attr, t.value)));
        if parts.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

impl Entry {
    /// `FILE:LINE`, where messages about the line point.
    pub fn at(&self, tab: &Path) -> String {
        format!("{}:{}", tab.display(), self.line)
    }
}

impl fmt::Display for Entry {
    /// The line as bcachetab holds it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cset = self.cset.map_or("-".to_owned(), |c| c.hyphenated().to_string());
        write!(
            f,
            "{}\t{}\t{}\t{}\t{}",
            self.name.as_deref().unwrap_or("-"),
            self.device,
            self.uuid.hyphenated(),
            cset,
            self.options
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_are_compared_component_by_component_whatever_the_shortcut() {
        use super::same_path;
        for (a, b) in [("/dev/loop0", "/dev//loop0"), ("/dev/loop0", "/dev/loop0/"), ("/dev/./loop0", "/dev/loop0"), ("/dev/.x/y", "/dev/.x//y")] {
            assert!(same_path(a, b) && same_path(b, a), "{a} {b}");
        }
        for (a, b) in [("/dev/loop0", "/dev/loop1"), ("/dev/disk/by-id/a", "/dev/disk/by-id/b"), ("/dev/.x", "/dev/x"), ("/dev/vda", "/dev/vda1"), ("/dev/", "/dev/x")] {
            assert!(!same_path(a, b) && !same_path(b, a), "{a} {b}");
        }
    }

    proptest::proptest! {
        /// The byte shortcut of [`same_path`] never disagrees with Path's
        /// component comparison (doubled and trailing separators, "." and
        /// ".." components, names starting with a dot, relative paths).
        #[test]
        fn same_path_is_path_equality(a in "[/.ab]{0,10}", b in "[/.ab]{0,10}") {
            proptest::prop_assert_eq!(same_path(&a, &b), Path::new(&a) == Path::new(&b), "{:?} {:?}", a, b);
        }
    }

    use super::*;

    proptest::proptest! {
        /// The one-pass line splitter finds what str's lines, a cut at '#'
        /// and split_ascii_whitespace find (CRLF, form feeds, non-ASCII,
        /// no final newline).
        #[test]
        fn lines_split_like_str(text in "[a #\t\r\n\x0cé=,-]{0,80}") {
            let ours: Vec<(usize, Vec<&str>)> = (Lines { text: &text, line: 0 })
                .map(|(n, w)| (n, w.fields[..w.count.min(6)].to_vec()))
                .collect();
            let want: Vec<(usize, Vec<&str>)> = text
                .lines()
                .enumerate()
                .map(|(i, l)| (i + 1, l.split_once('#').map_or(l, |(c, _)| c).split_ascii_whitespace().take(6).collect()))
                .collect();
            proptest::prop_assert_eq!(ours, want);
        }
    }

    proptest::proptest! {
        /// The one-device lookup finds what the whole parse finds, over
        /// tables full of duplicate uuids, names and devices, bad lines and
        /// lines of other devices.
        #[test]
        fn find_device_agrees_with_parse(
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(vec!["-", "a", "b", "-x"]),
                    proptest::sample::select(vec![
                        "/dev/x", "/dev//x", "/dev/y", "UUID=ab", "UUID=AB", "LABEL=l", "LABEL=l\\x20m", "LABEL=l\\x20M",
                        "PARTUUID=p", "bad",
                    ]),
                    proptest::sample::select(vec![U1, "6F1C1E0A-3B44-4E0B-9C57-1F0F0B6A7D21", U2, "zz"]),
                    proptest::sample::select(vec!["-", U2]),
                    proptest::sample::select(vec!["", "-", "mode=writeback", "timeout=5", "bogus", "- extra"]),
                    0usize..4,
                ),
                0..8,
            ),
            label in proptest::option::of(proptest::sample::select(vec!["l", "m", "l m"])),
        ) {
            let text: String = lines
                .iter()
                .map(|(n, d, u, c, o, cut)| {
                    let words = [*n, *d, *u, *c, *o];
                    format!("{}\n", words[..words.len() - *cut].join(" "))
                })
                .collect();
            let ids = DeviceIds {
                devname: Some("/dev/x".into()),
                fs_uuid: Some("AB".into()),
                fs_label: label.map(str::to_owned),
                ..DeviceIds::default()
            };
            let path = Path::new("/etc/bcachetab");
            let whole = Tab::parse(&text, path);
            let (found, errors) = Tab::find_device(&text, path, &ids);
            proptest::prop_assert_eq!(found.as_ref(), whole.matching(&ids), "{}", text);
            for e in &errors {
                proptest::prop_assert!(whole.errors.contains(e), "{} not among {:?}", e, whole.errors);
            }
        }
    }

    const U1: &str = "6f1c1e0a-3b44-4e0b-9c57-1f0f0b6a7d21";
    const U2: &str = "0a9e1f4c-57d1-4bb8-a2f0-3e0c9fd1e0aa";

    fn parse(text: &str) -> Tab {
        Tab::parse(text, Path::new("/etc/bcachetab"))
    }

    #[test]
    fn a_full_line_round_trips() {
        let text = format!(
            "data0\tPARTUUID=1234-ab\t{U1}\t{U2}\tmode=writeback,layout=raw,block=4096,label=d0,sequential_cutoff=4M\n"
        );
        let tab = parse(&text);
        assert!(tab.errors.is_empty(), "{:?}", tab.errors);
        let e = &tab.entries[0];
        assert_eq!(e.options.mode, CacheMode::Writeback);
        assert_eq!(e.options.tunables, vec![Tunable { attr: "sequential_cutoff", value: "4194304".into() }]);
        assert_eq!(format!("{e}\n"), text.replace("=4M", "=4194304"));
    }

    #[test]
    fn bad_lines_are_reported_and_good_ones_kept() {
        let text = format!(
            "# comment\n\
             a /dev/vdb {U1} - bogus=1\n\
             b /dev/vdc {U1} -\n\
             c /dev/vdd not-a-uuid -\n\
             d /dev/vde {U2} - mode=writeback,timeout=5\n\
             e /dev/vdf {U2} -   # kept\n"
        );
        let tab = parse(&text);
        let msgs: Vec<String> = tab.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "/etc/bcachetab:2: options: unknown option 'bogus'".to_owned(),
                "/etc/bcachetab:4: uuid: 'not-a-uuid' is not a uuid".to_owned(),
                "/etc/bcachetab:5: timeout: a writeback device never runs without its cache set: no timeout"
                    .to_owned(),
            ]
        );
        let names: Vec<_> = tab.entries.iter().map(|e| e.name.clone().unwrap()).collect();
        assert_eq!(names, ["b", "e"]);
    }

    #[test]
    fn duplicates_name_the_first_line() {
        let tab = parse(&format!("a /dev/vdb {U1} -\nb /dev/vdc {U1} -\na /dev/vdd {U2} -\n"));
        let msgs: Vec<String> = tab.errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            msgs,
            [
                "/etc/bcachetab:2: uuid: uuid already used on line 1",
                "/etc/bcachetab:3: name: name already used on line 1"
            ]
        );
    }

    /// Finding: udev's ID_FS_LABEL has whitespace made '_' ("my disk" is
    /// "my_disk") and ID_FS_LABEL_ENC escapes it ("my\x20disk"), libblkid
    /// reads "my disk": a line matched at boot and not on the command line
    /// (`tab apply DEV`, adopt's duplicate check). One rule now: the label
    /// itself, from either.
    #[test]
    fn a_label_with_a_space_matches_the_same_from_udev_and_from_blkid() {
        let props = |k: &str| match k {
            "DEVNAME" => Some("/dev/vdb".to_owned()),
            "ID_FS_LABEL" => Some("my_disk".to_owned()),
            "ID_FS_LABEL_ENC" => Some("my\\x20disk".to_owned()),
            "ID_PART_ENTRY_NAME" => Some("data\\x20part".to_owned()),
            _ => None,
        };
        let from_udev = DeviceIds::from_props(&props);
        let from_blkid = DeviceIds {
            devname: Some("/dev/vdb".into()),
            fs_label: Some("my disk".into()),
            part_name: Some("data part".into()),
            ..DeviceIds::default()
        };
        for (spec, want) in [
            ("LABEL=my\\x20disk", true),
            ("LABEL=my\\x20Disk", false),
            ("LABEL=my_disk", false),
            ("PARTLABEL=data\\x20part", true),
        ] {
            let spec = DeviceSpec::parse(spec).unwrap();
            assert_eq!(spec.matches(&from_udev), want, "{spec} from udev");
            assert_eq!(spec.matches(&from_blkid), want, "{spec} from blkid");
        }
        let text = format!("a LABEL=my\\x20disk {U1} -\n");
        assert_eq!(Tab::find_device(&text, Path::new("t"), &from_blkid).0.map(|e| e.line), Some(1));
    }

    #[test]
    fn a_label_with_a_space_or_a_hash_is_one_escaped_field_and_reads_back() {
        let spec = DeviceSpec::parse("LABEL=my disk #2\\").unwrap();
        assert_eq!(spec.to_string(), "LABEL=my\\x20disk\\x20\\x232\\x5c");
        assert_eq!(DeviceSpec::parse(&spec.to_string()).unwrap(), spec);
        // Escaped needlessly, or in capitals: the same name.
        assert_eq!(DeviceSpec::parse("LABEL=my\\x20disk\\x20\\x232\\x5C").unwrap(), spec);
        // Only \\xHH is an escape: any other backslash is one.
        assert_eq!(DeviceSpec::parse("LABEL=a\\X20").unwrap().to_string(), "LABEL=a\\x5cX20");
        assert_eq!(DeviceSpec::parse("LABEL=\\x61b").unwrap(), DeviceSpec::parse("LABEL=ab").unwrap());
        let e = Entry {
            line: 1,
            name: Some("d".into()),
            device: DeviceSpec::parse("PARTLABEL=data\tpart").unwrap(),
            uuid: Uuid::parse_str(U1).unwrap(),
            cset: None,
            options: Options::default(),
        };
        let tab = parse(&format!("{e}\n"));
        assert!(tab.errors.is_empty(), "{:?}", tab.errors);
        assert_eq!(tab.entries[0].device, e.device);
        let two = parse(&format!("a LABEL=a\\x20b {U1} -\nb LABEL=a\\x20\\x62 {U2} -\n"));
        assert_eq!(two.errors[0].to_string(), "/etc/bcachetab:2: device: device already used on line 1");
    }

    /// Finding: `/dev/loop0` and `/dev//loop0` were two devices to the
    /// duplicate rule, and udev's DEVNAME matched only the first.
    #[test]
    fn one_path_spelled_two_ways_is_one_device() {
        let tab = parse(&format!("a /dev/loop0 {U1} -\nb /dev//./loop0/ {U2} -\n"));
        assert_eq!(tab.errors[0].to_string(), "/etc/bcachetab:2: device: device already used on line 1");
        let ids = DeviceIds { devname: Some("/dev/loop0".into()), ..DeviceIds::default() };
        assert!(DeviceSpec::parse("/dev//loop0").unwrap().matches(&ids));
        let text = format!("b /dev//loop0 {U2} -\n");
        assert_eq!(Tab::find_device(&text, Path::new("t"), &ids).0.map(|e| e.uuid.to_string()), Some(U2.to_owned()));
        assert_eq!(DeviceSpec::parse("/dev//loop0").unwrap().to_string(), "/dev/loop0");
        assert!(DeviceSpec::parse("/dev/").is_err() && DeviceSpec::parse("/dev/.").is_err());
    }

    #[test]
    fn names_that_would_split_a_line_are_refused() {
        for bad in ["/dev/disk/by-id/my disk", "/dev/x#y", "UUID=ab cd", "PARTUUID=ab\tcd"] {
            assert!(DeviceSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_names_that_follow_the_disk_are_stable() {
        for (spec, stable) in [
            ("/dev/disk/by-id/wwn-0x5000c500a1b2c3d4", true),
            ("UUID=1b4e28ba", true),
            ("PARTUUID=1234abcd-01", true),
            ("LABEL=data", true),
            ("PARTLABEL=primary", false),
            ("/dev/sdb", false),
            ("/dev/vdb1", false),
            ("/dev/loop0", false),
            ("/dev/disk/by-path/pci-0000:00:02.0", false),
            ("/dev/disk/by-uuid/1b4e28ba", false),
            ("/dev/mapper/vg-lv", false),
        ] {
            assert_eq!(DeviceSpec::parse(spec).unwrap().is_stable(), stable, "{spec}");
        }
    }

    #[test]
    fn specs_match_udev_properties() {
        let props = |k: &str| match k {
            "DEVNAME" => Some("/dev/sdb1".to_owned()),
            "DEVLINKS" => Some("/dev/disk/by-id/wwn-0x5000-part1 /dev/disk/by-partuuid/abcd".to_owned()),
            "ID_FS_UUID" => Some("1B4E28BA-2FA1".to_owned()),
            _ => None,
        };
        let ids = DeviceIds::from_props(&props);
        for (spec, want) in [
            ("UUID=1b4e28ba-2fa1", true),
            ("UUID=1b4e28ba-2fa2", false),
            ("/dev/sdb1", true),
            ("/dev/disk/by-id/wwn-0x5000-part1", true),
            ("/dev/disk/by-id/wwn-0x5000", false),
            ("PARTUUID=abcd", false),
        ] {
            assert_eq!(DeviceSpec::parse(spec).unwrap().matches(&ids), want, "{spec}");
        }
    }

    #[test]
    fn set_mode_refuses_writeback_for_a_line_with_a_timeout_and_leaves_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bcachetab");
        let text = format!("d /dev/vdb {U1} {U2} timeout=5\n");
        std::fs::write(&path, &text).unwrap();
        let u: Uuid = U1.parse().unwrap();
        let err = set_mode(&path, &u, CacheMode::Writeback).unwrap_err().to_string();
        assert!(err.contains("remove timeout= first"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert!(set_mode(&path, &u, CacheMode::Writearound).unwrap());
        let tab = Tab::load(&path).unwrap();
        assert_eq!(tab.by_uuid(&u).unwrap().options.mode, CacheMode::Writearound);
        assert_eq!(tab.by_uuid(&u).unwrap().options.timeout, Some(5));
        assert!(!set_mode(&path, &U2.parse().unwrap(), CacheMode::None).unwrap(), "no line, no change");
    }
}
