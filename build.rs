#![allow(
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used
)]
//! Lays out the o200k_base vocabulary as a flat table compiled into the binary (see
//! `src/protocol/o200k.rs`): the gateway reads it in place, so counting tokens costs only the
//! pages it touches instead of ~24 MB of heap built at first use (issue 14).
//!
//! The vocabulary comes from the `tiktoken` crate (build dependency only). Layout, all
//! integers little-endian u32: magic, token count n, table bits b, arena length; then the
//! arena offsets of ranks 0..=n (n + 1 values; an absent rank has an empty range); the rank of
//! every one-byte token (256 values) and of every two-byte token (65,536 values; u32::MAX when
//! absent); the hash table of tokens of
//! three bytes or more (2^b slots, rank + 1, 0 when empty, linear probing); then the arena.

#[path = "src/protocol/bpe_hash.rs"]
#[allow(dead_code)]
mod bpe_hash;

use std::io::Write;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/protocol/bpe_hash.rs");
    let enc = tiktoken::encoding::o200k_base();
    // Special tokens are counted as ordinary text: leave them out.
    let specials: Vec<u32> = ["<|endoftext|>", "<|endofprompt|>"]
        .iter()
        .flat_map(|s| enc.encode_with_special_tokens(s))
        .collect();
    let mut tokens: Vec<Vec<u8>> = Vec::new();
    let mut missing = 0;
    for rank in 0u32.. {
        if specials.contains(&rank) {
            tokens.push(Vec::new());
            continue;
        }
        let bytes = enc.decode(&[rank]);
        if bytes.is_empty() {
            missing += 1;
            if missing > 1024 {
                break;
            }
        } else {
            missing = 0;
        }
        tokens.push(bytes);
    }
    while tokens.last().is_some_and(Vec::is_empty) {
        tokens.pop();
    }
    assert!(
        tokens.len() > 190_000,
        "o200k_base has {} tokens",
        tokens.len()
    );
    let n = tokens.len() as u32;
    let mut arena = Vec::new();
    let mut offsets = Vec::with_capacity(tokens.len() + 1);
    for t in &tokens {
        offsets.push(arena.len() as u32);
        arena.extend_from_slice(t);
    }
    offsets.push(arena.len() as u32);
    let mut singles = vec![u32::MAX; 256];
    let mut pairs = vec![u32::MAX; 1 << 16];
    let mask = (1usize << bpe_hash::TABLE_BITS) - 1;
    let mut table = vec![0u32; 1 << bpe_hash::TABLE_BITS];
    for (rank, t) in tokens.iter().enumerate() {
        match t.len() {
            0 => {}
            1 => singles[usize::from(t[0])] = rank as u32,
            2 => pairs[usize::from(t[0]) << 8 | usize::from(t[1])] = rank as u32,
            _ => {
                let mut i = bpe_hash::hash(t) as usize & mask;
                while table[i] != 0 {
                    i = (i + 1) & mask;
                }
                table[i] = rank as u32 + 1;
            }
        }
    }
    let mut out =
        Vec::with_capacity(16 + 4 * (offsets.len() + pairs.len() + table.len()) + arena.len());
    out.extend_from_slice(bpe_hash::MAGIC);
    for v in [n, bpe_hash::TABLE_BITS, arena.len() as u32] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    for v in offsets.iter().chain(&singles).chain(&pairs).chain(&table) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&arena);
    let path = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("o200k.bin");
    std::fs::File::create(&path)
        .and_then(|mut f| f.write_all(&out))
        .expect("write o200k.bin");
}
