-- Core schema: tenants, their channel accounts and agents, contacts, conversations, messages.
-- Every tenant-owned row carries user_id (the tenant) and is soft-deleted through is_active.

CREATE FUNCTION touch_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END $$;

CREATE TABLE tenants (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
  is_active   boolean NOT NULL DEFAULT true,
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agents (
  id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id                uuid NOT NULL REFERENCES tenants(id),
  name                   text NOT NULL,
  instructions           text NOT NULL DEFAULT '',
  model                  text NOT NULL,
  base_url               text,
  max_output_tokens      integer NOT NULL DEFAULT 800 CHECK (max_output_tokens > 0),
  temperature            real CHECK (temperature BETWEEN 0 AND 2),
  reasoning_effort       text,
  store                  boolean NOT NULL DEFAULT true,
  history_messages       integer NOT NULL DEFAULT 20 CHECK (history_messages BETWEEN 0 AND 200),
  price_input_per_1k     bigint NOT NULL DEFAULT 0 CHECK (price_input_per_1k >= 0),
  price_output_per_1k    bigint NOT NULL DEFAULT 0 CHECK (price_output_per_1k >= 0),
  min_balance            bigint NOT NULL DEFAULT 0 CHECK (min_balance >= 0),
  fallback_no_credits    text,
  fallback_error         text,
  extra_lead_fields      jsonb NOT NULL DEFAULT '{}'::jsonb,
  is_active              boolean NOT NULL DEFAULT true,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, id)
);
CREATE INDEX agents_by_tenant ON agents (user_id) WHERE is_active;

CREATE TABLE channel_accounts (
  id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id               uuid NOT NULL REFERENCES tenants(id),
  channel               text NOT NULL CHECK (channel IN ('whatsapp', 'instagram', 'webchat')),
  -- phone_number_id / Instagram account id / web chat site id
  provider_account_id   text NOT NULL,
  display_name          text,
  -- Secrets Manager id of this account's Graph API token (never the token itself)
  access_token_secret   text,
  agent_id              uuid,
  is_active             boolean NOT NULL DEFAULT true,
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, id),
  FOREIGN KEY (user_id, agent_id) REFERENCES agents (user_id, id)
);
-- Routing: a provider account belongs to one tenant at a time.
CREATE UNIQUE INDEX channel_accounts_by_provider ON channel_accounts (channel, provider_account_id);

CREATE TABLE contacts (
  id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id             uuid NOT NULL REFERENCES tenants(id),
  channel_account_id  uuid NOT NULL,
  -- BSUID (else wa_id) / IGSID / visitor id: the envelope's contact.id
  external_id         text NOT NULL,
  wa_id               text,
  display_name        text,
  username            text,
  is_active           boolean NOT NULL DEFAULT true,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, id),
  UNIQUE (channel_account_id, external_id),
  FOREIGN KEY (user_id, channel_account_id) REFERENCES channel_accounts (user_id, id)
);

CREATE TABLE conversations (
  id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id               uuid NOT NULL REFERENCES tenants(id),
  channel_account_id    uuid NOT NULL,
  contact_id            uuid NOT NULL,
  mode                  text NOT NULL DEFAULT 'ai' CHECK (mode IN ('ai', 'human')),
  last_inbound_at       timestamptz,
  previous_response_id  text,
  -- id of the last message the extraction function has read
  extracted_through     bigint NOT NULL DEFAULT 0,
  window_closed_at      timestamptz,
  is_active             boolean NOT NULL DEFAULT true,
  created_at            timestamptz NOT NULL DEFAULT now(),
  updated_at            timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, id),
  UNIQUE (channel_account_id, contact_id),
  FOREIGN KEY (user_id, channel_account_id) REFERENCES channel_accounts (user_id, id),
  FOREIGN KEY (user_id, contact_id) REFERENCES contacts (user_id, id)
);
CREATE INDEX conversations_by_tenant_recent ON conversations (user_id, updated_at DESC);

-- Delivery status order: a status only ever moves up this rank; failed is terminal.
CREATE FUNCTION message_status_rank(status text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE status
    WHEN 'received' THEN 0 WHEN 'pending' THEN 0
    WHEN 'sent' THEN 1 WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 WHEN 'played' THEN 3
    WHEN 'failed' THEN 9 END::smallint
$$;

CREATE TABLE messages (
  id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id              uuid NOT NULL REFERENCES tenants(id),
  conversation_id      uuid NOT NULL,
  channel_account_id   uuid NOT NULL,
  direction            text NOT NULL CHECK (direction IN ('in', 'out')),
  -- wamid / mid / web chat uuid; null for an outbound message not yet accepted by the provider
  provider_message_id  text,
  content              jsonb NOT NULL,
  status               text NOT NULL CHECK (message_status_rank(status) IS NOT NULL),
  error_code           integer,
  input_tokens         integer,
  output_tokens        integer,
  cost                 bigint,
  raw                  jsonb,
  provider_timestamp   timestamptz,
  created_at           timestamptz NOT NULL DEFAULT now(),
  updated_at           timestamptz NOT NULL DEFAULT now(),
  UNIQUE (user_id, id),
  FOREIGN KEY (user_id, conversation_id) REFERENCES conversations (user_id, id),
  FOREIGN KEY (user_id, channel_account_id) REFERENCES channel_accounts (user_id, id)
);
-- Dedup layer 3: a provider message id exists once per channel account.
CREATE UNIQUE INDEX messages_provider_id ON messages (channel_account_id, provider_message_id)
  WHERE provider_message_id IS NOT NULL;
-- A conversation's messages in order.
CREATE INDEX messages_by_conversation ON messages (conversation_id, id);

CREATE TRIGGER tenants_touch BEFORE UPDATE ON tenants FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER agents_touch BEFORE UPDATE ON agents FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER channel_accounts_touch BEFORE UPDATE ON channel_accounts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER contacts_touch BEFORE UPDATE ON contacts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER conversations_touch BEFORE UPDATE ON conversations FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
CREATE TRIGGER messages_touch BEFORE UPDATE ON messages FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
