-- `runsync status` looks up the newest success and failure of each stream of each source; without
-- this it walks every pass of a source to find a stream's, and a year holds hundreds of thousands.
CREATE INDEX passes_stream_idx ON runsync.passes (source, stream, outcome, id);
