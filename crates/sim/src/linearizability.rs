//! The call into the linearizability checker of `zongheng-check`, and its
//! verdict in a form a run report can carry (and serialize).

use serde::{Deserialize, Serialize};
use zongheng_check::history::KvHistory;
use zongheng_check::{EtcdKvModel, Limits, Verdict};

/// What the linearizability checker said about a run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Linearizability {
    Linearizable,
    /// The checker's report of why no linearization exists.
    NotLinearizable(String),
    /// The checker gave up (too large a search, a history it cannot model).
    Unknown(String),
    /// The history was not given to the checker.
    NotChecked(String),
}

impl Linearizability {
    /// Whether this verdict fails a run.
    pub fn is_failure(&self) -> bool {
        matches!(self, Linearizability::NotLinearizable(_))
    }
}

impl std::fmt::Display for Linearizability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Linearizability::Linearizable => f.write_str("linearizable"),
            Linearizability::NotLinearizable(report) => write!(f, "NOT linearizable: {report}"),
            Linearizability::Unknown(reason) => write!(f, "unknown ({reason})"),
            Linearizability::NotChecked(reason) => write!(f, "not checked ({reason})"),
        }
    }
}

/// Judge `history` with the linearizability checker: etcd's KV model with
/// revisions. The simulated clients move between members (after a failure,
/// and now and then by choice), so a serializable read is not held to the
/// revisions its client saw on another member.
pub fn check(history: &KvHistory) -> Linearizability {
    let model = EtcdKvModel {
        serializable_floor_per_client: false,
    };
    match zongheng_check::check_kv_with(&model, history, &Limits::default()) {
        Verdict::Linearizable => Linearizability::Linearizable,
        Verdict::NotLinearizable(report) => Linearizability::NotLinearizable(report.to_string()),
        Verdict::Unknown { reason } => Linearizability::Unknown(reason),
    }
}
