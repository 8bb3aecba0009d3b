//! Content hashing of files and directories.
//!
//! A file's digest is the blake3 hash of its bytes, so `b3sum` on a stored file agrees with
//! capstan. A directory's digest is a Merkle hash over its entries sorted by name: each entry
//! contributes its kind, its name and its own digest. So the digest depends only on names, kinds
//! and contents, never on creation order, timestamps or permissions.
//!
//! Symlinks are followed when they resolve inside the artifact (their target's content is what
//! counts) and rejected when they point outside it or loop. Fifos, sockets and devices are
//! rejected: they have no content to store.

use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::ArtifactError;

/// Hashes the file or directory at `path`: returns the digest (`blake3:<hex>`), the total size
/// of the files in bytes, and whether it is a directory.
pub fn hash_path(path: &Path) -> Result<(String, u64, bool), ArtifactError> {
    let scanned = scan(path)?;
    Ok((
        format!("blake3:{}", scanned.node.digest().to_hex()),
        scanned.size,
        scanned.node.is_dir(),
    ))
}

/// A scanned artifact: its content tree with the real path of every file to read.
pub(crate) struct Scanned {
    pub node: Node,
    pub size: u64,
}

pub(crate) enum Node {
    File {
        source: PathBuf,
        size: u64,
        digest: blake3::Hash,
    },
    Dir {
        children: Vec<(OsString, Node)>,
        digest: blake3::Hash,
    },
}

/// One entry of a flattened tree, in the order a directory tree should be recreated.
pub(crate) struct FlatEntry<'a> {
    pub rel: PathBuf,
    pub node: &'a Node,
}

impl Node {
    pub fn digest(&self) -> blake3::Hash {
        match self {
            Node::File { digest, .. } | Node::Dir { digest, .. } => *digest,
        }
    }

    pub fn is_dir(&self) -> bool {
        matches!(self, Node::Dir { .. })
    }

    /// Every entry below this directory, parents before children.
    pub fn flatten(&self) -> Vec<FlatEntry<'_>> {
        let mut out = Vec::new();
        flatten_into(self, PathBuf::new(), &mut out);
        out
    }
}

fn flatten_into<'a>(node: &'a Node, prefix: PathBuf, out: &mut Vec<FlatEntry<'a>>) {
    if let Node::Dir { children, .. } = node {
        for (name, child) in children {
            let rel = prefix.join(name);
            out.push(FlatEntry {
                rel: rel.clone(),
                node: child,
            });
            flatten_into(child, rel, out);
        }
    }
}

/// Domain separation, so a directory can never hash like some file's bytes by accident.
const TREE_PREFIX: &[u8] = b"capstan-tree-v1\0";

pub(crate) fn dir_digest(children: &[(OsString, Node)]) -> blake3::Hash {
    use std::os::unix::ffi::OsStrExt;
    let mut hasher = blake3::Hasher::new();
    hasher.update(TREE_PREFIX);
    for (name, node) in children {
        hasher.update(if node.is_dir() { b"d" } else { b"f" });
        let name = name.as_bytes();
        hasher.update(&(name.len() as u64).to_le_bytes());
        hasher.update(name);
        hasher.update(node.digest().as_bytes());
    }
    hasher.finalize()
}

pub(crate) fn scan(path: &Path) -> Result<Scanned, ArtifactError> {
    let root = std::fs::canonicalize(path).map_err(|e| ArtifactError::io("read", path, e))?;
    let meta = std::fs::metadata(&root).map_err(|e| ArtifactError::io("read", path, e))?;
    let mut size = 0;
    let node = if meta.is_dir() {
        let mut ancestors = vec![root.clone()];
        scan_dir(&root, &root, &mut ancestors, &mut size)?
    } else if meta.is_file() {
        hash_file(&root, &mut size)?
    } else {
        return Err(special(path, meta.file_type()));
    };
    Ok(Scanned { node, size })
}

fn scan_dir(
    root: &Path,
    dir: &Path,
    ancestors: &mut Vec<PathBuf>,
    size: &mut u64,
) -> Result<Node, ArtifactError> {
    let mut names = Vec::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| ArtifactError::io("read directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArtifactError::io("read directory", dir, e))?;
        names.push(entry.file_name());
    }
    names.sort();

    let mut children = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| ArtifactError::io("read", &path, e))?;
        let kind = meta.file_type();
        let node = if kind.is_symlink() {
            let target = std::fs::canonicalize(&path)
                .map_err(|e| ArtifactError::io("resolve symlink", &path, e))?;
            if !target.starts_with(root) {
                return Err(ArtifactError::SymlinkEscape {
                    link: path,
                    root: root.to_path_buf(),
                });
            }
            let target_meta =
                std::fs::metadata(&target).map_err(|e| ArtifactError::io("read", &target, e))?;
            if target_meta.is_dir() {
                if ancestors.contains(&target) {
                    return Err(ArtifactError::SymlinkCycle { link: path });
                }
                descend(root, &target, ancestors, size)?
            } else if target_meta.is_file() {
                hash_file(&target, size)?
            } else {
                return Err(special(&path, target_meta.file_type()));
            }
        } else if kind.is_dir() {
            descend(root, &path, ancestors, size)?
        } else if kind.is_file() {
            hash_file(&path, size)?
        } else {
            return Err(special(&path, kind));
        };
        children.push((name, node));
    }
    let digest = dir_digest(&children);
    Ok(Node::Dir { children, digest })
}

fn descend(
    root: &Path,
    dir: &Path,
    ancestors: &mut Vec<PathBuf>,
    size: &mut u64,
) -> Result<Node, ArtifactError> {
    ancestors.push(dir.to_path_buf());
    let node = scan_dir(root, dir, ancestors, size);
    ancestors.pop();
    node
}

fn hash_file(path: &Path, total: &mut u64) -> Result<Node, ArtifactError> {
    let mut file = File::open(path).map_err(|e| ArtifactError::io("read", path, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ArtifactError::io("read", path, e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    *total += size;
    Ok(Node::File {
        source: path.to_path_buf(),
        size,
        digest: hasher.finalize(),
    })
}

fn special(path: &Path, kind: std::fs::FileType) -> ArtifactError {
    let kind = if kind.is_fifo() {
        "fifo"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_char_device() {
        "character device"
    } else {
        "unknown"
    };
    ArtifactError::SpecialFile {
        kind,
        path: path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_digest_is_plain_blake3() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.txt");
        std::fs::write(&file, b"hello").unwrap();
        let (digest, size, is_dir) = hash_path(&file).unwrap();
        assert_eq!(
            digest,
            format!("blake3:{}", blake3::hash(b"hello").to_hex())
        );
        assert_eq!(size, 5);
        assert!(!is_dir);
    }

    #[test]
    fn directory_digest_covers_names_kinds_and_contents() {
        let base = tempfile::tempdir().unwrap();
        let make = |name: &str, files: &[(&str, &str)], dirs: &[&str]| {
            let root = base.path().join(name);
            std::fs::create_dir(&root).unwrap();
            for d in dirs {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            for (f, content) in files {
                std::fs::write(root.join(f), content).unwrap();
            }
            hash_path(&root).unwrap().0
        };
        let original = make("a", &[("x", "1"), ("y", "2")], &[]);
        assert_eq!(original, make("b", &[("y", "2"), ("x", "1")], &[]));
        assert_ne!(original, make("c", &[("x", "1"), ("z", "2")], &[]));
        assert_ne!(original, make("d", &[("x", "1"), ("y", "3")], &[]));
        assert_ne!(original, make("e", &[("x", "1"), ("y", "2")], &["empty"]));
        // A file `e` and an empty directory `e` differ.
        assert_ne!(make("f", &[("e", "")], &[]), make("g", &[], &["e"]));
    }

    #[test]
    fn special_files_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let err = hash_path(dir.path()).unwrap_err();
        assert!(matches!(
            err,
            ArtifactError::SpecialFile { kind: "fifo", .. }
        ));
        assert!(err.to_string().contains("pipe"), "{err}");
    }

    #[test]
    fn symlinks_inside_count_as_their_target_and_loops_are_rejected() {
        let base = tempfile::tempdir().unwrap();
        let plain = base.path().join("plain");
        std::fs::create_dir_all(plain.join("sub")).unwrap();
        std::fs::write(plain.join("sub/data"), "x").unwrap();
        std::fs::write(plain.join("copy"), "x").unwrap();
        let linked = base.path().join("linked");
        std::fs::create_dir_all(linked.join("sub")).unwrap();
        std::fs::write(linked.join("sub/data"), "x").unwrap();
        std::os::unix::fs::symlink("sub/data", linked.join("copy")).unwrap();
        assert_eq!(hash_path(&plain).unwrap(), hash_path(&linked).unwrap());

        std::os::unix::fs::symlink("..", linked.join("sub/up")).unwrap();
        let err = hash_path(&linked).unwrap_err();
        assert!(matches!(err, ArtifactError::SymlinkCycle { .. }), "{err}");
    }

    #[test]
    fn symlinks_escaping_the_artifact_are_rejected() {
        let base = tempfile::tempdir().unwrap();
        std::fs::write(base.path().join("secret"), "s").unwrap();
        let art = base.path().join("art");
        std::fs::create_dir(&art).unwrap();
        std::os::unix::fs::symlink("../secret", art.join("leak")).unwrap();
        let err = hash_path(&art).unwrap_err();
        assert!(matches!(err, ArtifactError::SymlinkEscape { .. }), "{err}");
        assert!(err.to_string().contains("leak"));
    }
}
