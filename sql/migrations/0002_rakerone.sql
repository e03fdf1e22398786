-- RakerOne: a source may sync several projects, each its own stream of checkpoints and passes.

ALTER TABLE runsync.runs
    ADD COLUMN project      text,    -- RakerOne's project; null for Apify
    ADD COLUMN triggered_by text,    -- RakerOne's triggeredBy
    ADD COLUMN result       jsonb;   -- RakerOne's result object

-- The open runs of one project of a source.
DROP INDEX runsync.runs_open_idx;
CREATE INDEX runs_open_idx ON runsync.runs (source, project, run_id)
    WHERE (NOT is_terminal OR recheck_at IS NOT NULL) AND gone_at IS NULL;
