//! The web UI at `/ui`: one page and its assets, compiled into the binary (no CDN, no build
//! step). It reads the admin cluster API (see docs/cluster.md).

use actix_web::{web, HttpResponse};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

pub fn config(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route("/ui/", web::get().to(|| asset(INDEX_HTML, "text/html; charset=utf-8")))
        .route(
            "/ui/app.js",
            web::get().to(|| asset(APP_JS, "text/javascript; charset=utf-8")),
        )
        .route(
            "/ui/style.css",
            web::get().to(|| asset(STYLE_CSS, "text/css; charset=utf-8")),
        );
}

async fn asset(body: &'static str, content_type: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("cache-control", "no-cache"))
        .body(body)
}
