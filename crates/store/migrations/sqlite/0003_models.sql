-- capstan model schema: MLflow 3 logged models and the model registry.
-- The SQLite and PostgreSQL files are identical: no table here has an auto-numbered key.
--
-- Registry child rows name their model by name and carry no foreign key, so that a rename
-- updates them in the same transaction on both dialects.

CREATE TABLE logged_models (
    model_id          TEXT   PRIMARY KEY,
    experiment_id     BIGINT NOT NULL REFERENCES experiments (id),
    name              TEXT   NOT NULL,
    artifact_location TEXT   NOT NULL,
    creation_time     BIGINT NOT NULL,
    last_updated_time BIGINT NOT NULL,
    status            TEXT   NOT NULL,
    model_type        TEXT   NOT NULL,
    source_run_id     TEXT,
    lifecycle_stage   TEXT   NOT NULL DEFAULT 'active'
);

CREATE INDEX logged_models_experiment_name ON logged_models (experiment_id, name);
CREATE INDEX logged_models_experiment_created ON logged_models (experiment_id, creation_time);

CREATE TABLE logged_model_tags (
    model_id TEXT NOT NULL REFERENCES logged_models (model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE logged_model_params (
    model_id TEXT NOT NULL REFERENCES logged_models (model_id),
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,
    PRIMARY KEY (model_id, key)
);

CREATE TABLE registered_models (
    name              TEXT   PRIMARY KEY,
    creation_time     BIGINT NOT NULL,
    last_updated_time BIGINT NOT NULL,
    description       TEXT   NOT NULL
);

CREATE TABLE registered_model_tags (
    name  TEXT NOT NULL,
    key   TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (name, key)
);

CREATE TABLE model_versions (
    name              TEXT   NOT NULL,
    version           BIGINT NOT NULL,
    creation_time     BIGINT NOT NULL,
    last_updated_time BIGINT NOT NULL,
    description       TEXT   NOT NULL,
    user_id           TEXT   NOT NULL,
    current_stage     TEXT   NOT NULL,
    source            TEXT   NOT NULL,
    run_id            TEXT,
    model_id          TEXT,
    PRIMARY KEY (name, version)
);

CREATE INDEX model_versions_run_id ON model_versions (run_id);

CREATE TABLE model_version_tags (
    name    TEXT   NOT NULL,
    version BIGINT NOT NULL,
    key     TEXT   NOT NULL,
    value   TEXT   NOT NULL,
    PRIMARY KEY (name, version, key)
);

CREATE TABLE registered_model_aliases (
    name    TEXT   NOT NULL,
    alias   TEXT   NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (name, alias)
);

-- Models a run produced (MLflow `log-outputs`), at a step.
CREATE TABLE tracking_run_outputs (
    run_id   TEXT   NOT NULL REFERENCES tracking_runs (run_id),
    model_id TEXT   NOT NULL REFERENCES logged_models (model_id),
    step     BIGINT NOT NULL,
    PRIMARY KEY (run_id, model_id, step)
);
