//! The `meta` state machine: the MVCC key-value store plus the cluster's own
//! records (member attributes), as one deterministic [`Application`].

use std::collections::BTreeMap;

use openraft::LogId;
use serde::{Deserialize, Serialize};

use super::command::{MetaCommand, MetaResponse};
use super::mvcc::Mvcc;
use super::MetaRaftConfig;
use crate::raft::codec::{self, CodecError};
use crate::raft::Application;

/// What a member published about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAttributes {
    pub name: String,
    pub client_urls: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaApp {
    pub kv: Mvcc,
    pub members: BTreeMap<u64, MemberAttributes>,
}

impl Application for MetaApp {
    type Config = MetaRaftConfig;

    fn apply(&mut self, _log_id: &LogId<u64>, command: &MetaCommand) -> MetaResponse {
        let result = match command {
            MetaCommand::Put(request) => self.kv.put(request).map(MetaResponse::Put),
            MetaCommand::DeleteRange(request) => self.kv.delete_range(request).map(MetaResponse::DeleteRange),
            MetaCommand::Txn(request) => self.kv.txn(request).map(MetaResponse::Txn),
            MetaCommand::Compact(request) => self.kv.compact(request).map(MetaResponse::Compact),
            MetaCommand::PublishMember { id, name, client_urls } => {
                self.members.insert(
                    *id,
                    MemberAttributes {
                        name: name.clone(),
                        client_urls: client_urls.clone(),
                    },
                );
                Ok(MetaResponse::Done)
            }
            MetaCommand::ForgetMember { id } => {
                self.members.remove(id);
                Ok(MetaResponse::Done)
            }
        };
        result.unwrap_or_else(MetaResponse::Refused)
    }

    fn empty_response() -> MetaResponse {
        MetaResponse::Done
    }

    fn to_snapshot(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }

    fn from_snapshot(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode(bytes)
    }
}
