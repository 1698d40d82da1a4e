//! /dashboard through the real HTTP surface: its auth, and its figures as
//! messages reach their outcomes or get stuck.

mod common;

use std::time::Duration;

use common::*;
use rbm_fallback::emulator::faults::GoogleFaults;

fn plain() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// The cells of the counts table's row for `state`: rcs, sms, both, none, total.
fn row(page: &str, state: &str) -> String {
    let start = page
        .find(&format!("<tr><td>{state}</td>"))
        .unwrap_or_else(|| panic!("no row {state}"));
    let end = start + page[start..].find("</tr>").unwrap();
    page[start..end].to_owned()
}

#[tokio::test]
async fn dashboard_needs_the_api_token() {
    let h = start().await;
    let r = plain().get(h.url("/dashboard")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = plain()
        .get(h.url("/dashboard?token=not-the-token-at-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = plain()
        .get(h.url(&format!("/dashboard?token={}", h.s.api_token)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains(r#"<meta http-equiv="refresh""#));
    assert!(page.contains(h.s.google.agent_id()));
    // Nothing yet: every count is zero, no lateness, nothing stuck.
    assert!(row(&page, "pending").contains("<td><b>0</b></td>"));
    assert!(page.contains(r#"<td colspan="7">none</td>"#));
}

#[tokio::test]
async fn dashboard_shows_outcomes_lateness_duplicates_and_stuck_messages() {
    let h = start().await;
    let sms = h.send_and_register("+15550005001", 100).await;
    let both_phone = "+15550005002";
    let both = h.send_and_register(both_phone, 100).await;
    h.wait_state(&sms, "sms_delivered").await;
    h.wait_state(&both, "sms_delivered").await;
    h.google_reports("DELIVERED", both_phone, &both).await;
    h.wait_outcome(&both, "both").await;

    let page = h.dashboard().await;
    assert_eq!(
        row(&page, "sms_delivered"),
        "<tr><td>sms_delivered</td><td>0</td><td>1</td><td>1</td><td>0</td><td><b>2</b></td>"
    );
    assert!(
        page.contains("<b>50.00 % (1 of 2)</b><span>duplicates (both), 1 h</span>"),
        "{page}"
    );
    assert!(page.contains("<b>2</b><span>revokes answered, 1 h</span>"));
    let lateness = page
        .split("<span>lateness p50 / p99, 1 h</span>")
        .next()
        .unwrap()
        .rsplit("<b>")
        .next()
        .unwrap()
        .to_owned();
    assert!(!lateness.contains('–'), "lateness is known: {lateness}");

    // A message whose revoke never gets an answer is in doubt: listed, masked.
    h.s.google.set_faults(GoogleFaults {
        reset_rate: 1.0,
        ..GoogleFaults::default()
    });
    let phone = "+15550005003";
    let stuck = h.send_and_register(phone, 50).await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(15);
    let page = loop {
        let page = h.dashboard().await;
        // The count and the list are read one after the other.
        if page.contains(&stuck) && page.contains("<b>1</b><span>stuck</span>") {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "never listed: {page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(page.contains("<td>in_doubt</td>"));
    assert!(page.contains("+15*******03"));
    assert!(!page.contains(phone), "phones are masked");
}
