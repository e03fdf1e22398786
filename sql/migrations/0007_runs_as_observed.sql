-- What the real upstreams taught us (issue 10):
-- * RakerOne run ids are unique within a project only: a run is keyed by its source, its
--   project ('' where the upstream has none) and its id, so two projects never share a row.
-- * raw is merged from the views of a run (see merge_view), and `partial` says whether the newest
--   observation was a list item that may omit fields, so the typed columns follow raw.
-- * notes: what had to be escaped to store raw (a NUL, a lone surrogate, a non-finite number).

ALTER TABLE runsync.runs
    ADD COLUMN part    text    GENERATED ALWAYS AS (coalesce(project, '')) STORED,
    ADD COLUMN partial boolean NOT NULL DEFAULT false,
    ADD COLUMN notes   text;

ALTER TABLE runsync.runs DROP CONSTRAINT runs_pkey;
ALTER TABLE runsync.runs ADD CONSTRAINT runs_pkey PRIMARY KEY (source, part, run_id);

ALTER TABLE runsync.run_status_history ADD COLUMN project text;

-- A quarantined item whose id could be read names its run: the run is read again (Apify, by id),
-- and once it is stored its quarantined items are let go. The quarantine holds what is still
-- unreadable.
ALTER TABLE runsync.quarantine
    ADD COLUMN run_id  text,
    ADD COLUMN project text;
CREATE INDEX quarantine_run_idx ON runsync.quarantine (source, run_id) WHERE run_id IS NOT NULL;
DROP INDEX runsync.run_status_history_run_idx;
CREATE INDEX run_status_history_run_idx ON runsync.run_status_history (source, run_id, id);

CREATE OR REPLACE FUNCTION runsync.record_status_changes() RETURNS trigger
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
