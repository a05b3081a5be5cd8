//! Checks a declared runner (`runners.json`, `/registerLiveRunners` or a
//! heartbeat) into a [`RunnerSpec`], with go-livepeer's rules
//! (`ai/runner/live_runner.go` 491-528, 680-712, 829-918 at 176aa415).

use reqwest::Url;

use super::price::{PriceError, UsdPrice};
use super::wire::{GpuInfo, RunnerDecl};

/// Public runner metadata is capped (go-livepeer: 1 KiB).
pub const MAX_METADATA_BYTES: usize = 1024;
/// Sessions one runner may declare (go-livepeer has no cap).
pub const MAX_CAPACITY: i64 = 1024;
/// Other public text fields (go-livepeer has no cap).
pub const MAX_FIELD_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Reserve a session, make any number of requests on it, stop it.
    Persistent,
    /// Every request is a session of its own.
    SingleShot,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Persistent => "persistent",
            Mode::SingleShot => "single-shot",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// URLs name the runner by its generated ID.
    RunnerId,
    /// URLs name the runner by its label.
    Label,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub url: Url,
    pub status: u16,
}

/// A runner's declaration, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerSpec {
    pub label: String,
    pub routing: Routing,
    pub proxy: bool,
    pub runner_url: Url,
    /// Static runners only.
    pub health: Option<HealthCheck>,
    pub app: String,
    pub version: String,
    pub metadata: String,
    pub mode: Mode,
    pub capacity: u32,
    pub gpu: Option<GpuInfo>,
    /// `None` off chain (prices are ignored there) or when not given.
    pub price: Option<UsdPrice>,
    /// Lowercase; only `""` and `"ready"` take sessions.
    pub status: String,
}

impl RunnerSpec {
    pub fn is_ready(&self) -> bool {
        self.status.is_empty() || self.status == "ready"
    }

    /// Lowercased host of `runner_url`: the only host session proxies may target.
    pub fn host(&self) -> String {
        self.runner_url
            .host_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("label is required and must be trimmed")]
    NoLabel,
    #[error("label is required and must be trimmed")]
    LabelSpaces,
    #[error("label cannot contain / when routing is \"label\"")]
    LabelSlash,
    #[error("duplicate label {0:?}")]
    DuplicateLabel(String),
    #[error("routing must be \"runner-id\" or \"label\", not {0:?}")]
    Routing(String),
    #[error("app must be trimmed")]
    NoApp,
    #[error("invalid runner_url: {0}")]
    RunnerUrl(String),
    #[error("runner_url must not be {0}")]
    RunnerUrlTarget(&'static str),
    #[error("health_url is required")]
    NoHealthUrl,
    #[error("invalid health_url: {0}")]
    HealthUrl(String),
    #[error("healthy_status_code must be a valid HTTP status code")]
    HealthyStatus,
    #[error("metadata must be at most {MAX_METADATA_BYTES} bytes")]
    MetadataTooLong,
    #[error("metadata must not contain Unicode replacement character U+FFFD")]
    MetadataText,
    #[error("mode must be \"persistent\" or \"single-shot\" (got {0:?})")]
    Mode(String),
    #[error("capacity must be >= 0")]
    NegativeCapacity,
    #[error("capacity must be at most {MAX_CAPACITY}")]
    CapacityTooLarge,
    #[error("{0} must be at most {MAX_FIELD_BYTES} bytes")]
    FieldTooLong(&'static str),
    #[error("gpu must be an integer or {{\"id\",\"name\",\"vram_mb\"}}")]
    Gpu,
    #[error("price_info.price is required")]
    NoPrice,
    #[error("status must be lowercase and trimmed")]
    Status,
    #[error("price_info: {0}")]
    Price(#[from] PriceError),
}

/// Why a dynamic runner may not be reached at `url`, if it may not: a
/// runner registers with nothing but the bootstrap secret, and gateways'
/// requests then go where it says. Private and loopback addresses are
/// where runners normally live (go-livepeer allows any), but link-local
/// ones are cloud metadata services, and the orchestrator's own listeners
/// (`own`: the CLI port's `/registerLiveRunners` has no credentials, as in
/// go-livepeer) must not be reachable through its own proxy.
pub fn forbidden_target(url: &Url, own: &[std::net::SocketAddr]) -> Option<&'static str> {
    use std::net::IpAddr;
    let port = url.port_or_known_default()?;
    let host = url.host_str()?;
    let ip = match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        Ok(v4) => v4,
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
            } else {
                // A name is resolved when proxied; the proxy reaches only
                // this runner's host, whatever it resolves to.
                return None;
            }
        }
    };
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        return Some("a link-local address");
    }
    let local = ip.is_loopback() || ip.is_unspecified();
    let ours = own
        .iter()
        .any(|a| a.port() == port && (a.ip() == ip || local || a.ip().is_unspecified()));
    ours.then_some("one of the orchestrator's own listeners")
}

/// An absolute http(s) URL with a host.
fn http_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("{text:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{text:?} is not an absolute http(s) URL"));
    }
    Ok(url)
}

fn gpu(value: &serde_json::Value) -> Result<Option<GpuInfo>, SpecError> {
    match value {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Number(n) => {
            let n = n.as_i64().ok_or(SpecError::Gpu)?;
            Ok(Some(GpuInfo {
                id: n.to_string(),
                ..GpuInfo::default()
            }))
        }
        serde_json::Value::Object(_) => {
            let g: GpuInfo = serde_json::from_value(value.clone()).map_err(|_| SpecError::Gpu)?;
            if g.id.len() > MAX_FIELD_BYTES || g.name.len() > MAX_FIELD_BYTES {
                return Err(SpecError::FieldTooLong("gpu"));
            }
            Ok(Some(g))
        }
        _ => Err(SpecError::Gpu),
    }
}

/// Which checks apply: a static runner needs a label and a health URL; a
/// dynamic one neither. On chain a price is required.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub dynamic: bool,
    pub on_chain: bool,
}

pub fn check(decl: &RunnerDecl, rules: Rules) -> Result<RunnerSpec, SpecError> {
    let routing = match decl.routing.trim() {
        "" | "runner-id" => Routing::RunnerId,
        "label" if !rules.dynamic => Routing::Label,
        other => return Err(SpecError::Routing(other.to_string())),
    };
    if !rules.dynamic {
        if decl.label.is_empty() {
            return Err(SpecError::NoLabel);
        }
        if decl.label.trim() != decl.label {
            return Err(SpecError::LabelSpaces);
        }
        if routing == Routing::Label && decl.label.contains('/') {
            return Err(SpecError::LabelSlash);
        }
    }
    let app = decl.app.as_str();
    if app.is_empty() || app.trim() != app {
        return Err(SpecError::NoApp);
    }
    let runner_url = http_url(&decl.runner_url).map_err(SpecError::RunnerUrl)?;
    let health = if rules.dynamic {
        None
    } else {
        let h = decl.health_url.trim();
        if h.is_empty() {
            return Err(SpecError::NoHealthUrl);
        }
        let url = if h.starts_with('/') {
            let base = decl.runner_url.trim().trim_end_matches('/');
            http_url(&format!("{base}{h}"))
        } else {
            http_url(h)
        }
        .map_err(SpecError::HealthUrl)?;
        let status = match decl.healthy_status_code {
            0 => 200,
            s @ 100..=599 => s as u16,
            _ => return Err(SpecError::HealthyStatus),
        };
        Some(HealthCheck { url, status })
    };
    if decl.metadata.len() > MAX_METADATA_BYTES {
        return Err(SpecError::MetadataTooLong);
    }
    // JSON decoding already made it UTF-8; a replacement character means
    // the sender's bytes were not text.
    if decl.metadata.contains('\u{FFFD}') {
        return Err(SpecError::MetadataText);
    }
    if decl.status != decl.status.trim().to_lowercase() {
        return Err(SpecError::Status);
    }
    let mode = match decl.mode.trim().to_ascii_lowercase().as_str() {
        "" | "persistent" => Mode::Persistent,
        "single-shot" | "single_shot" => Mode::SingleShot,
        other => return Err(SpecError::Mode(other.to_string())),
    };
    if decl.capacity < 0 {
        return Err(SpecError::NegativeCapacity);
    }
    if decl.capacity > MAX_CAPACITY {
        return Err(SpecError::CapacityTooLarge);
    }
    let capacity = decl.capacity.max(1) as u32;
    // Every field is public in discovery and kept in the snapshot.
    for (name, value) in [
        ("label", &decl.label),
        ("app", &decl.app),
        ("version", &decl.version),
        ("status", &decl.status),
        ("runner_id", &decl.runner_id),
    ] {
        if value.len() > MAX_FIELD_BYTES {
            return Err(SpecError::FieldTooLong(name));
        }
    }
    if decl.runner_url.len() > 2048 || decl.health_url.len() > 2048 {
        return Err(SpecError::FieldTooLong("runner_url"));
    }
    let price = match &decl.price_info {
        _ if !rules.on_chain => None,
        None => return Err(SpecError::NoPrice),
        Some(p) => {
            let text = match &p.price {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => return Err(SpecError::NoPrice),
                other => other.to_string(),
            };
            Some(UsdPrice::parse(&text, &p.currency, &p.unit)?)
        }
    };
    Ok(RunnerSpec {
        label: decl.label.clone(),
        routing,
        proxy: decl.proxy,
        runner_url,
        health,
        app: app.to_string(),
        version: decl.version.clone(),
        metadata: decl.metadata.clone(),
        mode,
        capacity,
        gpu: gpu(&decl.gpu)?,
        price,
        status: decl.status.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_targets_the_orchestrator_or_metadata_are_refused() {
        let own: Vec<std::net::SocketAddr> = vec![
            "127.0.0.1:7935".parse().unwrap(),
            "0.0.0.0:8935".parse().unwrap(),
        ];
        let t = |u: &str| forbidden_target(&Url::parse(u).unwrap(), &own);
        assert_eq!(
            t("http://127.0.0.1:7935/"),
            Some("one of the orchestrator's own listeners")
        );
        assert!(t("http://localhost:7935").is_some());
        assert!(t("http://[::1]:8935").is_some());
        assert!(t("http://[::ffff:127.0.0.1]:7935").is_some());
        assert!(
            t("https://10.0.0.1:8935").is_some(),
            "any address of a listener on 0.0.0.0"
        );
        assert_eq!(
            t("http://169.254.169.254/latest"),
            Some("a link-local address")
        );
        assert!(t("http://[fe80::1]:80").is_some());
        // Where runners live: loopback and private addresses on other ports.
        assert_eq!(t("http://127.0.0.1:9000"), None);
        assert_eq!(t("http://10.0.0.5:7935"), None);
        assert_eq!(t("http://runner.internal:8935"), None);
    }

    fn decl(json: serde_json::Value) -> RunnerDecl {
        serde_json::from_value(json).unwrap()
    }

    const STATIC: Rules = Rules {
        dynamic: false,
        on_chain: false,
    };

    #[test]
    fn a_static_runner_is_checked_as_go_livepeer_checks_it() {
        let ok = serde_json::json!({
            "label": "scope-a", "runner_url": "http://10.0.0.5:8000/", "health_url": "/health",
            "app": "live-video-to-video/scope", "mode": "single_shot", "capacity": 0, "gpu": 1,
            "unknown_field": true
        });
        let s = check(&decl(ok.clone()), STATIC).unwrap();
        assert_eq!(s.app, "live-video-to-video/scope");
        assert_eq!(s.mode, Mode::SingleShot);
        assert_eq!(s.capacity, 1);
        assert_eq!(s.gpu.unwrap().id, "1");
        let h = s.health.unwrap();
        assert_eq!(h.url.as_str(), "http://10.0.0.5:8000/health");
        assert_eq!(h.status, 200);
        assert_eq!(s.price, None, "prices are ignored off chain");

        let bad = |patch: serde_json::Value| {
            let mut v = ok.clone();
            for (k, val) in patch.as_object().unwrap() {
                v[k] = val.clone();
            }
            check(&decl(v), STATIC).unwrap_err()
        };
        assert_eq!(bad(serde_json::json!({"label": ""})), SpecError::NoLabel);
        assert_eq!(
            bad(serde_json::json!({"label": " a"})),
            SpecError::LabelSpaces
        );
        assert_eq!(
            bad(serde_json::json!({"label": "a/b", "routing": "label"})),
            SpecError::LabelSlash
        );
        assert_eq!(bad(serde_json::json!({"app": "  "})), SpecError::NoApp);
        assert_eq!(bad(serde_json::json!({"app": " a"})), SpecError::NoApp);
        assert_eq!(
            bad(serde_json::json!({"status": "Ready"})),
            SpecError::Status
        );
        assert!(matches!(
            bad(serde_json::json!({"runner_url": "ftp://x/"})),
            SpecError::RunnerUrl(_)
        ));
        assert!(matches!(
            bad(serde_json::json!({"runner_url": "/relative"})),
            SpecError::RunnerUrl(_)
        ));
        assert_eq!(
            bad(serde_json::json!({"health_url": ""})),
            SpecError::NoHealthUrl
        );
        assert_eq!(
            bad(serde_json::json!({"healthy_status_code": 99})),
            SpecError::HealthyStatus
        );
        assert_eq!(
            bad(serde_json::json!({"metadata": "x".repeat(1025)})),
            SpecError::MetadataTooLong
        );
        assert_eq!(
            bad(serde_json::json!({"metadata": "bad \u{FFFD}"})),
            SpecError::MetadataText
        );
        assert!(matches!(
            bad(serde_json::json!({"mode": "batch"})),
            SpecError::Mode(_)
        ));
        assert_eq!(
            bad(serde_json::json!({"capacity": -1})),
            SpecError::NegativeCapacity
        );
        assert_eq!(bad(serde_json::json!({"gpu": "zero"})), SpecError::Gpu);
        // 1 KiB of metadata exactly is fine.
        let mut v = ok.clone();
        v["metadata"] = serde_json::json!("x".repeat(1024));
        assert!(check(&decl(v), STATIC).is_ok());
    }

    #[test]
    fn on_chain_a_price_in_usd_is_required() {
        let rules = Rules {
            dynamic: true,
            on_chain: true,
        };
        let base = serde_json::json!({"runner_url": "http://r:1", "app": "a"});
        assert_eq!(
            check(&decl(base.clone()), rules).unwrap_err(),
            SpecError::NoPrice
        );
        let mut priced = base.clone();
        priced["price_info"] = serde_json::json!({"price": "0.5", "unit": "720p"});
        let s = check(&decl(priced), rules).unwrap();
        assert_eq!(s.price.unwrap().to_decimal_string(), "0.5");
        let mut zero = base;
        zero["price_info"] = serde_json::json!({"price": 0});
        assert_eq!(
            check(&decl(zero), rules).unwrap_err(),
            SpecError::Price(PriceError::NotPositive)
        );
    }
}
