//! The self-describing block format: every 4096-byte block a workload writes names the write
//! that produced it, so a checker can tell from the bytes alone which point in time it holds.

use crate::rng::mix64;

/// Every generated write covers whole blocks of this size.
pub const BLOCK_SIZE_BYTES: usize = 4096;
/// Identifies a block written by this crate (8 ASCII bytes, stored as is).
pub const BLOCK_MAGIC: [u8; 8] = *b"RDBTHIST";
/// Bumped when the layout or the filler stream changes.
pub const BLOCK_FORMAT_VERSION: u32 = 1;
/// Bytes `0..BLOCK_HEADER_SIZE_BYTES` hold the fields; the filler follows.
pub const BLOCK_HEADER_SIZE_BYTES: usize = 48;
/// The CRC32C of bytes `0..BLOCK_CHECKSUM_OFFSET_BYTES` sits in the last 4 bytes.
pub const BLOCK_CHECKSUM_OFFSET_BYTES: usize = BLOCK_SIZE_BYTES - 4;

const _: () = assert!(BLOCK_SIZE_BYTES == 4096);
const _: () = assert!(BLOCK_HEADER_SIZE_BYTES.is_multiple_of(8));
const _: () = assert!(BLOCK_HEADER_SIZE_BYTES < BLOCK_CHECKSUM_OFFSET_BYTES);

/// What a valid block says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockIdentity {
    /// The run that wrote it; blocks of another run are stale.
    pub run_id: u64,
    /// 1-based issue order of the write in the workload.
    pub write_id: u64,
    pub lv_index: u32,
    /// Where the block belongs, in blocks from the start of the LV.
    pub block_index: u64,
    /// Position of this block inside its write (`0..block_count`).
    pub block_in_write: u32,
    /// Number of blocks in the write.
    pub block_count: u32,
}

/// Why a block that carries our magic cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The header parses and the first `intact_bytes` match it, but the rest does not: the
    /// block was torn (a partial write) or mixes pieces of two writes.
    Torn {
        header: BlockIdentity,
        intact_bytes: u32,
    },
    /// The checksum does not match, and the header itself is suspect (damage in the first
    /// bytes or in the checksum field).
    ChecksumMismatch { stored: u32, computed: u32 },
    /// The checksum is right but the fields are impossible (write id 0, or the block's
    /// position outside its write): not written by this crate's encoder.
    InvalidHeader { header: BlockIdentity },
    /// The checksum is right but the version is unknown to this build.
    UnknownVersion { version: u32 },
}

/// The decoded content of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockContent {
    /// All zero: never written (the initial state of every LV).
    Zero,
    Written(BlockIdentity),
    /// Not zero and without our magic: data this crate never wrote.
    Foreign,
    Corrupt(Corruption),
}

/// Builds the 4096 bytes of one block.
///
/// Layout (all integers little-endian):
/// `magic | run_id | write_id | block_index | lv_index | block_in_write | block_count |
/// version | filler | crc32c`.
pub fn encode_block(identity: &BlockIdentity) -> [u8; BLOCK_SIZE_BYTES] {
    assert!(
        identity.write_id > 0,
        "write ids are 1-based; 0 means never written"
    );
    assert!(identity.block_count > 0);
    assert!(identity.block_in_write < identity.block_count);

    let mut block = [0u8; BLOCK_SIZE_BYTES];
    block[0..8].copy_from_slice(&BLOCK_MAGIC);
    block[8..16].copy_from_slice(&identity.run_id.to_le_bytes());
    block[16..24].copy_from_slice(&identity.write_id.to_le_bytes());
    block[24..32].copy_from_slice(&identity.block_index.to_le_bytes());
    block[32..36].copy_from_slice(&identity.lv_index.to_le_bytes());
    block[36..40].copy_from_slice(&identity.block_in_write.to_le_bytes());
    block[40..44].copy_from_slice(&identity.block_count.to_le_bytes());
    block[44..48].copy_from_slice(&BLOCK_FORMAT_VERSION.to_le_bytes());
    fill(
        identity,
        &mut block[BLOCK_HEADER_SIZE_BYTES..BLOCK_CHECKSUM_OFFSET_BYTES],
    );
    let checksum = crc32c::crc32c(&block[..BLOCK_CHECKSUM_OFFSET_BYTES]);
    block[BLOCK_CHECKSUM_OFFSET_BYTES..].copy_from_slice(&checksum.to_le_bytes());

    // Pair assertion: the header we hand out must read back as what we were asked to write
    // (the filler round trip is covered by tests; repeating it here would double the cost).
    assert_eq!(parse_header(&block), *identity);
    block
}

/// Classifies 4096 bytes read back from an image. Never panics on any input.
pub fn decode_block(block: &[u8; BLOCK_SIZE_BYTES]) -> BlockContent {
    if block[0..8] != BLOCK_MAGIC {
        if block.iter().all(|&byte| byte == 0) {
            return BlockContent::Zero;
        }
        return BlockContent::Foreign;
    }
    let header = parse_header(block);
    let version = read_u32(block, 44);
    let stored = read_u32(block, BLOCK_CHECKSUM_OFFSET_BYTES);
    let computed = crc32c::crc32c(&block[..BLOCK_CHECKSUM_OFFSET_BYTES]);

    // The filler is only re-derived when the checksum fails: a matching CRC32C already rules
    // out torn and mixed blocks, and skipping the filler halves the cost of a check.
    if stored == computed {
        if version != BLOCK_FORMAT_VERSION {
            return BlockContent::Corrupt(Corruption::UnknownVersion { version });
        }
        if header.write_id == 0 || header.block_in_write >= header.block_count {
            return BlockContent::Corrupt(Corruption::InvalidHeader { header });
        }
        return BlockContent::Written(header);
    }
    let intact_bytes = intact_prefix_bytes(&header, block);
    // A tear past the header leaves a trustworthy header and a matching filler prefix; a
    // mismatch right at the filler start means the header itself may be what is damaged.
    let tear_inside_filler =
        intact_bytes > BLOCK_HEADER_SIZE_BYTES && intact_bytes < BLOCK_CHECKSUM_OFFSET_BYTES;
    if tear_inside_filler && version == BLOCK_FORMAT_VERSION {
        let intact_bytes = u32::try_from(intact_bytes).unwrap_or(u32::MAX);
        return BlockContent::Corrupt(Corruption::Torn {
            header,
            intact_bytes,
        });
    }
    BlockContent::Corrupt(Corruption::ChecksumMismatch { stored, computed })
}

fn parse_header(block: &[u8; BLOCK_SIZE_BYTES]) -> BlockIdentity {
    BlockIdentity {
        run_id: read_u64(block, 8),
        write_id: read_u64(block, 16),
        block_index: read_u64(block, 24),
        lv_index: read_u32(block, 32),
        block_in_write: read_u32(block, 36),
        block_count: read_u32(block, 40),
    }
}

/// How many leading bytes (header included, checksum excluded) agree with what `header`
/// would have produced. Only runs for blocks whose checksum failed, to say where they tore.
fn intact_prefix_bytes(header: &BlockIdentity, block: &[u8; BLOCK_SIZE_BYTES]) -> usize {
    let mut expected = [0u8; BLOCK_CHECKSUM_OFFSET_BYTES - BLOCK_HEADER_SIZE_BYTES];
    fill(header, &mut expected);
    let actual = &block[BLOCK_HEADER_SIZE_BYTES..BLOCK_CHECKSUM_OFFSET_BYTES];
    let matching = expected
        .iter()
        .zip(actual)
        .take_while(|(left, right)| left == right)
        .count();
    BLOCK_HEADER_SIZE_BYTES + matching
}

/// A seed that depends on every header field.
fn filler_seed(identity: &BlockIdentity) -> u64 {
    let mut seed = mix64(identity.run_id);
    seed = mix64(seed ^ identity.write_id);
    seed = mix64(seed ^ identity.block_index);
    seed = mix64(seed ^ u64::from(identity.lv_index));
    mix64(seed ^ (u64::from(identity.block_in_write) << 32 | u64::from(identity.block_count)))
}

/// Filler word `i` (little-endian, the last one cut to 4 bytes) is
/// `seed + (i + 1) * FILLER_GAMMA` (wrapping). Two blocks with different seeds then differ
/// in *every* filler word (their difference is the constant `seed_a - seed_b`), so any piece
/// of another block glued in is visible, and a Weyl sequence costs one add per word.
fn fill(identity: &BlockIdentity, filler: &mut [u8]) {
    let mut word = filler_seed(identity);
    for chunk in filler.chunks_mut(8) {
        word = word.wrapping_add(FILLER_GAMMA);
        let bytes = word.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}

/// The golden-ratio increment (odd, so the sequence has full period).
const FILLER_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

fn read_u64(block: &[u8; BLOCK_SIZE_BYTES], offset: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&block[offset..offset + 8]);
    u64::from_le_bytes(bytes)
}

fn read_u32(block: &[u8; BLOCK_SIZE_BYTES], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&block[offset..offset + 4]);
    u32::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 4096), magic in any::<bool>()) {
            let mut block = [0u8; 4096];
            block.copy_from_slice(&bytes);
            if magic {
                block[0..8].copy_from_slice(&BLOCK_MAGIC);
            }
            let content = decode_block(&block);
            prop_assert!(!matches!(content, BlockContent::Zero));
        }

        #[test]
        fn any_damaged_byte_is_detected(
            write_id in 1u64..1_000_000,
            position in 0usize..4096,
            flip in 1u8..=255,
        ) {
            let mut block = encode_block(&identity(write_id));
            block[position] ^= flip;
            prop_assert!(!matches!(decode_block(&block), BlockContent::Written(_)));
        }
    }

    fn identity(write_id: u64) -> BlockIdentity {
        BlockIdentity {
            run_id: 0xABCD,
            write_id,
            lv_index: 2,
            block_index: 37,
            block_in_write: 1,
            block_count: 3,
        }
    }

    #[test]
    fn round_trip() {
        let block = encode_block(&identity(812));
        assert_eq!(&block[0..8], b"RDBTHIST");
        assert_eq!(decode_block(&block), BlockContent::Written(identity(812)));
    }

    #[test]
    fn format_is_pinned() {
        // Images written by older builds must still decode: the bytes may never change.
        let block = encode_block(&identity(812));
        assert_eq!(crc32c::crc32c(&block), PINNED_BLOCK_CRC);
    }

    const PINNED_BLOCK_CRC: u32 = 1_214_729_159;

    #[test]
    fn zero_and_foreign() {
        assert_eq!(decode_block(&[0u8; 4096]), BlockContent::Zero);
        let mut block = [0u8; 4096];
        block[4095] = 1;
        assert_eq!(decode_block(&block), BlockContent::Foreign);
    }

    #[test]
    fn halves_of_two_writes_are_torn() {
        let first = encode_block(&identity(812));
        let second = encode_block(&identity(790));
        let mut mixed = first;
        mixed[2048..].copy_from_slice(&second[2048..]);
        assert_eq!(
            decode_block(&mixed),
            BlockContent::Corrupt(Corruption::Torn {
                header: identity(812),
                intact_bytes: 2048
            })
        );
    }

    #[test]
    fn damaged_header_is_checksum_mismatch() {
        let mut block = encode_block(&identity(812));
        block[17] ^= 0x40;
        assert!(matches!(
            decode_block(&block),
            BlockContent::Corrupt(Corruption::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn damaged_checksum_field_is_detected() {
        let mut block = encode_block(&identity(812));
        block[4095] ^= 1;
        assert!(matches!(
            decode_block(&block),
            BlockContent::Corrupt(Corruption::ChecksumMismatch { .. })
        ));
    }
}
