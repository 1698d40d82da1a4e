-- An event the applier cannot apply, even alone, with an error a retry will
-- not cure (a bug, a broken row, a trigger an operator added), would
-- otherwise stay at the head of the queue, and every event behind it, for
-- every message, would wait for ever. The applier sets such an event aside
-- instead: it stays in the queue, out of the applier's way, with what went
-- wrong, and `rbmf_google_events_set_aside` counts it. Once the cause is
-- mended, `UPDATE rbm_inbox SET failed_at = NULL, error = NULL` queues it
-- again (README, "Operations").
--
-- A set-aside event stays the applier's (lock_message_keys_find_events): a
-- registration still leaves it alone, or it would be applied twice once
-- queued again.
--
-- No index for the events still to apply: set-aside rows are rare, and the
-- applier's scan of the primary key passes over them; an index more on a
-- queue written with every event would cost more than it saves.
ALTER TABLE rbm_inbox ADD COLUMN failed_at timestamptz,
                      ADD COLUMN error text;
