//! Parsing `CTXALLOC_LIMIT` without allocating.

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

#[cfg(test)]
mod tests {
    use super::parse_limit;

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
