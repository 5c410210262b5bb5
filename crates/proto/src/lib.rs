//! Protobuf and gRPC definitions for zongheng: the etcd v3 client API and the
//! node-to-node peer protocol.
//!
//! # What is here
//!
//! The `.proto` files under `proto/` are our own, written to be wire-identical
//! to etcd v3.4/v3.5: same packages, services, rpc names, message names, field
//! names, field numbers and types (plus the fields etcd v3.6 added, which older
//! clients ignore). That is the whole compatibility story: gRPC routes by
//! `/package.Service/Method` and protobuf decodes by field number, so etcdctl
//! and every etcd SDK work against zongheng unchanged. etcd's gogoproto and
//! grpc-gateway annotations are left out because they never reach the wire.
//!
//! Each proto package becomes a top-level module named exactly like the package,
//! so the generated cross-package paths (`super::mvccpb::KeyValue`,
//! `super::etcdserverpb::ResponseHeader`) resolve:
//!
//! - [`mvccpb`]: `KeyValue`, `Event`.
//! - [`authpb`]: users, roles, permissions.
//! - [`etcdserverpb`]: services KV, Watch, Lease, Cluster, Maintenance, Auth.
//! - [`v3lockpb`], [`v3electionpb`]: etcd's lock and election services.
//! - [`peer`]: `zongheng.peer.v1`, our own node-to-node protocol.
//! - [`store`]: `zongheng.store.v1`, the data store's client API.
//!
//! Messages of `mvccpb`, `authpb` and `etcdserverpb` also derive serde's
//! `Serialize`/`Deserialize`, because the node stores client requests in the
//! Raft log with bincode (serde mode, not self-describing).
//!
//! # Why protox
//!
//! `build.rs` parses the files with `protox`, a protobuf compiler in pure Rust,
//! and hands the descriptor set to `tonic-prost-build`. Building zongheng thus
//! needs no system `protoc`, and every machine generates the same code from
//! the same compiler version pinned in `Cargo.lock`.
//!
//! # The peer protocol
//!
//! A node hosts many Raft groups. Every peer request carries its Raft group id,
//! so all groups between two nodes share one gRPC connection rather than one
//! connection per group. Raft payloads are opaque bytes (serialized openraft
//! types), which keeps this crate independent of openraft.
//!
//! # Not yet
//!
//! etcd's v2 API, the grpc-gateway JSON endpoints and etcd's internal Raft
//! messages (`raft_internal.proto`, `membershippb`) are not provided: zongheng
//! has its own replication and does not need them.

/// etcd's MVCC key-value types (proto package `mvccpb`).
#[allow(clippy::all, missing_docs)]
pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

/// etcd's authentication records (proto package `authpb`).
#[allow(clippy::all, missing_docs)]
pub mod authpb {
    tonic::include_proto!("authpb");
}

/// The etcd v3 client API (proto package `etcdserverpb`).
#[allow(clippy::all, missing_docs)]
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// etcd's lock service (proto package `v3lockpb`).
#[allow(clippy::all, missing_docs)]
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}

/// etcd's leader election service (proto package `v3electionpb`).
#[allow(clippy::all, missing_docs)]
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}

/// zongheng's node-to-node protocol (proto package `zongheng.peer.v1`).
#[allow(clippy::all, missing_docs)]
pub mod peer {
    tonic::include_proto!("zongheng.peer.v1");
}

/// zongheng's data store client API (proto package `zongheng.store.v1`).
#[allow(clippy::all, missing_docs)]
pub mod store {
    tonic::include_proto!("zongheng.store.v1");
}

/// The encoded `FileDescriptorSet` of every file above (with imports and
/// source info), for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/zongheng_descriptor_set.bin"));
