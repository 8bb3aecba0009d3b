//! The artifact store against an S3-compatible server (moto, see `support/moto.rs`), configured
//! the way users configure MinIO: `AWS_ENDPOINT` and `AWS_ALLOW_HTTP`. Skipped, saying so, when
//! `moto_server` is not installed, unless `CAPSTAN_REQUIRE_S3=1` (as in CI).
//!
//! This binary holds a single test because it sets process environment variables, which must not
//! race with other threads reading them.

#[path = "support/moto.rs"]
mod moto;

use std::path::Path;

use capstan_artifacts::{ArtifactStore, hash_path};

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[test]
fn s3_round_trips_files_directories_and_logs() {
    let Some(moto) = moto::start() else {
        return;
    };
    moto.create_bucket("capstan-test");
    // SAFETY: this is the only test in this binary, and no other thread runs yet.
    unsafe {
        for (k, v) in moto.env() {
            std::env::set_var(k, v);
        }
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let ws = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(Some("s3://capstan-test/team/artifacts/"), ws.path())
            .expect("open s3 store");
        assert!(!store.is_local());
        assert_eq!(store.root_url(), "s3://capstan-test/team/artifacts");

        let file = ws.path().join("out/model.bin");
        let content: Vec<u8> = (0..(9 * 1024 * 1024 + 7))
            .map(|i| (i % 253) as u8)
            .collect();
        write(&file, &content);
        let stored = store.put(&file).await.unwrap();
        let hex = blake3::hash(&content).to_hex().to_string();
        assert_eq!(
            stored.uri,
            format!("s3://capstan-test/team/artifacts/blobs/{hex}")
        );
        let again = store.put(&file).await.unwrap();
        assert_eq!(again, stored);
        let local = store.local_path(&stored.uri).await.unwrap();
        assert_eq!(local, ws.path().join("cache").join(&hex));
        assert!(std::fs::read(&local).unwrap() == content);

        let dir = ws.path().join("out/dataset");
        write(&dir.join("a.csv"), b"x,y\n1,2\n");
        write(&dir.join("parts/b.csv"), b"x,y\n3,4\n");
        std::fs::create_dir_all(dir.join("empty")).unwrap();
        let stored_dir = store.put(&dir).await.unwrap();
        assert!(stored_dir.is_dir);
        let dest = ws.path().join("got");
        store.get_to(&stored_dir.uri, &dest).await.unwrap();
        assert_eq!(hash_path(&dest).unwrap().0, stored_dir.digest);

        let (log, uri) = store.log_path("run-9", "train", 1).unwrap();
        std::fs::write(&log, b"epoch 1\n").unwrap();
        store.finish_log(&log, &uri).await.unwrap();
        std::fs::remove_file(&log).unwrap();
        assert_eq!(store.read_log(&uri).await.unwrap(), b"epoch 1\n");

        // Result documents of remote workers live next to the logs.
        let doc = store.result_uri("run-9", "train", 1).unwrap();
        assert_eq!(
            doc,
            "s3://capstan-test/team/artifacts/logs/run-9/train.1.result.json"
        );
        assert!(matches!(
            store.read_document(&doc).await,
            Err(capstan_artifacts::ArtifactError::NotFound { .. })
        ));
        store.put_document(&doc, b"{}".to_vec()).await.unwrap();
        assert_eq!(store.read_document(&doc).await.unwrap(), b"{}");
    });
}
