//! How Raft entries, votes, snapshots and peer messages become bytes.
//!
//! bincode 2 in serde mode: compact, fast, and every type openraft exposes is
//! serde-enabled. The format is internal (peer to peer, and the node's own
//! disk); it is not an API. Decoding errors surface as storage or network
//! errors, never panics.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// An encoding or decoding failure, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("codec: {0}")]
pub struct CodecError(String);

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|error| CodecError(error.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|error| CodecError(error.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}
