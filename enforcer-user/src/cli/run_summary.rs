//! What `enforcer run` says when its command ends: the run's denies, read
//! back from the audit log, grouped by destination and reason, and the
//! commands that show or open them.
//!
//! Which records belong to the run ([`RunScope::contains`]): those that
//! carry the run's cgroup id. Kernel denies always do; proxy and router
//! decisions do since clients are attributed (issue 13), and one that
//! carries none came from a client outside every enforced cgroup (refused as
//! `client_not_enforced`), never from the command (docs/DECISIONS.md).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    time::{SystemTime, UNIX_EPOCH},
};

use enforcer::audit::{AuditRecord, Decision, Reason, Source};

use super::policy_suggest::{Remedy, remedy_for};

/// `--summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SummaryMode {
    /// Say nothing when the command ends.
    Off,
    /// Totals, the top destinations, and the commands that help.
    Short,
    /// As short, with every destination.
    Full,
}

/// How many destinations `--summary short` lists.
const SHORT_LINES: usize = 5;

/// Which audit records are the run's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunScope {
    /// The run's transient cgroup.
    pub cgroup_id: u64,
    /// When the run started, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// When the command ended, milliseconds since the Unix epoch.
    pub end_ms: i64,
}

impl RunScope {
    /// Whether `record` is one of this run's decisions.
    pub fn contains(&self, record: &AuditRecord) -> bool {
        match (record.source, record.cgroup_id) {
            (Source::Control, _) => false,
            (_, Some(id)) => id == self.cgroup_id,
            // Not attributed: a client outside the enforced cgroups.
            (_, None) => false,
        }
    }
}

/// Denies to one destination for one reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// `host:port`, `[v6]:port`, or `(unknown)`.
    pub destination: String,
    /// The reason's stored name.
    pub reason: String,
    /// Who denied.
    pub source: Source,
    /// How many times.
    pub count: u64,
}

impl Group {
    /// The `enforcer allow` arguments that would open this destination, when
    /// a grant is what stands in the way.
    fn allow_arguments(&self) -> Option<String> {
        if self.destination == UNKNOWN {
            return None;
        }
        // The same rule as `enforcer policy suggest`'s.
        match remedy_for(self.source, &self.reason) {
            Remedy::Allowlist => Some(format!("{} --ttl 1h", self.destination)),
            // The command went around the proxy: only a direct kernel entry opens that.
            Remedy::Direct => Some(format!("{} --ttl 1h --direct", self.destination)),
            Remedy::DnsName | Remedy::None(_) => None,
        }
    }
}

const UNKNOWN: &str = "(unknown)";

/// The run's denies, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Network connections denied (kernel connects, proxy requests), DNS
    /// excluded.
    pub connections: u64,
    /// Unix socket connects denied (`unix_socket`): host services such as
    /// nscd or a terminal multiplexer's server, not the network.
    pub unix: u64,
    /// DNS queries denied: kernel denies to port 53 (`egress.dns = "deny"`)
    /// and names the DNS filter refused (`dns_refused`).
    pub dns: u64,
    /// Lane-router requests refused.
    pub requests: u64,
    /// By destination and reason, most frequent first.
    pub groups: Vec<Group>,
}

impl Summary {
    /// Counts the denies among `records` that are in `scope`.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a AuditRecord>, scope: &RunScope) -> Self {
        let mut summary = Self::default();
        let mut groups: BTreeMap<(String, String, &'static str), (Source, u64)> = BTreeMap::new();
        for record in records {
            if record.decision != Decision::Deny || !scope.contains(record) {
                continue;
            }
            match record.source {
                Source::Kernel if record.reason == Reason::Dns.as_str() => summary.dns += 1,
                Source::Proxy if record.reason == Reason::DnsRefused.as_str() => summary.dns += 1,
                Source::Kernel if record.reason == Reason::UnixSocket.as_str() => {
                    summary.unix += 1;
                }
                Source::Router => summary.requests += 1,
                _ => summary.connections += 1,
            }
            let key = (
                destination(record),
                record.reason.clone(),
                record.source.as_str(),
            );
            groups.entry(key).or_insert((record.source, 0)).1 += 1;
        }
        summary.groups = groups
            .into_iter()
            .map(|((destination, reason, _), (source, count))| Group {
                destination,
                reason,
                source,
                count,
            })
            .collect();
        // Stable: equal counts keep the map's (destination, reason) order.
        summary
            .groups
            .sort_by_key(|group| std::cmp::Reverse(group.count));
        summary
    }

    /// Nothing was denied.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// `host:port` of a record.
fn destination(record: &AuditRecord) -> String {
    match (&record.host, record.port) {
        (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.clone(),
        (None, _) => UNKNOWN.to_owned(),
    }
}

/// What the printed commands need to be copied as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hints {
    /// Prefix the commands with `sudo` (the user ran `sudo enforcer run`).
    pub sudo: bool,
    /// When the run started.
    pub start: SystemTime,
    /// The run's cgroup id: `enforcer events --cgroup` shows the run's
    /// decisions alone (not the self-test probe's, nor other runs').
    pub cgroup_id: u64,
    /// The audit database's state directory when it is not the default.
    pub state_dir: Option<PathBuf>,
    /// Who would take a grant: the daemon the run used, or none (the run
    /// enforced in-process, and `enforcer allow` needs a daemon).
    pub grants: GrantTarget,
}

/// Where `enforcer allow` would send a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantTarget {
    /// The daemon the run used; its control socket when not the default.
    Daemon(Option<PathBuf>),
    /// No daemon: the run enforced in-process.
    NoDaemon,
}

/// The text printed after the command's output, or `None` to print
/// nothing (`--summary off`, or nothing denied and `--quiet`).
pub fn render(summary: &Summary, mode: SummaryMode, hints: &Hints, quiet: bool) -> Option<String> {
    if mode == SummaryMode::Off || (summary.is_empty() && quiet) {
        return None;
    }
    if summary.is_empty() {
        return Some("enforcer: nothing was denied\n".to_owned());
    }
    let mut out = String::new();
    let mut totals = Vec::new();
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    if summary.connections > 0 {
        totals.push(plural(summary.connections, "connection", "connections"));
    }
    if summary.unix > 0 {
        totals.push(plural(
            summary.unix,
            "unix socket connect",
            "unix socket connects",
        ));
    }
    if summary.dns > 0 {
        totals.push(plural(summary.dns, "DNS query", "DNS queries") + " (port 53)");
    }
    if summary.requests > 0 {
        totals.push(plural(summary.requests, "API request", "API requests"));
    }
    let _ = writeln!(out, "enforcer: denied {}", join_and(&totals));
    let shown = match mode {
        SummaryMode::Full => summary.groups.len(),
        _ => SHORT_LINES.min(summary.groups.len()),
    };
    // In characters, as `{:<width$}` pads: a unix path carries a `…`.
    let width = summary.groups[..shown]
        .iter()
        .map(|group| group.destination.chars().count())
        .max()
        .unwrap_or(0);
    let reason_width = summary.groups[..shown]
        .iter()
        .map(|group| group.reason.len())
        .max()
        .unwrap_or(0);
    for group in &summary.groups[..shown] {
        let _ = writeln!(
            out,
            "  {:>5}x {:<width$}  {:<reason_width$}  ({})",
            group.count,
            group.destination,
            group.reason,
            group.source.as_str()
        );
    }
    let hidden = summary.groups.len() - shown;
    if hidden > 0 {
        let _ = writeln!(
            out,
            "  ... and {hidden} more {} (--summary full lists them)",
            if hidden == 1 { "line" } else { "lines" }
        );
    }
    let sudo = if hints.sudo { "sudo " } else { "" };
    let state_dir = hints
        .state_dir
        .as_ref()
        .map(|dir| format!(" --state-dir {}", shell_word(&dir.display().to_string())))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "  every decision: {sudo}enforcer events --since {} --cgroup {} --decision deny{state_dir}",
        format_start(hints.start),
        hints.cgroup_id
    );
    if let Some(arguments) = summary.groups.iter().find_map(Group::allow_arguments) {
        match &hints.grants {
            GrantTarget::Daemon(socket) => {
                let socket = socket
                    .as_ref()
                    .map(|path| {
                        format!(
                            " --control-socket {}",
                            shell_word(&path.display().to_string())
                        )
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  to allow it:    {sudo}enforcer allow {arguments}{socket}"
                );
            }
            // A grant lives in a daemon: with none running, the command
            // alone would fail ("cannot reach the enforcer daemon").
            GrantTarget::NoDaemon => {
                let _ = writeln!(out, "  to allow it:    {sudo}enforcer allow {arguments}");
                let _ = writeln!(
                    out,
                    "                  (a grant needs the daemon: {sudo}systemctl start enforcer; later runs use it)"
                );
            }
        }
    }
    Some(out)
}

/// `a`, `a and b`, `a, b and c`.
fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// The start, to the second, rounded down (so `--since` includes it).
fn format_start(start: SystemTime) -> String {
    let seconds = start
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(seconds))
        .to_string()
}

/// `text` quoted for a POSIX shell when it needs it.
pub fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    const RUN: u64 = 4242;
    const START: i64 = 1_800_000_000_000;

    fn scope() -> RunScope {
        RunScope {
            cgroup_id: RUN,
            start_ms: START,
            end_ms: START + 60_000,
        }
    }

    fn record(
        source: Source,
        reason: Reason,
        host: &str,
        port: u16,
        cgroup: Option<u64>,
    ) -> AuditRecord {
        let mut record = AuditRecord::new(UNIX_EPOCH, source, reason.decision(), reason);
        record.time_ms = START + 1_000;
        record.host = Some(host.to_owned());
        record.port = Some(port);
        record.cgroup_id = cgroup;
        record
    }

    fn hints() -> Hints {
        Hints {
            sudo: true,
            start: UNIX_EPOCH + Duration::from_millis(START as u64 + 700),
            cgroup_id: RUN,
            state_dir: None,
            grants: GrantTarget::Daemon(None),
        }
    }

    #[test]
    fn scope_takes_the_runs_cgroup_only() {
        let scope = scope();
        let kernel = record(
            Source::Kernel,
            Reason::LoopbackPort,
            "127.0.0.2",
            9,
            Some(RUN),
        );
        assert!(scope.contains(&kernel));
        let mut other = kernel.clone();
        other.cgroup_id = Some(RUN + 1);
        assert!(!scope.contains(&other), "another cgroup's deny");
        let mut proxy = record(Source::Proxy, Reason::NotAllowlisted, "a.test", 443, None);
        assert!(
            !scope.contains(&proxy),
            "unattributed: a client outside the enforced cgroups"
        );
        proxy.cgroup_id = Some(RUN);
        assert!(scope.contains(&proxy), "attributed: the cgroup decides");
        let control = record(Source::Control, Reason::PolicyFallback, "x", 1, None);
        assert!(!scope.contains(&control));
    }

    #[test]
    fn counts_connections_dns_and_requests_by_destination_and_reason() {
        let mut records = Vec::new();
        for _ in 0..3 {
            records.push(record(
                Source::Kernel,
                Reason::LoopbackPort,
                "127.0.0.2",
                9,
                Some(RUN),
            ));
        }
        for _ in 0..2 {
            records.push(record(
                Source::Proxy,
                Reason::NotAllowlisted,
                "a.test",
                443,
                Some(RUN),
            ));
        }
        records.push(record(
            Source::Kernel,
            Reason::Dns,
            "10.0.0.1",
            53,
            Some(RUN),
        ));
        records.push(record(
            Source::Router,
            Reason::UnknownModel,
            "api.test",
            443,
            Some(RUN),
        ));
        // Not counted: an allow, another cgroup's deny, a control record.
        records.push(record(
            Source::Proxy,
            Reason::Allowlisted,
            "b.test",
            443,
            Some(RUN),
        ));
        records.push(record(
            Source::Kernel,
            Reason::LoopbackPort,
            "127.0.0.2",
            9,
            Some(7),
        ));
        records.push(record(Source::Control, Reason::PolicyRefused, "x", 1, None));
        let mut unix = record(
            Source::Kernel,
            Reason::UnixSocket,
            "/var/run/nsc…d/socket",
            0,
            Some(RUN),
        );
        unix.port = None;
        records.push(unix);
        let summary = Summary::of(&records, &scope());
        assert_eq!(
            (
                summary.connections,
                summary.unix,
                summary.dns,
                summary.requests
            ),
            (5, 1, 1, 1)
        );
        let lines: Vec<(&str, &str, u64)> = summary
            .groups
            .iter()
            .map(|g| (g.destination.as_str(), g.reason.as_str(), g.count))
            .collect();
        assert_eq!(
            lines,
            [
                ("127.0.0.2:9", "loopback_port_not_owned", 3),
                ("a.test:443", "not_allowlisted", 2),
                ("/var/run/nsc…d/socket", "unix_socket", 1),
                ("10.0.0.1:53", "dns_not_enforcer", 1),
                ("api.test:443", "unknown_model", 1),
            ]
        );
        let text = render(&summary, SummaryMode::Full, &hints(), false).unwrap();
        // The widest destination gets two spaces, its `…` one column.
        assert!(
            text.contains("\n      1x /var/run/nsc…d/socket  unix_socket              (kernel)\n"),
            "{text}"
        );
        assert_eq!(
            text.lines().next(),
            Some(
                "enforcer: denied 5 connections, 1 unix socket connect, 1 DNS query (port 53) \
                 and 1 API request"
            ),
            "{text}"
        );
    }

    #[test]
    fn short_summary_lists_the_top_lines_and_the_commands_that_help() {
        let mut records = Vec::new();
        for i in 0..8u16 {
            for _ in 0..=i {
                records.push(record(
                    Source::Proxy,
                    Reason::NotAllowlisted,
                    &format!("h{i}.test"),
                    443,
                    Some(RUN),
                ));
            }
        }
        records.push(record(
            Source::Kernel,
            Reason::Dns,
            "10.0.0.1",
            53,
            Some(RUN),
        ));
        let summary = Summary::of(&records, &scope());
        let text = render(&summary, SummaryMode::Short, &hints(), false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "enforcer: denied 36 connections and 1 DNS query (port 53)"
        );
        assert_eq!(lines[1], "      8x h7.test:443  not_allowlisted  (proxy)");
        assert_eq!(lines.len(), 1 + SHORT_LINES + 3, "{text}");
        assert_eq!(
            lines[6],
            "  ... and 4 more lines (--summary full lists them)"
        );
        assert_eq!(
            lines[7],
            "  every decision: sudo enforcer events --since 2027-01-15T08:00:00Z --cgroup 4242 --decision deny"
        );
        assert_eq!(
            lines[8],
            "  to allow it:    sudo enforcer allow h7.test:443 --ttl 1h"
        );
        let full = render(&summary, SummaryMode::Full, &hints(), false).unwrap();
        assert_eq!(full.lines().count(), 1 + 9 + 2, "{full}");
        assert!(!full.contains("more"), "{full}");
        assert!(!text.contains('\u{1b}') && !full.contains('\u{1b}'));
    }

    #[test]
    fn allow_hint_only_where_a_grant_helps() {
        let loopback = vec![record(
            Source::Kernel,
            Reason::LoopbackPort,
            "127.0.0.2",
            9,
            Some(RUN),
        )];
        let text = render(
            &Summary::of(&loopback, &scope()),
            SummaryMode::Short,
            &hints(),
            false,
        )
        .unwrap();
        assert!(!text.contains("enforcer allow"), "{text}");
        let bypass = vec![record(
            Source::Kernel,
            Reason::Destination,
            "192.0.2.1",
            443,
            Some(RUN),
        )];
        let text = render(
            &Summary::of(&bypass, &scope()),
            SummaryMode::Short,
            &Hints {
                sudo: false,
                state_dir: Some(PathBuf::from("/tmp/my state")),
                ..hints()
            },
            false,
        )
        .unwrap();
        assert!(
            text.contains("  to allow it:    enforcer allow 192.0.2.1:443 --ttl 1h --direct\n"),
            "{text}"
        );
        assert!(
            text.contains("--decision deny --state-dir '/tmp/my state'\n"),
            "{text}"
        );
    }

    #[test]
    fn allow_hint_names_the_daemon_or_says_one_is_needed() {
        let denied = vec![record(
            Source::Proxy,
            Reason::NotAllowlisted,
            "a.test",
            443,
            Some(RUN),
        )];
        let summary = Summary::of(&denied, &scope());
        let other_daemon = Hints {
            grants: GrantTarget::Daemon(Some(PathBuf::from("/tmp/d/control.sock"))),
            ..hints()
        };
        let text = render(&summary, SummaryMode::Short, &other_daemon, false).unwrap();
        assert_eq!(
            text.lines().last(),
            Some(
                "  to allow it:    sudo enforcer allow a.test:443 --ttl 1h --control-socket \
                 /tmp/d/control.sock"
            ),
            "{text}"
        );
        let in_process = Hints {
            grants: GrantTarget::NoDaemon,
            ..hints()
        };
        let text = render(&summary, SummaryMode::Short, &in_process, false).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[lines.len() - 2..],
            [
                "  to allow it:    sudo enforcer allow a.test:443 --ttl 1h",
                "                  (a grant needs the daemon: sudo systemctl start enforcer; later \
                 runs use it)"
            ],
            "{text}"
        );
    }

    #[test]
    fn off_quiet_and_nothing_denied() {
        let empty = Summary::default();
        assert_eq!(
            render(&empty, SummaryMode::Short, &hints(), false).as_deref(),
            Some("enforcer: nothing was denied\n")
        );
        assert_eq!(render(&empty, SummaryMode::Short, &hints(), true), None);
        let one = Summary::of(
            &[record(
                Source::Proxy,
                Reason::NotAllowlisted,
                "a.test",
                443,
                Some(RUN),
            )],
            &scope(),
        );
        assert!(
            render(&one, SummaryMode::Short, &hints(), true).is_some(),
            "quiet keeps denies"
        );
        assert_eq!(render(&one, SummaryMode::Off, &hints(), false), None);
    }
}
