//! Sequential models of zongheng's stores, for the linearizability search.
//!
//! - [`RegisterModel`]: one register per key, revisions ignored; split per key.
//! - [`EtcdKvModel`]: etcd's KV with revisions; checked fast by the
//!   revision-ordered search (`etcd_revisions`).

pub mod etcd_kv;
pub(crate) mod etcd_revisions;
pub mod register;

pub use etcd_kv::{EtcdKvModel, EtcdState};
pub use register::{RegisterModel, RegisterState};
