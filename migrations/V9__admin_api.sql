-- Admin API: the WhatsApp Business Account a number belongs to, and when and by which key a
-- conversation's mode (ai / human) last changed, so a handoff can be audited; a top-up reference
-- is used once per tenant, so a retried top-up request cannot credit twice.
ALTER TABLE channel_accounts ADD COLUMN waba_id text;
ALTER TABLE conversations ADD COLUMN mode_changed_at timestamptz;
ALTER TABLE conversations ADD COLUMN mode_changed_by uuid REFERENCES api_keys(id);
-- Keyset pages of a tenant's conversations (newest activity first) and leads.
CREATE INDEX conversations_by_tenant_page ON conversations (user_id, updated_at DESC, id DESC);
CREATE INDEX leads_by_tenant_page ON leads (user_id, updated_at DESC, id DESC);
CREATE UNIQUE INDEX credit_ledger_top_up_reference ON credit_ledger (user_id, reference)
  WHERE reason = 'top_up' AND reference IS NOT NULL;
