-- The transactional outbox: HTTP requests to make on behalf of a committed
-- change (Google webhooks relayed to the agent, outcome callbacks), inserted
-- in the transaction of that change and delivered afterwards, at least once.

CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('relay', 'callback')),
    -- Rows sharing a key are delivered strictly in id order: the oldest
    -- undelivered one blocks the rest. NULL: delivered independently.
    ordering_key    text,
    target_url      text        NOT NULL,
    -- Request headers to send as stored (name -> value).
    headers         jsonb       NOT NULL DEFAULT '{}',
    body            bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer     NOT NULL DEFAULT 0,
    -- When the next try is due. While a deliverer holds a lease, this is when
    -- the lease expires and another may take the row over.
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_token     uuid,
    last_error      text,
    delivered_at    timestamptz
);

-- Undelivered rows only, so the delivered history never slows a claim.
-- Independent rows by due time:
CREATE INDEX outbox_due ON outbox (next_attempt_at)
    WHERE delivered_at IS NULL AND ordering_key IS NULL;
-- Ordered queues, whose heads a claim finds by walking the distinct keys:
-- a backlog of hours costs a claim a few index probes, not a scan.
CREATE INDEX outbox_queue ON outbox (ordering_key, id)
    WHERE delivered_at IS NULL AND ordering_key IS NOT NULL;
-- What the retention sweep deletes.
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0.05);

-- Deliverers of every replica wake on commit of a new row; they also poll,
-- because a listener that is reconnecting misses notifications.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('rbmf_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Where this message's outcome callbacks go, instead of the configured URL.
ALTER TABLE messages ADD COLUMN callback_url text;
