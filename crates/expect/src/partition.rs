//! Which partition a producer puts a key in, so the owner of a source that never published is
//! known: the process holding that partition.

use crate::config::Partitioner;

/// The partition of `key` among `partitions`, as `partitioner` picks it.
pub fn partition_of(partitioner: Partitioner, key: &[u8], partitions: i32) -> i32 {
    let partitions = partitions.max(1) as u32;
    let hash = match partitioner {
        Partitioner::ConsistentRandom => crc32(key),
        Partitioner::Murmur2Random => murmur2(key) & 0x7fff_ffff,
    };
    (hash % partitions) as i32
}

/// CRC-32 (IEEE, as zlib): librdkafka's `consistent` partitioner hashes keys with it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffff_u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

/// Murmur2 as the Java client's default partitioner computes it (seed `0x9747b28c`).
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len() as u32;
    let mut h: u32 = 0x9747_b28c ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(&first) = rest.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hashes_give_their_known_answers() {
        // zlib's crc32("123456789") and the Java client's murmur2 test vectors.
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
        assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32, -58_897_971);
    }
}
