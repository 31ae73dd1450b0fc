//! Validated identifiers for jobs, workers, templates and pools.
//!
//! Every id is a short ASCII string that is also a valid Kubernetes label
//! value, so it can be put on backend objects (`hodei.dev/worker-id=...`)
//! without any escaping: 1 to 63 characters of `A-Z a-z 0-9 - _ .`, starting
//! and ending with a letter or a digit.
//!
//! The domain generates no ids: it has no source of randomness. Callers
//! create fresh ones (a UUID, a counter, a name) and hand them to
//! [`JobId::new`] or [`WorkerId::new`], which validate them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest accepted id, the Kubernetes limit for a label value.
pub const MAX_ID_LEN: usize = 63;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The string was empty.
    #[error("{kind} must not be empty")]
    Empty {
        /// Which kind of id was expected (`job id`, `template id`, ...).
        kind: &'static str,
    },
    /// The string was longer than [`MAX_ID_LEN`].
    #[error("{kind} {value:?} is {len} characters long, expected at most {MAX_ID_LEN}")]
    TooLong {
        /// Which kind of id was expected.
        kind: &'static str,
        /// The rejected string.
        value: String,
        /// Its length in characters.
        len: usize,
    },
    /// The string contained a character outside `A-Z a-z 0-9 - _ .`.
    #[error(
        "{kind} {value:?} contains {ch:?} at column {column}, expected only letters, digits, '-', '_' or '.'"
    )]
    InvalidChar {
        /// Which kind of id was expected.
        kind: &'static str,
        /// The rejected string.
        value: String,
        /// The offending character.
        ch: char,
        /// Its 1-based character column.
        column: usize,
    },
    /// The string started or ended with `-`, `_` or `.`.
    #[error("{kind} {value:?} must start and end with a letter or a digit")]
    BadEdge {
        /// Which kind of id was expected.
        kind: &'static str,
        /// The rejected string.
        value: String,
    },
}

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    let len = value.chars().count();
    if len > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            value: value.to_owned(),
            len,
        });
    }
    for (i, ch) in value.chars().enumerate() {
        if !(ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.')) {
            return Err(IdError::InvalidChar {
                kind,
                value: value.to_owned(),
                ch,
                column: i + 1,
            });
        }
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !edge_ok(value.chars().next()) || !edge_ok(value.chars().last()) {
        return Err(IdError::BadEdge {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// [`IdError`] when `value` is empty, longer than 63 characters,
            /// contains anything but `A-Z a-z 0-9 - _ .`, or does not start
            /// and end with a letter or a digit.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(value: &str) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// Identifies one submitted job (one pipeline run).
    ///
    /// The caller generates it, for example from a UUID:
    /// `JobId::new(uuid.to_string())`.
    JobId,
    "job id"
);
id_type!(
    /// Identifies one worker, ephemeral or static.
    ///
    /// The caller generates it; the domain has no source of randomness.
    WorkerId,
    "worker id"
);
id_type!(
    /// Identifies a [`WorkerTemplate`](crate::WorkerTemplate), such as
    /// `java-maven`.
    TemplateId,
    "template id"
);
id_type!(
    /// Identifies a pool of workers.
    PoolId,
    "pool id"
);

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<(), &str>) {
        let got = TemplateId::new(input)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(got, expected.map_err(str::to_owned), "input {input:?}");
    }

    #[test]
    fn validation() {
        check("java-maven", Ok(()));
        check("a", Ok(()));
        check("0", Ok(()));
        check("go_1.21-build", Ok(()));
        check("123e4567-e89b-12d3-a456-426614174000", Ok(()));
        check(&"x".repeat(63), Ok(()));
        check("", Err("template id must not be empty"));
        check(
            &"x".repeat(64),
            Err(&format!(
                "template id {:?} is 64 characters long, expected at most 63",
                "x".repeat(64)
            )),
        );
        check(
            "java maven",
            Err(
                "template id \"java maven\" contains ' ' at column 5, expected only letters, digits, '-', '_' or '.'",
            ),
        );
        check(
            "jävä",
            Err(
                "template id \"jävä\" contains 'ä' at column 2, expected only letters, digits, '-', '_' or '.'",
            ),
        );
        check(
            "-java",
            Err("template id \"-java\" must start and end with a letter or a digit"),
        );
        check(
            "java.",
            Err("template id \"java.\" must start and end with a letter or a digit"),
        );
    }

    #[test]
    fn kinds_are_named() {
        assert_eq!(
            JobId::new("").unwrap_err().to_string(),
            "job id must not be empty"
        );
        assert_eq!(
            WorkerId::new("").unwrap_err().to_string(),
            "worker id must not be empty"
        );
        assert_eq!(
            PoolId::new("").unwrap_err().to_string(),
            "pool id must not be empty"
        );
    }

    #[test]
    fn conversions() {
        let id: WorkerId = "hodei-worker-1".parse().unwrap();
        assert_eq!(id.as_str(), "hodei-worker-1");
        assert_eq!(id.to_string(), "hodei-worker-1");
        assert_eq!(String::from(id.clone()), "hodei-worker-1");
        assert_eq!(WorkerId::try_from("hodei-worker-1").unwrap(), id);
    }
}
