//! `/docs`: a self-contained HTML reference rendered on the server from the
//! OpenAPI document, so it works offline and shows exactly what
//! `/openapi.json` says.

use std::fmt::Write;

use serde_json::Value;

const METHODS: &[&str] = &["get", "put", "post", "delete", "patch", "head", "options"];

const STYLE: &str = "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;\
padding:0 1rem;color:#222}code{background:#f3f3f3;padding:0 .2em}table{border-collapse:collapse;\
width:100%;margin:.5rem 0}th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;\
vertical-align:top}th{background:#fafafa}.op{border-top:2px solid #ccc;margin-top:2rem}\
.method{font-weight:bold;text-transform:uppercase;margin-right:.5rem}nav li{list-style:none}";

/// Renders the whole reference page.
pub fn render(doc: &Value) -> String {
    let mut out = String::new();
    let title = text(&doc["info"]["title"]);
    let version = text(&doc["info"]["version"]);
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{t} API reference</title><style>{STYLE}</style></head><body>\
         <h1>{t} API reference <small>{v}</small></h1><p>{d}</p>\
         <p>The machine-readable document is at <a href=\"/openapi.json\">/openapi.json</a> \
         (OpenAPI {o}).</p>",
        t = esc(&title),
        v = esc(&version),
        d = esc(&text(&doc["info"]["description"])),
        o = esc(&text(&doc["openapi"])),
    );

    if let Some(schemes) = doc["components"]["securitySchemes"].as_object() {
        out.push_str("<h2>Authentication</h2><ul>");
        for (name, s) in schemes {
            let _ = write!(
                out,
                "<li><code>{}</code>: {} {}. {}</li>",
                esc(name),
                esc(&text(&s["type"])),
                esc(&text(&s["scheme"])),
                esc(&text(&s["description"]))
            );
        }
        out.push_str("</ul>");
    }

    let operations = operations(doc);
    out.push_str("<h2>Operations</h2><nav><ul>");
    for (method, path, op) in &operations {
        let _ = write!(
            out,
            "<li><a href=\"#{id}\"><span class=\"method\">{m}</span><code>{p}</code></a> {s}</li>",
            id = esc(&anchor(method, path, op)),
            m = esc(method),
            p = esc(path),
            s = esc(&text(&op["summary"])),
        );
    }
    out.push_str("</ul></nav>");

    for (method, path, op) in &operations {
        operation(&mut out, doc, method, path, op);
    }

    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        out.push_str("<h2 class=\"op\">Schemas</h2>");
        for (name, schema) in schemas {
            schema_section(&mut out, name, schema);
        }
    }
    out.push_str("</body></html>\n");
    out
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut ops = Vec::new();
    if let Some(paths) = doc["paths"].as_object() {
        for (path, item) in paths {
            for method in METHODS {
                if let Some(op) = item.get(*method) {
                    ops.push((method.to_string(), path.clone(), op.clone()));
                }
            }
        }
    }
    ops
}

fn anchor(method: &str, path: &str, op: &Value) -> String {
    match op["operationId"].as_str() {
        Some(id) => format!("op-{id}"),
        None => format!("op-{method}-{path}"),
    }
}

fn operation(out: &mut String, doc: &Value, method: &str, path: &str, op: &Value) {
    let _ = write!(
        out,
        "<section class=\"op\" id=\"{id}\"><h2><span class=\"method\">{m}</span><code>{p}</code></h2>\
         <p><strong>{s}</strong></p><p>{d}</p>",
        id = esc(&anchor(method, path, op)),
        m = esc(method),
        p = esc(path),
        s = esc(&text(&op["summary"])),
        d = esc(&text(&op["description"])),
    );
    let auth = match op["security"].as_array() {
        Some(reqs) if !reqs.is_empty() => reqs
            .iter()
            .filter_map(|r| r.as_object())
            .flat_map(|r| r.keys().cloned())
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_owned(),
    };
    let _ = write!(
        out,
        "<p>Operation id <code>{}</code>; authentication: {}.</p>",
        esc(&text(&op["operationId"])),
        esc(&auth)
    );

    if let Some(params) = op["parameters"].as_array().filter(|p| !p.is_empty()) {
        out.push_str(
            "<h3>Parameters</h3><table><tr><th>Name</th><th>In</th><th>Type</th>\
             <th>Required</th><th>Description</th></tr>",
        );
        for p in params {
            let _ = write!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text(&p["name"])),
                esc(&text(&p["in"])),
                type_of(&p["schema"]),
                if p["required"].as_bool() == Some(true) {
                    "yes"
                } else {
                    "no"
                },
                esc(&text(&p["description"])),
            );
        }
        out.push_str("</table>");
    }

    if let Some(content) = op["requestBody"]["content"].as_object() {
        out.push_str("<h3>Request body</h3><ul>");
        for (media, c) in content {
            let _ = write!(
                out,
                "<li><code>{}</code>: {}</li>",
                esc(media),
                type_of(&c["schema"])
            );
        }
        out.push_str("</ul>");
    }

    if let Some(responses) = op["responses"].as_object() {
        out.push_str(
            "<h3>Responses</h3><table><tr><th>Status</th><th>Description</th><th>Body</th></tr>",
        );
        for (status, r) in responses {
            let r = resolve(doc, r);
            let body = r["content"]
                .as_object()
                .map(|c| {
                    c.iter()
                        .map(|(media, c)| {
                            format!("<code>{}</code> {}", esc(media), type_of(&c["schema"]))
                        })
                        .collect::<Vec<_>>()
                        .join("<br>")
                })
                .unwrap_or_default();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(status),
                esc(&text(&r["description"])),
                body
            );
        }
        out.push_str("</table>");
    }
    out.push_str("</section>");
}

fn schema_section(out: &mut String, name: &str, schema: &Value) {
    let _ = write!(
        out,
        "<section id=\"schema-{n}\"><h3><code>{n}</code></h3><p>{d}</p>",
        n = esc(name),
        d = esc(&text(&schema["description"])),
    );
    match schema["properties"].as_object() {
        Some(props) => {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            out.push_str(
                "<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>",
            );
            for (field, p) in props {
                let _ = write!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    esc(field),
                    type_of(p),
                    if required.contains(&field.as_str()) {
                        "yes"
                    } else {
                        "no"
                    },
                    esc(&text(&p["description"])),
                );
            }
            out.push_str("</table>");
            if schema["additionalProperties"] == Value::Bool(false) {
                out.push_str("<p>Other fields are refused.</p>");
            }
        }
        None => {
            let _ = write!(out, "<p>Type: {}</p>", type_of(schema));
        }
    }
    out.push_str("</section>");
}

/// A short, linked description of a schema's type.
fn type_of(schema: &Value) -> String {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap_or(r);
        return format!("<a href=\"#schema-{n}\">{n}</a>", n = esc(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(alts) = schema[key].as_array() {
            return alts.iter().map(type_of).collect::<Vec<_>>().join(" | ");
        }
    }
    let mut kinds: Vec<String> = match &schema["type"] {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => vec![],
    };
    let mut shown: Vec<String> = kinds
        .drain(..)
        .map(|t| match t.as_str() {
            "array" => format!("array of {}", type_of(&schema["items"])),
            other => esc(other),
        })
        .collect();
    if shown.is_empty() {
        shown.push("any".into());
    }
    let mut result = shown.join(" | ");
    if let Some(format) = schema["format"].as_str() {
        let _ = write!(result, " ({})", esc(format));
    }
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", esc(&text(v))))
            .collect();
        let _ = write!(result, ": one of {}", values.join(", "));
    }
    for (key, label) in [
        ("minimum", "min"),
        ("maximum", "max"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
    ] {
        if let Some(n) = schema[key].as_i64() {
            let _ = write!(result, ", {label} {n}");
        }
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        let _ = write!(result, ", matching <code>{}</code>", esc(pattern));
    }
    result
}

/// Follows a `$ref` to a component (responses are shared that way).
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
        Some(path) => path.split('/').fold(doc, |node, key| &node[key]),
        None => v,
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
