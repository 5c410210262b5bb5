//! Wire-compatibility tests against etcd.
//!
//! etcd clients decode by field number and route by `/package.Service/Method`,
//! so a wrong number or name in our .proto files breaks them silently. These
//! tests pin both: hand-computed protobuf bytes for the fields clients rely on,
//! and the full list of gRPC method paths. Each expected byte string is written
//! as `tag, value` pairs; a tag byte is `field_number << 3 | wire_type`
//! (0 = varint, 2 = length-delimited).
//!
//! The last test covers the other consumer of these types: the Raft log, which
//! stores requests with bincode in serde mode.

use prost::Message;
use zongheng_proto::etcdserverpb::{
    compare, range_request, request_op, watch_create_request, Compare, LeaseGrantRequest, Member, PutRequest,
    RangeRequest, RequestOp, ResponseHeader, StatusResponse, TxnRequest, WatchCreateRequest, WatchResponse,
};
use zongheng_proto::mvccpb::{event, Event, KeyValue};
use zongheng_proto::peer::{RaftKind, RaftRequest, ReadIndexReply};

/// Encodes `message`, checks the bytes, and checks that the bytes decode back
/// to the same message (so field order in the encoder cannot hide a mismatch).
fn assert_wire<M: Message + Default + PartialEq + std::fmt::Debug>(message: &M, expected: &[u8]) {
    assert_eq!(message.encode_to_vec(), expected, "encoding of {message:?}");
    assert_eq!(&M::decode(expected).expect("decode"), message);
}

#[test]
fn response_header_fields() {
    let header = ResponseHeader {
        cluster_id: 1,
        member_id: 2,
        revision: 3,
        raft_term: 4,
    };
    assert_wire(&header, &[0x08, 1, 0x10, 2, 0x18, 3, 0x20, 4]);
}

#[test]
fn put_request_fields() {
    let put = PutRequest {
        key: b"foo".to_vec(),
        value: b"bar".to_vec(),
        lease: 7,
        prev_kv: true,
        ignore_value: true,
        ignore_lease: true,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 3, b'f', b'o', b'o', // 1 key
        0x12, 3, b'b', b'a', b'r', // 2 value
        0x18, 7,                   // 3 lease
        0x20, 1,                   // 4 prev_kv
        0x28, 1,                   // 5 ignore_value
        0x30, 1,                   // 6 ignore_lease
    ];
    assert_wire(&put, &expected);
}

#[test]
fn range_request_fields() {
    let range = RangeRequest {
        key: b"a".to_vec(),
        range_end: b"b".to_vec(),
        limit: 10,
        revision: 5,
        sort_order: range_request::SortOrder::Descend as i32,
        sort_target: range_request::SortTarget::Mod as i32,
        serializable: true,
        keys_only: true,
        count_only: true,
        min_mod_revision: 1,
        max_mod_revision: 2,
        min_create_revision: 3,
        max_create_revision: 4,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 1, b'a', // 1 key
        0x12, 1, b'b', // 2 range_end
        0x18, 10,      // 3 limit
        0x20, 5,       // 4 revision
        0x28, 2,       // 5 sort_order = DESCEND
        0x30, 3,       // 6 sort_target = MOD
        0x38, 1,       // 7 serializable
        0x40, 1,       // 8 keys_only
        0x48, 1,       // 9 count_only
        0x50, 1,       // 10 min_mod_revision
        0x58, 2,       // 11 max_mod_revision
        0x60, 3,       // 12 min_create_revision
        0x68, 4,       // 13 max_create_revision
    ];
    assert_wire(&range, &expected);
}

#[test]
fn compare_mod_revision_and_range_end() {
    let compare = Compare {
        result: compare::CompareResult::NotEqual as i32,
        target: compare::CompareTarget::Mod as i32,
        key: b"k".to_vec(),
        range_end: b"l".to_vec(),
        target_union: Some(compare::TargetUnion::ModRevision(9)),
    };
    #[rustfmt::skip]
    let expected = [
        0x08, 3,             // 1 result = NOT_EQUAL
        0x10, 2,             // 2 target = MOD
        0x1a, 1, b'k',       // 3 key
        0x30, 9,             // 6 mod_revision (target_union)
        0x82, 0x04, 1, b'l', // 64 range_end: tag 64 << 3 | 2 = 514, a two-byte varint
    ];
    assert_wire(&compare, &expected);
}

#[test]
fn member_is_learner() {
    let member = Member {
        id: 0x10,
        name: "n".into(),
        peer_ur_ls: vec!["p".into()],
        client_ur_ls: vec!["c".into()],
        is_learner: true,
    };
    #[rustfmt::skip]
    let expected = [
        0x08, 0x10,       // 1 ID
        0x12, 1, b'n',    // 2 name
        0x1a, 1, b'p',    // 3 peerURLs
        0x22, 1, b'c',    // 4 clientURLs
        0x28, 1,          // 5 isLearner
    ];
    assert_wire(&member, &expected);
}

#[test]
fn watch_create_and_response_fields() {
    let create = WatchCreateRequest {
        key: b"a".to_vec(),
        range_end: Vec::new(),
        start_revision: 5,
        progress_notify: true,
        filters: vec![watch_create_request::FilterType::Nodelete as i32],
        prev_kv: true,
        watch_id: 7,
        fragment: true,
    };
    #[rustfmt::skip]
    let expected = [
        0x0a, 1, b'a', // 1 key
        0x18, 5,       // 3 start_revision
        0x20, 1,       // 4 progress_notify
        0x2a, 1, 1,    // 5 filters, packed: [NODELETE]
        0x30, 1,       // 6 prev_kv
        0x38, 7,       // 7 watch_id
        0x40, 1,       // 8 fragment
    ];
    assert_wire(&create, &expected);

    let response = WatchResponse {
        watch_id: 1,
        fragment: true,
        events: vec![Event {
            r#type: event::EventType::Delete as i32,
            kv: Some(KeyValue {
                key: b"a".to_vec(),
                ..Default::default()
            }),
            prev_kv: None,
        }],
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected = [
        0x10, 1,          // 2 watch_id
        0x38, 1,          // 7 fragment
        0x5a, 7,          // 11 events
        0x08, 1,          //   1 type = DELETE
        0x12, 3,          //   2 kv
        0x0a, 1, b'a',    //     1 key
    ];
    assert_wire(&response, &expected);
}

#[test]
fn status_response_fields() {
    let status = StatusResponse {
        version: "3.5".into(),
        db_size: 100,
        leader: 2,
        raft_index: 11,
        raft_term: 3,
        raft_applied_index: 10,
        errors: vec!["e".into()],
        db_size_in_use: 50,
        is_learner: true,
        ..Default::default()
    };
    #[rustfmt::skip]
    let expected = [
        0x12, 3, b'3', b'.', b'5', // 2 version
        0x18, 100,                 // 3 dbSize
        0x20, 2,                   // 4 leader
        0x28, 11,                  // 5 raftIndex
        0x30, 3,                   // 6 raftTerm
        0x38, 10,                  // 7 raftAppliedIndex
        0x42, 1, b'e',             // 8 errors
        0x48, 50,                  // 9 dbSizeInUse
        0x50, 1,                   // 10 isLearner
    ];
    assert_wire(&status, &expected);
}

#[test]
fn lease_grant_request_fields() {
    let grant = LeaseGrantRequest { ttl: 60, id: 42 };
    assert_wire(&grant, &[0x08, 60, 0x10, 42]);
}

#[test]
fn peer_messages_fields() {
    let raft = RaftRequest {
        group_id: 3,
        kind: RaftKind::Vote as i32,
        payload: vec![0xff],
        to_member_id: 5,
    };
    assert_wire(&raft, &[0x08, 3, 0x10, 2, 0x1a, 1, 0xff, 0x20, 5]);

    let read_index = ReadIndexReply {
        read_index: 9,
        leader_id: 1,
        term: 2,
    };
    assert_wire(&read_index, &[0x08, 9, 0x10, 1, 0x18, 2]);
}

/// Every gRPC method path we serve, as etcd clients call them. A renamed
/// service, method or package shows up here as a diff.
#[test]
fn grpc_method_paths_match_etcd() {
    let descriptor_set = prost_types::FileDescriptorSet::decode(zongheng_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut paths = Vec::new();
    for file in &descriptor_set.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
            }
        }
    }
    paths.sort();

    let mut expected: Vec<String> = [
        (
            "etcdserverpb.KV",
            &["Range", "Put", "DeleteRange", "Txn", "Compact"][..],
        ),
        ("etcdserverpb.Watch", &["Watch"]),
        (
            "etcdserverpb.Lease",
            &[
                "LeaseGrant",
                "LeaseRevoke",
                "LeaseKeepAlive",
                "LeaseTimeToLive",
                "LeaseLeases",
            ],
        ),
        (
            "etcdserverpb.Cluster",
            &[
                "MemberAdd",
                "MemberRemove",
                "MemberUpdate",
                "MemberList",
                "MemberPromote",
            ],
        ),
        (
            "etcdserverpb.Maintenance",
            &[
                "Alarm",
                "Status",
                "Defragment",
                "Hash",
                "HashKV",
                "Snapshot",
                "MoveLeader",
                "Downgrade",
            ],
        ),
        (
            "etcdserverpb.Auth",
            &[
                "AuthEnable",
                "AuthDisable",
                "AuthStatus",
                "Authenticate",
                "UserAdd",
                "UserGet",
                "UserList",
                "UserDelete",
                "UserChangePassword",
                "UserGrantRole",
                "UserRevokeRole",
                "RoleAdd",
                "RoleGet",
                "RoleList",
                "RoleDelete",
                "RoleGrantPermission",
                "RoleRevokePermission",
            ],
        ),
        ("v3lockpb.Lock", &["Lock", "Unlock"]),
        (
            "v3electionpb.Election",
            &["Campaign", "Proclaim", "Leader", "Observe", "Resign"],
        ),
        (
            "zongheng.peer.v1.Peer",
            &[
                "Raft",
                "RaftBatch",
                "RaftStream",
                "Forward",
                "ReadIndex",
                "Members",
                "ReplicaStatus",
            ],
        ),
        (
            "zongheng.store.v1.Store",
            &["Timestamp", "Partition", "ShardMap", "Drain", "NodeStats"],
        ),
    ]
    .iter()
    .flat_map(|(service, methods)| methods.iter().map(move |m| format!("/{service}/{m}")))
    .collect();
    expected.sort();

    assert_eq!(paths, expected);
}

/// Client requests go into the Raft log with bincode in serde mode, which is
/// not self-describing: the derives must roundtrip nested oneofs exactly.
#[test]
fn txn_request_bincode_roundtrip() {
    let inner = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Equal as i32,
            target: compare::CompareTarget::Value as i32,
            key: b"inner".to_vec(),
            range_end: Vec::new(),
            target_union: Some(compare::TargetUnion::Value(b"v".to_vec())),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: b"k".to_vec(),
                value: b"v2".to_vec(),
                lease: 5,
                prev_kv: true,
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp { request: None }],
    };
    let outer = TxnRequest {
        compare: vec![Compare {
            result: compare::CompareResult::Greater as i32,
            target: compare::CompareTarget::Mod as i32,
            key: b"outer".to_vec(),
            range_end: b"outes".to_vec(),
            target_union: Some(compare::TargetUnion::ModRevision(12)),
        }],
        success: vec![
            RequestOp {
                request: Some(request_op::Request::RequestTxn(inner)),
            },
            RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    sort_order: range_request::SortOrder::Ascend as i32,
                    ..Default::default()
                })),
            },
        ],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                zongheng_proto::etcdserverpb::DeleteRangeRequest {
                    key: b"d".to_vec(),
                    range_end: Vec::new(),
                    prev_kv: true,
                },
            )),
        }],
    };

    let config = bincode::config::standard();
    let bytes = bincode::serde::encode_to_vec(&outer, config).unwrap();
    let (decoded, read): (TxnRequest, usize) = bincode::serde::decode_from_slice(&bytes, config).unwrap();
    assert_eq!(read, bytes.len());
    assert_eq!(decoded, outer);
}
