-- lock_message_keys as PL/pgSQL. A SQL-language function that is not inlined
-- (this one is volatile) is planned again on every call, which cost about
-- 0.1 ms per registration batch and per batch of Google events; PL/pgSQL
-- keeps its statement's plan for the session. Same keys, same order.
CREATE OR REPLACE FUNCTION lock_message_keys(agents text[], ids text[]) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    locked bigint;
BEGIN
    SELECT count(*) INTO locked FROM (
        SELECT pg_advisory_xact_lock(k) FROM (
            SELECT DISTINCT hashtextextended(agent || ':' || id, 0) AS k
            FROM UNNEST(agents, ids) AS t(agent, id)
        ) AS keys ORDER BY k
    ) AS l;
    RETURN locked;
END
$$;
