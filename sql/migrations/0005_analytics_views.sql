-- What people read: analytics views for BI tools over runsync.runs.
--
-- In the views, a day is the UTC calendar day of a run's start, whatever the session's TimeZone.
-- A scope is what a run belongs to upstream: its actor (actor_id) for Apify, its project for
-- RakerOne. Runs deleted upstream (gone_at) stay in: they happened.

-- Day filters on the views (WHERE day >= ...) use this index instead of reading every run.
CREATE INDEX runs_started_day_idx ON runsync.runs (((started_at AT TIME ZONE 'UTC')::date));

-- One row per stored run, with the definitions the other views share.
CREATE VIEW runsync.run_facts AS
SELECT r.source,
       r.upstream,
       r.run_id,
       (r.started_at AT TIME ZONE 'UTC')::date AS day,
       coalesce(r.actor_id, r.project) AS scope,
       r.actor_id,
       r.task_id,
       r.project,
       r.status,
       r.is_terminal,
       -- Statuses as each upstream spells them; RakerOne's are matched without case, as is_terminal
       -- is. NULL while the run is open.
       CASE WHEN NOT r.is_terminal THEN NULL
            WHEN r.upstream = 'apify' THEN r.status = 'SUCCEEDED'
            WHEN r.upstream = 'rakerone' THEN lower(r.status) = 'completed'
       END AS succeeded,
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

-- Runs started per day, by source, scope and status (the status as the upstream spells it).
CREATE VIEW runsync.runs_per_day AS
SELECT day, source, upstream, scope, status,
       count(*) AS runs,
       count(*) FILTER (WHERE gone_at IS NOT NULL) AS gone_runs
FROM runsync.run_facts
GROUP BY day, source, upstream, scope, status;

-- Success among the runs that ended, per day of their start, by source and scope: a share from 0
-- to 1, to 4 decimals. A day whose runs are all still open has terminal_runs 0 and success_rate
-- NULL. Across days or scopes, add the counts up; an average of rates weighs days wrongly.
CREATE VIEW runsync.success_rate_per_day AS
SELECT day, source, upstream, scope,
       count(*) FILTER (WHERE is_terminal) AS terminal_runs,
       count(*) FILTER (WHERE succeeded) AS succeeded_runs,
       count(*) FILTER (WHERE NOT is_terminal) AS open_runs,
       round(count(*) FILTER (WHERE succeeded)::numeric
             / nullif(count(*) FILTER (WHERE is_terminal), 0), 4) AS success_rate
FROM runsync.run_facts
GROUP BY day, source, upstream, scope;

-- Durations of finished runs (finished_at - started_at, seconds) per day of their start, by source
-- and scope. Percentiles interpolate between neighbouring runs (percentile_cont), rounded to ms.
CREATE VIEW runsync.duration_per_day AS
SELECT day, source, upstream, scope,
       count(*) AS finished_runs,
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_seconds)::numeric, 3) AS p50_seconds,
       round(percentile_cont(0.9) WITHIN GROUP (ORDER BY duration_seconds)::numeric, 3) AS p90_seconds,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY duration_seconds)::numeric, 3) AS p99_seconds,
       max(duration_seconds) AS max_seconds
FROM runsync.run_facts
WHERE finished_at IS NOT NULL
GROUP BY day, source, upstream, scope;

-- What Apify charged per actor per day of the runs' start, in USD. A run stored by several sources
-- (the account's, an actor's, a task's) counts once, as last observed. Open runs count with their
-- usage so far.
CREATE VIEW runsync.cost_per_actor_per_day AS
SELECT day, actor_id,
       count(*) AS runs,
       count(*) FILTER (WHERE NOT is_terminal) AS open_runs,
       coalesce(sum(usage_total_usd), 0) AS usage_total_usd
FROM (
    SELECT DISTINCT ON (day, actor_id, run_id) day, actor_id, run_id, is_terminal, usage_total_usd
    FROM runsync.run_facts
    WHERE upstream = 'apify'
    ORDER BY day, actor_id, run_id, observed_at DESC
) AS runs
GROUP BY day, actor_id;
