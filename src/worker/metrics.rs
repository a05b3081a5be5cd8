//! Prometheus metrics of the worker, and the `/metrics` HTTP endpoint.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

use crate::video::{Refusal, TranscodeOutput, VideoError, VideoMetrics};

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
        let metrics = Metrics {
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
        };
        #[cfg(feature = "nvidia")]
        metrics
            .registry
            .register(Box::new(GpuFaults(
                prometheus::IntCounter::new(
                    "gpu_faults_total",
                    "GPUs taken out of rotation after a sticky CUDA error",
                )
                .expect("valid counter"),
            )))
            .expect("unique metric");
        metrics
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

/// The NVIDIA backend's count of GPU faults, read when scraped: the backend
/// counts them itself, since a fault is found deep in a GPU stage, far from
/// any request's metrics.
#[cfg(feature = "nvidia")]
struct GpuFaults(prometheus::IntCounter);

#[cfg(feature = "nvidia")]
impl prometheus::core::Collector for GpuFaults {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let faults = crate::video::nvidia::device::faults_total();
        self.0.inc_by(faults.saturating_sub(self.0.get()));
        self.0.collect()
    }
}

/// The video service's hooks: admission, queue and compute time, segments,
/// renditions, pixels and errors by kind.
impl VideoMetrics for Metrics {
    fn in_flight(&self, in_flight: u32) {
        self.in_flight.set(i64::from(in_flight));
    }

    fn refused(&self, refusal: Refusal) {
        let reason = match refusal {
            Refusal::Full { .. } => "full",
            Refusal::Draining => "draining",
        };
        self.rejected.with_label_values(&[reason]).inc();
    }

    fn started(&self, backend: &'static str, queued: Duration) {
        self.queue_seconds
            .with_label_values(&[backend])
            .observe(queued.as_secs_f64());
    }

    fn finished(&self, backend: &'static str, output: &TranscodeOutput) {
        self.compute_seconds
            .with_label_values(&[backend])
            .observe(output.elapsed.as_secs_f64());
        self.segments.with_label_values(&[backend]).inc();
        self.pixels
            .with_label_values(&[backend, "decoded"])
            .inc_by(output.decoded.pixels);
        for r in &output.renditions {
            self.count_rendition(backend, &r.profile);
            self.pixels
                .with_label_values(&[backend, "encoded"])
                .inc_by(r.encoded.pixels);
        }
    }

    fn failed(&self, backend: &'static str, error: &VideoError) {
        self.errors
            .with_label_values(&[backend, error.kind()])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// One rendition encoded. Profile names are the gateway's choice, so only
    /// the predefined ones become label values; any other is `custom`.
    fn count_rendition(&self, backend: &'static str, profile: &str) {
        self.renditions
            .with_label_values(&[backend, profile_label(profile)])
            .inc();
    }
}

/// A profile name as a label value: a predefined profile's own name (a fixed
/// set), else `custom`, so that request data cannot add series.
pub fn profile_label(name: &str) -> &str {
    let standard = crate::video::VideoProfile::standard_profiles()
        .iter()
        .any(|p| p.name == name);
    if standard {
        name
    } else {
        "custom"
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
    axum::serve(crate::log_limit::Listener::new(listener, "metrics"), app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_labels_are_predefined_names_or_custom() {
        assert_eq!(profile_label("P360p30fps16x9"), "P360p30fps16x9");
        assert_eq!(profile_label("P1080p30fps16x9"), "P1080p30fps16x9");
        assert_eq!(profile_label("hi720"), "custom");
        assert_eq!(profile_label(""), "custom");
        assert_eq!(profile_label(&"x".repeat(4096)), "custom");
    }

    /// Unique long profile names per segment add no series.
    #[test]
    fn gateway_chosen_profile_names_do_not_grow_the_series() {
        let metrics = Metrics::new();
        for i in 0..10_000 {
            metrics.count_rendition("cpu", &format!("{i}{}", "p".repeat(4096)));
        }
        metrics.count_rendition("cpu", "P240p30fps16x9");
        let text = render(&metrics.registry);
        let series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("lpworker_renditions_total{"))
            .collect();
        assert_eq!(series.len(), 2, "{series:?}");
        assert!(
            text.contains("lpworker_renditions_total{backend=\"cpu\",profile=\"custom\"} 10000")
        );
        assert!(text
            .contains("lpworker_renditions_total{backend=\"cpu\",profile=\"P240p30fps16x9\"} 1"));
        assert!(text.len() < 16 << 10);
    }

    #[cfg(feature = "nvidia")]
    #[test]
    fn gpu_faults_are_scraped_from_the_nvidia_backend() {
        let text = render(&Metrics::new().registry);
        let faults = crate::video::nvidia::device::faults_total();
        assert!(
            text.contains(&format!("lpworker_gpu_faults_total {faults}")),
            "{text}"
        );
    }
}
