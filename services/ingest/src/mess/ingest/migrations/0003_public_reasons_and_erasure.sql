-- Removal erases a track's objects: when that last happened (NULL: not yet, or not since the removal).
ALTER TABLE tracks ADD COLUMN IF NOT EXISTS objects_erased_at timestamptz;

-- failure_reason is public (the query service shows it): reasons stored before it became a code and a
-- fixed text may name S3 keys, endpoints and object addresses. Keep the code, drop the rest.
UPDATE tracks
SET failure_reason = CASE
        WHEN split_part(failure_reason, ':', 1) ~ '^[a-z][a-z0-9_]{0,39}$'
            THEN split_part(failure_reason, ':', 1) || ': the ' || coalesce(failure_stage, 'pipeline')
                 || ' stage could not process the track'
        ELSE 'other: the ' || coalesce(failure_stage, 'pipeline') || ' stage could not process the track'
    END
WHERE failure_reason IS NOT NULL;

CREATE INDEX IF NOT EXISTS tracks_removed_idx ON tracks (updated_at) WHERE status = 'removed';
