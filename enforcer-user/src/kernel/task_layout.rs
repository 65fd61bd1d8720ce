//! The running kernel's task → cgroup field offsets, from its BTF.
//!
//! The ptrace program follows `task->cgroups->dfl_cgrp->ancestors[level]
//! ->kn->id` with `bpf_probe_read_kernel`. Those offsets differ between
//! kernel builds and aya's Rust programs get no CO-RE field relocations,
//! so the loader reads them from `/sys/kernel/btf/vmlinux` here and hands
//! them to the program as read-only data. Only what the layout needs of
//! the BTF format is parsed: the header, the type section's records (to
//! step over them) and struct/union members.

use std::collections::HashMap;

use enforcer_ebpf::TaskLayout;

/// Where the running kernel's BTF is.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Why the layout could not be read; the ptrace layer is then not enforced.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The BTF blob is malformed or truncated.
    #[error("kernel BTF is malformed: {0}")]
    Malformed(&'static str),
    /// A struct the program follows is not in the kernel's BTF.
    #[error("kernel BTF has no struct {0}")]
    MissingStruct(&'static str),
    /// A field the program follows is not in its struct.
    #[error("kernel BTF has no field {field} in struct {owner}")]
    MissingField {
        /// The struct.
        owner: &'static str,
        /// The field.
        field: &'static str,
    },
    /// The BTF file could not be read.
    #[error("reading {VMLINUX_BTF}: {0}")]
    Unreadable(String),
    /// A field is a bitfield or not byte aligned.
    #[error("field {owner}.{field} is not byte aligned")]
    Unaligned {
        /// The struct.
        owner: &'static str,
        /// The field.
        field: &'static str,
    },
}

/// Computes the layout from a BTF blob (native endianness).
pub fn from_btf(bytes: &[u8]) -> Result<TaskLayout, LayoutError> {
    let btf = Btf::parse(bytes)?;
    let task_cgroups = btf.member_offset("task_struct", "cgroups")?;
    let task_tgid = btf.member_offset("task_struct", "tgid")?;
    let css_set_dfl_cgrp = btf.member_offset("css_set", "dfl_cgrp")?;
    let cgroup_level = btf.member_offset("cgroup", "level")?;
    let cgroup_kn = btf.member_offset("cgroup", "kn")?;
    let kernfs_node_id = btf.member_offset("kernfs_node", "id")?;
    let (cgroup_ancestors, ancestor_ids) = match btf.member_offset("cgroup", "ancestors") {
        Ok(offset) => (offset, 0),
        Err(LayoutError::MissingField { .. }) => (btf.member_offset("cgroup", "ancestor_ids")?, 1),
        Err(error) => return Err(error),
    };
    Ok(TaskLayout {
        task_cgroups,
        task_tgid,
        css_set_dfl_cgrp,
        cgroup_level,
        cgroup_ancestors,
        ancestor_ids,
        cgroup_kn,
        kernfs_node_id,
        valid: 1,
        pad: 0,
    })
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One struct or union member.
#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    type_id: u32,
    /// Offset in bits; the bitfield size (kind flag set) is in the top byte.
    bit_offset: u32,
}

/// What is kept of one type record.
#[derive(Debug, Clone)]
enum Type {
    /// A struct or union and its members.
    Composite {
        kind_flag: bool,
        members: Vec<Member>,
    },
    /// typedef, const, volatile, restrict, type tag: stands for `target`.
    Alias { target: u32 },
    /// Anything else.
    Other,
}

struct Btf<'a> {
    strings: &'a [u8],
    /// Index `id - 1`.
    types: Vec<Type>,
    structs: HashMap<&'a [u8], u32>,
}

fn word(bytes: &[u8], at: usize) -> Result<u32, LayoutError> {
    bytes
        .get(at..at + 4)
        .and_then(|slice| slice.try_into().ok())
        .map(u32::from_ne_bytes)
        .ok_or(LayoutError::Malformed("truncated type record"))
}

impl<'a> Btf<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, LayoutError> {
        let header = bytes
            .get(..24)
            .ok_or(LayoutError::Malformed("shorter than its header"))?;
        if u16::from_ne_bytes([header[0], header[1]]) != BTF_MAGIC {
            return Err(LayoutError::Malformed(
                "bad magic (not BTF, or the other endianness)",
            ));
        }
        let header_len = word(header, 4)? as usize;
        let (type_off, type_len) = (word(header, 8)? as usize, word(header, 12)? as usize);
        let (str_off, str_len) = (word(header, 16)? as usize, word(header, 20)? as usize);
        let section = |off: usize, len: usize| {
            let start = header_len.checked_add(off)?;
            bytes.get(start..start.checked_add(len)?)
        };
        let type_bytes = section(type_off, type_len)
            .ok_or(LayoutError::Malformed("type section out of range"))?;
        let strings = section(str_off, str_len)
            .ok_or(LayoutError::Malformed("string section out of range"))?;
        let mut btf = Btf {
            strings,
            types: Vec::new(),
            structs: HashMap::new(),
        };
        let mut at = 0;
        while at < type_bytes.len() {
            let (name, info) = (word(type_bytes, at)?, word(type_bytes, at + 4)?);
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let size_or_type = word(type_bytes, at - 4)?;
            let extra = match kind {
                1 | 14 | 17 => 4,          // int, var, decl tag
                3 => 12,                   // array
                4 | 5 => 12 * vlen,        // struct, union
                6 | 13 => 8 * vlen,        // enum, func proto
                15 | 19 => 12 * vlen,      // datasec, enum64
                2 | 7..=12 | 16 | 18 => 0, // ptr, fwd, typedef, volatile, const, restrict, func, float, type tag
                _ => return Err(LayoutError::Malformed("unknown type kind")),
            };
            let body = type_bytes
                .get(at..at + extra)
                .ok_or(LayoutError::Malformed("truncated type record"))?;
            let record = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let members = (0..vlen)
                        .map(|i| {
                            Ok(Member {
                                name: word(body, 12 * i)?,
                                type_id: word(body, 12 * i + 4)?,
                                bit_offset: word(body, 12 * i + 8)?,
                            })
                        })
                        .collect::<Result<Vec<_>, LayoutError>>()?;
                    if kind == KIND_STRUCT && name != 0 {
                        let id = btf.types.len() as u32 + 1;
                        // The first definition with members wins over forward-ish empty ones.
                        let key = btf.string(name);
                        if !members.is_empty() {
                            btf.structs.entry(key).or_insert(id);
                        }
                    }
                    Type::Composite { kind_flag, members }
                }
                8..=11 | 18 => Type::Alias {
                    target: size_or_type,
                },
                _ => Type::Other,
            };
            btf.types.push(record);
            at += extra;
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &'a [u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest
            .iter()
            .position(|byte| *byte == 0)
            .unwrap_or(rest.len());
        &rest[..end]
    }

    fn get(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedefs and qualifiers to the type they stand for.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            match self.get(id)? {
                Type::Alias { target } => id = *target,
                other => return Some(other),
            }
        }
        None
    }

    /// Byte offset of `field` in struct `owner`, looking into anonymous
    /// struct and union members.
    fn member_offset(&self, owner: &'static str, field: &'static str) -> Result<u32, LayoutError> {
        let id = *self
            .structs
            .get(owner.as_bytes())
            .ok_or(LayoutError::MissingStruct(owner))?;
        let bits = self
            .find(id, field.as_bytes(), 0)
            .ok_or(LayoutError::MissingField { owner, field })?;
        if bits % 8 != 0 {
            return Err(LayoutError::Unaligned { owner, field });
        }
        Ok(bits / 8)
    }

    fn find(&self, id: u32, field: &[u8], depth: u32) -> Option<u32> {
        let Some(Type::Composite {
            kind_flag, members, ..
        }) = self.resolve(id)
        else {
            return None;
        };
        if depth > 8 {
            return None;
        }
        for member in members {
            let bit_offset = if *kind_flag {
                member.bit_offset & 0x00ff_ffff
            } else {
                member.bit_offset
            };
            if member.name == 0 {
                if let Some(inner) = self.find(member.type_id, field, depth + 1) {
                    return Some(bit_offset + inner);
                }
            } else if self.string(member.name) == field {
                if *kind_flag && member.bit_offset >> 24 != 0 {
                    return Some(bit_offset | 1); // a bitfield: reported unaligned
                }
                return Some(bit_offset);
            }
        }
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Builds a BTF blob from (name, kind, vlen, size_or_type, body words).
    struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self {
                strings: vec![0],
                types: Vec::new(),
                next_id: 1,
            }
        }
        fn name(&mut self, text: &str) -> u32 {
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(text.as_bytes());
            self.strings.push(0);
            at
        }
        fn push(
            &mut self,
            name: u32,
            kind: u32,
            vlen: u32,
            size_or_type: u32,
            body: &[u32],
        ) -> u32 {
            for value in [name, (kind << 24) | vlen, size_or_type].iter().chain(body) {
                self.types.extend_from_slice(&value.to_ne_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }
        fn int(&mut self) -> u32 {
            let name = self.name("int");
            self.push(name, 1, 0, 4, &[32])
        }
        fn ptr(&mut self, to: u32) -> u32 {
            self.push(0, 2, 0, to, &[])
        }
        /// A struct whose members are (name, type, byte offset).
        fn composite(&mut self, name: &str, kind: u32, members: &[(&str, u32, u32)]) -> u32 {
            let name = if name.is_empty() { 0 } else { self.name(name) };
            let mut body = Vec::new();
            for (member, type_id, offset) in members {
                let member = if member.is_empty() {
                    0
                } else {
                    self.name(member)
                };
                body.extend([member, *type_id, offset * 8]);
            }
            self.push(name, kind, members.len() as u32, 64, &body)
        }
        fn finish(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_ne_bytes());
            out.extend([1, 0]);
            for value in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&value.to_ne_bytes());
            }
            out.extend(self.types);
            out.extend(self.strings);
            out
        }
    }

    /// A kernel-like layout: `cgroup.ancestors` inside an anonymous union,
    /// `kernfs_node.id` behind a typedef.
    fn kernel_like(with_ancestors: bool) -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int();
        let u64_name = b.name("u64");
        let u64_type = b.push(u64_name, 8, 0, int, &[]);
        let kernfs = b.composite(
            "kernfs_node",
            KIND_STRUCT,
            &[("parent", int, 0), ("id", u64_type, 72)],
        );
        let kernfs_ptr = b.ptr(kernfs);
        let ancestors = if with_ancestors {
            "ancestors"
        } else {
            "ancestor_ids"
        };
        let inner = b.composite(
            "",
            KIND_UNION,
            &[(ancestors, kernfs_ptr, 0), ("other", int, 0)],
        );
        let cgroup = b.composite(
            "cgroup",
            KIND_STRUCT,
            &[
                ("self", int, 0),
                ("level", int, 200),
                ("kn", kernfs_ptr, 264),
                ("", inner, 1024),
            ],
        );
        let cgroup_ptr = b.ptr(cgroup);
        let css_set = b.composite(
            "css_set",
            KIND_STRUCT,
            &[("subsys", int, 0), ("dfl_cgrp", cgroup_ptr, 136)],
        );
        let css_ptr = b.ptr(css_set);
        b.composite(
            "task_struct",
            KIND_STRUCT,
            &[("tgid", int, 2456), ("cgroups", css_ptr, 3000)],
        );
        b.finish()
    }

    #[test]
    fn finds_offsets_through_anonymous_unions_and_typedefs() {
        let layout = from_btf(&kernel_like(true)).unwrap();
        assert_eq!(
            layout,
            TaskLayout {
                task_cgroups: 3000,
                task_tgid: 2456,
                css_set_dfl_cgrp: 136,
                cgroup_level: 200,
                cgroup_ancestors: 1024,
                ancestor_ids: 0,
                cgroup_kn: 264,
                kernfs_node_id: 72,
                valid: 1,
                pad: 0,
            }
        );
    }

    #[test]
    fn older_kernels_use_ancestor_ids() {
        let layout = from_btf(&kernel_like(false)).unwrap();
        assert_eq!((layout.cgroup_ancestors, layout.ancestor_ids), (1024, 1));
    }

    #[test]
    fn a_missing_struct_or_field_is_named() {
        let mut b = Builder::new();
        let int = b.int();
        b.composite("task_struct", KIND_STRUCT, &[("tgid", int, 8)]);
        assert_eq!(
            from_btf(&b.finish()),
            Err(LayoutError::MissingField {
                owner: "task_struct",
                field: "cgroups"
            })
        );
        let mut b = Builder::new();
        b.int();
        assert_eq!(
            from_btf(&b.finish()),
            Err(LayoutError::MissingStruct("task_struct"))
        );
    }

    #[test]
    fn garbage_and_truncation_are_malformed() {
        assert!(matches!(
            from_btf(b"not btf at all, not at all"),
            Err(LayoutError::Malformed(_))
        ));
        let mut blob = kernel_like(true);
        // The header still claims the full type section.
        blob.truncate(40);
        assert!(matches!(from_btf(&blob), Err(LayoutError::Malformed(_))));
    }

    #[test]
    fn the_running_kernel_has_a_layout() {
        // Every kernel this runs on has BTF (the LSM program needs it).
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            panic!("{VMLINUX_BTF} is missing: enforcer needs a kernel with BTF");
        }
        let layout = from_btf(&std::fs::read(VMLINUX_BTF).unwrap()).unwrap();
        assert_eq!(layout.valid, 1);
        assert!(
            layout.task_cgroups > 0 && layout.cgroup_kn > 0,
            "{layout:?}"
        );
    }
}
