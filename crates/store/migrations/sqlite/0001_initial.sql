-- capstan store schema, SQLite dialect. Keep it in step with ../postgres/0001_initial.sql: the
-- two differ only in how auto-numbered keys are declared, because the queries are shared.
--
-- Integers are 64-bit everywhere, times are epoch milliseconds, JSON is TEXT and booleans are
-- 0/1 integers. Every entity table has an auto-numbered `seq` so that "creation order" is the
-- same question, and the same SQL, on both backends.

-- MLflow-style experiments: a pipeline's runs live in the experiment named after the pipeline.
CREATE TABLE experiments (
    id                INTEGER PRIMARY KEY,
    name              TEXT    NOT NULL UNIQUE,
    artifact_location TEXT,
    lifecycle_stage   TEXT    NOT NULL DEFAULT 'active',
    created_at        BIGINT  NOT NULL,
    updated_at        BIGINT  NOT NULL
);

INSERT INTO experiments (id, name, artifact_location, lifecycle_stage, created_at, updated_at)
VALUES (0, 'Default', NULL, 'active',
        CAST(strftime('%s', 'now') AS INTEGER) * 1000,
        CAST(strftime('%s', 'now') AS INTEGER) * 1000);

-- Pipeline versions: one row per distinct (name, spec digest).
CREATE TABLE pipelines (
    id         TEXT   PRIMARY KEY,
    name       TEXT   NOT NULL,
    digest     TEXT   NOT NULL,
    spec       TEXT   NOT NULL,
    source     TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (name, digest)
);

-- Lineage contexts (MLMD): one per pipeline name and one per run.
CREATE TABLE contexts (
    id         TEXT   PRIMARY KEY,
    kind       TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (kind, name)
);

CREATE TABLE runs (
    seq                 INTEGER PRIMARY KEY,
    id                  TEXT    NOT NULL UNIQUE,
    pipeline_id         TEXT    NOT NULL REFERENCES pipelines (id),
    experiment_id       BIGINT  NOT NULL REFERENCES experiments (id),
    status              TEXT    NOT NULL,
    params              TEXT    NOT NULL,
    options             TEXT    NOT NULL,
    source              TEXT,
    created_at          BIGINT  NOT NULL,
    started_at          BIGINT,
    ended_at            BIGINT,
    message             TEXT,
    cancel_requested    BIGINT  NOT NULL DEFAULT 0,
    owner               TEXT,
    pipeline_context_id TEXT    NOT NULL REFERENCES contexts (id),
    run_context_id      TEXT    NOT NULL REFERENCES contexts (id),
    -- The last finish_seq handed out in this run. Incrementing it with an UPDATE serialises
    -- concurrent task_finished calls on one run (a row lock on PostgreSQL).
    last_finish_seq     BIGINT  NOT NULL DEFAULT 0
);

CREATE INDEX runs_created_at ON runs (created_at);
CREATE INDEX runs_pipeline_id ON runs (pipeline_id);

CREATE TABLE tasks (
    seq               INTEGER PRIMARY KEY,
    id                TEXT    NOT NULL UNIQUE,
    run_id            TEXT    NOT NULL REFERENCES runs (id),
    name              TEXT    NOT NULL,
    step              TEXT    NOT NULL,
    iteration         BIGINT,
    status            TEXT    NOT NULL,
    attempts          BIGINT  NOT NULL DEFAULT 0,
    exit_code         BIGINT,
    executor          TEXT,
    resources         TEXT    NOT NULL,
    cache_key         TEXT,
    cached_from       TEXT,
    log_uri           TEXT,
    message           TEXT,
    input_parameters  TEXT    NOT NULL,
    output_parameters TEXT    NOT NULL,
    created_at        BIGINT  NOT NULL,
    started_at        BIGINT,
    ended_at          BIGINT,
    finish_seq        BIGINT,
    UNIQUE (run_id, name)
);

CREATE INDEX tasks_cache_key ON tasks (cache_key);

CREATE TABLE artifacts (
    seq              INTEGER PRIMARY KEY,
    id               TEXT    NOT NULL UNIQUE,
    name             TEXT    NOT NULL,
    uri              TEXT    NOT NULL,
    digest           TEXT    NOT NULL,
    size             BIGINT  NOT NULL,
    type_name        TEXT    NOT NULL,
    is_dir           BIGINT  NOT NULL,
    metadata         TEXT    NOT NULL,
    created_at       BIGINT  NOT NULL,
    run_id           TEXT    NOT NULL REFERENCES runs (id),
    producer_task_id TEXT    NOT NULL REFERENCES tasks (id)
);

CREATE INDEX artifacts_run_id ON artifacts (run_id);
CREATE INDEX artifacts_digest ON artifacts (digest);

-- A task consumed (input) or produced (output) an artifact under a name. One artifact per
-- (task, kind, name): a retried attempt replaces rather than duplicates.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY,
    task_id     TEXT    NOT NULL REFERENCES tasks (id),
    artifact_id TEXT    NOT NULL REFERENCES artifacts (id),
    kind        TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    UNIQUE (task_id, kind, name)
);

CREATE INDEX events_artifact_id ON events (artifact_id);

-- Context membership (MLMD): artifacts are attributed to contexts, tasks associated with them.
CREATE TABLE attributions (
    context_id  TEXT NOT NULL REFERENCES contexts (id),
    artifact_id TEXT NOT NULL REFERENCES artifacts (id),
    PRIMARY KEY (context_id, artifact_id)
);

CREATE INDEX attributions_artifact_id ON attributions (artifact_id);

CREATE TABLE associations (
    context_id TEXT NOT NULL REFERENCES contexts (id),
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (context_id, task_id)
);

CREATE INDEX associations_task_id ON associations (task_id);
