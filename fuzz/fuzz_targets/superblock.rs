//! Arbitrary bytes as the block read at the superblock's place.
//!
//! Whatever parses must validate against any geometry, serialise, parse
//! back to the same value and render as text and JSON, all without a
//! panic.

#![no_main]

use libfuzzer_sys::fuzz_target;

use bcache::show::{self, Report};
use bcache::superblock::{DeviceGeometry, Superblock, SB_LEN};

/// End of `obso_bucket_size_hi`, the last field of `struct cache_sb_disk`.
const STRUCT_END: usize = SB_LEN + 2;

/// A device geometry made from the input's first bytes: byte 0 picks a
/// logical block size (below 0x80 a power of two from 1 byte to 32 KiB,
/// above it a multiple of 3 that is no power of two), bytes 1..9 the
/// capacity in sectors.
fn geometry(data: &[u8]) -> DeviceGeometry {
    let byte = |i: usize| data.get(i).copied().unwrap_or(0);
    let b0 = byte(0);
    let logical_block_size = if b0 & 0x80 == 0 {
        1u32 << (b0 & 0x0f)
    } else {
        u32::from(b0) * 3
    };
    let mut cap = [0u8; 8];
    for (i, c) in cap.iter_mut().enumerate() {
        *c = byte(1 + i);
    }
    DeviceGeometry { logical_block_size, sectors: u64::from_le_bytes(cap) }
}

fuzz_target!(|data: &[u8]| {
    let Ok(sb) = Superblock::parse(data) else {
        return;
    };

    let _ = sb.validate(&geometry(data));
    // The extreme geometries as well: empty and as large as can be.
    let _ = sb.validate(&DeviceGeometry { logical_block_size: 0, sectors: 0 });
    let _ = sb.validate(&DeviceGeometry { logical_block_size: u32::MAX, sectors: u64::MAX });

    let bytes = sb.to_bytes();
    let again = Superblock::parse(&bytes).expect("a serialised superblock parses");
    // The serialised block is 4 KiB, so the second parse always reads
    // obso_bucket_size_hi. The first read it from the input only when the
    // input reached byte 2258, and as zero otherwise; to_bytes writes what
    // was read, so the two agree either way.
    assert_eq!(again, sb, "parse(to_bytes(sb)) != sb");
    assert_eq!(again.to_bytes()[..], bytes[..], "to_bytes is not stable");
    // What the serialiser writes is what was read, byte for byte, up to
    // the end of the structure; the rest of the block is zero padding.
    let end = if data.len() >= STRUCT_END { STRUCT_END } else { SB_LEN };
    assert_eq!(bytes[..end], data[..end], "to_bytes changed the input's bytes");
    assert!(bytes[end..].iter().all(|&b| b == 0), "padding is not zero");

    for force in [true, false] {
        let (text, err) = show::text(&sb, force);
        // Every report, finished or cut short, is whole lines starting with
        // the magic line.
        assert!(text.starts_with("sb.magic\t\t"), "text report: {text:?}");
        assert!(text.ends_with('\n'), "unterminated report: {text:?} ({err:?})");
        if let Some(e) = err {
            let _ = e.to_string();
            let _ = e.exit_code();
        }
    }

    let report = Report::new(&sb);
    let json = serde_json::to_string(&report).expect("the JSON report serialises");
    let value: serde_json::Value = serde_json::from_str(&json).expect("the JSON report parses back");
    assert_eq!(value["version"].as_u64(), Some(sb.version));
});
