-- Metrics logged against an MLflow 3 logged model (`log-metric` / `log-batch` with a
-- `model_id`): the same point is also a point of the run. The SQLite and PostgreSQL files are
-- identical. A point without a dataset has empty dataset columns, so the key can hold them.

CREATE TABLE logged_model_metrics (
    model_id       TEXT             NOT NULL REFERENCES logged_models (model_id),
    run_id         TEXT             NOT NULL REFERENCES tracking_runs (run_id),
    key            TEXT             NOT NULL,
    step           BIGINT           NOT NULL,
    timestamp      BIGINT           NOT NULL,
    value          DOUBLE PRECISION NOT NULL,
    is_nan         BIGINT           NOT NULL,
    dataset_name   TEXT             NOT NULL,
    dataset_digest TEXT             NOT NULL,
    PRIMARY KEY (model_id, run_id, key, step, timestamp, value, is_nan, dataset_name, dataset_digest)
);
