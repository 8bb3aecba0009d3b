-- Logged models a run took as inputs (MLflow 3 `log-inputs` with `models`): for example the
-- model an evaluation run logged metrics against. The SQLite and PostgreSQL files are
-- identical. Logging the same model again keeps its first record.

CREATE TABLE tracking_run_model_inputs (
    run_id     TEXT   NOT NULL REFERENCES tracking_runs (run_id),
    model_id   TEXT   NOT NULL REFERENCES logged_models (model_id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, model_id)
);
