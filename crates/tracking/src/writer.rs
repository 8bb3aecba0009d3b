//! Group commit for single `log-metric` requests.
//!
//! Each `log-metric` request is one point; written alone it costs a whole transaction. Requests
//! that arrive while a write is in progress queue up here, and one task writes everything queued
//! for a run in one `log_batch` transaction, then answers each request with that outcome. A
//! lone request waits for nothing: it is written at once. The store applies the points of one
//! batch exactly as it would apply them one by one (the latest value of a key is the highest
//! step, then timestamp, then value, whatever the order), so grouping changes no result.

use std::collections::HashMap;

use capstan_store::{DynTrackingStore, Metric, StoreError};
use tokio::sync::{mpsc, oneshot};

/// Most points one transaction takes from the queue.
const MAX_GROUP: usize = 1000;

type Outcome = Result<(), StoreError>;

struct Point {
    run_id: String,
    metric: Metric,
    done: oneshot::Sender<Outcome>,
}

/// The queue in front of the store's writes of single metric points; clones share it.
#[derive(Clone)]
pub struct MetricWriter {
    queue: mpsc::UnboundedSender<Point>,
}

impl MetricWriter {
    /// Starts the writer task for `store` on the current Tokio runtime. It ends when the last
    /// clone of the writer is dropped.
    pub fn start(store: DynTrackingStore) -> MetricWriter {
        let (queue, mut points) = mpsc::unbounded_channel::<Point>();
        tokio::spawn(async move {
            let mut group = Vec::new();
            while points.recv_many(&mut group, MAX_GROUP).await > 0 {
                write_group(&store, std::mem::take(&mut group)).await;
            }
        });
        MetricWriter { queue }
    }

    /// Logs one point of a run; returns once it is committed (or failed).
    pub async fn log(&self, run_id: String, metric: Metric) -> Outcome {
        let (done, answer) = oneshot::channel();
        let point = Point {
            run_id,
            metric,
            done,
        };
        self.queue
            .send(point)
            .map_err(|_| StoreError::Backend("the metric writer has stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the metric writer has stopped".to_owned()))?
    }
}

/// Writes the points of each run in one transaction and answers every request.
async fn write_group(store: &DynTrackingStore, group: Vec<Point>) {
    let mut runs: Vec<(String, Vec<Point>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for point in group {
        match index.get(&point.run_id) {
            Some(&i) => runs[i].1.push(point),
            None => {
                index.insert(point.run_id.clone(), runs.len());
                runs.push((point.run_id.clone(), vec![point]));
            }
        }
    }
    for (run_id, points) in runs {
        let metrics: Vec<Metric> = points.iter().map(|p| p.metric.clone()).collect();
        let outcome = store.log_batch(&run_id, &metrics, &[], &[]).await;
        for point in points {
            // A client that went away no longer needs its answer.
            let _ = point.done.send(outcome.as_ref().map_err(copy).copied());
        }
    }
}

fn copy(err: &StoreError) -> StoreError {
    match err {
        StoreError::NotFound(m) => StoreError::NotFound(m.clone()),
        StoreError::Conflict(m) => StoreError::Conflict(m.clone()),
        StoreError::Invalid(m) => StoreError::Invalid(m.clone()),
        StoreError::Backend(m) => StoreError::Backend(m.clone()),
    }
}
