//! `cargo xtask setup --bench`: the lane router's peers that are not Debian
//! packages, pinned, each in a directory of its own under [`PEERS_DIR`]
//! (never a global install): claude-code-router from npm and LiteLLM's
//! proxy from PyPI in a venv. The bench starts them itself, by path.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::bail;

use crate::{is_root, run_command};

/// Where the router peers are installed; the bench's `--peer-dir`.
pub const PEERS_DIR: &str = "/opt/enforcer-bench";

/// claude-code-router's npm package.
const CCR_PACKAGE: &str = "@musistudio/claude-code-router";
/// The 2.x release the figures were measured on (the registry's
/// other lines are 1.0.x and 3.x).
const CCR_VERSION: &str = "2.0.0";
/// LiteLLM, with its proxy server. 1.80.0 is the newest release whose
/// `proxy` extra installs from the registry here: later ones depend on a
/// `litellm-proxy` package the registry does not hold.
const LITELLM_VERSION: &str = "1.80.0";

/// The directory claude-code-router is installed into (`npm --prefix`).
pub fn ccr_dir() -> PathBuf {
    PathBuf::from(PEERS_DIR).join(format!("claude-code-router-{CCR_VERSION}"))
}

/// The venv LiteLLM is installed into.
pub fn litellm_dir() -> PathBuf {
    PathBuf::from(PEERS_DIR).join(format!("litellm-{LITELLM_VERSION}"))
}

/// Installs both peers unless the pinned versions are there.
pub fn install() -> anyhow::Result<()> {
    ccr()?;
    litellm()
}

fn needs_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} is not installed in {PEERS_DIR}; run `sudo cargo xtask setup --bench`");
    }
    Ok(())
}

fn installed_ccr() -> Option<String> {
    let manifest = ccr_dir()
        .join("node_modules")
        .join(CCR_PACKAGE)
        .join("package.json");
    let text = std::fs::read_to_string(manifest).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["version"].as_str().map(str::to_owned)
}

fn ccr() -> anyhow::Result<()> {
    if installed_ccr().as_deref() == Some(CCR_VERSION) {
        return Ok(());
    }
    needs_root("claude-code-router")?;
    let dir = ccr_dir();
    std::fs::create_dir_all(&dir)?;
    run_command(
        Command::new("npm")
            .args(["install", "--no-fund", "--no-audit", "--prefix"])
            .arg(&dir)
            .arg(format!("{CCR_PACKAGE}@{CCR_VERSION}")),
    )?;
    verify(CCR_PACKAGE, &dir, installed_ccr(), CCR_VERSION)
}

/// Fails unless the install into `dir` left `wanted` there.
fn verify(what: &str, dir: &Path, found: Option<String>, wanted: &str) -> anyhow::Result<()> {
    match found {
        Some(version) if version == wanted => Ok(()),
        other => bail!(
            "installing {what} into {} left version {other:?}, not {wanted}",
            dir.display()
        ),
    }
}

fn installed_litellm() -> Option<String> {
    let output = Command::new(litellm_dir().join("bin/python"))
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn litellm() -> anyhow::Result<()> {
    if installed_litellm().as_deref() == Some(LITELLM_VERSION) {
        return Ok(());
    }
    needs_root("LiteLLM")?;
    let dir = litellm_dir();
    run_command(Command::new("python3").args(["-m", "venv"]).arg(&dir))?;
    run_command(
        Command::new(dir.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("litellm[proxy]=={LITELLM_VERSION}")),
    )?;
    verify("litellm", &dir, installed_litellm(), LITELLM_VERSION)
}
