//! Network roles and the managed-network policy language
//! (`spec/registry.md` §3.15.2–§3.15.3).
//!
//! A policy is a JSON object, version 1:
//!
//! ```json
//! {"version":1,"max_members":50,"allowed_ports":[1000,7],
//!  "description":"build farm","member_invites":false}
//! ```
//!
//! * `version` (required) — must be `1`.
//! * `max_members` — 0 (default) = no limit, else 1..=65535; joins and
//!   accepted invitations beyond it are refused.
//! * `allowed_ports` — at most [`MAX_POLICY_PORTS`] distinct ports; empty
//!   (default) = every port. Daemons refuse to broadcast to other ports.
//! * `description` — at most [`MAX_DESCRIPTION_LEN`] bytes.
//! * `member_invites` — `true` lets plain members invite; by default only
//!   the owner and admins may.
//!
//! Unknown keys, wrong types and out-of-range values are refused with a
//! [`PolicyError`] naming the key, so a typo never silently does nothing.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most distinct ports an `allowed_ports` list may name.
pub const MAX_POLICY_PORTS: usize = 64;
/// Longest `description`, in bytes.
pub const MAX_DESCRIPTION_LEN: usize = 256;
/// Most tags one member may carry (same bound as node tags).
pub const MAX_MEMBER_TAGS: usize = crate::registry::limits::MAX_TAGS;

/// A member's role in a network.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Plain member.
    #[default]
    Member,
    /// May invite, kick plain members and set member tags.
    Admin,
    /// The one owner: everything, including delete, rename, promote,
    /// demote, transfer and policy.
    Owner,
}

impl Role {
    /// Wire name (`owner`, `admin`, `member`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

/// A validated network policy (version 1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkPolicy {
    /// Always 1.
    pub version: u32,
    /// 0 = unlimited.
    #[serde(default)]
    pub max_members: u32,
    /// Empty = every port; sorted, distinct.
    #[serde(default)]
    pub allowed_ports: Vec<u16>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Plain members may invite.
    #[serde(default)]
    pub member_invites: bool,
}

impl NetworkPolicy {
    /// `true` if a broadcast or connection to `port` is allowed.
    pub fn port_allowed(&self, port: u16) -> bool {
        self.allowed_ports.is_empty() || self.allowed_ports.binary_search(&port).is_ok()
    }

    /// `true` if a network with `members` members may take one more.
    pub fn has_room(&self, members: usize) -> bool {
        self.max_members == 0 || members < self.max_members as usize
    }

    /// The policy as a JSON value (canonical form).
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// Why a policy document was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not a JSON object.
    #[error("invalid policy: must be a JSON object")]
    NotAnObject,
    /// `version` missing or not 1.
    #[error("invalid policy: version must be 1")]
    Version,
    /// A key this version does not know.
    #[error("invalid policy: unknown key \"{0}\"")]
    UnknownKey(String),
    /// A known key with a bad value.
    #[error("invalid policy: {0}")]
    BadValue(&'static str),
}

/// Parses and validates a policy given as a JSON value.
pub fn parse_policy(v: &Value) -> Result<NetworkPolicy, PolicyError> {
    let Value::Object(map) = v else {
        return Err(PolicyError::NotAnObject);
    };
    let mut p = NetworkPolicy::default();
    match map.get("version").and_then(Value::as_u64) {
        Some(1) => p.version = 1,
        _ => return Err(PolicyError::Version),
    }
    for (k, val) in map {
        match k.as_str() {
            "version" => {}
            "max_members" => {
                p.max_members =
                    val.as_u64()
                        .filter(|n| *n <= 65_535)
                        .ok_or(PolicyError::BadValue(
                            "max_members must be an integer 0..=65535",
                        ))? as u32;
            }
            "allowed_ports" => {
                let arr = val.as_array().ok_or(PolicyError::BadValue(
                    "allowed_ports must be an array of ports",
                ))?;
                let mut ports = Vec::with_capacity(arr.len().min(MAX_POLICY_PORTS));
                for x in arr {
                    let port = x.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or(
                        PolicyError::BadValue("allowed_ports entries must be integers 0..=65535"),
                    )?;
                    ports.push(port);
                }
                ports.sort_unstable();
                ports.dedup();
                if ports.len() > MAX_POLICY_PORTS {
                    return Err(PolicyError::BadValue(
                        "allowed_ports names more than 64 ports",
                    ));
                }
                p.allowed_ports = ports;
            }
            "description" => {
                let d = val
                    .as_str()
                    .ok_or(PolicyError::BadValue("description must be a string"))?;
                if d.len() > MAX_DESCRIPTION_LEN {
                    return Err(PolicyError::BadValue(
                        "description too long (max 256 bytes)",
                    ));
                }
                p.description = d.to_owned();
            }
            "member_invites" => {
                p.member_invites = val
                    .as_bool()
                    .ok_or(PolicyError::BadValue("member_invites must be a boolean"))?;
            }
            other => return Err(PolicyError::UnknownKey(other.to_owned())),
        }
    }
    Ok(p)
}

/// Parses and validates a policy given as JSON text.
pub fn parse_policy_text(text: &str) -> Result<NetworkPolicy, PolicyError> {
    let v: Value = serde_json::from_str(text).map_err(|_| PolicyError::NotAnObject)?;
    parse_policy(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn policy_table() {
        let ok = |v: Value| parse_policy(&v).unwrap();
        let err = |v: Value| parse_policy(&v).unwrap_err().to_string();
        assert_eq!(
            ok(json!({"version":1})),
            NetworkPolicy {
                version: 1,
                ..Default::default()
            }
        );
        let p = ok(
            json!({"version":1,"max_members":3,"allowed_ports":[7,1000,7],
            "description":"d","member_invites":true}),
        );
        assert_eq!(p.allowed_ports, vec![7, 1000]);
        assert!(p.port_allowed(7) && !p.port_allowed(8));
        assert!(p.has_room(2) && !p.has_room(3));
        assert!(p.member_invites);
        assert!(ok(json!({"version":1})).port_allowed(9));
        assert!(ok(json!({"version":1})).has_room(1_000_000));
        let cases = [
            (json!([]), "JSON object"),
            (json!({}), "version must be 1"),
            (json!({"version":2}), "version must be 1"),
            (
                json!({"version":1,"max_member":3}),
                "unknown key \"max_member\"",
            ),
            (json!({"version":1,"max_members":-1}), "max_members"),
            (json!({"version":1,"max_members":70000}), "max_members"),
            (
                json!({"version":1,"allowed_ports":[70000]}),
                "allowed_ports",
            ),
            (json!({"version":1,"allowed_ports":"7"}), "allowed_ports"),
            (json!({"version":1,"description":5}), "description"),
            (
                json!({"version":1,"description":"x".repeat(257)}),
                "too long",
            ),
            (
                json!({"version":1,"member_invites":"yes"}),
                "member_invites",
            ),
            (
                json!({"version":1,"allowed_ports":(0..65).collect::<Vec<u32>>()}),
                "more than 64",
            ),
        ];
        for (v, want) in cases {
            let e = err(v.clone());
            assert!(e.contains(want), "{v}: {e}");
            assert!(e.starts_with("invalid policy"), "{e}");
        }
        assert!(parse_policy_text("{not json").is_err());
    }

    #[test]
    fn canonical_form_round_trips() {
        let p = parse_policy_text(r#"{"version":1,"allowed_ports":[9,8]}"#).unwrap();
        assert_eq!(parse_policy(&p.to_value()).unwrap(), p);
    }
}
