//! Finished work is pruned after its retention period; live work never is.

mod common;

use common::*;
use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn finished_messages_past_retention_are_pruned_and_live_ones_kept() {
    let h = start_with(|c| {
        c.env
            .push(("RBMF__RETENTION__KEEP_DAYS".into(), "30".into()));
        c.env
            .push(("RBMF__RETENTION__SWEEP_INTERVAL_MS".into(), "100".into()));
        c.env
            .push(("RBMF__RETENTION__SWEEP_BATCH".into(), "2".into()));
    })
    .await;
    let mut old_finished = Vec::new();
    for i in 0..5 {
        let id = uuid::Uuid::new_v4().to_string();
        assert_eq!(
            h.post(&message(&format!("+1555300{i:04}"), &id, 600_000))
                .await
                .status(),
            201
        );
        let cancelled = h
            .api
            .delete(h.url(&format!("/v1/messages/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(cancelled.status(), 200);
        old_finished.push(id);
    }
    let recent_finished = uuid::Uuid::new_v4().to_string();
    h.post(&message("+15553009998", &recent_finished, 600_000))
        .await;
    h.api
        .delete(h.url(&format!("/v1/messages/{recent_finished}")))
        .send()
        .await
        .unwrap();
    let old_pending = uuid::Uuid::new_v4().to_string();
    h.post(&message("+15553009999", &old_pending, 600_000))
        .await;

    // Age everything but the recent one by 40 days.
    let mut db = PgConnection::connect(&h.db.url).await.unwrap();
    sqlx::query(
        "UPDATE messages SET updated_at = now() - interval '40 days' WHERE message_id <> $1",
    )
    .bind(&recent_finished)
    .execute(&mut db)
    .await
    .unwrap();

    for id in &old_finished {
        let mut gone = false;
        for _ in 0..400 {
            let r = h
                .api
                .get(h.url(&format!("/v1/messages/{id}")))
                .send()
                .await
                .unwrap();
            if r.status() == 404 {
                gone = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(15)).await;
        }
        assert!(gone, "{id} was never pruned");
    }
    // Its history went with it.
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_events e JOIN messages m ON m.id = e.message_id WHERE m.message_id = ANY($1)",
    )
    .bind(&old_finished)
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(events, 0);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM message_events WHERE message_id NOT IN (SELECT id FROM messages)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    // Live work and recent history stay.
    assert_eq!(h.get(&old_pending).await["state"], "pending");
    assert_eq!(h.get(&recent_finished).await["state"], "cancelled");
}
