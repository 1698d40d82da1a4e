-- What operators look at: messages that are stuck or overdue, and the history
-- events the dashboard reads its lateness figures from.
--
-- A message is listed in stuck_messages when
--   overdue:             its next step was due more than a minute ago and no
--                        worker has taken it (a claim moves due_at to the
--                        claim's expiry, so a claim that died also shows here);
--   in_doubt:            an outbound call of its current step may have taken
--                        effect unseen, and work is still due;
--   awaiting_sms_status: Twilio took the SMS more than an hour ago and has
--                        not reported it delivered or failed (nothing polls
--                        Twilio, so a lost callback leaves it here).
-- Every condition is served by a partial index (messages_due or
-- messages_idle_updated), so the view stays cheap however large the table.
CREATE VIEW stuck_messages AS
SELECT id,
       message_id,
       agent_id,
       phone,
       state,
       outcome,
       deadline,
       due_at,
       attempts,
       in_doubt,
       updated_at,
       CASE
           WHEN due_at IS NULL THEN 'awaiting_sms_status'
           WHEN in_doubt THEN 'in_doubt'
           ELSE 'overdue'
       END AS reason,
       -- How long it has been waiting: past its due time (overdue), past its
       -- deadline (in doubt: its retries keep moving the due time), or since
       -- Twilio took the SMS.
       EXTRACT(EPOCH FROM now() - CASE
           WHEN due_at IS NULL THEN updated_at
           WHEN in_doubt THEN deadline
           ELSE due_at
       END)::float8 AS waiting_secs
FROM messages
WHERE (due_at IS NOT NULL AND due_at < now() - interval '1 minute')
   OR (due_at IS NOT NULL AND in_doubt)
   OR (due_at IS NULL AND state = 'sms_sent' AND updated_at < now() - interval '1 hour');

-- Answered revokes by time: the dashboard's deadline lateness over the last
-- hour reads only these few events, not the whole history.
CREATE INDEX message_events_revoke_answered ON message_events (at)
    WHERE kind IN ('revoke_ok', 'revoke_not_found');
