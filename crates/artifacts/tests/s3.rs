//! The artifact store against an S3-compatible server (moto), configured the way users configure
//! MinIO: `AWS_ENDPOINT` and `AWS_ALLOW_HTTP`. Skipped, saying so, when `moto_server` is not
//! installed (`pip install "moto[server]"`).
//!
//! This binary holds a single test because it sets process environment variables, which must not
//! race with other threads reading them.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use capstan_artifacts::{ArtifactStore, hash_path};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_moto() -> Option<(Server, u16)> {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some((server, port))
}

/// Creates a bucket with a bare HTTP request; object stores have no bucket API.
fn create_bucket(port: u16, bucket: &str) {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

#[test]
fn s3_round_trips_files_directories_and_logs() {
    let Some((_server, port)) = start_moto() else {
        eprintln!("skipping: moto_server is not installed");
        return;
    };
    create_bucket(port, "capstan-test");
    // SAFETY: this is the only test in this binary, and no other thread runs yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AWS_REGION", "us-east-1");
        std::env::set_var("AWS_ENDPOINT", format!("http://127.0.0.1:{port}"));
        std::env::set_var("AWS_ALLOW_HTTP", "true");
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
    });
}
