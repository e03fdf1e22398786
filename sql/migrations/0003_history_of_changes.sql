-- The status history records changes only, set by set: a run's first status is in runs
-- (first_seen_at, and the previous_status of its first change), so a backfill writes each run once.

DROP TRIGGER runs_status_history ON runsync.runs;
DROP FUNCTION runsync.record_status_change();

CREATE FUNCTION runsync.record_status_changes() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO runsync.run_status_history (source, run_id, previous_status, status, observed_at)
    SELECT changed.source, changed.run_id, before.status, changed.status, changed.observed_at
    FROM changed JOIN before USING (source, run_id)
    WHERE changed.status IS DISTINCT FROM before.status
    ORDER BY changed.run_id;
    RETURN NULL;
END;
$$;

-- Statement level with transition tables: one set-based insert per write, not one call per row.
CREATE TRIGGER runs_status_changes
    AFTER UPDATE ON runsync.runs
    REFERENCING OLD TABLE AS before NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION runsync.record_status_changes();
