-- Named queries of runsync's store. Each block starts with "-- name --" and a description line;
-- worker/sqlfiles.py loads them into a dict once, and code refers to them by name.

-- create_migrations_table --
-- The schema and the ledger of applied migrations; harmless when they exist.
CREATE SCHEMA IF NOT EXISTS runsync;
CREATE TABLE IF NOT EXISTS runsync.migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- lock_migrations --
-- Serialises migrators across replicas until the transaction ends.
SELECT pg_advisory_xact_lock(hashtextextended('runsync:migrations', 0));

-- applied_migrations --
-- The versions already applied.
SELECT version FROM runsync.migrations ORDER BY version;

-- record_migration --
-- Notes that one migration has been applied.
INSERT INTO runsync.migrations (version, name) VALUES ($1, $2);

-- try_lock_source --
-- Takes the session lock of one stream of a source, or says another session holds it.
SELECT pg_try_advisory_lock(hashtextextended('runsync:source:' || $1 || ':' || $2, 0));

-- unlock_source --
-- Gives back the session lock taken by try_lock_source.
SELECT pg_advisory_unlock(hashtextextended('runsync:source:' || $1 || ':' || $2, 0));

-- load_checkpoint --
-- Where a stream of a source stands.
SELECT watermark, cursor FROM runsync.checkpoints WHERE source = $1 AND stream = $2;

-- save_checkpoint --
-- Moves a stream's checkpoint; runs in the same transaction as the page it follows.
INSERT INTO runsync.checkpoints AS c (source, stream, watermark, cursor)
VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (source, stream) DO UPDATE
SET watermark = EXCLUDED.watermark, cursor = EXCLUDED.cursor, updated_at = now();

-- delete_window_checkpoints --
-- Forgets the checkpoints of a backfill's windows (streams named stream#N).
DELETE FROM runsync.checkpoints WHERE source = $1 AND stream LIKE $2 || '#%';

-- create_incoming_runs --
-- A session's staging table for one batch of runs; emptied at every commit. (The usage figure
-- is staged as float8: asyncpg encodes a Python float as numeric a hundred times slower.)
CREATE TEMP TABLE IF NOT EXISTS incoming_runs (
    run_id text, status text, is_terminal boolean, started_at timestamptz, finished_at timestamptz,
    actor_id text, task_id text, build_id text, build_number text, origin text,
    usage_total_usd float8, default_key_value_store_id text, default_dataset_id text,
    default_request_queue_id text, project text, triggered_by text, result text,
    raw text, observed_at timestamptz, recheck_at timestamptz
) ON COMMIT DELETE ROWS;

-- merge_incoming_runs --
-- Stores the staged runs: a later observation wins, and a run that did not change is not written.
INSERT INTO runsync.runs AS r (
    source, upstream, run_id, status, is_terminal, started_at, finished_at,
    actor_id, task_id, build_id, build_number, origin, usage_total_usd,
    default_key_value_store_id, default_dataset_id, default_request_queue_id,
    project, triggered_by, result,
    raw, observed_at, recheck_at)
SELECT $1, $2, i.run_id, i.status, i.is_terminal, i.started_at, i.finished_at,
       i.actor_id, i.task_id, i.build_id, i.build_number, i.origin,
       i.usage_total_usd::text::numeric,  -- float8 as text is its shortest exact form
       i.default_key_value_store_id, i.default_dataset_id, i.default_request_queue_id,
       i.project, i.triggered_by, i.result::jsonb,
       i.raw::jsonb, i.observed_at, i.recheck_at
FROM incoming_runs i
-- Rows are locked in one order by every writer, so a backfill beside a pass cannot deadlock.
ORDER BY i.run_id
ON CONFLICT (source, run_id) DO UPDATE SET
    upstream = EXCLUDED.upstream,
    status = EXCLUDED.status,
    is_terminal = EXCLUDED.is_terminal,
    started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at,
    actor_id = EXCLUDED.actor_id,
    task_id = EXCLUDED.task_id,
    build_id = EXCLUDED.build_id,
    build_number = EXCLUDED.build_number,
    origin = EXCLUDED.origin,
    usage_total_usd = EXCLUDED.usage_total_usd,
    default_key_value_store_id = EXCLUDED.default_key_value_store_id,
    default_dataset_id = EXCLUDED.default_dataset_id,
    default_request_queue_id = EXCLUDED.default_request_queue_id,
    project = EXCLUDED.project,
    triggered_by = EXCLUDED.triggered_by,
    result = EXCLUDED.result,
    raw = r.raw || EXCLUDED.raw,
    observed_at = EXCLUDED.observed_at,
    recheck_at = EXCLUDED.recheck_at,
    gone_at = NULL,
    updated_at = now()
WHERE r.observed_at <= EXCLUDED.observed_at
  AND (r.raw || EXCLUDED.raw <> r.raw
       OR r.recheck_at IS DISTINCT FROM EXCLUDED.recheck_at
       OR r.gone_at IS NOT NULL)
RETURNING (xmax = 0) AS inserted;

-- quarantine_items --
-- Keeps the items that could not be parsed, once each, with the reason.
INSERT INTO runsync.quarantine AS q (source, upstream, reason, raw, raw_sha256)
SELECT $1, $2, i.reason, i.raw, i.raw_sha256
FROM unnest($3::text[], $4::text[], $5::text[]) AS i(reason, raw, raw_sha256)
ORDER BY i.raw_sha256
ON CONFLICT (source, raw_sha256) DO UPDATE
SET reason = EXCLUDED.reason, last_seen_at = now(), seen_count = q.seen_count + 1;

-- due_rechecks --
-- Runs that finished just before they were read, due for a second look at their final figures.
SELECT run_id
FROM runsync.runs
WHERE source = $1
  AND project IS NOT DISTINCT FROM $2
  AND is_terminal
  AND recheck_at <= now()
  AND gone_at IS NULL
  AND observed_at < $3;

-- open_snapshot --
-- Every open run of one project of a source, as it stood before this pass read anything.
SELECT run_id, status, started_at
FROM runsync.runs
WHERE source = $1
  AND project IS NOT DISTINCT FROM $2
  AND NOT is_terminal
  AND gone_at IS NULL
  AND observed_at < $3;

-- mark_gone --
-- Notes runs the upstream no longer has, so they are not read again.
UPDATE runsync.runs SET gone_at = now(), updated_at = now()
WHERE source = $1 AND run_id = ANY($2::text[]) AND gone_at IS NULL;

-- last_pass_started --
-- When the newest pass of a stream started, by any replica.
SELECT started_at FROM runsync.passes
WHERE source = $1 AND stream = $2
ORDER BY id DESC LIMIT 1;

-- abandon_passes --
-- Closes the passes of a stream still marked running: their processes died, since the caller
-- holds the stream's lock.
UPDATE runsync.passes SET outcome = 'abandoned', finished_at = now()
WHERE source = $1 AND stream = $2 AND outcome = 'running';

-- start_pass --
-- Opens the record of one pass.
INSERT INTO runsync.passes (source, stream) VALUES ($1, $2) RETURNING id;

-- count_page --
-- Adds one page's figures to its pass.
UPDATE runsync.passes
SET pages = pages + $2, items = items + $3, written = written + $4,
    quarantined = quarantined + $5, refreshed = refreshed + $6
WHERE id = $1;

-- finish_pass --
-- Closes the record of one pass.
UPDATE runsync.passes SET finished_at = now(), outcome = $2, error = $3 WHERE id = $1;

-- source_status --
-- Per source: checkpoint (the laggiest of its projects), counts, the last success and failure.
SELECT s.source,
       c.watermark,
       c.walks_in_flight,
       c.backfills_in_flight,
       coalesce(counts.runs, 0) AS runs,
       coalesce(counts.open_runs, 0) AS open_runs,
       counts.newest_started_at,
       (SELECT max(p.finished_at) FROM runsync.passes p
         WHERE p.source = s.source AND p.outcome = 'succeeded') AS last_success_at,
       failure.finished_at AS last_error_at,
       failure.error AS last_error
FROM unnest($1::text[]) AS s(source)
LEFT JOIN LATERAL (
    SELECT min(k.watermark) FILTER (WHERE k.stream LIKE 'incremental%') AS watermark,
           count(*) FILTER (WHERE k.stream LIKE 'incremental%' AND k.cursor ? 'top')
               AS walks_in_flight,
           count(*) FILTER (WHERE k.stream LIKE 'backfill%' AND k.stream NOT LIKE '%#%'
                            AND NOT coalesce((k.cursor ->> 'done')::boolean, false))
               AS backfills_in_flight  -- a backfill, not each of its windows
    FROM runsync.checkpoints k WHERE k.source = s.source) AS c ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS runs,
           count(*) FILTER (WHERE NOT r.is_terminal AND r.gone_at IS NULL) AS open_runs,
           max(r.started_at) AS newest_started_at
    FROM runsync.runs r WHERE r.source = s.source) AS counts ON true
LEFT JOIN LATERAL (
    SELECT p.finished_at, p.error FROM runsync.passes p
    WHERE p.source = s.source AND p.outcome = 'failed'
    ORDER BY p.id DESC LIMIT 1) AS failure ON true
ORDER BY s.source;

-- known_sources --
-- Every source that has rows or a checkpoint, configured or not.
SELECT source FROM runsync.checkpoints
UNION
SELECT DISTINCT source FROM runsync.passes;
