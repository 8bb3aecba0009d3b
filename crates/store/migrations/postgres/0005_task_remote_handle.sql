-- The name of the remote job (a Ray submission id, a Kubernetes Job) that runs a task's current
-- attempt, recorded before the job is submitted so that resume can re-attach to it.
ALTER TABLE tasks ADD COLUMN remote_handle TEXT;
