//! The on-disk format: round trips, checksums and every read_super reason.

use bcache::superblock::*;
use proptest::prelude::*;
use uuid::Uuid;

const GEOM: DeviceGeometry = DeviceGeometry { logical_block_size: 512, sectors: 1 << 24 };

fn cache() -> Superblock {
    Superblock::new_cache(&CacheParams {
        uuid: Uuid::from_u128(1),
        set_uuid: Uuid::from_u128(2),
        label: Label::default(),
        block_sectors: 8,
        bucket_sectors: 1024,
        device_sectors: 1 << 24,
        discard: false,
        replacement: Replacement::Lru,
    })
}

fn backing(data_offset: u64) -> Superblock {
    Superblock::new_backing(&BackingParams {
        uuid: Uuid::from_u128(3),
        set_uuid: Uuid::from_u128(2),
        label: Label::new("disk").unwrap(),
        block_sectors: 8,
        bucket_sectors: 1024,
        data_offset,
        cache_mode: CacheMode::Writeback,
    })
}

/// Applies a change, reseals and validates.
fn reject(mut sb: Superblock, change: impl FnOnce(&mut Superblock)) -> Rejection {
    change(&mut sb);
    if sb.keys as usize <= JOURNAL_BUCKETS {
        sb.seal();
    }
    sb.validate(&GEOM).expect_err("must be refused")
}

#[test]
fn built_superblocks_validate() {
    assert_eq!(cache().validate(&GEOM), Ok(Role::Cache));
    assert_eq!(backing(16).validate(&GEOM), Ok(Role::Backing));
    assert_eq!(backing(16).version, 1);
    assert_eq!(backing(2048).version, 4);
    assert_eq!(backing(2048).data_offset(), 2048);
}

#[test]
fn the_checksum_covers_bytes_8_to_the_journal_end() {
    let sb = cache();
    let bytes = sb.to_bytes();
    let crc = crc::Crc::<u64>::new(&crc::CRC_64_WE);
    assert_eq!(sb.csum, crc.checksum(&bytes[8..208]));
    assert_eq!(u64::from_le_bytes(bytes[0..8].try_into().unwrap()), sb.csum);
    assert_eq!(&bytes[24..40], &MAGIC);
    // The magic at absolute byte 0x1018, where wipefs reports it.
    assert_eq!(SB_START as usize + 24, 0x1018);
}

#[test]
fn each_read_super_reason_in_order() {
    use Rejection::*;
    let mut bad_offset = cache();
    bad_offset.offset = 9;
    assert_eq!(bad_offset.validate(&GEOM), Err(BadOffset));
    assert_eq!(reject(cache(), |s| s.magic[0] ^= 1), BadMagic);
    let mut bad_csum = cache();
    bad_csum.csum ^= 1;
    assert_eq!(bad_csum.validate(&GEOM), Err(BadChecksum));
    assert_eq!(reject(cache(), |s| s.keys = 257), TooManyJournalBuckets);
    assert_eq!(reject(cache(), |s| s.uuid = Uuid::nil()), BadUuid);
    let big = DeviceGeometry { logical_block_size: 4096, ..GEOM };
    let mut small_block = cache();
    small_block.block_size = 1;
    small_block.seal();
    assert_eq!(small_block.validate(&big), Err(BlockSizeBelowDevice));
    assert_eq!(reject(backing(16), |s| { s.version = 4; s.nbuckets_or_data_offset = 15 }), BadDataOffset);
    assert_eq!(reject(backing(16), |s| { s.version = 6; s.nbuckets_or_data_offset = 0 }), BadDataOffset);
    for v in [2, 7, 100] {
        assert_eq!(reject(cache(), |s| s.version = v), UnsupportedVersion, "version {v}");
    }
    let v5 = |s: &mut Superblock| s.version = 5;
    assert_eq!(reject(cache(), |s| { v5(s); s.feature_compat = 1 }), UnsupportedCompatFeature);
    assert_eq!(reject(cache(), |s| { v5(s); s.feature_ro_compat = 1 }), UnsupportedRoCompatFeature);
    assert_eq!(reject(cache(), |s| { v5(s); s.feature_incompat = 4 }), UnsupportedIncompatFeature);
    assert_eq!(reject(cache(), |s| s.nbuckets_or_data_offset = u64::MAX), TooManyBuckets);
    assert_eq!(reject(cache(), |s| s.nbuckets_or_data_offset = 127), NotEnoughBuckets);
    assert_eq!(reject(cache(), |s| s.block_size = 3), BlockSizeNotPowerOfTwo);
    assert_eq!(reject(cache(), |s| s.block_size = 16), BlockSizeAbovePage);
    assert_eq!(reject(cache(), |s| s.bucket_size = 1000), BucketSizeNotPowerOfTwo);
    assert_eq!(reject(cache(), |s| s.bucket_size = 4), BucketSizeBelowPage);
    assert_eq!(reject(cache(), |s| s.nbuckets_or_data_offset = 1 << 20), DeviceTooSmall);
    assert_eq!(reject(cache(), |s| s.set_uuid = Uuid::nil()), BadSetUuid);
    assert_eq!(reject(cache(), |s| s.nr_in_set = 0), BadCacheNumber);
    assert_eq!(reject(cache(), |s| s.nr_this_dev = 1), BadCacheNumber);
    assert_eq!(reject(cache(), |s| { s.nr_in_set = 9; s.nr_this_dev = 0 }), BadCacheNumber);
    assert_eq!(reject(cache(), |s| { s.keys = 2; s.d[0] = 1; s.d[1] = 3 }), JournalNotSequential);
    assert_eq!(
        reject(cache(), |s| { s.nbuckets_or_data_offset = 130; s.first_bucket = 129; s.keys = 2; s.d[0] = 129; s.d[1] = 130 }),
        TooManyJournalBuckets
    );
    assert_eq!(reject(cache(), |s| { s.bucket_size = 8; s.nbuckets_or_data_offset = 1024; s.first_bucket = 1 }), FirstBucketInSuper);
    assert_eq!(reject(cache(), |s| s.nbuckets_or_data_offset = 512), TooFewUsableBuckets(512));
    assert!(!TooFewUsableBuckets(512).is_read_super());
}

#[test]
fn backing_devices_ignore_cache_fields() {
    // The kernel checks no bucket, journal or set field of a backing device.
    let mut sb = backing(16);
    sb.bucket_size = 3;
    sb.first_bucket = 0;
    sb.set_uuid = Uuid::nil();
    sb.seal();
    assert_eq!(sb.validate(&GEOM), Ok(Role::Backing));
}

#[test]
fn large_buckets_use_the_log_feature() {
    let mut p = CacheParams {
        uuid: Uuid::from_u128(1),
        set_uuid: Uuid::from_u128(2),
        label: Label::default(),
        block_sectors: 8,
        bucket_sectors: 1 << 17,
        device_sectors: 1 << 30,
        discard: true,
        replacement: Replacement::Random,
    };
    let sb = Superblock::new_cache(&p);
    assert_eq!(sb.version, 5);
    assert_eq!(sb.feature_incompat, FEATURE_INCOMPAT_LOG_LARGE_BUCKET_SIZE);
    assert_eq!(sb.bucket_size, 17);
    assert_eq!(sb.bucket_sectors(), 1 << 17);
    assert_eq!(sb.validate(&DeviceGeometry { logical_block_size: 512, sectors: 1 << 30 }), Ok(Role::Cache));
    p.bucket_sectors = 1 << 15;
    let small = Superblock::new_cache(&p);
    assert_eq!((small.version, small.feature_incompat, small.bucket_size), (0, 0, 1 << 15));
    assert!(small.discard());
    assert_eq!(small.replacement(), Some(Replacement::Random));
}

#[test]
fn labels_are_bounded() {
    assert!(Label::new(&"x".repeat(31)).is_ok());
    assert_eq!(Label::new(&"x".repeat(32)), Err(LabelError::TooLong(32)));
    assert_eq!(Label::new("a\0b"), Err(LabelError::Nul));
}

#[test]
fn short_buffers_are_an_error() {
    assert!(Superblock::parse(&[0u8; SB_LEN - 1]).is_err());
    assert!(Superblock::parse(&[0u8; SB_LEN]).is_ok());
}

fn arb_superblock() -> impl Strategy<Value = Superblock> {
    let words = proptest::collection::vec(any::<u64>(), 14);
    let small = proptest::collection::vec(any::<u16>(), 7);
    let journal = proptest::collection::vec(any::<u64>(), JOURNAL_BUCKETS);
    (words, small, journal, any::<[u8; 16]>(), any::<[u8; 32]>(), any::<u32>()).prop_map(
        |(w, s, j, magic, label, last_mount)| Superblock {
            csum: w[0],
            offset: w[1],
            version: w[2],
            magic,
            uuid: Uuid::from_u64_pair(w[3], w[4]),
            set_uuid: Uuid::from_u64_pair(w[5], w[6]),
            label,
            flags: w[7],
            seq: w[8],
            feature_compat: w[9],
            feature_incompat: w[10],
            feature_ro_compat: w[11],
            pad: [w[12], w[13], w[0], w[1], w[2]],
            nbuckets_or_data_offset: w[13] ^ w[3],
            block_size: s[0],
            bucket_size: s[1],
            nr_in_set: s[2],
            nr_this_dev: s[3],
            last_mount,
            first_bucket: s[4],
            keys: s[5],
            d: j.try_into().unwrap(),
            obso_bucket_size_hi: s[6],
        },
    )
}

proptest! {
    #[test]
    fn parse_inverts_to_bytes(sb in arb_superblock()) {
        prop_assert_eq!(Superblock::parse(&sb.to_bytes()).unwrap(), sb);
    }

    #[test]
    fn any_block_parses_and_validates_without_panic(bytes in proptest::collection::vec(any::<u8>(), SB_LEN..=SB_BLOCK_LEN)) {
        let sb = Superblock::parse(&bytes).unwrap();
        let _ = sb.validate(&GEOM);
        let _ = bcache::show::text(&sb, true);
        let _ = bcache::show::Report::new(&sb);
    }

    #[test]
    fn built_backing_round_trips(uuid in any::<u128>(), set in any::<u128>(), off in 16u64..1 << 40, wb in any::<bool>()) {
        prop_assume!(uuid != 0);
        let sb = Superblock::new_backing(&BackingParams {
            uuid: Uuid::from_u128(uuid), set_uuid: Uuid::from_u128(set), label: Label::default(),
            block_sectors: 8, bucket_sectors: 1024, data_offset: off,
            cache_mode: if wb { CacheMode::Writeback } else { CacheMode::Writethrough },
        });
        let back = Superblock::parse(&sb.to_bytes()).unwrap();
        prop_assert_eq!(back.validate(&GEOM), Ok(Role::Backing));
        prop_assert_eq!(back.data_offset(), off);
        prop_assert_eq!(back.cache_mode(), Some(if wb { CacheMode::Writeback } else { CacheMode::Writethrough }));
    }

    #[test]
    fn built_cache_validates_when_big_enough(bucket_log in 3u32..20, extra in 513u64..100_000) {
        let bucket = 1u64 << bucket_log;
        let sectors = bucket * extra;
        let sb = Superblock::new_cache(&CacheParams {
            uuid: Uuid::from_u128(9), set_uuid: Uuid::from_u128(10), label: Label::default(),
            block_sectors: bucket.min(8) as u16, bucket_sectors: bucket, device_sectors: sectors,
            discard: false, replacement: Replacement::Fifo,
        });
        let geom = DeviceGeometry { logical_block_size: 512, sectors };
        prop_assert_eq!(sb.validate(&geom), Ok(Role::Cache));
        prop_assert_eq!(sb.bucket_sectors(), bucket);
    }

    #[test]
    fn one_flipped_bit_in_the_covered_range_breaks_the_checksum(bit in 64usize..208 * 8) {
        let sb = cache();
        let mut bytes = sb.to_bytes();
        bytes[bit / 8] ^= 1 << (bit % 8);
        let flipped = Superblock::parse(&bytes).unwrap();
        prop_assert_ne!(flipped.expected_csum(), Some(flipped.csum));
    }
}
