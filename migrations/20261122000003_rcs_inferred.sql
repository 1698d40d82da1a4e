-- A delivery inferred from a revoke's 404 (which may instead mean "expired by
-- Google's TTL") is kept apart from one Google reported, so that a later
-- TTL_EXPIRATION_REVOKED can still lead to the SMS.
ALTER TABLE messages ADD COLUMN rcs_inferred boolean NOT NULL DEFAULT false;

-- Registration looks for events Google sent before the agent registered.
CREATE INDEX rbm_events_message ON rbm_events (agent_id, message_id) WHERE message_id IS NOT NULL;
