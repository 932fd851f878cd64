-- What the processor did with an inbound message (replied, human_mode, credits_exhausted,
-- send_failed, model_rejected, ...), so "why did this customer get no answer?" is one query.
-- Null while it has not been decided (first delivery in flight, or waiting for a retry).
ALTER TABLE messages ADD COLUMN outcome text;
CREATE INDEX messages_unanswered ON messages (user_id, created_at DESC)
  WHERE direction = 'in' AND outcome IS NOT NULL AND outcome <> 'replied';
