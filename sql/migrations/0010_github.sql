-- GitHub Actions workflow runs (worker/sources/github): their typed columns, and the view that
-- names them as analysts do. A run is keyed by its id, which a re-run keeps (run_attempt rises).

ALTER TABLE runsync.runs
    ADD COLUMN github_workflow    text,         -- the workflow's name
    ADD COLUMN github_workflow_id bigint,
    ADD COLUMN github_event       text,         -- what triggered it: push, pull_request, schedule, ...
    ADD COLUMN github_branch      text,         -- head_branch
    ADD COLUMN github_head_sha    text,
    ADD COLUMN github_actor       text,         -- the login of actor
    ADD COLUMN github_conclusion  text,         -- null until completed; an open set
    ADD COLUMN github_attempt     integer,      -- run_attempt: 1, then one more per re-run
    ADD COLUMN github_run_number  bigint,
    ADD COLUMN github_created_at  timestamptz,  -- the walk's position; a re-run keeps it
    ADD COLUMN github_updated_at  timestamptz;

-- One row per stored GitHub workflow run. started_at is the start of its latest attempt (its
-- creation before it started); finished_at its last update once completed.
CREATE VIEW runsync.github_workflow_runs AS
SELECT r.source,
       r.run_id,
       r.github_workflow    AS workflow,
       r.github_workflow_id AS workflow_id,
       r.github_event       AS event,
       r.github_branch      AS branch,
       r.github_head_sha    AS head_sha,
       r.github_actor       AS actor,
       r.status,
       r.github_conclusion  AS conclusion,
       r.github_attempt     AS attempt,
       r.github_run_number  AS run_number,
       r.github_created_at  AS created_at,
       r.started_at,
       r.github_updated_at  AS updated_at,
       r.finished_at,
       r.is_terminal,
       r.succeeded,
       r.gone_at,
       r.observed_at,
       r.raw
FROM runsync.runs r
WHERE r.upstream = 'github';
