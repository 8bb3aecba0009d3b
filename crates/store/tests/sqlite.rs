//! The store suite against SQLite, on a file and in memory, plus what only SQLite has to get
//! right: the file layout, reopening, and several processes writing one workspace at once.

use capstan_store::test_suite::Harness;
use capstan_store::{NewArtifact, NewRun, SqliteStore, Store, TaskFinish, TaskStatus};
use serde_json::json;
use sqlx::Connection;

async fn file_store() -> Option<Harness> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("capstan.db");
    let store = SqliteStore::open(path.to_str().expect("utf-8 path"))
        .await
        .expect("open store");
    Some(Harness::new(store).with_guard(dir))
}

capstan_store::store_test_suite!(file_store());

mod in_memory {
    async fn memory_store() -> Option<capstan_store::test_suite::Harness> {
        let store = capstan_store::SqliteStore::open(":memory:")
            .await
            .expect("open store");
        Some(capstan_store::test_suite::Harness::new(store))
    }

    capstan_store::store_test_suite!(memory_store());
}

fn new_run(id: &str) -> NewRun {
    NewRun {
        id: id.to_owned(),
        pipeline_name: "pipe".to_owned(),
        pipeline_digest: "blake3:pipe".to_owned(),
        pipeline_spec: json!({"name": "pipe"}),
        source: None,
        params: json!({}),
        options: json!({}),
        created_at: 1,
    }
}

fn finished(name: &str, artifact_id: &str) -> TaskFinish {
    TaskFinish {
        name: name.to_owned(),
        step: name.to_owned(),
        iteration: None,
        status: TaskStatus::Succeeded,
        exit_code: Some(0),
        message: None,
        input_parameters: Default::default(),
        output_parameters: Default::default(),
        new_artifacts: vec![NewArtifact {
            id: artifact_id.to_owned(),
            name: "out".to_owned(),
            uri: format!("artifacts/{artifact_id}"),
            digest: format!("blake3:{artifact_id}"),
            size: 1,
            type_name: "Artifact".to_owned(),
            is_dir: false,
            metadata: json!({}),
        }],
        reused_artifacts: Default::default(),
        cached_from: None,
        cache_key: None,
        ended_at: 2,
    }
}

#[tokio::test]
async fn open_creates_parent_directories_and_persists() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/capstan.db");
    let path = path.to_str().unwrap();
    let store = SqliteStore::open(path).await.unwrap();
    store
        .create_run(new_run("0123456789abcdef0123456789abcdef"))
        .await
        .unwrap();
    drop(store);

    let reopened = SqliteStore::open(path).await.unwrap();
    assert_eq!(reopened.backend(), "sqlite");
    let run = reopened
        .get_run("0123456789abcdef0123456789abcdef")
        .await
        .unwrap();
    assert_eq!(run.map(|r| r.pipeline_name).as_deref(), Some("pipe"));

    let via_uri = capstan_store::open(&format!("sqlite://{path}"))
        .await
        .unwrap();
    assert_eq!(
        via_uri.resolve_run_id("0123").await.unwrap(),
        "0123456789abcdef0123456789abcdef"
    );
}

#[tokio::test]
async fn in_memory_stores_are_private() {
    let one = capstan_store::open("sqlite::memory:").await.unwrap();
    let two = capstan_store::open(":memory:").await.unwrap();
    one.create_run(new_run("aaaa0000000000000000000000000000"))
        .await
        .unwrap();
    assert!(
        two.get_run("aaaa0000000000000000000000000000")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        one.get_run("aaaa0000000000000000000000000000")
            .await
            .unwrap()
            .is_some()
    );
    let err = SqliteStore::open("").await.unwrap_err();
    assert!(
        matches!(err, capstan_store::StoreError::Invalid(_)),
        "{err:?}"
    );
}

#[tokio::test]
async fn schema_has_wal_default_experiment_and_lineage_links() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capstan.db");
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let run = store
        .create_run(new_run("bbbb0000000000000000000000000000"))
        .await
        .unwrap();
    let task = store
        .task_finished(&run.id, finished("a", "art-1"))
        .await
        .unwrap();

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let default: String = sqlx::query_scalar("SELECT name FROM experiments WHERE id = 0")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(default, "Default");
    let experiment: String = sqlx::query_scalar("SELECT name FROM experiments WHERE id = $1")
        .bind(run.experiment_id)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(experiment, "pipe");
    let associations: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM associations WHERE task_id = $1")
            .bind(&task.id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        associations, 2,
        "the task joins the pipeline and run contexts"
    );
    let attributions: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM attributions WHERE artifact_id = 'art-1'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        attributions, 2,
        "the artifact joins the pipeline and run contexts"
    );
}

/// Several capstan processes share one workspace database: writers must wait for each other,
/// never fail with "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_handles_on_one_file_write_concurrently() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("capstan.db");
    let path = path.to_str().unwrap().to_owned();
    // Open both at once: the second must cope with the first migrating the new file.
    let (first, second) = tokio::join!(SqliteStore::open(&path), SqliteStore::open(&path));
    let handles = [first.unwrap(), second.unwrap()];
    let run_id = "cccc0000000000000000000000000000";
    handles[0].create_run(new_run(run_id)).await.unwrap();

    let mut writers = Vec::new();
    for (w, store) in handles.into_iter().enumerate() {
        writers.push(tokio::spawn(async move {
            for n in 0..200 {
                let name = format!("w{w}[{n}]");
                store
                    .task_finished(run_id, finished(&name, &format!("art-{w}-{n}")))
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let store = SqliteStore::open(&path).await.unwrap();
    let tasks = store.list_tasks(run_id).await.unwrap();
    assert_eq!(tasks.len(), 400);
    let mut seqs: Vec<i64> = tasks.iter().map(|t| t.finish_seq.unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<_>>());
    assert_eq!(store.list_artifacts(run_id).await.unwrap().len(), 400);
}
