//! Networking: the injected transport every socket goes through.

pub mod transport;
