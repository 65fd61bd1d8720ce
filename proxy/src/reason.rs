//! The proxy's decision vocabulary: [`Verdict`], [`Reason`] and [`Decision`].
//!
//! Reason names are machine-readable (`snake_case`) and stable: they appear in
//! audit records, logs, metrics and the `403` body, and operators script
//! against them. Add new variants; never rename or reuse an existing name.

use std::fmt;

use serde::Serialize;

/// Whether a connection attempt was let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The tunnel (or plain-HTTP request) was let through.
    Allow,
    /// The attempt was refused.
    Deny,
}

impl Verdict {
    /// The stable name used in audit records (`allow` / `deny`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the proxy decided what it did: the one shared vocabulary, defined
/// in `enforcer_ebpf` beside the kernel's reasons.
pub use enforcer_ebpf::Reason;

/// A typed decision: allow or deny, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The machine-readable reason.
    pub reason: Reason,
}

impl Decision {
    /// An allow decision for `reason`.
    pub fn allow(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason,
        }
    }

    /// A deny decision for `reason`.
    pub fn deny(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Deny,
            reason,
        }
    }

    /// Whether this decision lets the attempt through.
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
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
                Reason::PlainHttpAllowed
            ]
        );
    }
}
