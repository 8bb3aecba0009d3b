//! Local filesystem helpers for storing and materialising artifacts: unique temporary names,
//! link-or-copy, permission changes and cleanup. Everything here is blocking; callers run it on
//! tokio's blocking pool.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ArtifactError;
use crate::tree::Node;

/// A name no other writer in this or another process picks at the same time.
pub(crate) fn unique_name(stem: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        ".tmp-{stem}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Copies `reader` to `writer` in bounded chunks. `storing` is what the user asked to store, so a
/// full disk is reported against it.
pub(crate) fn copy_stream(
    reader: &mut impl Read,
    writer: &mut impl Write,
    storing: &Path,
) -> Result<u64, ArtifactError> {
    let copied =
        std::io::copy(reader, writer).map_err(|e| ArtifactError::io("copy", storing, e))?;
    writer
        .flush()
        .map_err(|e| ArtifactError::io("copy", storing, e))?;
    Ok(copied)
}

/// Copies one file to a new path, streaming; the new file is created, never overwritten.
pub(crate) fn copy_file(src: &Path, dst: &Path, storing: &Path) -> Result<(), ArtifactError> {
    let mut input = std::fs::File::open(src).map_err(|e| ArtifactError::io("read", src, e))?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dst)
        .map_err(|e| ArtifactError::io("create", dst, e))?;
    copy_stream(&mut input, &mut output, storing)?;
    output
        .sync_all()
        .map_err(|e| ArtifactError::io("write", storing, e))
}

/// Recreates a scanned tree at `dst`, hard-linking each file when the filesystem allows it
/// (no data is copied) and copying it otherwise.
pub(crate) fn stage(node: &Node, dst: &Path, storing: &Path) -> Result<(), ArtifactError> {
    match node {
        Node::File { source, .. } => {
            if std::fs::hard_link(source, dst).is_ok() {
                return Ok(());
            }
            copy_file(source, dst, storing)
        }
        Node::Dir { children, .. } => {
            std::fs::create_dir(dst).map_err(|e| ArtifactError::io("create", dst, e))?;
            for (name, child) in children {
                stage(child, &dst.join(name), storing)?;
            }
            Ok(())
        }
    }
}

/// Copies a stored tree (file or directory) to `dst`, giving the copy ordinary writable
/// permissions: the user owns what `artifacts get` hands out.
pub(crate) fn copy_out(src: &Path, dst: &Path) -> Result<(), ArtifactError> {
    let meta = std::fs::metadata(src).map_err(|e| ArtifactError::io("read", src, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst).map_err(|e| ArtifactError::io("create", dst, e))?;
        set_mode(dst, 0o755)?;
        let entries = std::fs::read_dir(src).map_err(|e| ArtifactError::io("read", src, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArtifactError::io("read", src, e))?;
            copy_out(&entry.path(), &dst.join(entry.file_name()))?;
        }
        return Ok(());
    }
    let tmp = sibling_temp(dst);
    let result = copy_file(src, &tmp, dst)
        .and_then(|()| set_mode(&tmp, 0o644))
        .and_then(|()| std::fs::rename(&tmp, dst).map_err(|e| ArtifactError::io("write", dst, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Mirrors a stored tree at `dst` with hard links to its files (copies where a link cannot be
/// made, across filesystems). A file already at `dst` is replaced; the blob is never written.
pub(crate) fn link_tree(src: &Path, dst: &Path) -> Result<(), ArtifactError> {
    let meta = std::fs::metadata(src).map_err(|e| ArtifactError::io("read", src, e))?;
    if meta.is_dir() {
        std::fs::create_dir_all(dst).map_err(|e| ArtifactError::io("create", dst, e))?;
        let entries = std::fs::read_dir(src).map_err(|e| ArtifactError::io("read", src, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| ArtifactError::io("read", src, e))?;
            link_tree(&entry.path(), &dst.join(entry.file_name()))?;
        }
        return Ok(());
    }
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ArtifactError::io("create", parent, e))?;
    }
    let tmp = sibling_temp(dst);
    let linked = std::fs::hard_link(src, &tmp).or_else(|_| copy_file(src, &tmp, dst));
    let result = linked
        .and_then(|()| std::fs::rename(&tmp, dst).map_err(|e| ArtifactError::io("write", dst, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temporary path next to `path`, so that a rename onto `path` stays on one filesystem.
pub(crate) fn sibling_temp(path: &Path) -> PathBuf {
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(unique_name(&stem))
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<(), ArtifactError> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ArtifactError::io("set permissions on", path, e))
}

/// Makes every file (0444) and directory (0555) below `path` read-only. The top directory itself
/// is left alone when `keep_top_writable` is set: moving a directory to another parent needs
/// write access to it, so the caller seals it after the final rename.
pub(crate) fn make_read_only(path: &Path, keep_top_writable: bool) -> Result<(), ArtifactError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| ArtifactError::io("read", path, e))?;
    if !meta.is_dir() {
        return set_mode(path, 0o444);
    }
    let entries = std::fs::read_dir(path).map_err(|e| ArtifactError::io("read", path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ArtifactError::io("read", path, e))?;
        make_read_only(&entry.path(), false)?;
    }
    if keep_top_writable {
        return Ok(());
    }
    set_mode(path, 0o555)
}

/// Removes a file or a tree, including read-only ones; used to clean up after a failed store.
pub(crate) fn remove_all(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        let _ = std::fs::remove_file(path);
        return;
    }
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            remove_all(&entry.path());
        }
    }
    let _ = std::fs::remove_dir(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk that fills up after a few bytes.
    struct FullDisk {
        room: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::from_raw_os_error(28));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_disk_during_copy_names_the_stored_path() {
        let mut data: &[u8] = &[7u8; 100_000];
        let err = copy_stream(
            &mut data,
            &mut FullDisk { room: 10 },
            Path::new("/work/out/model"),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "no space left on device while storing /work/out/model"
        );
    }

    #[test]
    fn read_only_trees_can_still_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("t");
        std::fs::create_dir_all(tree.join("a/b")).unwrap();
        std::fs::write(tree.join("a/b/f"), "x").unwrap();
        make_read_only(&tree, false).unwrap();
        let mode = std::fs::metadata(tree.join("a/b/f"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o444);
        remove_all(&tree);
        assert!(!tree.exists());
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("x"), unique_name("x"));
    }
}
