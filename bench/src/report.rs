//! Medians, ratios to direct, the terminal table, BENCHMARKS.md and the
//! SVG chart of the ratios.

use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// A table of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Section {
    Connect,
    Router,
    Kernel,
    Policy,
}

impl Section {
    fn title(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT egress proxy",
            Self::Router => "Lane router (Anthropic Messages API)",
            Self::Kernel => "Kernel programs",
            Self::Policy => "Policy",
        }
    }
}

/// How a measure compares with direct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compare {
    /// A rate: the ratio to direct is shown (and charted).
    Ratio,
    /// Shown as it is.
    Plain,
}

/// One measure: its key, title, unit, the design target, how it compares.
struct Measure {
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    target: &'static str,
    compare: Compare,
}

const fn measure(
    key: &'static str,
    title: &'static str,
    unit: &'static str,
    target: &'static str,
    compare: Compare,
) -> Measure {
    Measure {
        key,
        title,
        unit,
        target,
        compare,
    }
}

/// Every measure, in the order of the tables (DESIGN.md §10's targets).
const MEASURES: &[Measure] = &[
    measure(
        "tunnels_1",
        "CONNECT+TLS+GET, 1 client",
        "tunnels/s",
        "≥ 0.95× direct",
        Compare::Ratio,
    ),
    measure(
        "tunnel_p50_1",
        "  latency p50, 1 client",
        "ms",
        "",
        Compare::Plain,
    ),
    measure(
        "tunnel_p99_1",
        "  latency p99, 1 client",
        "ms",
        "",
        Compare::Plain,
    ),
    measure(
        "proxy_cpu_tunnel",
        "proxy CPU per tunnel",
        "µs",
        "≤ 60 µs",
        Compare::Plain,
    ),
    measure(
        "box_cpu_tunnel",
        "whole-box CPU per tunnel (client+upstream+proxy)",
        "µs",
        "",
        Compare::Plain,
    ),
    measure(
        "client_cores_1",
        "  load generator's CPU, 1 client",
        "cores",
        "",
        Compare::Plain,
    ),
    measure(
        "tunnels_32",
        "same, 32 clients",
        "tunnels/s",
        "≥ 0.9× direct",
        Compare::Ratio,
    ),
    measure(
        "tunnel_p99_32",
        "  latency p99, 32 clients",
        "ms",
        "",
        Compare::Plain,
    ),
    measure(
        "client_cores_32",
        "  load generator's CPU, 32 clients",
        "cores",
        "",
        Compare::Plain,
    ),
    measure(
        "bulk_1",
        "1 TLS stream bulk",
        "MiB/s",
        "≥ 0.9× direct",
        Compare::Ratio,
    ),
    measure(
        "bulk_8",
        "8 TLS streams bulk",
        "MiB/s",
        "≥ 0.9× direct",
        Compare::Ratio,
    ),
    measure(
        "proxy_cpu_gib",
        "proxy CPU per GiB (1 stream)",
        "s",
        "",
        Compare::Plain,
    ),
    measure(
        "box_cpu_gib",
        "whole-box CPU per GiB (1 stream)",
        "s",
        "",
        Compare::Plain,
    ),
    measure(
        "box_cpu_gib_extra",
        "  extra over direct",
        "s",
        "≤ 0.3 s",
        Compare::Plain,
    ),
    measure(
        "rss_idle",
        "proxy RSS idle",
        "MiB",
        "≤ 10 MiB",
        Compare::Plain,
    ),
    measure(
        "rss_load",
        "proxy RSS under load (32 clients, peak)",
        "MiB",
        "≤ 10 MiB",
        Compare::Plain,
    ),
    measure(
        "rss_after",
        "enforcer attach RSS after the load",
        "MiB",
        "≤ 20 MiB",
        Compare::Plain,
    ),
    measure(
        "router_p50",
        "request latency p50, 1 client, keep-alive",
        "ms",
        "",
        Compare::Plain,
    ),
    measure(
        "router_p99",
        "request latency p99, 1 client, keep-alive",
        "ms",
        "",
        Compare::Plain,
    ),
    measure(
        "router_added_p50",
        "  added to direct, p50",
        "ms",
        "≤ 0.1 ms",
        Compare::Plain,
    ),
    measure(
        "router_added_p99",
        "  added to direct, p99",
        "ms",
        "≤ 1 ms",
        Compare::Plain,
    ),
    measure(
        "router_rps",
        "requests/s, 32 clients",
        "req/s",
        "≥ nginx",
        Compare::Ratio,
    ),
    measure(
        "router_cpu",
        "router CPU per request",
        "µs",
        "≤ 20 µs",
        Compare::Plain,
    ),
    measure(
        "sse_p50",
        "SSE per-event delay p50",
        "ms",
        "≤ 0.5 ms",
        Compare::Plain,
    ),
    measure(
        "sse_max",
        "SSE per-event delay max",
        "ms",
        "≤ 2 ms",
        Compare::Plain,
    ),
    measure(
        "router_rss_idle",
        "RSS idle",
        "MiB",
        "≤ 20 MB",
        Compare::Plain,
    ),
    measure(
        "router_rss_load",
        "RSS under load (32 clients, peak)",
        "MiB",
        "",
        Compare::Plain,
    ),
    measure(
        "router_rss_streams",
        "RSS with 1,000 streams open at once (peak; smoke: 20)",
        "MiB",
        "≤ 64 MB",
        Compare::Plain,
    ),
    measure(
        "new_socket_ns",
        "new UDP socket, bind, connect() to a loopback socket of its own, close",
        "µs",
        "",
        Compare::Plain,
    ),
    measure(
        "connect_ns",
        "connect() again, one UDP socket",
        "µs",
        "≤ 1 µs extra",
        Compare::Plain,
    ),
    measure(
        "policy_start",
        "enforcer attach to every direct entry in the kernel map (100,000; smoke: 1,000)",
        "s",
        "",
        Compare::Plain,
    ),
    measure(
        "swaps",
        "pack swaps (reload of a new signed version) during a 32-client tunnel load",
        "swaps",
        "",
        Compare::Plain,
    ),
    measure(
        "swap_tunnels",
        "  tunnels completed meanwhile",
        "tunnels",
        "",
        Compare::Plain,
    ),
    measure(
        "swap_failed",
        "  tunnels failed meanwhile",
        "tunnels",
        "0",
        Compare::Plain,
    ),
];

fn find(key: &str) -> Option<&'static Measure> {
    MEASURES.iter().find(|measure| measure.key == key)
}

/// Samples by measure, then by target (each with its repetition).
#[derive(Default)]
pub struct Report {
    smoke: bool,
    samples: BTreeMap<&'static str, Vec<(String, usize, f64)>>,
    /// Target columns per section, in the order they were first recorded.
    columns: BTreeMap<Section, Vec<String>>,
    sections: BTreeMap<&'static str, Section>,
    peers: Vec<String>,
    missing: Vec<(String, String)>,
    /// Rows a peer could not complete: peer, row, why.
    incomplete: Vec<(String, String, String)>,
    settle: Duration,
    /// What the RSS read after the load is made of, per daemon.
    breakdowns: Vec<(String, Vec<(String, f64)>)>,
}

impl Report {
    pub fn new(smoke: bool) -> Self {
        Self {
            smoke,
            ..Self::default()
        }
    }

    /// A peer measured (with its version).
    pub fn peer(&mut self, label: &str) {
        self.peers.push(label.to_owned());
    }

    /// A peer that is not measured, and why.
    pub fn missing(&mut self, name: &str, why: &str) {
        self.missing.push((name.to_owned(), why.to_owned()));
    }

    /// A row `peer` could not complete in one repetition, and why.
    pub fn incomplete(&mut self, peer: &str, row: &str, why: &str) {
        self.incomplete
            .push((peer.to_owned(), row.to_owned(), why.to_owned()));
    }

    /// Whether `peer` already failed `row` in an earlier repetition.
    pub fn is_incomplete(&self, peer: &str, row: &str) -> bool {
        self.incomplete
            .iter()
            .any(|(failed, failed_row, _)| failed == peer && failed_row == row)
    }

    /// What `target`'s RSS after the load is made of (MiB by mapping).
    pub fn breakdown(&mut self, target: &str, mappings: &[(String, f64)]) {
        self.breakdowns.push((target.to_owned(), mappings.to_vec()));
    }

    /// The breakdowns, the five largest mappings each.
    fn breakdown_text(&self) -> String {
        let mut text = String::new();
        for (target, mappings) in &self.breakdowns {
            let parts: Vec<String> = mappings
                .iter()
                .take(5)
                .map(|(name, mib)| format!("{} {}", escape(name), number(*mib)))
                .collect();
            let _ = writeln!(text, "- {target}, MiB by mapping: {}", parts.join(", "));
        }
        text
    }

    /// How long after the load the idle RSS was read.
    pub fn settled_after(&mut self, settle: Duration) {
        self.settle = settle;
    }

    /// The target columns of `section`, in this order.
    pub fn columns(&mut self, section: Section, targets: &[&str]) {
        self.columns.insert(
            section,
            targets.iter().map(|target| (*target).to_owned()).collect(),
        );
    }

    /// One sample of `key` for `target` in repetition `rep`.
    pub fn record(
        &mut self,
        section: Section,
        key: &'static str,
        target: &str,
        rep: usize,
        value: f64,
    ) {
        debug_assert!(find(key).is_some(), "unknown measure {key}");
        self.sections.insert(key, section);
        let columns = self.columns.entry(section).or_default();
        if !columns.iter().any(|column| column == target) {
            columns.push(target.to_owned());
        }
        self.samples
            .entry(key)
            .or_default()
            .push((target.to_owned(), rep, value));
    }

    fn values(&self, key: &str, target: &str) -> Vec<(usize, f64)> {
        self.samples
            .get(key)
            .map(|samples| {
                samples
                    .iter()
                    .filter(|(label, _, _)| label == target)
                    .map(|(_, rep, value)| (*rep, *value))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The median of `key` for `target`.
    fn median(&self, key: &str, target: &str) -> Option<f64> {
        median(
            self.values(key, target)
                .into_iter()
                .map(|(_, value)| value)
                .collect(),
        )
    }

    /// The median over repetitions of `target`'s value over direct's.
    fn ratio(&self, key: &str, target: &str) -> Option<f64> {
        let direct = self.values(key, "direct");
        let ratios = self
            .values(key, target)
            .into_iter()
            .filter_map(|(rep, value)| {
                let (_, base) = direct.iter().find(|(other, _)| *other == rep)?;
                (*base > 0.0).then(|| value / base)
            })
            .collect();
        median(ratios)
    }

    /// Rows computed from others: what a target adds to direct.
    fn derived(&self) -> Report {
        let mut report = Report {
            samples: self.samples.clone(),
            columns: self.columns.clone(),
            sections: self.sections.clone(),
            ..Report::default()
        };
        for (from, to) in [
            ("router_p50", "router_added_p50"),
            ("router_p99", "router_added_p99"),
            ("box_cpu_gib", "box_cpu_gib_extra"),
        ] {
            let Some(section) = self.sections.get(from).copied() else {
                continue;
            };
            let direct = self.values(from, "direct");
            for target in self.columns.get(&section).into_iter().flatten() {
                if target == "direct" {
                    continue;
                }
                for (rep, value) in self.values(from, target) {
                    if let Some((_, base)) = direct.iter().find(|(other, _)| *other == rep) {
                        report.record(section, to, target, rep, value - base);
                    }
                }
            }
        }
        report
    }

    /// The cell of `key` for `target`: its median, and its ratio to direct.
    fn cell(&self, measure: &Measure, target: &str) -> String {
        let Some(value) = self.median(measure.key, target) else {
            return "–".to_owned();
        };
        let mut cell = number(value);
        if measure.compare == Compare::Ratio
            && target != "direct"
            && let Some(ratio) = self.ratio(measure.key, target)
        {
            let _ = write!(cell, " ({ratio:.2}×)");
        }
        cell
    }

    fn tables(&self, markdown: bool) -> String {
        let report = self.derived();
        let mut text = String::new();
        for (section, columns) in &report.columns {
            let mut rows: Vec<Vec<String>> = Vec::new();
            let mut header = vec!["measure".to_owned(), "unit".to_owned()];
            header.extend(columns.iter().cloned());
            header.push("target".to_owned());
            rows.push(header);
            for measure in MEASURES {
                if report.sections.get(measure.key) != Some(section) {
                    continue;
                }
                let mut row = vec![measure.title.to_owned(), measure.unit.to_owned()];
                row.extend(columns.iter().map(|target| report.cell(measure, target)));
                row.push(measure.target.to_owned());
                rows.push(row);
            }
            if markdown {
                let _ = writeln!(text, "### {}\n", section.title());
                for (index, row) in rows.iter().enumerate() {
                    let _ = writeln!(text, "| {} |", row.join(" | "));
                    if index == 0 {
                        let _ = writeln!(text, "|{}", "---|".repeat(row.len()));
                    }
                }
                text.push('\n');
            } else {
                let _ = writeln!(text, "\n{}", section.title());
                let widths: Vec<usize> = (0..rows[0].len())
                    .map(|column| {
                        rows.iter()
                            .map(|row| row[column].chars().count())
                            .max()
                            .unwrap_or(0)
                    })
                    .collect();
                for row in &rows {
                    let cells: Vec<String> = row
                        .iter()
                        .zip(&widths)
                        .map(|(cell, width)| format!("{cell:<width$}"))
                        .collect();
                    let _ = writeln!(text, "  {}", cells.join("  ").trim_end());
                }
            }
        }
        text
    }

    /// The table for the terminal.
    pub fn table(&self) -> String {
        let mut text = self.tables(false);
        text.push_str("\nRSS after the load:\n");
        text.push_str(&self.breakdown_text());
        for (peer, row, why) in &self.incomplete {
            let _ = writeln!(text, "{peer}: {row} not completed: {why}");
        }
        if self.smoke {
            text.push_str(
                "\n(smoke run: every target once, a few requests each; the figures mean nothing)\n",
            );
        }
        text
    }

    /// docs/BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut text = String::from("# Benchmarks\n\n");
        text.push_str(
            "Written by `cargo xtask bench` (bench/, `enforcer-bench run`); do not edit by hand. \
             Targets are DESIGN.md §10's. Every figure is the median of the repetitions; a ratio is \
             the median of each repetition's ratio to direct, the targets interleaved within each \
             repetition.\n\n",
        );
        let _ = writeln!(text, "## Machine\n\n{}\n", machine());
        text.push_str(METHOD);
        let _ = writeln!(
            text,
            "- `enforcer attach RSS after the load` is read {} s after a 32-client tunnel load on that daemon ended.\n",
            self.settle.as_secs()
        );
        text.push_str("## Peers\n\n");
        for peer in &self.peers {
            let _ = writeln!(text, "- {peer}: measured.");
        }
        for (name, why) in &self.missing {
            let _ = writeln!(text, "- {name}: missing — {why}.");
        }
        for (peer, row, why) in &self.incomplete {
            let _ = writeln!(
                text,
                "- {peer}: {row} not completed in one repetition — {why}."
            );
        }
        text.push_str("\n## Results\n\n![ratios to direct](benchmarks.svg)\n\n");
        text.push_str(&self.tables(true));
        if !self.breakdowns.is_empty() {
            text.push_str("What the RSS after the load is made of (`/proc/PID/smaps`, the five largest mappings; the binary's pages are its code and read-only data as mapped from the page cache):\n\n");
            text.push_str(&self.breakdown_text());
        }
        text
    }

    /// A bar chart of every ratio measure: one bar per target, 1.0 marked.
    pub fn svg(&self) -> String {
        let report = self.derived();
        let mut bars: Vec<(String, String, f64)> = Vec::new();
        for measure in MEASURES
            .iter()
            .filter(|measure| measure.compare == Compare::Ratio)
        {
            let Some(section) = report.sections.get(measure.key) else {
                continue;
            };
            for target in report.columns.get(section).into_iter().flatten() {
                if target == "direct" {
                    continue;
                }
                if let Some(ratio) = report.ratio(measure.key, target) {
                    bars.push((measure.title.trim().to_owned(), target.clone(), ratio));
                }
            }
        }
        let (left, width, row) = (420.0, 360.0, 22.0);
        let scale = width / bars.iter().map(|bar| bar.2).fold(1.2_f64, f64::max);
        let height = row * bars.len() as f64 + 60.0;
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"10\" y=\"20\" font-size=\"14\">Throughput as a ratio of direct (higher is better)</text>\n",
            left + width + 80.0
        );
        for (index, (title, target, ratio)) in bars.iter().enumerate() {
            let y = 40.0 + row * index as f64;
            let _ = writeln!(
                svg,
                "<text x=\"10\" y=\"{:.1}\">{} — {}</text><rect x=\"{left}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\">{ratio:.2}×</text>",
                y + 14.0,
                escape(title),
                escape(target),
                ratio * scale,
                row - 6.0,
                if target.starts_with("enforcer") {
                    "#c0392b"
                } else {
                    "#7f8c8d"
                },
                left + ratio * scale + 4.0,
                y + 14.0,
            );
        }
        let one = left + scale;
        let _ = writeln!(
            svg,
            "<line x1=\"{one:.1}\" y1=\"30\" x2=\"{one:.1}\" y2=\"{:.1}\" stroke=\"black\" stroke-dasharray=\"4 3\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\">direct = 1.0</text>\n</svg>",
            height - 20.0,
            one - 30.0,
            height - 6.0
        );
        svg
    }
}

const METHOD: &str = "## Method\n\n\
- Everything runs on loopback in a mount namespace of the bench's own, whose /etc/hosts names the upstream \
  (`api.anthropic.com`, the name the embedded default pack allows, stood in by `127.0.60.10:443` with a test CA) \
  and whose resolv.conf names a resolver nobody runs. The enforcer daemons run the embedded default pack with \
  `--resolve` pinning that name and `--extra-ca` trusting the CA.\n\
- The upstream is the bench's own HTTPS server (rustls, HTTP/1.1, `TCP_NODELAY`). The CONNECT load generator is the \
  bench's own Rust client (tokio, rustls, session resumption off: a full handshake per tunnel); `direct` is its ceiling. \
  The router load is wrk (a small non-streamed POST, keep-alive); the SSE delay is the bench's client reading events the \
  upstream stamps with the time it wrote them, 5 ms apart. `RSS with 1,000 streams` is the peak while 1,000 streamed \
  requests are open at once (20 events 250 ms apart each).\n\
- The router peers: nginx as a reverse proxy (buffering off, keep-alive and verified TLS to the upstream); \
  claude-code-router (`cli.js start`, one provider with the `Anthropic` transformer) and LiteLLM's proxy (one worker, one \
  model), both installed by `cargo xtask setup --bench` and started with a cleared environment and the bench CA.\n\
- The enforcer's load generators run inside the enforced cgroup (the kernel programs' per-connection and per-packet cost is \
  in every enforcer row); direct and the peers' load run in a sibling cgroup with no programs. `enforcer redirect` is the \
  client connecting straight to the upstream's address, redirected by the kernel to the transparent listener.\n\
- CPU is user + system time from /proc (the proxy, the upstream) and from the waited load process's rusage (the client); \
  RSS is `VmRSS`, sampled every 50 ms while a load runs (the peak is shown). `load generator's CPU` near 2 cores means the \
  row is bound by the client on this 2-core machine, not by the target.\n\
- `connect()` is timed in a loop in a process of that cgroup (UDP to a loopback socket of its own, so no handshake: a new socket each time, and one socket connected again and again), in \
  the enforced cgroup and in the sibling without programs, alternating which goes first.\n";

/// What machine this is: CPU model, cores, memory, kernel.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or_else(
            || "?".to_owned(),
            |kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0),
        );
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, {memory}, Linux {}", kernel.trim())
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[middle - 1] + values[middle]) / 2.0
    } else {
        values[middle]
    })
}

/// Three significant digits, thousands grouped.
fn number(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude >= 1000.0 {
        let rounded = value.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut grouped = String::new();
        for (index, digit) in digits.chars().enumerate() {
            if index > 0 && (digits.len() - index).is_multiple_of(3) {
                grouped.push(',');
            }
            grouped.push(digit);
        }
        if rounded < 0 {
            grouped.insert(0, '-');
        }
        grouped
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else if magnitude >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_is_the_median_of_each_repetitions_ratio() {
        let mut report = Report::new(false);
        for (rep, direct, target) in [(0, 100.0, 50.0), (1, 200.0, 180.0), (2, 100.0, 70.0)] {
            report.record(Section::Connect, "tunnels_1", "direct", rep, direct);
            report.record(Section::Connect, "tunnels_1", "squid", rep, target);
        }
        assert_eq!(report.median("tunnels_1", "squid"), Some(70.0));
        assert_eq!(report.ratio("tunnels_1", "squid"), Some(0.7));
        let table = report.table();
        assert!(table.contains("70.0 (0.70×)"), "{table}");
    }

    #[test]
    fn added_latency_is_per_repetition_over_direct() {
        let mut report = Report::new(false);
        report.record(Section::Router, "router_p50", "direct", 0, 0.2);
        report.record(Section::Router, "router_p50", "enforcer", 0, 0.5);
        let derived = report.derived();
        let added = derived.median("router_added_p50", "enforcer").unwrap();
        assert!((added - 0.3).abs() < 1e-9, "{added}");
        assert_eq!(derived.median("router_added_p50", "direct"), None);
    }

    #[test]
    fn numbers_keep_three_digits() {
        assert_eq!(number(1681.4), "1,681");
        assert_eq!(number(112_345.0), "112,345");
        assert_eq!(number(0.1234), "0.123");
        assert_eq!(number(12.345), "12.3");
    }

    #[test]
    fn the_chart_names_every_ratio_bar() {
        let mut report = Report::new(false);
        report.record(Section::Connect, "bulk_1", "direct", 0, 100.0);
        report.record(Section::Connect, "bulk_1", "enforcer proxy-only", 0, 40.0);
        let svg = report.svg();
        assert!(
            svg.contains("1 TLS stream bulk — enforcer proxy-only"),
            "{svg}"
        );
        assert!(svg.contains("0.40×"), "{svg}");
    }
}
