//! `cargo xtask demo`: the kernel enforcing a transient cgroup.
//!
//! Makes a uniquely named cgroup, runs `enforcer attach` on it, starts a few
//! listeners outside it (on loopback and this host's own address), tries a
//! series of connections from probes inside it, prints what the kernel
//! allowed and denied, shows `enforcer status`, then detaches and removes
//! the cgroup. Nothing leaves the machine.

use std::{
    fs,
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{is_root, workspace_root};

/// One attempt made from inside the cgroup.
struct Attempt {
    what: &'static str,
    probe: Vec<String>,
    expect_allowed: bool,
}

/// Cleans up on drop, also when the demo fails half-way.
struct DemoCgroup {
    name: String,
    path: PathBuf,
    enforcer: PathBuf,
    attach: Option<Child>,
}

impl Drop for DemoCgroup {
    fn drop(&mut self) {
        if let Some(mut attach) = self.attach.take() {
            // End the attacher we started, by its pid.
            let _ = Command::new("kill").arg("-TERM").arg(attach.id().to_string()).status();
            let _ = attach.wait();
        }
        let _ = Command::new(&self.enforcer)
            .args(["detach", "--cgroup", &self.name])
            .stdout(Stdio::null())
            .status();
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.path.exists() && fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn cgroup_mount() -> anyhow::Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            (after.split_whitespace().next()? == "cgroup2")
                .then(|| before.split_whitespace().nth(4).map(PathBuf::from))
                .flatten()
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    if !is_root() {
        bail!("the demo attaches BPF programs to a cgroup and needs root: run `sudo cargo xtask demo`");
    }
    let target = workspace_root().join("target/debug");
    let enforcer = target.join("enforcer");
    let probe = target.join("enforcer-probe");
    let name = format!("enforcer-demo-{}.slice", std::process::id());
    let path = cgroup_mount()?.join(&name);

    // Stand-ins: the enforcer's proxy endpoint, and services outside the cgroup.
    let proxy = TcpListener::bind("127.0.0.1:0").context("binding the proxy stand-in")?;
    let proxy_addr = proxy.local_addr()?;
    let outside_v4 = TcpListener::bind("127.0.0.2:0").context("binding 127.0.0.2")?;
    let outside_v4_addr = outside_v4.local_addr()?;
    let outside_v6 = TcpListener::bind("[::1]:0").context("binding [::1]")?;
    let outside_v6_addr = outside_v6.local_addr()?;
    let outside_any = TcpListener::bind("0.0.0.0:0").context("binding 0.0.0.0")?;
    let host_ip = host_address();
    let udp_outside = UdpSocket::bind("127.0.0.2:0").context("binding a UDP socket")?;
    let udp_addr = udp_outside.local_addr()?;

    let mut demo = DemoCgroup {
        name: name.clone(),
        path: path.clone(),
        enforcer: enforcer.clone(),
        attach: None,
    };
    println!("== enforcer demo: cgroup {name}\n");
    let log_path = workspace_root().join("target/demo-attach.log");
    let log = fs::File::create(&log_path).context("creating the attach log")?;
    let attach = Command::new(&enforcer)
        .args(["attach", "--cgroup", &name, "--proxy-listen", &proxy_addr.to_string()])
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting enforcer attach")?;
    demo.attach = Some(attach);
    let families_enforced = wait_until_attached(&enforcer, &name)?;

    let mut attempts = vec![
        Attempt {
            what: "TCP to the enforcer's proxy endpoint",
            probe: vec!["tcp-connect".into(), proxy_addr.to_string()],
            expect_allowed: true,
        },
        Attempt {
            what: "TCP to a server the probe itself binds on loopback",
            probe: vec!["serve-self".into(), "127.0.0.1:0".into()],
            expect_allowed: true,
        },
        Attempt {
            what: "TCP to another loopback address (server outside)",
            probe: vec!["tcp-connect".into(), outside_v4_addr.to_string()],
            expect_allowed: false,
        },
        Attempt {
            what: "TCP over IPv6 (server outside)",
            probe: vec!["tcp-connect".into(), outside_v6_addr.to_string()],
            expect_allowed: false,
        },
        Attempt {
            what: "TCP to a v4-mapped IPv6 address",
            probe: vec![
                "tcp-connect".into(),
                format!("[::ffff:127.0.0.2]:{}", outside_v4_addr.port()),
            ],
            expect_allowed: false,
        },
        Attempt {
            what: "TCP Fast Open (sendto MSG_FASTOPEN)",
            probe: vec!["tcp-fastopen".into(), outside_v4_addr.to_string()],
            expect_allowed: false,
        },
        Attempt {
            what: "UDP sendto (socket outside)",
            probe: vec!["udp-sendto".into(), udp_addr.to_string()],
            expect_allowed: false,
        },
        Attempt {
            what: "DNS query to a resolver outside",
            probe: vec!["dns".into(), "127.0.0.2:53".into()],
            expect_allowed: false,
        },
        Attempt {
            what: "raw socket",
            probe: vec!["raw4".into()],
            expect_allowed: false,
        },
        Attempt {
            what: if families_enforced {
                "vsock socket (created, never connected)"
            } else {
                "vsock socket (NOT enforced here: no BPF-LSM)"
            },
            probe: vec!["vsock".into()],
            expect_allowed: !families_enforced,
        },
    ];
    if let Some(ip) = host_ip {
        attempts.insert(
            5,
            Attempt {
                what: "TCP to this host's own address",
                probe: vec![
                    "tcp-connect".into(),
                    SocketAddr::new(ip, outside_any.local_addr()?.port()).to_string(),
                ],
                expect_allowed: false,
            },
        );
    }

    println!("{:<52} {:<28} {:<8} result", "attempt from inside the cgroup", "target", "kernel");
    println!("{}", "-".repeat(110));
    let mut surprises = 0;
    for attempt in &attempts {
        let result = probe_inside(&path, &probe, &attempt.probe)?;
        let allowed = result == "ok";
        let verdict = if allowed { "allowed" } else { "denied" };
        let note = if allowed == attempt.expect_allowed { "" } else { "  <- unexpected" };
        if !note.is_empty() {
            surprises += 1;
        }
        let target = attempt.probe.get(1).cloned().unwrap_or_else(|| "-".into());
        println!("{:<52} {:<28} {:<8} {result}{note}", attempt.what, target, verdict);
    }
    println!();
    let status = Command::new(&enforcer).arg("status").output().context("enforcer status")?;
    println!("== enforcer status\n{}", String::from_utf8_lossy(&status.stdout));
    drop(demo);
    println!("== detached and removed {name}");
    println!("== what `enforcer attach` logged meanwhile:");
    print!("{}", fs::read_to_string(&log_path).unwrap_or_default());
    if surprises > 0 {
        bail!("{surprises} attempt(s) did not get the verdict the proxy-only policy gives (marked above)");
    }
    Ok(())
}

/// Waits until `status` lists the cgroup; returns whether BPF-LSM enforces
/// socket families there.
fn wait_until_attached(enforcer: &Path, name: &str) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let output = Command::new(enforcer).args(["status", "--json"]).output()?;
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let ours = status["cgroups"]
            .as_array()
            .and_then(|cgroups| cgroups.iter().find(|c| c["cgroup"] == name));
        let all_attached = ours.and_then(|c| c["hooks"].as_array()).is_some_and(|hooks| {
            hooks
                .iter()
                .filter(|hook| hook["program"] != "socket_create")
                .all(|hook| hook["attached"] == true)
        });
        if let (Some(cgroup), true) = (ours, all_attached) {
            return Ok(cgroup["families_enforced"] == true);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("enforcer attach did not attach to {name} within 30 s")
}

/// Runs enforcer-probe inside the cgroup: a shell moves itself in, then execs the probe.
fn probe_inside(cgroup: &Path, probe: &Path, args: &[String]) -> anyhow::Result<String> {
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec \"$0\" \"$@\"",
        cgroup.display()
    );
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(probe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running enforcer-probe")?;
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if line.is_empty() {
        bail!(
            "enforcer-probe {args:?} printed nothing: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(line)
}

fn host_address() -> Option<std::net::IpAddr> {
    let output = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout).lines().find_map(|line| {
        line.split_whitespace().nth(3)?.split('/').next()?.parse().ok()
    })
}
