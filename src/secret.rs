//! The cluster secret (F27): how it is made (`ringkv secret`) and read
//! (`--cluster-secret-file`, `RINGKV_CLUSTER_SECRET`). No networking.
//!
//! A secret is at least [`MIN_SECRET_BYTES`] random bytes, given as hex
//! (what `ringkv secret` prints) or raw. Its bytes never appear in a log,
//! an error or a `Debug` print.

use rand::TryRngCore;

use crate::error::{Error, Result};

/// Fewest bytes of a secret: 256 bits.
pub const MIN_SECRET_BYTES: usize = 32;

/// A new secret from the operating system's generator, as 64 hex digits.
pub fn generate_hex() -> Result<String> {
    let mut bytes = [0u8; MIN_SECRET_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Error::Io(std::io::Error::other(format!("no random bytes: {e}"))))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_secrets_are_64_hex_digits_and_differ() {
        let (a, b) = (generate_hex().unwrap(), generate_hex().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
