-- Who walks each stream now. A process takes a stream's lease before a pass, renews it while the
-- pass goes on (every third of `takeover_after`) and deletes it at the end; a lease past its expiry
-- is free to take, so a dead replica's streams are taken over. Each page write reads its lease
-- FOR KEY SHARE: a taker's UPDATE of `token` waits for it, and a process whose lease was taken over
-- writes nothing more. It replaces the session advisory lock, which pinned one database connection
-- for the whole of each pass.
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

-- The processes at work on this database, each renewed with its leases: their budgets, for
-- `runsync status`. A row not renewed for a while is a process that is gone.
CREATE TABLE runsync.processes (
    holder       text        PRIMARY KEY,  -- host:pid
    started_at   timestamptz NOT NULL DEFAULT now(),
    renewed_at   timestamptz NOT NULL DEFAULT now(),
    figures      jsonb       NOT NULL DEFAULT '{}'
);
