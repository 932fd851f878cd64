-- Admin API keys. The key itself is shown once; only its SHA-256 is kept (keys are 256 random
-- bits, so a fast hash is enough), with a visible prefix to find and recognise it. A platform
-- key (no tenant) manages tenants and top-ups; a tenant key has a role inside its tenant.

CREATE TABLE api_keys (
  id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id       uuid REFERENCES tenants(id),
  role          text NOT NULL CHECK (role IN ('platform', 'owner', 'agent', 'viewer')),
  name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
  -- the key's first characters, e.g. `aak_7kq2m9xd`: unique, safe to show and log
  prefix        text NOT NULL UNIQUE,
  secret_sha256 bytea NOT NULL CHECK (length(secret_sha256) = 32),
  created_at    timestamptz NOT NULL DEFAULT now(),
  last_used_at  timestamptz,
  revoked_at    timestamptz,
  CHECK ((role = 'platform') = (user_id IS NULL))
);
CREATE INDEX api_keys_by_tenant ON api_keys (user_id, created_at DESC);
