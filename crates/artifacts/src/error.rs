//! The one error type of this crate. Every message names the path, URI or URL to look at.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The disk filled up; whatever was half written has been removed.
    #[error("no space left on device while storing {}", path.display())]
    NoSpace { path: PathBuf },

    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("symlink {} points outside {}", link.display(), root.display())]
    SymlinkEscape { link: PathBuf, root: PathBuf },

    #[error("symlink {} loops back to a directory that contains it", link.display())]
    SymlinkCycle { link: PathBuf },

    #[error("unsupported file type ({kind}) at {}: only files and directories can be artifacts", path.display())]
    SpecialFile { kind: &'static str, path: PathBuf },

    #[error("file name is not valid UTF-8: {}", path.display())]
    NonUtf8Name { path: PathBuf },

    #[error("unsafe path {path:?}: {reason}")]
    UnsafePath { path: String, reason: &'static str },

    /// A run id or task name that cannot be part of a log path.
    #[error("invalid {what} {name:?}: {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },

    #[error("invalid artifact store url {url}: {reason}")]
    BadUrl { url: String, reason: String },

    #[error("artifact uri {uri} is not inside the artifact store {root}")]
    OutsideStore { uri: String, root: String },

    #[error("invalid artifact uri {uri}: {reason}")]
    BadUri { uri: String, reason: String },

    #[error("artifact not found: {uri}")]
    NotFound { uri: String },

    #[error("content of {} changed while it was being stored", path.display())]
    Changed { path: PathBuf },

    #[error("artifact {uri} is corrupt: {reason}")]
    Corrupt { uri: String, reason: String },

    #[error("object store error at {location}: {source}")]
    Store {
        location: String,
        #[source]
        source: object_store::Error,
    },
}

impl ArtifactError {
    /// Wraps an IO error, turning a full disk into [`ArtifactError::NoSpace`] naming `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        let path = path.into();
        if is_no_space(&source) {
            return ArtifactError::NoSpace { path };
        }
        ArtifactError::Io {
            action,
            path,
            source,
        }
    }

    pub(crate) fn store(location: impl Into<String>, source: object_store::Error) -> Self {
        ArtifactError::Store {
            location: location.into(),
            source,
        }
    }
}

pub(crate) fn is_no_space(err: &std::io::Error) -> bool {
    err.kind() == std::io::ErrorKind::StorageFull || err.kind() == std::io::ErrorKind::QuotaExceeded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_becomes_no_space_naming_the_path() {
        let err = ArtifactError::io(
            "write",
            "/data/model.bin",
            std::io::Error::from_raw_os_error(28),
        );
        assert!(matches!(err, ArtifactError::NoSpace { .. }));
        assert_eq!(
            err.to_string(),
            "no space left on device while storing /data/model.bin"
        );
    }

    #[test]
    fn other_io_errors_name_the_action_and_path() {
        let err = ArtifactError::io(
            "read",
            "/data/x",
            std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        );
        assert!(err.to_string().starts_with("cannot read /data/x: "));
    }
}
