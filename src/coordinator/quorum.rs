//! Quorum sizes (F12): per request `?w=` / `?r=` as a count or `all`; the
//! default is a majority of N.

use std::str::FromStr;

use crate::error::{Error, Result};

/// How many replicas must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quorum {
    /// A majority of N (N / 2 + 1).
    #[default]
    Majority,
    /// Every replica.
    All,
    /// Exactly this many, 1..=N.
    Count(usize),
}

impl Quorum {
    /// The number of replicas needed when the key has `n` replicas.
    pub fn count(self, n: usize) -> Result<usize> {
        match self {
            Quorum::Majority => Ok(n / 2 + 1),
            Quorum::All => Ok(n),
            Quorum::Count(k) if (1..=n).contains(&k) => Ok(k),
            Quorum::Count(k) => Err(Error::invalid(format!(
                "quorum {k} is outside 1..={n} (the replication factor)"
            ))),
        }
    }
}

impl FromStr for Quorum {
    type Err = Error;

    fn from_str(s: &str) -> Result<Quorum> {
        match s {
            "all" => Ok(Quorum::All),
            "majority" | "quorum" => Ok(Quorum::Majority),
            _ => s
                .parse::<usize>()
                .map(Quorum::Count)
                .map_err(|_| Error::invalid(format!("quorum {s:?} is not a number or \"all\""))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts() {
        assert_eq!(Quorum::Majority.count(3).unwrap(), 2);
        assert_eq!(Quorum::Majority.count(5).unwrap(), 3);
        assert_eq!(Quorum::Majority.count(1).unwrap(), 1);
        assert_eq!(Quorum::All.count(3).unwrap(), 3);
        assert_eq!(Quorum::Count(1).count(3).unwrap(), 1);
        assert!(Quorum::Count(0).count(3).is_err());
        assert!(Quorum::Count(4).count(3).is_err());
        assert_eq!("all".parse::<Quorum>().unwrap(), Quorum::All);
        assert_eq!("2".parse::<Quorum>().unwrap(), Quorum::Count(2));
        assert!("two".parse::<Quorum>().is_err());
    }
}
