//! The store suite against PostgreSQL. Each test gets a database of its own, created through
//! the server named by `CAPSTAN_TEST_POSTGRES_URL` and dropped afterwards.
//!
//! Start a server with `scripts/pg-test-server.sh`. Without the variable these tests are
//! skipped, unless `CAPSTAN_REQUIRE_POSTGRES=1` (as in CI), which makes them fail instead.

use capstan_store::test_suite::Harness;
use capstan_store::{PostgresStore, Store};
use sqlx::{AssertSqlSafe, Connection, PgConnection};

/// The admin URL, or `None` when the tests should be skipped.
fn admin_url() -> Option<String> {
    match std::env::var("CAPSTAN_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CAPSTAN_REQUIRE_POSTGRES").as_deref() == Ok("1") => panic!(
            "CAPSTAN_REQUIRE_POSTGRES=1 but CAPSTAN_TEST_POSTGRES_URL is not set; \
             start a server with scripts/pg-test-server.sh and export the url it prints"
        ),
        _ => {
            eprintln!("skipping postgres store test: CAPSTAN_TEST_POSTGRES_URL is not set");
            None
        }
    }
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let host_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base[host_start..].find('/') {
        Some(slash) => &base[..host_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Creates an empty database; returns its URL and a future that drops it.
async fn fresh_database(admin: &str) -> (String, impl Future<Output = ()> + Send + 'static) {
    let name = format!("capstan_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = PgConnection::connect(admin)
        .await
        .expect("connect to the test server");
    sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let admin = admin.to_owned();
    let url = with_database(&admin, &name);
    let drop_it = async move {
        // FORCE ends the store's pooled connections, which outlive the test body.
        sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await
        .expect("drop the test database");
        let _ = conn.close().await;
    };
    (url, drop_it)
}

async fn postgres_store() -> Option<Harness> {
    let admin = admin_url()?;
    let (url, teardown) = fresh_database(&admin).await;
    let store = PostgresStore::connect(&url)
        .await
        .expect("connect the store");
    Some(Harness::new(store).with_teardown(teardown))
}

capstan_store::store_test_suite!(postgres_store());

#[test]
fn with_database_replaces_only_the_database() {
    assert_eq!(
        with_database("postgresql://u:p@h:5432/postgres", "x"),
        "postgresql://u:p@h:5432/x"
    );
    assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    assert_eq!(
        with_database("postgres://h/db?sslmode=disable", "x"),
        "postgres://h/x?sslmode=disable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connects_migrate_once_and_share_data() {
    let Some(admin) = admin_url() else {
        return;
    };
    let (url, teardown) = fresh_database(&admin).await;
    let outcome = async {
        let (first, second) =
            tokio::join!(PostgresStore::connect(&url), PostgresStore::connect(&url));
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(first.backend(), "postgres");
        let run = capstan_store::NewRun {
            id: "dddd0000000000000000000000000000".to_owned(),
            pipeline_name: "pipe".to_owned(),
            pipeline_digest: "blake3:pipe".to_owned(),
            pipeline_spec: serde_json::json!({}),
            source: None,
            params: serde_json::json!({}),
            options: serde_json::json!({}),
            created_at: 1,
        };
        first.create_run(run).await.unwrap();
        let via_open = capstan_store::open(&url).await.unwrap();
        assert_eq!(via_open.backend(), "postgres");
        assert_eq!(
            via_open.resolve_run_id("dddd").await.unwrap(),
            "dddd0000000000000000000000000000"
        );
        assert!(
            second
                .get_run("dddd0000000000000000000000000000")
                .await
                .unwrap()
                .is_some()
        );
    };
    let result = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome)).await;
    teardown.await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}
