//! How the lab writes sizes and counts in its text output. Formatting
//! only: nothing here measures or parses.

/// A size as `64 MiB` when it is a whole number of KiB/MiB/GiB, else in bytes.
pub fn size_text(n: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{} bytes", thousands(n))
}

/// `n` with thousands separators.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in MiB.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_in_whole_units_or_bytes() {
        assert_eq!(size_text(64 << 20), "64 MiB");
        assert_eq!(size_text(2 << 10), "2 KiB");
        assert_eq!(size_text(1_234_567), "1,234,567 bytes");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
    }
}
