//! The one parser for sizes: `CTXALLOC_LIMIT`, the examples' `--limit`, the C library's
//! `ctxalloc_parse_size` and the kernel shim's boot arguments all read sizes through it, so a
//! value means the same wherever it is written. It never allocates (the environment is read
//! inside the first allocation).
//!
//! A size is a whole number of bytes with an optional binary suffix — `K`, `M`, `G`, `T` (either
//! case), optionally followed by `B` or `iB` — or a bare `B`: `4096`, `512M`, `64MiB`, `2gb`,
//! `100 KiB`. Blanks around the value and between the number and its unit are allowed;
//! fractions, signs, other units and anything that does not fit in a `usize` are errors.
//!
//! ```
//! use ctxalloc_core::parse::{parse_limit, parse_size, SizeError};
//! assert_eq!(parse_size("64MiB"), Ok(64 << 20));
//! assert_eq!(parse_size(" 2 g "), Ok(2 << 30));
//! assert_eq!(parse_size("1.5G"), Err(SizeError::BadUnit));
//! assert_eq!(parse_size("99999999999999G"), Err(SizeError::Overflow));
//! assert_eq!(parse_limit("none"), Ok(None));
//! assert_eq!(parse_limit("0"), Ok(None)); // as C's ctxalloc_set_limit(0)
//! assert_eq!(parse_limit("512M"), Ok(Some(512 << 20)));
//! ```

use core::fmt;

/// Why a size did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// Nothing but blanks.
    Empty,
    /// It does not start with a digit.
    NotANumber,
    /// The number is followed by something other than `K`, `M`, `G`, `T` (with an optional `B`
    /// or `iB`) or `B`.
    BadUnit,
    /// It does not fit in a `usize`.
    Overflow,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SizeError::Empty => "no size given",
            SizeError::NotANumber => "a size starts with a whole number of bytes",
            SizeError::BadUnit => "the unit after the number is not one of B, K, M, G, T (KiB, MB…)",
            SizeError::Overflow => "the size does not fit in this machine's address space",
        })
    }
}

impl core::error::Error for SizeError {}

/// What a size is, for messages: `expected …`.
pub const SIZE_SYNTAX: &str =
    "a whole number of bytes with an optional K, M, G or T suffix (512M, 64MiB, 2G)";

/// A size in bytes (see the [module](self) for the syntax). Zero is a size.
pub fn parse_size(s: impl AsRef<[u8]>) -> Result<usize, SizeError> {
    let v = s.as_ref().trim_ascii();
    if v.is_empty() {
        return Err(SizeError::Empty);
    }
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(SizeError::NotANumber);
    }
    let mut n: usize = 0;
    for &d in &v[..digits] {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(usize::from(d - b'0')))
            .ok_or(SizeError::Overflow)?;
    }
    let unit = v[digits..].trim_ascii_start();
    let (shift, tail) = match unit.first().map(u8::to_ascii_uppercase) {
        None => return Ok(n),
        Some(b'B') => (0, &unit[1..]),
        Some(b'K') => (10, &unit[1..]),
        Some(b'M') => (20, &unit[1..]),
        Some(b'G') => (30, &unit[1..]),
        Some(b'T') => (40, &unit[1..]),
        Some(_) => return Err(SizeError::BadUnit),
    };
    let tail_ok = tail.is_empty()
        || (shift != 0 && (tail.eq_ignore_ascii_case(b"b") || tail.eq_ignore_ascii_case(b"ib")));
    if !tail_ok {
        return Err(SizeError::BadUnit);
    }
    let scale = 1usize.checked_shl(shift).ok_or(SizeError::Overflow)?;
    n.checked_mul(scale).ok_or(SizeError::Overflow)
}

/// A memory limit: a size, or no limit — `none`, `off`, `unlimited` (any case), `0` (as C's
/// `ctxalloc_set_limit(0)`) or nothing at all. Whether the size can work as a limit is the
/// core's to say ([`Core::set_limit`](crate::Core::set_limit)).
pub fn parse_limit(s: impl AsRef<[u8]>) -> Result<Option<usize>, SizeError> {
    let v = s.as_ref().trim_ascii();
    if v.is_empty() || [&b"none"[..], b"off", b"unlimited"].iter().any(|w| v.eq_ignore_ascii_case(w)) {
        return Ok(None);
    }
    parse_size(v).map(|n| (n != 0).then_some(n))
}

#[cfg(test)]
mod tests {
    use super::{parse_limit, parse_size, SizeError};

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size(" 64 MiB "), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("100kb"), Ok(100 << 10));
        assert_eq!(parse_size("123456"), Ok(123_456));
        assert_eq!(parse_size("4096B"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        #[cfg(target_pointer_width = "64")]
        assert_eq!(parse_size(b"1t"), Ok(1 << 40));
        #[cfg(target_pointer_width = "32")]
        assert_eq!(parse_size(b"1t"), Err(SizeError::Overflow));
    }

    #[test]
    fn garbage_is_rejected_with_its_reason() {
        use SizeError::*;
        for (bad, why) in [
            ("", Empty),
            ("   ", Empty),
            ("abc", NotANumber),
            ("MB", NotANumber),
            ("-3M", NotANumber),
            ("12X", BadUnit),
            ("1.5G", BadUnit),
            ("3 M M", BadUnit),
            ("4Bi", BadUnit),
            ("2KiBs", BadUnit),
            ("99999999999999999999999", Overflow),
            ("99999999999999G", Overflow),
            ("16777216T", Overflow),
        ] {
            assert_eq!(parse_size(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn limits_read_none_and_zero_as_no_limit() {
        for none in ["", "none", "NONE", "off", "Unlimited", "0", " 0 KiB "] {
            assert_eq!(parse_limit(none), Ok(None), "{none:?}");
        }
        assert_eq!(parse_limit("1g"), Ok(Some(1 << 30)));
        assert_eq!(parse_limit("nope"), Err(SizeError::NotANumber));
    }
}
