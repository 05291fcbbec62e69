//! The digests verifiers compare: blake3 over little-endian f32 bytes.

/// blake3 of logits as little-endian f32 bytes: the value verifiers compare.
pub fn logits_digest(logits: &[f32]) -> blake3::Hash {
    let mut h = blake3::Hasher::new();
    hash_f32s(&mut h, logits);
    h.finalize()
}

/// Feeds `values` to `h` as little-endian f32 bytes.
///
/// The same bytes as one `update` per value, so the digest is unchanged, but handed over 16 KiB at a
/// time: blake3 only hashes several chunks in parallel (SIMD) when it gets them in one call, and a
/// call per 4 bytes made odin-100m's 32768 logits cost hundreds of µs on every network step.
pub fn hash_f32s(h: &mut blake3::Hasher, values: &[f32]) {
    let mut buf = [0u8; 16 * 1024];
    for part in values.chunks(buf.len() / 4) {
        for (b, v) in buf.chunks_exact_mut(4).zip(part) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        h.update(&buf[..part.len() * 4]);
    }
}

/// [`logits_digest`] in hex.
pub fn hash_logits(logits: &[f32]) -> String {
    logits_digest(logits).to_hex().to_string()
}
