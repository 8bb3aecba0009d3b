//! The artifact store: where content-addressed blobs and task logs live.
//!
//! Layout under the store root (a local directory or an object store prefix):
//!
//! - `blobs/<hex>`: a stored file, or for a directory a tree of objects under that prefix
//!   (on local disk: a read-only directory).
//! - `trees/<hex>.json` (object stores only): the manifest of a stored directory. It is written
//!   last, so its presence means the directory is complete; an object store has no empty
//!   directories and no atomic multi-object write, and the manifest stands in for both.
//! - `logs/<run_id>/<task>.<attempt>.log`: task logs.
//!
//! On local disk a blob is staged under `tmp/` and renamed into `blobs/` when complete, so a crash
//! or a full disk never leaves a partial blob visible. Files are hard-linked into the store when
//! the source is on the same filesystem; the source then shares the (read-only) blob's storage.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ArtifactError;
use crate::fsio;
use crate::paths::{check_segment, is_hex_digest};
use crate::tree::{self, Node};

/// Files up to this size are uploaded with one request; larger ones in parts of this size.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// How many parts of one upload may be in flight at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Where artifacts are stored. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct ArtifactStore {
    inner: Arc<Inner>,
}

struct Inner {
    root_url: String,
    cache_dir: PathBuf,
    backend: Backend,
}

enum Backend {
    Local {
        root: PathBuf,
    },
    Remote {
        store: Arc<dyn ObjectStore>,
        prefix: ObjPath,
    },
}

/// What [`ArtifactStore::put`] stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredArtifact {
    /// `<root_url>/blobs/<hex>`.
    pub uri: String,
    /// `blake3:<hex>`.
    pub digest: String,
    /// Total bytes of the file, or of all files in the directory.
    pub size: u64,
    pub is_dir: bool,
}

/// The manifest of a directory stored in an object store.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    digest: String,
    size: u64,
    entries: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ManifestEntry {
    /// Relative path with `/` separators.
    path: String,
    kind: EntryKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    /// The file's blake3 hex digest, checked when it is downloaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    blake3: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EntryKind {
    File,
    Dir,
}

/// What a URI inside the store addresses.
enum Target {
    Blob { hex: String },
    Log { rel: String },
}

impl std::fmt::Debug for ArtifactStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactStore")
            .field("root_url", &self.inner.root_url)
            .field("cache_dir", &self.inner.cache_dir)
            .finish()
    }
}

impl ArtifactStore {
    /// Opens the store at `url`: `None` for `<workspace>/artifacts`; a plain path or `file:///abs`
    /// for another local directory; `s3://bucket/prefix` (configured from the `AWS_*` variables,
    /// including `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` for MinIO-style servers), `gs://bucket/prefix`
    /// (`GOOGLE_*`), `az://container/prefix` (`AZURE_*`); or `memory://` for a store that lives as
    /// long as this value and its clones. Remote blobs are materialised under `<workspace>/cache`.
    pub fn open(url: Option<&str>, workspace: &Path) -> Result<ArtifactStore, ArtifactError> {
        let workspace = std::path::absolute(workspace)
            .map_err(|e| ArtifactError::io("resolve", workspace, e))?;
        let cache_dir = workspace.join("cache");
        let backend = match url {
            None => local_backend(workspace.join("artifacts"))?,
            Some(raw) => open_url(raw)?,
        };
        let root_url = match &backend {
            Backend::Local { root } => url::Url::from_file_path(root)
                .map_err(|()| ArtifactError::BadUrl {
                    url: root.display().to_string(),
                    reason: "the path cannot be written as a file url".into(),
                })?
                .to_string(),
            Backend::Remote { .. } => remote_root_url(url.unwrap_or_default())?,
        };
        Ok(ArtifactStore {
            inner: Arc::new(Inner {
                root_url,
                cache_dir,
                backend,
            }),
        })
    }

    /// The URL every artifact URI of this store starts with, e.g. `file:///home/u/.capstan/artifacts`.
    pub fn root_url(&self) -> &str {
        &self.inner.root_url
    }

    /// True when blobs are plain files on this machine and need no download.
    pub fn is_local(&self) -> bool {
        matches!(self.inner.backend, Backend::Local { .. })
    }

    /// Named, mutable files under `tracking/` in this store, for the tracking server's artifact
    /// proxy.
    pub fn tracking_files(&self) -> Result<crate::TrackingFiles, ArtifactError> {
        match &self.inner.backend {
            Backend::Local { root } => {
                let dir = root.join("tracking");
                std::fs::create_dir_all(&dir).map_err(|e| ArtifactError::io("create", &dir, e))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(
                    |source| ArtifactError::Store {
                        location: dir.display().to_string(),
                        source,
                    },
                )?;
                Ok(crate::TrackingFiles::new(
                    Arc::new(local),
                    ObjPath::default(),
                ))
            }
            Backend::Remote { store, prefix } => Ok(crate::TrackingFiles::new(
                store.clone(),
                prefix.clone().join("tracking"),
            )),
        }
    }

    /// Where remote blobs are materialised for steps.
    pub fn cache_dir(&self) -> &Path {
        &self.inner.cache_dir
    }

    /// The URI an artifact with this digest (`blake3:<hex>` or bare hex) has in this store.
    pub fn uri_for_digest(&self, digest: &str) -> Result<String, ArtifactError> {
        let hex = digest.strip_prefix("blake3:").unwrap_or(digest);
        if !is_hex_digest(hex) {
            return Err(ArtifactError::BadUri {
                uri: digest.to_string(),
                reason: "expected a blake3 digest of 64 lowercase hex digits".into(),
            });
        }
        Ok(self.join_uri(&format!("blobs/{hex}")))
    }

    /// Hashes the file or directory at `path` and stores it, unless content with the same digest
    /// is already stored. Symlinks that resolve inside `path` are stored as their target's content;
    /// symlinks leading outside `path`, symlink loops and special files are rejected.
    pub async fn put(&self, path: &Path) -> Result<StoredArtifact, ArtifactError> {
        let source = path.to_path_buf();
        let (hex, size, is_dir) = match &self.inner.backend {
            Backend::Local { root } => {
                let root = root.clone();
                blocking(move || put_local(&root, &source)).await?
            }
            Backend::Remote { store, prefix } => {
                let scanned = blocking(move || tree::scan(&source)).await?;
                self.put_remote(store, prefix, path, &scanned).await?
            }
        };
        Ok(StoredArtifact {
            uri: self.join_uri(&format!("blobs/{hex}")),
            digest: format!("blake3:{hex}"),
            size,
            is_dir,
        })
    }

    /// True when the artifact at `uri` is stored.
    pub async fn exists(&self, uri: &str) -> Result<bool, ArtifactError> {
        let hex = self.blob_hex(uri)?;
        match &self.inner.backend {
            Backend::Local { root } => Ok(root.join("blobs").join(&hex).exists()),
            Backend::Remote { store, prefix } => {
                Ok(remote_kind(store, prefix, &hex).await?.is_some())
            }
        }
    }

    /// A local path holding the artifact's content, to hand to a step as an input. For the local
    /// backend this is the read-only blob itself; otherwise the blob is downloaded once into the
    /// cache directory, checked against its digest, and reused afterwards.
    pub async fn local_path(&self, uri: &str) -> Result<PathBuf, ArtifactError> {
        let hex = self.blob_hex(uri)?;
        match &self.inner.backend {
            Backend::Local { root } => {
                let blob = root.join("blobs").join(&hex);
                if !blob.exists() {
                    return Err(ArtifactError::NotFound {
                        uri: uri.to_string(),
                    });
                }
                Ok(blob)
            }
            Backend::Remote { store, prefix } => {
                let cached = self.inner.cache_dir.join(&hex);
                if cached.exists() {
                    return Ok(cached);
                }
                std::fs::create_dir_all(&self.inner.cache_dir)
                    .map_err(|e| ArtifactError::io("create", &self.inner.cache_dir, e))?;
                let tmp = self.inner.cache_dir.join(fsio::unique_name(&hex));
                let result = self.download(store, prefix, uri, &hex, &tmp).await;
                let result = result.and_then(|()| {
                    fsio::make_read_only(&tmp, true)?;
                    match std::fs::rename(&tmp, &cached) {
                        Ok(()) => {}
                        // Another caller materialised it first; theirs is identical.
                        Err(_) if cached.exists() => fsio::remove_all(&tmp),
                        Err(e) => return Err(ArtifactError::io("write", &cached, e)),
                    }
                    if cached.is_dir() {
                        fsio::set_mode(&cached, 0o555)?;
                    }
                    Ok(())
                });
                if let Err(err) = result {
                    fsio::remove_all(&tmp);
                    return Err(err);
                }
                Ok(cached)
            }
        }
    }

    /// Copies the artifact (file or directory) to `dest`, streaming. A file replaces `dest`; a
    /// directory's entries are written into `dest`, which is created if missing. The copy is
    /// writable by its owner.
    pub async fn get_to(&self, uri: &str, dest: &Path) -> Result<(), ArtifactError> {
        let hex = self.blob_hex(uri)?;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| ArtifactError::io("create", parent, e))?;
        }
        match &self.inner.backend {
            Backend::Local { root } => {
                let blob = root.join("blobs").join(&hex);
                if !blob.exists() {
                    return Err(ArtifactError::NotFound {
                        uri: uri.to_string(),
                    });
                }
                let dest = dest.to_path_buf();
                blocking(move || fsio::copy_out(&blob, &dest)).await
            }
            Backend::Remote { store, prefix } => {
                let tmp = fsio::sibling_temp(dest);
                let result = self.download(store, prefix, uri, &hex, &tmp).await;
                let result = result.and_then(|()| place(&tmp, dest));
                if result.is_err() {
                    fsio::remove_all(&tmp);
                }
                result
            }
        }
    }

    /// Where the log of one task attempt goes: a local file to append to as output arrives, and
    /// its URI (`<root_url>/logs/<run_id>/<task>.<attempt>.log`). On local disk the file is the
    /// log itself; for object stores it is a file under the cache directory that
    /// [`finish_log`](Self::finish_log) uploads. Parent directories are created.
    pub fn log_path(
        &self,
        run_id: &str,
        task: &str,
        attempt: u32,
    ) -> Result<(PathBuf, String), ArtifactError> {
        let rel = attempt_rel(run_id, task, attempt, "log")?;
        let local = self.log_file(&rel);
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).map_err(|e| ArtifactError::io("create", parent, e))?;
        }
        Ok((local, self.join_uri(&rel)))
    }

    /// Where a remote worker leaves the result document of one task attempt:
    /// `<root_url>/logs/<run_id>/<task>.<attempt>.result.json`, next to the attempt's log.
    pub fn result_uri(
        &self,
        run_id: &str,
        task: &str,
        attempt: u32,
    ) -> Result<String, ArtifactError> {
        Ok(self.join_uri(&attempt_rel(run_id, task, attempt, "result.json")?))
    }

    /// Writes a small document (a result document) at a URI under `logs/`, replacing what was
    /// there. On local disk the write is atomic (a temporary file renamed into place).
    pub async fn put_document(&self, uri: &str, body: Vec<u8>) -> Result<(), ArtifactError> {
        let rel = self.log_rel(uri)?;
        match &self.inner.backend {
            Backend::Local { root } => {
                let path = root.join(&rel);
                blocking(move || {
                    let parent = path.parent().expect("a document has a parent directory");
                    std::fs::create_dir_all(parent)
                        .map_err(|e| ArtifactError::io("create", parent, e))?;
                    let tmp = parent.join(fsio::unique_name("document"));
                    std::fs::write(&tmp, &body).map_err(|e| ArtifactError::io("write", &tmp, e))?;
                    std::fs::rename(&tmp, &path).map_err(|e| {
                        fsio::remove_all(&tmp);
                        ArtifactError::io("write", &path, e)
                    })
                })
                .await
            }
            Backend::Remote { store, prefix } => {
                let key = child_path(prefix, &rel);
                store
                    .put(&key, PutPayload::from(body))
                    .await
                    .map(|_| ())
                    .map_err(|e| ArtifactError::store(uri, e))
            }
        }
    }

    /// Reads a document written by [`put_document`](Self::put_document); `NotFound` when there is
    /// none.
    pub async fn read_document(&self, uri: &str) -> Result<Vec<u8>, ArtifactError> {
        let rel = self.log_rel(uri)?;
        match &self.inner.backend {
            Backend::Local { root } => {
                let path = root.join(&rel);
                match tokio::fs::read(&path).await {
                    Ok(bytes) => Ok(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(ArtifactError::NotFound {
                            uri: uri.to_string(),
                        })
                    }
                    Err(e) => Err(ArtifactError::io("read", &path, e)),
                }
            }
            Backend::Remote { store, prefix } => {
                let key = child_path(prefix, &rel);
                match store.get(&key).await {
                    Ok(got) => Ok(got
                        .bytes()
                        .await
                        .map_err(|e| ArtifactError::store(uri, e))?
                        .to_vec()),
                    Err(object_store::Error::NotFound { .. }) => Err(ArtifactError::NotFound {
                        uri: uri.to_string(),
                    }),
                    Err(e) => Err(ArtifactError::store(uri, e)),
                }
            }
        }
    }

    /// Makes a finished log durable in the store: uploads it for object stores, and does nothing
    /// on local disk where the log was written in place.
    pub async fn finish_log(&self, local: &Path, uri: &str) -> Result<(), ArtifactError> {
        let rel = self.log_rel(uri)?;
        let Backend::Remote { store, prefix } = &self.inner.backend else {
            return Ok(());
        };
        let key = child_path(prefix, &rel);
        upload_file(store, local, &key, None).await
    }

    /// The content of a log. For object stores a log that is not uploaded yet is read from its
    /// local file, so logs of running tasks can be followed on the machine that runs them.
    pub async fn read_log(&self, uri: &str) -> Result<Vec<u8>, ArtifactError> {
        let rel = self.log_rel(uri)?;
        let not_found = || ArtifactError::NotFound {
            uri: uri.to_string(),
        };
        if let Backend::Remote { store, prefix } = &self.inner.backend {
            let key = child_path(prefix, &rel);
            match store.get(&key).await {
                Ok(got) => {
                    let bytes = got
                        .bytes()
                        .await
                        .map_err(|e| ArtifactError::store(uri, e))?;
                    return Ok(bytes.to_vec());
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(ArtifactError::store(uri, e)),
            }
        }
        let local = self.log_file(&rel);
        match tokio::fs::read(&local).await {
            Ok(bytes) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(not_found()),
            Err(e) => Err(ArtifactError::io("read", &local, e)),
        }
    }

    fn log_file(&self, rel: &str) -> PathBuf {
        match &self.inner.backend {
            Backend::Local { root } => root.join(rel),
            Backend::Remote { .. } => self.inner.cache_dir.join(rel),
        }
    }

    fn join_uri(&self, rest: &str) -> String {
        if self.inner.root_url.ends_with('/') {
            format!("{}{rest}", self.inner.root_url)
        } else {
            format!("{}/{rest}", self.inner.root_url)
        }
    }

    /// Resolves a URI of this store (or a bare `blake3:<hex>` digest) to what it addresses.
    fn parse_uri(&self, uri: &str) -> Result<Target, ArtifactError> {
        let bad = |reason: &str| ArtifactError::BadUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        if let Some(hex) = uri.strip_prefix("blake3:") {
            if !is_hex_digest(hex) {
                return Err(bad("expected 64 lowercase hex digits after 'blake3:'"));
            }
            return Ok(Target::Blob {
                hex: hex.to_string(),
            });
        }
        let root = self.join_uri("");
        let Some(rest) = uri.strip_prefix(&root) else {
            return Err(ArtifactError::OutsideStore {
                uri: uri.to_string(),
                root: self.inner.root_url.clone(),
            });
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<&str> = rest.split('/').collect();
        for segment in &segments {
            check_segment(segment).map_err(bad)?;
        }
        match segments.as_slice() {
            ["blobs", hex] if is_hex_digest(hex) => Ok(Target::Blob {
                hex: hex.to_string(),
            }),
            ["logs", _run, _task, ..] => Ok(Target::Log {
                rel: rest.to_string(),
            }),
            _ => Err(bad(&format!("expected {root}blobs/<blake3 hex digest>"))),
        }
    }

    fn blob_hex(&self, uri: &str) -> Result<String, ArtifactError> {
        match self.parse_uri(uri)? {
            Target::Blob { hex } => Ok(hex),
            Target::Log { .. } => Err(ArtifactError::BadUri {
                uri: uri.to_string(),
                reason: "this is a log, not an artifact".into(),
            }),
        }
    }

    fn log_rel(&self, uri: &str) -> Result<String, ArtifactError> {
        match self.parse_uri(uri)? {
            Target::Log { rel } => Ok(rel),
            Target::Blob { .. } => Err(ArtifactError::BadUri {
                uri: uri.to_string(),
                reason: "this is an artifact, not a log".into(),
            }),
        }
    }

    async fn put_remote(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &ObjPath,
        path: &Path,
        scanned: &tree::Scanned,
    ) -> Result<(String, u64, bool), ArtifactError> {
        let hex = scanned.node.digest().to_hex().to_string();
        let is_dir = scanned.node.is_dir();
        if remote_kind(store, prefix, &hex).await?.is_some() {
            return Ok((hex, scanned.size, is_dir));
        }
        let blob = child_path(prefix, &format!("blobs/{hex}"));
        if let Node::File { source, digest, .. } = &scanned.node {
            upload_file(store, source, &blob, Some((*digest, path))).await?;
            return Ok((hex, scanned.size, false));
        }
        let mut entries = Vec::new();
        for entry in scanned.node.flatten() {
            let rel = entry_rel(path, &entry.rel)?;
            match entry.node {
                Node::File {
                    source,
                    size,
                    digest,
                } => {
                    let key = child_path(&blob, &rel);
                    upload_file(store, source, &key, Some((*digest, path))).await?;
                    entries.push(ManifestEntry {
                        path: rel,
                        kind: EntryKind::File,
                        size: Some(*size),
                        blake3: Some(digest.to_hex().to_string()),
                    });
                }
                Node::Dir { .. } => entries.push(ManifestEntry {
                    path: rel,
                    kind: EntryKind::Dir,
                    size: None,
                    blake3: None,
                }),
            }
        }
        let manifest = Manifest {
            digest: format!("blake3:{hex}"),
            size: scanned.size,
            entries,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        let key = child_path(prefix, &format!("trees/{hex}.json"));
        store
            .put(&key, PutPayload::from(json))
            .await
            .map_err(|e| ArtifactError::store(key.to_string(), e))?;
        Ok((hex, scanned.size, true))
    }

    /// Downloads blob `hex` to `dest` (a new file or directory), checking every file's digest.
    async fn download(
        &self,
        store: &Arc<dyn ObjectStore>,
        prefix: &ObjPath,
        uri: &str,
        hex: &str,
        dest: &Path,
    ) -> Result<(), ArtifactError> {
        let blob = child_path(prefix, &format!("blobs/{hex}"));
        match remote_kind(store, prefix, hex).await? {
            None => Err(ArtifactError::NotFound {
                uri: uri.to_string(),
            }),
            Some(EntryKind::File) => download_file(store, &blob, dest, uri, hex).await,
            Some(EntryKind::Dir) => {
                let manifest = read_manifest(store, prefix, uri, hex).await?;
                tokio::fs::create_dir(dest)
                    .await
                    .map_err(|e| ArtifactError::io("create", dest, e))?;
                for entry in &manifest.entries {
                    let local = dest.join(manifest_rel(uri, &entry.path)?);
                    match entry.kind {
                        EntryKind::Dir => tokio::fs::create_dir_all(&local)
                            .await
                            .map_err(|e| ArtifactError::io("create", &local, e))?,
                        EntryKind::File => {
                            let Some(expected) = &entry.blake3 else {
                                return Err(ArtifactError::Corrupt {
                                    uri: uri.to_string(),
                                    reason: format!("manifest has no digest for {}", entry.path),
                                });
                            };
                            let key = child_path(&blob, &entry.path);
                            download_file(store, &key, &local, uri, expected).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

/// Runs blocking filesystem work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(work)
        .await
        .expect("artifact filesystem task panicked")
}

/// `logs/<run_id>/<task>.<attempt>.<suffix>`, after checking the run id and task name cannot
/// escape their directory.
fn attempt_rel(
    run_id: &str,
    task: &str,
    attempt: u32,
    suffix: &str,
) -> Result<String, ArtifactError> {
    let run_segment = if run_id.contains('/') {
        Err("a run id cannot contain '/'")
    } else {
        check_segment(run_id)
    };
    run_segment.map_err(|reason| ArtifactError::BadName {
        what: "run id",
        name: run_id.to_string(),
        reason,
    })?;
    for segment in task.split('/') {
        check_segment(segment).map_err(|reason| ArtifactError::BadName {
            what: "task name",
            name: task.to_string(),
            reason,
        })?;
    }
    Ok(format!("logs/{run_id}/{task}.{attempt}.{suffix}"))
}

fn local_backend(root: PathBuf) -> Result<Backend, ArtifactError> {
    std::fs::create_dir_all(&root).map_err(|e| ArtifactError::io("create", &root, e))?;
    Ok(Backend::Local { root })
}

fn open_url(raw: &str) -> Result<Backend, ArtifactError> {
    let bad = |reason: String| ArtifactError::BadUrl {
        url: raw.to_string(),
        reason,
    };
    if !raw.contains("://") && !raw.starts_with("file:") && !raw.starts_with("memory:") {
        let root = std::path::absolute(raw).map_err(|e| ArtifactError::io("resolve", raw, e))?;
        return local_backend(root);
    }
    // URL parsing silently resolves `..` and `%2e%2e`; refuse them before it can.
    let dotted = raw.split('/').any(|segment| {
        let lower = segment.to_ascii_lowercase();
        lower == "." || lower == ".." || lower.contains("%2e")
    });
    if dotted {
        return Err(bad("'.' and '..' segments are not allowed".into()));
    }
    let url = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    let prefix = url_prefix(&url).map_err(|reason| bad(reason.into()))?;
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => {
            let root = url
                .to_file_path()
                .map_err(|()| bad("expected file:///absolute/path".into()))?;
            return local_backend(root);
        }
        "memory" => Arc::new(object_store::memory::InMemory::new()),
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(raw)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(raw)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        "az" | "azure" | "abfs" | "abfss" | "adl" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(raw)
                .build()
                .map_err(|e| bad(e.to_string()))?,
        ),
        other => {
            return Err(bad(format!(
                "unsupported scheme {other:?}; use a path, file://, s3://, gs://, az:// or memory://"
            )));
        }
    };
    Ok(Backend::Remote { store, prefix })
}

/// The key prefix that a store URL's path names, checked segment by segment.
fn url_prefix(url: &url::Url) -> Result<ObjPath, &'static str> {
    let path = url.path().trim_matches('/');
    if path.is_empty() {
        return Ok(ObjPath::default());
    }
    for segment in path.split('/') {
        check_segment(segment)?;
    }
    ObjPath::parse(path).map_err(|_| "the path is not a valid object key prefix")
}

/// The canonical root URL of a remote store: `scheme://bucket[/prefix]`, or `memory:///[prefix]`.
fn remote_root_url(raw: &str) -> Result<String, ArtifactError> {
    let url = url::Url::parse(raw).map_err(|e| ArtifactError::BadUrl {
        url: raw.to_string(),
        reason: e.to_string(),
    })?;
    let path = url.path().trim_matches('/');
    let host = url.host_str().unwrap_or("");
    if url.scheme() == "memory" || host.is_empty() {
        return Ok(format!("{}:///{path}", url.scheme()));
    }
    if path.is_empty() {
        return Ok(format!("{}://{host}", url.scheme()));
    }
    Ok(format!("{}://{host}/{path}", url.scheme()))
}

fn child_path(prefix: &ObjPath, rel: &str) -> ObjPath {
    let mut key = prefix.clone();
    for part in rel.split('/') {
        key = key.join(part);
    }
    key
}

/// Whether blob `hex` is stored as a file, as a complete directory, or not at all.
async fn remote_kind(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjPath,
    hex: &str,
) -> Result<Option<EntryKind>, ArtifactError> {
    for (rel, kind) in [
        (format!("blobs/{hex}"), EntryKind::File),
        (format!("trees/{hex}.json"), EntryKind::Dir),
    ] {
        let key = child_path(prefix, &rel);
        match store.head(&key).await {
            Ok(_) => return Ok(Some(kind)),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(ArtifactError::store(key.to_string(), e)),
        }
    }
    Ok(None)
}

async fn read_manifest(
    store: &Arc<dyn ObjectStore>,
    prefix: &ObjPath,
    uri: &str,
    hex: &str,
) -> Result<Manifest, ArtifactError> {
    let key = child_path(prefix, &format!("trees/{hex}.json"));
    let bytes = store
        .get(&key)
        .await
        .map_err(|e| ArtifactError::store(key.to_string(), e))?
        .bytes()
        .await
        .map_err(|e| ArtifactError::store(key.to_string(), e))?;
    serde_json::from_slice(&bytes).map_err(|e| ArtifactError::Corrupt {
        uri: uri.to_string(),
        reason: format!("unreadable manifest {key}: {e}"),
    })
}

/// A manifest path as a relative local path; a manifest naming `..` or an absolute path is corrupt.
fn manifest_rel(uri: &str, rel: &str) -> Result<PathBuf, ArtifactError> {
    let path = Path::new(rel);
    let plain = !rel.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Err(ArtifactError::Corrupt {
            uri: uri.to_string(),
            reason: format!("manifest entry {rel:?} is not a plain relative path"),
        });
    }
    Ok(path.to_path_buf())
}

/// A directory entry's relative path as an object key suffix with `/` separators.
fn entry_rel(root: &Path, rel: &Path) -> Result<String, ArtifactError> {
    let mut parts = Vec::new();
    for component in rel.components() {
        let Some(part) = component.as_os_str().to_str() else {
            return Err(ArtifactError::NonUtf8Name {
                path: root.join(rel),
            });
        };
        parts.push(part);
    }
    Ok(parts.join("/"))
}

/// Streams a local file into one object. With `expected`, the bytes sent are hashed on the way and
/// the object is only completed if they still match the digest taken when the file was scanned.
async fn upload_file(
    store: &Arc<dyn ObjectStore>,
    source: &Path,
    key: &ObjPath,
    expected: Option<(blake3::Hash, &Path)>,
) -> Result<(), ArtifactError> {
    let mut file = tokio::fs::File::open(source)
        .await
        .map_err(|e| ArtifactError::io("read", source, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1024 * 1024];
    let mut first = Vec::new();
    // Read up to one part; a file that fits is sent with a single request.
    while first.len() < PART_SIZE {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| ArtifactError::io("read", source, e))?;
        if n == 0 {
            break;
        }
        first.extend_from_slice(&buf[..n]);
    }
    hasher.update(&first);
    let changed = |hasher: &blake3::Hasher| match expected {
        Some((digest, storing)) if hasher.finalize() != digest => Some(ArtifactError::Changed {
            path: storing.to_path_buf(),
        }),
        _ => None,
    };
    if first.len() < PART_SIZE {
        if let Some(err) = changed(&hasher) {
            return Err(err);
        }
        store
            .put(key, PutPayload::from(first))
            .await
            .map_err(|e| ArtifactError::store(key.to_string(), e))?;
        return Ok(());
    }
    let upload = store
        .put_multipart(key)
        .await
        .map_err(|e| ArtifactError::store(key.to_string(), e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    writer.write(&first);
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(ArtifactError::io("read", source, e));
            }
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Err(e) = writer.wait_for_capacity(UPLOAD_CONCURRENCY).await {
            return Err(ArtifactError::store(key.to_string(), e));
        }
        writer.write(&buf[..n]);
    }
    if let Some(err) = changed(&hasher) {
        let _ = writer.abort().await;
        return Err(err);
    }
    writer
        .finish()
        .await
        .map_err(|e| ArtifactError::store(key.to_string(), e))?;
    Ok(())
}

/// Streams one object into a new local file and checks it against `expected_hex`.
async fn download_file(
    store: &Arc<dyn ObjectStore>,
    key: &ObjPath,
    dest: &Path,
    uri: &str,
    expected_hex: &str,
) -> Result<(), ArtifactError> {
    let got = store
        .get(key)
        .await
        .map_err(|e| ArtifactError::store(key.to_string(), e))?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .await
        .map_err(|e| ArtifactError::io("create", dest, e))?;
    let mut hasher = blake3::Hasher::new();
    let mut stream = got.into_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ArtifactError::store(key.to_string(), e))?;
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| ArtifactError::io("write", dest, e))?;
    }
    file.sync_all()
        .await
        .map_err(|e| ArtifactError::io("write", dest, e))?;
    let actual = hasher.finalize().to_hex();
    if actual.as_str() != expected_hex {
        return Err(ArtifactError::Corrupt {
            uri: uri.to_string(),
            reason: format!("{key} has digest {actual}, expected {expected_hex}"),
        });
    }
    Ok(())
}

/// Moves a downloaded file or tree from its temporary path to `dest`.
fn place(tmp: &Path, dest: &Path) -> Result<(), ArtifactError> {
    if tmp.is_dir() && dest.is_dir() {
        // Merge into an existing directory, as the local backend does.
        fsio::copy_out(tmp, dest)?;
        fsio::remove_all(tmp);
        return Ok(());
    }
    std::fs::rename(tmp, dest).map_err(|e| ArtifactError::io("write", dest, e))
}

/// Stores `source` under `<root>/blobs/<hex>`: stage under `<root>/tmp`, seal read-only, check
/// the staged copy still has the scanned digest, then rename into place.
fn put_local(root: &Path, source: &Path) -> Result<(String, u64, bool), ArtifactError> {
    let scanned = tree::scan(source)?;
    let hex = scanned.node.digest().to_hex().to_string();
    let is_dir = scanned.node.is_dir();
    let blobs = root.join("blobs");
    let blob = blobs.join(&hex);
    if blob.exists() {
        return Ok((hex, scanned.size, is_dir));
    }
    let staging_dir = root.join("tmp");
    for dir in [&blobs, &staging_dir] {
        std::fs::create_dir_all(dir).map_err(|e| ArtifactError::io("create", dir, e))?;
    }
    let staging = staging_dir.join(fsio::unique_name(&hex));
    let result = (|| {
        fsio::stage(&scanned.node, &staging, source)?;
        fsio::make_read_only(&staging, true)?;
        let staged = tree::scan(&staging)?;
        if staged.node.digest() != scanned.node.digest() {
            return Err(ArtifactError::Changed {
                path: source.to_path_buf(),
            });
        }
        match std::fs::rename(&staging, &blob) {
            Ok(()) => {}
            // Someone stored the same content meanwhile; theirs is identical.
            Err(_) if blob.exists() => fsio::remove_all(&staging),
            Err(e) => return Err(ArtifactError::io("store", source, e)),
        }
        if is_dir {
            fsio::set_mode(&blob, 0o555)?;
        }
        Ok(())
    })();
    if let Err(err) = result {
        fsio::remove_all(&staging);
        // Whatever filled up (a directory, a link, a copy), the user stored `source`.
        if let ArtifactError::NoSpace { .. } = err {
            return Err(ArtifactError::NoSpace {
                path: source.to_path_buf(),
            });
        }
        return Err(err);
    }
    Ok((hex, scanned.size, is_dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_urls_are_canonical() {
        assert_eq!(remote_root_url("memory://").unwrap(), "memory:///");
        assert_eq!(remote_root_url("memory:///x/").unwrap(), "memory:///x");
        assert_eq!(remote_root_url("s3://bucket").unwrap(), "s3://bucket");
        assert_eq!(
            remote_root_url("s3://bucket/some/prefix/").unwrap(),
            "s3://bucket/some/prefix"
        );
    }

    #[test]
    fn store_urls_with_dot_segments_or_unknown_schemes_are_rejected() {
        let ws = tempfile::tempdir().unwrap();
        let err = ArtifactStore::open(Some("ftp://host/x"), ws.path()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid artifact store url ftp://host/x")
        );
        assert!(ArtifactStore::open(Some("memory:///a/%2e%2e/b"), ws.path()).is_err());
    }

    #[test]
    fn corrupt_manifest_paths_are_refused() {
        assert!(manifest_rel("u", "a/b").is_ok());
        for bad in ["", "../x", "/etc/x", "a/../../x", "./a"] {
            assert!(manifest_rel("u", bad).is_err(), "{bad:?}");
        }
    }
}
