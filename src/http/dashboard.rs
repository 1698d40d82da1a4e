//! `/dashboard`: one server-rendered HTML page for operators, refreshing
//! itself. Every figure comes from PostgreSQL, so each replica shows the same
//! page. Phone numbers are masked, and every value is HTML-escaped.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::response::Html;
use chrono::{SecondsFormat, Utc};

use super::docs::esc;
use super::error::ApiError;
use super::AppState;
use crate::domain::phone::mask;
use crate::domain::{Outcome, State as MsgState};
use crate::store::{LastHour, Overview, StuckRow};

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 10;
/// Stuck messages listed.
const LONGEST_STUCK: i64 = 20;

pub async fn page(State(state): State<AppState>) -> Result<Html<String>, ApiError> {
    let overview = state.store.overview().await?;
    let hour = state.store.last_hour().await?;
    let stuck = state.store.longest_stuck(LONGEST_STUCK).await?;
    Ok(Html(render(
        &state.settings.rbm.agent_id,
        &overview,
        &hour,
        &stuck,
    )))
}

fn render(agent: &str, o: &Overview, h: &LastHour, stuck: &[StuckRow]) -> String {
    let now = Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut p = String::with_capacity(8192);
    let _ = write!(
        p,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECS}">
<title>rbm-fallback · {agent}</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2430;background:#f6f7f9}}
h1{{font-size:20px;margin:0 0 4px}} h2{{font-size:16px;margin:24px 0 8px}}
.sub{{color:#5b6473}} .tiles{{display:flex;flex-wrap:wrap;gap:12px;margin-top:16px}}
.tile{{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:10px 14px;min-width:120px}}
.tile b{{display:block;font-size:22px}} .tile span{{color:#5b6473}}
.warn b{{color:#b3261e}}
table{{border-collapse:collapse;background:#fff;border:1px solid #dde1e7}}
th,td{{padding:5px 10px;border-bottom:1px solid #eceff3;text-align:right}}
th:first-child,td:first-child{{text-align:left}} thead th{{background:#eef1f5}}
td.id{{font-family:ui-monospace,monospace;text-align:left}}
</style></head><body>
<h1>rbm-fallback</h1>
<div class="sub">agent <b>{agent}</b> · as of {now} · reloads every {REFRESH_SECS} s · "1 h": the last hour, from the history</div>
"#,
        agent = esc(agent),
    );

    // Tiles: the work waiting now, and the last hour.
    p.push_str(r#"<div class="tiles">"#);
    tile(&mut p, "due now", &o.due_depth.to_string(), o.due_depth > 0);
    tile(
        &mut p,
        "oldest due",
        &o.oldest_due_secs.map(secs).unwrap_or_else(|| "–".into()),
        o.oldest_due_secs.is_some_and(|s| s > 60.0),
    );
    tile(&mut p, "stuck", &o.stuck.to_string(), o.stuck > 0);
    tile(
        &mut p,
        "Google events to apply",
        &o.google_events_waiting.to_string(),
        false,
    );
    tile(
        &mut p,
        "Google events set aside",
        &o.google_events_set_aside.to_string(),
        o.google_events_set_aside > 0,
    );
    tile(
        &mut p,
        "revokes answered, 1 h",
        &h.revokes.to_string(),
        false,
    );
    tile(
        &mut p,
        "lateness p50 / p99, 1 h",
        &format!(
            "{} / {}",
            h.lateness_p50.map(secs).unwrap_or_else(|| "–".into()),
            h.lateness_p99.map(secs).unwrap_or_else(|| "–".into())
        ),
        false,
    );
    let rate = if h.reached > 0 {
        format!(
            "{:.2} % ({} of {})",
            100.0 * h.duplicates as f64 / h.reached as f64,
            h.duplicates,
            h.reached
        )
    } else {
        "–".into()
    };
    tile(&mut p, "duplicates (both), 1 h", &rate, h.duplicates > 0);
    p.push_str("</div>\n");

    // Messages by state and outcome.
    let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
    for (state, outcome, n) in &o.counts {
        counts.insert((state.as_str(), outcome.as_str()), *n);
    }
    p.push_str(
        "<h2>Messages by state and outcome</h2>\n<table id=\"counts\"><thead><tr><th>state</th>",
    );
    for outcome in Outcome::ALL {
        let _ = write!(p, "<th>{}</th>", esc(outcome.as_str()));
    }
    p.push_str("<th>total</th></tr></thead><tbody>\n");
    let mut column_totals = vec![0i64; Outcome::ALL.len()];
    for state in MsgState::ALL {
        let _ = write!(p, "<tr><td>{}</td>", esc(state.as_str()));
        let mut total = 0;
        for (i, outcome) in Outcome::ALL.iter().enumerate() {
            let n = counts
                .get(&(state.as_str(), outcome.as_str()))
                .copied()
                .unwrap_or(0);
            total += n;
            column_totals[i] += n;
            let _ = write!(p, "<td>{n}</td>");
        }
        let _ = writeln!(p, "<td><b>{total}</b></td></tr>");
    }
    p.push_str("<tr><td><b>total</b></td>");
    for n in &column_totals {
        let _ = write!(p, "<td><b>{n}</b></td>");
    }
    let _ = writeln!(
        p,
        "<td><b>{}</b></td></tr></tbody></table>",
        column_totals.iter().sum::<i64>()
    );

    // The messages waiting longest.
    let _ = writeln!(
        p,
        "<h2>Oldest stuck or overdue messages</h2>\n<table id=\"stuck\"><thead><tr>\
         <th>message id</th><th>phone</th><th>state</th><th>reason</th><th>waiting</th>\
         <th>attempts</th><th>deadline</th></tr></thead><tbody>"
    );
    if stuck.is_empty() {
        p.push_str("<tr><td colspan=\"7\">none</td></tr>\n");
    }
    for r in stuck {
        let _ = writeln!(
            p,
            "<tr><td class=\"id\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.message_id),
            esc(&mask(&r.phone)),
            esc(&r.state),
            esc(&r.reason),
            secs(r.waiting_secs),
            r.attempts,
            esc(&r.deadline.to_rfc3339_opts(SecondsFormat::Secs, true)),
        );
    }
    p.push_str("</tbody></table>\n</body></html>\n");
    p
}

fn tile(p: &mut String, label: &str, value: &str, warn: bool) {
    let class = if warn { "tile warn" } else { "tile" };
    let _ = write!(
        p,
        r#"<div class="{class}"><b>{}</b><span>{}</span></div>"#,
        esc(value),
        esc(label)
    );
}

/// A duration for people: milliseconds below a second, then seconds,
/// minutes, hours.
fn secs(s: f64) -> String {
    let s = s.max(0.0);
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 120.0 {
        format!("{s:.1} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{:.1} h", s / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_in_every_value() {
        let row = StuckRow {
            id: 1,
            message_id: "<script>alert(1)</script>".into(),
            agent_id: "a".into(),
            phone: "+14155550123".into(),
            state: "pending".into(),
            outcome: "none".into(),
            deadline: Utc::now(),
            due_at: None,
            attempts: 0,
            in_doubt: false,
            updated_at: Utc::now(),
            reason: "overdue".into(),
            waiting_secs: 90.0,
        };
        let page = render("x\"&y", &Overview::default(), &LastHour::default(), &[row]);
        assert!(!page.contains("<script>"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("x&quot;&amp;y"));
        assert!(page.contains("+14*******23"));
        assert!(!page.contains("+14155550123"));
    }
}
