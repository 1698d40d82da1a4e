-- The message-key locks (see src/store/mod.rs), defined once: registrations
-- and Google events must lock the very same keys, or a DELIVERED committing
-- while its message is registered is seen by neither. Keys are taken in
-- sorted order, so that two batches sharing ids cannot deadlock. Returns how
-- many keys were locked.
CREATE FUNCTION lock_message_keys(agents text[], ids text[]) RETURNS bigint
LANGUAGE sql VOLATILE AS $$
    SELECT count(*) FROM (
        SELECT pg_advisory_xact_lock(k) FROM (
            SELECT DISTINCT hashtextextended(agent || ':' || id, 0) AS k
            FROM UNNEST(agents, ids) AS t(agent, id)
        ) AS keys ORDER BY k
    ) AS l
$$;
