-- The processor's heartbeat renews the leases of the turns its invocation holds, by token.
CREATE INDEX turns_open_lease ON turns (lease_token) WHERE phase <> 'done';
