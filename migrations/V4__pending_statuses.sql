-- Delivery statuses that arrived before their message was recorded (Meta can report `sent`
-- before the processor's write commits). The status function parks them here; the processor
-- applies them when it records the message; rows older than 7 days are dropped.
CREATE TABLE pending_statuses (
  id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id              uuid NOT NULL REFERENCES tenants(id),
  channel_account_id   uuid NOT NULL,
  provider_message_id  text NOT NULL,
  status               text NOT NULL CHECK (message_status_rank(status) IS NOT NULL),
  error_code           integer,
  received_at          timestamptz NOT NULL DEFAULT now(),
  UNIQUE (channel_account_id, provider_message_id, status),
  FOREIGN KEY (user_id, channel_account_id) REFERENCES channel_accounts (user_id, id)
);
CREATE INDEX pending_statuses_by_age ON pending_statuses (received_at);
