-- Dropped objects that became (or joined) a track, so the reconcile scan of
-- the drop prefix and duplicate notices skip them without downloading again.
-- A dropped object whose content equals an existing track's has no track row
-- of its own (sha256 is unique), which is why tracks.source_key is not enough.
CREATE TABLE IF NOT EXISTS ingested_objects (
    source_key  text PRIMARY KEY,
    etag        text,
    track_id    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The reconciler walks registered tracks oldest announcement first.
CREATE INDEX IF NOT EXISTS tracks_unindexed_idx ON tracks (announced_at) WHERE status IN ('registered', 'embedded');
