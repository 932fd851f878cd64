-- Web chat sites: a web chat channel account (channel = 'webchat', provider_account_id = the
-- public site key the <script> tag carries) with the origins its widget may be embedded on and
-- the secret its server uses for identity verification (identifier_hash).

CREATE TABLE webchat_sites (
  channel_account_id  uuid PRIMARY KEY,
  user_id             uuid NOT NULL REFERENCES tenants(id),
  -- exact origins: scheme://host[:port], no path, no trailing slash
  allowed_origins     text[] NOT NULL DEFAULT '{}'
                      CHECK (array_position(allowed_origins, NULL) IS NULL),
  -- HMAC key for identifier_hash; null: identity verification not offered
  identity_secret     text CHECK (identity_secret IS NULL OR length(identity_secret) >= 16),
  -- refuse sessions without a verified identifier
  require_identity    boolean NOT NULL DEFAULT false CHECK (NOT require_identity OR identity_secret IS NOT NULL),
  is_active           boolean NOT NULL DEFAULT true,
  created_at          timestamptz NOT NULL DEFAULT now(),
  updated_at          timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (user_id, channel_account_id) REFERENCES channel_accounts (user_id, id)
);
CREATE TRIGGER webchat_sites_touch BEFORE UPDATE ON webchat_sites FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
