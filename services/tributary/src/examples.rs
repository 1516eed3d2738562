//! `/examples/`: pages served by the server itself that show a feature working against it (the
//! Web Push example registers a browser for an app's pushes; docs/push.md).

use axum::Router;
use axum::http::header;
use axum::routing::get;

const WEB_PUSH_PAGE: &str = include_str!("examples/web-push.html");
const WEB_PUSH_WORKER: &str = include_str!("examples/web-push-sw.js");

/// The examples' routes.
pub fn router() -> Router {
    Router::new()
        .route(
            "/examples/web-push.html",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], WEB_PUSH_PAGE) }),
        )
        .route(
            "/examples/web-push-sw.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        // A service worker's scope is at most its own directory: /examples/.
                        (header::HeaderName::from_static("service-worker-allowed"), "/examples/"),
                    ],
                    WEB_PUSH_WORKER,
                )
            }),
        )
}
