//! The node's services: the etcd v3 API and the data store's API for
//! clients ([`etcd`], [`store`]), the peer service between nodes ([`peer`]),
//! and the data store's HTTP/JSON API ([`http`]), on separate listeners.

pub mod election;
pub mod etcd;
pub mod http;
pub mod lease;
pub mod lock;
pub mod peer;
pub mod status;
pub mod store;
pub mod watch;
