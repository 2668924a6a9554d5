//! The admin listener: `/metrics` for Prometheus, `/healthz` and `/readyz` for orchestrators,
//! `POST /reload` for `wsgate reload` and deploy hooks; the status page and session API
//! (src/ops/api.rs) take `/`, `/assets/` and `/api/`, the session watch WebSocket included
//! (src/ops/watch.rs).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::api::OpsApi;
use super::reload::{ReloadHandle, Trigger};
use crate::http_util::{text, typed, Body};
use crate::policy::descriptors;

/// Serve admin requests until `stop`; each connection ends with `stop` too.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    ready: Arc<AtomicBool>,
    api: Arc<OpsApi>,
    reload: ReloadHandle,
    stop: CancellationToken,
) {
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors: wait as the public listeners do instead of spinning.
                if let Some(wait) = descriptors::after_accept_error(&e, "admin_accept") {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => break,
                    }
                }
                continue;
            }
        };
        // The address this connection arrived at: the name `Host` may carry (`OpsApi::refuse`).
        let local = stream.local_addr().ok();
        let (handle, ready, api, stop) = (handle.clone(), ready.clone(), api.clone(), stop.clone());
        let reload = reload.clone();
        tracker.spawn(async move {
            let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                // A reload is the one answer that waits; the rest are immediate. A watch
                // (`/api/sessions/{id}/watch`) is a WebSocket: its `101` is immediate, and
                // the watch runs on the API's tasks.
                let refused = api.refuse(&req, local);
                let immediate = refused.or_else(|| api.watch(&mut req, peer)).or_else(|| {
                    (req.uri().path() != "/reload").then(|| {
                        api.answer(&req)
                            .unwrap_or_else(|| answer(&req, &handle, &ready))
                    })
                });
                let reload = reload.clone();
                async move {
                    Ok::<_, Infallible>(match immediate {
                        Some(response) => response,
                        None => reload_answer(req.method(), &reload).await,
                    })
                }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::select! {
                r = conn => if let Err(e) = r { debug!(error = %e, "admin connection") },
                () = stop.cancelled() => {}
            }
        });
    }
    tracker.close();
    tracker.wait().await;
}

/// `POST /reload`: 200 with what changed, or 422 with why the new config was refused (the
/// running config stays). Behind the admin token when one is set, and refused from another
/// origin (`OpsApi::refuse`): a reload can change what the gateway serves.
async fn reload_answer(method: &Method, reload: &ReloadHandle) -> Response<Body> {
    let (status, body) = if method != Method::POST {
        (StatusCode::METHOD_NOT_ALLOWED, "POST only\n".to_owned())
    } else {
        match reload.reload(Trigger::Admin).await {
            Ok(summary) => (StatusCode::OK, format!("reloaded: {summary}\n")),
            Err(why) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload refused, the running config stays: {why}\n"),
            ),
        }
    };
    text(status, body)
}

fn answer<B>(req: &Request<B>, handle: &PrometheusHandle, ready: &AtomicBool) -> Response<Body> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (&Method::GET, "/readyz") if ready.load(Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", "ready\n".to_owned())
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only (POST for /reload)\n".to_owned(),
        ),
    };
    typed(status, content_type, body)
}
