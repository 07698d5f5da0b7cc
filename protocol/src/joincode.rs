//! Join codes: how a mesh key travels from one machine to another by a person.
//!
//! - The **long code** is the key itself: `CM1-` and Crockford base32 of the 32 key bytes
//!   followed by a 32-bit check (SHA-256 of a domain tag and the key), in groups of five.
//!   Decoding ignores case, dashes and spaces and reads Crockford's aliases (`O` as `0`,
//!   `I`/`L` as `1`); a typo fails the check instead of naming another mesh.
//! - The **short code** (`42-apple-river-stone`) carries no key: a nameplate number that
//!   finds the inviter on the LAN and three words of [`WORDS`], the password of a
//!   password-authenticated key exchange that is good for one attempt.
//!
//! Pure functions: randomness comes in as bytes.

use sha2::{Digest, Sha256};

/// Prefix of a long code (format version 1).
pub const LONG_PREFIX: &str = "CM1-";
/// Crockford's base32 alphabet.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const CHECK_TAG: &[u8] = b"craftmesh/join-code/v1\0";
/// Key bytes plus check bytes.
const PAYLOAD: usize = 32 + 4;
/// Base32 characters of the payload (288 bits in 58 characters, 2 padding bits).
const CHARS: usize = (PAYLOAD * 8).div_ceil(5);
/// Longest text accepted as a code before any parsing.
pub const MAX_CODE_LEN: usize = 200;
/// The nameplate is 1..=MAX_NAMEPLATE.
pub const MAX_NAMEPLATE: u16 = 99;
/// Words in a short code.
pub const SHORT_WORDS: usize = 3;

/// The 256 words of short codes (one per line in `joincode_words.txt`).
pub static WORDS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| include_str!("joincode_words.txt").lines().map(str::trim).filter(|l| !l.is_empty()).collect());

/// Why a code was not accepted. Nothing is stored or sent for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("the code is empty")]
    Empty,
    #[error("the code is too long ({0} characters)")]
    TooLong(usize),
    #[error("the code has {got} characters after `CM1-`, expected {CHARS}; check for a missing or extra character")]
    Length { got: usize },
    #[error("`{0}` is not a character of a join code")]
    BadChar(char),
    #[error("the code's check does not match: a character is wrong (codes are checked so a typo never joins another mesh)")]
    Checksum,
    #[error("this is not a join code: a long code starts with CM1-, a short code is a number and {SHORT_WORDS} words")]
    NotACode,
    #[error("this code is of format version `{0}`, which this craftmesh does not know (it knows CM1)")]
    Version(String),
    #[error("a short code is a number and {SHORT_WORDS} words, like 42-apple-river-stone")]
    ShortShape,
    #[error("`{0}` is not a nameplate (a number from 1 to {MAX_NAMEPLATE})")]
    Nameplate(String),
    #[error("`{0}` is not a word of short codes; check its spelling")]
    UnknownWord(String),
}

/// The long code of a key.
pub fn encode_long(key: &[u8; 32]) -> String {
    let mut payload = Vec::with_capacity(PAYLOAD);
    payload.extend_from_slice(key);
    payload.extend_from_slice(&check(key));
    let chars = base32(&payload);
    let groups: Vec<String> = chars.as_bytes().chunks(5).map(|c| String::from_utf8_lossy(c).into_owned()).collect();
    format!("{LONG_PREFIX}{}", groups.join("-"))
}

/// The key of a long code.
pub fn decode_long(code: &str) -> Result<[u8; 32], CodeError> {
    let n = normalize(code)?;
    let rest = match n.strip_prefix("CM") {
        Some(r) => r,
        None => return Err(CodeError::NotACode),
    };
    let mut chars = rest.chars();
    let version = chars.next().map(alias).unwrap_or(' ');
    if version != '1' {
        return Err(CodeError::Version(format!("CM{version}")));
    }
    let body: Vec<char> = chars.collect();
    if body.len() != CHARS {
        return Err(CodeError::Length { got: body.len() });
    }
    let mut bits: u64 = 0;
    let mut nbits = 0;
    let mut out = Vec::with_capacity(PAYLOAD);
    for c in body {
        let a = alias(c);
        let v = ALPHABET.iter().position(|&x| x as char == a).ok_or(CodeError::BadChar(c))? as u64;
        bits = (bits << 5) | v;
        nbits += 5;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    // The padding bits of the last character must be zero: a typo there is a typo too.
    if bits != 0 || out.len() != PAYLOAD {
        return Err(CodeError::Checksum);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&out[..32]);
    if out[32..] != check(&key) {
        return Err(CodeError::Checksum);
    }
    Ok(key)
}

fn check(key: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(CHECK_TAG);
    h.update(key);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn base32(data: &[u8]) -> String {
    let mut s = String::with_capacity(CHARS);
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for &b in data {
        bits = (bits << 8) | b as u32;
        nbits += 8;
        while nbits >= 5 {
            nbits -= 5;
            s.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
        }
        bits &= (1 << nbits) - 1;
    }
    if nbits > 0 {
        s.push(ALPHABET[((bits << (5 - nbits)) & 31) as usize] as char);
    }
    s
}

/// Crockford's aliases: O is 0, I and L are 1.
fn alias(c: char) -> char {
    match c {
        'O' => '0',
        'I' | 'L' => '1',
        c => c,
    }
}

/// Upper case, without dashes and white space; bounded length.
fn normalize(code: &str) -> Result<String, CodeError> {
    if code.len() > MAX_CODE_LEN {
        return Err(CodeError::TooLong(code.len()));
    }
    let n: String = code.chars().filter(|c| *c != '-' && !c.is_whitespace()).map(|c| c.to_ascii_uppercase()).collect();
    if n.is_empty() { Err(CodeError::Empty) } else { Ok(n) }
}

/// A short code: nameplate and words. Its text ([`ShortCode::text`]) is the PAKE password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShortCode {
    pub nameplate: u16,
    pub words: [&'static str; SHORT_WORDS],
}

impl ShortCode {
    /// A code from five random bytes (two for the nameplate, one per word).
    pub fn from_random(r: [u8; 5]) -> ShortCode {
        let nameplate = 1 + u16::from_be_bytes([r[0], r[1]]) % MAX_NAMEPLATE;
        let w = |b: u8| WORDS.get(b as usize).copied().unwrap_or("zero");
        ShortCode { nameplate, words: [w(r[2]), w(r[3]), w(r[4])] }
    }

    /// The canonical text, e.g. `42-apple-river-stone`.
    pub fn text(&self) -> String {
        format!("{}-{}", self.nameplate, self.words.join("-"))
    }

    /// Parses a short code typed by a person: case-insensitive, dashes or spaces between parts.
    pub fn parse(code: &str) -> Result<ShortCode, CodeError> {
        if code.len() > MAX_CODE_LEN {
            return Err(CodeError::TooLong(code.len()));
        }
        let parts: Vec<String> = code.split(|c: char| c == '-' || c.is_whitespace()).filter(|p| !p.is_empty()).map(str::to_ascii_lowercase).collect();
        if parts.is_empty() {
            return Err(CodeError::Empty);
        }
        if parts.len() != SHORT_WORDS + 1 {
            return Err(CodeError::ShortShape);
        }
        let nameplate = parts[0].parse::<u16>().ok().filter(|n| (1..=MAX_NAMEPLATE).contains(n)).ok_or_else(|| CodeError::Nameplate(parts[0].clone()))?;
        let mut words = [""; SHORT_WORDS];
        for (slot, p) in words.iter_mut().zip(&parts[1..]) {
            *slot = WORDS.iter().find(|w| **w == p.as_str()).copied().ok_or_else(|| CodeError::UnknownWord(p.chars().take(40).collect()))?;
        }
        Ok(ShortCode { nameplate, words })
    }
}

/// A code given to `craftmesh join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinCode {
    /// A long code: the key itself.
    Long([u8; 32]),
    /// A short code: to be exchanged with the inviter.
    Short(ShortCode),
}

/// Reads either kind of code: one starting with `CM` is long, one starting with a digit is short.
pub fn parse(code: &str) -> Result<JoinCode, CodeError> {
    let t = code.trim();
    if t.len() > MAX_CODE_LEN {
        return Err(CodeError::TooLong(t.len()));
    }
    match t.chars().next() {
        None => Err(CodeError::Empty),
        Some(c) if c.is_ascii_digit() => ShortCode::parse(t).map(JoinCode::Short),
        Some(_) => decode_long(t).map(JoinCode::Long),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 32] = [7; 32];

    #[test]
    fn the_word_list_has_256_distinct_lowercase_words() {
        assert_eq!(WORDS.len(), 256);
        let set: std::collections::BTreeSet<_> = WORDS.iter().collect();
        assert_eq!(set.len(), 256);
        assert!(WORDS.iter().all(|w| w.chars().all(|c| c.is_ascii_lowercase())));
    }

    #[test]
    fn a_long_code_has_the_prefix_and_groups_of_five() {
        let c = encode_long(&KEY);
        assert!(c.starts_with("CM1-"), "{c}");
        let groups: Vec<&str> = c["CM1-".len()..].split('-').collect();
        assert!(groups[..groups.len() - 1].iter().all(|g| g.len() == 5), "{c}");
        assert_eq!(groups.concat().len(), CHARS);
    }

    #[test]
    fn a_long_code_decodes_in_any_case_without_dashes_and_with_aliases() {
        let c = encode_long(&KEY);
        assert_eq!(decode_long(&c), Ok(KEY));
        assert_eq!(decode_long(&c.to_lowercase()), Ok(KEY));
        assert_eq!(decode_long(&c.replace('-', " ")), Ok(KEY));
        assert_eq!(decode_long(&c.replace('-', "")), Ok(KEY));
        assert_eq!(decode_long(&c.replace('0', "O").replace('1', "l")), Ok(KEY));
    }

    #[test]
    fn every_one_character_typo_in_a_long_code_is_an_error() {
        let c = encode_long(&[0xA5; 32]);
        for (i, ch) in c.char_indices().skip(LONG_PREFIX.len()) {
            if ch == '-' {
                continue;
            }
            for &sub in ALPHABET {
                let sub = sub as char;
                if sub == ch {
                    continue;
                }
                let mut t = c.clone();
                t.replace_range(i..i + 1, &sub.to_string());
                assert!(decode_long(&t).is_err(), "typo {ch}->{sub} at {i} decoded");
            }
        }
    }

    #[test]
    fn a_missing_or_extra_character_is_a_length_error() {
        let c = encode_long(&KEY);
        assert!(matches!(decode_long(&c[..c.len() - 1]), Err(CodeError::Length { .. })));
        assert!(matches!(decode_long(&format!("{c}A")), Err(CodeError::Length { .. })));
        assert!(matches!(decode_long(&c.replace("CM1", "CM2")), Err(CodeError::Version(_))));
        assert!(matches!(decode_long(&"A".repeat(500)), Err(CodeError::TooLong(_))));
        assert!(matches!(decode_long("  - "), Err(CodeError::Empty)));
    }

    #[test]
    fn a_short_code_round_trips_and_parses_loosely() {
        let s = ShortCode::from_random([1, 2, 3, 4, 5]);
        assert!((1..=MAX_NAMEPLATE).contains(&s.nameplate));
        assert_eq!(ShortCode::parse(&s.text()), Ok(s.clone()));
        assert_eq!(ShortCode::parse(&s.text().to_uppercase().replace('-', "  ")), Ok(s.clone()));
        assert_eq!(parse(&s.text()), Ok(JoinCode::Short(s)));
    }

    #[test]
    fn the_documented_example_is_a_valid_short_code() {
        assert_eq!(ShortCode::parse("42-apple-river-stone").map(|c| c.text()), Ok("42-apple-river-stone".to_string()));
    }

    #[test]
    fn a_short_code_with_an_unknown_word_or_bad_shape_is_an_error() {
        let w = WORDS[0];
        assert!(matches!(ShortCode::parse(&format!("42-{w}-{w}-qqqq")), Err(CodeError::UnknownWord(_))));
        assert!(matches!(ShortCode::parse(&format!("42-{w}-{w}")), Err(CodeError::ShortShape)));
        assert!(matches!(ShortCode::parse(&format!("0-{w}-{w}-{w}")), Err(CodeError::Nameplate(_))));
        assert!(matches!(ShortCode::parse(&format!("100-{w}-{w}-{w}")), Err(CodeError::Nameplate(_))));
    }

    #[test]
    fn parse_tells_long_from_short_codes() {
        assert_eq!(parse(&encode_long(&KEY)), Ok(JoinCode::Long(KEY)));
        assert!(matches!(parse("hello"), Err(CodeError::NotACode)));
        assert!(matches!(parse(""), Err(CodeError::Empty)));
    }

    proptest! {
        #[test]
        fn any_key_round_trips_through_its_long_code(key in proptest::array::uniform32(any::<u8>())) {
            prop_assert_eq!(decode_long(&encode_long(&key)), Ok(key));
        }

        #[test]
        fn any_text_parses_or_errors_without_panicking(s in ".{0,300}") {
            let _ = parse(&s);
        }
    }
}
