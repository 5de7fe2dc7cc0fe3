-- The track registry and the transactional outbox.
-- Ingest owns these tables; the query service only reads `tracks`.
-- Runs inside the schema named by MESS_POSTGRES_SCHEMA (search_path is set).

CREATE TABLE IF NOT EXISTS tracks (
    id               text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9._-]{0,127}$'),
    sha256           char(64) NOT NULL UNIQUE,
    audio_uri        text NOT NULL,
    dataset          text NOT NULL,
    source_key       text,                      -- the dropped object or dataset file it came from
    title            text,
    composer         text,
    composer_full    text,
    work             text,
    movement         text,
    era              text,
    form             text,
    key              text,
    instrument       text,
    performer        text,
    year             integer,
    duration_s       double precision,
    sample_rate      integer,
    channels         integer,
    size_bytes       bigint,
    tags             text[] NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'registered'
                     CHECK (status IN ('registered', 'embedded', 'indexed', 'failed', 'removed')),
    snapshot_version text,                      -- set when status = 'indexed'
    failure_stage    text,                      -- set when status = 'failed'
    failure_reason   text,
    announced_at     timestamptz NOT NULL DEFAULT now(),  -- last TrackAdded queued (reconciler)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS tracks_status_idx ON tracks (status, updated_at);
CREATE INDEX IF NOT EXISTS tracks_composer_idx ON tracks (lower(composer));
CREATE INDEX IF NOT EXISTS tracks_dataset_idx ON tracks (dataset);

-- Events waiting to be published, in commit order. The relay marks them.
CREATE TABLE IF NOT EXISTS outbox (
    id           bigserial PRIMARY KEY,
    topic        text NOT NULL,            -- unprefixed topic name, e.g. mess.tracks.added.v1
    key          text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (id) WHERE published_at IS NULL;

-- Objects under the drop prefix that could not be ingested, so they are not retried forever.
CREATE TABLE IF NOT EXISTS rejected_objects (
    source_key  text PRIMARY KEY,
    etag        text,
    reason      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
