//! The concurrency claim of the tracking server: 64 clients logging at once get no errors and
//! lose no points. Each client logs to a run of its own and to one shared run, over HTTP, against
//! a real `capstan server`; afterwards every point is counted through `get-history`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::util::{Api, Dir, Server};

const CLIENTS: usize = 64;
const POINTS: usize = 200;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn create_run(api: &Api, experiment: &str) -> String {
    let (status, body) = api
        .post(
            "runs/create",
            json!({"experiment_id": experiment, "start_time": now()}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["run"]["info"]["run_id"].as_str().unwrap().to_string()
}

async fn sixty_four_clients(dir: &Dir) {
    let server = Server::start(dir);
    let api = Api::new(&server.url);
    let (status, body) = api
        .post("experiments/create", json!({"name": "load"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let experiment = body["experiment_id"].as_str().unwrap().to_string();
    let shared = create_run(&api, &experiment).await;

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let api = api.clone();
            let experiment = experiment.clone();
            let shared = shared.clone();
            tokio::spawn(async move {
                let own = create_run(&api, &experiment).await;
                let mut errors = Vec::new();
                for i in 0..POINTS {
                    // Distinct steps on the shared run, so a lost point is a missing step.
                    for (run, key, step) in
                        [(&own, "own", i), (&shared, "all", client * POINTS + i)]
                    {
                        let body = json!({"run_id": run, "key": key, "value": i as f64,
                                          "timestamp": now(), "step": step});
                        let (status, reply) = api.post("runs/log-metric", body).await;
                        if status != 200 {
                            errors.push(format!("{status} {reply}"));
                        }
                    }
                }
                (own, errors)
            })
        })
        .collect();
    let mut owns = Vec::new();
    let mut errors = Vec::new();
    for client in futures::future::join_all(clients).await {
        let (own, mut errs) = client.expect("client task");
        owns.push(own);
        errors.append(&mut errs);
    }
    assert!(
        errors.is_empty(),
        "{} requests failed, first: {:?}",
        errors.len(),
        errors.first()
    );

    for own in &owns {
        assert_eq!(api.history(own, "own").await.len(), POINTS, "run {own}");
    }
    let all = api.history(&shared, "all").await;
    assert_eq!(all.len(), CLIENTS * POINTS);
    let mut steps: Vec<i64> = all.iter().map(|p| p["step"].as_i64().unwrap()).collect();
    steps.sort_unstable();
    steps.dedup();
    assert_eq!(steps.len(), CLIENTS * POINTS, "every point is there once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_lose_nothing_on_sqlite() {
    sixty_four_clients(&Dir::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_lose_nothing_on_postgres() {
    let Some(url) = crate::util::postgres_database("load") else {
        return;
    };
    let mut dir = Dir::new();
    dir.global = vec!["--backend-store-uri".into(), url];
    sixty_four_clients(&dir).await;
}
