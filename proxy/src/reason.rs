//! The proxy's decision vocabulary: the shared [`Decision`] and [`Reason`]
//! (defined once, in `enforcer_ebpf`, beside the kernel's reasons) and
//! [`Verdict`], the two together as one value.
//!
//! Reason names are machine-readable (`snake_case`) and stable: they appear in
//! audit records, logs, metrics and the `403` body, and operators script
//! against them. Add new variants; never rename or reuse an existing name.

use serde::Serialize;

pub use enforcer_ebpf::{Decision, Reason};

/// A decision and why: what every proxy phase ends in.
///
/// Serialised as `{"verdict": "allow"|"deny", "reason": "..."}` (the field
/// names audit consumers already read).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Verdict {
    /// Allow or deny.
    #[serde(rename = "verdict")]
    pub decision: Decision,
    /// The machine-readable reason.
    pub reason: Reason,
}

impl Verdict {
    /// An allow verdict for `reason`.
    pub fn allow(reason: Reason) -> Self {
        Self {
            decision: Decision::Allow,
            reason,
        }
    }

    /// A deny verdict for `reason`.
    pub fn deny(reason: Reason) -> Self {
        Self {
            decision: Decision::Deny,
            reason,
        }
    }

    /// Whether this verdict lets the attempt through.
    pub fn is_allow(&self) -> bool {
        self.decision.is_allow()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn reason_names_are_unique_snake_case_and_serialize_as_themselves() {
        let mut seen = HashSet::new();
        for reason in Reason::ALL {
            let name = reason.as_str();
            assert!(seen.insert(name), "duplicate reason name {name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name} is not snake_case"
            );
            let json = serde_json::to_string(&reason).unwrap();
            assert_eq!(json, format!("\"{name}\""), "serde name of {reason:?}");
        }
    }

    #[test]
    fn only_allow_reasons_are_allow() {
        let allows: Vec<_> = Reason::ALL.into_iter().filter(|r| r.is_allow()).collect();
        assert_eq!(
            allows,
            vec![
                Reason::Allowlisted,
                Reason::Granted,
                Reason::AllowlistedEch,
                Reason::PlainHttpAllowed,
                Reason::Completed,
                Reason::PolicyApplied,
                Reason::PolicyFallback,
                Reason::Grant,
                Reason::DnsAnswered,
            ]
        );
    }
}
