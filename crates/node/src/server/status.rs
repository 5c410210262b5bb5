//! Errors as etcd clients expect them.
//!
//! etcd clients recognise server errors by gRPC code and exact message (the
//! Go client maps "etcdserver: mvcc: required revision has been compacted" to
//! `rpctypes.ErrCompacted`, and so on), so wherever etcd has an error for a
//! case the message here is etcd's, word for word; cases etcd does not have
//! (a key size limit, a membership change in progress) get a message in the
//! same style. Every status also carries a stable zongheng code in the
//! `x-zongheng-error` metadata key, for people and scripts.

use tonic::{Code, Status};

use crate::meta::mvcc::MvccError;
use crate::meta::MetaError;

/// The metadata key carrying zongheng's stable error code.
pub const ERROR_CODE_METADATA: &str = "x-zongheng-error";

/// A status with etcd's code and message and zongheng's stable code.
pub fn status(code: Code, message: impl Into<String>, zongheng_code: &'static str) -> Status {
    let mut status = Status::new(code, message);
    status.metadata_mut().insert(
        ERROR_CODE_METADATA,
        tonic::metadata::MetadataValue::from_static(zongheng_code),
    );
    status
}

pub fn request_too_large() -> Status {
    status(
        Code::InvalidArgument,
        "etcdserver: request is too large",
        "ZH_REQUEST_TOO_LARGE",
    )
}

pub fn too_many_ops() -> Status {
    status(
        Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
        "ZH_TXN_TOO_MANY_OPS",
    )
}

pub fn key_too_large(limit: usize) -> Status {
    status(
        Code::InvalidArgument,
        format!("etcdserver: key is too large (the limit is {limit} bytes; see --max-key-bytes)"),
        "ZH_KEY_TOO_LARGE",
    )
}

pub fn lease_ttl_too_large(max_seconds: i64) -> Status {
    status(
        Code::OutOfRange,
        format!("etcdserver: too large lease TTL (the limit is {max_seconds} s)"),
        "ZH_LEASE_TTL_TOO_LARGE",
    )
}

pub fn too_many_leases(max: usize) -> Status {
    status(
        Code::ResourceExhausted,
        format!("etcdserver: too many leases (the limit is {max}; revoke unused ones)"),
        "ZH_TOO_MANY_LEASES",
    )
}

pub fn unimplemented(what: &str) -> Status {
    status(
        Code::Unimplemented,
        format!("zongheng: {what} is not implemented yet"),
        "ZH_UNIMPLEMENTED",
    )
}

impl From<MvccError> for Status {
    fn from(error: MvccError) -> Self {
        match error {
            MvccError::Compacted => status(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision has been compacted",
                "ZH_MVCC_COMPACTED",
            ),
            MvccError::FutureRevision => status(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision",
                "ZH_MVCC_FUTURE_REVISION",
            ),
            MvccError::KeyNotFound => status(Code::InvalidArgument, "etcdserver: key not found", "ZH_KEY_NOT_FOUND"),
            MvccError::LeaseExists => status(
                Code::FailedPrecondition,
                "etcdserver: lease already exists",
                "ZH_LEASE_EXISTS",
            ),
            MvccError::LeaseNotFound => status(
                Code::NotFound,
                "etcdserver: requested lease not found",
                "ZH_LEASE_NOT_FOUND",
            ),
            MvccError::EmptyKey => status(Code::InvalidArgument, "etcdserver: key is not provided", "ZH_EMPTY_KEY"),
            MvccError::ValueProvided => status(
                Code::InvalidArgument,
                "etcdserver: value is provided",
                "ZH_VALUE_PROVIDED",
            ),
            MvccError::LeaseProvided => status(
                Code::InvalidArgument,
                "etcdserver: lease is provided",
                "ZH_LEASE_PROVIDED",
            ),
            MvccError::DuplicateKey => status(
                Code::InvalidArgument,
                "etcdserver: duplicate key given in txn request",
                "ZH_TXN_DUPLICATE_KEY",
            ),
            MvccError::InvalidCompare(detail) => status(
                Code::InvalidArgument,
                format!("etcdserver: invalid compare: {detail}"),
                "ZH_TXN_INVALID_COMPARE",
            ),
            MvccError::InvalidRequest(detail) => status(
                Code::InvalidArgument,
                format!("etcdserver: invalid request: {detail}"),
                "ZH_INVALID_REQUEST",
            ),
            MvccError::Storage(detail) => status(
                Code::Internal,
                format!("zongheng: cannot read an old value from the data directory: {detail}"),
                "ZH_STORAGE",
            ),
        }
    }
}

impl From<MetaError> for Status {
    fn from(error: MetaError) -> Self {
        match error {
            MetaError::NoLeader | MetaError::NotLeader { .. } => {
                status(Code::Unavailable, "etcdserver: no leader", "ZH_NO_LEADER")
            }
            MetaError::Timeout => status(Code::Unavailable, "etcdserver: request timed out", "ZH_TIMEOUT"),
            MetaError::Stopped => status(Code::Unavailable, "etcdserver: server stopped", "ZH_STOPPED"),
            MetaError::Refused(mvcc) => mvcc.into(),
            MetaError::Store(error) => {
                use crate::store::shard_map::ShardMapError;
                let code = match error {
                    ShardMapError::NotCreated | ShardMapError::StaleEpoch { .. } | ShardMapError::MoveInProgress(_) => {
                        Code::Unavailable
                    }
                    ShardMapError::UnknownNode(_) | ShardMapError::NoSuchPartition { .. } => Code::NotFound,
                    ShardMapError::AlreadyCreated => Code::AlreadyExists,
                    ShardMapError::Invalid(_) => Code::InvalidArgument,
                };
                status(code, format!("zongheng: {error}"), error.code())
            }
            MetaError::MemberNotFound => status(Code::NotFound, "etcdserver: member not found", "ZH_MEMBER_NOT_FOUND"),
            MetaError::PeerUrlExists => status(
                Code::FailedPrecondition,
                "etcdserver: Peer URLs already exists",
                "ZH_PEER_URL_EXISTS",
            ),
            MetaError::NotLearner => status(
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member",
                "ZH_MEMBER_NOT_LEARNER",
            ),
            MetaError::LearnerNotReady => status(
                Code::FailedPrecondition,
                "etcdserver: can only promote a learner member which is in sync with leader",
                "ZH_LEARNER_NOT_READY",
            ),
            MetaError::MembershipInProgress => status(
                Code::Unavailable,
                "etcdserver: a membership change is in progress; retry",
                "ZH_MEMBERSHIP_IN_PROGRESS",
            ),
            MetaError::Unhealthy => status(
                Code::Unavailable,
                "etcdserver: unhealthy cluster",
                "ZH_UNHEALTHY_CLUSTER",
            ),
            MetaError::InvalidArgument(detail) => status(
                Code::InvalidArgument,
                format!("etcdserver: {detail}"),
                "ZH_INVALID_ARGUMENT",
            ),
            MetaError::Internal(detail) => status(
                Code::Internal,
                format!("zongheng: internal error: {detail}"),
                "ZH_INTERNAL",
            ),
        }
    }
}
