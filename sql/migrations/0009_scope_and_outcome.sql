-- The analytics views name no upstream: each run says, as its upstream's reader decides, what it
-- belongs to (scope: an Apify actor, a RakerOne project, a GitHub workflow) and whether it
-- succeeded (null while it is open). The rows stored before are given the values the views
-- computed for them.

ALTER TABLE runsync.runs
    ADD COLUMN scope     text,
    ADD COLUMN succeeded boolean;

UPDATE runsync.runs
SET scope = coalesce(actor_id, project),
    succeeded = CASE WHEN NOT is_terminal THEN NULL
                     WHEN upstream = 'apify' THEN status = 'SUCCEEDED'
                     WHEN upstream = 'rakerone' THEN lower(status) = 'completed'
                END;

CREATE OR REPLACE VIEW runsync.run_facts AS
SELECT r.source,
       r.upstream,
       r.run_id,
       (r.started_at AT TIME ZONE 'UTC')::date AS day,
       r.scope,
       r.actor_id,
       r.task_id,
       r.project,
       r.status,
       r.is_terminal,
       r.succeeded,
       r.started_at,
       r.finished_at,
       extract(epoch FROM r.finished_at - r.started_at) AS duration_seconds,
       r.usage_total_usd,
       r.origin,
       r.triggered_by,
       r.gone_at,
       r.observed_at
FROM runsync.runs r
WHERE r.started_at IS NOT NULL;
