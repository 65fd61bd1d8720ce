//! Unix sockets: the second BPF object (`cgroup/connect_unix`,
//! `cgroup/sendmsg_unix`, kernel 6.7+), its loader, and the `UNIX_ALLOW`
//! rules (the pack's `egress.unix` and the enforced command's own
//! directories).
//!
//! aya-obj 0.3 refuses these section names and that aborts a whole object
//! load, so the programs are a separate object (enforcer-ebpf's
//! `enforcer-ebpf-unix` bin) loaded here with `BPF_PROG_LOAD` directly:
//! the ELF is read with the `object` crate, map references are pointed at
//! the main object's pinned maps (same names), calls into `.text`
//! (compiler builtins such as `memset`) are linked by appending `.text`,
//! and the placeholder call the program uses for the kfunc
//! `bpf_cast_to_kern_ctx` becomes a kfunc call with the function's BTF id
//! in vmlinux. Links are made with `BPF_LINK_CREATE` and pinned like every
//! other hook. Where the kernel lacks the hooks (6.1: `BPF_PROG_LOAD`
//! fails with EINVAL) unix sockets are reported not enforced.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::fd::{AsRawFd as _, OwnedFd},
    path::Path,
};

use aya::{
    maps::{
        Map, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
    programs::links::PinnedLink,
};
use aya_obj::btf::{Btf, BtfKind};
use enforcer_ebpf::{
    UNIX_KEY_CGROUP_BITS, UNIX_KEY_PATH, UNIX_PATH_MAX, UNIX_SUFFIX_MAX, UnixKey, UnixRule,
    map_names, unix_rule,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationTarget};
use policy::{UnixMatch, UnixSocketPattern};

use super::bpf_syscall::{Command, bpf_descriptor};
use super::{KernelError, paths::PinDirs};

/// The unix-socket object built from enforcer-ebpf by build.rs.
static UNIX_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/enforcer-ebpf-unix"));

/// The call immediate the programs use in place of `bpf_cast_to_kern_ctx`
/// (enforcer-ebpf `unix.rs` `KFUNC_CAST_TO_KERN_CTX`).
pub const KFUNC_PLACEHOLDER: i32 = 0x7e4f_0001;

/// One unix program: its ELF section, its link's pin name, its attach type.
#[derive(Debug, Clone, Copy)]
pub struct UnixProgram {
    /// ELF section of the program.
    pub section: &'static str,
    /// Function name, also the link's pin name.
    pub program: &'static str,
    /// `enum bpf_attach_type` value (aya-obj's generated UAPI bindings).
    pub attach_type: u32,
}

/// The unix programs, in attach order.
pub const UNIX_PROGRAMS: [UnixProgram; 2] = [
    UnixProgram {
        section: "cgroup/connect_unix",
        program: "connect_unix",
        attach_type: aya_obj::generated::bpf_attach_type::BPF_CGROUP_UNIX_CONNECT as u32,
    },
    UnixProgram {
        section: "cgroup/sendmsg_unix",
        program: "sendmsg_unix",
        attach_type: aya_obj::generated::bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG as u32,
    },
];

/// The maps the unix programs may reference, all pinned by the main object.
const SHARED_MAPS: [&str; 5] = [
    map_names::UNIX_ALLOW,
    map_names::EVENTS,
    map_names::STATS,
    map_names::RECENT,
    map_names::RECENT_HEAD,
];

/// Whether unix sockets are enforced for a cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnixEnforcement {
    /// `cgroup/connect_unix` and `cgroup/sendmsg_unix` are attached.
    Enforced,
    /// They could not be loaded or attached; unix sockets are unrestricted.
    NotEnforced {
        /// Why.
        reason: String,
    },
}

impl UnixEnforcement {
    /// From the pins alone: enforced when every unix link is pinned.
    pub fn from_pins(pins: &PinDirs) -> Self {
        if UNIX_PROGRAMS
            .iter()
            .all(|program| pins.link(program.program).exists())
        {
            Self::Enforced
        } else {
            Self::NotEnforced {
                reason: not_enforced_reason(),
            }
        }
    }

    /// True for [`UnixEnforcement::Enforced`].
    pub fn is_enforced(&self) -> bool {
        *self == Self::Enforced
    }

    /// One line for humans.
    pub fn describe(&self) -> String {
        match self {
            Self::Enforced => {
                "unix sockets: enforced (connect/sendmsg only to egress.unix and the command's own directories)".into()
            }
            Self::NotEnforced { reason } => format!("unix sockets: not enforced ({reason})"),
        }
    }
}

/// Why the unix programs are absent, as far as the kernel version says.
pub fn not_enforced_reason() -> String {
    match kernel_release() {
        Some((major, minor)) if (major, minor) < (6, 7) => {
            "kernel lacks cgroup unix hooks, needs 6.7+".into()
        }
        _ => "the cgroup unix programs are not attached".into(),
    }
}

/// `(major, minor)` of the running kernel.
fn kernel_release() -> Option<(u32, u32)> {
    let text = fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut parts = text.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

// === load and attach ===

/// Loads the unix programs, attaches each to `cgroup` with a new link and
/// pins it at the hook's swap path (the caller puts it in place). The
/// main object's maps must be pinned under `pins` already.
pub fn stage(
    pins: &PinDirs,
    cgroup: &fs::File,
    btf: Option<&Btf>,
) -> Result<Vec<(&'static str, PinnedLink)>, KernelError> {
    let maps = open_shared_maps(pins)?;
    let btf = btf.ok_or_else(|| KernelError::Io {
        what: "reading kernel BTF (/sys/kernel/btf/vmlinux) for the unix programs".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let kfunc = btf
        .id_by_type_name_kind("bpf_cast_to_kern_ctx", BtfKind::Func)
        .map_err(|source| KernelError::Io {
            what: format!("finding the kfunc bpf_cast_to_kern_ctx in kernel BTF: {source}"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
    let mut staged = Vec::new();
    for program in &UNIX_PROGRAMS {
        let insns = link_program(UNIX_OBJECT, program.section, &maps, kfunc)?;
        let prog = prog_load(&insns, program).map_err(|(source, log)| KernelError::Io {
            what: format!("loading {} (BPF_PROG_LOAD){log}", program.program),
            source,
        })?;
        let io_error = |what: &str| {
            let what = format!("{what} for {}", program.program);
            move |source| KernelError::Io { what, source }
        };
        let link = super::attach::bpf_link_create(
            prog.as_raw_fd(),
            cgroup.as_raw_fd(),
            program.attach_type,
        )
        .map_err(io_error("BPF_LINK_CREATE"))?;
        let path = pins.swap_link(program.program);
        super::attach::bpf_obj_pin(&link, &path).map_err(io_error("pinning the link"))?;
        let pinned = PinnedLink::from_pin(&path).map_err(|source| KernelError::PinnedLink {
            path: path.clone(),
            source,
        })?;
        staged.push((program.program, pinned));
    }
    Ok(staged)
}

fn open_shared_maps(pins: &PinDirs) -> Result<HashMap<&'static str, OwnedFd>, KernelError> {
    let mut maps = HashMap::new();
    for name in SHARED_MAPS {
        let path = pins.map(name);
        let fd = super::attach::bpf_obj_get(&path).map_err(|source| KernelError::Io {
            what: format!("opening pinned map {}", path.display()),
            source,
        })?;
        maps.insert(name, fd);
    }
    Ok(maps)
}

/// One BPF instruction is 8 bytes: code, dst/src registers, offset, imm.
const INSN: usize = 8;
const BPF_CALL_CODE: u8 = 0x85;
const BPF_LD_IMM64_CODE: u8 = 0x18;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_PSEUDO_CALL: u8 = 1;
const BPF_PSEUDO_KFUNC_CALL: u8 = 2;

/// The instructions of `section` in `elf`, linked: map loads carry the
/// pinned maps' fds, `.text` calls point into a copy of `.text` appended
/// after the program, the kfunc placeholder is a kfunc call.
pub fn link_program(
    elf: &[u8],
    section: &str,
    maps: &HashMap<&'static str, OwnedFd>,
    kfunc_btf_id: u32,
) -> Result<Vec<u8>, KernelError> {
    let bad = |why: String| KernelError::Io {
        what: format!("the unix BPF object, section {section}: {why}; rebuild enforcer"),
        source: std::io::Error::from(std::io::ErrorKind::InvalidData),
    };
    let file = object::File::parse(elf).map_err(|error| bad(error.to_string()))?;
    let program = file
        .section_by_name(section)
        .ok_or_else(|| bad("no such section".into()))?;
    let mut insns = program
        .data()
        .map_err(|error| bad(error.to_string()))?
        .to_vec();
    let program_len = insns.len();
    let text = file.section_by_name(".text");
    // Called `.text` functions, appended once each: symbol address -> first instruction.
    let mut appended: HashMap<u64, usize> = HashMap::new();
    for (offset, relocation) in program.relocations() {
        let offset = usize::try_from(offset).map_err(|_| bad("relocation offset".into()))?;
        let RelocationTarget::Symbol(index) = relocation.target() else {
            return Err(bad(format!("relocation at {offset} has no symbol")));
        };
        let symbol = file
            .symbol_by_index(index)
            .map_err(|error| bad(error.to_string()))?;
        let name = symbol.name().map_err(|error| bad(error.to_string()))?;
        let target_section = symbol
            .section_index()
            .and_then(|index| file.section_by_index(index).ok())
            .and_then(|section| section.name().ok().map(str::to_owned))
            .unwrap_or_default();
        if offset + INSN > program_len {
            return Err(bad(format!(
                "relocation at {offset} is outside the program"
            )));
        }
        match (insns[offset], target_section.as_str()) {
            (BPF_LD_IMM64_CODE, "maps") => {
                let fd = maps
                    .get(name)
                    .ok_or_else(|| bad(format!("map {name} is not one the loader provides")))?;
                insns[offset + 1] = (insns[offset + 1] & 0x0f) | (BPF_PSEUDO_MAP_FD << 4);
                insns[offset + 4..offset + 8].copy_from_slice(&fd.as_raw_fd().to_le_bytes());
            }
            (BPF_CALL_CODE, ".text") => {
                let text = text
                    .as_ref()
                    .ok_or_else(|| bad("a call into a missing .text".into()))?;
                let address = symbol.address();
                let target = match appended.get(&address) {
                    Some(start) => *start,
                    None => {
                        if text.relocations().next().is_some() {
                            return Err(bad(".text has relocations".into()));
                        }
                        let data = text.data().map_err(|error| bad(error.to_string()))?;
                        let begin = usize::try_from(address).unwrap_or(usize::MAX);
                        let end = begin.saturating_add(usize::try_from(symbol.size()).unwrap_or(0));
                        let body = data
                            .get(begin..end)
                            .filter(|body| !body.is_empty() && body.len() % INSN == 0)
                            .ok_or_else(|| bad(format!("function {name} is not inside .text")))?;
                        // Only leaf functions: a call inside would need relinking.
                        if body
                            .chunks_exact(INSN)
                            .any(|insn| insn[0] == BPF_CALL_CODE && insn[1] >> 4 == BPF_PSEUDO_CALL)
                        {
                            return Err(bad(format!("{name} in .text calls other functions")));
                        }
                        let start = insns.len() / INSN;
                        insns.extend_from_slice(body);
                        appended.insert(address, start);
                        start
                    }
                };
                let from = offset / INSN + 1;
                let imm = i32::try_from(target as i64 - from as i64)
                    .map_err(|_| bad("call distance".into()))?;
                insns[offset + 1] = (insns[offset + 1] & 0x0f) | (BPF_PSEUDO_CALL << 4);
                insns[offset + 4..offset + 8].copy_from_slice(&imm.to_le_bytes());
            }
            _ => {
                return Err(bad(format!(
                    "unsupported relocation to {name} (section {target_section:?}) at {offset}: the unix programs may use only maps and .text calls"
                )));
            }
        }
    }
    let placeholder = KFUNC_PLACEHOLDER.to_le_bytes();
    for insn in insns.chunks_exact_mut(INSN) {
        if insn[0] == BPF_CALL_CODE && insn[1] == 0 && insn[4..8] == placeholder {
            insn[1] = BPF_PSEUDO_KFUNC_CALL << 4;
            insn[4..8].copy_from_slice(&kfunc_btf_id.to_le_bytes());
        }
    }
    Ok(insns)
}

/// `BPF_PROG_LOAD` of a `BPF_PROG_TYPE_CGROUP_SOCK_ADDR` program with the
/// unix attach type; on failure the error and the verifier's log.
fn prog_load(insns: &[u8], program: &UnixProgram) -> Result<OwnedFd, (std::io::Error, String)> {
    match prog_load_with_log(insns, program, 0) {
        Ok(fd) => Ok(fd),
        Err((error, _)) => match prog_load_with_log(insns, program, 1) {
            Ok(fd) => Ok(fd),
            Err((_, log)) => Err((error, log)),
        },
    }
}

fn prog_load_with_log(
    insns: &[u8],
    program: &UnixProgram,
    log_level: u32,
) -> Result<OwnedFd, (std::io::Error, String)> {
    const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
    const LOG_SIZE: usize = 1 << 20;
    let license = c"GPL";
    let mut log = if log_level > 0 {
        vec![0u8; LOG_SIZE]
    } else {
        Vec::new()
    };
    // union bpf_attr, prog load member: prog_type @0, insn_cnt @4, insns @8,
    // license @16, log_level @24, log_size @28, log_buf @32, kern_version
    // @40, prog_flags @44, prog_name[16] @48, prog_ifindex @64,
    // expected_attach_type @68; the rest zero.
    let mut attr = [0u8; 128];
    let insn_cnt = u32::try_from(insns.len() / INSN).unwrap_or(u32::MAX);
    attr[..4].copy_from_slice(&BPF_PROG_TYPE_CGROUP_SOCK_ADDR.to_ne_bytes());
    attr[4..8].copy_from_slice(&insn_cnt.to_ne_bytes());
    attr[8..16].copy_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    if log_level > 0 {
        attr[24..28].copy_from_slice(&log_level.to_ne_bytes());
        attr[28..32].copy_from_slice(&(LOG_SIZE as u32).to_ne_bytes());
        attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_ne_bytes());
    }
    let name = program.program.as_bytes();
    let name_len = name.len().min(15);
    attr[48..48 + name_len].copy_from_slice(&name[..name_len]);
    attr[68..72].copy_from_slice(&program.attach_type.to_ne_bytes());
    // SAFETY: the pointers are insns and license (read) and log (written,
    // at most LOG_SIZE bytes, its length, when log_level is set); all three
    // outlive the call.
    let result = unsafe { bpf_descriptor(Command::ProgLoad, &mut attr) };
    result.map_err(|error| {
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        let log = if tail.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = tail.into_iter().rev().collect();
            format!("; verifier log tail: {}", lines.join(" | "))
        };
        (error, log)
    })
}

// === rules ===

/// A `UNIX_ALLOW` entry: LPM key and value.
pub fn rule_entry(cgroup_id: u64, pattern: &UnixSocketPattern) -> (Key<UnixKey>, UnixRule) {
    let mut data = UnixKey::ZERO;
    data.cgroup_id = cgroup_id.to_be_bytes();
    let len = pattern.prefix.len().min(UNIX_PATH_MAX);
    data.path[..len].copy_from_slice(&pattern.prefix[..len]);
    let slashes = |bytes: &[u8]| {
        u16::try_from(bytes.iter().filter(|b| **b == b'/').count()).unwrap_or(u16::MAX)
    };
    let mut rule = UnixRule {
        kind: unix_rule::EXACT,
        pad: 0,
        prefix_len: u16::try_from(len).unwrap_or(0),
        suffix_len: 0,
        prefix_slashes: slashes(&pattern.prefix[..len]),
        suffix_slashes: 0,
        pad2: [0; 2],
        suffix: [0; UNIX_SUFFIX_MAX],
        suffix_mask: [0; UNIX_SUFFIX_MAX],
    };
    match &pattern.matching {
        UnixMatch::Exact => {}
        UnixMatch::Prefix => rule.kind = unix_rule::PREFIX,
        UnixMatch::SegmentGlob { suffix } => {
            rule.kind = unix_rule::SEGMENT_GLOB;
            let n = suffix.len().min(UNIX_SUFFIX_MAX);
            let start = UNIX_SUFFIX_MAX - n;
            rule.suffix[start..].copy_from_slice(&suffix[..n]);
            rule.suffix_mask[start..].fill(0xff);
            rule.suffix_len = u16::try_from(n).unwrap_or(0);
            rule.suffix_slashes = slashes(&suffix[..n]);
        }
    }
    let prefix_bits = UNIX_KEY_CGROUP_BITS + u32::try_from(len).unwrap_or(0) * 8;
    (Key::new(prefix_bits, data), rule)
}

/// The rule allowing every socket under `dir` (one of the enforced
/// command's own directories).
pub fn directory_pattern(dir: &Path) -> Result<UnixSocketPattern, KernelError> {
    let text = format!("{}/**", dir.display().to_string().trim_end_matches('/'));
    UnixSocketPattern::parse(&text).map_err(|error| KernelError::Io {
        what: format!(
            "directory {} cannot be a unix allow rule: {error}",
            dir.display()
        ),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn open_allow(pins: &PinDirs) -> Result<LpmTrie<MapData, UnixKey, UnixRule>, KernelError> {
    let name = map_names::UNIX_ALLOW;
    let map_error = |what: &'static str| {
        move |source: MapError| KernelError::Map {
            map: name,
            what: what.into(),
            source,
        }
    };
    let data = MapData::from_pin(pins.map(name)).map_err(map_error("opening the pin"))?;
    Map::from_map_data(data)
        .map_err(map_error("reading map type"))?
        .try_into()
        .map_err(map_error("opening"))
}

/// Makes the rules for `cgroup_id` (0: every cgroup) exactly `patterns`:
/// new rules go in first, then stale ones come out, so a rule that stays
/// never lapses. A prefix shared by two rules keeps the last one (the LPM
/// trie holds one value per prefix).
pub fn set_rules(
    pins: &PinDirs,
    cgroup_id: u64,
    patterns: &[UnixSocketPattern],
) -> Result<(), KernelError> {
    let mut map = open_allow(pins)?;
    let name = map_names::UNIX_ALLOW;
    let mut wanted = HashSet::new();
    for pattern in patterns {
        let (key, rule) = rule_entry(cgroup_id, pattern);
        map.insert(&key, rule, 0)
            .map_err(|source| KernelError::Map {
                map: name,
                what: format!("inserting {pattern}"),
                source,
            })?;
        wanted.insert(key_bytes(&key));
    }
    let stale: Vec<Key<UnixKey>> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| {
            key.data().cgroup_id == cgroup_id.to_be_bytes() && !wanted.contains(&key_bytes(key))
        })
        .collect();
    for key in stale {
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(KernelError::Map {
                    map: name,
                    what: "removing a stale rule".into(),
                    source,
                });
            }
        }
    }
    Ok(())
}

fn key_bytes(key: &Key<UnixKey>) -> (u32, [u8; UNIX_KEY_PATH]) {
    (key.prefix_len(), key.data().path)
}

/// Every rule: `(cgroup id, rule text)`, for status.
pub fn rules(pins: &PinDirs) -> Result<Vec<(u64, String)>, KernelError> {
    let map = open_allow(pins)?;
    let mut out = Vec::new();
    for item in map.iter() {
        let Ok((key, rule)) = item else { continue };
        let data = key.data();
        let len = usize::from(rule.prefix_len).min(UNIX_PATH_MAX);
        let bytes = &data.path[..len];
        let mut text = match bytes.split_first() {
            Some((0, name)) => format!("@{}", String::from_utf8_lossy(name)),
            _ => String::from_utf8_lossy(bytes).into_owned(),
        };
        match rule.kind {
            unix_rule::PREFIX => text.push_str("**"),
            unix_rule::SEGMENT_GLOB => {
                let n = usize::from(rule.suffix_len).min(UNIX_SUFFIX_MAX);
                text.push('*');
                text.push_str(&String::from_utf8_lossy(
                    &rule.suffix[UNIX_SUFFIX_MAX - n..],
                ));
            }
            _ => {}
        }
        out.push((u64::from_be_bytes(data.cgroup_id), text));
    }
    out.sort();
    Ok(out)
}

/// Removes every rule of `cgroup_id` (a finished `enforcer run`).
pub fn clear_rules(pins: &PinDirs, cgroup_id: u64) -> Result<(), KernelError> {
    set_rules(pins, cgroup_id, &[])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rule_entries_encode_prefix_and_kind() {
        let pattern = UnixSocketPattern::parse("/tmp/agent-*/x.sock").unwrap();
        let (key, rule) = rule_entry(7, &pattern);
        assert_eq!(key.prefix_len(), 64 + 8 * 11);
        assert_eq!(key.data().cgroup_id, 7u64.to_be_bytes());
        assert_eq!(&key.data().path[..11], b"/tmp/agent-");
        assert_eq!(rule.kind, unix_rule::SEGMENT_GLOB);
        assert_eq!(&rule.suffix[UNIX_SUFFIX_MAX - 7..], b"/x.sock");
        assert_eq!(rule.suffix_len, 7);
        assert_eq!((rule.prefix_slashes, rule.suffix_slashes), (2, 1));
        assert_eq!(rule.suffix_mask[UNIX_SUFFIX_MAX - 8], 0);
        let dir = directory_pattern(Path::new("/tmp/enforcer-run-1/")).unwrap();
        let (_, rule) = rule_entry(0, &dir);
        assert_eq!(rule.kind, unix_rule::PREFIX);
        assert_eq!(dir.prefix, b"/tmp/enforcer-run-1/");
    }

    #[test]
    fn the_object_links_without_unknown_relocations() {
        let mut maps = HashMap::new();
        for name in SHARED_MAPS {
            let fd = std::fs::File::open("/dev/null").unwrap();
            maps.insert(name, OwnedFd::from(fd));
        }
        for program in &UNIX_PROGRAMS {
            let insns = link_program(UNIX_OBJECT, program.section, &maps, 4242).unwrap();
            let kfunc_calls = insns
                .chunks_exact(INSN)
                .filter(|insn| insn[0] == BPF_CALL_CODE && insn[1] == BPF_PSEUDO_KFUNC_CALL << 4)
                .count();
            assert_eq!(kfunc_calls, 1, "{}", program.section);
        }
    }
}
