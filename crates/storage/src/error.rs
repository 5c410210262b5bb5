//! The one error type of the storage crate. Each variant has a stable code
//! ([`StorageError::code`]) for logs, metrics and API errors, and a message that tells
//! the operator what to do, because a storage error usually ends up in front of one.
//!
//! How a caller reacts: [`StorageError::Limit`] is invalid input (reject the request,
//! the engine is unchanged and healthy); every other variant means the node's disk or
//! data directory is unusable as it is, and the node should stop serving the affected
//! group rather than guess (STYLE practice 4).

use std::io;
use std::path::PathBuf;

/// An error from a storage engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The operating system failed a read, write, fsync or open.
    #[error(
        "storage I/O error while {context}: {source}; check that the data directory exists, \
         is writable and that its disk is neither full nor failing, then restart the node"
    )]
    Io {
        /// What the engine was doing, as a gerund phrase ("committing a write batch").
        context: &'static str,
        /// The operating system's error.
        source: io::Error,
    },

    /// The data on disk fails its checksums or structure checks.
    #[error(
        "storage data is corrupt: {detail}; stop this node, move its data directory aside \
         and let it rejoin the cluster to copy the data from the other replicas"
    )]
    Corrupt {
        /// What was found to be wrong.
        detail: String,
    },

    /// The file is a database of another format or layout than this version writes.
    #[error(
        "storage file is not in a format this version of zongheng can use: {detail}; check \
         that the node points at its own data directory and runs the zongheng version that \
         wrote it"
    )]
    Incompatible {
        /// What did not match.
        detail: String,
    },

    /// Another process (or another engine in this process) has the file open.
    #[error(
        "storage file {path} is already open in another process; stop the other zongheng \
         process using this data directory, or give this node a data directory of its own"
    )]
    Locked {
        /// The database file.
        path: PathBuf,
    },

    /// A key, value, batch or scan exceeds one of the named limits in this crate.
    /// Nothing was changed.
    #[error(
        "{what} is {size}, above the storage limit {limit_name} = {max}; split the data into \
         smaller pieces"
    )]
    Limit {
        /// What was too large ("key size in bytes").
        what: &'static str,
        /// The size that was asked for.
        size: usize,
        /// The name of the limit's constant, such as `KEY_SIZE_BYTES_MAX`.
        limit_name: &'static str,
        /// The limit's value.
        max: usize,
    },

    /// A stored key does not decode as a [`Key`](crate::Key).
    #[error(
        "stored key cannot be decoded: {detail}; the data directory holds keys this version \
         does not understand (written by a newer zongheng, or damaged): run the version that \
         wrote it, or move the directory aside and let the node rejoin"
    )]
    BadKey {
        /// Why decoding failed.
        detail: String,
    },

    /// The engine reached a state that is a bug in zongheng or in the engine.
    #[error(
        "internal storage error: {detail}; this is a bug: restart the node and report it \
         together with the node's log"
    )]
    Internal {
        /// The engine's own description.
        detail: String,
    },
}

impl StorageError {
    /// A stable, machine-readable code for this error, such as `"STORAGE_IO"`. Codes are
    /// never renamed or reused; new variants get new codes.
    pub fn code(&self) -> &'static str {
        match self {
            StorageError::Io { .. } => "STORAGE_IO",
            StorageError::Corrupt { .. } => "STORAGE_CORRUPT",
            StorageError::Incompatible { .. } => "STORAGE_INCOMPATIBLE",
            StorageError::Locked { .. } => "STORAGE_LOCKED",
            StorageError::Limit { .. } => "STORAGE_LIMIT",
            StorageError::BadKey { .. } => "STORAGE_BAD_KEY",
            StorageError::Internal { .. } => "STORAGE_INTERNAL",
        }
    }

    /// True when the request itself was at fault (a limit was exceeded): the caller
    /// should reject it, and the engine is unchanged and healthy.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, StorageError::Limit { .. })
    }

    /// Checks `size <= max`, naming the limit in the error.
    pub(crate) fn check_limit(
        what: &'static str,
        size: usize,
        limit_name: &'static str,
        max: usize,
    ) -> Result<(), StorageError> {
        if size > max {
            return Err(StorageError::Limit {
                what,
                size,
                limit_name,
                max,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_messages_say_what_to_do() {
        let cases = [
            (
                StorageError::Io {
                    context: "committing a write batch",
                    source: io::Error::other("disk gone"),
                },
                "STORAGE_IO",
                "restart the node",
            ),
            (
                StorageError::Corrupt {
                    detail: "bad checksum".into(),
                },
                "STORAGE_CORRUPT",
                "rejoin",
            ),
            (
                StorageError::Incompatible {
                    detail: "old format".into(),
                },
                "STORAGE_INCOMPATIBLE",
                "data directory",
            ),
            (
                StorageError::Locked {
                    path: PathBuf::from("/data/zongheng.redb"),
                },
                "STORAGE_LOCKED",
                "/data/zongheng.redb",
            ),
            (
                StorageError::Limit {
                    what: "key size in bytes",
                    size: 20_000,
                    limit_name: "KEY_SIZE_BYTES_MAX",
                    max: 16_384,
                },
                "STORAGE_LIMIT",
                "KEY_SIZE_BYTES_MAX = 16384",
            ),
            (
                StorageError::BadKey {
                    detail: "unknown tag 0x99".into(),
                },
                "STORAGE_BAD_KEY",
                "unknown tag 0x99",
            ),
            (
                StorageError::Internal {
                    detail: "poisoned".into(),
                },
                "STORAGE_INTERNAL",
                "report it",
            ),
        ];
        for (error, code, hint) in cases {
            assert_eq!(error.code(), code);
            let message = error.to_string();
            assert!(message.contains(hint), "{code}: {message}");
            assert_eq!(error.is_invalid_input(), code == "STORAGE_LIMIT");
        }
    }
}
