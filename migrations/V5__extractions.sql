-- Lead extraction: one row per extraction run over a window of a conversation's messages, and
-- the history of every lead field change (which run, hence which messages, set it).

CREATE TABLE extractions (
  id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id             uuid NOT NULL REFERENCES tenants(id),
  conversation_id     uuid NOT NULL,
  -- the window: messages with from_message_id < id <= through_message_id
  from_message_id     bigint NOT NULL,
  through_message_id  bigint NOT NULL CHECK (through_message_id > from_message_id),
  status              text NOT NULL CHECK (status IN ('applied', 'unchanged', 'incomplete', 'refused', 'invalid')),
  response_id         text,
  input_tokens        integer,
  output_tokens       integer,
  cost                bigint,
  created_at          timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, id),
  -- a window is extracted once, however many jobs name it
  UNIQUE (conversation_id, through_message_id),
  FOREIGN KEY (user_id, conversation_id) REFERENCES conversations (user_id, id)
);

CREATE TABLE lead_history (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id        uuid NOT NULL REFERENCES tenants(id),
  lead_id        uuid NOT NULL REFERENCES leads(id),
  extraction_id  bigint NOT NULL,
  -- a column of leads, or extra.<key> for a tenant-defined field
  field          text NOT NULL,
  old_value      text,
  new_value      text NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (user_id, extraction_id) REFERENCES extractions (user_id, id)
);
CREATE INDEX lead_history_by_lead ON lead_history (lead_id, id);

CREATE FUNCTION reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER lead_history_append_only BEFORE UPDATE OR DELETE ON lead_history
  FOR EACH ROW EXECUTE FUNCTION reject_change();
