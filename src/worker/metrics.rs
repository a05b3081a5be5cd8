//! Prometheus metrics of the worker, and the `/metrics` HTTP endpoint.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Buckets from 1 ms to ~2 min: queue times are tiny, compute times are seconds.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub segments: IntCounterVec,
    pub renditions: IntCounterVec,
    pub pixels: IntCounterVec,
    pub errors: IntCounterVec,
    pub rejected: IntCounterVec,
    pub in_flight: IntGauge,
    pub capacity: IntGauge,
    pub queue_seconds: HistogramVec,
    pub compute_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("lpworker".into()), None).expect("valid prefix");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid gauge");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(SECONDS_BUCKETS.to_vec()),
                &["backend"],
            )
            .expect("valid histogram");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        Metrics {
            requests: counter(
                "requests_total",
                "gRPC requests by method and status code",
                &["method", "code"],
            ),
            segments: counter("segments_total", "Segments transcoded", &["backend"]),
            renditions: counter(
                "renditions_total",
                "Renditions encoded",
                &["backend", "profile"],
            ),
            pixels: counter(
                "pixels_total",
                "Pixels decoded and encoded",
                &["backend", "stage"],
            ),
            errors: counter(
                "errors_total",
                "Failed requests by error kind",
                &["backend", "kind"],
            ),
            rejected: counter(
                "rejected_total",
                "Requests refused by admission control",
                &["reason"],
            ),
            in_flight: gauge("in_flight_requests", "Requests being worked on"),
            capacity: gauge(
                "capacity_sessions",
                "Concurrent sessions admitted (-maxSessions)",
            ),
            queue_seconds: histogram("queue_seconds", "Time from arrival to the engine starting"),
            compute_seconds: histogram("compute_seconds", "Engine time per segment"),
            registry,
        }
    }

    /// The registry in Prometheus' text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("Prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` (and `/healthz`) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_registry(listener, metrics.registry, shutdown).await
}

/// Renders a registry in Prometheus' text exposition format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("Prometheus text is UTF-8")
}

/// Serves any registry's `GET /metrics` (and `/healthz`) until `shutdown`.
pub async fn serve_registry(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let r = registry.clone();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        render(&r),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
