-- When a turn last started asking the model: when it opened, or when it was taken over again
-- before it had an answer (it then answers everything stored by then). A send starts only if
-- the conversation has been in AI mode since (turns::save). Turns opened before this
-- migration have none and count from created_at.
ALTER TABLE turns ADD COLUMN asking_since timestamptz;
ALTER TABLE turns ALTER COLUMN asking_since SET DEFAULT now();
