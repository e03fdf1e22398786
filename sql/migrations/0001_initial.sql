-- runsync's tables: the runs, their status history, checkpoints, passes and the quarantine.

CREATE TABLE runsync.runs (
    source                     text        NOT NULL,
    run_id                     text        NOT NULL,
    upstream                   text        NOT NULL,
    status                     text        NOT NULL,
    is_terminal                boolean     NOT NULL,
    started_at                 timestamptz,
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
    PRIMARY KEY (source, run_id)
);

-- The open runs of a source are re-read by every pass; this keeps finding them cheap.
CREATE INDEX runs_open_idx ON runsync.runs (source, run_id)
    WHERE (NOT is_terminal OR recheck_at IS NOT NULL) AND gone_at IS NULL;
CREATE INDEX runs_started_idx ON runsync.runs (source, started_at);

CREATE TABLE runsync.run_status_history (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          text        NOT NULL,
    run_id          text        NOT NULL,
    previous_status text,
    status          text        NOT NULL,
    observed_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX run_status_history_run_idx ON runsync.run_status_history (source, run_id, id);

-- A trigger sees the true previous row even when two writers race, which a CTE snapshot would not.
CREATE FUNCTION runsync.record_status_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO runsync.run_status_history (source, run_id, previous_status, status, observed_at)
        VALUES (NEW.source, NEW.run_id,
                CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
                NEW.status, NEW.observed_at);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_status_history
    AFTER INSERT OR UPDATE OF status ON runsync.runs
    FOR EACH ROW EXECUTE FUNCTION runsync.record_status_change();

CREATE TABLE runsync.checkpoints (
    source     text        NOT NULL,
    stream     text        NOT NULL,   -- 'incremental' or 'backfill'
    watermark  timestamptz,            -- every run started before this is stored
    cursor     jsonb,                  -- where the next request starts; for newest-first walks, the walk in flight
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, stream)
);

CREATE TABLE runsync.passes (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text        NOT NULL,
    stream      text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text        NOT NULL DEFAULT 'running'
                CHECK (outcome IN ('running', 'succeeded', 'failed', 'interrupted')),
    pages       integer     NOT NULL DEFAULT 0,
    items       integer     NOT NULL DEFAULT 0,   -- items read from list pages
    written     integer     NOT NULL DEFAULT 0,   -- rows inserted or changed
    quarantined integer     NOT NULL DEFAULT 0,
    refreshed   integer     NOT NULL DEFAULT 0,   -- open runs read again one by one
    error       text
);
CREATE INDEX passes_source_idx ON runsync.passes (source, id);

CREATE TABLE runsync.quarantine (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        text        NOT NULL,
    upstream      text        NOT NULL,
    reason        text        NOT NULL,
    raw           text        NOT NULL,
    raw_sha256    text        NOT NULL,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    seen_count    integer     NOT NULL DEFAULT 1,
    UNIQUE (source, raw_sha256)
);
