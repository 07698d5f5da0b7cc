//! Memory sizes written the PromptCraft way: `512MB`, `1.5GB`, `256MiB`, `100 KB`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A number of bytes parsed from a human-written size.
///
/// Decimal units (KB, MB, GB, TB) are powers of 1000 and binary units (KiB, MiB, GiB)
/// powers of 1024, as the units say. A bare number is bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mb(n: u64) -> Self {
        ByteSize(n * 1_000_000)
    }
    pub fn as_mb(self) -> u64 {
        self.0 / 1_000_000
    }
}

/// Why a size did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size is empty")]
    Empty,
    #[error("`{0}` does not start with a number")]
    NoNumber(String),
    #[error("unknown size unit `{unit}` in `{input}`; expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")]
    BadUnit { input: String, unit: String },
    #[error("size `{0}` is too large")]
    Overflow(String),
}

impl FromStr for ByteSize {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.is_empty() {
            return Err(SizeError::Empty);
        }
        let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| SizeError::NoNumber(t.to_string()))?;
        if !num.is_finite() || num < 0.0 {
            return Err(SizeError::NoNumber(t.to_string()));
        }
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => {
                return Err(SizeError::BadUnit { input: t.to_string(), unit: unit.trim().to_string() });
            }
        };
        let bytes = num * mult as f64;
        if bytes > u64::MAX as f64 / 2.0 {
            return Err(SizeError::Overflow(t.to_string()));
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1_000_000_000 && b.is_multiple_of(1_000_000) {
            write!(f, "{}GB", b as f64 / 1e9)
        } else if b >= 1_000_000 && b.is_multiple_of(1_000) {
            write!(f, "{}MB", b as f64 / 1e6)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as `512MB` or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_decimal_and_binary_units() {
        assert_eq!("512MB".parse(), Ok(ByteSize(512_000_000)));
        assert_eq!("1.5 GB".parse(), Ok(ByteSize(1_500_000_000)));
        assert_eq!("256MiB".parse(), Ok(ByteSize(256 << 20)));
        assert_eq!("100".parse(), Ok(ByteSize(100)));
        assert_eq!("100kb".parse(), Ok(ByteSize(100_000)));
    }

    #[test]
    fn bad_sizes_are_rejected_with_the_reason() {
        assert!(matches!("512XB".parse::<ByteSize>(), Err(SizeError::BadUnit { .. })));
        assert!(matches!("MB".parse::<ByteSize>(), Err(SizeError::NoNumber(_))));
        assert!(matches!("".parse::<ByteSize>(), Err(SizeError::Empty)));
        assert!(matches!("1.2.3MB".parse::<ByteSize>(), Err(SizeError::NoNumber(_))));
        assert!(matches!("99999999999999TB".parse::<ByteSize>(), Err(SizeError::Overflow(_))));
    }
}
