-- The whole current schema `runsync`, in one file: what applying every migration in
-- sql/migrations/ in order builds, written to be read (by table, with what each column holds).
--
-- This file is a reference, not what runsync runs: `runsync migrate` applies the migrations and
-- records each in runsync.migrations. A database built from this file has an empty ledger, so
-- do not point runsync at one (its migrate would apply 0001 again and fail).
--
-- tests/test_schema.py builds one database from the migrations and another from this file and
-- compares their catalogs (columns, constraints, indexes, views, functions, triggers, sequences,
-- comments): a migration that changes the schema must change this file to match.
--
-- Columns are listed in their real order, the order of `SELECT *`: a column that a later
-- migration added comes last, under a note of the migration that added it. Function bodies are
-- kept exactly as their migration wrote them (Postgres stores the text between the $$).

CREATE SCHEMA runsync;


-- ------------------------------------------------------------------------------------------------
-- runs: one row per run of a source, as last observed upstream.
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.runs (
    source                     text        NOT NULL,  -- the configured source's name
    run_id                     text        NOT NULL,  -- the upstream's id of the run
    upstream                   text        NOT NULL,  -- the kind of upstream: 'apify', 'rakerone', ...
    status                     text        NOT NULL,  -- as the upstream spells it
    is_terminal                boolean     NOT NULL,  -- the status is final (it may still come back to life)
    started_at                 timestamptz,           -- null while a run has not started
    finished_at                timestamptz,
    -- Apify's documented list-item fields
    actor_id                   text,
    task_id                    text,
    build_id                   text,
    build_number               text,
    origin                     text,
    usage_total_usd            numeric,
    default_key_value_store_id text,
    default_dataset_id         text,
    default_request_queue_id   text,
    -- the upstream's object as received (list and single-run views merged key by key)
    raw                        jsonb       NOT NULL,
    -- when the state in raw was read upstream; an earlier observation never replaces a later one
    observed_at                timestamptz NOT NULL,
    -- a just-finished run is read once more after this instant (its usage figures can be preliminary)
    recheck_at                 timestamptz,
    -- the upstream answered "not found" for this run (deleted after its retention period)
    gone_at                    timestamptz,
    first_seen_at              timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now(),
    -- added by 0002_rakerone: RakerOne's fields
    project                    text,                  -- RakerOne's project; null for Apify
    triggered_by               text,                  -- RakerOne's triggeredBy
    result                     jsonb,                 -- RakerOne's result object
    -- added by 0007_runs_as_observed
    -- RakerOne run ids are unique within a project only: the key is (source, part, run_id)
    part                       text        GENERATED ALWAYS AS (coalesce(project, '')) STORED,
    -- the newest observation was a list item, which may omit fields (see merge_view below)
    partial                    boolean     NOT NULL DEFAULT false,
    -- what had to be escaped to store raw (a NUL, a lone surrogate, a non-finite number)
    notes                      text,
    -- added by 0009_scope_and_outcome, as the upstream's reader says:
    scope                      text,                  -- what the run belongs to (an actor, a project, a workflow)
    succeeded                  boolean,               -- null while the run is open
    -- added by 0010_github: GitHub Actions workflow runs (read them in github_workflow_runs)
    github_workflow            text,                  -- the workflow's name
    github_workflow_id         bigint,
    github_event               text,                  -- what triggered it: push, pull_request, ...
    github_branch              text,                  -- head_branch
    github_head_sha            text,
    github_actor               text,                  -- the login of actor
    github_conclusion          text,                  -- null until completed; an open set
    github_attempt             integer,               -- run_attempt: 1, then one more per re-run
    github_run_number          bigint,
    github_created_at          timestamptz,           -- a re-run keeps it
    github_updated_at          timestamptz,
    PRIMARY KEY (source, part, run_id)
);

-- The open runs of one project of a source are re-read by every pass; this keeps finding them cheap.
CREATE INDEX runs_open_idx ON runsync.runs (source, project, run_id)
    WHERE (NOT is_terminal OR recheck_at IS NOT NULL) AND gone_at IS NULL;
CREATE INDEX runs_started_idx ON runsync.runs (source, started_at);
-- Day filters on the analytics views (WHERE day >= ...) use this instead of reading every run.
CREATE INDEX runs_started_day_idx ON runsync.runs (((started_at AT TIME ZONE 'UTC')::date));

-- A partial view merged over what is stored: its keys replace the stored ones, objects merge key
-- by key, and a null or missing key keeps the stored value (a list item that omits a field says
-- nothing about it).
CREATE FUNCTION runsync.merge_view(stored jsonb, seen jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    merged jsonb := stored;
    k text;
    v jsonb;
BEGIN
    FOR k, v IN SELECT key, value FROM jsonb_each(seen) LOOP
        CONTINUE WHEN jsonb_typeof(v) = 'null';
        IF jsonb_typeof(v) = 'object' AND jsonb_typeof(merged -> k) = 'object' THEN
            v := runsync.merge_view(merged -> k, v);
        END IF;
        merged := merged || jsonb_build_object(k, v);
    END LOOP;
    RETURN merged;
END;
$$;


-- ------------------------------------------------------------------------------------------------
-- run_status_history: every change of a run's status. A run's first status is not a change: it
-- is in runs (and is the previous_status of the run's first change).
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.run_status_history (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          text        NOT NULL,
    run_id          text        NOT NULL,
    previous_status text,
    status          text        NOT NULL,
    observed_at     timestamptz NOT NULL,  -- the run's observed_at when the change was stored
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- added by 0007_runs_as_observed
    project         text                   -- the run's project (RakerOne); null for Apify
);
CREATE INDEX run_status_history_run_idx ON runsync.run_status_history (source, run_id, id);

-- Filled by a trigger on runs, so a change is recorded whoever writes it. Statement level with
-- transition tables: one set-based insert per write, not one call per row.
CREATE FUNCTION runsync.record_status_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runsync.run_status_history
        (source, project, run_id, previous_status, status, observed_at)
    SELECT changed.source, changed.project, changed.run_id, before.status, changed.status,
           changed.observed_at
    FROM changed JOIN before USING (source, part, run_id)
    WHERE changed.status IS DISTINCT FROM before.status
    ORDER BY changed.run_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_status_changes
    AFTER UPDATE ON runsync.runs
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION runsync.record_status_changes();


-- ------------------------------------------------------------------------------------------------
-- checkpoints: where each stream of a source stands.
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.checkpoints (
    source     text        NOT NULL,
    stream     text        NOT NULL,   -- its name: kind, '/<partition>', '#<window>' (model.Stream)
    watermark  timestamptz,            -- every run started before this is stored
    cursor     jsonb,                  -- where the next request starts; for newest-first walks, the walk in flight
    updated_at timestamptz NOT NULL DEFAULT now(),
    -- added by 0011_stream_parts: the name's parts, which queries select by (never parsing it)
    kind       text        NOT NULL,   -- incremental, backfill, reconcile
    part       text        NOT NULL DEFAULT '',  -- the partition (a RakerOne project); '' if none
    window_index integer,              -- a backfill window's index; null for the stream itself
    PRIMARY KEY (source, stream)
);


-- ------------------------------------------------------------------------------------------------
-- passes: every pass of every stream, with what it did.
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.passes (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text        NOT NULL,
    stream      text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- 'abandoned': its process died, and the next pass of its stream said so
    outcome     text        NOT NULL DEFAULT 'running',
    pages       integer     NOT NULL DEFAULT 0,
    items       integer     NOT NULL DEFAULT 0,   -- items read from list pages
    written     integer     NOT NULL DEFAULT 0,   -- rows inserted or changed
    quarantined integer     NOT NULL DEFAULT 0,
    refreshed   integer     NOT NULL DEFAULT 0,   -- open runs read again one by one
    error       text,
    CONSTRAINT passes_outcome_check
        CHECK (outcome IN ('running', 'succeeded', 'failed', 'interrupted', 'abandoned'))
);
CREATE INDEX passes_source_idx ON runsync.passes (source, id);
-- `runsync status`: the newest success and failure of each stream of each source.
CREATE INDEX passes_stream_idx ON runsync.passes (source, stream, outcome, id);


-- ------------------------------------------------------------------------------------------------
-- quarantine: items that could not be read as runs, once per distinct text.
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.quarantine (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        text        NOT NULL,
    upstream      text        NOT NULL,
    reason        text        NOT NULL,
    raw           text        NOT NULL,   -- the item as received
    raw_sha256    text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    seen_count    integer     NOT NULL DEFAULT 1,
    -- added by 0007_runs_as_observed: the run an item names, when its id could be read; the run
    -- is read again, and once it is stored its quarantined items are let go
    run_id        text,
    project       text,
    UNIQUE (source, raw_sha256)
);
CREATE INDEX quarantine_run_idx ON runsync.quarantine (source, run_id) WHERE run_id IS NOT NULL;


-- ------------------------------------------------------------------------------------------------
-- leases: who walks each stream now. Taken before a pass, renewed while it goes on, deleted at its
-- end; a lease past expires_at is free to take (its process died). Each page write reads its
-- lease FOR KEY SHARE, so a process whose lease was taken over writes nothing more.
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.leases (
    source     text        NOT NULL,
    stream     text        NOT NULL,
    token      uuid        NOT NULL UNIQUE,  -- one per taking: a pass's writes are fenced by it
    holder     text        NOT NULL,  -- the process: host:pid
    taken_at   timestamptz NOT NULL DEFAULT now(),
    renewed_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (source, stream)
);


-- ------------------------------------------------------------------------------------------------
-- processes: the processes at work on this database, each renewed with its leases, with their
-- budgets for `runsync status`. A row not renewed for a while is a process that is gone.
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.processes (
    holder       text        PRIMARY KEY,  -- host:pid
    started_at   timestamptz NOT NULL DEFAULT now(),
    renewed_at   timestamptz NOT NULL DEFAULT now(),
    figures      jsonb       NOT NULL DEFAULT '{}'
);


-- ------------------------------------------------------------------------------------------------
-- migrations: the ledger of applied migrations. Not made by a migration: `runsync migrate` creates
-- it first (sql/queries.sql, create_migrations_table), then records each migration it applies.
-- ------------------------------------------------------------------------------------------------

CREATE TABLE runsync.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);


-- ------------------------------------------------------------------------------------------------
-- Analytics views, what BI tools read. A day is the UTC calendar day of a run's start, whatever
-- the session's TimeZone. A scope is what a run belongs to upstream, as its upstream's reader says
-- (runs.scope). Runs deleted upstream (gone_at) stay in: they happened.
-- ------------------------------------------------------------------------------------------------

-- One row per stored run that has started, with the definitions the other views share.
CREATE VIEW runsync.run_facts AS
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
