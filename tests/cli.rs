//! The command line on image files: what `make` accepts, and that bad
//! input gets one clear line, a non-zero exit and no change on disk.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bcache::superblock::{Role, Superblock, SB_START};

const OURS: &str = env!("CARGO_BIN_EXE_bcache");
const MIB: u64 = 1 << 20;

fn bcache(args: &[&str]) -> Output {
    Command::new(OURS).args(args).output().expect("spawn")
}

fn image(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

fn sb(path: &Path) -> Superblock {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 4096];
    std::fs::File::open(path).unwrap().read_exact_at(&mut buf, SB_START).unwrap();
    Superblock::parse(&buf).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a command that must fail with one line on stderr naming the
/// problem, and checks that the device's bytes did not change.
fn refused(args: &[&str], device: Option<&Path>, expect: &str) {
    let before = device.map(|d| std::fs::read(d).unwrap());
    let out = bcache(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line: {err}");
    assert!(err.contains(expect), "{args:?}: {err:?} lacks {expect:?}");
    if let (Some(d), Some(before)) = (device, before) {
        assert!(std::fs::read(d).unwrap() == before, "{args:?} changed {}", d.display());
    }
}

#[test]
fn one_call_makes_an_attached_set() {
    let dir = tempfile::tempdir().unwrap();
    let (c, b1, b2) = (
        image(dir.path(), "c.img", 300 * MIB),
        image(dir.path(), "b1.img", 64 * MIB),
        image(dir.path(), "b2.img", 64 * MIB),
    );
    let out = bcache(&["make", "-C", s(&c), "-B", s(&b1), "--writeback", s(&b2), "-l", "tier1"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (sc, s1, s2) = (sb(&c), sb(&b1), sb(&b2));
    assert_eq!(sc.role(), Some(Role::Cache));
    assert_eq!((s1.role(), s2.role()), (Some(Role::Backing), Some(Role::Backing)));
    assert_eq!(s1.set_uuid, sc.set_uuid);
    assert_eq!(s2.set_uuid, sc.set_uuid);
    assert_ne!(s1.uuid, s2.uuid);
    assert_eq!(s1.cache_mode().unwrap().name(), "writeback", "--writeback applies to every device");
    assert_eq!(s1.label_bytes(), b"tier1");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains(&format!("Name\t\t\t{}\n", s(&b2))), "{text}");
    assert!(text.contains(&format!("Set UUID:\t\t{}\n", sc.set_uuid)), "{text}");
}

#[test]
fn given_uuids_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let b = image(dir.path(), "b.img", 64 * MIB);
    let (u, set) = ("2f6a0c59-6c1e-4b7c-9a4b-1d2e3f405162", "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d");
    let out = bcache(&["make", "-B", s(&b), "--uuid", u, "--cset-uuid", set, "-o", "2048"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sb = sb(&b);
    assert_eq!(sb.uuid.to_string(), u);
    assert_eq!(sb.set_uuid.to_string(), set);
    assert_eq!((sb.version, sb.data_offset()), (4, 2048));
}

#[test]
fn legacy_names_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let b = image(dir.path(), "b.img", 64 * MIB);
    for name in ["make-bcache", "bcache-super-show", "probe-bcache", "bcache-register"] {
        std::os::unix::fs::symlink(OURS, dir.path().join(name)).unwrap();
    }
    let run = |name: &str, args: &[&str]| {
        Command::new(dir.path().join(name)).args(args).output().unwrap()
    };
    assert!(run("make-bcache", &["-B", s(&b)]).status.success());
    let show = run("bcache-super-show", &[s(&b)]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("[backing device]"));
    let help = run("make-bcache", &["--help"]);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: make-bcache"));
}

#[test]
fn bad_input_is_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let b = image(d, "b.img", 64 * MIB);
    let tiny = image(d, "tiny.img", 8192);
    let small_cache = image(d, "small.img", 200 * MIB);
    // Non-zero bytes, so "unchanged" means something.
    std::fs::write(&tiny, vec![0xa5u8; 8192]).unwrap();
    let sb_dev = image(d, "made.img", 64 * MIB);
    assert!(bcache(&["make", "-B", s(&sb_dev)]).status.success());
    let ext4 = image(d, "ext4.img", 64 * MIB);
    let mkfs = Command::new("mkfs.ext4").args(["-q", "-F", s(&ext4)]).status().unwrap();
    assert!(mkfs.success(), "mkfs.ext4 (e2fsprogs) is needed");

    refused(&["make", "-B", "/nonexistent/disk"], None, "No such file or directory");
    refused(&["make", "-B", s(&tiny)], Some(&tiny), "too small for a backing device");
    refused(&["make", "-C", s(&small_cache)], Some(&small_cache), "too small for a cache");
    refused(&["make", "-B", s(&ext4)], Some(&ext4), "contains a ext4 signature");
    refused(&["make", "-B", s(&ext4)], Some(&ext4), "wipefs -a");
    refused(&["make", "-B", s(&sb_dev)], Some(&sb_dev), "already a bcache device; overwrite it with --wipe-bcache");
    refused(&["make", "-B", "-b", "3k", s(&b)], Some(&b), "bucket size 6 sectors is not a power of two");
    refused(&["make", "-B", "-b", "junk", s(&b)], Some(&b), "is not a size");
    refused(&["make", "-B", "-b", "2k", s(&b)], Some(&b), "smaller than a page");
    refused(&["make", "-B", "-w", "8k", s(&b)], Some(&b), "larger than a page");
    refused(&["make", "-B", "-w", "4k", "-b", "2k", s(&b)], Some(&b), "smaller than a page");
    refused(&["make", "-B", "-w", "3000", s(&b)], Some(&b), "not a whole number of 512-byte sectors");
    refused(&["make", "-B", "-o", "8", s(&b)], Some(&b), "data offset 8 sectors is below the minimum of 16");
    refused(&["make", "-B", "-o", "20", s(&b)], Some(&b), "not a multiple of the block size");
    refused(&["make", "-B", "-o", "-5", s(&b)], Some(&b), "bcache make: unexpected argument '-5'");
    refused(&["make", "-C", "--cache-replacement-policy", "mru", s(&b)], Some(&b), "unknown cache replacement policy 'mru'");
    refused(&["make", "-B", "-l", &"x".repeat(32), s(&b)], Some(&b), "label is 32 bytes long; at most 31 fit");
    refused(&["make", "-B", "--cset-uuid", "not-a-uuid", s(&b)], Some(&b), "invalid value 'not-a-uuid'");
    refused(&["make", "-B", "--uuid", "00000000-0000-0000-0000-000000000000", s(&b)], Some(&b), "must not be the nil uuid");
    refused(&["make", "-B", s(&b), s(&b)], Some(&b), "is given twice");
    refused(&["make", "-B", "--uuid", "2f6a0c59-6c1e-4b7c-9a4b-1d2e3f405162", s(&b), s(&tiny)], Some(&b), "--uuid names one device");
    refused(&["make", s(&b)], Some(&b), "say whether it is a cache (-C) or backing (-B) device");
    refused(&["make"], None, "no devices given");
    refused(&["make", "-C", s(&small_cache), "-C", s(&b)], Some(&b), "only one cache device per call");
    // A refused call leaves the good devices of the same call alone too.
    refused(&["make", "-B", s(&b), s(&ext4)], Some(&b), "contains a ext4 signature");
    refused(&["super-show", "--bogus", s(&b)], Some(&b), "unexpected argument '--bogus'");
}

/// Issue 8: `--data-offset 18446744073709551608` wrapped round when the
/// end of the data was computed (a debug build aborted, a release build
/// wrote that offset). Offsets and sizes near u64::MAX, and offsets past
/// the device, are refused in one line with nothing written.
#[test]
fn make_data_offset_near_u64_max_is_refused_without_writing() {
    let dir = tempfile::tempdir().unwrap();
    let b = image(dir.path(), "b.img", MIB);
    // Non-zero bytes, so "unchanged" means something.
    std::fs::write(&b, vec![0xa5u8; MIB as usize]).unwrap();
    let c = image(dir.path(), "c.img", 300 * MIB);
    let max = u64::MAX.to_string();
    let past = |offset: &str, block: &str| {
        let args = ["make", "-B", "-w", block, "--data-offset", offset, s(&b)];
        refused(&args, Some(&b), &format!("data offset {offset} sectors leaves no room for data on its 2048 sectors"));
    };
    past(&(u64::MAX - 7).to_string(), "4k");
    past(&max, "512");
    past(&(1u64 << 63).to_string(), "4k");
    past(&(u64::MAX - 7 - 2040).to_string(), "4k");
    past("2048", "4k");
    past("2048", "512");
    refused(&["make", "-B", "-o", "2048", s(&b)], Some(&b), "give at most 2040");
    refused(&["make", "-B", "-o", "18446744073709551616", s(&b)], Some(&b), "invalid value '18446744073709551616'");

    refused(&["make", "-C", "-b", "16T", s(&c)], Some(&c), "bucket size 34359738368 sectors is too large");
    refused(&["make", "-C", "-b", "8388608T", s(&c)], Some(&c), "bucket size 18014398509481984 sectors is too large");
    refused(&["make", "-C", "-b", "16777215T", s(&c)], Some(&c), "is not a power of two");
    refused(&["make", "-C", "-b", "16777216T", s(&c)], Some(&c), "'16777216T' is too large");
    refused(&["make", "-C", "-b", &max, s(&c)], Some(&c), "not a whole number of 512-byte sectors");
    refused(&["make", "-B", "-w", "1T", s(&b)], Some(&b), "block size 2147483648 sectors is larger than a page");
    refused(&["make", "-B", "-w", "16777216T", s(&b)], Some(&b), "'16777216T' is too large");
    refused(&["make", "-B", "-w", "18014398509481984k", s(&b)], Some(&b), "'18014398509481984k' is too large");

    // The largest offset that leaves one block is taken.
    let out = bcache(&["make", "-B", "-o", "2040", s(&b)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(sb(&b).data_offset(), 2040);
}

#[test]
fn wipe_bcache_overwrites_only_bcache() {
    let dir = tempfile::tempdir().unwrap();
    let b = image(dir.path(), "b.img", 64 * MIB);
    assert!(bcache(&["make", "-B", s(&b)]).status.success());
    let first = sb(&b).uuid;
    let out = bcache(&["make", "-B", "--wipe-bcache", s(&b)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(sb(&b).uuid, first);
}

#[test]
fn super_show_json_has_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let c = image(dir.path(), "c.img", 300 * MIB);
    assert!(bcache(&["make", "-C", s(&c), "--discard", "-b", "64k"]).status.success());
    let out = bcache(&["super-show", "--json", s(&c)]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["role"], "cache");
    assert_eq!(v["csum_ok"], true);
    assert_eq!(v["cache"]["discard"], true);
    assert_eq!(v["cache"]["nbuckets"], 300 * MIB / 65536);
    assert_eq!(v["bucket_sectors"], 128);
    for key in ["feature_compat", "feature_incompat", "feature_ro_compat", "seq", "last_mount", "keys", "flags", "label"] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn man_pages_cover_every_command_without_clashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = bcache(&["generate", "man", s(dir.path())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut pages: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for want in [
        "bcache.8", "bcache-make.8", "bcache-super-show.8", "bcache-probe.8", "bcache-register.8",
        "bcache-unregister.8", "bcache-attach.8", "bcache-detach.8", "bcache-stop.8", "bcache-run.8",
        "bcache-set-cachemode.8", "make-bcache.8", "probe-bcache.8", "bcache-adopt.8", "bcache-tab.8", "bcache-tab-apply.8",
        "bcache-tab-check.8", "bcache-tab-list.8", "bcache-tab-wait.8", "bcachetab-apply.8",
    ] {
        assert!(pages.contains(&want.to_owned()), "{want} missing from {pages:?}");
    }
    let make = std::fs::read_to_string(dir.path().join("bcache-make.8")).unwrap();
    assert!(make.contains("wipe\\-bcache"), "options are documented");
}

/// man/ holds the generated pages for packagers; they must say what the
/// code says. Regenerate with: bcache generate man man
#[test]
fn committed_man_pages_are_current() {
    let dir = tempfile::tempdir().unwrap();
    assert!(bcache(&["generate", "man", s(dir.path())]).status.success());
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    // Section 8 is generated; bcachetab.5 is written by hand.
    let mut have: Vec<_> = std::fs::read_dir(&committed)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".8"))
        .collect();
    have.sort();
    assert_eq!(have, names, "man/ lists other pages than the code generates");
    for n in names {
        let fresh = std::fs::read(dir.path().join(&n)).unwrap();
        let old = std::fs::read(committed.join(&n)).unwrap();
        assert!(fresh == old, "man/{} is stale: run `bcache generate man man`", n.to_string_lossy());
    }
}

/// bcachetab(5) is written by hand: it must name every option the parser
/// takes.
#[test]
fn bcachetab_page_names_every_option() {
    let page = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/bcachetab.5")).unwrap();
    let page = page.replace("\\-", "-");
    for name in bcache::tab::file::option_names() {
        assert!(page.contains(name), "man/bcachetab.5 does not mention {name}");
    }
}

#[test]
fn set_cachemode_refuses_an_unknown_mode_before_touching_anything() {
    let dir = tempfile::tempdir().unwrap();
    let b = image(dir.path(), "b.img", 64 * MIB);
    assert!(bcache(&["make", "-B", s(&b)]).status.success());
    refused(&["set-cachemode", s(&b), "writebehind"], Some(&b), "unknown cache mode 'writebehind'");
    let out = bcache(&["set-cachemode", s(&b), "writebehind"]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
}
