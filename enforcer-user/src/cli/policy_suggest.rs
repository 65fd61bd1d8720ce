//! `enforcer policy suggest`: the pack entries that would have let the
//! denied attempts in the audit log through, and (`--apply`) an unsigned
//! copy of a pack with them added.
//!
//! [`suggest`] is the decision, a pure function of (deny records, pack,
//! options, this host's addresses); [`remedy`] says what kind of entry, if
//! any, opens one deny, and is shared with `enforcer run`'s summary. The
//! command's I/O (the audit database, pack files, the cgroup tree) is
//! [`run`]'s; rendering is [`render_text`] / [`render_json`].
//!
//! The rules (docs/DECISIONS.md, "Policy suggestions"):
//! * proxy `not_allowlisted` / `expired` (CONNECT or transparent) ->
//!   `fronting.allowlist` `host:port`;
//! * DNS filter `dns_refused` -> `fronting.allowlist` `name:443`, or the
//!   port a proxy deny of the same name used (merged into that entry);
//! * kernel `destination_not_allowed` / `direct_entry_expired` to an
//!   address and TCP port -> `egress.direct` `addr:port`, only while
//!   `blockIPLiteral` is off (with it on, an address is not suggested: the
//!   operator writes the server's name, which the kernel deny cannot know);
//! * never: loopback, unspecified, link-local, metadata, multicast and this
//!   host's own addresses, metadata and `localhost` names, IP-literal
//!   allowlist hosts while `blockIPLiteral`, what the pack already allows,
//!   and denies an entry would not fix (SNI mismatch, ECH, plain HTTP,
//!   sizes, timeouts, router refusals...): those are listed as not
//!   suggested, with the reason.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use enforcer::{
    audit::{AuditRecord, Decision, EventFilter, Reason, Source},
    daemon::paths::DEFAULT_STATE_DIR,
    kernel::CgroupMount,
    policy_source::loader::CACHE_PACK,
};
use nix::sys::socket::SockProtocol;
use policy::{
    Host, HostPort, IpLiteral, Origin, Policy, Snapshot,
    edit::{self, NewEntry},
    normalize_host,
    tools::lint_bytes,
};
use proxy::net::addr_class::{AddressClass, LocalAddrs, classify};
use serde_json::json;

use super::control::read_audit;
use super::daemon_flags::{Since, parse_duration_flag, parse_since_flag};
use super::run_summary::shell_word;

// === the command ===

/// Suggest the allowlist and direct entries that would have let denied
/// attempts through (from the audit log), each with a TTL; `--apply` writes
/// an unsigned copy of a pack with them added, for you to review and sign.
///
/// The pack the suggestions are checked against: --policy, else --apply's,
/// else the daemon's cached pack in --state-dir, else the embedded fallback.
///
/// Example: sudo enforcer policy suggest --since 10m --cgroup agents.slice --apply pack.json
#[derive(Debug, clap::Args)]
pub struct SuggestArgs {
    /// Only denies newer than this (30s, 5m, 1h, 7d), or since this RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since_flag, default_value = "1h")]
    since: Since,
    /// Only denies of this cgroup: its id (exactly, as `enforcer events
    /// --cgroup` and `enforcer run`'s summary), or its name (as `attach
    /// --cgroup`: it and every cgroup below it that still exists).
    #[arg(long, value_name = "ID|NAME")]
    cgroup: Option<String>,
    /// The daemon's state directory (audit.db, the cached pack).
    #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Check the suggestions against this pack file (not with --apply,
    /// which checks against the pack it edits).
    #[arg(long, value_name = "PACK", conflicts_with = "apply")]
    policy: Option<PathBuf>,
    /// Write a copy of PACK with the suggested entries added (version
    /// raised, issuedAt removed, unsigned) to --out.
    #[arg(long, value_name = "PACK")]
    apply: Option<PathBuf>,
    /// Where --apply writes (default: PACK's name with `.suggested.json`).
    #[arg(long, value_name = "FILE", requires = "apply")]
    out: Option<PathBuf>,
    /// Let --apply replace an existing --out file (never PACK itself).
    #[arg(long, requires = "apply")]
    force: bool,
    /// TTL of each suggested entry (30m, 1h, 7d).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration_flag, default_value = "1h")]
    ttl: Duration,
    /// One JSON object: {"allowlist": [...], "direct": [...], "notSuggested": [...], ...}.
    #[arg(long)]
    json: bool,
}

/// Runs `enforcer policy suggest`.
pub fn run(args: SuggestArgs) -> anyhow::Result<()> {
    let now = SystemTime::now();
    if args.ttl.as_secs() == 0 {
        anyhow::bail!("--ttl must be at least 1s");
    }
    let pack = choose_pack(&args, now)?;
    eprintln!("enforcer: suggestions checked against {}", pack.described);
    let scope = match &args.cgroup {
        Some(text) => Some(CgroupScope::resolve(text)?),
        None => None,
    };
    let filter = EventFilter {
        since: Some(args.since.resolve(now)),
        decision: Some(Decision::Deny),
        cgroup_id: match &scope {
            Some(CgroupScope::Id(id)) => Some(*id),
            _ => None,
        },
        ..EventFilter::default()
    };
    let records: Vec<AuditRecord> = read_audit(&args.state_dir, &filter)?
        .into_iter()
        .filter(|record| scope.as_ref().is_none_or(|scope| scope.contains(record)))
        .collect();
    // Without this host's addresses, its own could be suggested: refuse.
    let local = LocalAddrs::from_system()
        .context("reading this host's addresses (never suggested as destinations)")?;
    let options = Options {
        ttl: policy::format_duration(args.ttl),
        now,
    };
    let suggestions = suggest(&records, &pack.policy, &options, &local);
    let names = cgroup_names(&records);
    let written = match (&args.apply, &pack.apply_bytes) {
        (Some(path), Some(bytes)) if suggestions.has_entries() => Some(apply(
            path,
            bytes,
            args.out.as_deref(),
            args.force,
            &suggestions,
            now,
        )?),
        _ => None,
    };
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let mut value = render_json(&suggestions, &names);
        value["checkedAgainst"] = json!(pack.described);
        value["written"] = written.as_ref().map_or(
            serde_json::Value::Null,
            |w| json!({"path": w.path, "version": w.version, "sign": w.sign_command}),
        );
        writeln!(stdout, "{value}").context("writing to stdout")?;
    } else {
        write!(stdout, "{}", render_text(&suggestions, &names)).context("writing to stdout")?;
    }
    match (&written, &args.apply) {
        (Some(w), _) => {
            let note = format!(
                "enforcer: wrote {} (unsigned; version {} -> {}{})\n  review it, then sign it: {}",
                w.path.display(),
                w.old_version,
                w.version,
                if w.removed_issued_at {
                    ", issuedAt removed so sign stamps the signing time"
                } else {
                    ""
                },
                w.sign_command
            );
            if args.json {
                eprintln!("{note}");
            } else {
                writeln!(stdout, "\n{note}").context("writing to stdout")?;
            }
        }
        (None, Some(path)) => eprintln!(
            "enforcer: nothing to add to {}; no file written",
            path.display()
        ),
        (None, None) => {}
    }
    Ok(())
}

/// The pack the suggestions are checked against.
struct ChosenPack {
    policy: Arc<Policy>,
    /// Which pack, for stderr and `checkedAgainst`.
    described: String,
    /// `--apply`'s bytes, read once and validated.
    apply_bytes: Option<Vec<u8>>,
}

/// Reads and validates a pack file as `enforcer policy lint` does.
fn read_pack(path: &Path, now: SystemTime) -> anyhow::Result<(Vec<u8>, Policy)> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let report = lint_bytes(&bytes, now)
        .with_context(|| format!("{} is not a valid policy pack", path.display()))?;
    Ok((bytes, report.policy))
}

/// --policy, else --apply's pack, else the daemon's cached pack, else the
/// embedded fallback.
fn choose_pack(args: &SuggestArgs, now: SystemTime) -> anyhow::Result<ChosenPack> {
    let apply = match &args.apply {
        Some(path) => Some((path, read_pack(path, now)?)),
        None => None,
    };
    let apply_bytes = apply.as_ref().map(|(_, (bytes, _))| bytes.clone());
    let file = |path: &Path, policy: Policy| ChosenPack {
        described: format!("{} (version {})", path.display(), policy.version),
        policy: Arc::new(policy),
        apply_bytes: apply_bytes.clone(),
    };
    if let Some(path) = &args.policy {
        return Ok(file(path, read_pack(path, now)?.1));
    }
    if let Some((path, (_, policy))) = apply {
        return Ok(file(path, policy));
    }
    let cached = args.state_dir.join(CACHE_PACK);
    if cached.exists() {
        match read_pack(&cached, now) {
            Ok((_, policy)) => {
                return Ok(ChosenPack {
                    described: format!(
                        "the daemon's cached pack {} (version {}; signature not checked here)",
                        cached.display(),
                        policy.version
                    ),
                    policy: Arc::new(policy),
                    apply_bytes: None,
                });
            }
            Err(error) => eprintln!("enforcer: warning: ignoring the cached pack: {error:#}"),
        }
    }
    let policy = policy::fallback_policy().context("reading the embedded fallback pack")?;
    Ok(ChosenPack {
        described: format!(
            "the embedded fallback pack (no --policy or --apply, no cached pack in {})",
            args.state_dir.display()
        ),
        policy,
        apply_bytes: None,
    })
}

/// `--cgroup`: an id, or a cgroup and what is below it.
enum CgroupScope {
    /// Exactly this id (as `enforcer events --cgroup`).
    Id(u64),
    /// These ids: a named cgroup and its descendants.
    Tree(HashSet<u64>),
}

impl CgroupScope {
    fn resolve(text: &str) -> anyhow::Result<Self> {
        if let Ok(id) = text.parse::<u64>() {
            return Ok(Self::Id(id));
        }
        let mount = CgroupMount::find()?;
        let cgroup = mount
            .resolve(text)
            .with_context(|| format!("--cgroup {text}"))?;
        if !cgroup.absolute.is_dir() {
            anyhow::bail!(
                "--cgroup {text}: no such cgroup ({} does not exist). Audit rows carry cgroup ids; a \
                 finished `enforcer run` removed its cgroup, so pass the id its summary and \
                 `enforcer events` show: --cgroup ID",
                cgroup.absolute.display()
            );
        }
        let mut ids = HashSet::from([cgroup.id()?]);
        let mut stack = vec![cgroup.absolute];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let path = entry.path();
                    if let Ok(metadata) = fs::metadata(&path) {
                        ids.insert(metadata.ino());
                    }
                    stack.push(path);
                }
            }
        }
        Ok(Self::Tree(ids))
    }

    fn contains(&self, record: &AuditRecord) -> bool {
        match (self, record.cgroup_id) {
            (Self::Id(id), Some(found)) => *id == found,
            (Self::Tree(ids), Some(found)) => ids.contains(&found),
            (_, None) => false,
        }
    }
}

/// Names of the records' cgroups that still exist (relative to the mount).
fn cgroup_names(records: &[AuditRecord]) -> BTreeMap<u64, String> {
    let Ok(mount) = CgroupMount::find() else {
        return BTreeMap::new();
    };
    let ids: BTreeSet<u64> = records.iter().filter_map(|r| r.cgroup_id).collect();
    ids.into_iter()
        .filter_map(|id| {
            let path = mount.find_by_id(id)?;
            let relative = path.strip_prefix(&mount.path).ok()?.display().to_string();
            Some((id, relative))
        })
        .collect()
}

/// What `--apply` wrote.
#[derive(Debug)]
struct Written {
    path: PathBuf,
    old_version: String,
    version: String,
    removed_issued_at: bool,
    sign_command: String,
}

/// `PACK` without `.json`, plus `.suggested.json`, next to it.
fn default_out(pack: &Path) -> PathBuf {
    let name = pack
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "pack".to_owned());
    let stem = name.strip_suffix(".json").unwrap_or(&name);
    pack.with_file_name(format!("{stem}.suggested.json"))
}

/// Writes PACK plus the suggested entries to the output file: validated
/// first (as `lint`), never over PACK, over an existing file only with
/// `force`, never signed.
fn apply(
    pack: &Path,
    bytes: &[u8],
    out: Option<&Path>,
    force: bool,
    suggestions: &Suggestions,
    now: SystemTime,
) -> anyhow::Result<Written> {
    let out = out.map_or_else(|| default_out(pack), Path::to_owned);
    if out.exists() {
        let same = match (fs::canonicalize(pack), fs::canonicalize(&out)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            anyhow::bail!(
                "--out {} is the pack itself; suggest never overwrites PACK: choose another --out",
                out.display()
            );
        }
        if !force {
            anyhow::bail!(
                "{} already exists; pass --force to replace it, or choose another --out",
                out.display()
            );
        }
    }
    let entries = |list: &[Suggested]| -> Vec<NewEntry> {
        list.iter()
            .map(|s| NewEntry {
                hostport: s.hostport.clone(),
                ttl: s.ttl.clone(),
            })
            .collect()
    };
    let edited = edit::add_entries(
        bytes,
        &entries(&suggestions.allowlist),
        &entries(&suggestions.direct),
    )
    .with_context(|| format!("adding the suggestions to {}", pack.display()))?;
    lint_bytes(&edited.bytes, now).with_context(|| {
        format!(
            "{} with the suggestions would not validate; nothing written",
            pack.display()
        )
    })?;
    if force {
        policy::tools::write_atomic(&out, &edited.bytes)
    } else {
        // create_new: a file that appeared since the check is not replaced.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&out)
            .and_then(|mut file| {
                file.write_all(&edited.bytes)?;
                file.sync_all()
            })
    }
    .with_context(|| format!("writing {}", out.display()))?;
    Ok(Written {
        sign_command: format!(
            "enforcer policy sign {} --key KEY",
            shell_word(&out.display().to_string())
        ),
        path: out,
        old_version: edited.old_version,
        version: edited.new_version,
        removed_issued_at: edited.removed_issued_at,
    })
}

// === the decision ===

/// What kind of entry would open one deny.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// A `fronting.allowlist` entry for the record's host and port.
    Allowlist,
    /// A `fronting.allowlist` entry for the DNS name the filter refused.
    DnsName,
    /// An `egress.direct` entry for the record's address and port.
    Direct,
    /// No entry: why not.
    None(String),
}

/// What would open a deny of `source` for `reason`, from those two alone
/// (`enforcer run`'s summary has no more); [`remedy`] refines it with the
/// record's details.
pub fn remedy_for(source: Source, reason: &str) -> Remedy {
    let reason_is = |r: Reason| reason == r.as_str();
    match source {
        Source::Proxy if reason_is(Reason::NotAllowlisted) || reason_is(Reason::Expired) => {
            Remedy::Allowlist
        }
        Source::Proxy if reason_is(Reason::DnsRefused) => Remedy::DnsName,
        // The command went around the proxy: only a direct kernel entry opens that.
        Source::Kernel if reason_is(Reason::Destination) || reason_is(Reason::DirectExpired) => {
            Remedy::Direct
        }
        _ => Remedy::None(why_not(source, reason)),
    }
}

/// Why a deny of `source` for `reason` is not something an entry fixes.
fn why_not(source: Source, reason: &str) -> String {
    let known = Reason::from_name(reason);
    let specific = match known {
        Some(Reason::SniMismatch) => {
            Some("the TLS server name differed from the CONNECT host (domain fronting)")
        }
        Some(Reason::Ech) => Some(
            "an encrypted ClientHello hides the real server name (only fronting.allowECH passes it)",
        ),
        Some(Reason::PlainHttpDenied) => {
            Some("plain HTTP needs allowPlainHTTP on an entry, which suggest never adds")
        }
        Some(Reason::IpLiteral) => {
            Some("an IP-literal host, refused while fronting.blockIPLiteral is true")
        }
        Some(Reason::ForbiddenAddress) => Some(
            "the name resolved only to addresses the proxy never dials (loopback, link-local, metadata, or private outside allowPrivateRanges)",
        ),
        Some(Reason::LoopbackPort) => Some("loopback: a port no process of the cgroup listens on"),
        Some(Reason::Dns) => {
            Some("DNS to another resolver: DNS goes only to the enforcer's filter")
        }
        Some(Reason::UnixSocket) => Some("a unix socket (egress.unix patterns are not suggested)"),
        Some(Reason::ClientNotEnforced) => {
            Some("the client is outside every enforced cgroup; enforce it (enforcer run) instead")
        }
        _ => None,
    };
    if let Some(text) = specific {
        return text.to_owned();
    }
    let explain = known.map_or("an unknown reason", Reason::explain);
    match source {
        Source::Router => {
            format!("{explain} (a lane-router refusal: routing and providers, not egress)")
        }
        _ => format!("{explain}; no allow entry changes that"),
    }
}

/// What would open `record`: [`remedy_for`], and no entry for a plain-HTTP
/// proxy request (it would need allowPlainHTTP) or a UDP kernel deny
/// (direct entries open TCP).
pub fn remedy(record: &AuditRecord) -> Remedy {
    let detail: Option<serde_json::Value> = record
        .detail
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok());
    let detail_is =
        |key: &str, value: serde_json::Value| detail.as_ref().is_some_and(|d| d[key] == value);
    match remedy_for(record.source, &record.reason) {
        Remedy::Allowlist if detail_is("kind", json!("plain_http")) => Remedy::None(
            "a plain-HTTP request: it needs allowPlainHTTP on an entry, which suggest never adds"
                .to_owned(),
        ),
        Remedy::Direct if detail_is("protocol", json!(SockProtocol::Udp as i32)) => {
            Remedy::None("UDP: direct entries open TCP only".to_owned())
        }
        // Only a question for a server's addresses names one to connect to.
        Remedy::DnsName => {
            let arpa = record.host.as_deref().is_some_and(|host| {
                host.trim_end_matches('.')
                    .to_ascii_lowercase()
                    .ends_with(".arpa")
            });
            match detail.as_ref().and_then(|d| d["dns_type"].as_str()) {
                Some(kind) if kind != "A" && kind != "AAAA" => Remedy::None(format!(
                    "a {kind} query: only names asked for addresses (A/AAAA) are suggested"
                )),
                _ if arpa => Remedy::None(
                    "a reverse-lookup or resolver-discovery name (.arpa), not a server".to_owned(),
                ),
                _ => Remedy::DnsName,
            }
        }
        other => other,
    }
}

/// Settings of one suggestion run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// TTL written into every suggested entry (short form, `1h`).
    pub ttl: String,
    /// Now: which pack entries are live.
    pub now: SystemTime,
}

/// Who was denied: command name and cgroup id.
pub type Process = (String, Option<u64>);

/// One suggested entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggested {
    /// `host:port` (`[v6]:port`), as it goes into the pack.
    pub hostport: String,
    /// Its TTL.
    pub ttl: String,
    /// Denied attempts it would have let through.
    pub attempts: u64,
    /// Their deny reasons.
    pub reasons: BTreeSet<String>,
    /// Attempts by process.
    pub processes: BTreeMap<Process, u64>,
}

/// A destination no entry is suggested for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSuggested {
    /// `host:port`, an address, a unix path or `(unknown)`.
    pub destination: String,
    /// Why not.
    pub reason: String,
    /// The deny reasons seen.
    pub denied: BTreeSet<String>,
    /// Denied attempts.
    pub attempts: u64,
}

/// The suggestions of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suggestions {
    /// `fronting.allowlist` entries, grouped by their main process.
    pub allowlist: Vec<Suggested>,
    /// `egress.direct` entries, likewise.
    pub direct: Vec<Suggested>,
    /// What is not suggested, and why.
    pub not_suggested: Vec<NotSuggested>,
    /// Deny records considered.
    pub denies: u64,
}

impl Suggestions {
    /// Whether any entry is suggested.
    pub fn has_entries(&self) -> bool {
        !self.allowlist.is_empty() || !self.direct.is_empty()
    }
}

/// Names that are never suggested: cloud metadata services and loopback.
const FORBIDDEN_NAMES: &[&str] = &[
    "localhost",
    "metadata",
    "metadata.google.internal",
    "metadata.goog",
    "instance-data",
    "instance-data.ec2.internal",
    "metadata.azure.internal",
    "metadata.tencentyun.com",
];

/// Address classes never opened by an entry (the proxy never dials them either).
fn forbidden_class(class: AddressClass) -> bool {
    matches!(
        class,
        AddressClass::Loopback
            | AddressClass::Unspecified
            | AddressClass::Metadata
            | AddressClass::LinkLocal
            | AddressClass::Multicast
            | AddressClass::ThisHost
    )
}

fn class_text(class: AddressClass) -> String {
    format!(
        "a {} address, which no entry may open",
        class.as_str().replace('_', "-")
    )
}

/// Why `host` may never be suggested, if it may not.
fn forbidden_host(
    host: &Host,
    policy: &Policy,
    local: &LocalAddrs,
    allowlist: bool,
) -> Option<String> {
    match host {
        Host::Ip(literal) => {
            let class = classify(literal.canonical(), local);
            if forbidden_class(class) {
                Some(class_text(class))
            } else if policy.fronting.block_ip_literal {
                Some(if allowlist {
                    "an IP literal, which the allowlist may not name while fronting.blockIPLiteral is true"
                        .to_owned()
                } else {
                    "an IP literal, never suggested while fronting.blockIPLiteral is true (a direct entry by the server's name opens what the DNS filter answers for it)"
                        .to_owned()
                })
            } else {
                None
            }
        }
        Host::Domain(name) => {
            let name = name.as_str();
            let metadata = FORBIDDEN_NAMES.contains(&name) || name.ends_with(".localhost");
            metadata
                .then(|| "a loopback or cloud-metadata name, which is never suggested".to_owned())
        }
    }
}

/// `host:port` of a record as the run summary shows it.
fn destination(record: &AuditRecord) -> String {
    match (&record.host, record.port) {
        (Some(host), Some(port)) if host.contains(':') => format!("[{host}]:{port}"),
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.clone(),
        (None, _) => "(unknown)".to_owned(),
    }
}

/// Accumulates entries and refusals.
#[derive(Default)]
struct Tally {
    /// By `host:port` text (normalised, so one per destination).
    allowlist: BTreeMap<String, (HostPort, Suggested)>,
    direct: BTreeMap<String, (HostPort, Suggested)>,
    not: BTreeMap<(String, String), NotSuggested>,
}

impl Tally {
    fn refuse(&mut self, destination: String, why: String, record: &AuditRecord) {
        let entry = self
            .not
            .entry((destination.clone(), why.clone()))
            .or_insert_with(|| NotSuggested {
                destination,
                reason: why,
                denied: BTreeSet::new(),
                attempts: 0,
            });
        entry.attempts += 1;
        entry.denied.insert(record.reason.clone());
    }
}

fn add(
    map: &mut BTreeMap<String, (HostPort, Suggested)>,
    target: HostPort,
    ttl: &str,
    record: &AuditRecord,
) {
    let hostport = target.to_string();
    let (_, entry) = map.entry(hostport.clone()).or_insert_with(|| {
        let suggested = Suggested {
            hostport,
            ttl: ttl.to_owned(),
            attempts: 0,
            reasons: BTreeSet::new(),
            processes: BTreeMap::new(),
        };
        (target, suggested)
    });
    entry.attempts += 1;
    entry.reasons.insert(record.reason.clone());
    let process = (
        record
            .comm
            .clone()
            .unwrap_or_else(|| "(unknown)".to_owned()),
        record.cgroup_id,
    );
    *entry.processes.entry(process).or_insert(0) += 1;
}

/// The entries that would have let `records`' denies through under
/// `policy`, and what is not suggested and why (see the module doc).
/// Allow records and the daemon's own (control) records are ignored.
pub fn suggest(
    records: &[AuditRecord],
    policy: &Arc<Policy>,
    options: &Options,
    local: &LocalAddrs,
) -> Suggestions {
    let snapshot = Snapshot::new(
        Arc::clone(policy),
        Origin::Fallback {
            reason: "policy suggest".to_owned(),
        },
        Arc::from(Vec::new()),
        0,
    );
    let now = options.now;
    let mut tally = Tally::default();
    let mut dns: Vec<(&AuditRecord, Host)> = Vec::new();
    let mut denies = 0;
    for record in records {
        if record.decision != Decision::Deny || record.source == Source::Control {
            continue;
        }
        denies += 1;
        let shown = destination(record);
        let host = record.host.as_deref().map(normalize_host);
        match (remedy(record), host, record.port) {
            (Remedy::None(why), _, _) => tally.refuse(shown, why, record),
            (_, None, _) => tally.refuse(shown, "the record names no destination".into(), record),
            (_, Some(Err(error)), _) => {
                tally.refuse(shown, format!("not a valid host: {error}"), record)
            }
            (Remedy::DnsName, Some(Ok(host)), _) => match host {
                Host::Domain(_) => dns.push((record, host)),
                Host::Ip(_) => tally.refuse(shown, "a DNS query for an address".into(), record),
            },
            (_, Some(Ok(_)), None | Some(0)) => {
                tally.refuse(shown, "the record names no port".into(), record);
            }
            (Remedy::Allowlist, Some(Ok(host)), Some(port)) => {
                if let Some(why) = forbidden_host(&host, policy, local, true) {
                    tally.refuse(shown, why, record);
                } else if snapshot.decide(&host.to_string(), port, now).allowed {
                    tally.refuse(
                        shown,
                        "already allowed by a live fronting.allowlist entry".into(),
                        record,
                    );
                } else {
                    add(
                        &mut tally.allowlist,
                        HostPort { host, port },
                        &options.ttl,
                        record,
                    );
                }
            }
            (Remedy::Direct, Some(Ok(host)), Some(port)) => {
                // The kernel judges `::ffff:a.b.c.d` as IPv4; so does the entry.
                let host = match host {
                    Host::Ip(literal) => Host::Ip(IpLiteral {
                        addr: literal.canonical(),
                        zone: literal.zone,
                    }),
                    name => name,
                };
                let target = HostPort { host, port };
                if snapshot
                    .live_direct_rules(now)
                    .any(|rule| rule.target == target)
                {
                    tally.refuse(
                        shown,
                        "already allowed by a live egress.direct entry".into(),
                        record,
                    );
                } else if let Some(why) = forbidden_host(&target.host, policy, local, false) {
                    tally.refuse(shown, why, record);
                } else {
                    add(&mut tally.direct, target, &options.ttl, record);
                }
            }
        }
    }
    // DNS refusals: into the proxy suggestion for the same name (443's if
    // there is one, else the lowest port), else name:443.
    for (record, host) in dns {
        let shown = destination(record);
        let existing = tally
            .allowlist
            .values()
            .map(|(target, _)| target)
            .filter(|target| target.host == host)
            .min_by_key(|target| (target.port != policy::DEFAULT_PORT, target.port))
            .cloned();
        let target = existing.unwrap_or(HostPort {
            host,
            port: policy::DEFAULT_PORT,
        });
        if let Some(why) = forbidden_host(&target.host, policy, local, true) {
            tally.refuse(shown, why, record);
        } else if snapshot.name_allowed(&target.host.to_string(), now)
            || snapshot.is_provider_host(&target.host)
        {
            tally.refuse(
                shown,
                "the DNS filter already answers this name".into(),
                record,
            );
        } else {
            add(&mut tally.allowlist, target, &options.ttl, record);
        }
    }
    let order = |map: BTreeMap<String, (HostPort, Suggested)>| {
        let mut list: Vec<Suggested> = map.into_values().map(|(_, s)| s).collect();
        // By main process (most attempts), then destination.
        list.sort_by(|a, b| {
            main_process(a)
                .cmp(&main_process(b))
                .then(a.hostport.cmp(&b.hostport))
        });
        list
    };
    let mut not_suggested: Vec<NotSuggested> = tally.not.into_values().collect();
    not_suggested.sort_by_key(|n| std::cmp::Reverse(n.attempts));
    Suggestions {
        allowlist: order(tally.allowlist),
        direct: order(tally.direct),
        not_suggested,
        denies,
    }
}

/// The process with the most attempts (ties: by name).
fn main_process(s: &Suggested) -> Option<&Process> {
    s.processes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(process, _)| process)
}

// === rendering ===

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The entry as it goes into the pack.
fn entry_json(s: &Suggested) -> serde_json::Value {
    json!({"hostport": s.hostport, "ttl": s.ttl})
}

fn cgroup_text(id: u64, names: &BTreeMap<u64, String>) -> String {
    names.get(&id).cloned().unwrap_or_else(|| id.to_string())
}

/// The human-readable listing: one block per entry (who, how often, why),
/// then what is not suggested.
pub fn render_text(suggestions: &Suggestions, names: &BTreeMap<u64, String>) -> String {
    let mut out = String::new();
    if suggestions.denies == 0 {
        out.push_str("nothing was denied in that window; nothing to suggest\n");
        return out;
    }
    let lists = [
        ("allowlist", &suggestions.allowlist),
        ("direct", &suggestions.direct),
    ];
    for (kind, list) in lists {
        for s in list.iter() {
            let comms: BTreeSet<&str> = s.processes.keys().map(|(comm, _)| comm.as_str()).collect();
            let cgroups: BTreeSet<u64> = s.processes.keys().filter_map(|(_, id)| *id).collect();
            let cgroups = if cgroups.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = cgroups.iter().map(|id| cgroup_text(*id, names)).collect();
                format!(" (cgroup {})", list.join(", "))
            };
            let reasons: Vec<&str> = s.reasons.iter().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "# {}{cgroups}: {} denied, {}",
                comms.into_iter().collect::<Vec<_>>().join(", "),
                plural(s.attempts, "attempt", "attempts"),
                reasons.join(", ")
            );
            let _ = writeln!(out, "{kind:<10} {}", entry_json(s));
        }
    }
    if !suggestions.has_entries() {
        out.push_str("no entry to suggest\n");
    }
    if !suggestions.not_suggested.is_empty() {
        out.push_str("\n# not suggested\n");
        for n in &suggestions.not_suggested {
            let denied: Vec<&str> = n.denied.iter().map(String::as_str).collect();
            let _ = writeln!(
                out,
                "{}  {} ({}): {}",
                n.destination,
                denied.join(", "),
                plural(n.attempts, "attempt", "attempts"),
                n.reason
            );
        }
    }
    out
}

/// The JSON listing: `allowlist` and `direct` hold pack entries exactly as
/// they go into a pack, `groups` who was denied for each, `notSuggested`
/// the rest with the reason.
pub fn render_json(suggestions: &Suggestions, names: &BTreeMap<u64, String>) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = [
        ("allowlist", &suggestions.allowlist),
        ("direct", &suggestions.direct),
    ]
    .into_iter()
    .flat_map(|(kind, list)| list.iter().map(move |s| (kind, s)))
    .map(|(kind, s)| {
        let processes: Vec<serde_json::Value> = s
            .processes
            .iter()
            .map(|((comm, id), attempts)| {
                json!({
                    "comm": comm,
                    "cgroupId": id,
                    "cgroup": id.and_then(|id| names.get(&id)),
                    "attempts": attempts,
                })
            })
            .collect();
        json!({
            "entry": kind,
            "hostport": s.hostport,
            "attempts": s.attempts,
            "reasons": s.reasons,
            "processes": processes,
        })
    })
    .collect();
    json!({
        "allowlist": suggestions.allowlist.iter().map(entry_json).collect::<Vec<_>>(),
        "direct": suggestions.direct.iter().map(entry_json).collect::<Vec<_>>(),
        "notSuggested": suggestions.not_suggested.iter().map(|n| json!({
            "destination": n.destination,
            "reason": n.reason,
            "denied": n.denied,
            "attempts": n.attempts,
        })).collect::<Vec<_>>(),
        "groups": groups,
        "denies": suggestions.denies,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// 2025-10-21T00:00:00Z.
    const ISSUED: u64 = 1_761_004_800;
    const RUN: u64 = 4242;

    /// [`pack_text`] without its timed entry (`--apply` refuses to revive
    /// entries whose TTL counts from the old issuedAt).
    fn untimed_pack_text(block_ip_literal: bool) -> String {
        pack_text(block_ip_literal).replace(
            ",\n      {\"hostport\": \"short.test:443\", \"ttl\": \"1m\"}",
            "",
        )
    }

    fn pack_text(block_ip_literal: bool) -> String {
        format!(
            r#"{{
  "schema": "ccp.policy.v1",
  "version": "2025-10-21.1",
  "issuedAt": "2025-10-21T00:00:00Z",
  "ttlSeconds": 86400,
  "fronting": {{
    "blockIPLiteral": {block_ip_literal},
    "allowlist": [
      {{"hostport": "pypi.org:443"}},
      {{"hostport": "short.test:443", "ttl": "1m"}}
    ]
  }},
  "egress": {{"direct": [{{"hostport": "192.0.2.9:22"}}]}}
}}"#
        )
    }

    fn pack(block_ip_literal: bool) -> Arc<Policy> {
        Arc::new(
            lint_bytes(pack_text(block_ip_literal).as_bytes(), now())
                .unwrap()
                .policy,
        )
    }

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ISSUED + 3600)
    }

    fn options() -> Options {
        Options {
            ttl: "1h".to_owned(),
            now: now(),
        }
    }

    fn record(
        source: Source,
        reason: Reason,
        host: &str,
        port: Option<u16>,
        comm: &str,
    ) -> AuditRecord {
        let mut record = AuditRecord::new(now(), source, reason.decision(), reason);
        record.host = Some(host.to_owned());
        record.port = port;
        record.comm = Some(comm.to_owned());
        record.cgroup_id = Some(RUN);
        record
    }

    fn proxy(reason: Reason, host: &str, port: u16) -> AuditRecord {
        record(Source::Proxy, reason, host, Some(port), "npm")
    }

    fn dns(name: &str) -> AuditRecord {
        record(Source::Proxy, Reason::DnsRefused, name, None, "npm")
    }

    #[test]
    fn only_address_queries_for_server_names_are_suggested() {
        let mut txt = dns("t.test");
        txt.detail = Some(json!({"kind": "dns", "dns_type": "TXT"}).to_string());
        let mut aaaa = dns("v6.test");
        aaaa.detail = Some(json!({"kind": "dns", "dns_type": "AAAA"}).to_string());
        let s = run(&[txt, aaaa, dns("9.2.0.192.in-addr.arpa")]);
        assert_eq!(hostports(&s.allowlist), [("v6.test:443", 1)]);
        assert!(refused(&s, "t.test").contains("TXT query"));
        assert!(refused(&s, "9.2.0.192.in-addr.arpa").contains(".arpa"));
    }

    fn kernel(host: &str, port: u16) -> AuditRecord {
        let mut record = record(Source::Kernel, Reason::Destination, host, Some(port), "ssh");
        record.detail = Some(json!({"hook": "connect4", "protocol": 6}).to_string());
        record
    }

    fn run(records: &[AuditRecord]) -> Suggestions {
        suggest(records, &pack(true), &options(), &LocalAddrs::new([]))
    }

    fn hostports(list: &[Suggested]) -> Vec<(&str, u64)> {
        list.iter()
            .map(|s| (s.hostport.as_str(), s.attempts))
            .collect()
    }

    fn refused(s: &Suggestions, destination: &str) -> String {
        s.not_suggested
            .iter()
            .find(|n| n.destination == destination)
            .map(|n| n.reason.clone())
            .unwrap_or_else(|| panic!("{destination} not in {:#?}", s.not_suggested))
    }

    #[test]
    fn a_proxy_deny_not_on_the_allowlist_gets_an_allowlist_entry() {
        let records = vec![
            proxy(Reason::NotAllowlisted, "npm.denied.test", 443),
            proxy(Reason::NotAllowlisted, "NPM.denied.test.", 443),
            proxy(Reason::NotAllowlisted, "npm.denied.test", 8443),
            proxy(Reason::Expired, "short.test", 443),
        ];
        let s = run(&records);
        assert_eq!(
            hostports(&s.allowlist),
            [
                ("npm.denied.test:443", 2),
                ("npm.denied.test:8443", 1),
                ("short.test:443", 1)
            ]
        );
        assert!(s.direct.is_empty() && s.not_suggested.is_empty(), "{s:#?}");
        assert_eq!(s.allowlist[0].ttl, "1h");
        assert_eq!(
            s.allowlist[0].processes,
            BTreeMap::from([(("npm".to_owned(), Some(RUN)), 2)])
        );
        assert_eq!(
            s.allowlist[2].reasons,
            BTreeSet::from(["expired".to_owned()])
        );
    }

    #[test]
    fn a_dns_refusal_gets_name_443_or_merges_into_the_proxy_entry() {
        let alone = run(&[dns("npm.mirror.test"), dns("npm.mirror.test")]);
        assert_eq!(hostports(&alone.allowlist), [("npm.mirror.test:443", 2)]);
        assert_eq!(
            alone.allowlist[0].reasons,
            BTreeSet::from(["dns_refused".to_owned()])
        );
        // A proxy deny of the same name on another port: that port, one entry.
        let merged = run(&[
            dns("git.denied.test"),
            proxy(Reason::NotAllowlisted, "git.denied.test", 8443),
            dns("git.denied.test"),
        ]);
        assert_eq!(hostports(&merged.allowlist), [("git.denied.test:8443", 3)]);
        assert_eq!(
            merged.allowlist[0].reasons,
            BTreeSet::from(["dns_refused".to_owned(), "not_allowlisted".to_owned()])
        );
        // With 443 among the ports, 443 takes the DNS refusals.
        let both = run(&[
            proxy(Reason::NotAllowlisted, "h.test", 8443),
            proxy(Reason::NotAllowlisted, "h.test", 443),
            dns("h.test"),
        ]);
        assert_eq!(
            hostports(&both.allowlist),
            [("h.test:443", 2), ("h.test:8443", 1)]
        );
    }

    #[test]
    fn a_kernel_deny_gets_a_direct_entry_by_address_only_without_block_ip_literal() {
        let denies = [
            kernel("8.8.8.8", 22),
            kernel("8.8.8.8", 22),
            kernel("2606:4700::1", 22),
            kernel("::ffff:9.9.9.9", 2222),
        ];
        let blocked = run(&denies);
        assert!(blocked.direct.is_empty() && blocked.allowlist.is_empty());
        assert!(refused(&blocked, "8.8.8.8:22").contains("blockIPLiteral"));
        let s = suggest(&denies, &pack(false), &options(), &LocalAddrs::new([]));
        assert_eq!(
            hostports(&s.direct),
            [
                ("8.8.8.8:22", 2),
                ("9.9.9.9:2222", 1),
                ("[2606:4700::1]:22", 1)
            ]
        );
        assert!(s.allowlist.is_empty());
        // What suggest writes passes validation.
        let entries: Vec<NewEntry> = s
            .direct
            .iter()
            .map(|d| NewEntry {
                hostport: d.hostport.clone(),
                ttl: d.ttl.clone(),
            })
            .collect();
        let edited = edit::add_entries(untimed_pack_text(false).as_bytes(), &[], &entries).unwrap();
        assert_eq!(
            lint_bytes(&edited.bytes, now())
                .unwrap()
                .policy
                .egress
                .direct
                .len(),
            4
        );
    }

    #[test]
    fn what_the_pack_already_allows_is_not_suggested_again() {
        let s = run(&[
            proxy(Reason::NotAllowlisted, "pypi.org", 443),
            dns("pypi.org"),
            kernel("192.0.2.9", 22),
        ]);
        assert!(!s.has_entries(), "{s:#?}");
        assert!(refused(&s, "pypi.org:443").contains("already allowed"));
        assert!(refused(&s, "pypi.org").contains("already answers"));
        assert!(refused(&s, "192.0.2.9:22").contains("already allowed"));
    }

    #[test]
    fn loopback_metadata_link_local_and_ip_literals_are_never_suggested() {
        let mut udp = kernel("8.8.4.4", 443);
        udp.detail = Some(json!({"hook": "sendmsg4", "protocol": 17}).to_string());
        let s = run(&[
            kernel("127.0.0.1", 8080),
            kernel("169.254.169.254", 80),
            kernel("169.254.10.1", 80),
            kernel("fd00:ec2::254", 80),
            kernel("fe80::1", 22),
            kernel("0.0.0.0", 22),
            udp,
            proxy(Reason::NotAllowlisted, "metadata.google.internal", 80),
            proxy(Reason::NotAllowlisted, "api.localhost", 443),
            proxy(Reason::NotAllowlisted, "93.184.216.34", 443),
            proxy(Reason::NotAllowlisted, "127.0.0.1", 443),
            dns("localhost"),
            dns("metadata"),
        ]);
        assert!(!s.has_entries(), "{s:#?}");
        assert!(refused(&s, "127.0.0.1:8080").contains("loopback"));
        assert!(refused(&s, "169.254.169.254:80").contains("metadata"));
        assert!(refused(&s, "169.254.10.1:80").contains("link-local"));
        assert!(refused(&s, "[fd00:ec2::254]:80").contains("metadata"));
        assert!(refused(&s, "[fe80::1]:22").contains("link-local"));
        assert!(refused(&s, "0.0.0.0:22").contains("unspecified"));
        assert!(refused(&s, "8.8.4.4:443").contains("UDP"));
        assert!(refused(&s, "metadata.google.internal:80").contains("metadata"));
        assert!(refused(&s, "api.localhost:443").contains("loopback"));
        assert!(refused(&s, "93.184.216.34:443").contains("blockIPLiteral"));
        assert!(refused(&s, "127.0.0.1:443").contains("loopback"));
        assert!(refused(&s, "localhost").contains("metadata"));
        assert!(refused(&s, "metadata").contains("metadata"));
        // Without blockIPLiteral a public address may be allowlisted.
        let open = suggest(
            &[proxy(Reason::NotAllowlisted, "93.184.216.34", 443)],
            &pack(false),
            &options(),
            &LocalAddrs::new([]),
        );
        assert_eq!(hostports(&open.allowlist), [("93.184.216.34:443", 1)]);
        // This host's own addresses are like loopback.
        let own = suggest(
            &[kernel("203.0.113.50", 22)],
            &pack(true),
            &options(),
            &LocalAddrs::new(["203.0.113.50".parse().unwrap()]),
        );
        assert!(refused(&own, "203.0.113.50:22").contains("this-host"));
    }

    #[test]
    fn denies_an_entry_would_not_fix_are_listed_with_the_reason() {
        let mut plain = proxy(Reason::NotAllowlisted, "plain.test", 80);
        plain.detail = Some(json!({"kind": "plain_http"}).to_string());
        let allow = proxy(Reason::Allowlisted, "ok.test", 443);
        let control = record(
            Source::Control,
            Reason::PolicyRefused,
            "x",
            None,
            "enforcer",
        );
        let s = run(&[
            proxy(Reason::SniMismatch, "a.test", 443),
            proxy(Reason::SniMismatch, "a.test", 443),
            proxy(Reason::Ech, "b.test", 443),
            proxy(Reason::PlainHttpDenied, "c.test", 80),
            plain,
            proxy(Reason::RequestTooLarge, "d.test", 443),
            record(
                Source::Router,
                Reason::UnknownModel,
                "api.test",
                Some(443),
                "claude",
            ),
            record(
                Source::Kernel,
                Reason::LoopbackPort,
                "127.0.0.2",
                Some(9),
                "node",
            ),
            record(
                Source::Kernel,
                Reason::UnixSocket,
                "/run/nscd/socket",
                None,
                "node",
            ),
            allow,
            control,
        ]);
        assert!(!s.has_entries(), "{s:#?}");
        assert_eq!(s.denies, 9, "allows and control records are not denies");
        assert_eq!(
            s.not_suggested[0].destination, "a.test:443",
            "most attempts first"
        );
        assert_eq!(s.not_suggested[0].attempts, 2);
        assert!(refused(&s, "a.test:443").contains("domain fronting"));
        assert!(refused(&s, "b.test:443").contains("allowECH"));
        assert!(refused(&s, "c.test:80").contains("allowPlainHTTP"));
        assert!(refused(&s, "plain.test:80").contains("allowPlainHTTP"));
        assert!(refused(&s, "d.test:443").contains("no allow entry changes that"));
        assert!(refused(&s, "api.test:443").contains("lane-router"));
        assert!(refused(&s, "127.0.0.2:9").contains("loopback"));
        assert!(refused(&s, "/run/nscd/socket").contains("unix socket"));
    }

    #[test]
    fn the_run_summary_and_suggest_agree_on_what_opens_a_deny() {
        assert_eq!(
            remedy_for(Source::Proxy, "not_allowlisted"),
            Remedy::Allowlist
        );
        assert_eq!(remedy_for(Source::Proxy, "expired"), Remedy::Allowlist);
        assert_eq!(remedy_for(Source::Proxy, "dns_refused"), Remedy::DnsName);
        assert_eq!(
            remedy_for(Source::Kernel, "destination_not_allowed"),
            Remedy::Direct
        );
        assert_eq!(
            remedy_for(Source::Kernel, "direct_entry_expired"),
            Remedy::Direct
        );
        assert!(matches!(
            remedy_for(Source::Kernel, "not_allowlisted"),
            Remedy::None(_)
        ));
        assert!(matches!(
            remedy_for(Source::Router, "unknown_model"),
            Remedy::None(_)
        ));
    }

    #[test]
    fn renders_by_process_with_counts_and_reasons() {
        let mut node = proxy(Reason::NotAllowlisted, "b.test", 443);
        node.comm = Some("node".to_owned());
        let records = vec![
            proxy(Reason::NotAllowlisted, "npm.denied.test", 443),
            proxy(Reason::NotAllowlisted, "npm.denied.test", 443),
            dns("npm.denied.test"),
            node,
            kernel("8.8.8.8", 22),
            proxy(Reason::SniMismatch, "a.test", 443),
        ];
        // blockIPLiteral off: the kernel deny's address is suggested.
        let s = suggest(&records, &pack(false), &options(), &LocalAddrs::new([]));
        let names = BTreeMap::from([(RUN, "agents.slice/enforcer-run-123".to_owned())]);
        let text = render_text(&s, &names);
        assert_eq!(
            text,
            "# node (cgroup agents.slice/enforcer-run-123): 1 attempt denied, not_allowlisted\n\
             allowlist  {\"hostport\":\"b.test:443\",\"ttl\":\"1h\"}\n\
             # npm (cgroup agents.slice/enforcer-run-123): 3 attempts denied, dns_refused, not_allowlisted\n\
             allowlist  {\"hostport\":\"npm.denied.test:443\",\"ttl\":\"1h\"}\n\
             # ssh (cgroup agents.slice/enforcer-run-123): 1 attempt denied, destination_not_allowed\n\
             direct     {\"hostport\":\"8.8.8.8:22\",\"ttl\":\"1h\"}\n\
             \n\
             # not suggested\n\
             a.test:443  sni_mismatch (1 attempt): the TLS server name differed from the CONNECT host (domain fronting)\n"
        );
        let value = render_json(&s, &BTreeMap::new());
        assert_eq!(
            value["allowlist"],
            json!([
                {"hostport": "b.test:443", "ttl": "1h"},
                {"hostport": "npm.denied.test:443", "ttl": "1h"}
            ])
        );
        assert_eq!(
            value["direct"],
            json!([{"hostport": "8.8.8.8:22", "ttl": "1h"}])
        );
        assert_eq!(value["notSuggested"][0]["destination"], "a.test:443");
        assert_eq!(value["groups"][1]["attempts"], 3);
        assert_eq!(value["groups"][1]["processes"][0]["cgroupId"], RUN);
        assert_eq!(
            value["groups"][1]["processes"][0]["cgroup"],
            serde_json::Value::Null
        );
        // Nothing denied.
        let empty = run(&[]);
        assert_eq!(
            render_text(&empty, &names),
            "nothing was denied in that window; nothing to suggest\n"
        );
        assert_eq!(render_json(&empty, &names)["allowlist"], json!([]));
    }

    #[test]
    fn apply_writes_a_valid_unsigned_copy_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let pack_path = dir.path().join("pack.json");
        let bytes = untimed_pack_text(false).into_bytes();
        fs::write(&pack_path, &bytes).unwrap();
        let s = suggest(
            &[dns("npm.mirror.test"), kernel("8.8.8.8", 22)],
            &pack(false),
            &options(),
            &LocalAddrs::new([]),
        );
        let written = apply(&pack_path, &bytes, None, false, &s, now()).unwrap();
        assert_eq!(written.path, dir.path().join("pack.suggested.json"));
        assert_eq!(written.version, "2025-10-21.2");
        assert!(written.removed_issued_at);
        assert!(
            written.sign_command.starts_with("enforcer policy sign /"),
            "{}",
            written.sign_command
        );
        assert!(
            written
                .sign_command
                .ends_with("/pack.suggested.json --key KEY")
        );
        let policy = lint_bytes(&fs::read(&written.path).unwrap(), now())
            .unwrap()
            .policy;
        assert_eq!(policy.fronting.allowlist.len(), 2);
        assert_eq!(policy.egress.direct.len(), 2);
        assert_eq!(fs::read(&pack_path).unwrap(), bytes, "PACK unchanged");
        assert!(
            !dir.path().join("pack.suggested.json.sig").exists(),
            "never signed"
        );
        // Again: refused without --force, replaced with it; PACK itself never.
        let error = apply(&pack_path, &bytes, None, false, &s, now()).unwrap_err();
        assert!(error.to_string().contains("--force"), "{error:#}");
        apply(&pack_path, &bytes, None, true, &s, now()).unwrap();
        let error = apply(&pack_path, &bytes, Some(&pack_path), true, &s, now()).unwrap_err();
        assert!(
            error.to_string().contains("never overwrites PACK"),
            "{error:#}"
        );
        // A result that would not validate writes nothing.
        let out = dir.path().join("bad.json");
        let bad = Suggestions {
            allowlist: vec![Suggested {
                hostport: "*.test:443".to_owned(),
                ttl: "1y".to_owned(),
                attempts: 1,
                reasons: BTreeSet::new(),
                processes: BTreeMap::new(),
            }],
            ..Suggestions::default()
        };
        let error = apply(&pack_path, &bytes, Some(&out), false, &bad, now()).unwrap_err();
        assert!(
            format!("{error:#}").contains("would not validate"),
            "{error:#}"
        );
        assert!(!out.exists());
    }

    #[test]
    fn default_out_replaces_json_or_appends() {
        assert_eq!(
            default_out(Path::new("/p/pack.json")),
            Path::new("/p/pack.suggested.json")
        );
        assert_eq!(
            default_out(Path::new("pack")),
            Path::new("pack.suggested.json")
        );
    }
}
