-- Send mode and per-message policies.
--
-- A message in send mode carries the RBM message rbm-fallback sends for the
-- agent (`rcs`: contentMessage and messageTrafficType, as in the RBM API) and
-- starts in 'rcs_sending'. Every message carries its policy, resolved at
-- intake from the message, its agent and its traffic type, so that a change
-- of configuration never changes what was promised for messages in flight.

ALTER TABLE messages
    ADD COLUMN rcs               jsonb,
    ADD COLUMN traffic_type      text,
    -- What to do when Google says the revoke failed and no DELIVERED proves it.
    ADD COLUMN on_uncertain      text NOT NULL DEFAULT 'skip'
        CHECK (on_uncertain IN ('skip', 'send_sms')),
    -- NULL: the deployment's fallback.confirm_window_ms (rows from before).
    ADD COLUMN confirm_window_ms integer CHECK (confirm_window_ms >= 0),
    -- {"start","end","time_zone","action"}; NULL: none.
    ADD COLUMN quiet_hours       jsonb;

ALTER TABLE messages DROP CONSTRAINT messages_state_check;
ALTER TABLE messages ADD CONSTRAINT messages_state_check CHECK (state IN (
    'rcs_sending', 'pending', 'revoking', 'confirming', 'verifying', 'sms_sending',
    'sms_sent', 'sms_delivered', 'sms_failed', 'sms_skipped', 'delivered', 'cancelled',
    'failed'));

-- Phones Google said an agent cannot reach over RCS (a send answered 404 or
-- 403): until `until`, send-mode messages to them go straight to SMS. A
-- delivery to the phone removes the entry.
CREATE TABLE rcs_unreachable (
    agent_id   text        NOT NULL,
    phone      text        NOT NULL,
    until      timestamptz NOT NULL,
    -- Google's status and error, for operators.
    reason     text        NOT NULL,
    PRIMARY KEY (agent_id, phone)
);
CREATE INDEX rcs_unreachable_until ON rcs_unreachable (until);
