//! Sizes as users write them, parsed exactly and stated back.
//!
//! The suffixes follow Kubernetes resource quantities, because that is where memory limits
//! come from: `Ki Mi Gi Ti` (and `KiB …`) are powers of 1024; `k K M G T` (and `KB MB …`) are
//! powers of 1000, as in Kubernetes and Chaos Mesh's `256MB`. A bare number is bytes. `80%`
//! is a percent of a limit that the caller resolves. Nothing is rounded silently: fractional
//! sizes resolve to whole bytes, and the plan prints what was resolved.

use std::fmt;

/// Page size the kernel counts RSS in.
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// A count with its thousands apart, as the kernel's figures are written for people:
/// `28 280`, `-16 000`, `256 000 000`.
pub fn group(n: i128) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A size as given: bytes, or a percent of something resolved later.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SizeSpec {
    /// An absolute number of bytes.
    Bytes(u64),
    /// A percent (0 < p, may exceed 100 to force an OOM on purpose).
    Percent(f64),
}

/// Why a size was refused. Each message names the input and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size is empty; give e.g. 200Mi, 1.5Gi, 500M or 80%")]
    Empty,
    #[error(
        "size `{0}` is not a number with an optional unit; accepted: 200Mi, 1.5Gi, 500M, 4096, 80% (units Ki Mi Gi Ti = 1024^n, k M G T = 1000^n)"
    )]
    Invalid(String),
    #[error(
        "size `{input}` has an unknown unit `{unit}`; accepted units: Ki Mi Gi Ti (1024^n), k M G T (1000^n), B"
    )]
    Unit { input: String, unit: String },
    #[error("size `{0}` must be greater than zero")]
    Zero(String),
    #[error("size `{0}` is negative")]
    Negative(String),
    #[error("size `{0}` is too large (more than 16 EiB)")]
    Overflow(String),
    #[error("size `{0}` is a percent, which is not accepted here; give bytes such as 256Mi")]
    PercentNotAllowed(String),
}

/// The input as an error message shows it: control characters escaped, so the message stays
/// one line whatever was typed.
fn shown(input: &str) -> String {
    input.escape_debug().to_string()
}

impl SizeSpec {
    /// Parses `200Mi`, `1.5Gi`, `500M`, `4096`, `80%`.
    pub fn parse(input: &str) -> Result<Self, SizeError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(SizeError::Empty);
        }
        if s.starts_with('-') {
            return Err(SizeError::Negative(shown(input)));
        }
        if let Some(number) = s.strip_suffix('%') {
            let p = parse_number(number.trim()).ok_or_else(|| SizeError::Invalid(shown(input)))?;
            if p <= 0.0 {
                return Err(SizeError::Zero(shown(input)));
            }
            if p > 10_000.0 {
                return Err(SizeError::Overflow(shown(input)));
            }
            return Ok(Self::Percent(p));
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let value = parse_number(number).ok_or_else(|| SizeError::Invalid(shown(input)))?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "Ki" | "KiB" => 1 << 10,
            "Mi" | "MiB" => 1 << 20,
            "Gi" | "GiB" => 1 << 30,
            "Ti" | "TiB" => 1 << 40,
            "k" | "K" | "kB" | "KB" => 1_000,
            "M" | "MB" => 1_000_000,
            "G" | "GB" => 1_000_000_000,
            "T" | "TB" => 1_000_000_000_000,
            other => {
                return Err(SizeError::Unit {
                    input: shown(input),
                    unit: shown(other),
                });
            }
        };
        let bytes = value * multiplier as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(SizeError::Overflow(shown(input)));
        }
        let bytes = bytes.round() as u64;
        if bytes == 0 {
            return Err(SizeError::Zero(shown(input)));
        }
        Ok(Self::Bytes(bytes))
    }

    /// Parses a size that must be absolute (a limit, for instance).
    pub fn parse_bytes(input: &str) -> Result<u64, SizeError> {
        match Self::parse(input)? {
            Self::Bytes(b) => Ok(b),
            Self::Percent(_) => Err(SizeError::PercentNotAllowed(shown(input))),
        }
    }

    /// Resolves against `base` bytes (the limit a percent refers to).
    pub fn resolve(self, base: u64) -> u64 {
        match self {
            Self::Bytes(b) => b,
            Self::Percent(p) => ((base as f64) * p / 100.0).round() as u64,
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bytes(b) => write!(f, "{}", Bytes(*b)),
            Self::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl std::str::FromStr for SizeSpec {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Digits with at most one `.` and optional `_` separators.
fn parse_number(s: &str) -> Option<f64> {
    let cleaned: String = s.chars().filter(|&c| c != '_').collect();
    if cleaned.is_empty()
        || !cleaned.chars().all(|c| c.is_ascii_digit() || c == '.')
        || cleaned.matches('.').count() > 1
        || cleaned == "."
    {
        return None;
    }
    cleaned.parse().ok()
}

/// Bytes, displayed in binary units with up to one decimal ("60.2 MiB", "512 B").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

/// A size in whole MiB, thousands apart (`20 595 MiB`): where [`Bytes`]' one decimal of GiB
/// would hide the difference that matters (a `memory.available` held within MiB of a goal).
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", group(i128::from((bytes + (1 << 19)) >> 20)))
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
        let b = self.0;
        if b < 1024 {
            return write!(f, "{b} B");
        }
        let mut value = b as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit < UNITS.len() - 1 {
            value /= 1024.0;
            unit += 1;
        }
        if (value - value.round()).abs() < 0.05 {
            write!(f, "{} {}", value.round() as u64, UNITS[unit])
        } else {
            write!(f, "{value:.1} {}", UNITS[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_thousands() {
        assert_eq!(group(26_113), "26 113");
        assert_eq!(group(131_072), "131 072");
        assert_eq!(group(999), "999");
        assert_eq!(group(-997_000), "-997 000");
        assert_eq!(group(0), "0");
    }

    #[test]
    fn parses_units_exactly() {
        assert_eq!(SizeSpec::parse("200Mi"), Ok(SizeSpec::Bytes(200 << 20)));
        assert_eq!(SizeSpec::parse("200MiB"), Ok(SizeSpec::Bytes(200 << 20)));
        assert_eq!(SizeSpec::parse("1.5Gi"), Ok(SizeSpec::Bytes(3 << 29)));
        assert_eq!(SizeSpec::parse("500M"), Ok(SizeSpec::Bytes(500_000_000)));
        assert_eq!(SizeSpec::parse("256MB"), Ok(SizeSpec::Bytes(256_000_000)));
        assert_eq!(SizeSpec::parse("4096"), Ok(SizeSpec::Bytes(4096)));
        assert_eq!(SizeSpec::parse(" 64 Mi "), Ok(SizeSpec::Bytes(64 << 20)));
        assert_eq!(SizeSpec::parse("1_000k"), Ok(SizeSpec::Bytes(1_000_000)));
        assert_eq!(SizeSpec::parse("80%"), Ok(SizeSpec::Percent(80.0)));
        assert_eq!(SizeSpec::parse("150%"), Ok(SizeSpec::Percent(150.0)));
    }

    #[test]
    fn refuses_bad_sizes_with_the_input_named() {
        assert_eq!(SizeSpec::parse(""), Err(SizeError::Empty));
        assert!(
            matches!(SizeSpec::parse("12Qi"), Err(SizeError::Unit { unit, .. }) if unit == "Qi")
        );
        assert!(matches!(
            SizeSpec::parse("-5Mi"),
            Err(SizeError::Negative(_))
        ));
        assert!(matches!(SizeSpec::parse("%"), Err(SizeError::Invalid(_))));
        assert!(matches!(SizeSpec::parse("0"), Err(SizeError::Zero(_))));
        assert!(matches!(SizeSpec::parse("0%"), Err(SizeError::Zero(_))));
        assert!(matches!(SizeSpec::parse("abc"), Err(SizeError::Invalid(_))));
        assert!(matches!(
            SizeSpec::parse("1.2.3Mi"),
            Err(SizeError::Invalid(_))
        ));
        assert!(matches!(
            SizeSpec::parse("99999999999Ti"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            SizeSpec::parse("1e9"),
            Err(SizeError::Unit { .. })
        ));
        assert!(matches!(
            SizeSpec::parse_bytes("50%"),
            Err(SizeError::PercentNotAllowed(_))
        ));
        let msg = SizeSpec::parse("12Qi").unwrap_err().to_string();
        assert!(msg.contains("12Qi") && msg.contains("Mi"), "{msg}");
    }

    #[test]
    fn resolves_percent_of_a_limit() {
        assert_eq!(SizeSpec::Percent(50.0).resolve(200 << 20), 100 << 20);
        assert_eq!(SizeSpec::Bytes(7).resolve(1000), 7);
    }

    #[test]
    fn displays_binary_units() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(64 << 20).to_string(), "64 MiB");
        assert_eq!(Bytes((60 << 20) + (1 << 19)).to_string(), "60.5 MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }
}
