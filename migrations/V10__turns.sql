-- The turn engine's durable state (reference-docs/architecture.md, "Turns"). A turn answers
-- the unanswered inbound messages of one conversation together; its state (shared::turn::Turn,
-- as JSON) is written before each side effect that follows it, so a redelivery resumes it.
CREATE TABLE turns (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id           uuid NOT NULL REFERENCES tenants(id),
  conversation_id   uuid NOT NULL,
  phase             text NOT NULL CHECK (phase IN ('asking', 'sending', 'settling', 'recorded', 'done')),
  state             jsonb NOT NULL,
  -- Credits reserved while the turn is open (released when it is recorded or abandoned); a
  -- hold past hold_expires_at no longer counts (an invocation that died left it).
  hold              bigint NOT NULL DEFAULT 0 CHECK (hold >= 0),
  hold_expires_at   timestamptz,
  -- The invocation working on it, until lease_until; a later claim takes over after that.
  lease_token       uuid,
  lease_until       timestamptz,
  outcome           text,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, id),
  FOREIGN KEY (user_id, conversation_id) REFERENCES conversations (user_id, id)
);
-- At most one open turn per conversation: turns of a conversation never overlap.
CREATE UNIQUE INDEX turns_one_open ON turns (conversation_id) WHERE phase <> 'done';
-- The credit gate sums a tenant's open holds.
CREATE INDEX turns_open_holds ON turns (user_id) WHERE phase <> 'done' AND hold > 0;
CREATE TRIGGER turns_touch BEFORE UPDATE ON turns
  FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

-- The turn answering an inbound message (null until a turn covers it).
ALTER TABLE messages ADD COLUMN turn_id uuid;
CREATE INDEX messages_uncovered ON messages (conversation_id, id)
  WHERE direction = 'in' AND turn_id IS NULL AND outcome IS NULL;

-- The send tag WhatsApp echoes in its statuses (biz_opaque_callback_data): a status parked
-- before its message is recorded names the request it answers, so an ambiguous send can be
-- resolved from it.
ALTER TABLE pending_statuses ADD COLUMN callback_tag text;
CREATE INDEX pending_statuses_by_tag ON pending_statuses (channel_account_id, callback_tag)
  WHERE callback_tag IS NOT NULL;

-- Credits held by open turns, on the account row itself so the gate is one conditional UPDATE
-- (concurrent turns serialise on the row and each sees the others' holds).
ALTER TABLE credit_accounts ADD COLUMN held bigint NOT NULL DEFAULT 0 CHECK (held >= 0);
