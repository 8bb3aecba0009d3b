-- Pipeline runs are tracking runs (see src/mirror.rs). From this version on, the store writes the
-- tracking rows in the same transactions as the pipeline transitions; this gives the runs that
-- were recorded before a tracking run of their own, so that every pipeline run has one.
-- The SQLite and PostgreSQL files are identical.

INSERT INTO tracking_runs (run_id, experiment_id, name, user_id, status, start_time, end_time,
                           lifecycle_stage, artifact_uri)
SELECT r.id, r.experiment_id, p.name || '-' || substr(r.id, 1, 8), '',
       CASE r.status WHEN 'pending' THEN 'SCHEDULED' WHEN 'running' THEN 'RUNNING'
                     WHEN 'succeeded' THEN 'FINISHED' WHEN 'failed' THEN 'FAILED'
                     ELSE 'KILLED' END,
       r.created_at, r.ended_at, 'active',
       COALESCE(e.artifact_location, 'mlflow-artifacts:/' || CAST(e.id AS TEXT))
           || '/' || r.id || '/artifacts'
FROM runs r
JOIN pipelines p ON p.id = r.pipeline_id
JOIN experiments e ON e.id = r.experiment_id
WHERE NOT EXISTS (SELECT 1 FROM tracking_runs t WHERE t.run_id = r.id);

INSERT INTO tracking_tags (run_id, key, value)
SELECT r.id, 'capstan.run_id', r.id FROM runs r
WHERE NOT EXISTS (SELECT 1 FROM tracking_tags t WHERE t.run_id = r.id AND t.key = 'capstan.run_id');
