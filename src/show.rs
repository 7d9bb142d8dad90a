//! Presenting a superblock: the text of bcache-tools' `bcache-super-show`,
//! which other tools parse (keep it byte for byte), and a JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use crate::superblock::{BdevState, CacheMode, Replacement, Role, Superblock, Version, SB_SECTOR};

/// Why the text report stopped early, with bcache-super-show's message
/// (for stderr) and exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ShowError {
    #[error("Invalid superblock (bad magic)")]
    BadMagic,
    #[error("Invalid superblock (bad sector)")]
    BadSector,
    #[error("Corrupt superblock (bad csum)")]
    BadCsum,
    /// A version 4 superblock with journal fields set: bcache-tools takes
    /// it for an unreleased format and stops.
    #[error("Possible experimental format detected, bailing")]
    Experimental,
}

impl ShowError {
    pub fn exit_code(self) -> u8 {
        match self {
            ShowError::Experimental => 3,
            _ => 2,
        }
    }
}

/// The report as bcache-super-show 1.0.8 prints it, byte for byte. On a
/// fatal problem the text printed so far comes with the error, as the C
/// tool prints a partial report before giving up. `force_csum` (`-f`) lets
/// a bad checksum pass.
///
/// Versions 5 and 6, which 1.0.8 does not know (it prints "[unknown]" and
/// stops), are shown in full as cache and backing devices, with the real
/// bucket size, as later bcache-tools do.
pub fn text(sb: &Superblock, force_csum: bool) -> (String, Option<ShowError>) {
    let mut out = String::new();
    let err = write_text(&mut out, sb, force_csum).err();
    (out, err)
}

fn write_text(o: &mut String, sb: &Superblock, force_csum: bool) -> Result<(), ShowError> {
    if !sb.magic_ok() {
        o.push_str("sb.magic\t\tbad magic\n");
        return Err(ShowError::BadMagic);
    }
    o.push_str("sb.magic\t\tok\n");
    let _ = write!(o, "sb.first_sector\t\t{}", sb.offset);
    if sb.offset != SB_SECTOR {
        let _ = writeln!(o, " [expected {SB_SECTOR}s]");
        return Err(ShowError::BadSector);
    }
    o.push_str(" [match]\n");
    let _ = write!(o, "sb.csum\t\t\t{:X}", sb.csum);
    match sb.expected_csum() {
        Some(c) if c == sb.csum => o.push_str(" [match]\n"),
        expected => {
            // Past 256 journal slots there is no honest checksum; bcache-tools
            // prints whatever memory follows, we print 0.
            let _ = writeln!(o, " [expected {:X}]", expected.unwrap_or(0));
            if !force_csum {
                return Err(ShowError::BadCsum);
            }
        }
    }
    let _ = write!(o, "sb.version\t\t{}", sb.version);
    let Some(role) = sb.role() else {
        o.push_str(" [unknown]\n");
        return Ok(());
    };
    o.push_str(match role {
        Role::Backing => " [backing device]\n",
        Role::Cache => " [cache device]\n",
    });
    o.push('\n');
    o.push_str("dev.label\t\t");
    if sb.label_bytes().is_empty() {
        o.push_str("(empty)");
    } else {
        encode_label(o, sb.label_bytes());
    }
    o.push('\n');
    let _ = writeln!(o, "dev.uuid\t\t{}", sb.uuid.hyphenated());
    let _ = writeln!(o, "dev.sectors_per_block\t{}", sb.block_size);
    let bucket = sb.bucket_sectors();
    let _ = writeln!(o, "dev.sectors_per_bucket\t{bucket}");
    match role {
        Role::Backing => {
            if sb.version == Version::BdevWithOffset as u64 && (sb.keys == 1 || sb.d[0] != 0) {
                return Err(ShowError::Experimental);
            }
            let _ = writeln!(o, "dev.data.first_sector\t{}", sb.data_offset());
            let _ = write!(o, "dev.data.cache_mode\t{}", sb.cache_mode_raw());
            match sb.cache_mode() {
                Some(CacheMode::None) => o.push_str(" [no caching]\n"),
                Some(m) => {
                    let _ = writeln!(o, " [{}]", m.name());
                }
                None => o.push('\n'),
            }
            let state = sb.state();
            let _ = writeln!(o, "dev.data.cache_state\t{} [{}]", state as u64, state_name(state));
        }
        Role::Cache => {
            // bcache-tools' arithmetic, wrapping as its unsigned types do.
            let first = bucket.wrapping_mul(sb.first_bucket as u64);
            let total = bucket.wrapping_mul(sb.nbuckets());
            let _ = writeln!(o, "dev.cache.first_sector\t{first}");
            let _ = writeln!(o, "dev.cache.cache_sectors\t{}", total.wrapping_sub(first));
            let _ = writeln!(o, "dev.cache.total_sectors\t{total}");
            let _ = writeln!(o, "dev.cache.ordered\t{}", yes_no(sb.cache_sync()));
            let _ = writeln!(o, "dev.cache.discard\t{}", yes_no(sb.discard()));
            let _ = writeln!(o, "dev.cache.pos\t\t{}", sb.nr_this_dev);
            let _ = write!(o, "dev.cache.replacement\t{}", sb.replacement_raw());
            match sb.replacement() {
                Some(r) => {
                    let _ = writeln!(o, " [{}]", r.name());
                }
                None => o.push('\n'),
            }
        }
    }
    o.push('\n');
    let _ = writeln!(o, "cset.uuid\t\t{}", sb.set_uuid.hyphenated());
    Ok(())
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// bcache-super-show's words for the backing state.
fn state_name(s: BdevState) -> &'static str {
    match s {
        BdevState::None => "detached",
        BdevState::Clean => "clean",
        BdevState::Dirty => "dirty",
        BdevState::Stale => "inconsistent",
    }
}

/// Labels print as is where the byte is alphanumeric or one of `.-_`, and
/// as `%` and hex otherwise, so a label never breaks the line format. The
/// hex is that of the byte as a C `char` widened to `int` (bytes from 0x80
/// print as `%ffffff80`...), as consumers of bcache-tools' output see it.
fn encode_label(o: &mut String, label: &[u8]) {
    for &c in label {
        if c.is_ascii_alphanumeric() || b"-_.".contains(&c) {
            o.push(c as char);
        } else {
            let _ = write!(o, "%{:x}", c as i8 as i32);
        }
    }
}

/// Every field of a superblock, for `--json`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub csum: String,
    pub csum_expected: Option<String>,
    pub csum_ok: bool,
    pub offset: u64,
    pub version: u64,
    pub role: Option<Role>,
    pub magic_ok: bool,
    pub uuid: uuid::Uuid,
    pub set_uuid: uuid::Uuid,
    /// The label, lossily decoded as UTF-8.
    pub label: String,
    pub label_hex: String,
    pub flags: u64,
    pub seq: u64,
    pub feature_compat: u64,
    pub feature_incompat: u64,
    pub feature_ro_compat: u64,
    pub block_size: u16,
    pub bucket_size_raw: u16,
    pub bucket_sectors: u64,
    pub nr_in_set: u16,
    pub nr_this_dev: u16,
    pub last_mount: u32,
    pub first_bucket: u16,
    pub keys: u16,
    pub journal_buckets: Vec<u64>,
    pub obso_bucket_size_hi: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backing: Option<BackingReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
}

#[derive(Debug, Serialize)]
pub struct BackingReport {
    pub data_offset: u64,
    pub cache_mode: Option<CacheMode>,
    pub cache_mode_raw: u64,
    pub state: BdevState,
}

#[derive(Debug, Serialize)]
pub struct CacheReport {
    pub nbuckets: u64,
    pub first_sector: u64,
    pub cache_sectors: u64,
    pub total_sectors: u64,
    pub sync: bool,
    pub discard: bool,
    pub replacement: Option<Replacement>,
    pub replacement_raw: u64,
}

impl Report {
    pub fn new(sb: &Superblock) -> Report {
        let expected = sb.expected_csum();
        let role = sb.role();
        let bucket = sb.bucket_sectors();
        let keys = (sb.keys as usize).min(sb.d.len());
        Report {
            csum: format!("{:016X}", sb.csum),
            csum_expected: expected.map(|c| format!("{c:016X}")),
            csum_ok: expected == Some(sb.csum),
            offset: sb.offset,
            version: sb.version,
            role,
            magic_ok: sb.magic_ok(),
            uuid: sb.uuid,
            set_uuid: sb.set_uuid,
            label: String::from_utf8_lossy(sb.label_bytes()).into_owned(),
            label_hex: sb.label_bytes().iter().map(|b| format!("{b:02x}")).collect(),
            flags: sb.flags,
            seq: sb.seq,
            feature_compat: sb.feature_compat,
            feature_incompat: sb.feature_incompat,
            feature_ro_compat: sb.feature_ro_compat,
            block_size: sb.block_size,
            bucket_size_raw: sb.bucket_size,
            bucket_sectors: bucket,
            nr_in_set: sb.nr_in_set,
            nr_this_dev: sb.nr_this_dev,
            last_mount: sb.last_mount,
            first_bucket: sb.first_bucket,
            keys: sb.keys,
            journal_buckets: sb.d[..keys].to_vec(),
            obso_bucket_size_hi: sb.obso_bucket_size_hi,
            backing: (role == Some(Role::Backing)).then(|| BackingReport {
                data_offset: sb.data_offset(),
                cache_mode: sb.cache_mode(),
                cache_mode_raw: sb.cache_mode_raw(),
                state: sb.state(),
            }),
            cache: (role == Some(Role::Cache)).then(|| {
                let first = bucket * sb.first_bucket as u64;
                let total = bucket.saturating_mul(sb.nbuckets());
                CacheReport {
                    nbuckets: sb.nbuckets(),
                    first_sector: first,
                    cache_sectors: total.saturating_sub(first),
                    total_sectors: total,
                    sync: sb.cache_sync(),
                    discard: sb.discard(),
                    replacement: sb.replacement(),
                    replacement_raw: sb.replacement_raw(),
                }
            }),
        }
    }
}
