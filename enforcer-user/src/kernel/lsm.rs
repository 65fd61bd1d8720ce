//! Whether the kernel runs the bpf LSM at all.
//!
//! A kernel built with `CONFIG_BPF_LSM` accepts and attaches
//! `lsm_cgroup` programs even when the bpf LSM is left out of the active
//! list (`lsm=` on the command line without `bpf`): the hooks are then
//! never called, and a program that attached enforces nothing. The active
//! list is in securityfs; only a list that names `bpf` counts.

use std::fs;

/// securityfs' list of the active LSMs, in call order.
pub const ACTIVE_LSMS: &str = "/sys/kernel/security/lsm";

/// Ok when the bpf LSM is active; otherwise why BPF-LSM programs would
/// enforce nothing (a reason for `status` and the self-test's table).
pub fn bpf_lsm_active() -> Result<(), String> {
    match fs::read_to_string(ACTIVE_LSMS) {
        Ok(list) => check_list(&list),
        Err(error) => Err(format!(
            "cannot read {ACTIVE_LSMS} ({error}), so BPF-LSM is taken to be inactive"
        )),
    }
}

/// The decision on the list's text (comma-separated names).
fn check_list(list: &str) -> Result<(), String> {
    let list = list.trim();
    if list.split(',').any(|name| name.trim() == "bpf") {
        Ok(())
    } else {
        Err(format!(
            "the bpf LSM is not active (active LSMs: {list}; add bpf to the kernel's lsm= boot parameter)"
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::check_list;

    #[test]
    fn only_a_list_naming_bpf_counts() {
        assert!(check_list("lockdown,capability,landlock,yama,apparmor,bpf\n").is_ok());
        assert!(check_list("bpf").is_ok());
        let error = check_list("lockdown,capability,landlock,yama,apparmor").unwrap_err();
        assert!(error.contains("lsm= boot parameter"), "{error}");
        assert!(error.contains("apparmor"), "{error}");
        // A name that merely contains "bpf" is not the bpf LSM.
        assert!(check_list("notbpf,capability").is_err());
        assert!(check_list("").is_err());
    }
}
