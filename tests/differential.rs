//! Differential tests against bcache-tools 1.0.8 (Debian's `bcache-tools`)
//! and util-linux's blkid: independent oracles for what we write and print.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bcache::superblock::{Superblock, SB_BLOCK_LEN, SB_START};
use uuid::Uuid;

const OURS: &str = env!("CARGO_BIN_EXE_bcache");

/// A C tool; the test fails (never skips) when bcache-tools is missing.
fn c_tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/lib/udev", "/usr/lib/udev"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: install bcache-tools (apt-get install bcache-tools)");
}

fn run(cmd: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().expect("spawn")
}

fn image(dir: &Path, name: &str, size: u64) -> String {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p.to_str().unwrap().to_owned()
}

/// The first 8 KiB: the zeroed head and the superblock block.
fn head(path: &str) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; SB_START as usize + SB_BLOCK_LEN];
    std::fs::File::open(path).unwrap().read_exact(&mut buf).unwrap();
    buf
}

fn read_sb(path: &str) -> Superblock {
    Superblock::parse(&head(path)[SB_START as usize..]).unwrap()
}

/// Everything but the uuids and the checksum (which covers them).
fn without_ids(mut sb: Superblock) -> Superblock {
    sb.uuid = Uuid::nil();
    sb.set_uuid = Uuid::nil();
    sb.csum = 0;
    sb
}

fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

const MIB: u64 = 1 << 20;

/// Same flags to both tools, one device each; the superblocks must agree
/// field by field, and the first 8 KiB byte for byte outside the ids.
#[test]
fn make_writes_what_bcache_tools_writes() {
    let cset = "6a1c4d9e-3d5b-4a44-9a43-0f1b2c3d4e5f";
    let matrix: &[&[&str]] = &[
        &["-C"],
        &["-C", "--discard"],
        &["-C", "--cache_replacement_policy=fifo"],
        &["-C", "--cache_replacement_policy=random"],
        &["-C", "-b", "256k"],
        &["-C", "-b", "1M", "-w", "4k"],
        &["-C", "-w", "2k"],
        &["-C", "--bucket", "1M", "--block", "1k", "--discard"],
        &["-B"],
        &["-B", "--writeback"],
        &["-B", "-o", "32"],
        &["-B", "--data-offset", "2048", "--writeback"],
        &["-B", "-w", "4k"],
        &["-B", "-w", "512", "-b", "64k"],
    ];
    for flags in matrix {
        let dir = tempfile::tempdir().unwrap();
        let theirs = image(dir.path(), "c.img", 600 * MIB);
        let ours = image(dir.path(), "r.img", 600 * MIB);
        let mut args: Vec<&str> = flags.to_vec();
        args.extend(["--cset-uuid", cset]);
        let mut c_args = args.clone();
        c_args.push(&theirs);
        ok(&run(c_tool("make-bcache"), &c_args));
        let mut r_args = vec!["make"];
        r_args.extend(&args);
        r_args.push(&ours);
        ok(&run(OURS, &r_args));
        let (c, r) = (read_sb(&theirs), read_sb(&ours));
        assert_eq!(c.set_uuid, r.set_uuid, "{flags:?}");
        assert_eq!(without_ids(c), without_ids(r), "{flags:?}");
        let (cb, rb) = (head(&theirs), head(&ours));
        assert!(rb[..4096].iter().all(|&b| b == 0), "{flags:?}: first 4 KiB not zero");
        // Bytes past the uuids agree exactly, padding included.
        assert_eq!(cb[4096 + 72..8192], rb[4096 + 72..8192], "{flags:?}");
    }
}

/// Our super-show prints exactly what theirs prints, on devices made by
/// either tool, and exits the same way.
#[test]
fn super_show_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let mut imgs = Vec::new();
    for (i, flags) in [&["-C", "--discard"][..], &["-B", "--writeback", "-o", "64"], &["-C", "-b", "1M"], &["-B"]]
        .iter()
        .enumerate()
    {
        let c = image(dir.path(), &format!("c{i}.img"), 768 * MIB);
        let r = image(dir.path(), &format!("r{i}.img"), 768 * MIB);
        let mut ca: Vec<&str> = flags.to_vec();
        ca.push(&c);
        ok(&run(c_tool("make-bcache"), &ca));
        let mut ra = vec!["make"];
        ra.extend(flags.iter());
        ra.push(&r);
        ok(&run(OURS, &ra));
        imgs.push(c);
        imgs.push(r);
    }
    for img in &imgs {
        compare_show(img, &[]);
    }
}

/// Runs both super-shows with the same arguments and compares stdout,
/// stderr and the exit status.
fn compare_show(img: &str, extra: &[&str]) {
    let mut args = extra.to_vec();
    args.push(img);
    let c = run(c_tool("bcache-super-show"), &args);
    let mut ra = vec!["super-show"];
    ra.extend(&args);
    let r = run(OURS, &ra);
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&c.stdout),
        "stdout differs for {args:?}"
    );
    assert_eq!(r.status.code(), c.status.code(), "exit status differs for {args:?}");
    assert_eq!(
        String::from_utf8_lossy(&r.stderr),
        String::from_utf8_lossy(&c.stderr),
        "stderr differs for {args:?}"
    );
    // The legacy name behaves the same.
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("bcache-super-show");
    std::os::unix::fs::symlink(OURS, &link).unwrap();
    let l = run(&link, &args);
    assert_eq!(l.stdout, r.stdout);
    assert_eq!(l.status.code(), r.status.code());
}

/// Rewrites a superblock in place (resealed unless told otherwise).
fn patch(img: &str, reseal: bool, change: impl FnOnce(&mut Superblock)) {
    use std::os::unix::fs::FileExt;
    let mut sb = read_sb(img);
    change(&mut sb);
    if reseal {
        sb.seal();
    }
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(&sb.to_bytes(), SB_START).unwrap();
}

#[test]
fn super_show_matches_on_odd_and_broken_superblocks() {
    let dir = tempfile::tempdir().unwrap();
    let base_b = image(dir.path(), "b.img", 64 * MIB);
    ok(&run(OURS, &["make", "-B", &base_b]));
    let base_c = image(dir.path(), "c.img", 40 * MIB);
    ok(&run(OURS, &["make", "-C", "-b", "64k", &base_c]));
    type Case = (&'static str, bool, bool, fn(&mut Superblock));
    let cases: &[Case] = &[
        ("label with spaces and symbols", false, true, |s| s.label[..13].copy_from_slice(b"my disk/#1 \"x")),
        ("label of 32 bytes", false, true, |s| s.label = *b"abcdefghijklmnopqrstuvwxyz012345"),
        ("label with high bytes", false, true, |s| s.label[..4].copy_from_slice(&[0xc3, 0xa9, b'%', 0x7f])),
        ("dirty writeback", false, true, |s| s.flags = 1 | (2 << 61)),
        ("stale", false, true, |s| s.flags = 3 << 61),
        ("unknown cache mode", false, true, |s| s.flags = 9),
        ("version 4", false, true, |s| { s.version = 4; s.nbuckets_or_data_offset = 8192 }),
        ("unknown version", false, true, |s| s.version = 9),
        ("bad checksum", false, false, |s| s.csum ^= 0xff),
        ("bad checksum forced", true, false, |s| s.csum ^= 0xff00),
        ("bad magic", false, true, |s| s.magic[3] ^= 1),
        ("bad first sector", false, true, |s| s.offset = 16),
        ("cache: sync and replacement random", false, true, |s| s.flags = 1 | (2 << 2)),
        ("cache: unknown replacement", false, true, |s| s.flags = 5 << 2),
        ("cache: pos 3", false, true, |s| { s.nr_in_set = 4; s.nr_this_dev = 3 }),
    ];
    for (i, (what, force, reseal, change)) in cases.iter().enumerate() {
        for base in [&base_b, &base_c] {
            let img = dir.path().join(format!("case{i}.img"));
            std::fs::copy(base, &img).unwrap();
            let img = img.to_str().unwrap();
            patch(img, *reseal, change);
            eprintln!("case: {what} on {base}");
            compare_show(img, if *force { &["-f"] } else { &[] });
        }
    }
}

#[test]
fn blkid_sees_our_devices() {
    let dir = tempfile::tempdir().unwrap();
    let c = image(dir.path(), "c.img", 768 * MIB);
    let b = image(dir.path(), "b.img", 64 * MIB);
    let uuid = "11111111-2222-4333-8444-555555555555";
    ok(&run(OURS, &["make", "-C", &c]));
    ok(&run(OURS, &["make", "-B", &b, "--uuid", uuid]));
    for (img, want_uuid) in [(&c, read_sb(&c).uuid.to_string()), (&b, uuid.to_owned())] {
        let out = ok(&run("blkid", &["-p", "-o", "udev", img])).stdout.clone();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("ID_FS_TYPE=bcache\n"), "{text}");
        assert!(text.contains(&format!("ID_FS_UUID={want_uuid}\n")), "{text}");
    }
}

/// As probe-bcache, ours prints what bcache-tools' prints: nothing for a
/// device libblkid already recognises, the udev properties for one with a
/// bcache magic that libblkid does not accept.
#[test]
fn probe_bcache_matches_bcache_tools() {
    let dir = tempfile::tempdir().unwrap();
    let b = image(dir.path(), "b.img", 64 * MIB);
    let e = image(dir.path(), "empty.img", 64 * MIB);
    let odd = image(dir.path(), "odd.img", 64 * MIB);
    ok(&run(OURS, &["make", "-B", &b]));
    ok(&run(OURS, &["make", "-B", &odd]));
    patch(&odd, true, |s| s.offset = 9);
    let link = dir.path().join("probe-bcache");
    std::os::unix::fs::symlink(OURS, &link).unwrap();
    let mut printed = 0;
    for args in [
        vec!["-o", "udev", b.as_str()],
        vec![b.as_str()],
        vec![e.as_str()],
        vec!["-o", "udev", e.as_str()],
        vec!["-o", "udev", odd.as_str()],
        vec![odd.as_str(), "/nonexistent"],
        vec!["-o", "json", b.as_str()],
        vec![],
    ] {
        let c = run(c_tool("probe-bcache"), &args);
        let r = run(&link, &args);
        assert_eq!(String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&c.stdout), "{args:?}");
        assert_eq!(r.status.code(), c.status.code(), "{args:?}");
        printed += !c.stdout.is_empty() as usize;
    }
    assert_eq!(printed, 3, "the cases must include devices that print");
}

/// `bcache probe` reports valid bcache devices (blkid's view) and nothing
/// for anything else.
#[test]
fn probe_reports_valid_bcache_devices() {
    let dir = tempfile::tempdir().unwrap();
    let b = image(dir.path(), "b.img", 64 * MIB);
    let bad = image(dir.path(), "bad.img", 64 * MIB);
    let uuid = "0b5f8a0e-7a57-4e8e-9b61-3c9f2d0a1e22";
    ok(&run(OURS, &["make", "-B", &b, "--uuid", uuid]));
    ok(&run(OURS, &["make", "-B", &bad]));
    patch(&bad, false, |s| s.csum ^= 1);
    let out = ok(&run(OURS, &["probe", "-o", "udev", &b, &bad])).stdout.clone();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("ID_FS_UUID={uuid}\nID_FS_UUID_ENC={uuid}\nID_FS_TYPE=bcache\n")
    );
    let out = ok(&run(OURS, &["probe", &b])).stdout.clone();
    assert_eq!(String::from_utf8(out).unwrap(), format!("{b}: UUID=\"{uuid}\" TYPE=\"bcache\"\n"));
}
