//! A replica's part in its group, as its status reports it.

use serde::{Deserialize, Serialize};

/// A replica's part in its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// It leads the group.
    Leader,
    /// It votes and follows the leader.
    Follower,
    /// It is campaigning.
    Candidate,
    /// It follows without a vote (a replica catching up, or a move's destination).
    Learner,
    /// It has stopped.
    Shutdown,
}

impl Role {
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Learner => "learner",
            Role::Shutdown => "shutdown",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> Result<Role, String> {
        [Role::Leader, Role::Follower, Role::Candidate, Role::Learner, Role::Shutdown]
            .into_iter()
            .find(|r| r.as_str() == text)
            .ok_or_else(|| format!("{text:?} is not a replica role"))
    }
}
