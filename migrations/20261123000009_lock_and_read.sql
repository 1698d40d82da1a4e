-- The message-key locks (see src/store/mod.rs) and the read of the other
-- side's rows, in one round trip. A volatile PL/pgSQL function takes a fresh
-- snapshot for each statement it runs, so its read, made after its lock,
-- sees what the lock waited for: the registration or the Google event that
-- held the key and committed. Until now the read had to be a statement of
-- its own, one more round trip while the group commit waits.

-- For registrations: locks the keys, then tells whether Google reported on
-- any of these messages before it was registered (an event that came before
-- its message). Events about a message already stored (a registration
-- repeated) do not count: nothing is inserted for it.
CREATE FUNCTION lock_message_keys_find_events(agents text[], ids text[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM lock_message_keys(agents, ids);
    RETURN EXISTS (
        SELECT 1 FROM rbm_events r
        WHERE (r.agent_id, r.message_id) IN (SELECT * FROM UNNEST(agents, ids))
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.message_id = r.message_id)
    );
END
$$;

-- For Google's events: locks the keys, then locks and returns the rows of
-- the messages named in `wanted`, in id order so that two batches cannot
-- deadlock.
CREATE FUNCTION lock_message_keys_read_rows(agents text[], ids text[], wanted text[])
RETURNS SETOF messages
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM lock_message_keys(agents, ids);
    RETURN QUERY SELECT * FROM messages WHERE message_id = ANY(wanted) ORDER BY id FOR UPDATE;
END
$$;
