-- Google's events are acknowledged once recorded, and applied to their
-- messages right after, by an applier (src/store/rbm_events.rs). Applying
-- before the 200 held the webhook's group commit for two statements and the
-- state machine in between; recording is one statement, like a registration.
--
-- The events still to apply, in the order recorded. Only events that can
-- concern one of our messages (they carry a message id) are queued; the
-- event itself stays in rbm_events, the record.
CREATE TABLE rbm_inbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent_id    text NOT NULL,
    event_key   text NOT NULL
);
-- A queue: rows live for milliseconds, so vacuum it by the thousand rows,
-- not by a fraction of a table that is nearly always empty.
ALTER TABLE rbm_inbox SET (autovacuum_vacuum_scale_factor = 0,
                           autovacuum_vacuum_threshold = 5000);

-- An event still in the inbox is the applier's to apply, under the message's
-- key lock: a registration that finds it must leave it alone, or the message
-- would take it twice. Once applied (or found to name no message yet), it is
-- the registration's to apply, as an event that came before its message.
CREATE OR REPLACE FUNCTION lock_message_keys_find_events(agents text[], ids text[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM lock_message_keys(agents, ids);
    RETURN EXISTS (
        SELECT 1 FROM rbm_events r
        WHERE (r.agent_id, r.message_id) IN (SELECT * FROM UNNEST(agents, ids))
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.message_id = r.message_id)
          AND NOT EXISTS (SELECT 1 FROM rbm_inbox i
                          WHERE i.agent_id = r.agent_id AND i.event_key = r.event_key)
    );
END
$$;

-- The webhook's statement holds an INSERT into the outbox, which inserts rows
-- only when relays are configured; but a statement-level trigger fires even
-- for no rows: a NOTIFY, and the commit-time lock on the notification queue
-- it takes, for every batch of events. Notify only when rows were inserted.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('rbmf_outbox', '');
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER outbox_inserted ON outbox;
CREATE TRIGGER outbox_inserted AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
