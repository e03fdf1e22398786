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

-- take_lease --
-- Takes a stream's lease ($1 source, $2 stream) as token $3 for holder $4, for $5; nothing when
-- another holds it and it has not expired. $6: this process's own earlier token of the stream,
-- which it could not give back (the database was away): taken again at once.
INSERT INTO runsync.leases AS l (source, stream, token, holder, expires_at)
VALUES ($1, $2, $3, $4, now() + $5::interval)
ON CONFLICT (source, stream) DO UPDATE
    SET token = excluded.token, holder = excluded.holder, taken_at = now(), renewed_at = now(),
        expires_at = excluded.expires_at
    WHERE l.expires_at < now() OR l.token = $6::uuid
RETURNING true;

-- renew_leases --
-- Renews the leases of tokens $1 for $2; returns those still held.
UPDATE runsync.leases SET renewed_at = now(), expires_at = now() + $2::interval
WHERE token = ANY($1::uuid[])
RETURNING token;

-- hold_lease --
-- In a write's transaction: whether lease $1 is still held. FOR KEY SHARE: a taker's update of the
-- token waits until the write commits, while the windows of one backfill write side by side.
SELECT true FROM runsync.leases WHERE token = $1 FOR KEY SHARE;

-- release_lease --
-- Gives a lease back.
DELETE FROM runsync.leases WHERE token = $1;

-- renew_process --
-- The process's row: renewed, with its budgets' figures ($2).
INSERT INTO runsync.processes AS p (holder, figures) VALUES ($1, $2)
ON CONFLICT (holder) DO UPDATE SET renewed_at = now(), figures = excluded.figures;

-- forget_process --
-- A process that stops removes its row, and those of processes gone for a day.
DELETE FROM runsync.processes WHERE holder = $1 OR renewed_at < now() - interval '1 day';

-- processes --
-- The processes renewed within $1, with their leases.
SELECT p.holder, p.started_at, p.renewed_at, p.figures,
       -- by the database's clock, as the rows' times are
       extract(epoch FROM now() - p.renewed_at)::int AS renewed_age_seconds,
       (SELECT count(*) FROM runsync.leases l
        WHERE l.holder = p.holder AND l.expires_at > now()) AS leases
FROM runsync.processes p
WHERE p.renewed_at > now() - $1::interval
ORDER BY p.holder;

-- load_checkpoint --
-- Where a stream of a source stands.
SELECT watermark, cursor FROM runsync.checkpoints WHERE source = $1 AND stream = $2;

-- needs_first_copy --
-- Whether an incremental stream has no checkpoint, and no finished backfill of all of history
-- (range [null, null]) can stand in for one.
SELECT NOT EXISTS (SELECT 1 FROM runsync.checkpoints WHERE source = $1 AND stream = $2)
   AND NOT EXISTS (
       SELECT 1 FROM runsync.checkpoints
        WHERE source = $1 AND stream = $3 AND watermark IS NOT NULL
          AND coalesce((cursor ->> 'done')::boolean, false)
          AND cursor -> 'range' = '[null, null]'::jsonb);

-- save_checkpoint --
-- Moves a stream's checkpoint ($2: its name; $5, $6, $7: its kind, partition and window); runs in
-- the same transaction as the page it follows.
INSERT INTO runsync.checkpoints AS c (source, stream, watermark, cursor, kind, part, window_index)
VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7)
ON CONFLICT (source, stream) DO UPDATE
SET watermark = EXCLUDED.watermark, cursor = EXCLUDED.cursor, updated_at = now();

-- delete_window_checkpoints --
-- Forgets the checkpoints of the windows of one backfill (kind $2, partition $3) of a source.
DELETE FROM runsync.checkpoints
WHERE source = $1 AND kind = $2 AND part = $3 AND window_index IS NOT NULL;

-- create_incoming_runs --
-- A session's staging table for one upstream's runs, emptied at every commit: a Run's fields in
-- order, its upstream's typed columns (as staged) in place of `columns` (store.RunTable).
CREATE TEMP TABLE IF NOT EXISTS {table} (
    run_id text, status text, is_terminal boolean, started_at timestamptz, finished_at timestamptz,
    raw text, observed_at timestamptz, recheck_at timestamptz, project text, partial boolean,
    notes text, scope text, succeeded boolean{columns}
) ON COMMIT DELETE ROWS;

-- empty_incoming_runs --
-- Empties one upstream's staging table within a transaction (it also empties at commit).
DELETE FROM {table};

-- merge_incoming_runs --
-- Stores the staged runs of one upstream (worker/store.py RunTable fills in its staging table,
-- its typed columns, their values and their updates): a later observation wins, and a run that
-- did not change is not written.
-- What raw holds: the newest observation, whole, when it is a whole object (a single run, a
-- webhook's, a RakerOne item) or when the run's status changed; a list item that may omit fields
-- (partial) of a run in the same status is merged over it instead (runsync.merge_view: a null
-- or missing key keeps the stored value), and so is each typed column: they always read as raw.
-- Each typed column's update is, for a column c:
--   c = CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status
--            THEN coalesce(EXCLUDED.c, r.c) ELSE EXCLUDED.c END
INSERT INTO runsync.runs AS r (
    source, upstream, run_id, status, is_terminal, started_at, finished_at, project, scope,
    succeeded{columns}, raw, observed_at, recheck_at, partial, notes)
SELECT $1, $2, i.run_id, i.status, i.is_terminal, i.started_at, i.finished_at, i.project, i.scope,
       i.succeeded{values}, i.raw::jsonb, i.observed_at, i.recheck_at, i.partial, i.notes
FROM {table} i
-- Rows are locked in one order by every writer, so a backfill beside a pass cannot deadlock.
ORDER BY i.run_id
ON CONFLICT (source, part, run_id) DO UPDATE SET
    upstream = EXCLUDED.upstream,
    status = EXCLUDED.status,
    is_terminal = EXCLUDED.is_terminal,
    succeeded = EXCLUDED.succeeded,
    started_at = CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status THEN coalesce(EXCLUDED.started_at, r.started_at) ELSE EXCLUDED.started_at END,
    finished_at = CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status THEN coalesce(EXCLUDED.finished_at, r.finished_at) ELSE EXCLUDED.finished_at END,
    scope = CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status THEN coalesce(EXCLUDED.scope, r.scope) ELSE EXCLUDED.scope END,
    notes = CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status THEN coalesce(EXCLUDED.notes, r.notes) ELSE EXCLUDED.notes END,{updates}
    raw = CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status
               THEN runsync.merge_view(r.raw, EXCLUDED.raw) ELSE EXCLUDED.raw END,
    partial = EXCLUDED.partial,
    observed_at = EXCLUDED.observed_at,
    recheck_at = EXCLUDED.recheck_at,
    gone_at = NULL,
    updated_at = now()
WHERE r.observed_at <= EXCLUDED.observed_at
  AND (CASE WHEN EXCLUDED.partial AND EXCLUDED.status = r.status
            THEN runsync.merge_view(r.raw, EXCLUDED.raw) ELSE EXCLUDED.raw END <> r.raw
       OR (EXCLUDED.notes IS NOT NULL AND EXCLUDED.notes IS DISTINCT FROM r.notes)
       OR r.recheck_at IS DISTINCT FROM EXCLUDED.recheck_at
       OR r.gone_at IS NOT NULL)
RETURNING (xmax = 0) AS inserted;

-- quarantine_items --
-- Keeps the items that could not be parsed, once each, with the reason (and the run, when its
-- id could be read).
INSERT INTO runsync.quarantine AS q (source, upstream, reason, raw, raw_sha256, run_id, project)
SELECT $1, $2, i.reason, i.raw, i.raw_sha256, i.run_id, i.project
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
     AS i(reason, raw, raw_sha256, run_id, project)
ORDER BY i.raw_sha256
ON CONFLICT (source, raw_sha256) DO UPDATE
SET reason = EXCLUDED.reason, last_seen_at = now(), seen_count = q.seen_count + 1;

-- release_quarantined --
-- Lets go of the quarantined items of runs just stored: they were bad reads, not bad runs.
DELETE FROM runsync.quarantine q
USING unnest($2::text[], $3::text[]) AS s(run_id, part)
WHERE q.source = $1 AND q.run_id = s.run_id AND coalesce(q.project, '') = s.part;

-- quarantined_runs --
-- The runs of a project whose items were quarantined in the last day, to be read again by id: a
-- garbled read passes by then; a bad run stops costing requests.
SELECT DISTINCT q.run_id
FROM runsync.quarantine q
WHERE q.source = $1 AND q.run_id IS NOT NULL AND q.project IS NOT DISTINCT FROM $2
  AND q.first_seen_at > now() - interval '1 day'
ORDER BY q.run_id
LIMIT $3;

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

-- unlisted_runs --
-- Runs of one project of a source started in [$3, $4), not marked gone, that a complete listing
-- of that range did not show ($5): each may be deleted upstream, or only missing from the
-- listing, so it is read by id (worker/refresh.py unlisted). At most $7 of them, in an order
-- that changes with $6 (the pass): runs the listing keeps omitting while they still exist do not
-- hold up the others sweep after sweep. `suspects`: how many there are in all.
SELECT r.run_id, count(*) OVER () AS suspects
FROM runsync.runs r
WHERE r.source = $1
  AND r.project IS NOT DISTINCT FROM $2
  AND r.started_at >= $3
  AND r.started_at < $4
  AND r.gone_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM unnest($5::text[]) AS s(run_id) WHERE s.run_id = r.run_id)
ORDER BY md5(r.run_id || ':' || $6::text)
LIMIT $7;

-- mark_gone --
-- Notes runs of one project of a source that the upstream no longer has, so they are not read
-- again.
UPDATE runsync.runs SET gone_at = now(), updated_at = now()
WHERE source = $1 AND part = coalesce($2, '') AND run_id = ANY($3::text[]) AND gone_at IS NULL;

-- database_now --
-- The database's clock: ages and lookbacks are measured on it.
SELECT now();

-- stream_due --
-- Whether a periodic stream ($2, e.g. the reconcile sweep) is due: its last success started $4
-- ago or more; before any, the first pass of stream $3 stands for it. One clock: the database's.
SELECT coalesce(
           (SELECT p.started_at FROM runsync.passes p
            WHERE p.source = $1 AND p.stream = $2 AND p.outcome = 'succeeded'
            ORDER BY p.id DESC LIMIT 1),
           (SELECT p.started_at FROM runsync.passes p
            WHERE p.source = $1 AND p.stream = $3
            ORDER BY p.id LIMIT 1),
           now()) <= now() - $4::interval;

-- last_pass_age --
-- How long ago the newest pass of a stream started, by any replica, on the database's clock.
SELECT now() - started_at FROM runsync.passes
WHERE source = $1 AND stream = $2
ORDER BY id DESC LIMIT 1;

-- abandon_passes --
-- Closes the passes of a stream still marked running: their processes died or lost the stream's
-- lease, since the caller holds it.
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
-- One closed as abandoned (its lease was taken over) stays so.
UPDATE runsync.passes SET finished_at = now(), outcome = $2, error = $3
WHERE id = $1 AND outcome = 'running';

-- stream_parts --
-- The partitions of each source ($1) that the tables know of ('' where a source has one stream).
-- The runs' partitions are found by skipping through the primary key (source, part, run_id) from
-- one partition to the next: a few index probes per partition, however many runs each holds.
WITH RECURSIVE run_parts AS (
    SELECT first.source, first.part
    FROM unnest($1::text[]) AS s(name)
    CROSS JOIN LATERAL (
        SELECT r.source, r.part FROM runsync.runs r
        WHERE r.source = s.name ORDER BY r.part LIMIT 1) AS first
    UNION ALL
    SELECT later.source, later.part
    FROM run_parts p
    CROSS JOIN LATERAL (
        SELECT r.source, r.part FROM runsync.runs r
        WHERE r.source = p.source AND r.part > p.part ORDER BY r.part LIMIT 1) AS later
)
SELECT DISTINCT source, part FROM runsync.checkpoints WHERE source = ANY($1::text[])
UNION
SELECT source, part FROM run_parts;

-- stream_status --
-- Per stream of runs of each source ($1; a RakerOne project, or the whole source: part ''): the
-- incremental checkpoint, run counts, the newest success and failure, where its backfill stands.
-- $2 to $6, side by side: each source and partition, with the names of its incremental, backfill
-- and reconcile streams (made by model.Stream: names are compared here, never taken apart).
-- The counts read indexes only, never the runs' rows: all runs through the primary key (an
-- index-only scan), the open ones through runs_open_idx, the newest start through runs_started_idx.
WITH counts AS (
    SELECT r.source, r.part, count(*) AS runs
    FROM runsync.runs r
    WHERE r.source = ANY($1::text[])
    GROUP BY r.source, r.part
),
open AS (
    SELECT r.source, r.part, count(*) AS open_runs
    FROM runsync.runs r
    WHERE r.source = ANY($1::text[]) AND NOT r.is_terminal AND r.gone_at IS NULL
    GROUP BY r.source, r.part
),
named AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
        AS n(source, part, incremental, backfill, reconcile)
)
SELECT n.source,
       nullif(n.part, '') AS project,
       inc.watermark,
       coalesce(inc.cursor ? 'top', false) AS walk_in_flight,
       coalesce(c.runs, 0) AS runs,
       coalesce(o.open_runs, 0) AS open_runs,
       (SELECT max(r.started_at) FROM runsync.runs r
        WHERE r.source = n.source AND r.part = n.part) AS newest_started_at,
       greatest(last.incremental_success_at, last.backfill_success_at) AS last_success_at,
       failure.finished_at AS last_error_at,
       failure.error AS last_error,
       CASE WHEN bf.cursor IS NULL THEN NULL
            WHEN bf.done THEN 'done'
            -- its lease is held: a process is walking it now
            WHEN EXISTS (SELECT 1 FROM runsync.leases l
                         WHERE l.source = n.source AND l.stream = n.backfill
                           AND l.expires_at > now())
                 THEN 'running'
            ELSE 'stopped' END AS backfill_state,
       bf.cursor -> 'range' AS backfill_range,
       jsonb_array_length(bf.cursor -> 'windows') AS backfill_windows,
       CASE WHEN bf.done THEN jsonb_array_length(bf.cursor -> 'windows')
            ELSE windows.done END AS backfill_windows_done,
       CASE WHEN NOT bf.done THEN progress.items END AS backfill_runs_read,
       -- the runs the upstream counted in the range when the windows were planned
       (bf.cursor ->> 'total')::bigint AS backfill_runs_planned,
       CASE WHEN bf.done THEN done_by.finished_at END AS backfill_finished_at,
       sweep.finished_at AS reconcile_at,
       sweep.pages AS reconcile_requests
FROM named n
LEFT JOIN counts c ON c.source = n.source AND c.part = n.part
LEFT JOIN open o ON o.source = n.source AND o.part = n.part
LEFT JOIN runsync.checkpoints inc ON inc.source = n.source AND inc.stream = n.incremental
LEFT JOIN LATERAL (
    SELECT k.cursor, coalesce((k.cursor ->> 'done')::boolean, false) AS done
    FROM runsync.checkpoints k WHERE k.source = n.source AND k.stream = n.backfill) AS bf ON true
-- The passes of one stream are found through passes_stream_idx. The streams are compared as ranges,
-- not with =, which the planner estimates as for a busy stream and then walks every pass by id.
LEFT JOIN LATERAL (
    SELECT (SELECT p.finished_at FROM runsync.passes p
            WHERE p.source = n.source AND p.stream >= n.incremental AND p.stream <= n.incremental
              AND p.outcome = 'succeeded'
            ORDER BY p.stream DESC, p.id DESC LIMIT 1) AS incremental_success_at,
           (SELECT p.finished_at FROM runsync.passes p
            WHERE p.source = n.source AND p.stream >= n.backfill AND p.stream <= n.backfill
              AND p.outcome = 'succeeded'
            ORDER BY p.stream DESC, p.id DESC LIMIT 1) AS backfill_success_at,
           (SELECT p.id FROM runsync.passes p
            WHERE p.source = n.source AND p.stream >= n.backfill AND p.stream <= n.backfill
              AND p.outcome = 'succeeded'
            ORDER BY p.stream DESC, p.id DESC LIMIT 1) AS backfill_success_id) AS last ON true
LEFT JOIN LATERAL (
    SELECT f.finished_at, f.error FROM (
        (SELECT p.finished_at, p.error FROM runsync.passes p
         WHERE p.source = n.source AND p.stream >= n.incremental AND p.stream <= n.incremental
           AND p.outcome = 'failed'
         ORDER BY p.stream DESC, p.id DESC LIMIT 1)
        UNION ALL
        (SELECT p.finished_at, p.error FROM runsync.passes p
         WHERE p.source = n.source AND p.stream >= n.backfill AND p.stream <= n.backfill
           AND p.outcome = 'failed'
         ORDER BY p.stream DESC, p.id DESC LIMIT 1)) AS f
    ORDER BY f.finished_at DESC NULLS LAST LIMIT 1) AS failure ON true
-- A windowed backfill keeps a checkpoint per window until every window is done.
LEFT JOIN LATERAL (
    SELECT count(*) FILTER (WHERE (w.cursor ->> 'done')::boolean) AS done
    FROM runsync.checkpoints w
    WHERE bf.cursor ? 'windows' AND NOT bf.done
      AND w.source = n.source AND w.kind = 'backfill' AND w.part = n.part
      AND w.window_index IS NOT NULL
    ) AS windows ON true
-- What an unfinished backfill has read so far: its passes since the last that finished one.
LEFT JOIN LATERAL (
    SELECT coalesce(sum(p.items), 0) AS items FROM runsync.passes p
    WHERE NOT bf.done
      AND p.source = n.source AND p.stream >= n.backfill AND p.stream <= n.backfill
      AND p.id > coalesce(last.backfill_success_id, 0)
    ) AS progress ON true
LEFT JOIN runsync.passes done_by ON done_by.id = (bf.cursor ->> 'pass_id')::bigint
-- The newest reconcile sweep that finished: when, and the list requests (pages) it cost.
LEFT JOIN LATERAL (
    SELECT p.finished_at, p.pages FROM runsync.passes p
    WHERE p.source = n.source AND p.stream >= n.reconcile AND p.stream <= n.reconcile
      AND p.outcome = 'succeeded'
    ORDER BY p.stream DESC, p.id DESC LIMIT 1) AS sweep ON true
ORDER BY n.source, n.part;

-- known_sources --
-- Every source that has rows or a checkpoint, configured or not.
SELECT source FROM runsync.checkpoints
UNION
SELECT DISTINCT source FROM runsync.passes;

-- stream_figures --
-- One stream's figures for the daemon's gauges: newest start, open runs and the oldest of them,
-- its newest success ($4: the incremental stream), unfinished backfill ($3).
-- oldest_open_at: the oldest open run's start, or when it was first stored if it has not started.
-- backfill_runs_read: what the backfill's newest pass has read; null when none is in flight.
-- backfill_idle_seconds: since the backfill (or one of its windows) last stored a page.
SELECT (SELECT max(r.started_at) FROM runsync.runs r
         WHERE r.source = $1 AND r.project IS NOT DISTINCT FROM $2::text) AS newest_started_at,
       o.open_runs,
       o.oldest_open_at,
       (SELECT p.finished_at FROM runsync.passes p
         WHERE p.source = $1 AND p.stream >= $4 AND p.stream <= $4 AND p.outcome = 'succeeded'
         ORDER BY p.stream DESC, p.id DESC LIMIT 1) AS last_success_at,
       (SELECT p.items FROM runsync.checkpoints k
         CROSS JOIN LATERAL (
             SELECT items FROM runsync.passes
             WHERE source = k.source AND stream = k.stream
             ORDER BY id DESC LIMIT 1) AS p
         WHERE k.source = $1 AND k.stream = $3
           AND NOT coalesce((k.cursor ->> 'done')::boolean, false)) AS backfill_runs_read,
       (SELECT extract(epoch FROM now() - max(w.updated_at))::float8
          FROM runsync.checkpoints k
          JOIN runsync.checkpoints w ON w.source = k.source AND w.kind = k.kind AND w.part = k.part
         WHERE k.source = $1 AND k.stream = $3
           AND NOT coalesce((k.cursor ->> 'done')::boolean, false)) AS backfill_idle_seconds
FROM (SELECT count(*) AS open_runs,
             min(coalesce(r.started_at, r.first_seen_at)) AS oldest_open_at
        FROM runsync.runs r
       WHERE r.source = $1 AND r.project IS NOT DISTINCT FROM $2::text
         AND NOT r.is_terminal AND r.gone_at IS NULL) AS o;

-- chart_runs_per_day --
-- The status page's runs per day: the runs started on each UTC day from $1 to $2 (dates), by
-- outcome (succeeded, failed: ended otherwise, open), each source's runs added up. The day index
-- (runs_started_day_idx) bounds the read to the range.
SELECT day,
       count(*) FILTER (WHERE is_terminal AND succeeded) AS succeeded,
       count(*) FILTER (WHERE is_terminal AND NOT coalesce(succeeded, false)) AS failed,
       count(*) FILTER (WHERE NOT is_terminal) AS open
FROM runsync.run_facts
WHERE day BETWEEN $1::date AND $2::date
GROUP BY day
ORDER BY day;

-- chart_cost_per_day --
-- The status page's cost: what Apify charged per actor per UTC day from $1 to $2, in USD (each run
-- once, however many sources store it: the view's rule).
SELECT day, actor_id, usage_total_usd
FROM runsync.cost_per_actor_per_day
WHERE day BETWEEN $1::date AND $2::date
ORDER BY day, actor_id;

-- chart_durations_per_day --
-- The status page's durations: the 50th, 90th and 99th percentiles of the finished runs' durations
-- (seconds) per UTC day of their start from $1 to $2, over every source.
SELECT day,
       count(*) AS finished_runs,
       percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY duration_seconds) AS seconds
FROM runsync.run_facts
WHERE day BETWEEN $1::date AND $2::date AND finished_at IS NOT NULL
GROUP BY day
ORDER BY day;

-- chart_today --
-- The database's UTC day: where a chart's range of days ends.
SELECT (now() AT TIME ZONE 'UTC')::date;
