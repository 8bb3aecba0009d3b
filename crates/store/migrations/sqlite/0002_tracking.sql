-- capstan tracking schema (MLflow-compatible runs, params, tags, metrics and dataset inputs).
-- The SQLite and PostgreSQL files are identical: no table here has an auto-numbered key.
--
-- A tracking run is keyed by the same 32-hex id as a pipeline run, and lives in a row of the
-- shared `experiments` table, so a pipeline run can carry a tracking row of the same id.
-- Metric values are stored with a separate `is_nan` flag (the value is 0 then): SQLite turns a
-- bound NaN into NULL.

CREATE TABLE experiment_tags (
    experiment_id BIGINT NOT NULL REFERENCES experiments (id),
    key           TEXT   NOT NULL,
    value         TEXT   NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

CREATE INDEX experiment_tags_key_value ON experiment_tags (key, value);
CREATE INDEX experiments_created_at ON experiments (created_at);

CREATE TABLE tracking_runs (
    run_id          TEXT   PRIMARY KEY,
    experiment_id   BIGINT NOT NULL REFERENCES experiments (id),
    name            TEXT   NOT NULL,
    user_id         TEXT   NOT NULL,
    status          TEXT   NOT NULL,
    start_time      BIGINT NOT NULL,
    end_time        BIGINT,
    lifecycle_stage TEXT   NOT NULL DEFAULT 'active',
    artifact_uri    TEXT   NOT NULL,
    deleted_time    BIGINT
);

CREATE INDEX tracking_runs_experiment_start ON tracking_runs (experiment_id, start_time);
CREATE INDEX tracking_runs_experiment_name ON tracking_runs (experiment_id, name);

CREATE TABLE tracking_params (
    run_id TEXT NOT NULL REFERENCES tracking_runs (run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE INDEX tracking_params_key_value ON tracking_params (key, value);

CREATE TABLE tracking_tags (
    run_id TEXT NOT NULL REFERENCES tracking_runs (run_id),
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE INDEX tracking_tags_key_value ON tracking_tags (key, value);

-- Every logged point. The whole point is the key, so logging the same batch twice is a no-op.
CREATE TABLE tracking_metrics (
    run_id    TEXT             NOT NULL REFERENCES tracking_runs (run_id),
    key       TEXT             NOT NULL,
    step      BIGINT           NOT NULL,
    timestamp BIGINT           NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    is_nan    BIGINT           NOT NULL,
    PRIMARY KEY (run_id, key, step, timestamp, value, is_nan)
);

-- The latest point of each metric of a run (highest step, then timestamp, then value): what
-- run search filters and orders by, and what a run's `data.metrics` shows.
CREATE TABLE tracking_latest_metrics (
    run_id    TEXT             NOT NULL REFERENCES tracking_runs (run_id),
    key       TEXT             NOT NULL,
    step      BIGINT           NOT NULL,
    timestamp BIGINT           NOT NULL,
    value     DOUBLE PRECISION NOT NULL,
    is_nan    BIGINT           NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE INDEX tracking_latest_metrics_key_value ON tracking_latest_metrics (key, value);

-- Datasets a run consumed (MLflow `log-inputs`), with the input's tags as a JSON list.
CREATE TABLE tracking_inputs (
    run_id      TEXT   NOT NULL REFERENCES tracking_runs (run_id),
    name        TEXT   NOT NULL,
    digest      TEXT   NOT NULL,
    source_type TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    schema      TEXT,
    profile     TEXT,
    tags        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (run_id, name, digest)
);
