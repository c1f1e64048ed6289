//! Parsing environment values (`CTXALLOC_LIMIT`, `CTXALLOC_BACKGROUND_IDLE`) without allocating.

/// A whole number of bytes with an optional `K`/`M`/`G`/`T` suffix (`512M`, `2G`; binary
/// multiples, either case, optionally followed by `B` or `iB`), surrounding blanks allowed.
/// `none`, `off`, `unlimited` or an empty value mean no limit. `Err` for anything else, for
/// zero, and on overflow.
pub(crate) fn parse_limit(v: &[u8]) -> Result<Option<usize>, ()> {
    let v = v.trim_ascii();
    if v.is_empty()
        || v.eq_ignore_ascii_case(b"none")
        || v.eq_ignore_ascii_case(b"off")
        || v.eq_ignore_ascii_case(b"unlimited")
    {
        return Ok(None);
    }
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(());
    }
    let mut n: usize = 0;
    for &d in &v[..digits] {
        n = n.checked_mul(10).and_then(|n| n.checked_add(usize::from(d - b'0'))).ok_or(())?;
    }
    let rest = v[digits..].trim_ascii_start();
    let (shift, unit) = match rest.first().map(u8::to_ascii_uppercase) {
        None => (0, &rest[..0]),
        Some(b'B') => (0, &rest[..1]),
        Some(b'K') => (10, &rest[..1]),
        Some(b'M') => (20, &rest[..1]),
        Some(b'G') => (30, &rest[..1]),
        Some(b'T') => (40, &rest[..1]),
        Some(_) => return Err(()),
    };
    let tail = &rest[unit.len()..];
    let tail_ok = tail.is_empty()
        || (shift != 0 && (tail.eq_ignore_ascii_case(b"b") || tail.eq_ignore_ascii_case(b"ib")));
    if !tail_ok {
        return Err(());
    }
    let n = n.checked_mul(1usize.checked_shl(shift).ok_or(())?).ok_or(())?;
    if n == 0 {
        return Err(());
    }
    Ok(Some(n))
}

/// A duration: a whole number with a unit — `ns`, `us`, `ms` or `s` — surrounding blanks
/// allowed; `0` needs none. In nanoseconds; `Err` for anything else and on overflow.
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
    let scale = match unit {
        b"" if n == 0 => 1,
        b"ns" => 1,
        b"us" => 1_000,
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        _ => return Err(()),
    };
    n.checked_mul(scale).ok_or(())
}

#[cfg(test)]
mod tests {
    use super::{parse_duration_ns, parse_limit};

    #[test]
    fn durations_parse_with_their_unit() {
        assert_eq!(parse_duration_ns(b"0"), Ok(0));
        assert_eq!(parse_duration_ns(b"1ms"), Ok(1_000_000));
        assert_eq!(parse_duration_ns(b" 2 s "), Ok(2_000_000_000));
        assert_eq!(parse_duration_ns(b"150us"), Ok(150_000));
        assert_eq!(parse_duration_ns(b"7ns"), Ok(7));
        for bad in [&b"5"[..], b"ms", b"1.5s", b"-1ms", b"3 min", b"99999999999999999999s", b""] {
            assert_eq!(parse_duration_ns(bad), Err(()), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_limit(b"512M"), Ok(Some(512 << 20)));
        assert_eq!(parse_limit(b"2G"), Ok(Some(2 << 30)));
        assert_eq!(parse_limit(b" 64 MiB "), Ok(Some(64 << 20)));
        assert_eq!(parse_limit(b"100kb"), Ok(Some(100 << 10)));
        assert_eq!(parse_limit(b"123456"), Ok(Some(123_456)));
        assert_eq!(parse_limit(b"4096B"), Ok(Some(4096)));
        assert_eq!(parse_limit(b"none"), Ok(None));
        assert_eq!(parse_limit(b""), Ok(None));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in [
            &b"abc"[..],
            b"12X",
            b"1.5G",
            b"-3M",
            b"0",
            b"99999999999999999999999",
            b"16EiB",
            b"3 M M",
            b"MB",
        ] {
            assert_eq!(parse_limit(bad), Err(()), "{}", String::from_utf8_lossy(bad));
        }
    }
}
