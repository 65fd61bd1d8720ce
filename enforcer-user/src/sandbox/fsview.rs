//! The file-system questions the bwrap renderer asks, behind a trait so the
//! renderer stays a pure function: [`RealFs`] answers them from this host,
//! tests answer them from an in-memory tree.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{AT_FDCWD, AtFlags};
use nix::unistd::{AccessFlags, faccessat};

/// What a path is, for masking: directories get a `--tmpfs`, everything else
/// (regular files, sockets, devices, FIFOs) a `/dev/null` bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// Anything that is not a directory.
    File,
}

/// What a path is without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A symbolic link (to anything, or dangling).
    Symlink,
    /// Anything else.
    File,
}

/// Read-only questions about the file system.
pub trait FsView {
    /// `lstat`: what `path` is, without following a final symlink; `None`
    /// when it does not exist or cannot be reached.
    fn entry_kind(&self, path: &Path) -> Option<EntryKind>;

    /// `realpath` + `stat`: the canonical path and what it is; `None` when
    /// it does not exist, dangles, or cannot be reached.
    fn resolve(&self, path: &Path) -> Option<(PathBuf, Kind)>;

    /// The names in a directory. A missing path or a non-directory lists as
    /// empty, and so does a directory this process can neither list nor
    /// enter (nothing below it is reachable by these credentials). A
    /// directory that can be entered but not listed is an error: names
    /// below it could still be opened, and a mask cannot be computed.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;
}

/// The real file system of this host, seen with this process's credentials.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl FsView for RealFs {
    fn entry_kind(&self, path: &Path) -> Option<EntryKind> {
        let meta = std::fs::symlink_metadata(path).ok()?;
        let file_type = meta.file_type();
        Some(if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        })
    }

    fn resolve(&self, path: &Path) -> Option<(PathBuf, Kind)> {
        let canonical = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&canonical).ok()?;
        let kind = if meta.is_dir() { Kind::Dir } else { Kind::File };
        Some((canonical, kind))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        match std::fs::read_dir(dir) {
            Ok(entries) => entries.map(|entry| entry.map(|e| e.file_name())).collect(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(Vec::new())
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !searchable(dir) => {
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }
}

/// Whether this process may enter `dir` (search permission, effective ids).
fn searchable(dir: &Path) -> bool {
    faccessat(AT_FDCWD, dir, AccessFlags::X_OK, AtFlags::AT_EACCESS).is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod memfs {
    //! An in-memory tree for the renderer's unit tests.

    use super::*;
    use std::collections::BTreeMap;

    /// A node of the fake tree.
    #[derive(Debug, Clone)]
    pub enum Node {
        Dir,
        File,
        Link(PathBuf),
    }

    /// Paths (absolute, normalised) to nodes; parents are implied.
    #[derive(Debug, Default)]
    pub struct MemFs {
        pub nodes: BTreeMap<PathBuf, Node>,
        /// Directories that refuse listing but can be entered.
        pub unlistable: Vec<PathBuf>,
    }

    impl MemFs {
        pub fn new() -> Self {
            let mut fs = MemFs::default();
            fs.nodes.insert("/".into(), Node::Dir);
            fs
        }

        fn add(&mut self, path: &str, node: Node) -> &mut Self {
            let path = PathBuf::from(path);
            for ancestor in path.ancestors().skip(1) {
                self.nodes
                    .entry(ancestor.to_path_buf())
                    .or_insert(Node::Dir);
            }
            self.nodes.insert(path, node);
            self
        }

        pub fn dir(&mut self, path: &str) -> &mut Self {
            self.add(path, Node::Dir)
        }

        pub fn file(&mut self, path: &str) -> &mut Self {
            self.add(path, Node::File)
        }

        pub fn link(&mut self, path: &str, target: &str) -> &mut Self {
            self.add(path, Node::Link(target.into()))
        }

        /// Follows symlinks in every component.
        fn canonical(&self, path: &Path, depth: u32) -> Option<PathBuf> {
            if depth > 40 {
                return None;
            }
            let mut out = PathBuf::from("/");
            for component in path.components().skip(1) {
                out.push(component);
                match self.nodes.get(&out)? {
                    Node::Link(target) => {
                        let target = if target.is_absolute() {
                            target.clone()
                        } else {
                            out.parent()?.join(target)
                        };
                        out = self.canonical(&target, depth + 1)?;
                    }
                    Node::Dir | Node::File => {}
                }
            }
            Some(out)
        }
    }

    impl FsView for MemFs {
        fn entry_kind(&self, path: &Path) -> Option<EntryKind> {
            let parent = self.canonical(path.parent()?, 0)?;
            let own = parent.join(path.file_name()?);
            Some(match self.nodes.get(&own)? {
                Node::Dir => EntryKind::Dir,
                Node::File => EntryKind::File,
                Node::Link(_) => EntryKind::Symlink,
            })
        }

        fn resolve(&self, path: &Path) -> Option<(PathBuf, Kind)> {
            let canonical = self.canonical(path, 0)?;
            let kind = match self.nodes.get(&canonical)? {
                Node::Dir => Kind::Dir,
                _ => Kind::File,
            };
            Some((canonical, kind))
        }

        fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
            let Some(canonical) = self.canonical(dir, 0) else {
                return Ok(Vec::new());
            };
            if self.unlistable.contains(&canonical) {
                return Err(io::Error::from(io::ErrorKind::PermissionDenied));
            }
            if !matches!(self.nodes.get(&canonical), Some(Node::Dir)) {
                return Ok(Vec::new());
            }
            Ok(self
                .nodes
                .keys()
                .filter(|p| p.parent() == Some(canonical.as_path()) && **p != canonical)
                .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
                .collect())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn real_fs_answers_kinds_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("d")).unwrap();
        std::fs::write(root.join("f"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("d"), root.join("l")).unwrap();
        std::os::unix::fs::symlink(root.join("gone"), root.join("dangling")).unwrap();
        let fs = RealFs;
        assert_eq!(fs.entry_kind(&root.join("d")), Some(EntryKind::Dir));
        assert_eq!(fs.entry_kind(&root.join("f")), Some(EntryKind::File));
        assert_eq!(fs.entry_kind(&root.join("l")), Some(EntryKind::Symlink));
        assert_eq!(fs.entry_kind(&root.join("missing")), None);
        let canonical_d = std::fs::canonicalize(root.join("d")).unwrap();
        assert_eq!(fs.resolve(&root.join("l")), Some((canonical_d, Kind::Dir)));
        assert_eq!(fs.resolve(&root.join("dangling")), None);
        let mut names = fs.list(root).unwrap();
        names.sort();
        assert_eq!(names, ["d", "dangling", "f", "l"]);
        assert!(fs.list(&root.join("f")).unwrap().is_empty());
        assert!(fs.list(&root.join("missing")).unwrap().is_empty());
    }
}
