"""The ingest service: the track registry, uploads, S3 auto-ingest, dataset importers, the outbox relay."""
