//! The self-test's result: per attempt, and as one report that the log,
//! `status`, `enforcer selftest` and the metrics all read.

use std::fmt::Write as _;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::matrix::{Expect, Outcome, Verdict};

/// One attempt's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptResult {
    /// The matrix row's id.
    pub id: String,
    /// What it tried.
    pub tries: String,
    /// The layer that claims to stop it (`null`: a path that must work).
    pub layer: Option<String>,
    /// `denied` or `reached`.
    pub expected: String,
    /// What happened: `EPERM`, `reached`, `errno N (text)`, `not made: why`.
    pub observed: String,
    /// The decoy it was aimed at, if any.
    pub decoy: Option<String>,
    /// Connections and bytes (or datagrams) its decoy received.
    pub decoy_hits: u64,
    /// The judgement.
    pub verdict: Verdict,
}

impl AttemptResult {
    /// `expected` for a row.
    pub fn expected_text(expect: Expect) -> &'static str {
        match expect {
            Expect::Denied(_) => "denied",
            Expect::Filtered(_) => "denied or filtered",
            Expect::Reached => "reached",
        }
    }

    /// `observed` for an outcome.
    pub fn observed_text(outcome: Option<&Outcome>) -> String {
        match outcome {
            None => "no result (the probe did not report it)".into(),
            Some(Outcome::Ok {}) => "reached".into(),
            Some(Outcome::Err { errno, .. }) if *errno == Errno::EPERM as i32 => "EPERM".into(),
            Some(Outcome::Err { errno, message }) => format!("errno {errno} ({message})"),
            Some(Outcome::Precondition { why }) => format!("not proven: {why}"),
        }
    }
}

/// The result of one self-test run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelftestReport {
    /// The cgroup the probe ran under (relative to the cgroup v2 mount).
    pub cgroup: String,
    /// True when no attempt failed.
    pub passed: bool,
    /// Every attempt, in matrix order.
    pub attempts: Vec<AttemptResult>,
    /// Ids of the attempts that failed (bypass, broken, inconclusive).
    pub failures: Vec<String>,
    /// Ids of the attempts this kernel does not stop (layer not attached).
    pub not_enforced: Vec<String>,
    /// Ids refused before the kernel program ran (not proven either way).
    pub unproven: Vec<String>,
    /// Ids with nothing to aim at on this host.
    pub not_applicable: Vec<String>,
    /// When it started, RFC 3339.
    pub started_at: String,
    /// When it started, Unix seconds.
    pub started_at_unix: f64,
    /// How long it took, seconds.
    pub duration_seconds: f64,
}

impl SelftestReport {
    /// Builds the report from judged attempts.
    pub fn new(
        cgroup: String,
        attempts: Vec<AttemptResult>,
        started_at: std::time::SystemTime,
        duration: std::time::Duration,
    ) -> Self {
        let ids = |keep: fn(Verdict) -> bool| -> Vec<String> {
            attempts
                .iter()
                .filter(|a| keep(a.verdict))
                .map(|a| a.id.clone())
                .collect()
        };
        let failures = ids(|v| v.fails());
        Self {
            cgroup,
            passed: failures.is_empty(),
            not_enforced: ids(|v| v == Verdict::NotEnforced),
            unproven: ids(|v| v == Verdict::Unproven),
            not_applicable: ids(|v| v == Verdict::NotApplicable),
            failures,
            attempts,
            started_at: humantime::format_rfc3339_millis(started_at).to_string(),
            started_at_unix: started_at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            duration_seconds: duration.as_secs_f64(),
        }
    }

    /// The failing attempts, one phrase each (`tcp4_loopback: BYPASS (reached, decoy hit 1)`).
    pub fn failure_list(&self) -> Vec<String> {
        self.attempts
            .iter()
            .filter(|a| a.verdict.fails())
            .map(|a| {
                format!(
                    "{}: {} ({}{})",
                    a.id,
                    a.verdict.as_str(),
                    a.observed,
                    if a.decoy_hits > 0 {
                        format!(
                            ", its decoy {} was hit {} time(s)",
                            a.decoy.as_deref().unwrap_or("?"),
                            a.decoy_hits
                        )
                    } else {
                        String::new()
                    }
                )
            })
            .collect()
    }

    /// The table `attach`, `enforcer selftest` and `status` print.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "self-test {} in {:.0} ms at {} (cgroup {}; {} attempts: {} failed, {} not enforced, {} unproven, {} n/a)",
            if self.passed { "PASSED" } else { "FAILED" },
            self.duration_seconds * 1000.0,
            self.started_at,
            self.cgroup,
            self.attempts.len(),
            self.failures.len(),
            self.not_enforced.len(),
            self.unproven.len(),
            self.not_applicable.len(),
        );
        let _ = writeln!(
            out,
            "  {:<26} {:<24} {:<8} {:<14} observed",
            "attempt", "layer", "expected", "verdict"
        );
        for attempt in &self.attempts {
            let _ = writeln!(
                out,
                "  {:<26} {:<24} {:<8} {:<14} {}{}",
                attempt.id,
                attempt.layer.as_deref().unwrap_or("-"),
                attempt.expected,
                attempt.verdict.as_str(),
                attempt.observed,
                if attempt.decoy_hits > 0 {
                    format!(" (decoy hit {})", attempt.decoy_hits)
                } else {
                    String::new()
                }
            );
        }
        if !self.not_enforced.is_empty() {
            let _ = writeln!(
                out,
                "  not enforced on this kernel: {}",
                self.not_enforced.join(", ")
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "  FAILED: {}", self.failures.join(", "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(id: &str, verdict: Verdict) -> AttemptResult {
        AttemptResult {
            id: id.into(),
            tries: "t".into(),
            layer: Some("connect4".into()),
            expected: "denied".into(),
            observed: "reached".into(),
            decoy: Some("127.0.0.2:1".into()),
            decoy_hits: u64::from(verdict == Verdict::Bypass),
            verdict,
        }
    }

    #[test]
    fn the_report_lists_failures_and_what_is_not_enforced() {
        let report = SelftestReport::new(
            "agents.slice".into(),
            vec![
                attempt("a", Verdict::Passed),
                attempt("b", Verdict::Bypass),
                attempt("c", Verdict::NotEnforced),
                attempt("d", Verdict::Unproven),
            ],
            std::time::UNIX_EPOCH,
            std::time::Duration::from_millis(5),
        );
        assert!(!report.passed);
        assert_eq!(report.failures, ["b"]);
        assert_eq!(report.not_enforced, ["c"]);
        assert_eq!(report.unproven, ["d"]);
        let text = report.render();
        assert!(text.contains("self-test FAILED"), "{text}");
        assert!(text.contains("not enforced on this kernel: c"), "{text}");
        assert_eq!(
            report.failure_list(),
            ["b: BYPASS (reached, its decoy 127.0.0.2:1 was hit 1 time(s))"]
        );
        let passed = SelftestReport::new(
            "x".into(),
            vec![attempt("a", Verdict::Passed)],
            std::time::UNIX_EPOCH,
            std::time::Duration::ZERO,
        );
        assert!(passed.passed && passed.render().contains("PASSED"));
    }
}
