//! Path safety: turning names that users and steps supply into paths that stay where they belong.
//!
//! Pipelines name output files, artifact URIs arrive on the command line and over the API, and task
//! names come from YAML. None of them may reach outside the directory or store they address.

use std::path::{Component, Path, PathBuf};

use crate::ArtifactError;

/// Joins a user-supplied relative path under `base`.
///
/// Rejects empty and absolute paths and any `..` component. When the joined path, or some parent
/// of it below `base`, already exists, it is resolved and rejected if a symlink leads it outside
/// `base`; a dangling symlink is rejected too, since writing through it could land anywhere.
pub fn safe_join(base: &Path, rel: &str) -> Result<PathBuf, ArtifactError> {
    let unsafe_path = |reason| ArtifactError::UnsafePath {
        path: rel.to_string(),
        reason,
    };
    if rel.is_empty() {
        return Err(unsafe_path("the path is empty"));
    }
    if rel.contains('\0') {
        return Err(unsafe_path("the path contains a NUL byte"));
    }
    let relative = Path::new(rel);
    for component in relative.components() {
        match component {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path("the path must not contain '..'")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path("the path must be relative"));
            }
        }
    }
    let joined = base.join(relative);
    let Ok(real_base) = std::fs::canonicalize(base) else {
        // Nothing exists under a missing base, so no symlink can lead anywhere yet.
        return Ok(joined);
    };
    // The deepest part of the joined path that exists decides where the rest would be created.
    for existing in joined.ancestors() {
        if existing == base {
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(existing) else {
            continue;
        };
        let Ok(real) = std::fs::canonicalize(existing) else {
            if meta.file_type().is_symlink() {
                return Err(unsafe_path("the path goes through a dangling symlink"));
            }
            return Err(unsafe_path("the path cannot be resolved"));
        };
        if !real.starts_with(&real_base) {
            return Err(unsafe_path(
                "a symlink leads the path outside its base directory",
            ));
        }
        break;
    }
    Ok(joined)
}

/// Checks one `/`-separated segment of a key or URI that capstan builds from names: run ids, task
/// names, digests. `%` is refused so that no percent-encoding can smuggle a `..` past this check.
pub(crate) fn check_segment(segment: &str) -> Result<(), &'static str> {
    if segment.is_empty() {
        return Err("empty path segment");
    }
    if segment == "." || segment == ".." {
        return Err("'.' and '..' segments are not allowed");
    }
    if segment.contains('%') {
        return Err("percent-encoded segments are not allowed");
    }
    if segment.chars().any(|c| c.is_control() || c == '\\') {
        return Err("control characters and backslashes are not allowed");
    }
    Ok(())
}

/// Checks a 64-character lowercase hex blake3 digest.
pub(crate) fn is_hex_digest(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_join() {
        let base = tempfile::tempdir().unwrap();
        let joined = safe_join(base.path(), "a/b.txt").unwrap();
        assert_eq!(joined, base.path().join("a/b.txt"));
        assert_eq!(
            safe_join(base.path(), "./x").unwrap(),
            base.path().join("x")
        );
    }

    #[test]
    fn traversal_and_absolute_paths_are_rejected() {
        let base = tempfile::tempdir().unwrap();
        for bad in ["../x", "a/../../x", "a/..", "/etc/passwd", "", "a\0b"] {
            let err = safe_join(base.path(), bad).unwrap_err();
            assert!(
                matches!(err, ArtifactError::UnsafePath { .. }),
                "{bad:?}: {err}"
            );
        }
        let err = safe_join(base.path(), "../x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsafe path \"../x\": the path must not contain '..'"
        );
    }

    #[test]
    fn symlinks_that_escape_are_rejected() {
        let outside = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), base.path().join("out")).unwrap();
        assert!(safe_join(base.path(), "out").is_err());
        assert!(safe_join(base.path(), "out/new/file").is_err());
        std::os::unix::fs::symlink("/nonexistent/capstan", base.path().join("dangling")).unwrap();
        assert!(safe_join(base.path(), "dangling").is_err());
        // A symlink that stays inside is fine.
        std::fs::create_dir(base.path().join("real")).unwrap();
        std::os::unix::fs::symlink("real", base.path().join("alias")).unwrap();
        assert!(safe_join(base.path(), "alias/file").is_ok());
    }

    #[test]
    fn segments_and_digests_are_checked() {
        assert!(check_segment("train[0]").is_ok());
        for bad in ["", ".", "..", "%2e%2e", "a\nb", "a\\b"] {
            assert!(check_segment(bad).is_err(), "{bad:?}");
        }
        assert!(is_hex_digest(&"ab".repeat(32)));
        assert!(!is_hex_digest(&"AB".repeat(32)));
        assert!(!is_hex_digest("abc"));
    }
}
