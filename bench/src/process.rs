//! What the bench reads of a process from /proc: CPU time and RSS.

use anyhow::Context as _;

/// Clock ticks per second of /proc's CPU times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf takes a constant name and touches no memory of ours.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// User + system CPU time of `pid` (every thread, live or ended), seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, here 11 and 12 (0-based from field 3).
    let ticks = |index: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(index)
            .with_context(|| format!("{path}: field {}", index + 3))?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / ticks_per_second())
}

/// CPU time (user + system) of every child this process has waited for,
/// seconds: its change around one child's run is that child's CPU.
pub fn waited_children_cpu_seconds() -> f64 {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes one rusage into the struct we pass.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Resident set size of `pid`, MiB (`VmRSS`).
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .with_context(|| format!("{path}: no VmRSS"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

/// Resident MiB of `pid` by what is mapped (the file's path, `[heap]`,
/// `anon_inode:bpf-map`, "anonymous"), largest first.
pub fn rss_by_mapping(pid: u32) -> anyhow::Result<Vec<(String, f64)>> {
    let path = format!("/proc/{pid}/smaps");
    let smaps = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let mut by_name: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    let mut name = String::new();
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            name = words.nth(4).map_or("anonymous", |name| name).to_owned();
            if name.is_empty() {
                name = "anonymous".to_owned();
            }
        } else if first == "Rss:" {
            let kib: f64 = words.next().unwrap_or("0").parse().unwrap_or(0.0);
            *by_name.entry(name.clone()).or_default() += kib / 1024.0;
        }
    }
    let mut sorted: Vec<(String, f64)> = by_name.into_iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(sorted)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn own_process_has_cpu_time_and_memory() {
        let spin = std::time::Instant::now();
        let mut sum = 0u64;
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            sum = sum.wrapping_add(1);
        }
        assert!(sum > 0);
        assert!(cpu_seconds(std::process::id()).unwrap() > 0.0);
        assert!(rss_mib(std::process::id()).unwrap() > 0.5);
    }

    #[test]
    fn a_missing_process_is_an_error_naming_its_file() {
        let error = cpu_seconds(u32::MAX).unwrap_err().to_string();
        assert!(error.contains("/proc/4294967295/stat"), "{error}");
    }
}
