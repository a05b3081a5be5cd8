//! The reverse proxy to runners, as go-livepeer's (`httputil.ReverseProxy`
//! with `Rewrite`, `server/ai_http.go` 835-865 at 176aa415): method, query,
//! headers and body kept; the path joined onto the target's; hop-by-hop and
//! `Forwarded`/`X-Forwarded-*` headers dropped; the session headers set.
//! Bodies stream both ways unbuffered (SSE arrives event by event), and a
//! WebSocket upgrade is passed through as a byte pipe.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use reqwest::Url;

use crate::live_runner::wire::headers as lr;
use crate::live_runner::SessionGrant;

/// Headers that belong to one connection, never forwarded (RFC 9110 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers of this orchestrator's own protocol: the runner has no use for
/// a gateway's tickets (go-livepeer passes them on).
const CONSUMED: [&str; 2] = ["livepeer-payment", "livepeer-segment"];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&listed) {
        headers.remove(name);
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// `target`'s path joined with `app_path` as Go's `url.JoinPath("/",
/// target.Path, appPath)`: dot segments resolved (never above the
/// target's root), empty segments dropped, a trailing slash kept.
pub fn join_path(target: &str, app_path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in target.split('/').chain(app_path.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut path = format!("/{}", out.join("/"));
    if app_path.ends_with('/') && path != "/" {
        path.push('/');
    }
    path
}

/// The four headers a runner is told its session by (route, ID, token,
/// callback base), overwriting any the client sent.
pub fn set_session_headers(headers: &mut HeaderMap, grant: &SessionGrant) {
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    set(lr::ROUTE, &grant.route);
    set(lr::SESSION_ID, &grant.sid);
    set(lr::SESSION_TOKEN, &grant.token);
    set(lr::SESSION_CONTROL, &grant.control);
}

/// The URL a request is forwarded to.
pub fn target_url(target: &Url, app_path: &str, query: Option<&str>) -> Url {
    let mut url = target.clone();
    url.set_path(&join_path(target.path(), app_path));
    url.set_query(query);
    url.set_fragment(None);
    url
}

/// How long requests in flight on a session may still finish once it has
/// ended: a runner that stops its own session from a request handler still
/// answers it, while a stream left open (SSE, WebSocket) is cut soon after.
const END_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

fn bad_gateway(error: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_GATEWAY, format!("{error}\n")).into_response()
}

/// Forwards `request` to `target` + `app_path`, as `grant`'s session.
/// `done` is kept alive until the response body has been sent (a
/// single-shot session is released when it drops).
pub async fn forward<G: Send + 'static>(
    client: &reqwest::Client,
    mut request: Request,
    target: &Url,
    app_path: &str,
    grant: &SessionGrant,
    done: G,
) -> Response {
    let Ok(permit) = grant.in_flight.clone().try_acquire_owned() else {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests in flight on this session\n",
        )
            .into_response();
    };
    // Held until the response (or the upgraded pipe) is done.
    let done = (done, permit);
    let url = target_url(target, app_path, request.uri().query());
    let upgrade = is_upgrade(request.headers());
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    // A body is sent only when the client sent one: an empty streamed body
    // would reach the runner as a chunked GET.
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(HeaderName::from_static("forwarded"));
    for name in ["x-forwarded-for", "x-forwarded-host", "x-forwarded-proto"]
        .iter()
        .chain(&CONSUMED)
    {
        headers.remove(*name);
    }
    set_session_headers(&mut headers, grant);
    if let Some(proto) = &upgrade_to {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, proto.clone());
    }
    let mut outbound = client.request(parts.method.clone(), url).headers(headers);
    if has_body && !upgrade {
        outbound = outbound.body(reqwest::Body::wrap_stream(body.into_data_stream()));
    }
    let cancel = grant.cancel.clone();
    let ended = async move {
        cancel.cancelled().await;
        tokio::time::sleep(END_GRACE).await;
    };
    let ended = futures::FutureExt::shared(Box::pin(ended));
    let response = tokio::select! {
        r = outbound.send() => r,
        _ = ended.clone() => {
            return (StatusCode::SERVICE_UNAVAILABLE, "live runner session ended\n").into_response()
        }
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(session = %grant.sid, error = %e, "live runner unreachable");
            // Without the URL: it is the runner's private address.
            return bad_gateway(e.without_url());
        }
    };
    let status = response.status();
    let mut out_headers = response.headers().clone();
    if status == StatusCode::SWITCHING_PROTOCOLS {
        let Some(on_upgrade) = on_upgrade else {
            return bad_gateway("the runner switched protocols unasked");
        };
        let upstream_proto = out_headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut out_headers);
        out_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = upstream_proto {
            out_headers.insert(header::UPGRADE, p);
        }
        let sid = grant.sid.clone();
        tokio::spawn(async move {
            let _done = done;
            let (client_side, runner_side) = match tokio::join!(on_upgrade, response.upgrade()) {
                (Ok(c), Ok(r)) => (c, r),
                (c, r) => {
                    tracing::debug!(session = %sid, client = c.is_ok(), runner = r.is_ok(), "upgrade not completed");
                    return;
                }
            };
            let mut client_io = hyper_util::rt::TokioIo::new(client_side);
            let mut runner_io = runner_side;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client_io, &mut runner_io) => {}
                // The session ended: the pipe closes with it.
                _ = ended => {}
            }
        });
        let mut r = Response::new(Body::empty());
        *r.status_mut() = status;
        *r.headers_mut() = out_headers;
        return r;
    }
    strip_hop_by_hop(&mut out_headers);
    // The body is passed on chunk by chunk as it arrives, until the session ends.
    let body = response.bytes_stream().take_until(ended).map(move |chunk| {
        let _keep = &done;
        chunk
    });
    let mut r = Response::new(Body::from_stream(body));
    *r.status_mut() = status;
    *r.headers_mut() = out_headers;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_as_gos_join_path() {
        assert_eq!(join_path("/base", "v1/foo"), "/base/v1/foo");
        assert_eq!(join_path("/base/", "/v1/foo/"), "/base/v1/foo/");
        assert_eq!(join_path("", ""), "/");
        assert_eq!(join_path("/", "/"), "/");
        assert_eq!(join_path("/base", "../../etc/passwd"), "/etc/passwd");
        assert_eq!(join_path("/a", "b//c/./d"), "/a/b/c/d");
        let t = Url::parse("http://r:9/base?secret=1").unwrap();
        assert_eq!(
            target_url(&t, "/v1/foo", Some("x=1")).as_str(),
            "http://r:9/base/v1/foo?x=1"
        );
        assert_eq!(target_url(&t, "", None).as_str(), "http://r:9/base");
    }

    #[test]
    fn connection_listed_headers_are_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("x-private, close"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }
}
