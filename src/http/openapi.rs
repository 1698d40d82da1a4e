//! The OpenAPI 3.1 document of the HTTP surface, assembled from the handlers'
//! own annotations and types so it cannot drift from them, served at
//! `/openapi.json`, and a reference page rendered from it at `/docs`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema, Type};
use utoipa::{Modify, OpenApi, PartialSchema, ToResponse, ToSchema};

use super::error::{ErrorBody, ErrorDetail};
use super::messages;
use crate::domain::{Outcome, State};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "rbm-fallback",
        description = "Takes RCS Business Messaging messages with a deadline, either sent by the \
            agent (track mode) or sent by rbm-fallback itself (send mode, with an `rcs` object); \
            a message not delivered by then is revoked at Google and sent as SMS through \
            Twilio, as each message's policy says. \
            Every error has the body `{\"error\": {\"code\", \"message\", \"field\"?}}`."
    ),
    paths(
        messages::create,
        messages::create_batch,
        messages::list,
        messages::get,
        messages::cancel,
        super::healthz,
        super::readyz,
        super::rbm_webhook::receive,
        super::rbm_webhook::receive_agent,
        super::twilio_webhook::status,
    ),
    components(
        schemas(ErrorBody, ErrorDetail, MessageState, MessageOutcome),
        responses(
            Unauthorized,
            NotFound,
            InvalidField,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unavailable
        )
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "messages", description = "The internal API your RBM agent calls."),
        (name = "webhooks", description = "Called by Google and Twilio, authenticated by their signatures."),
        (name = "health", description = "Liveness and readiness, without authentication."),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.description = Some("One of `server.api_tokens` (RBMF_API_TOKEN).".into());
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The document, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
        doc
    })
}

/// `GET /openapi.json`.
pub async fn json() -> Response {
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(|| {
        serde_json::to_string_pretty(document()).expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

/// `GET /docs`.
pub async fn docs() -> Html<&'static str> {
    static PAGE: OnceLock<String> = OnceLock::new();
    Html(PAGE.get_or_init(|| {
        let value = serde_json::to_value(document()).expect("the OpenAPI document serializes");
        super::docs::render(&value)
    }))
}

/// The state names, taken from the domain's own list.
pub struct MessageState;

impl PartialSchema for MessageState {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some("Where the message is in its life."))
            .enum_values(Some(State::ALL.iter().map(|s| s.as_str())))
            .into()
    }
}

impl ToSchema for MessageState {}

/// The outcome names, taken from the domain's own list.
pub struct MessageOutcome;

impl PartialSchema for MessageOutcome {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "How the user was reached so far: `rcs`, `sms`, `both` or `none`.",
            ))
            .enum_values(Some(Outcome::ALL.iter().map(|s| s.as_str())))
            .into()
    }
}

impl ToSchema for MessageOutcome {}

// Error answers shared by several operations.

#[derive(ToResponse)]
#[response(
    description = "`unauthorized`: the bearer token is missing or wrong.",
    headers(("WWW-Authenticate" = String, description = "`Bearer`"))
)]
pub struct Unauthorized(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "`not_found`: no such message.")]
pub struct NotFound(pub ErrorBody);

#[derive(ToResponse)]
#[response(
    description = "`invalid_field`: a field is missing, unknown or invalid; `field` names it."
)]
pub struct InvalidField(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "`payload_too_large`: the body is over `server.body_limit_bytes`.")]
pub struct PayloadTooLarge(pub ErrorBody);

#[derive(ToResponse)]
#[response(description = "`unsupported_media_type`: the body is not `application/json`.")]
pub struct UnsupportedMediaType(pub ErrorBody);

#[derive(ToResponse)]
#[response(
    description = "`unavailable`: the database cannot be reached; `timeout`: the request took \
        longer than `server.request_timeout_ms`. Retry later."
)]
pub struct Unavailable(pub ErrorBody);
