-- An outbox row the broker can never accept (too large, an unknown topic) is dead-lettered and marked
-- done (published_at) so the relay moves on; this says why it left as a dead letter instead of an event.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS dead_letter_reason text;
