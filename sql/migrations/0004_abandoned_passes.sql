-- A pass whose process died (SIGKILL, a lost machine) is marked abandoned by the next pass of its
-- stream: that one holds the stream's lock, so nothing else can be running it.

ALTER TABLE runsync.passes DROP CONSTRAINT passes_outcome_check;
ALTER TABLE runsync.passes ADD CONSTRAINT passes_outcome_check
    CHECK (outcome IN ('running', 'succeeded', 'failed', 'interrupted', 'abandoned'));
