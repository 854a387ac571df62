//! Count the primes below a bound with the sieve of Eratosthenes, over a task's share of the
//! range, and fold them into a checksum so a verifier compares one number.

/// Result of sieving `[lo, hi)`.
#[derive(Debug, PartialEq, Eq)]
pub struct Sieved {
    /// Primes found.
    pub count: u64,
    /// The largest prime found (0 if none).
    pub largest: u64,
    /// FNV-1a over the primes' little-endian bytes.
    pub checksum: u64,
}

/// Sieve `[lo, hi)` using base primes up to √hi (a segmented sieve).
pub fn sieve(lo: u64, hi: u64) -> Sieved {
    let root = (hi as f64).sqrt() as u64 + 1;
    let mut base = vec![true; (root + 1) as usize];
    let mut small = Vec::new();
    for i in 2..=root {
        if base[i as usize] {
            small.push(i);
            let mut j = i * i;
            while j <= root {
                base[j as usize] = false;
                j += i;
            }
        }
    }
    let lo = lo.max(2);
    let mut seg = vec![true; hi.saturating_sub(lo) as usize];
    for &p in &small {
        let mut start = (lo.div_ceil(p) * p).max(p * p);
        while start < hi {
            seg[(start - lo) as usize] = false;
            start += p;
        }
    }
    let mut out = Sieved { count: 0, largest: 0, checksum: 0xcbf2_9ce4_8422_2325 };
    for (i, is) in seg.iter().enumerate() {
        if *is {
            let n = lo + i as u64;
            out.count += 1;
            out.largest = n;
            for b in n.to_le_bytes() {
                out.checksum ^= u64::from(b);
                out.checksum = out.checksum.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    out
}
