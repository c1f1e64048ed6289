//! Parsing environment values without allocating: switches (`CTXALLOC_BACKGROUND`,
//! `CTXALLOC_SHOW_STATS`) and durations (`CTXALLOC_BACKGROUND_IDLE`). Sizes are the core's
//! ([`ctxalloc_core::parse`]), shared with the examples and the C library.

/// What an on/off variable accepts, for warnings.
pub(crate) const SWITCH_SYNTAX: &str = "on or off (also 1/0, yes/no, true/false, any case)";

/// An on/off value, any case, surrounding blanks allowed; `None` for anything else (the caller
/// warns: never a silent default).
pub(crate) fn parse_switch(v: &[u8]) -> Option<bool> {
    let v = v.trim_ascii();
    let is = |words: [&[u8]; 4]| words.iter().any(|w| v.eq_ignore_ascii_case(w));
    if is([b"on", b"1", b"yes", b"true"]) {
        Some(true)
    } else if is([b"off", b"0", b"no", b"false"]) {
        Some(false)
    } else {
        None
    }
}

/// A duration: a whole number with a unit — `ns`, `us`, `ms` or `s`, any case — surrounding
/// blanks allowed; `0` needs none. In nanoseconds; `Err` for anything else and on overflow.
pub(crate) fn parse_duration_ns(v: &[u8]) -> Result<u64, ()> {
    let v = v.trim_ascii();
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(());
    }
    let mut n: u64 = 0;
    for &d in &v[..digits] {
        n = n.checked_mul(10).and_then(|n| n.checked_add(u64::from(d - b'0'))).ok_or(())?;
    }
    let unit = v[digits..].trim_ascii_start();
    // (No `to_ascii_lowercase`: it would allocate.)
    let scale = if unit.is_empty() && n == 0 {
        1
    } else {
        let units: [(&[u8], u64); 4] =
            [(b"ns", 1), (b"us", 1_000), (b"ms", 1_000_000), (b"s", 1_000_000_000)];
        units.iter().find(|(u, _)| unit.eq_ignore_ascii_case(u)).ok_or(())?.1
    };
    n.checked_mul(scale).ok_or(())
}

#[cfg(test)]
mod tests {
    use super::{parse_duration_ns, parse_switch};

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration_ns(b"0"), Ok(0));
        assert_eq!(parse_duration_ns(b"1ms"), Ok(1_000_000));
        assert_eq!(parse_duration_ns(b" 2 s "), Ok(2_000_000_000));
        assert_eq!(parse_duration_ns(b"150us"), Ok(150_000));
        assert_eq!(parse_duration_ns(b"7ns"), Ok(7));
        assert_eq!(parse_duration_ns(b"5MS"), Ok(5_000_000));
        for bad in [&b"5"[..], b"ms", b"1.5s", b"-1ms", b"3 min", b"99999999999999999999s", b""] {
            assert_eq!(parse_duration_ns(bad), Err(()), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn switches_parse_in_any_case() {
        for on in [&b"on"[..], b"ON", b" 1 ", b"Yes", b"true"] {
            assert_eq!(parse_switch(on), Some(true));
        }
        for off in [&b"off"[..], b"OFF", b"0", b"no", b"False"] {
            assert_eq!(parse_switch(off), Some(false));
        }
        for bad in [&b"disable"[..], b"", b"2", b"of"] {
            assert_eq!(parse_switch(bad), None);
        }
    }
}
