//! Generators shared by the fuzz targets.

use proptest::prelude::*;

const SPECIALS: &[char] = &[
    '%', '&', '=', '+', '$', '.', '~', '_', '-', '/', '#', '?', ' ', ';', '"', '\\', '\n', '\r', '\t', '\0', ':', '@',
    '*', '!', '(', ')', ',', '\'', '{', '}', '[', ']',
];
const UNICODE: &[char] = &['é', 'ü', '€', 'ß', '日', '本', '😀', '\u{FEFF}', '\u{FFFD}', '\u{7F}', '\u{80}'];

/// One character from a number: characters that matter to the parsers
/// here, hex digits, letters, some Unicode and any Unicode scalar value.
/// (Mapping one `u32` is several times faster in a debug build than a union
/// of character strategies, and shrinks towards `%`.)
pub fn char_from(x: u32) -> char {
    let pick = |set: &[char]| set[(x / 100) as usize % set.len()];
    let span = |lo: u8, n: u32| char::from(lo + (x / 100 % n) as u8);
    match x % 100 {
        0..30 => pick(SPECIALS),
        30..50 => span(b'0', 10),
        50..60 => span(b'a', 6),
        60..70 => span(b'A', 26),
        70..80 => span(b'g', 20),
        80..92 => pick(UNICODE),
        _ => char::from_u32(x / 100 % 0x11_0000).unwrap_or('\u{D7FF}'),
    }
}

/// A string of [`char_from`] characters.
pub fn tricky_string(max: usize) -> impl Strategy<Value = String> + Clone {
    tricky_string_between(0, max)
}

/// A string of `min` to `max` [`char_from`] characters.
pub fn tricky_string_between(min: usize, max: usize) -> impl Strategy<Value = String> + Clone {
    proptest::collection::vec(any::<u32>(), min..=max).prop_map(|v| v.into_iter().map(char_from).collect())
}

/// Arbitrary bytes, made into a string the lossy way (invalid UTF-8 becomes
/// U+FFFD).
pub fn lossy_string(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// A string over a small alphabet, to reach the deep paths of a grammar.
pub fn alphabet_string(alphabet: &'static [&'static str], max: usize) -> impl Strategy<Value = String> + Clone {
    proptest::collection::vec(any::<u16>(), 0..=max)
        .prop_map(move |v| v.into_iter().map(|i| alphabet[usize::from(i) % alphabet.len()]).collect())
}

/// Applies byte-level damage to a string: each edit inserts, deletes or
/// replaces at a position (taken modulo the length), then the bytes are
/// made valid UTF-8 again the lossy way.
pub fn mutate(s: &str, edits: &[(usize, u8, u8)]) -> String {
    let mut b = s.as_bytes().to_vec();
    for &(pos, op, byte) in edits {
        let at = if b.is_empty() { 0 } else { pos % (b.len() + 1) };
        match op % 3 {
            0 => b.insert(at, byte),
            1 if at < b.len() => {
                b.remove(at);
            }
            _ if at < b.len() => b[at] = byte,
            _ => b.push(byte),
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Edits for [`mutate`]: `min` to `max` of them; the bytes are often ones
/// that mean something to the parsers here.
pub fn edits_between(min: usize, max: usize) -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    let byte = prop_oneof![
        1 => any::<u8>(),
        1 => proptest::sample::select(&b"&=%;/+.:-_0123456789abcdefABCDEFZ{}[]\",\n\r \x02\x03"[..]),
    ];
    proptest::collection::vec((any::<usize>(), any::<u8>(), byte), min..=max)
}

/// 0 to `max` edits for [`mutate`].
pub fn edits(max: usize) -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    edits_between(0, max)
}

/// Every window of `n` characters of `secret` (the whole of it when shorter):
/// none may appear in a message.
pub fn pieces(secret: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = secret.chars().collect();
    if chars.len() <= n {
        return vec![secret.to_owned()];
    }
    chars.windows(n).map(String::from_iter).collect()
}
