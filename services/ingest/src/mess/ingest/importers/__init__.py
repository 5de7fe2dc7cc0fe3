"""Dataset importers: put a whole dataset into the bucket's drop prefix.

An importer reads a dataset in its real on-disk layout (SMD, MAESTRO, any
folder of audio, or the rendered music21 demo corpus), turns each file's name
or catalogue row into a ``TrackMetadata`` and uploads the audio to
``{drop_prefix}{dataset}/{relative path}`` with the agreed S3 user metadata
(``mess-dataset``, ``mess-track-id``, ``mess-metadata``). The bucket's
ObjectCreated notification then makes the ingest service's S3 worker register
the track, so importers never touch Postgres or Kafka and can run anywhere
that reaches the bucket. ``python -m mess.ingest.importers`` (or
``mess-import``) is the command line.
"""
