//! Key encoding. Names never contain NUL, so `0x00` separates parts and a prefix ending in
//! `0x00` scans exactly one owner's rows. Sequence numbers are big-endian so byte order is
//! numeric order.

/// Separator between key parts.
pub(crate) const SEP: u8 = 0;

/// `a \0 b \0 c ...` (no trailing separator).
pub(crate) fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(SEP);
        }
        key.extend_from_slice(part);
    }
    key
}

/// `a \0` : the prefix of every key that starts with part `a`.
pub(crate) fn prefix(part: &[u8]) -> Vec<u8> {
    let mut key = part.to_vec();
    key.push(SEP);
    key
}

/// `owner \0 seq(be)`: per-chat messages and per-user events.
pub(crate) fn seq_key(owner: &[u8], seq: u64) -> Vec<u8> {
    let mut key = prefix(owner);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The seq at the end of a [`seq_key`].
pub(crate) fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// The last part of a joined key.
pub(crate) fn last_part(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|b| *b == SEP) {
        Some(i) => &key[i + 1..],
        None => key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_keys_sort_numerically() {
        let a = seq_key(b"chat", 2);
        let b = seq_key(b"chat", 10);
        let c = seq_key(b"chat", 256);
        assert!(a < b && b < c);
        assert_eq!(seq_of(&c), Some(256));
        assert!(a.starts_with(&prefix(b"chat")));
        assert!(!seq_key(b"chat2", 1).starts_with(&prefix(b"chat")));
    }

    #[test]
    fn parts() {
        let k = join(&[b"i", b"bob", b"alice"]);
        assert_eq!(last_part(&k), b"alice");
        assert!(k.starts_with(&prefix(b"i")));
    }
}
