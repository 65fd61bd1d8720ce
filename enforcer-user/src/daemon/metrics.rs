//! Prometheus metrics: counters the data path bumps, rendered as text on
//! the control socket and optionally on a loopback TCP port ([`serve_http`]).

#[cfg(test)]
use crate::audit::Reason;
use crate::audit::{Decision, Source};

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

/// Upper bounds (seconds) of the router latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Values read at render time rather than counted.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Tunnels open in the proxy.
    pub open_tunnels: u64,
    /// Kernel deny events lost in the ring buffer (summed `STATS`).
    pub ring_buffer_lost: u64,
    /// TCP connects the kernel redirected to the transparent listener.
    pub redirected: u64,
    /// The egress mode (`proxy-only`, `redirect`).
    pub egress_mode: &'static str,
    /// Audit records dropped by the writer.
    pub audit_dropped: u64,
    /// Active policy version.
    pub policy_version: String,
    /// Whether the active policy is the embedded fallback.
    pub policy_fallback: bool,
    /// Active policy expiry, Unix seconds (0: never).
    pub policy_expiry: u64,
    /// The self-test's last result and failures per attempt.
    pub selftest: super::selftest::SelftestMetrics,
    /// The DNS filter's counters (`None`: no filter, nothing rendered).
    pub dns: Option<proxy::dns::DnsStatsSnapshot>,
    /// Port-53 connects and sendmsgs the kernel rewrote to the DNS filter.
    pub dns_redirected: u64,
}

/// The daemon's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    decisions: Mutex<BTreeMap<(&'static str, &'static str, String), u64>>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl Metrics {
    /// Counts one decision; `reason` is a [`crate::audit::Reason`] name (a
    /// kernel event's may be an unknown byte's `reason-N`).
    pub fn decision(&self, source: Source, decision: Decision, reason: &str) {
        if let Ok(mut map) = self.decisions.lock() {
            *map.entry((source.as_str(), decision.as_str(), reason.to_owned()))
                .or_default() += 1;
        }
    }

    /// Adds relayed bytes.
    pub fn bytes(&self, up: u64, down: u64) {
        self.bytes_up.fetch_add(up, Ordering::Relaxed);
        self.bytes_down.fetch_add(down, Ordering::Relaxed);
    }

    /// Records one router request's time to first byte.
    pub fn router_latency(&self, seconds: f64) {
        for (index, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.latency_buckets[index].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        let micros = (seconds * 1e6).max(0.0) as u64;
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::new();
        out.push_str("# HELP enforcer_decisions_total Decisions by source, verdict and reason.\n");
        out.push_str("# TYPE enforcer_decisions_total counter\n");
        if let Ok(map) = self.decisions.lock() {
            for ((source, decision, reason), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "enforcer_decisions_total{{source=\"{source}\",decision=\"{decision}\",reason=\"{}\"}} {count}",
                    escape(reason)
                );
            }
        }
        gauge(
            &mut out,
            "enforcer_open_tunnels",
            "Tunnels open in the CONNECT proxy.",
            gauges.open_tunnels,
        );
        counter(
            &mut out,
            "enforcer_relayed_bytes_total",
            "Bytes relayed by the proxy and router.",
            &[
                ("direction=\"up\"", self.bytes_up.load(Ordering::Relaxed)),
                (
                    "direction=\"down\"",
                    self.bytes_down.load(Ordering::Relaxed),
                ),
            ],
        );
        counter(
            &mut out,
            "enforcer_ring_buffer_lost_total",
            "Kernel deny events lost because the ring buffer was full.",
            &[("", gauges.ring_buffer_lost)],
        );
        counter(
            &mut out,
            "enforcer_redirected_connections_total",
            "TCP connects the kernel redirected to the transparent listener (egress mode redirect).",
            &[("", gauges.redirected)],
        );
        if let Some(dns) = &gauges.dns {
            counter(
                &mut out,
                "enforcer_dns_queries_total",
                "DNS filter queries by outcome (answered, empty, nxdomain, refused, servfail, malformed, dropped_overload).",
                &[
                    ("outcome=\"answered\"", dns.answered),
                    ("outcome=\"empty\"", dns.empty),
                    ("outcome=\"nxdomain\"", dns.nxdomain),
                    ("outcome=\"refused\"", dns.refused),
                    ("outcome=\"servfail\"", dns.servfail),
                    ("outcome=\"malformed\"", dns.malformed),
                    ("outcome=\"dropped_overload\"", dns.dropped_overload),
                ],
            );
            counter(
                &mut out,
                "enforcer_dns_refusal_events_suppressed_total",
                "DNS refusals counted but not audited one by one (refusal-event rate limit).",
                &[("", dns.refusals_suppressed)],
            );
            counter(
                &mut out,
                "enforcer_dns_redirected_total",
                "Port-53 connects and datagrams the kernel rewrote to the DNS filter.",
                &[("", gauges.dns_redirected)],
            );
        }
        out.push_str("# HELP enforcer_egress_mode_info The egress mode the kernel enforces (value 1).\n# TYPE enforcer_egress_mode_info gauge\n");
        let _ = writeln!(
            out,
            "enforcer_egress_mode_info{{mode=\"{}\"}} 1",
            escape(gauges.egress_mode)
        );
        counter(
            &mut out,
            "enforcer_audit_dropped_total",
            "Audit records dropped because the writer queue was full.",
            &[("", gauges.audit_dropped)],
        );
        out.push_str(
            "# HELP enforcer_router_first_byte_seconds Router time to first response byte.\n",
        );
        out.push_str("# TYPE enforcer_router_first_byte_seconds histogram\n");
        for (index, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "enforcer_router_first_byte_seconds_bucket{{le=\"{bound}\"}} {}",
                self.latency_buckets[index].load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "enforcer_router_first_byte_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "enforcer_router_first_byte_seconds_sum {}",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "enforcer_router_first_byte_seconds_count {count}");
        out.push_str("# HELP enforcer_policy_info The active policy (value 1).\n# TYPE enforcer_policy_info gauge\n");
        let _ = writeln!(
            out,
            "enforcer_policy_info{{version=\"{}\",fallback=\"{}\"}} 1",
            escape(&gauges.policy_version),
            gauges.policy_fallback
        );
        gauge(
            &mut out,
            "enforcer_policy_expiry_seconds",
            "Unix time the active policy expires (0: never).",
            gauges.policy_expiry,
        );
        render_selftest(&mut out, &gauges.selftest);
        out
    }
}

/// How long a scraper has to send its request before it gets the text anyway.
const SCRAPE_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the text from `render` to every HTTP client on `listener` until
/// `shutdown` (whatever the request path: a scrape endpoint, not a router).
pub async fn serve_http<R>(listener: TcpListener, render: R, shutdown: impl Future<Output = ()>)
where
    R: Fn() -> String + Clone + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let render = render.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 2048];
                    let _ = tokio::time::timeout(SCRAPE_READ_TIMEOUT, stream.read(&mut buffer)).await;
                    let body = render();
                    let _ = stream.write_all(http_head(body.len()).as_bytes()).await;
                    let _ = stream.write_all(body.as_bytes()).await;
                });
            }
        }
    }
}

/// The response head for a text exposition body of `length` bytes.
fn http_head(length: usize) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n"
    )
}

/// The self-test's series (the three gauges only once a run finished).
fn render_selftest(out: &mut String, selftest: &super::selftest::SelftestMetrics) {
    if let Some((passed, duration, started)) = selftest.last {
        gauge(
            out,
            "enforcer_selftest_passed",
            "Whether the last self-test passed (1) or failed (0).",
            u64::from(passed),
        );
        let _ = writeln!(
            out,
            "# HELP enforcer_selftest_duration_seconds How long the last self-test took.\n# TYPE enforcer_selftest_duration_seconds gauge\nenforcer_selftest_duration_seconds {duration}"
        );
        let _ = writeln!(
            out,
            "# HELP enforcer_selftest_last_run_timestamp_seconds Unix time the last self-test started.\n# TYPE enforcer_selftest_last_run_timestamp_seconds gauge\nenforcer_selftest_last_run_timestamp_seconds {started:.3}"
        );
    }
    out.push_str("# HELP enforcer_selftest_attempt_failures_total Self-test runs in which an attempt failed, by attempt.\n# TYPE enforcer_selftest_attempt_failures_total counter\n");
    for (attempt, count) in &selftest.failures {
        let _ = writeln!(
            out,
            "enforcer_selftest_attempt_failures_total{{attempt=\"{}\"}} {count}",
            escape(attempt)
        );
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
    );
}

fn counter(out: &mut String, name: &str, help: &str, series: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in series {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_head_bytes() {
        assert_eq!(
            http_head(12),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: 12\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.decision(Source::Proxy, Decision::Deny, Reason::SniMismatch.as_str());
        metrics.decision(Source::Proxy, Decision::Deny, Reason::SniMismatch.as_str());
        metrics.router_latency(0.0007);
        metrics.bytes(10, 20);
        let text = metrics.render(&Gauges {
            policy_version: "2026-11-22.1".into(),
            redirected: 3,
            egress_mode: "redirect",
            ..Gauges::default()
        });
        assert!(
            text.contains("\nenforcer_redirected_connections_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("\nenforcer_egress_mode_info{mode=\"redirect\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(
            "enforcer_decisions_total{source=\"proxy\",decision=\"deny\",reason=\"sni_mismatch\"} 2"
        ));
        assert!(
            !text.contains("enforcer_dns_queries_total"),
            "no DNS filter, no DNS counters"
        );
        let dns = metrics.render(&Gauges {
            dns: Some(proxy::dns::DnsStatsSnapshot {
                answered: 4,
                refused: 2,
                ..Default::default()
            }),
            dns_redirected: 6,
            ..Gauges::default()
        });
        assert!(
            dns.contains("\nenforcer_dns_queries_total{outcome=\"answered\"} 4\n")
                && dns.contains("\nenforcer_dns_queries_total{outcome=\"refused\"} 2\n")
                && dns.contains("\nenforcer_dns_redirected_total 6\n"),
            "{dns}"
        );
        assert!(text.contains("enforcer_router_first_byte_seconds_bucket{le=\"0.0005\"} 0"));
        assert!(text.contains("enforcer_router_first_byte_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("enforcer_relayed_bytes_total{direction=\"down\"} 20"));
        assert!(
            text.contains("enforcer_policy_info{version=\"2026-11-22.1\",fallback=\"false\"} 1")
        );
        assert!(
            !text.contains("enforcer_selftest_passed"),
            "no self-test result before the first run"
        );
        let text = metrics.render(&Gauges {
            selftest: super::super::selftest::SelftestMetrics {
                last: Some((false, 0.25, 1_700_000_000.0)),
                failures: vec![("tcp4_loopback".into(), 2)],
            },
            ..Gauges::default()
        });
        assert!(text.contains("\nenforcer_selftest_passed 0\n"), "{text}");
        assert!(
            text.contains("\nenforcer_selftest_duration_seconds 0.25\n"),
            "{text}"
        );
        assert!(
            text.contains("enforcer_selftest_attempt_failures_total{attempt=\"tcp4_loopback\"} 2")
        );
    }
}
