//! Networking: the injected transport every socket goes through.

pub mod h2_authority;
pub mod serve;
pub mod transport;
