//! The hash of the o200k token table, shared by the build script that lays the table out
//! (build.rs) and the tokenizer that reads it (`protocol::o200k`): both must agree bit for bit.

/// Hash of a token's bytes (three bytes or more): eight bytes at a time, the length folded in.
pub fn hash(key: &[u8]) -> u64 {
    const K: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut h = (key.len() as u64).wrapping_mul(K);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let w = c.try_into().map(u64::from_le_bytes).unwrap_or(0);
        h = (h ^ w).wrapping_mul(K).rotate_left(29);
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    if let Some(dst) = last.get_mut(..rest.len()) {
        dst.copy_from_slice(rest);
    }
    h = (h ^ u64::from_le_bytes(last)).wrapping_mul(K);
    h ^ (h >> 29)
}

/// Slots of the table of tokens of three bytes or more (load about 0.37 for o200k).
pub const TABLE_BITS: u32 = 19;

/// The table file's first bytes.
pub const MAGIC: &[u8; 4] = b"O2K1";
