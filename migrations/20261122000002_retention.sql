-- Pruning finished work, and table settings for a high-churn queue.

-- Rows with no due work (finished, or waiting only on outside events) by age:
-- what the retention sweep scans, without touching the due-work index.
CREATE INDEX messages_idle_updated ON messages (updated_at) WHERE due_at IS NULL;
CREATE INDEX rbm_events_received ON rbm_events (received_at);

-- Every transition updates its message row several times in its life; free
-- space on each page lets those updates stay on the page (HOT updates, no
-- index churn), and vacuuming after 5% rather than 20% of the rows changed
-- keeps dead rows from piling up between sweeps.
ALTER TABLE messages SET (fillfactor = 80,
                          autovacuum_vacuum_scale_factor = 0.05,
                          autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE message_events SET (autovacuum_vacuum_scale_factor = 0.05);
ALTER TABLE rbm_events SET (autovacuum_vacuum_scale_factor = 0.05);
