use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest prefix `unique_name` accepts: names end up as interface names (15
/// bytes max), and netpath derives more names from them.
pub const MAX_PREFIX: usize = 6;
const SUFFIX: usize = 6;

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn mix(mut z: u64) -> u64 {
    // splitmix64 finaliser
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `prefix` followed by 6 base36 characters derived from the pid, a
/// per-process counter and the clock: at most 12 characters in all.
///
/// Panics if `prefix` is longer than 6 bytes or not `[a-z0-9-]`.
pub fn unique_name(prefix: &str) -> String {
    assert!(
        prefix.len() <= MAX_PREFIX,
        "unique_name prefix {prefix:?} longer than {MAX_PREFIX} bytes"
    );
    assert!(
        prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        "unique_name prefix {prefix:?} must be [a-z0-9-]"
    );
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = u64::from(std::process::id());
    let mut v = mix(mix(pid << 32 ^ count) ^ nanos);
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(prefix.len() + SUFFIX);
    out.push_str(prefix);
    for _ in 0..SUFFIX {
        out.push(DIGITS[(v % 36) as usize] as char);
        v /= 36;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_distinct() {
        let a = unique_name("np");
        let b = unique_name("np");
        assert_ne!(a, b);
        assert_eq!(a.len(), 8);
        assert!(unique_name("abcdef").len() <= 12);
    }

    #[test]
    #[should_panic(expected = "longer than")]
    fn long_prefix_rejected() {
        unique_name("toolong");
    }
}
