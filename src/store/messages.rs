//! Registering, reading and listing messages.

use chrono::{DateTime, Utc};

use super::{EventRow, MessageRow, Store, StoreError};

#[derive(Clone, Debug)]
pub enum Deadline {
    At(DateTime<Utc>),
    /// Seconds after registration, by the database clock.
    After(i64),
}

#[derive(Clone, Debug)]
pub struct NewMessage {
    pub message_id: String,
    pub agent_id: String,
    pub phone: String,
    pub deadline: Deadline,
    pub sms_body: String,
    pub sms_from: Option<String>,
    pub metadata: Option<serde_json::Value>,
    /// Identifies the request's content, to tell a retry from a conflict.
    pub request_digest: Vec<u8>,
}

#[derive(Debug)]
pub enum Registered {
    Created(MessageRow),
    /// The same request was registered before.
    Existing(MessageRow),
    /// The message id is taken by a different request.
    Conflict(MessageRow),
}

pub struct ListPage {
    pub messages: Vec<MessageRow>,
    /// The id to continue after, when more may follow.
    pub next_after: Option<i64>,
}

impl Store {
    pub async fn register(&self, new: &NewMessage) -> Result<Registered, StoreError> {
        let (at, after_secs) = match &new.deadline {
            Deadline::At(at) => (Some(*at), None),
            Deadline::After(secs) => (None, Some(*secs)),
        };
        let mut tx = self.pool.begin().await?;
        // ON CONFLICT DO NOTHING decides the race between two identical
        // registrations: exactly one inserts, the other sees the row.
        let created = sqlx::query_as!(
            MessageRow,
            r#"INSERT INTO messages (message_id, agent_id, phone, deadline, sms_body, sms_from,
                                    metadata, request_digest, state, outcome, due_at)
               SELECT $1, $2, $3, d, $6, $7, $8, $9, 'pending', 'none', d
               FROM (SELECT COALESCE($4::timestamptz, now() + $5::bigint * interval '1 second') AS d) AS dl
               ON CONFLICT (message_id) DO NOTHING
               RETURNING *"#,
            new.message_id,
            new.agent_id,
            new.phone,
            at,
            after_secs,
            new.sms_body,
            new.sms_from,
            new.metadata,
            new.request_digest,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = created else {
            tx.rollback().await?;
            let existing = sqlx::query_as!(
                MessageRow,
                "SELECT * FROM messages WHERE message_id = $1",
                new.message_id
            )
            .fetch_one(&self.pool)
            .await?;
            return Ok(if existing.request_digest == new.request_digest {
                Registered::Existing(existing)
            } else {
                Registered::Conflict(existing)
            });
        };
        let detail = serde_json::json!({ "deadline": row.deadline });
        super::transitions::append_event(&mut tx, row.id, "registered", None, "pending", detail)
            .await?;
        let due_in = (row.deadline - Utc::now()).to_std().unwrap_or_default();
        self.announce(&mut tx, Some(due_in)).await?;
        tx.commit().await?;
        self.poke(Some(due_in));
        Ok(Registered::Created(row))
    }

    pub async fn get(&self, message_id: &str) -> Result<Option<MessageRow>, StoreError> {
        Ok(sqlx::query_as!(
            MessageRow,
            "SELECT * FROM messages WHERE message_id = $1",
            message_id
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn history(&self, id: i64) -> Result<Vec<EventRow>, StoreError> {
        Ok(sqlx::query_as!(
            EventRow,
            "SELECT at, kind, state_before, state_after, detail
             FROM message_events WHERE message_id = $1 ORDER BY id",
            id
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Newest first; `after` is the id the previous page ended with.
    pub async fn list(
        &self,
        state: Option<&str>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<ListPage, StoreError> {
        // One row more than asked tells whether another page follows.
        let mut messages = sqlx::query_as!(
            MessageRow,
            "SELECT * FROM messages
             WHERE ($1::text IS NULL OR state = $1)
               AND ($2::bigint IS NULL OR id < $2)
             ORDER BY id DESC
             LIMIT $3",
            state,
            after,
            limit + 1,
        )
        .fetch_all(&self.pool)
        .await?;
        let more = messages.len() as i64 > limit;
        messages.truncate(limit as usize);
        let next_after = more.then(|| messages.last().map(|m| m.id)).flatten();
        Ok(ListPage {
            messages,
            next_after,
        })
    }
}
