//! The OpenAPI document at /openapi.json and the reference at /docs: the
//! document lists the API, and the service's real answers (successes and
//! errors) match the statuses and schemas it documents.

mod common;

use common::{message, start, Harness};
use serde_json::{json, Value};

/// The operations of the agent-facing API, as (method, path, operationId).
const API: &[(&str, &str, &str)] = &[
    ("post", "/v1/messages", "createMessage"),
    ("get", "/v1/messages", "listMessages"),
    ("post", "/v1/messages:batch", "createMessages"),
    ("get", "/v1/messages/{message_id}", "getMessage"),
    ("delete", "/v1/messages/{message_id}", "cancelMessage"),
];

async fn document(h: &Harness) -> Value {
    // Served without authentication.
    let r = reqwest::Client::new()
        .get(h.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

/// Checks an answer against the document: its status is one the operation
/// documents, and its JSON body validates against the documented schema
/// (with `$ref`s resolved within the document).
async fn conforms(doc: &Value, method: &str, path: &str, r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let content_type = r.headers().get("content-type").cloned();
    let www_authenticate = r.headers().get("www-authenticate").cloned();
    let body: Value = r.json().await.unwrap();
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let mut documented = &op["responses"][status.to_string()];
    assert!(
        documented.is_object(),
        "{method} {path} answered {status}, which it does not document: {body}"
    );
    if let Some(r) = documented["$ref"].as_str() {
        let name = r.strip_prefix("#/components/responses/").unwrap();
        documented = &doc["components"]["responses"][name];
    }
    if documented["headers"]["WWW-Authenticate"].is_object() {
        assert_eq!(
            www_authenticate.as_ref().map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
    }
    let media = &documented["content"]["application/json"];
    assert!(
        media.is_object(),
        "{method} {path} {status}: no JSON body documented"
    );
    assert_eq!(content_type.unwrap(), "application/json");
    let errors = mismatches(doc, &media["schema"], &body);
    assert!(
        errors.is_empty(),
        "{method} {path} {status} does not match its schema: {errors:?}\n{body:#}"
    );
    (status, body)
}

/// How `body` fails `schema`, whose `$ref`s point into `doc`.
fn mismatches(doc: &Value, schema: &Value, body: &Value) -> Vec<String> {
    let mut root = doc.clone();
    let root_map = root.as_object_mut().unwrap();
    root_map.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    for (k, v) in schema.as_object().unwrap() {
        root_map.insert(k.clone(), v.clone());
    }
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .expect("the documented schema compiles");
    validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// The check above can fail: answers that differ from the document in a
/// field's presence, type, format or value are caught.
#[test]
fn the_schema_check_catches_answers_that_differ() {
    let doc = serde_json::to_value(rbm_fallback::http::openapi::document()).unwrap();
    let schema = json!({ "$ref": "#/components/schemas/MessageResource" });
    let good = json!({
        "message_id": "m-1", "agent_id": "a", "phone": "+15550100001",
        "state": "pending", "outcome": "none", "deadline": "2030-01-01T00:00:00Z",
        "mode": "track", "traffic_type": null,
        "policy": { "on_uncertain": "skip", "confirm_window_ms": 5000, "quiet_hours": null },
        "sms": { "body": "b", "encoding": "GSM-7", "segments": 1, "from": null, "sid": null, "status": null },
        "metadata": null, "next_action_at": "2030-01-01T00:00:00Z",
        "created_at": "2030-01-01T00:00:00Z", "updated_at": "2030-01-01T00:00:00Z",
    });
    assert_eq!(mismatches(&doc, &schema, &good), Vec::<String>::new());
    let mut wrong = Vec::new();
    for (pointer, value) in [
        ("/state", json!("lost")),
        ("/outcome", json!(3)),
        ("/deadline", json!("tomorrow")),
        ("/sms/sid", json!(false)),
        ("/events", json!([{ "kind": "x" }])),
    ] {
        let mut bad = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        bad.pointer_mut(if parent.is_empty() { "" } else { parent })
            .unwrap()
            .as_object_mut()
            .unwrap()
            .insert(key.to_owned(), value);
        wrong.push((pointer, mismatches(&doc, &schema, &bad)));
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("next_action_at");
    wrong.push((
        "next_action_at missing",
        mismatches(&doc, &schema, &missing),
    ));
    for (what, errors) in wrong {
        assert!(!errors.is_empty(), "{what} was not caught");
    }
    let error = json!({ "$ref": "#/components/schemas/ErrorBody" });
    assert!(mismatches(&doc, &error, &json!({ "error": { "code": "x" } })).len() == 1);
}

#[tokio::test]
async fn the_document_is_openapi_3_1_and_lists_the_whole_api() {
    let h = start().await;
    let doc = document(&h).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"],
        json!({ "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"] })
    );
    for (method, path, id) in API {
        let op = &doc["paths"][path][method];
        assert_eq!(op["operationId"], *id, "{method} {path}");
        assert_eq!(op["security"], json!([{ "bearer": [] }]), "{method} {path}");
        for status in ["401", "503"] {
            assert!(
                op["responses"][status].is_object(),
                "{method} {path} {status}"
            );
        }
        // Every documented operation exists: without a token it is refused,
        // not unknown.
        let url = h.url(&path.replace("{message_id}", "some-id"));
        let r = reqwest::Client::new()
            .request(method.to_uppercase().parse().unwrap(), url)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path}");
    }
    let api_ops: usize = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, _)| p.starts_with("/v1/"))
        .map(|(_, item)| item.as_object().unwrap().len())
        .sum();
    assert_eq!(
        api_ops,
        API.len(),
        "only the API's operations are under /v1"
    );
    for (path, status) in [("/healthz", "200"), ("/readyz", "503")] {
        assert!(doc["paths"][path]["get"]["responses"][status].is_object());
    }
    // Errors share one schema.
    let errors = &doc["components"]["schemas"]["ErrorBody"];
    assert_eq!(errors["required"], json!(["error"]));
}

#[tokio::test]
async fn real_answers_match_the_documented_schemas() {
    let h = start().await;
    let doc = document(&h).await;
    let one = "/v1/messages/{message_id}";

    // Registration: created, repeated, conflicting, invalid.
    let id = uuid::Uuid::new_v4().to_string();
    let body = json!({
        "phone": "+15550100001", "message_id": id, "revoke_after_secs": 3600,
        "sms": { "body": "Your code is 123456", "from": "Shop" },
        "metadata": { "order": "A-1001" },
    });
    let (status, created) = conforms(&doc, "post", "/v1/messages", h.post(&body).await).await;
    assert_eq!(status, 201);
    assert_eq!(created["events"][0]["kind"], "registered");
    let (status, _) = conforms(&doc, "post", "/v1/messages", h.post(&body).await).await;
    assert_eq!(status, 200);
    let mut other = body.clone();
    other["sms"]["body"] = json!("Another code");
    let (status, e) = conforms(&doc, "post", "/v1/messages", h.post(&other).await).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("message_id_conflict"))
    );
    let mut bad = body.clone();
    bad["phone"] = json!("0800");
    let (status, e) = conforms(&doc, "post", "/v1/messages", h.post(&bad).await).await;
    assert_eq!((status, e["error"]["field"].as_str()), (422, Some("phone")));

    // Send mode, with a policy of its own: the resource shows both.
    let send = json!({
        "phone": "+15550100003", "revoke_after_secs": 3600,
        "rcs": { "contentMessage": { "text": "Sale" }, "messageTrafficType": "PROMOTION" },
        "policy": { "on_uncertain": "send_sms", "quiet_hours": { "start": "22:00", "end": "07:00", "time_zone": "Europe/Paris", "action": "drop" } },
        "sms": { "body": "Sale: -20% ✨" },
    });
    let (status, sent) = conforms(&doc, "post", "/v1/messages", h.post(&send).await).await;
    assert_eq!(status, 201);
    assert_eq!(
        (sent["mode"].as_str(), sent["sms"]["encoding"].as_str()),
        (Some("send"), Some("UCS-2"))
    );

    let raw = |content_type: &str, body: Vec<u8>| {
        h.api
            .post(h.url("/v1/messages"))
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let (status, e) = conforms(
        &doc,
        "post",
        "/v1/messages",
        raw("application/json", b"{\"phone\":".to_vec())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_json"))
    );
    let (status, _) = conforms(
        &doc,
        "post",
        "/v1/messages",
        raw("text/plain", body.to_string().into_bytes())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 415);
    let (status, e) = conforms(
        &doc,
        "post",
        "/v1/messages",
        raw("application/json", vec![b' '; 70_000]).await.unwrap(),
    )
    .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let anonymous = reqwest::Client::new()
        .post(h.url("/v1/messages"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, _) = conforms(&doc, "post", "/v1/messages", anonymous).await;
    assert_eq!(status, 401);

    // Reading and listing.
    let get = |id: &str| h.api.get(h.url(&format!("/v1/messages/{id}"))).send();
    let (status, read) = conforms(&doc, "get", one, get(&id).await.unwrap()).await;
    assert_eq!((status, &read["message_id"]), (200, &json!(id)));
    let (status, _) = conforms(&doc, "get", one, get("no-such-id").await.unwrap()).await;
    assert_eq!(status, 404);
    let list = |query: &str| h.api.get(h.url(&format!("/v1/messages{query}"))).send();
    let (status, page) =
        conforms(&doc, "get", "/v1/messages", list("?limit=1").await.unwrap()).await;
    assert_eq!(
        (status, page["messages"].as_array().unwrap().len()),
        (200, 1)
    );
    let (status, e) = conforms(&doc, "get", "/v1/messages", list("?limit=0").await.unwrap()).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("invalid_query"))
    );

    // Batch: one item stored, one refused, inside one 200.
    let batch = |body: Value| h.api.post(h.url("/v1/messages:batch")).json(&body).send();
    let good = message("+15550100002", &uuid::Uuid::new_v4().to_string(), 60_000);
    let (status, answer) = conforms(
        &doc,
        "post",
        "/v1/messages:batch",
        batch(json!({ "messages": [good, { "phone": "+1" }] }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (answer["created"].as_u64(), answer["failed"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, _) = conforms(
        &doc,
        "post",
        "/v1/messages:batch",
        batch(json!({ "messages": [] })).await.unwrap(),
    )
    .await;
    assert_eq!(status, 422);

    // Cancelling: done, repeated, too late.
    let delete = |id: &str| h.api.delete(h.url(&format!("/v1/messages/{id}"))).send();
    let (status, cancelled) = conforms(&doc, "delete", one, delete(&id).await.unwrap()).await;
    assert_eq!(
        (status, cancelled["state"].as_str()),
        (200, Some("cancelled"))
    );
    let (status, _) = conforms(&doc, "delete", one, delete(&id).await.unwrap()).await;
    assert_eq!(status, 200);
    let (status, _) = conforms(&doc, "delete", one, delete("no-such-id").await.unwrap()).await;
    assert_eq!(status, 404);
    let late = h.send_and_register("+15550100003", 50).await;
    h.wait_until(&late, "revocation begun", |m| m["state"] != "pending")
        .await;
    let (status, e) = conforms(&doc, "delete", one, delete(&late).await.unwrap()).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (409, Some("not_cancellable"))
    );
    // The finished message, with its whole history, still matches.
    let done = h.wait_state(&late, "sms_delivered").await;
    assert!(done["events"].as_array().unwrap().len() > 3);
    let (status, _) = conforms(&doc, "get", one, get(&late).await.unwrap()).await;
    assert_eq!(status, 200);

    // Webhooks without valid signatures.
    let anyone = reqwest::Client::new();
    let rbm = |body: Value| anyone.post(h.url("/webhooks/rbm")).json(&body).send();
    let handshake = json!({ "clientToken": "not-the-token", "secret": "s" });
    let (status, _) = conforms(&doc, "post", "/webhooks/rbm", rbm(handshake).await.unwrap()).await;
    assert_eq!(status, 403);
    let event = json!({ "message": { "data": "e30=", "messageId": "1" } });
    let (status, e) = conforms(&doc, "post", "/webhooks/rbm", rbm(event).await.unwrap()).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (401, Some("invalid_signature"))
    );
    let unsigned = anyone
        .post(h.url("/webhooks/twilio/status?message_id=m-1"))
        .form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")])
        .send()
        .await
        .unwrap();
    let (status, _) = conforms(&doc, "post", "/webhooks/twilio/status", unsigned).await;
    assert_eq!(status, 403);

    let health = reqwest::Client::new();
    for path in ["/healthz", "/readyz"] {
        let (status, _) = conforms(
            &doc,
            "get",
            path,
            health.get(h.url(path)).send().await.unwrap(),
        )
        .await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn docs_page_renders_every_operation_and_schema_offline() {
    let h = start().await;
    let doc = document(&h).await;
    let r = reqwest::Client::new()
        .get(h.url("/docs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = r.text().await.unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    for (method, path, id) in API {
        assert!(page.contains(&format!("id=\"op-{id}\"")), "{id}");
        let heading = format!("<span class=\"method\">{method}</span><code>{path}</code></h2>");
        assert!(page.contains(&heading), "{method} {path}");
        let summary = doc["paths"][path][method]["summary"].as_str().unwrap();
        assert!(page.contains(summary), "{summary}");
    }
    for name in doc["components"]["schemas"].as_object().unwrap().keys() {
        assert!(page.contains(&format!("id=\"schema-{name}\"")), "{name}");
    }
    // Everything is in the page: nothing to fetch from elsewhere.
    assert!(!page.contains("<script"));
    assert!(!page.contains("<link"));
    assert!(!page.contains("src=\""));
}
