-- A checkpoint keeps its stream's parts beside its name: the kind (incremental, backfill,
-- reconcile), the partition ('' where the source has one stream: a RakerOne project otherwise)
-- and a backfill window's index. Queries select by them and compare names whole; no query takes
-- a name apart (the names are made in worker/model.py, Stream). The checkpoints stored before
-- are given their parts from their names, this once.

ALTER TABLE runsync.checkpoints
    ADD COLUMN kind   text,
    ADD COLUMN part   text    NOT NULL DEFAULT '',
    ADD COLUMN window_index integer;

UPDATE runsync.checkpoints
SET kind = split_part(split_part(stream, '#', 1), '/', 1),
    part = CASE WHEN strpos(split_part(stream, '#', 1), '/') > 0
                THEN substr(split_part(stream, '#', 1), strpos(split_part(stream, '#', 1), '/') + 1)
                ELSE '' END,
    window_index = CASE WHEN strpos(stream, '#') > 0 THEN split_part(stream, '#', 2)::integer END;

ALTER TABLE runsync.checkpoints ALTER COLUMN kind SET NOT NULL;
