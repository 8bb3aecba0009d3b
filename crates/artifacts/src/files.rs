//! Mutable files under `<root>/tracking/`: what the MLflow-compatible artifact proxy serves.
//!
//! Unlike blobs, these are addressed by name (`<experiment>/<run>/artifacts/<path>`) and can be
//! overwritten and deleted, as MLflow clients expect. Bodies stream in and out in chunks; a file
//! is never held in memory whole. Every key is checked segment by segment, so no name can reach
//! outside `tracking/`.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::ArtifactError;
use crate::paths::check_segment;

/// Chunks of an upload are sent to the object store in parts of this size.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// One entry of a listing: a file with its size, or a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    /// The entry's name within the listed directory.
    pub name: String,
    pub is_dir: bool,
    pub size: Option<u64>,
}

/// Named, mutable files under the artifact store's `tracking/` prefix.
#[derive(Clone)]
pub struct TrackingFiles {
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
}

impl std::fmt::Debug for TrackingFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackingFiles")
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl TrackingFiles {
    pub(crate) fn new(store: Arc<dyn ObjectStore>, prefix: ObjPath) -> TrackingFiles {
        TrackingFiles { store, prefix }
    }

    /// The object key of a relative name; an empty name is the root.
    fn key(&self, name: &str) -> Result<ObjPath, ArtifactError> {
        let mut key = self.prefix.clone();
        let trimmed = name.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(key);
        }
        for segment in trimmed.split('/') {
            check_segment(segment).map_err(|reason| ArtifactError::UnsafePath {
                path: name.to_string(),
                reason,
            })?;
            key = key.join(segment);
        }
        Ok(key)
    }

    fn store_error(&self, name: &str, source: object_store::Error) -> ArtifactError {
        ArtifactError::Store {
            location: format!("tracking/{name}"),
            source,
        }
    }

    /// Writes the file `name` from a stream of chunks, replacing any earlier content. Returns
    /// the number of bytes written. A failed stream aborts the upload and leaves nothing.
    pub async fn put<S, E>(&self, name: &str, body: S) -> Result<u64, ArtifactError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let key = self.key(name)?;
        if key == self.prefix {
            return Err(ArtifactError::UnsafePath {
                path: name.to_string(),
                reason: "the path is empty",
            });
        }
        let upload = self
            .store
            .put_multipart(&key)
            .await
            .map_err(|e| self.store_error(name, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut body = std::pin::pin!(body);
        let mut total = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(ArtifactError::Io {
                        action: "receive",
                        path: name.into(),
                        source: std::io::Error::other(e.to_string()),
                    });
                }
            };
            total += chunk.len() as u64;
            writer
                .wait_for_capacity(2)
                .await
                .map_err(|e| self.store_error(name, e))?;
            writer.put(chunk);
        }
        writer
            .finish()
            .await
            .map_err(|e| self.store_error(name, e))?;
        Ok(total)
    }

    /// The size and a stream of the content of the file `name`, or `None` if there is none.
    pub async fn get(
        &self,
        name: &str,
    ) -> Result<Option<(u64, BoxStream<'static, Result<Bytes, ArtifactError>>)>, ArtifactError>
    {
        let key = self.key(name)?;
        let result = match self.store.get(&key).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.store_error(name, e)),
        };
        let size = result.meta.size;
        let location = format!("tracking/{name}");
        let stream = result
            .into_stream()
            .map_err(move |source| ArtifactError::Store {
                location: location.clone(),
                source,
            })
            .boxed();
        Ok(Some((size, stream)))
    }

    /// The files and directories directly under `dir` (the root when empty), sorted by name.
    pub async fn list(&self, dir: &str) -> Result<Vec<FileEntry>, ArtifactError> {
        let key = self.key(dir)?;
        let listing = match self.store.list_with_delimiter(Some(&key)).await {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.store_error(dir, e)),
        };
        let mut entries: Vec<FileEntry> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .map(|name| FileEntry {
                name,
                is_dir: true,
                size: None,
            })
            .chain(listing.objects.iter().filter_map(|meta| {
                meta.location.filename().map(|name| FileEntry {
                    name: name.to_owned(),
                    is_dir: false,
                    size: Some(meta.size),
                })
            }))
            .collect();
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Deletes the file `name`, or everything under it if it is a directory. Deleting what does
    /// not exist is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), ArtifactError> {
        let key = self.key(name)?;
        if key == self.prefix {
            return Err(ArtifactError::UnsafePath {
                path: name.to_string(),
                reason: "the path is empty",
            });
        }
        match self.store.delete(&key).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.store_error(name, e)),
        }
        let mut below = self.store.list(Some(&key));
        while let Some(meta) = below.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.store_error(name, e)),
            };
            match self.store.delete(&meta.location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.store_error(name, e)),
            }
        }
        Ok(())
    }
}
