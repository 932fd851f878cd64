-- Credits: one balance per tenant that can never go negative, and an append-only ledger whose
-- sum always equals the balance (both written in one transaction by the data layer).

CREATE TABLE credit_accounts (
  user_id     uuid PRIMARY KEY REFERENCES tenants(id),
  balance     bigint NOT NULL DEFAULT 0 CHECK (balance >= 0),
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER credit_accounts_touch BEFORE UPDATE ON credit_accounts FOR EACH ROW EXECUTE FUNCTION touch_updated_at();

CREATE TABLE credit_ledger (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  user_id        uuid NOT NULL REFERENCES credit_accounts(user_id),
  -- positive: top-up; negative: charge
  delta          bigint NOT NULL CHECK (delta <> 0),
  balance_after  bigint NOT NULL CHECK (balance_after >= 0),
  reason         text NOT NULL,
  reference      text,
  created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_by_tenant ON credit_ledger (user_id, id);

CREATE FUNCTION credit_ledger_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'credit_ledger is append-only';
END $$;
CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE ON credit_ledger
  FOR EACH ROW EXECUTE FUNCTION credit_ledger_is_append_only();

-- One lead per contact: the fields extracted so far.
CREATE TABLE leads (
  id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id           uuid NOT NULL REFERENCES tenants(id),
  contact_id        uuid NOT NULL,
  name              text,
  email             text,
  phone             text,
  company           text,
  intent            text,
  product_interest  text,
  budget            text,
  timeline          text,
  language          text,
  summary           text,
  extra             jsonb NOT NULL DEFAULT '{}'::jsonb,
  confidence        real,
  is_active         boolean NOT NULL DEFAULT true,
  created_at        timestamptz NOT NULL DEFAULT now(),
  updated_at        timestamptz NOT NULL DEFAULT now(),
  UNIQUE (contact_id),
  FOREIGN KEY (user_id, contact_id) REFERENCES contacts (user_id, id)
);
CREATE INDEX leads_by_tenant_recent ON leads (user_id, updated_at DESC);
CREATE TRIGGER leads_touch BEFORE UPDATE ON leads FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
