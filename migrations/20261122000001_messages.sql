-- Messages tracked for fallback, their due work, and their history.
--
-- One row per message carries both its state and its next due step: a message
-- has at most one step due at a time, so a separate job table would only add
-- a join and a second row to keep consistent.

CREATE TABLE messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The RBM messageId the agent used; the API's identifier.
    message_id      text        NOT NULL UNIQUE,
    agent_id        text        NOT NULL,
    phone           text        NOT NULL,
    deadline        timestamptz NOT NULL,
    sms_body        text        NOT NULL,
    sms_from        text,
    metadata        jsonb,
    -- Digest of the registration request, to tell a retry from a conflict.
    request_digest  bytea       NOT NULL,
    state           text        NOT NULL CHECK (state IN (
                        'pending', 'revoking', 'confirming', 'sms_sending', 'sms_sent',
                        'sms_delivered', 'sms_failed', 'delivered', 'cancelled', 'failed')),
    outcome         text        NOT NULL CHECK (outcome IN ('rcs', 'sms', 'both', 'none')),
    rcs_delivered   boolean     NOT NULL DEFAULT false,
    -- An outbound call of the current step may have taken effect unseen.
    in_doubt        boolean     NOT NULL DEFAULT false,
    -- Claims made on the current step.
    attempts        integer     NOT NULL DEFAULT 0,
    -- When the next step is due, by the database clock; NULL when none is.
    -- While a worker holds a claim this is when the claim expires.
    due_at          timestamptz,
    -- The current claim; results carrying another token are stale.
    lease_token     uuid,
    sms_sid         text,
    sms_status      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Due work only: finished messages leave this index, so it stays small however
-- many messages the table holds.
CREATE INDEX messages_due ON messages (due_at) WHERE due_at IS NOT NULL;
CREATE INDEX messages_state_id ON messages (state, id);
CREATE INDEX messages_sms_sid ON messages (sms_sid) WHERE sms_sid IS NOT NULL;

CREATE TABLE message_events (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id      bigint      NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    at              timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind            text        NOT NULL,
    state_before    text,
    state_after     text        NOT NULL,
    detail          jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX message_events_message ON message_events (message_id, id);

-- Every verified Google webhook event, recorded before we answer 200, and the
-- key that makes redelivery harmless.
CREATE TABLE rbm_events (
    agent_id        text        NOT NULL,
    event_key       text        NOT NULL,
    event_type      text        NOT NULL,
    message_id      text,
    payload         jsonb       NOT NULL,
    received_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, event_key)
);
