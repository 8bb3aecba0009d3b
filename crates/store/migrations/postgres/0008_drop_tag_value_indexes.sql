-- Runs are searched experiment by experiment, and every filter or order key on a tag or a param
-- is a primary-key lookup, (run_id, key); nothing reads tags or params by (key, value). Those two
-- indexes only cost writes: a pipeline task writes about ten tags, each into another page of
-- `tracking_tags_key_value`, and without them a task's transitions write a third fewer pages.
DROP INDEX tracking_tags_key_value;
DROP INDEX tracking_params_key_value;
