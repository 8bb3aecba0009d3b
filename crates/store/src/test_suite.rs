//! The behavioural suite every [`Store`](crate::Store) backend must pass.
//!
//! A backend's test file invokes [`store_test_suite!`](crate::store_test_suite) with an
//! expression that makes a fresh, empty store for each test (or `None` to skip, when the
//! backend's server is not available). Each check below is an ordinary `async fn` taking the
//! store, so a failure points at one behaviour, and the same assertions hold every backend to
//! the same contract.

use std::any::Any;
use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;

use crate::{
    ArtifactRef, DynStore, EventKind, NewArtifact, NewRun, RunFilter, RunStatus, Store, StoreError,
    TaskFinish, TaskRecord, TaskStart, TaskStatus,
};

/// Generates one `#[tokio::test]` per behaviour of the store contract.
///
/// `$make` is an expression that evaluates to a future of `Option<Harness>`, run once per test
/// so that every test gets its own empty store; `None` skips the test.
#[macro_export]
macro_rules! store_test_suite {
    ($make:expr) => {
        $crate::store_test_suite!(@tests $make;
            create_run_records_a_pending_run,
            create_run_reuses_pipeline_and_experiment,
            create_run_rejects_a_duplicate_id,
            get_run_of_unknown_id_is_none,
            set_run_status_tracks_start_and_end,
            owner_and_cancel_flags,
            run_updates_of_unknown_run_are_not_found,
            resolve_run_id_by_exact_id_and_prefix,
            list_runs_newest_first_with_filters,
            list_runs_sorts_bounds_and_counts,
            task_started_upserts_and_records_inputs,
            task_retry_keeps_id_and_does_not_duplicate_inputs,
            task_started_rejects_unknown_run_and_artifact,
            task_pending_keeps_attempts,
            remote_handles_are_recorded_at_start_and_kept,
            task_finished_records_outputs_and_lineage,
            task_finished_creates_skipped_and_cached_tasks,
            finish_seq_follows_finish_order,
            concurrent_finishes_get_distinct_finish_seq,
            cache_lookup_finds_latest_succeeded_task,
            failed_task_finished_leaves_nothing_behind,
            task_finished_validates_its_input,
            run_contexts_are_shared_per_pipeline,
            tracking_runs_log_idempotently_and_search_in_sql,
            metric_values_and_texts_read_back_exactly,
            metric_samples_keep_each_buckets_ends_and_extremes,
            logged_models_finalize_tag_and_search_by_name,
            run_inputs_hold_datasets_and_logged_models,
            registry_versions_aliases_stages_and_tag_filters,
            pipeline_runs_and_attempts_are_tracking_runs,
            a_failed_transition_leaves_no_tracking_rows,
        );
    };
    (@tests $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() {
                let Some(harness) = ($make).await else {
                    return;
                };
                harness.run($crate::test_suite::$test).await;
            }
        )*
    };
}

/// A store under test, with what must live as long as it and what cleans up after it.
pub struct Harness {
    store: DynStore,
    guard: Option<Box<dyn Any + Send>>,
    teardown: Option<BoxFuture<'static, ()>>,
}

impl Harness {
    pub fn new(store: impl Store) -> Self {
        Harness {
            store: std::sync::Arc::new(store),
            guard: None,
            teardown: None,
        }
    }

    /// Keeps `guard` (a temporary directory, say) alive until the test is over.
    pub fn with_guard(mut self, guard: impl Any + Send) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Runs `teardown` after the test, whether it passed or panicked.
    pub fn with_teardown(mut self, teardown: impl Future<Output = ()> + Send + 'static) -> Self {
        self.teardown = Some(Box::pin(teardown));
        self
    }

    pub async fn run<F, Fut>(self, test: F)
    where
        F: FnOnce(DynStore) -> Fut,
        Fut: Future<Output = ()>,
    {
        let Harness {
            store,
            guard,
            teardown,
        } = self;
        let outcome = AssertUnwindSafe(test(store)).catch_unwind().await;
        if let Some(teardown) = teardown {
            teardown.await;
        }
        drop(guard);
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A 32-hex-digit run id whose leading digits are `prefix`.
fn run_id(prefix: &str, n: u32) -> String {
    format!("{prefix}{:0width$x}", n, width = 32 - prefix.len())
}

/// Creates a tracking run named `name` (no tags) in `experiment_id`.
async fn new_tracking_run(
    tracking: &crate::DynTrackingStore,
    experiment_id: i64,
    run_id: &str,
    name: &str,
    start_time: i64,
) {
    tracking
        .create_tracking_run(&crate::NewTrackingRun {
            run_id: run_id.to_owned(),
            experiment_id,
            name: name.to_owned(),
            user_id: "u".to_owned(),
            start_time,
            artifact_uri: format!("mem:/{run_id}"),
            tags: vec![],
        })
        .await
        .unwrap();
}

fn new_run(id: &str, pipeline: &str, created_at: i64) -> NewRun {
    NewRun {
        id: id.to_owned(),
        pipeline_name: pipeline.to_owned(),
        pipeline_digest: format!("blake3:{pipeline}-v1"),
        pipeline_spec: json!({"name": pipeline, "steps": {"a": {"run": ["true"]}}}),
        source: Some(format!("{pipeline}.yaml")),
        params: json!({"rows": 2000, "rate": 0.5, "tags": ["x", "y"], "nested": {"k": null}}),
        options: json!({"parallelism": 2, "no_cache": false}),
        created_at,
    }
}

fn start(name: &str, attempt: u32, at: i64) -> TaskStart {
    TaskStart {
        name: name.to_owned(),
        step: name.split('[').next().unwrap_or(name).to_owned(),
        iteration: None,
        attempt,
        executor: "local".to_owned(),
        resources: json!({"cpu": 1}),
        cache_key: Some(format!("key-{name}")),
        log_uri: Some(format!("logs/{name}.log")),
        input_parameters: BTreeMap::from([("rows".to_owned(), json!(2000))]),
        input_artifacts: BTreeMap::new(),
        started_at: at,
        remote_handle: None,
    }
}

fn finish(name: &str, status: TaskStatus, at: i64) -> TaskFinish {
    TaskFinish {
        name: name.to_owned(),
        step: name.to_owned(),
        iteration: None,
        status,
        exit_code: Some(if status == TaskStatus::Failed { 1 } else { 0 }),
        message: None,
        input_parameters: BTreeMap::new(),
        output_parameters: BTreeMap::new(),
        new_artifacts: Vec::new(),
        reused_artifacts: BTreeMap::new(),
        cached_from: None,
        cache_key: None,
        ended_at: at,
    }
}

fn artifact(id: &str, name: &str) -> NewArtifact {
    NewArtifact {
        id: id.to_owned(),
        name: name.to_owned(),
        uri: format!("artifacts/{id}"),
        digest: format!("blake3:{id}"),
        size: 5_000_000_000,
        type_name: "Dataset".to_owned(),
        is_dir: true,
        metadata: json!({"rows": 10}),
    }
}

fn reference(id: &str) -> ArtifactRef {
    ArtifactRef {
        id: id.to_owned(),
        uri: format!("artifacts/{id}"),
        digest: format!("blake3:{id}"),
    }
}

async fn started_run(store: &DynStore, id: &str) {
    store
        .create_run(new_run(id, "pipe", 1_000))
        .await
        .expect("create run");
}

/// Finishes a task and reads back the whole record, checking that what `task_finished`
/// returned names it.
async fn finish_and_read(store: &DynStore, run_id: &str, finish: TaskFinish) -> TaskRecord {
    let finished = store.task_finished(run_id, finish).await.unwrap();
    let record = store.get_task(&finished.id).await.unwrap().unwrap();
    assert_eq!(finished.attempts, record.attempts);
    record
}

pub async fn create_run_records_a_pending_run(store: DynStore) {
    let id = run_id("a1", 1);
    let run = store
        .create_run(new_run(&id, "quickstart", 1_000))
        .await
        .unwrap();
    assert_eq!(run.id, id);
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(run.pipeline_name, "quickstart");
    assert_eq!(run.pipeline_digest, "blake3:quickstart-v1");
    assert_eq!(run.params, new_run(&id, "quickstart", 0).params);
    assert_eq!(run.options, json!({"parallelism": 2, "no_cache": false}));
    assert_eq!(
        run.pipeline_spec,
        new_run(&id, "quickstart", 0).pipeline_spec
    );
    assert_eq!(run.source.as_deref(), Some("quickstart.yaml"));
    assert_eq!(run.created_at, 1_000);
    assert_eq!(
        (run.started_at, run.ended_at, run.message.as_deref()),
        (None, None, None)
    );
    assert!(!run.cancel_requested);
    assert_eq!(run.owner, None);
    assert_ne!(
        run.experiment_id, 0,
        "a pipeline's runs live in its own experiment, not Default"
    );
    assert_eq!(store.get_run(&id).await.unwrap(), Some(run));
}

pub async fn create_run_reuses_pipeline_and_experiment(store: DynStore) {
    let first = store
        .create_run(new_run(&run_id("b1", 1), "train", 1))
        .await
        .unwrap();
    let second = store
        .create_run(new_run(&run_id("b1", 2), "train", 2))
        .await
        .unwrap();
    assert_eq!(
        first.pipeline_id, second.pipeline_id,
        "same name and digest: one pipeline"
    );
    assert_eq!(first.experiment_id, second.experiment_id);

    let mut changed = new_run(&run_id("b1", 3), "train", 3);
    changed.pipeline_digest = "blake3:train-v2".to_owned();
    changed.pipeline_spec = json!({"name": "train", "version": 2});
    let third = store.create_run(changed).await.unwrap();
    assert_ne!(
        third.pipeline_id, first.pipeline_id,
        "a new digest is a new pipeline version"
    );
    assert_eq!(
        third.experiment_id, first.experiment_id,
        "the experiment is per pipeline name"
    );
    assert_eq!(third.pipeline_spec, json!({"name": "train", "version": 2}));

    let other = store
        .create_run(new_run(&run_id("b1", 4), "eval", 4))
        .await
        .unwrap();
    assert_ne!(other.experiment_id, first.experiment_id);
    assert_ne!(other.pipeline_id, first.pipeline_id);
}

pub async fn create_run_rejects_a_duplicate_id(store: DynStore) {
    let id = run_id("c1", 1);
    store.create_run(new_run(&id, "pipe", 1)).await.unwrap();
    let err = store
        .create_run(new_run(&id, "other", 2))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains(&id), "{err}");
    assert_eq!(
        store.get_run(&id).await.unwrap().unwrap().pipeline_name,
        "pipe"
    );
    let empty = store.create_run(new_run("", "pipe", 1)).await.unwrap_err();
    assert!(matches!(empty, StoreError::Invalid(_)), "{empty:?}");
}

pub async fn get_run_of_unknown_id_is_none(store: DynStore) {
    assert_eq!(store.get_run(&run_id("d1", 1)).await.unwrap(), None);
    assert_eq!(store.get_task("no-such-task").await.unwrap(), None);
    assert_eq!(store.get_artifact("no-such-artifact").await.unwrap(), None);
    assert!(store.list_tasks("no-such-run").await.unwrap().is_empty());
    assert!(
        store
            .list_artifacts("no-such-run")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.run_contexts("no-such-run").await.unwrap().is_empty());
}

pub async fn set_run_status_tracks_start_and_end(store: DynStore) {
    let id = run_id("e1", 1);
    started_run(&store, &id).await;
    store
        .set_run_status(&id, RunStatus::Running, None, 2_000)
        .await
        .unwrap();
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.started_at, run.ended_at),
        (RunStatus::Running, Some(2_000), None)
    );

    store
        .set_run_status(&id, RunStatus::Failed, Some("step `a` failed"), 3_000)
        .await
        .unwrap();
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!((run.started_at, run.ended_at), (Some(2_000), Some(3_000)));
    assert_eq!(run.message.as_deref(), Some("step `a` failed"));

    // A resume: running again keeps the first start and is no longer ended.
    store
        .set_run_status(&id, RunStatus::Running, None, 4_000)
        .await
        .unwrap();
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(
        (run.started_at, run.ended_at, run.message),
        (Some(2_000), None, None)
    );

    store
        .set_run_status(&id, RunStatus::Succeeded, None, 5_000)
        .await
        .unwrap();
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(
        (run.status, run.ended_at),
        (RunStatus::Succeeded, Some(5_000))
    );
}

pub async fn owner_and_cancel_flags(store: DynStore) {
    let id = run_id("f1", 1);
    started_run(&store, &id).await;
    store.set_run_owner(&id, Some("host-a:4242")).await.unwrap();
    assert_eq!(
        store.get_run(&id).await.unwrap().unwrap().owner.as_deref(),
        Some("host-a:4242")
    );
    store.set_run_owner(&id, None).await.unwrap();
    assert_eq!(store.get_run(&id).await.unwrap().unwrap().owner, None);

    store.request_cancel(&id).await.unwrap();
    assert!(store.get_run(&id).await.unwrap().unwrap().cancel_requested);
    store.request_cancel(&id).await.unwrap();
    assert!(store.get_run(&id).await.unwrap().unwrap().cancel_requested);
    store.clear_cancel(&id).await.unwrap();
    assert!(!store.get_run(&id).await.unwrap().unwrap().cancel_requested);
}

pub async fn run_updates_of_unknown_run_are_not_found(store: DynStore) {
    let id = run_id("f2", 1);
    let results = [
        store.set_run_status(&id, RunStatus::Running, None, 1).await,
        store.set_run_owner(&id, Some("h:1")).await,
        store.request_cancel(&id).await,
        store.clear_cancel(&id).await,
        store.task_pending(&id, "a", None).await,
    ];
    for result in results {
        let err = result.unwrap_err();
        assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    }
}

pub async fn resolve_run_id_by_exact_id_and_prefix(store: DynStore) {
    let alpha = run_id("abcd1", 1);
    let beta = run_id("abcd2", 2);
    let gamma = run_id("ffff", 3);
    for id in [&alpha, &beta, &gamma] {
        started_run(&store, id).await;
    }
    assert_eq!(store.resolve_run_id(&alpha).await.unwrap(), alpha);
    assert_eq!(store.resolve_run_id("abcd1").await.unwrap(), alpha);
    assert_eq!(store.resolve_run_id("ffff").await.unwrap(), gamma);

    let err = store.resolve_run_id("abcd").await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&alpha) && text.contains(&beta) && !text.contains(&gamma),
        "{text}"
    );

    let err = store.resolve_run_id("0123").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let err = store.resolve_run_id("ABCD1").await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "prefixes are case-sensitive: {err:?}"
    );
    let err = store.resolve_run_id("ab%_").await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(_)),
        "wildcards match literally: {err:?}"
    );
    let err = store.resolve_run_id("abc").await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

pub async fn list_runs_newest_first_with_filters(store: DynStore) {
    let ids: Vec<String> = (1..=5).map(|n| run_id("g1", n)).collect();
    for (n, id) in ids.iter().enumerate() {
        let pipeline = if n % 2 == 0 { "even" } else { "odd" };
        store
            .create_run(new_run(id, pipeline, 1_000 * (n as i64 + 1)))
            .await
            .unwrap();
    }
    // Two runs created in the same millisecond still come back newest first.
    let twin = run_id("g2", 6);
    store
        .create_run(new_run(&twin, "odd", 5_000))
        .await
        .unwrap();
    store
        .set_run_status(&ids[1], RunStatus::Succeeded, None, 9_000)
        .await
        .unwrap();

    let listed = |runs: Vec<crate::RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = listed(store.list_runs(&RunFilter::default()).await.unwrap());
    assert_eq!(
        all,
        vec![
            twin.clone(),
            ids[4].clone(),
            ids[3].clone(),
            ids[2].clone(),
            ids[1].clone(),
            ids[0].clone()
        ]
    );

    let filter = RunFilter {
        pipeline: Some("even".to_owned()),
        ..RunFilter::default()
    };
    assert_eq!(
        listed(store.list_runs(&filter).await.unwrap()),
        vec![ids[4].clone(), ids[2].clone(), ids[0].clone()]
    );

    let filter = RunFilter {
        status: Some(RunStatus::Succeeded),
        ..RunFilter::default()
    };
    assert_eq!(
        listed(store.list_runs(&filter).await.unwrap()),
        vec![ids[1].clone()]
    );

    let filter = RunFilter {
        created_after: Some(4_000),
        ..RunFilter::default()
    };
    assert_eq!(
        listed(store.list_runs(&filter).await.unwrap()),
        vec![twin.clone(), ids[4].clone(), ids[3].clone()]
    );

    let filter = RunFilter {
        limit: Some(2),
        offset: Some(1),
        ..RunFilter::default()
    };
    assert_eq!(
        listed(store.list_runs(&filter).await.unwrap()),
        vec![ids[4].clone(), ids[3].clone()]
    );

    let filter = RunFilter {
        pipeline: Some("odd".to_owned()),
        status: Some(RunStatus::Pending),
        created_after: Some(1),
        limit: Some(10),
        ..RunFilter::default()
    };
    assert_eq!(
        listed(store.list_runs(&filter).await.unwrap()),
        vec![twin, ids[3].clone()]
    );

    let filter = RunFilter {
        pipeline: Some("none".to_owned()),
        ..RunFilter::default()
    };
    assert!(store.list_runs(&filter).await.unwrap().is_empty());
    assert_eq!(store.count_runs(&filter).await.unwrap(), 0);
}

pub async fn list_runs_sorts_bounds_and_counts(store: DynStore) {
    let ids: Vec<String> = (1..=4).map(|n| run_id("s1", n)).collect();
    for (n, id) in ids.iter().enumerate() {
        let pipeline = ["b", "a", "c", "a"][n];
        store
            .create_run(new_run(id, pipeline, 1_000 * (n as i64 + 1)))
            .await
            .unwrap();
    }
    // Durations: run 0 takes 50 ms, run 2 takes 10 ms; runs 1 and 3 never ended.
    for (i, start, end) in [(0, 1_000, 1_050), (2, 3_000, 3_010)] {
        store
            .set_run_status(&ids[i], RunStatus::Running, None, start)
            .await
            .unwrap();
        store
            .set_run_status(&ids[i], RunStatus::Failed, None, end)
            .await
            .unwrap();
    }
    let listed = |runs: Vec<crate::RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let sorted = |sort: crate::RunSort, ascending: bool| RunFilter {
        sort,
        ascending,
        ..RunFilter::default()
    };

    let oldest_first = sorted(crate::RunSort::Created, true);
    assert_eq!(
        listed(store.list_runs(&oldest_first).await.unwrap()),
        ids.clone()
    );
    // Ties on the pipeline name break newest first.
    let by_pipeline = sorted(crate::RunSort::Pipeline, true);
    assert_eq!(
        listed(store.list_runs(&by_pipeline).await.unwrap()),
        vec![
            ids[3].clone(),
            ids[1].clone(),
            ids[0].clone(),
            ids[2].clone()
        ]
    );
    // Runs that never ended sort last in both directions.
    let shortest = sorted(crate::RunSort::Duration, true);
    assert_eq!(
        listed(store.list_runs(&shortest).await.unwrap()),
        vec![
            ids[2].clone(),
            ids[0].clone(),
            ids[3].clone(),
            ids[1].clone()
        ]
    );
    let longest = sorted(crate::RunSort::Duration, false);
    assert_eq!(
        listed(store.list_runs(&longest).await.unwrap())[..2],
        [ids[0].clone(), ids[2].clone()]
    );

    let window = RunFilter {
        created_after: Some(2_000),
        created_before: Some(4_000),
        ..RunFilter::default()
    };
    assert_eq!(
        listed(store.list_runs(&window).await.unwrap()),
        vec![ids[2].clone(), ids[1].clone()]
    );
    let failed_a_page = RunFilter {
        status: Some(RunStatus::Failed),
        limit: Some(1),
        ..RunFilter::default()
    };
    assert_eq!(store.list_runs(&failed_a_page).await.unwrap().len(), 1);
    assert_eq!(store.count_runs(&failed_a_page).await.unwrap(), 2);
    assert_eq!(store.count_runs(&RunFilter::default()).await.unwrap(), 4);

    let counts = store.counts().await.unwrap();
    assert_eq!(counts.runs_by_status.get("failed"), Some(&2));
    assert_eq!(counts.runs_by_status.get("pending"), Some(&2));
    assert_eq!(counts.pipelines, 3);
    assert_eq!(counts.artifacts, 0);
    assert_eq!(counts.registered_models, 0);
    // The Default experiment and one per pipeline.
    assert_eq!(counts.experiments, 4);
}

/// Makes a run in which task `producer` produced artifact `artifact_id` as output `data`.
async fn produced(store: &DynStore, run: &str, producer: &str, artifact_id: &str) {
    store
        .task_started(run, start(producer, 1, 10))
        .await
        .unwrap();
    let mut done = finish(producer, TaskStatus::Succeeded, 20);
    done.new_artifacts.push(artifact(artifact_id, "data"));
    store.task_finished(run, done).await.unwrap();
}

pub async fn task_started_upserts_and_records_inputs(store: DynStore) {
    let run = run_id("h1", 1);
    started_run(&store, &run).await;
    produced(&store, &run, "data", "art-h1").await;

    let mut train = start("train[0]", 1, 100);
    train.iteration = Some(0);
    train
        .input_artifacts
        .insert("dataset".to_owned(), reference("art-h1"));
    let id = store.task_started(&run, train).await.unwrap();

    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.id, id);
    assert_eq!(task.run_id, run);
    assert_eq!(
        (task.name.as_str(), task.step.as_str(), task.iteration),
        ("train[0]", "train", Some(0))
    );
    assert_eq!((task.status, task.attempts), (TaskStatus::Running, 1));
    assert_eq!(task.executor.as_deref(), Some("local"));
    assert_eq!(task.resources, json!({"cpu": 1}));
    assert_eq!(task.cache_key.as_deref(), Some("key-train[0]"));
    assert_eq!(task.log_uri.as_deref(), Some("logs/train[0].log"));
    assert_eq!(
        (task.created_at, task.started_at, task.ended_at),
        (100, Some(100), None)
    );
    assert_eq!(
        (task.exit_code, task.finish_seq, task.cached_from),
        (None, None, None)
    );
    assert_eq!(
        task.inputs.parameters,
        BTreeMap::from([("rows".to_owned(), json!(2000))])
    );
    assert_eq!(
        task.inputs.artifacts,
        BTreeMap::from([("dataset".to_owned(), reference("art-h1"))])
    );
    assert!(task.outputs.artifacts.is_empty() && task.outputs.parameters.is_empty());

    let events = store.task_events(&id).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].kind,
            events[0].name.as_str(),
            events[0].artifact_id.as_str()
        ),
        (EventKind::Input, "dataset", "art-h1")
    );

    let names: Vec<String> = store
        .list_tasks(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["data", "train[0]"]);
}

pub async fn task_retry_keeps_id_and_does_not_duplicate_inputs(store: DynStore) {
    let run = run_id("i1", 1);
    started_run(&store, &run).await;
    produced(&store, &run, "data", "art-i1").await;
    let mut train = start("train", 1, 100);
    train
        .input_artifacts
        .insert("dataset".to_owned(), reference("art-i1"));
    let id = store.task_started(&run, train.clone()).await.unwrap();

    let mut failed = finish("train", TaskStatus::Failed, 150);
    failed.message = Some("exit code 1".to_owned());
    let record = finish_and_read(&store, &run, failed).await;
    assert_eq!(
        (record.status, record.exit_code, record.ended_at),
        (TaskStatus::Failed, Some(1), Some(150))
    );
    assert_eq!(record.finish_seq, Some(2));

    train.attempt = 2;
    train.started_at = 200;
    let again = store.task_started(&run, train).await.unwrap();
    assert_eq!(again, id, "the task id is stable across attempts");
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!((task.status, task.attempts), (TaskStatus::Running, 2));
    assert_eq!((task.created_at, task.started_at), (100, Some(200)));
    assert_eq!(
        (task.ended_at, task.exit_code, task.message, task.finish_seq),
        (None, None, None, None)
    );
    assert_eq!(
        store.task_events(&id).await.unwrap().len(),
        1,
        "no duplicate input events"
    );
    assert_eq!(
        store.artifact_events("art-i1").await.unwrap().len(),
        2,
        "one output, one input"
    );
    assert_eq!(store.list_tasks(&run).await.unwrap().len(), 2);
}

pub async fn task_started_rejects_unknown_run_and_artifact(store: DynStore) {
    let err = store
        .task_started(&run_id("j1", 9), start("a", 1, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    let run = run_id("j1", 1);
    started_run(&store, &run).await;
    let mut task = start("a", 1, 1);
    task.input_artifacts
        .insert("x".to_owned(), reference("missing"));
    let err = store.task_started(&run, task).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(
        store.list_tasks(&run).await.unwrap().is_empty(),
        "the failed start left no task"
    );

    let err = store
        .task_started(&run, start("a", 0, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
}

pub async fn task_pending_keeps_attempts(store: DynStore) {
    let run = run_id("k1", 1);
    started_run(&store, &run).await;
    let id = store.task_started(&run, start("a", 3, 10)).await.unwrap();
    store
        .task_pending(&run, "a", Some("retrying in 1s"))
        .await
        .unwrap();
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!((task.status, task.attempts), (TaskStatus::Pending, 3));
    assert_eq!(task.message.as_deref(), Some("retrying in 1s"));
    assert_eq!(task.finish_seq, None);

    let err = store.task_pending(&run, "nope", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub async fn remote_handles_are_recorded_at_start_and_kept(store: DynStore) {
    let run = run_id("k2", 1);
    started_run(&store, &run).await;
    let mut first = start("a", 1, 10);
    first.remote_handle = Some("capstan-k2-a-1".to_owned());
    let id = store.task_started(&run, first).await.unwrap();
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.remote_handle.as_deref(), Some("capstan-k2-a-1"));
    // Resume puts an interrupted task back to pending and must still find its job.
    store
        .task_pending(&run, "a", Some("interrupted"))
        .await
        .unwrap();
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.remote_handle.as_deref(), Some("capstan-k2-a-1"));
    // The next attempt records its own job, or none.
    store.task_started(&run, start("a", 2, 20)).await.unwrap();
    let task = store.get_task(&id).await.unwrap().unwrap();
    assert_eq!(task.remote_handle, None);
}

pub async fn task_finished_records_outputs_and_lineage(store: DynStore) {
    let run = run_id("l1", 1);
    started_run(&store, &run).await;
    let producer = store
        .task_started(&run, start("data", 1, 10))
        .await
        .unwrap();
    let mut done = finish("data", TaskStatus::Succeeded, 20);
    done.output_parameters.insert("rows".to_owned(), json!(10));
    done.output_parameters
        .insert("score".to_owned(), json!(0.25));
    done.new_artifacts.push(artifact("art-l1", "dataset"));
    done.new_artifacts.push(NewArtifact {
        is_dir: false,
        ..artifact("art-l2", "report")
    });
    let record = finish_and_read(&store, &run, done).await;
    assert_eq!(record.id, producer);
    assert_eq!(
        (record.status, record.exit_code, record.finish_seq),
        (TaskStatus::Succeeded, Some(0), Some(1))
    );
    assert_eq!(record.attempts, 1);
    assert_eq!(
        record.outputs.parameters,
        BTreeMap::from([
            ("rows".to_owned(), json!(10)),
            ("score".to_owned(), json!(0.25))
        ])
    );
    assert_eq!(
        record.outputs.artifacts,
        BTreeMap::from([
            ("dataset".to_owned(), reference("art-l1")),
            ("report".to_owned(), reference("art-l2"))
        ])
    );
    assert_eq!(store.get_task(&producer).await.unwrap(), Some(record));

    let stored = store.get_artifact("art-l1").await.unwrap().unwrap();
    assert_eq!(stored.name, "dataset");
    assert_eq!(
        (stored.uri.as_str(), stored.digest.as_str()),
        ("artifacts/art-l1", "blake3:art-l1")
    );
    assert_eq!((stored.size, stored.is_dir), (5_000_000_000, true));
    assert_eq!(
        (stored.type_name.as_str(), stored.metadata.clone()),
        ("Dataset", json!({"rows": 10}))
    );
    assert_eq!(
        (stored.created_at, stored.run_id.as_str()),
        (20, run.as_str())
    );
    assert_eq!(stored.producer_task_id, producer);
    assert!(!store.get_artifact("art-l2").await.unwrap().unwrap().is_dir);
    let listed: Vec<String> = store
        .list_artifacts(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(listed, vec!["art-l1", "art-l2"]);

    let mut consume = start("train", 1, 30);
    consume
        .input_artifacts
        .insert("data".to_owned(), reference("art-l1"));
    let consumer = store.task_started(&run, consume).await.unwrap();

    let events = store.artifact_events("art-l1").await.unwrap();
    let seen: Vec<(String, EventKind, String)> = events
        .iter()
        .map(|e| (e.task_id.clone(), e.kind, e.name.clone()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (producer.clone(), EventKind::Output, "dataset".to_owned()),
            (consumer.clone(), EventKind::Input, "data".to_owned())
        ]
    );
    assert!(events.iter().all(|e| e.artifact_id == "art-l1"));
    assert_eq!((events[0].created_at, events[1].created_at), (20, 30));

    let producer_events = store.task_events(&producer).await.unwrap();
    assert_eq!(producer_events.len(), 2);
    assert!(
        producer_events
            .iter()
            .all(|e| e.kind == EventKind::Output && e.task_id == producer)
    );
    let consumer_events = store.task_events(&consumer).await.unwrap();
    assert_eq!(consumer_events.len(), 1);
    assert_eq!(
        (
            consumer_events[0].kind,
            consumer_events[0].artifact_id.as_str()
        ),
        (EventKind::Input, "art-l1")
    );
}

pub async fn task_finished_creates_skipped_and_cached_tasks(store: DynStore) {
    let first = run_id("m1", 1);
    started_run(&store, &first).await;
    store
        .task_started(&first, start("data", 1, 10))
        .await
        .unwrap();
    let mut done = finish("data", TaskStatus::Succeeded, 20);
    done.output_parameters.insert("rows".to_owned(), json!(10));
    done.new_artifacts.push(artifact("art-m1", "dataset"));
    let source = finish_and_read(&store, &first, done).await;

    let second = run_id("m1", 2);
    started_run(&store, &second).await;
    let mut cached = finish("data", TaskStatus::Cached, 500);
    cached.exit_code = None;
    cached.output_parameters = source.outputs.parameters.clone();
    cached.reused_artifacts = source.outputs.artifacts.clone();
    cached.cached_from = Some(source.id.clone());
    cached.cache_key = Some("key-data".to_owned());
    let hit = finish_and_read(&store, &second, cached).await;
    assert_ne!(hit.id, source.id);
    assert_eq!(
        (hit.status, hit.attempts, hit.started_at),
        (TaskStatus::Cached, 0, None)
    );
    assert_eq!(
        (hit.created_at, hit.ended_at, hit.finish_seq),
        (500, Some(500), Some(1))
    );
    assert_eq!(hit.cached_from.as_deref(), Some(source.id.as_str()));
    assert_eq!(hit.cache_key.as_deref(), Some("key-data"));
    assert_eq!(
        hit.outputs, source.outputs,
        "a cached task's outputs include the reused artifacts"
    );
    assert_eq!(store.list_tasks(&second).await.unwrap(), vec![hit.clone()]);
    assert!(
        store.list_artifacts(&second).await.unwrap().is_empty(),
        "reused, not copied"
    );
    let events = store.artifact_events("art-m1").await.unwrap();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.kind == EventKind::Output));

    let mut skipped = finish("register", TaskStatus::Skipped, 600);
    skipped.exit_code = None;
    skipped.message = Some("condition was false".to_owned());
    let record = finish_and_read(&store, &second, skipped).await;
    assert_eq!(
        (record.status, record.attempts, record.finish_seq),
        (TaskStatus::Skipped, 0, Some(2))
    );
    assert_eq!(record.message.as_deref(), Some("condition was false"));
    assert_eq!((record.executor, record.cache_key), (None, None));
    assert_eq!(record.resources, json!({}));

    let err = store
        .task_finished(&run_id("m1", 9), finish("x", TaskStatus::Skipped, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

pub async fn finish_seq_follows_finish_order(store: DynStore) {
    let run = run_id("n1", 1);
    started_run(&store, &run).await;
    for (n, name) in ["a", "b", "c"].into_iter().enumerate() {
        store
            .task_started(&run, start(name, 1, n as i64))
            .await
            .unwrap();
    }
    for (name, seq) in [("c", 1), ("a", 2)] {
        let record = finish_and_read(&store, &run, finish(name, TaskStatus::Succeeded, 10)).await;
        assert_eq!(record.finish_seq, Some(seq));
    }
    // Going back to pending (a retry) is not a finish and takes no number.
    let mut retry = finish("b", TaskStatus::Pending, 11);
    retry.exit_code = Some(1);
    let pending = finish_and_read(&store, &run, retry).await;
    assert_eq!(
        (pending.status, pending.finish_seq, pending.ended_at),
        (TaskStatus::Pending, None, None)
    );
    let record = finish_and_read(&store, &run, finish("b", TaskStatus::Failed, 12)).await;
    assert_eq!(record.finish_seq, Some(3));

    // Another run numbers its own finishes from 1.
    let other = run_id("n1", 2);
    started_run(&store, &other).await;
    let record = finish_and_read(&store, &other, finish("a", TaskStatus::Skipped, 1)).await;
    assert_eq!(record.finish_seq, Some(1));

    let tasks = store.list_tasks(&run).await.unwrap();
    let order: Vec<(&str, Option<i64>)> = tasks
        .iter()
        .map(|t| (t.name.as_str(), t.finish_seq))
        .collect();
    assert_eq!(
        order,
        vec![("a", Some(2)), ("b", Some(3)), ("c", Some(1))],
        "creation order, finish numbers"
    );
}

pub async fn concurrent_finishes_get_distinct_finish_seq(store: DynStore) {
    let run = run_id("o1", 1);
    started_run(&store, &run).await;
    let mut handles = Vec::new();
    for n in 0..16 {
        let store = store.clone();
        let run = run.clone();
        handles.push(tokio::spawn(async move {
            let name = format!("t[{n}]");
            store.task_started(&run, start(&name, 1, n)).await.unwrap();
            let mut done = finish(&name, TaskStatus::Succeeded, 100 + n);
            done.new_artifacts
                .push(artifact(&format!("art-o-{n}"), "out"));
            finish_and_read(&store, &run, done)
                .await
                .finish_seq
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for handle in handles {
        seqs.push(handle.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=16).collect::<Vec<i64>>());
    assert_eq!(store.list_artifacts(&run).await.unwrap().len(), 16);
}

pub async fn cache_lookup_finds_latest_succeeded_task(store: DynStore) {
    assert_eq!(store.cache_lookup("key-data").await.unwrap(), None);
    let old = run_id("p1", 1);
    let new = run_id("p1", 2);
    let failing = run_id("p1", 3);
    for id in [&old, &new, &failing] {
        started_run(&store, id).await;
    }
    produced(&store, &old, "data", "art-p1").await;
    store
        .task_started(&new, start("data", 1, 30))
        .await
        .unwrap();
    let mut done = finish("data", TaskStatus::Succeeded, 40);
    done.new_artifacts.push(artifact("art-p2", "data"));
    let newest = finish_and_read(&store, &new, done).await;
    store
        .task_started(&failing, start("data", 1, 50))
        .await
        .unwrap();
    store
        .task_finished(&failing, finish("data", TaskStatus::Failed, 60))
        .await
        .unwrap();
    // Running tasks with the key are not results either.
    let running = run_id("p1", 4);
    started_run(&store, &running).await;
    store
        .task_started(&running, start("data", 1, 70))
        .await
        .unwrap();

    let hit = store.cache_lookup("key-data").await.unwrap().unwrap();
    assert_eq!(hit, newest);
    assert_eq!(hit.outputs.artifacts["data"], reference("art-p2"));
    assert_eq!(store.cache_lookup("key-other").await.unwrap(), None);

    // A cache hit recorded with the key is itself `cached`, never `succeeded`: no chains.
    let reuse = run_id("p1", 5);
    started_run(&store, &reuse).await;
    let mut cached = finish("data", TaskStatus::Cached, 80);
    cached.cached_from = Some(hit.id.clone());
    cached.cache_key = Some("key-data".to_owned());
    cached.reused_artifacts = hit.outputs.artifacts.clone();
    store.task_finished(&reuse, cached).await.unwrap();
    assert_eq!(
        store.cache_lookup("key-data").await.unwrap().unwrap().id,
        newest.id
    );
}

pub async fn failed_task_finished_leaves_nothing_behind(store: DynStore) {
    let run = run_id("q1", 1);
    started_run(&store, &run).await;
    produced(&store, &run, "data", "art-q1").await;
    let mut train = start("train", 1, 30);
    train
        .input_artifacts
        .insert("data".to_owned(), reference("art-q1"));
    let id = store.task_started(&run, train).await.unwrap();
    let before = store.get_task(&id).await.unwrap().unwrap();
    let events_before = store.task_events(&id).await.unwrap();

    let mut done = finish("train", TaskStatus::Succeeded, 40);
    done.output_parameters
        .insert("accuracy".to_owned(), json!(0.9));
    done.new_artifacts.push(artifact("art-q2", "model"));
    // The id of an existing artifact: the insert fails after the task row and the first
    // artifact were already written inside the transaction.
    done.new_artifacts.push(artifact("art-q1", "metrics"));
    let err = store.task_finished(&run, done).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(err.to_string().contains("art-q1"), "{err}");

    assert_eq!(store.get_task(&id).await.unwrap().unwrap(), before);
    assert_eq!(store.task_events(&id).await.unwrap(), events_before);
    assert_eq!(store.get_artifact("art-q2").await.unwrap(), None);
    assert_eq!(store.list_artifacts(&run).await.unwrap().len(), 1);

    // The rolled-back finish took no number: the next finish of the run is still 2.
    let retried = finish_and_read(&store, &run, finish("train", TaskStatus::Failed, 50)).await;
    assert_eq!(retried.finish_seq, Some(2));

    // A cache hit that fails to record leaves no task row.
    let mut skipped = finish("ghost", TaskStatus::Cached, 60);
    skipped
        .reused_artifacts
        .insert("model".to_owned(), reference("never-stored"));
    let err = store.task_finished(&run, skipped).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    let names: Vec<String> = store
        .list_tasks(&run)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec!["data", "train"]);
}

pub async fn task_finished_validates_its_input(store: DynStore) {
    let run = run_id("r1", 1);
    started_run(&store, &run).await;
    let err = store
        .task_finished(&run, finish("a", TaskStatus::Running, 1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");

    produced(&store, &run, "data", "art-r1").await;
    let mut twice = finish("b", TaskStatus::Succeeded, 2);
    twice.new_artifacts.push(artifact("art-r2", "out"));
    twice
        .reused_artifacts
        .insert("out".to_owned(), reference("art-r1"));
    let err = store.task_finished(&run, twice).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("`out`"), "{err}");

    let mut huge = finish("c", TaskStatus::Succeeded, 3);
    huge.new_artifacts.push(NewArtifact {
        size: u64::MAX,
        ..artifact("art-r3", "out")
    });
    let err = store.task_finished(&run, huge).await.unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err:?}");
    assert_eq!(store.list_tasks(&run).await.unwrap().len(), 1);
}

pub async fn run_contexts_are_shared_per_pipeline(store: DynStore) {
    let first = run_id("s1", 1);
    let second = run_id("s1", 2);
    started_run(&store, &first).await;
    started_run(&store, &second).await;
    let a = store.run_contexts(&first).await.unwrap();
    let b = store.run_contexts(&second).await.unwrap();
    let kinds: Vec<(&str, &str)> = a
        .iter()
        .map(|c| (c.kind.as_str(), c.name.as_str()))
        .collect();
    assert_eq!(kinds, vec![("pipeline", "pipe"), ("run", first.as_str())]);
    assert_eq!(a[0], b[0], "runs of one pipeline share its context");
    assert_ne!(a[1].id, b[1].id);
    assert_eq!(b[1].name, second);
}

/// Histories and run data come back packed in one JSON row per read (`json_rows`): every
/// value must survive that, the awkward doubles, NaN, the infinities and text that looks like
/// JSON or SQL among them.
pub async fn metric_values_and_texts_read_back_exactly(store: DynStore) {
    use crate::{KeyValue, Metric};
    let tracking = store.tracking();
    let run = run_id("f", 1);
    new_tracking_run(&tracking, 0, &run, "exact", 1).await;
    let values = [
        0.1,
        0.1 + 0.2,
        1.0 / 3.0,
        -2.5e-10,
        1e300,
        f64::MAX,
        f64::MIN_POSITIVE,
        5e-324,
        123_456_789.123_456_79,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
    ];
    let points: Vec<Metric> = values
        .iter()
        .enumerate()
        .map(|(step, &value)| Metric {
            key: "v".to_owned(),
            value,
            timestamp: 1_700_000_000_000 + step as i64,
            step: step as i64,
        })
        .collect();
    // Each value is also the latest point of a metric of its own.
    let latest: Vec<Metric> = points
        .iter()
        .map(|p| Metric {
            key: format!("latest {}", p.step),
            ..p.clone()
        })
        .collect();
    let texts = [
        KeyValue::new("quote", "it's \"quoted\" \\ [1, 2] {\"a\": null}"),
        KeyValue::new("unicode", "naïve 🚀 \u{1} tab\there"),
        KeyValue::new("sql", "'); DROP TABLE tracking_runs; --"),
        KeyValue::new("empty", ""),
    ];
    tracking
        .log_batch(
            &run,
            &[points.clone(), latest.clone()].concat(),
            &texts,
            &texts,
        )
        .await
        .unwrap();
    let same = |a: f64, b: f64| (a.is_nan() && b.is_nan()) || a == b;

    let history = tracking.metric_history(&run, "v", 1000, 0).await.unwrap();
    assert_eq!(history.next_offset, None);
    assert_eq!(history.items.len(), points.len());
    for (got, want) in history.items.iter().zip(&points) {
        assert!(same(got.value, want.value), "{got:?} for {want:?}");
        if want.value != 0.0 {
            assert_eq!(got.value.to_bits(), want.value.to_bits(), "{got:?}");
        }
        assert_eq!((got.step, got.timestamp), (want.step, want.timestamp));
        assert_eq!(got.key, "v");
    }
    // Paging through the packed rows.
    let second = tracking.metric_history(&run, "v", 5, 5).await.unwrap();
    assert_eq!(second.next_offset, Some(10));
    assert_eq!(
        second.items.iter().map(|m| m.step).collect::<Vec<_>>(),
        [5, 6, 7, 8, 9]
    );

    let read = tracking.get_tracking_run(&run).await.unwrap().unwrap();
    for want in &latest {
        let got = read.metrics.iter().find(|m| m.key == want.key).unwrap();
        assert!(same(got.value, want.value), "{got:?} for {want:?}");
        assert_eq!((got.step, got.timestamp), (want.step, want.timestamp));
    }
    let mut sorted = texts.to_vec();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(read.params, sorted);
    for kv in &sorted {
        assert!(read.tags.contains(kv), "{kv:?} in {:?}", read.tags);
    }
    // An empty page of a run that exists, and of one that does not.
    let none = tracking
        .metric_history(&run, "missing", 10, 0)
        .await
        .unwrap();
    assert!(none.items.is_empty());
    let unknown = tracking.metric_history(&run_id("f", 2), "v", 10, 0).await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
}

pub async fn tracking_runs_log_idempotently_and_search_in_sql(store: DynStore) {
    use crate::{
        Attribute, Clause, Comparator, Entity, KeyValue, Metric, Operand, OrderKey, RunQuery,
        ViewType,
    };
    let tracking = store.tracking();
    let experiment = tracking
        .create_experiment("tracked", None, &[KeyValue::new("team", "a")], 5)
        .await
        .unwrap();
    let conflict = tracking.create_experiment("tracked", None, &[], 6).await;
    assert!(
        matches!(conflict, Err(StoreError::Conflict(_))),
        "{conflict:?}"
    );
    assert_eq!(
        tracking
            .get_experiment(0)
            .await
            .unwrap()
            .map(|e| e.name)
            .as_deref(),
        Some("Default")
    );
    for n in 0..3u32 {
        let run_id = run_id("e", n);
        new_tracking_run(
            &tracking,
            experiment.experiment_id,
            &run_id,
            &format!("r{n}"),
            i64::from(n),
        )
        .await;
        let points: Vec<Metric> = (0..3)
            .map(|step| Metric {
                key: "acc".to_owned(),
                value: f64::from(n) + f64::from(step) / 10.0,
                timestamp: 1,
                step: i64::from(step),
            })
            .collect();
        let params = [KeyValue::new("n", n.to_string())];
        for _ in 0..2 {
            tracking
                .log_batch(&run_id, &points, &params, &[])
                .await
                .unwrap();
        }
        let changed = tracking
            .log_batch(&run_id, &[], &[KeyValue::new("n", "other")], &[])
            .await;
        assert!(
            matches!(changed, Err(StoreError::Invalid(_))),
            "{changed:?}"
        );
    }
    let nan = Metric {
        key: "nan".to_owned(),
        value: f64::NAN,
        timestamp: 1,
        step: 0,
    };
    tracking
        .log_batch(&run_id("e", 0), &[nan], &[], &[])
        .await
        .unwrap();
    let history = tracking
        .metric_history(&run_id("e", 1), "acc", 2, 0)
        .await
        .unwrap();
    assert_eq!(history.items.len(), 2);
    assert_eq!(history.next_offset, Some(2));
    let run = tracking
        .get_tracking_run(&run_id("e", 0))
        .await
        .unwrap()
        .unwrap();
    assert!(
        run.metrics
            .iter()
            .any(|m| m.key == "nan" && m.value.is_nan())
    );
    assert_eq!(
        run.metrics.iter().find(|m| m.key == "acc").map(|m| m.value),
        Some(0.2)
    );

    let query = RunQuery {
        experiment_ids: vec![experiment.experiment_id],
        clauses: vec![
            Clause {
                entity: Entity::Metric("acc".to_owned()),
                comparator: Comparator::Ge,
                value: Operand::Number(1.0),
            },
            Clause {
                entity: Entity::Attribute(Attribute::RunName),
                comparator: Comparator::Like,
                value: Operand::Text("r%".to_owned()),
            },
        ],
        order_by: vec![OrderKey {
            entity: Entity::Param("n".to_owned()),
            ascending: false,
        }],
        view: ViewType::ActiveOnly,
        limit: 1,
        offset: 0,
    };
    let first = tracking.search_tracking_runs(&query).await.unwrap();
    assert_eq!(first.items[0].info.name, "r2");
    let second = tracking
        .search_tracking_runs(&RunQuery {
            offset: first.next_offset.unwrap(),
            ..query.clone()
        })
        .await
        .unwrap();
    assert_eq!(second.items[0].info.name, "r1");
    assert_eq!(second.next_offset, None);
    let case_sensitive = RunQuery {
        clauses: vec![Clause {
            entity: Entity::Attribute(Attribute::RunName),
            comparator: Comparator::Like,
            value: Operand::Text("R%".to_owned()),
        }],
        limit: 10,
        ..query
    };
    assert!(
        tracking
            .search_tracking_runs(&case_sensitive)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

/// The points M4 keeps of `points` (sorted by step, timestamp, value) in buckets `width` steps
/// wide from `lo`: each bucket's first and last point and its lowest and highest value (a NaN
/// only when nothing else is there), ties going to the earliest point.
fn m4_reference(points: &[crate::Metric], lo: i64, width: i64) -> Vec<crate::Metric> {
    let mut kept: Vec<crate::Metric> = Vec::new();
    let mut buckets: BTreeMap<i64, Vec<&crate::Metric>> = BTreeMap::new();
    for point in points {
        buckets
            .entry((point.step - lo) / width)
            .or_default()
            .push(point);
    }
    // NaN ranks after every number, lowest or highest, and NaNs rank equal.
    let rank = |m: &crate::Metric, sign: f64| {
        let nan = m.value.is_nan();
        (nan, if nan { 0.0 } else { sign * m.value })
    };
    for bucket in buckets.values() {
        let pick = |sign: f64| {
            bucket
                .iter()
                .min_by(|a, b| rank(a, sign).partial_cmp(&rank(b, sign)).unwrap())
                .unwrap()
        };
        let (lowest, highest) = (pick(1.0), pick(-1.0));
        for point in [bucket[0], lowest, highest, bucket[bucket.len() - 1]] {
            if !kept.iter().any(|k| same_point(k, point)) {
                kept.push(point.clone());
            }
        }
    }
    kept.sort_by_key(|m| (m.step, m.timestamp));
    kept
}

fn same_point(a: &crate::Metric, b: &crate::Metric) -> bool {
    a.step == b.step
        && a.timestamp == b.timestamp
        && (a.value == b.value || (a.value.is_nan() && b.value.is_nan()))
}

fn assert_same_points(got: &[crate::Metric], want: &[crate::Metric]) {
    let show = |ms: &[crate::Metric]| -> Vec<(i64, i64, String)> {
        ms.iter()
            .map(|m| (m.step, m.timestamp, m.value.to_string()))
            .collect()
    };
    assert_eq!(show(got), show(want));
}

/// A chart's sample of a long history is chosen in the database: the range is cut into
/// `max / 4` step buckets, each keeping its first, last, lowest and highest point.
pub async fn metric_samples_keep_each_buckets_ends_and_extremes(store: DynStore) {
    use crate::{Metric, NewTrackingRun};
    let tracking = store.tracking();
    let run = run_id("5a", 1);
    tracking
        .create_tracking_run(&NewTrackingRun {
            run_id: run.clone(),
            experiment_id: 0,
            name: "long".to_owned(),
            user_id: "u".to_owned(),
            start_time: 1,
            artifact_uri: format!("mem:/{run}"),
            tags: vec![],
        })
        .await
        .unwrap();
    let point = |key: &str, step: i64, timestamp: i64, value: f64| Metric {
        key: key.to_owned(),
        value,
        timestamp,
        step,
    };
    // 10,000 steps of a scattered curve, with a spike, a dip, a NaN among numbers, a bucket of
    // NaN only, and a step logged twice.
    let mut loss: Vec<Metric> = (0..10_000i64)
        .map(|s| point("loss", s, 1_000 + s, ((s * 37) % 101) as f64 / 10.0))
        .collect();
    loss[4321].value = 1e6;
    loss[777].value = -1e6;
    loss[5050].value = f64::NAN;
    for p in &mut loss[9_100..9_200] {
        p.value = f64::NAN;
    }
    loss.insert(2_001, point("loss", 2_000, 5, 3.5));
    for chunk in loss.chunks(1_000) {
        tracking.log_batch(&run, chunk, &[], &[]).await.unwrap();
    }
    loss.sort_by(|a, b| {
        (a.step, a.timestamp)
            .cmp(&(b.step, b.timestamp))
            .then(a.value.total_cmp(&b.value))
    });

    // 400 points: 100 buckets of 100 steps.
    let sample = tracking
        .metric_sample(&run, "loss", i64::MIN, i64::MAX, 400)
        .await
        .unwrap();
    assert!(sample.len() <= 400, "{} points", sample.len());
    assert_same_points(&sample, &m4_reference(&loss, 0, 100));
    assert_eq!(sample.first().map(|m| m.step), Some(0));
    assert_eq!(sample.last().map(|m| m.step), Some(9_999));
    assert!(sample.iter().any(|m| m.value == 1e6) && sample.iter().any(|m| m.value == -1e6));
    let nan_only = sample
        .iter()
        .filter(|m| (9_100..9_200).contains(&m.step))
        .count();
    assert_eq!(nan_only, 2, "a NaN-only bucket keeps its first and last");
    assert!(
        sample
            .iter()
            .filter(|m| (5_000..5_100).contains(&m.step))
            .all(|m| !m.value.is_nan()),
        "a NaN among numbers is neither the lowest nor the highest"
    );

    // A zoomed window: 1,000 steps in 80 points, 20 buckets of 50 steps from step 3,000.
    let window: Vec<Metric> = loss
        .iter()
        .filter(|m| (3_000..=3_999).contains(&m.step))
        .cloned()
        .collect();
    let zoomed = tracking
        .metric_sample(&run, "loss", 3_000, 3_999, 80)
        .await
        .unwrap();
    assert_same_points(&zoomed, &m4_reference(&window, 3_000, 50));

    // A range holding no more than `max` points comes back whole, both rows of step 2,000 too.
    let whole = tracking
        .metric_sample(&run, "loss", 1_990, 2_010, 2_500)
        .await
        .unwrap();
    let expected: Vec<Metric> = loss
        .iter()
        .filter(|m| (1_990..=2_010).contains(&m.step))
        .cloned()
        .collect();
    assert_eq!(expected.len(), 22);
    assert_same_points(&whole, &expected);

    // Fewer than four points: the ends, and the last alone for one.
    let two = tracking
        .metric_sample(&run, "loss", 10, 20, 2)
        .await
        .unwrap();
    assert_eq!(two.iter().map(|m| m.step).collect::<Vec<_>>(), vec![10, 20]);
    let one = tracking
        .metric_sample(&run, "loss", i64::MIN, i64::MAX, 1)
        .await
        .unwrap();
    assert_eq!(one.iter().map(|m| m.step).collect::<Vec<_>>(), vec![9_999]);

    // Many points at one step (a metric logged without steps) stay bounded.
    let flat: Vec<Metric> = (0..500i64)
        .map(|t| point("flat", 0, t, (t % 7) as f64))
        .collect();
    tracking.log_batch(&run, &flat, &[], &[]).await.unwrap();
    let sample = tracking
        .metric_sample(&run, "flat", i64::MIN, i64::MAX, 100)
        .await
        .unwrap();
    let kept: Vec<(i64, f64)> = sample.iter().map(|m| (m.timestamp, m.value)).collect();
    assert_eq!(kept, vec![(0, 0.0), (6, 6.0), (499, 2.0)]);

    // Negative steps and a range wider than any history.
    let signed: Vec<Metric> = (-300..300i64)
        .map(|s| point("signed", s, 0, (s * s) as f64))
        .collect();
    tracking.log_batch(&run, &signed, &[], &[]).await.unwrap();
    let sample = tracking
        .metric_sample(&run, "signed", i64::MIN, i64::MAX, 40)
        .await
        .unwrap();
    assert_same_points(&sample, &m4_reference(&signed, -300, 60));

    assert!(
        tracking
            .metric_sample(&run, "absent", 0, 10, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let unknown = tracking
        .metric_sample(&run_id("5b", 1), "loss", 0, 10, 100)
        .await;
    assert!(
        matches!(unknown, Err(StoreError::NotFound(_))),
        "{unknown:?}"
    );
}

pub async fn logged_models_finalize_tag_and_search_by_name(store: DynStore) {
    use crate::{
        Attribute, Clause, Comparator, Entity, KeyValue, LoggedModelQuery, MODEL_READY,
        ModelOutput, NewLoggedModel, Operand,
    };
    let tracking = store.tracking();
    let experiment = tracking
        .create_experiment("models", None, &[], 1)
        .await
        .unwrap();
    let run = run_id("f", 0);
    new_tracking_run(&tracking, experiment.experiment_id, &run, "r", 1).await;
    let new = |id: &str, name: &str, at| NewLoggedModel {
        model_id: id.to_owned(),
        experiment_id: experiment.experiment_id,
        name: name.to_owned(),
        artifact_location: format!("mem:/{id}"),
        model_type: String::new(),
        source_run_id: Some(run.clone()),
        tags: vec![KeyValue::new("t", "1")],
        params: vec![KeyValue::new("alpha", "0.5")],
        at,
    };
    let first = tracking
        .create_logged_model(&new("m-1", "model", 10))
        .await
        .unwrap();
    assert_eq!(first.status, "PENDING");
    assert_eq!(first.params, vec![KeyValue::new("alpha", "0.5")]);
    tracking
        .create_logged_model(&new("m-2", "other", 11))
        .await
        .unwrap();
    let ready = tracking
        .finalize_logged_model("m-1", MODEL_READY, 12)
        .await
        .unwrap();
    assert_eq!(ready.status, MODEL_READY);
    assert_eq!(ready.last_updated_time, 12);
    tracking
        .log_logged_model_params("m-1", &[KeyValue::new("alpha", "0.5")])
        .await
        .unwrap();
    let changed = tracking
        .log_logged_model_params("m-1", &[KeyValue::new("alpha", "0.7")])
        .await;
    assert!(
        matches!(changed, Err(StoreError::Invalid(_))),
        "{changed:?}"
    );
    tracking
        .set_logged_model_tags("m-1", &[KeyValue::new("t", "2")])
        .await
        .unwrap();
    tracking.delete_logged_model_tag("m-2", "t").await.unwrap();
    let by_name = LoggedModelQuery {
        experiment_ids: vec![experiment.experiment_id],
        clauses: vec![Clause {
            entity: Entity::Attribute(Attribute::Name),
            comparator: Comparator::Eq,
            value: Operand::Text("model".to_owned()),
        }],
        order_by: vec![],
        limit: 10,
        offset: 0,
    };
    let found = tracking.search_logged_models(&by_name).await.unwrap();
    assert_eq!(found.items.len(), 1);
    assert_eq!(found.items[0].tags, vec![KeyValue::new("t", "2")]);
    let all = LoggedModelQuery {
        clauses: vec![],
        limit: 1,
        ..by_name.clone()
    };
    let page = tracking.search_logged_models(&all).await.unwrap();
    assert_eq!(page.items[0].model_id, "m-2", "newest first");
    assert_eq!(page.next_offset, Some(1));
    tracking
        .log_model_outputs(
            &run,
            &[ModelOutput {
                model_id: "m-1".to_owned(),
                step: 0,
            }],
        )
        .await
        .unwrap();
    tracking
        .log_model_outputs(
            &run,
            &[ModelOutput {
                model_id: "m-1".to_owned(),
                step: 0,
            }],
        )
        .await
        .unwrap();
    assert_eq!(
        tracking
            .run_model_outputs(std::slice::from_ref(&run))
            .await
            .unwrap()
            .len(),
        1
    );
    let missing = tracking
        .log_model_outputs(
            &run,
            &[ModelOutput {
                model_id: "m-9".to_owned(),
                step: 0,
            }],
        )
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound(_))),
        "{missing:?}"
    );
    tracking.delete_logged_model("m-1", 13).await.unwrap();
    assert!(
        tracking
            .get_logged_model("m-1", false)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        tracking
            .get_logged_model("m-1", true)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        tracking
            .search_logged_models(&by_name)
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn run_inputs_hold_datasets_and_logged_models(store: DynStore) {
    use crate::{Dataset, DatasetInput, NewLoggedModel};
    let tracking = store.tracking();
    let experiment = tracking
        .create_experiment("inputs", None, &[], 1)
        .await
        .unwrap();
    let run = run_id("e", 0);
    new_tracking_run(&tracking, experiment.experiment_id, &run, "eval", 1).await;
    for id in ["m-a", "m-b", "m-gone"] {
        tracking
            .create_logged_model(&NewLoggedModel {
                model_id: id.to_owned(),
                experiment_id: experiment.experiment_id,
                name: "model".to_owned(),
                artifact_location: format!("mem:/{id}"),
                model_type: String::new(),
                source_run_id: None,
                tags: vec![],
                params: vec![],
                at: 2,
            })
            .await
            .unwrap();
    }
    tracking.delete_logged_model("m-gone", 3).await.unwrap();
    let dataset = DatasetInput {
        dataset: Dataset {
            name: "eval".to_owned(),
            digest: "d1".to_owned(),
            source_type: "local".to_owned(),
            source: "{}".to_owned(),
            schema: None,
            profile: None,
        },
        tags: vec![],
    };
    let ids = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
    // An unknown or deleted model fails the whole call: the dataset is not recorded either.
    for bad in ["m-none", "m-gone"] {
        let failed = tracking
            .log_inputs(&run, std::slice::from_ref(&dataset), &ids(&["m-a", bad]), 5)
            .await;
        assert!(matches!(failed, Err(StoreError::NotFound(_))), "{failed:?}");
    }
    let stored = tracking.get_tracking_run(&run).await.unwrap().unwrap();
    assert!(stored.inputs.is_empty());
    assert!(tracking.run_model_inputs(&run).await.unwrap().is_empty());
    tracking
        .log_inputs(&run, std::slice::from_ref(&dataset), &ids(&["m-b"]), 6)
        .await
        .unwrap();
    // Logged again, a model keeps its first record; a new one comes after it.
    tracking
        .log_inputs(&run, &[], &ids(&["m-b", "m-a"]), 7)
        .await
        .unwrap();
    assert_eq!(
        tracking.run_model_inputs(&run).await.unwrap(),
        ids(&["m-b", "m-a"])
    );
    let stored = tracking.get_tracking_run(&run).await.unwrap().unwrap();
    assert_eq!(stored.inputs, vec![dataset]);
    assert!(
        tracking
            .run_model_inputs(&run_id("f", 9))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn registry_versions_aliases_stages_and_tag_filters(store: DynStore) {
    use crate::{
        Attribute, Clause, Comparator, Entity, KeyValue, NewModelVersion, Operand, RegistryQuery,
    };
    let tracking = store.tracking();
    tracking
        .create_registered_model("a", "", &[], 1)
        .await
        .unwrap();
    tracking
        .create_registered_model(
            "p",
            "",
            &[KeyValue::new("mlflow.prompt.is_prompt", "true")],
            1,
        )
        .await
        .unwrap();
    let taken = tracking.create_registered_model("a", "", &[], 2).await;
    assert!(matches!(taken, Err(StoreError::Conflict(_))), "{taken:?}");
    let not_prompt = RegistryQuery {
        clauses: vec![Clause {
            entity: Entity::Tag("mlflow.prompt.is_prompt".to_owned()),
            comparator: Comparator::Ne,
            value: Operand::Text("true".to_owned()),
        }],
        order_by: vec![],
        limit: 10,
        offset: 0,
    };
    let found = tracking
        .search_registered_models(&not_prompt)
        .await
        .unwrap();
    assert_eq!(
        found
            .items
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["a"],
        "a model without the tag matches !="
    );
    let version = |n: i64| NewModelVersion {
        name: "a".to_owned(),
        source: format!("mem:/{n}"),
        run_id: None,
        model_id: None,
        description: String::new(),
        user_id: String::new(),
        tags: vec![],
        at: 10 + n,
    };
    assert_eq!(
        tracking
            .create_model_version(&version(1))
            .await
            .unwrap()
            .version,
        1
    );
    assert_eq!(
        tracking
            .create_model_version(&version(2))
            .await
            .unwrap()
            .version,
        2
    );
    tracking.set_model_alias("a", "champion", 1).await.unwrap();
    tracking.set_model_alias("a", "champion", 2).await.unwrap();
    let champion = tracking
        .model_version_by_alias("a", "champion")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (champion.version, champion.aliases.clone()),
        (2, vec!["champion".to_owned()])
    );
    tracking
        .transition_model_version("a", 1, "Production", false, 20)
        .await
        .unwrap();
    tracking
        .transition_model_version("a", 2, "Production", true, 21)
        .await
        .unwrap();
    let model = tracking.get_registered_model("a").await.unwrap().unwrap();
    let stages: Vec<(String, i64)> = model
        .latest_versions
        .iter()
        .map(|v| (v.current_stage.clone(), v.version))
        .collect();
    assert_eq!(
        stages,
        [("Production".to_owned(), 2), ("Archived".to_owned(), 1)]
    );
    tracking
        .set_model_version_tag("a", 1, &KeyValue::new("k", "v"))
        .await
        .unwrap();
    let tagged = RegistryQuery {
        clauses: vec![
            Clause {
                entity: Entity::Attribute(Attribute::Name),
                comparator: Comparator::Eq,
                value: Operand::Text("a".to_owned()),
            },
            Clause {
                entity: Entity::Tag("k".to_owned()),
                comparator: Comparator::Eq,
                value: Operand::Text("v".to_owned()),
            },
        ],
        ..not_prompt.clone()
    };
    let versions = tracking.search_model_versions(&tagged).await.unwrap();
    assert_eq!(
        versions.items.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1]
    );
    let renamed = tracking
        .rename_registered_model("a", "b", 30)
        .await
        .unwrap();
    assert_eq!(renamed.aliases.len(), 1);
    assert_eq!(
        tracking
            .get_model_version("b", 1)
            .await
            .unwrap()
            .unwrap()
            .tags,
        vec![KeyValue::new("k", "v")]
    );
    tracking.delete_model_version("b", 2).await.unwrap();
    assert!(
        tracking
            .model_version_by_alias("b", "champion")
            .await
            .unwrap()
            .is_none()
    );
    tracking.delete_registered_model("b").await.unwrap();
    assert!(tracking.get_registered_model("b").await.unwrap().is_none());
    assert!(tracking.get_model_version("b", 1).await.unwrap().is_none());
    let gone = tracking.set_model_alias("b", "x", 1).await;
    assert!(matches!(gone, Err(StoreError::NotFound(_))), "{gone:?}");
}

/// The tracking run `id` as (status, end time set, tags, params), or a panic naming it.
async fn tracking_view(
    store: &DynStore,
    id: &str,
) -> (
    String,
    bool,
    BTreeMap<String, String>,
    BTreeMap<String, String>,
) {
    let run = store
        .tracking()
        .get_tracking_run(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no tracking run {id}"));
    let pairs = |kv: Vec<crate::KeyValue>| kv.into_iter().map(|p| (p.key, p.value)).collect();
    (
        run.info.status,
        run.info.end_time.is_some(),
        pairs(run.tags),
        pairs(run.params),
    )
}

pub async fn pipeline_runs_and_attempts_are_tracking_runs(store: DynStore) {
    let run = run_id("t1", 1);
    let created = store.create_run(new_run(&run, "mirror", 1)).await.unwrap();
    let tracked = store
        .tracking()
        .get_tracking_run(&run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tracked.info.experiment_id, created.experiment_id);
    assert_eq!(
        tracked.info.artifact_uri,
        format!(
            "mlflow-artifacts:/{}/{run}/artifacts",
            created.experiment_id
        )
    );
    let (status, ended, tags, params) = tracking_view(&store, &run).await;
    assert_eq!((status.as_str(), ended), ("SCHEDULED", false));
    assert_eq!(tags["capstan.run_id"], run);
    assert_eq!(tags["mlflow.source.name"], "mirror.yaml");
    assert_eq!(params["rows"], "2000");
    assert_eq!(params["tags"], r#"["x","y"]"#);

    store
        .set_run_status(&run, RunStatus::Running, None, 2)
        .await
        .unwrap();
    assert_eq!(tracking_view(&store, &run).await.0, "RUNNING");

    // Attempt 1 runs, fails and is retried: its run ends FAILED, attempt 2 gets a run of its own.
    let task = store.task_started(&run, start("a", 1, 10)).await.unwrap();
    let first = crate::attempt_run_id(&task, 1);
    assert_eq!(first, task);
    let (status, ended, tags, params) = tracking_view(&store, &first).await;
    assert_eq!((status.as_str(), ended), ("RUNNING", false));
    assert_eq!(tags["mlflow.parentRunId"], run);
    assert_eq!(tags["mlflow.runName"], "a");
    assert_eq!(tags["capstan.attempt"], "1");
    assert_eq!(params["rows"], "2000");
    store
        .task_pending(&run, "a", Some("retrying"))
        .await
        .unwrap();
    let (status, ended, _, _) = tracking_view(&store, &first).await;
    assert_eq!((status.as_str(), ended), ("FAILED", true));

    store.task_started(&run, start("a", 2, 20)).await.unwrap();
    let second = crate::attempt_run_id(&task, 2);
    assert_ne!(second, first);
    let mut done = finish("a", TaskStatus::Succeeded, 30);
    done.output_parameters
        .insert("accuracy".to_owned(), json!(0.9));
    store.task_finished(&run, done).await.unwrap();
    let (status, ended, tags, params) = tracking_view(&store, &second).await;
    assert_eq!((status.as_str(), ended), ("FINISHED", true));
    assert_eq!(tags["capstan.attempt"], "2");
    assert_eq!(tags["capstan.status"], "succeeded");
    assert_eq!(params["outputs.accuracy"], "0.9");

    // Tasks that never started (cached, skipped) are nested runs too.
    let mut cached = finish("b", TaskStatus::Cached, 40);
    cached.cached_from = Some(task.clone());
    cached
        .input_parameters
        .insert("params.rows".to_owned(), json!(5));
    let b = finish_and_read(&store, &run, cached).await;
    assert_eq!(b.inputs.parameters["params.rows"], json!(5));
    let (status, _, tags, params) = tracking_view(&store, &b.id).await;
    assert_eq!(status, "FINISHED");
    assert_eq!(tags["capstan.cached"], "true");
    assert_eq!(tags["capstan.cached_from"], task);
    assert_eq!(tags["mlflow.parentRunId"], run);
    assert_eq!(params["params.rows"], "5");
    let failed = finish_and_read(&store, &run, finish("c", TaskStatus::Failed, 45)).await;
    assert_eq!(tracking_view(&store, &failed.id).await.0, "FAILED");

    // Every nested run is in the pipeline's experiment and names its parent.
    let page = store
        .tracking()
        .search_tracking_runs(&crate::RunQuery {
            experiment_ids: vec![created.experiment_id],
            clauses: vec![],
            order_by: vec![],
            view: crate::ViewType::ActiveOnly,
            limit: 100,
            offset: 0,
        })
        .await
        .unwrap();
    assert_eq!(page.items.len(), 5);

    store
        .set_run_status(&run, RunStatus::Failed, Some("step c failed"), 50)
        .await
        .unwrap();
    let (status, ended, _, _) = tracking_view(&store, &run).await;
    assert_eq!((status.as_str(), ended), ("FAILED", true));
    // A resumed run is running again, with no end.
    store
        .set_run_status(&run, RunStatus::Running, None, 60)
        .await
        .unwrap();
    let (status, ended, _, _) = tracking_view(&store, &run).await;
    assert_eq!((status.as_str(), ended), ("RUNNING", false));
    store
        .set_run_status(&run, RunStatus::Cancelled, None, 70)
        .await
        .unwrap();
    assert_eq!(tracking_view(&store, &run).await.0, "KILLED");
}

pub async fn a_failed_transition_leaves_no_tracking_rows(store: DynStore) {
    let run = run_id("t2", 1);
    started_run(&store, &run).await;
    // A start naming an input artifact that does not exist fails after the task row was written.
    let mut bad = start("a", 1, 10);
    bad.input_artifacts
        .insert("data".to_owned(), reference("never-stored"));
    store.task_started(&run, bad).await.unwrap_err();
    assert!(store.list_tasks(&run).await.unwrap().is_empty());

    // A cache hit whose reused artifact is gone records nothing, tracking run included.
    let mut hit = finish("b", TaskStatus::Cached, 20);
    hit.reused_artifacts
        .insert("model".to_owned(), reference("never-stored"));
    store.task_finished(&run, hit).await.unwrap_err();
    let page = store
        .tracking()
        .search_tracking_runs(&crate::RunQuery {
            experiment_ids: vec![store.get_run(&run).await.unwrap().unwrap().experiment_id],
            clauses: vec![],
            order_by: vec![],
            view: crate::ViewType::All,
            limit: 100,
            offset: 0,
        })
        .await
        .unwrap();
    let ids: Vec<&str> = page.items.iter().map(|r| r.info.run_id.as_str()).collect();
    assert_eq!(ids, vec![run.as_str()], "only the pipeline run is tracked");
}
