//! A moto S3 server on an ephemeral loopback port, for tests of the S3 artifact store. Shared by
//! the artifacts crate's tests and capstan's integration tests (included with `#[path]`).
//!
//! `moto_server` is looked up in the venv of `scripts/python-env.sh` (`$CAPSTAN_VENV`, default
//! /var/tmp/capstan-venv), then on `PATH`. When it cannot start, [`start`] returns `None` so the
//! test can skip, unless `CAPSTAN_REQUIRE_S3=1` (as in CI), which makes that a failure.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running moto server; killed when dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// The variables that point object_store's S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// Creates a bucket with a bare HTTP request; object stores have no bucket API.
    pub fn create_bucket(&self, bucket: &str) {
        let port = self.port;
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
}

fn moto_server() -> String {
    let venv = std::env::var("CAPSTAN_VENV").unwrap_or_else(|_| "/var/tmp/capstan-venv".into());
    let in_venv = Path::new(&venv).join("bin/moto_server");
    if in_venv.exists() {
        return in_venv.display().to_string();
    }
    "moto_server".to_string()
}

/// Starts moto, or says why not and returns `None` (a failure under `CAPSTAN_REQUIRE_S3=1`).
pub fn start() -> Option<Moto> {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawned = Command::new(moto_server())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("CAPSTAN_REQUIRE_S3").as_deref() != Ok("1"),
                "CAPSTAN_REQUIRE_S3=1 but moto_server cannot start ({e}); run scripts/python-env.sh"
            );
            eprintln!("skipping: moto_server is not installed ({e})");
            return None;
        }
    };
    let moto = Moto { child, port };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "moto_server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(moto)
}
