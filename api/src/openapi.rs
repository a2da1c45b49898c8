//! The OpenAPI document, generated from the handlers' annotations. It is served
//! at /openapi.json and committed as proto-schemas/openapi.json (a test holds
//! the two equal).

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::OpenApi;

use crate::routes;

#[derive(OpenApi)]
#[openapi(
    info(title = "Keel", description = "A self-hosted durable workflow engine on Redis. Errors are RFC 9457 problem details \
        (application/problem+json) with a stable `type`. When tokens are configured, send `Authorization: Bearer <token>`; \
        read-only tokens may only GET."),
    paths(
        routes::health::healthz, routes::health::readyz, crate::metrics::scrape,
        routes::workflows::list,
        routes::runs::start, routes::runs::list, routes::runs::detail, routes::runs::journal, routes::runs::result, routes::runs::events,
        routes::runs::cancel, routes::runs::pause, routes::runs::resume, routes::runs::retry,
        routes::events::send,
        routes::webhooks::create, routes::webhooks::list, routes::webhooks::get_one, routes::webhooks::delete,
        routes::webhooks::deliveries, routes::webhooks::signing_key,
        routes::signing_keys::rotate, routes::signing_keys::retire,
        routes::schedules::put, routes::schedules::list, routes::schedules::get_one, routes::schedules::delete,
        routes::schedules::pause, routes::schedules::resume, routes::schedules::trigger,
        routes::flow_control::list, routes::flow_control::get_one, routes::flow_control::put,
        routes::flow_control::clear, routes::flow_control::pause, routes::flow_control::resume,
    ),
    components(schemas(keel_proto::WebhookPayload)),
    modifiers(&BearerAuth),
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security =
            Some(vec![utoipa::openapi::security::SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The document as pretty JSON (what is served and committed).
pub fn openapi_json() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default() + "\n"
}

pub(crate) async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json())
}
