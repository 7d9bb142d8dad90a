//! Sizes as operators write them: `4096`, `4k`, `512K`, `1M`, `2G`, `1T`.

/// A size that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("'{0}' is not a size (a number with an optional k, M, G or T suffix)")]
    Syntax(String),
    #[error("'{0}' is too large")]
    Overflow(String),
}

/// Parses a size in bytes. The suffixes k, M, G and T (either case) are
/// binary multiples, as in bcache-tools.
pub fn parse_bytes(s: &str) -> Result<u64, SizeError> {
    let syntax = || SizeError::Syntax(s.to_owned());
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    if num.is_empty() {
        return Err(syntax());
    }
    let shift = match suffix {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return Err(syntax()),
    };
    let n: u64 = num.parse().map_err(|_| SizeError::Overflow(s.to_owned()))?;
    n.checked_mul(1 << shift).ok_or_else(|| SizeError::Overflow(s.to_owned()))
}

/// A size in bytes that must be a whole number of 512-byte sectors;
/// returns sectors.
pub fn parse_sectors(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes(s).map_err(|e| e.to_string())?;
    if bytes % 512 != 0 || bytes == 0 {
        return Err(format!("'{s}' is not a whole number of 512-byte sectors"));
    }
    Ok(bytes / 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_are_binary() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("1M"), Ok(1 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        assert_eq!(parse_sectors("512k"), Ok(1024));
    }

    #[test]
    fn junk_is_refused() {
        for bad in ["", "k", "1.5M", "-1", "1MB", " 1", "1 ", "0x10"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse_bytes("99999999999999T"), Err(SizeError::Overflow(_))));
        assert!(parse_sectors("100").is_err());
    }

    #[test]
    fn sizes_up_to_u64_max_parse_and_one_more_overflows() {
        assert_eq!(parse_bytes("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_bytes("16777215T"), Ok(((1 << 24) - 1) << 40));
        assert_eq!(parse_bytes("18014398509481983k"), Ok(u64::MAX - 1023));
        for over in ["18446744073709551616", "16777216T", "17179869184G", "17592186044416M", "18014398509481984k"] {
            assert_eq!(parse_bytes(over), Err(SizeError::Overflow(over.into())), "{over}");
        }
        assert_eq!(parse_sectors("16777215T"), Ok(((1 << 24) - 1) << 31));
        assert!(parse_sectors("0").is_err());
    }
}
