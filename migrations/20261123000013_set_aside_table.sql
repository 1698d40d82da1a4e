-- Events set aside move from a mark on the queue's rows (migration 12) to a
-- table of their own, with what went wrong; moving one back queues it again
-- (docs/operations.md, "Google events set aside").
--
-- A mark made the applier's read of the queue's head pass over marked rows.
-- With a filter on a column whose statistics were taken while the queue was
-- empty (as they nearly always are), the planner read and sorted the whole
-- queue, dead rows included, on every take instead of walking its primary
-- key: quadratic once a backlog formed (a benchmark's burst of webhooks
-- applied 15,000 of 114,000 events in the time the queue used to drain).
--
-- Only an event that names a registered message can fail: one whose message
-- is not registered yet changes nothing when applied. So registrations, which
-- leave queued events to the applier (lock_message_keys_find_events), need
-- not look here: message ids are unique, so its message is registered already.
--
-- A replica still running the build of migration 12 reads the columns this
-- drops: its applier fails and retries, and its metrics stop, harmlessly,
-- until it is upgraded too; the replicas already upgraded apply the queue.
CREATE TABLE rbm_inbox_set_aside (
    -- Its place in the queue, kept so that it can go back in order.
    id          bigint      PRIMARY KEY,
    agent_id    text        NOT NULL,
    event_key   text        NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    error       text        NOT NULL
);

WITH marked AS (
    DELETE FROM rbm_inbox WHERE failed_at IS NOT NULL
    RETURNING id, agent_id, event_key, failed_at, error
)
INSERT INTO rbm_inbox_set_aside (id, agent_id, event_key, failed_at, error)
SELECT id, agent_id, event_key, failed_at, coalesce(error, 'set aside') FROM marked;

ALTER TABLE rbm_inbox DROP COLUMN failed_at, DROP COLUMN error;
