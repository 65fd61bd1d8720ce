//! `readDeny` patterns expanded into the paths bwrap must hide.
//!
//! Pattern language (documented in docs/SANDBOX.md):
//! * `*` matches any run of characters within one path component, leading
//!   dots included (`/home/*/.ssh` also matches a home named `.hidden`: for
//!   a deny list, matching more is the safe side); `?` matches one character;
//! * `**` as a whole component matches zero or more directories; trailing
//!   (`/home/*/.config/**`) it means "this directory and everything in it",
//!   which is masked as the one directory;
//! * relative patterns are relative to the working directory;
//! * `~`, `..`, character classes (`[...]`) and braces (`{a,b}`) are refused
//!   rather than silently matching nothing.
//!
//! Expansion follows symlinks on the way (like the sandboxed process would),
//! masks the canonical target of a matched symlink, never follows symlinks
//! while walking `**` (no loops), and stops with an error after
//! [`MAX_VISITED`] directory entries per pattern.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Component, Path, PathBuf};

use super::fsview::{EntryKind, FsView, Kind};

/// Most directory entries one pattern may look at before it is refused as
/// too broad (a `**` over a whole home directory with `node_modules`).
pub const MAX_VISITED: usize = 100_000;

/// Errors expanding `readDeny`.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    /// The pattern is not in the supported language.
    #[error("readDeny pattern {pattern:?}: {why}")]
    BadPattern {
        /// The pattern as written in the policy.
        pattern: String,
        /// What is wrong and what to write instead.
        why: &'static str,
    },
    /// A directory that can be entered could not be listed.
    #[error(
        "readDeny pattern {pattern:?}: cannot list {} ({source}); entries below it could still be opened, so the sandbox is not started",
        dir.display()
    )]
    List {
        /// The pattern.
        pattern: String,
        /// The directory.
        dir: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The pattern visits too much of the file system.
    #[error(
        "readDeny pattern {pattern:?} looks at more than {MAX_VISITED} directory entries; make it more specific"
    )]
    TooBroad {
        /// The pattern.
        pattern: String,
    },
}

/// One path to hide inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Canonical path on the host (and inside the sandbox).
    pub path: PathBuf,
    /// Directory (`--tmpfs`) or anything else (`--ro-bind /dev/null`).
    pub kind: Kind,
    /// The policy pattern that matched it.
    pub pattern: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(OsString),
    Wild(Vec<u8>),
    AnyDepth,
}

fn bad(pattern: &str, why: &'static str) -> MaskError {
    MaskError::BadPattern {
        pattern: pattern.to_owned(),
        why,
    }
}

/// Splits a pattern into components, anchored at `/` (relative patterns
/// get `cwd`'s components, taken literally).
fn parse(pattern: &str, cwd: &Path) -> Result<Vec<Part>, MaskError> {
    if pattern.is_empty() {
        return Err(bad(pattern, "empty pattern"));
    }
    if pattern.starts_with('~') {
        return Err(bad(
            pattern,
            "`~` is not expanded; write the absolute path (e.g. /home/*/.ssh)",
        ));
    }
    if pattern.contains(['[', ']', '{', '}', '\\']) {
        return Err(bad(
            pattern,
            "character classes, braces and escapes are not supported; use `*`, `?` and `**`, or list each path",
        ));
    }
    let mut parts = Vec::new();
    if !pattern.starts_with('/') {
        for component in cwd.components() {
            if let Component::Normal(name) = component {
                parts.push(Part::Literal(name.to_os_string()));
            }
        }
    }
    for component in pattern.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                return Err(bad(
                    pattern,
                    "`..` is not supported; write the path without it",
                ));
            }
            "**" => {
                if parts.last() != Some(&Part::AnyDepth) {
                    parts.push(Part::AnyDepth);
                }
            }
            c if c.contains("**") => {
                return Err(bad(
                    pattern,
                    "`**` must be a whole path component (`a/**/b`)",
                ));
            }
            c if c.contains(['*', '?']) => parts.push(Part::Wild(c.as_bytes().to_vec())),
            c => parts.push(Part::Literal(c.into())),
        }
    }
    if parts.is_empty() || parts == [Part::AnyDepth] {
        return Err(bad(pattern, "would hide the whole file system"));
    }
    Ok(parts)
}

/// Shell-style match of one component: `*` any run, `?` one byte.
fn component_matches(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

struct Walk<'a> {
    pattern: &'a str,
    fs: &'a dyn FsView,
    visited: usize,
}

impl Walk<'_> {
    fn list(&mut self, dir: &Path) -> Result<Vec<OsString>, MaskError> {
        let names = self.fs.list(dir).map_err(|source| MaskError::List {
            pattern: self.pattern.to_owned(),
            dir: dir.to_path_buf(),
            source,
        })?;
        self.visited += names.len();
        if self.visited > MAX_VISITED {
            return Err(MaskError::TooBroad {
                pattern: self.pattern.to_owned(),
            });
        }
        Ok(names)
    }

    /// `dir` and every directory below it, not following symlinks.
    fn all_dirs(&mut self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), MaskError> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(current) = stack.pop() {
            for name in self.list(&current)? {
                let child = current.join(name);
                if self.fs.entry_kind(&child) == Some(EntryKind::Dir) {
                    stack.push(child);
                }
            }
            out.push(current);
        }
        Ok(())
    }
}

/// Expands one pattern into the paths it matches now, as masks.
pub fn expand(pattern: &str, cwd: &Path, fs: &dyn FsView) -> Result<Vec<Mask>, MaskError> {
    let parts = parse(pattern, cwd)?;
    let mut walk = Walk {
        pattern,
        fs,
        visited: 0,
    };
    let mut current = vec![PathBuf::from("/")];
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let mut next = Vec::new();
        for dir in &current {
            match part {
                Part::Literal(name) => {
                    let path = dir.join(name);
                    if fs.entry_kind(&path).is_some() {
                        next.push(path);
                    }
                }
                Part::Wild(glob) => {
                    for name in walk.list(dir)? {
                        if component_matches(glob, name.as_bytes()) {
                            next.push(dir.join(name));
                        }
                    }
                }
                Part::AnyDepth if last => next.push(dir.clone()),
                Part::AnyDepth => walk.all_dirs(dir, &mut next)?,
            }
        }
        next.sort();
        next.dedup();
        current = next;
    }
    let mut masks = Vec::new();
    for path in current {
        if let Some((canonical, kind)) = fs.resolve(&path) {
            if canonical == Path::new("/") {
                return Err(bad(pattern, "would hide the whole file system"));
            }
            masks.push(Mask {
                path: canonical,
                kind,
                pattern: pattern.to_owned(),
            });
        }
    }
    Ok(masks)
}

/// Expands every pattern; the result is sorted, without duplicates, and
/// without paths inside an already masked directory.
pub fn expand_all(
    patterns: &[String],
    cwd: &Path,
    fs: &dyn FsView,
) -> Result<Vec<Mask>, MaskError> {
    let mut masks = Vec::new();
    for pattern in patterns {
        masks.extend(expand(pattern, cwd, fs)?);
    }
    masks.sort_by(|a, b| a.path.cmp(&b.path));
    masks.dedup_by(|later, earlier| later.path == earlier.path);
    let mut kept: Vec<Mask> = Vec::with_capacity(masks.len());
    for mask in masks {
        let covered = kept
            .iter()
            .any(|dir| dir.kind == Kind::Dir && mask.path.starts_with(&dir.path));
        if !covered {
            kept.push(mask);
        }
    }
    Ok(kept)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::fsview::memfs::MemFs;
    use super::*;

    fn paths(masks: &[Mask]) -> Vec<(String, Kind)> {
        masks
            .iter()
            .map(|m| (m.path.display().to_string(), m.kind))
            .collect()
    }

    fn home() -> MemFs {
        let mut fs = MemFs::new();
        fs.dir("/home/alice/.ssh")
            .file("/home/alice/.ssh/id_ed25519")
            .dir("/home/alice/.config/gh")
            .file("/home/alice/.config/gh/hosts.yml")
            .file("/home/alice/.aws")
            .dir("/home/bob/.config")
            .dir("/home/carol")
            .dir("/home/.hidden/.ssh")
            .dir("/srv/app/node_modules/x")
            .file("/srv/app/.env")
            .file("/srv/app/sub/deeper/.env")
            .file("/srv/app/node_modules/x/.env");
        fs
    }

    #[test]
    fn star_matches_one_component_including_dotfiles() {
        let masks = expand_all(&["/home/*/.ssh".into()], Path::new("/"), &home()).unwrap();
        assert_eq!(
            paths(&masks),
            [
                ("/home/.hidden/.ssh".into(), Kind::Dir),
                ("/home/alice/.ssh".into(), Kind::Dir)
            ]
        );
    }

    #[test]
    fn files_get_file_masks_and_missing_matches_nothing() {
        let masks = expand_all(&["/home/*/.aws".into()], Path::new("/"), &home()).unwrap();
        assert_eq!(paths(&masks), [("/home/alice/.aws".into(), Kind::File)]);
    }

    #[test]
    fn trailing_double_star_masks_the_directory_itself() {
        let masks = expand_all(&["/home/*/.config/**".into()], Path::new("/"), &home()).unwrap();
        assert_eq!(
            paths(&masks),
            [
                ("/home/alice/.config".into(), Kind::Dir),
                ("/home/bob/.config".into(), Kind::Dir)
            ]
        );
    }

    #[test]
    fn middle_double_star_matches_any_depth_including_zero() {
        let masks = expand_all(&["/srv/app/**/.env".into()], Path::new("/"), &home()).unwrap();
        assert_eq!(
            paths(&masks),
            [
                ("/srv/app/.env".into(), Kind::File),
                ("/srv/app/node_modules/x/.env".into(), Kind::File),
                ("/srv/app/sub/deeper/.env".into(), Kind::File),
            ]
        );
    }

    #[test]
    fn relative_patterns_are_relative_to_the_working_directory() {
        let masks = expand_all(
            &[".env".into(), "./sub/*/.env".into()],
            Path::new("/srv/app"),
            &home(),
        )
        .unwrap();
        assert_eq!(
            paths(&masks),
            [
                ("/srv/app/.env".into(), Kind::File),
                ("/srv/app/sub/deeper/.env".into(), Kind::File)
            ]
        );
    }

    #[test]
    fn symlinks_are_masked_at_their_target() {
        let mut fs = home();
        fs.dir("/data/keys").link("/home/carol/.ssh", "/data/keys");
        fs.link("/home/carol/.netrc", "/nowhere");
        let masks = expand_all(
            &["/home/carol/.ssh".into(), "/home/carol/.netrc".into()],
            Path::new("/"),
            &fs,
        )
        .unwrap();
        assert_eq!(paths(&masks), [("/data/keys".into(), Kind::Dir)]);
    }

    #[test]
    fn double_star_does_not_follow_symlinks() {
        let mut fs = MemFs::new();
        fs.dir("/w/a").link("/w/a/loop", "/w").file("/w/a/.env");
        let masks = expand_all(&["/w/**/.env".into()], Path::new("/"), &fs).unwrap();
        assert_eq!(paths(&masks), [("/w/a/.env".into(), Kind::File)]);
    }

    #[test]
    fn masks_inside_a_masked_directory_are_dropped() {
        let masks = expand_all(
            &[
                "/home/alice/.config/gh/hosts.yml".into(),
                "/home/alice/.config/**".into(),
            ],
            Path::new("/"),
            &home(),
        )
        .unwrap();
        assert_eq!(paths(&masks), [("/home/alice/.config".into(), Kind::Dir)]);
    }

    #[test]
    fn unsupported_syntax_is_refused_with_the_pattern() {
        for (pattern, needle) in [
            ("~/.ssh", "`~`"),
            ("/home/[ab]*", "character classes"),
            ("/home/{a,b}", "braces"),
            ("/home/../etc", "`..`"),
            ("/home/a**", "whole path component"),
            ("/", "whole file system"),
            ("/**", "whole file system"),
            ("", "empty"),
        ] {
            let err = expand(pattern, Path::new("/"), &home())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{pattern}: {err}");
            assert!(err.contains(&format!("{pattern:?}")), "{pattern}: {err}");
        }
    }

    #[test]
    fn unlistable_directory_is_an_error_not_a_silent_miss() {
        let mut fs = home();
        fs.unlistable.push("/home".into());
        let err = expand("/home/*/.ssh", Path::new("/"), &fs).unwrap_err();
        assert!(matches!(err, MaskError::List { .. }), "{err}");
        // Literal paths do not need listing.
        let masks = expand("/home/alice/.ssh", Path::new("/"), &fs).unwrap();
        assert_eq!(masks.len(), 1);
    }

    #[test]
    fn too_broad_patterns_stop() {
        let mut fs = MemFs::new();
        for i in 0..(MAX_VISITED / 1000 + 1) {
            for j in 0..1000 {
                fs.file(&format!("/big/d{i}/f{j}"));
            }
        }
        let err = expand("/big/**/.env", Path::new("/"), &fs).unwrap_err();
        assert!(matches!(err, MaskError::TooBroad { .. }), "{err}");
    }

    #[test]
    fn component_matcher() {
        assert!(component_matches(b"*", b".ssh"));
        assert!(component_matches(b"*.pem", b"key.pem"));
        assert!(!component_matches(b"*.pem", b"key.pem.bak"));
        assert!(component_matches(b"id_*", b"id_"));
        assert!(component_matches(b"a?c", b"abc"));
        assert!(!component_matches(b"a?c", b"ac"));
        assert!(component_matches(b"*a*b*", b"xxaxxbxx"));
        assert!(!component_matches(b"*a*b*", b"xxbxxaxx"));
        assert!(component_matches(b"**", b""));
    }
}
