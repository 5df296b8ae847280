//! What a key may be (F20): UTF-8, 1 to 1024 bytes; `/`, spaces and any
//! other character allowed. Checked at every edge (HTTP, RESP, RPC, storage).

use crate::error::{Error, Result};

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Checks a key that is already a `str`.
pub fn validate(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("the key is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::invalid(format!(
            "the key is {} bytes long, the limit is {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    Ok(())
}

/// Decodes a percent-encoded path segment into a checked key.
pub fn from_url_path(encoded: &str) -> Result<String> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
    let key = String::from_utf8(bytes)
        .map_err(|_| Error::invalid("the key is not valid UTF-8 once URL-decoded"))?;
    validate(&key)?;
    Ok(key)
}

/// Percent-encodes a key for a URL path, keeping `/` readable.
pub fn to_url_path(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits() {
        assert!(validate("").is_err());
        assert!(validate("a").is_ok());
        assert!(validate(&"x".repeat(1024)).is_ok());
        assert!(validate(&"x".repeat(1025)).is_err());
        assert!(from_url_path("%ff%fe").is_err());
        assert_eq!(from_url_path("a%20b/c").unwrap(), "a b/c");
    }

    proptest! {
        #[test]
        fn url_encoding_round_trips(key in "\\PC{1,100}") {
            prop_assert_eq!(from_url_path(&to_url_path(&key)).unwrap(), key);
        }
    }
}
