//! API tokens (F27): the token file, scopes, and the constant-time lookup
//! of a request's bearer token. No networking: `http/auth.rs` applies it to
//! requests, `server.rs` reloads it on SIGHUP.
//!
//! The file holds one token per line as `SCOPE TOKEN` (`#` starts a
//! comment; blank lines are skipped). A token listed on several lines has
//! every scope it is listed with. Scopes: `read`, `write`, `admin`,
//! `metrics`; `admin` implies all of them.
//!
//! Invariants: tokens are kept only as blake3 digests, and a lookup
//! compares the presented token's digest with every digest held, in
//! constant time and without stopping at a match, so neither the time of a
//! refusal nor an error message tells anything about the tokens. No
//! message of this module contains a token: a bad line is named by its
//! number.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::error::{Error, Result};

/// Shortest token accepted: 16 bytes (128 bits when random; `ringkv
/// secret` prints 64 hex digits, which are fine as tokens too).
pub const MIN_TOKEN_BYTES: usize = 16;
/// Largest token file read: far more than any real list of tokens.
const MAX_TOKEN_FILE_BYTES: u64 = 1 << 20;

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// GET/HEAD of keys, `/keys`, `/whereis`, `/haskey`, `/ring`, the page.
    Read,
    /// PUT/DELETE of keys.
    Write,
    /// Everything else: balance, purge, remove, leave, replicas.
    Admin,
    /// `/metrics`.
    Metrics,
}

impl Scope {
    /// Every scope, in the order shown.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Write, Scope::Admin, Scope::Metrics];

    /// The scope's name in the token file and in errors.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::Metrics => "metrics",
        }
    }

    /// Parses a scope name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
            Scope::Metrics => 8,
        }
    }
}

/// A set of scopes (a bit set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Whether these scopes allow `scope` (admin allows everything).
    pub fn allows(self, scope: Scope) -> bool {
        self.0 & (scope.bit() | Scope::Admin.bit()) != 0
    }

    /// Whether there is no scope at all (an unknown token).
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn add(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }
}

/// The verdict on a request's `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token has the scope needed.
    Allowed,
    /// No `Authorization: Bearer` header.
    Missing,
    /// A header that is not a bearer token, or a token not in the file.
    Unknown,
    /// A known token without the scope needed.
    Forbidden,
}

/// The tokens of one token file, as digests with their scopes.
#[derive(Clone, Default)]
pub struct TokenSet {
    /// blake3 of each token, with every scope it is listed with.
    entries: Vec<([u8; 32], Scopes)>,
}

impl std::fmt::Debug for TokenSet {
    /// Counts only: a set of tokens is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens)", self.entries.len())
    }
}

impl TokenSet {
    /// Parses a token file's text. Errors name the line, never its token.
    pub fn parse(text: &str) -> Result<TokenSet> {
        let mut set = TokenSet::default();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(scope), Some(token), None) = (words.next(), words.next(), words.next())
            else {
                return Err(Error::invalid(format!(
                    "token file line {number}: expected `SCOPE TOKEN` (two words)"
                )));
            };
            let scope = Scope::parse(scope).ok_or_else(|| {
                Error::invalid(format!(
                    "token file line {number}: unknown scope {scope:?} (read, write, admin or metrics)"
                ))
            })?;
            if token.len() < MIN_TOKEN_BYTES {
                return Err(Error::invalid(format!(
                    "token file line {number}: the token is shorter than {MIN_TOKEN_BYTES} characters"
                )));
            }
            let digest = *blake3::hash(token.as_bytes()).as_bytes();
            match set.entries.iter_mut().find(|(d, _)| *d == digest) {
                Some((_, scopes)) => scopes.add(scope),
                None => {
                    let mut scopes = Scopes::default();
                    scopes.add(scope);
                    set.entries.push((digest, scopes));
                }
            }
        }
        if set.entries.is_empty() {
            return Err(Error::invalid(
                "the token file lists no token (lines of `SCOPE TOKEN`)",
            ));
        }
        Ok(set)
    }

    /// How many distinct tokens the set holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set holds no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scopes of `token` (empty when unknown), found in constant time:
    /// every digest is compared, whatever matched before.
    pub fn scopes_of(&self, token: &[u8]) -> Scopes {
        let digest = blake3::hash(token);
        let mut found = 0u8;
        for (held, scopes) in &self.entries {
            let hit = held.ct_eq(digest.as_bytes());
            found |= u8::conditional_select(&0, &scopes.0, hit);
        }
        Scopes(found)
    }

    /// Whether the `Authorization` header `header` allows `needed`.
    pub fn check(&self, header: Option<&[u8]>, needed: Scope) -> Verdict {
        let Some(header) = header else {
            return Verdict::Missing;
        };
        let Some(token) = bearer_token(header) else {
            return Verdict::Unknown;
        };
        let scopes = self.scopes_of(token);
        if scopes.is_empty() {
            Verdict::Unknown
        } else if scopes.allows(needed) {
            Verdict::Allowed
        } else {
            Verdict::Forbidden
        }
    }
}

/// The token of an `Authorization: Bearer TOKEN` header value (the scheme
/// case-insensitive, RFC 6750's b64token characters), if it is one.
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.strip_prefix(b" ")?.trim_ascii();
    let b64token = |c: &u8| c.is_ascii_alphanumeric() || b"-._~+/=".contains(c);
    (!token.is_empty() && token.iter().all(b64token)).then_some(token)
}

/// The token file a node serves with, reloadable: cheap to clone.
#[derive(Clone, Debug)]
pub struct Tokens {
    /// The file, read again on reload.
    path: PathBuf,
    /// The tokens now; replaced whole by a reload (a std lock, held only
    /// to clone or swap the `Arc`).
    current: Arc<RwLock<Arc<TokenSet>>>,
}

impl Tokens {
    /// Reads the token file at `path`.
    pub fn load(path: &Path) -> Result<Tokens> {
        let set = read_file(path)?;
        Ok(Tokens {
            path: path.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(set))),
        })
    }

    /// The tokens now.
    pub fn current(&self) -> Arc<TokenSet> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the file again; on an error the tokens held stay in force.
    /// Returns how many tokens it now holds.
    pub fn reload(&self) -> Result<usize> {
        let set = read_file(&self.path)?;
        let count = set.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(count)
    }
}

fn read_file(path: &Path) -> Result<TokenSet> {
    let named = |e: std::io::Error| Error::Io {
        source: std::io::Error::new(e.kind(), format!("token file {}: {e}", path.display())),
    };
    let size = std::fs::metadata(path).map_err(named)?.len();
    if size > MAX_TOKEN_FILE_BYTES {
        return Err(Error::invalid(format!(
            "token file {} is larger than {MAX_TOKEN_FILE_BYTES} bytes",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(named)?;
    TokenSet::parse(&text)
        .map_err(|e| Error::invalid(format!("{}: {}", path.display(), strip_prefix(&e))))
}

/// The reason of an `InvalidInput` without its "invalid input: " prefix.
fn strip_prefix(err: &Error) -> String {
    match err {
        Error::InvalidInput { reason } => reason.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# tokens of the test cluster
read    reader-token-0123456789
write   writer-token-0123456789  # a comment
metrics metrics-token-0123456789
admin   admin-token-0123456789

read    both-token-0123456789
write   both-token-0123456789
";

    #[test]
    fn scopes_follow_the_file_and_admin_implies_all() {
        let set = TokenSet::parse(FILE).unwrap();
        assert_eq!(set.len(), 5);
        let check =
            |token: &str, scope| set.check(Some(format!("Bearer {token}").as_bytes()), scope);
        assert_eq!(
            check("reader-token-0123456789", Scope::Read),
            Verdict::Allowed
        );
        assert_eq!(
            check("reader-token-0123456789", Scope::Write),
            Verdict::Forbidden
        );
        assert_eq!(
            check("writer-token-0123456789", Scope::Write),
            Verdict::Allowed
        );
        assert_eq!(
            check("writer-token-0123456789", Scope::Read),
            Verdict::Forbidden
        );
        assert_eq!(
            check("metrics-token-0123456789", Scope::Metrics),
            Verdict::Allowed
        );
        assert_eq!(
            check("metrics-token-0123456789", Scope::Admin),
            Verdict::Forbidden
        );
        for scope in Scope::ALL {
            assert_eq!(check("admin-token-0123456789", scope), Verdict::Allowed);
        }
        assert_eq!(
            check("both-token-0123456789", Scope::Read),
            Verdict::Allowed
        );
        assert_eq!(
            check("both-token-0123456789", Scope::Write),
            Verdict::Allowed
        );
        assert_eq!(
            check("both-token-0123456789", Scope::Admin),
            Verdict::Forbidden
        );
        assert_eq!(
            check("nobody-token-0123456789", Scope::Read),
            Verdict::Unknown
        );
        assert_eq!(set.check(None, Scope::Read), Verdict::Missing);
        assert_eq!(
            set.check(Some(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"), Scope::Read),
            Verdict::Unknown
        );
    }

    #[test]
    fn bearer_header_forms() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer abc "), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER a+b/c="), Some(&b"a+b/c="[..]));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"Bearer \xff"), None);
        assert_eq!(bearer_token(b""), None);
    }

    #[test]
    fn bad_files_name_the_line_not_the_token() {
        let secret = "do-not-print-this-token";
        for (text, line) in [
            (format!("read {secret}\nreed {secret}\n"), 2),
            ("read\n".to_string(), 1),
            (format!("\n\nread {secret} extra\n"), 3),
            ("write tiny\n".to_string(), 1),
        ] {
            let err = TokenSet::parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("line {line}")), "{err}");
            assert!(!err.contains(secret), "{err}");
            assert!(!err.contains("tiny"), "{err}");
        }
        assert!(TokenSet::parse("# nothing\n\n").is_err());
        let debug = format!("{:?}", TokenSet::parse(FILE).unwrap());
        assert!(!debug.contains("token-0123"), "{debug}");
    }
}
