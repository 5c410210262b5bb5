//! The node's gRPC services: the etcd v3 API for clients ([`etcd`]) and the
//! peer service between nodes ([`peer`]), on separate listeners.

pub mod election;
pub mod etcd;
pub mod lease;
pub mod lock;
pub mod peer;
pub mod status;
pub mod store;
pub mod watch;
