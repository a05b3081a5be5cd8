//! `-liveRunnerProxyUrl`: where session proxies and single-shot `proxy`
//! runners are published. A template with exactly one `{proxy}`, either in
//! the host (`https://{proxy}.run.example.com`) or as the last path
//! segment (go-livepeer's default `{serviceURI}/run/{proxy}`;
//! `ai/runner/live_runner.go` 530-627 at 176aa415). Requests that match
//! it are taken before any other route.

use reqwest::Url;

const PLACEHOLDER: &str = "{proxy}";
/// Stands in for `{proxy}` while the template is parsed as a URL.
const MARKER: &str = "lpproxymarker";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Form {
    /// `{proxy}` in the host: `prefix{id}suffix` is the whole host name.
    Host { prefix: String, suffix: String },
    /// `{proxy}` as the last path segment after `prefix` (ends with `/`),
    /// on the template's own `host` (with its port).
    Path { host: String, prefix: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyTemplate {
    template: String,
    form: Form,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyTemplateError {
    #[error("the proxy URL template must contain {{proxy}} exactly once: {0:?}")]
    Placeholder(String),
    #[error("the proxy URL template is not an absolute http(s) URL: {0:?}")]
    NotUrl(String),
    #[error("{{proxy}} must be in the host or be the last path segment: {0:?}")]
    Position(String),
}

impl ProxyTemplate {
    /// `template` with `{serviceURI}` standing for the public service URI.
    pub fn parse(template: &str, service_uri: &str) -> Result<ProxyTemplate, ProxyTemplateError> {
        let template = template
            .trim()
            .replace("{serviceURI}", service_uri.trim_end_matches('/'));
        if template.matches(PLACEHOLDER).count() != 1 {
            return Err(ProxyTemplateError::Placeholder(template));
        }
        let url = Url::parse(&template.replace(PLACEHOLDER, MARKER))
            .map_err(|_| ProxyTemplateError::NotUrl(template.clone()))?;
        if !matches!(url.scheme(), "http" | "https") || url.query().is_some() {
            return Err(ProxyTemplateError::NotUrl(template));
        }
        let host = url.host_str().unwrap_or_default();
        let form = if let Some(at) = host.find(MARKER) {
            if url.path().contains(MARKER) {
                return Err(ProxyTemplateError::Position(template));
            }
            Form::Host {
                prefix: host[..at].to_string(),
                suffix: host[at + MARKER.len()..].to_string(),
            }
        } else {
            let path = url.path();
            match path.strip_suffix(MARKER) {
                Some(prefix) if prefix.ends_with('/') => Form::Path {
                    host: match url.port() {
                        Some(port) => format!("{host}:{port}"),
                        None => host.to_string(),
                    },
                    prefix: prefix.to_string(),
                },
                _ => return Err(ProxyTemplateError::Position(template)),
            }
        };
        Ok(ProxyTemplate { template, form })
    }

    /// The public URL of proxy `id`.
    pub fn url(&self, id: &str) -> String {
        self.template.replace(PLACEHOLDER, id)
    }

    /// The proxy ID a request is for and the path to forward, if the
    /// request's host (`Host`, port ignored) and path match the template.
    pub fn matches<'a>(&self, host: &str, path: &'a str) -> Option<(String, &'a str)> {
        match &self.form {
            Form::Host { prefix, suffix } => {
                let name = host.rsplit_once(':').map_or(host, |(h, port)| {
                    if port.bytes().all(|b| b.is_ascii_digit()) {
                        h
                    } else {
                        host
                    }
                });
                let name = name.to_ascii_lowercase();
                let id = name
                    .strip_prefix(prefix.as_str())?
                    .strip_suffix(suffix.as_str())?;
                valid_id(id).then(|| (id.to_string(), path))
            }
            // As go-livepeer: the host (with its port) matches in any case,
            // the path prefix and the ID exactly.
            Form::Path { host: own, prefix } => {
                if !host.eq_ignore_ascii_case(own) {
                    return None;
                }
                let rest = path.strip_prefix(prefix.as_str())?;
                let (id, forwarded) = match rest.find('/') {
                    Some(i) => (&rest[..i], &rest[i..]),
                    None => (rest, ""),
                };
                valid_id(id).then(|| (id.to_string(), forwarded))
            }
        }
    }
}

/// Proxy IDs and routes are base32 and ID characters only.
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_template_is_a_path_under_the_service_uri() {
        let t =
            ProxyTemplate::parse("{serviceURI}/run/{proxy}", "https://o.example:8935/").unwrap();
        assert_eq!(t.url("abc"), "https://o.example:8935/run/abc");
        assert_eq!(
            t.matches("O.example:8935", "/run/abc/v1/x"),
            Some(("abc".into(), "/v1/x"))
        );
        assert_eq!(
            t.matches("o.example:8935", "/run/abc"),
            Some(("abc".into(), ""))
        );
        assert_eq!(t.matches("o.example", "/run/abc"), None, "another port");
        assert_eq!(t.matches("o.example:8935", "/RUN/abc"), None);
        assert_eq!(t.matches("o.example:8935", "/run/"), None);
        assert_eq!(t.matches("o.example:8935", "/running/abc"), None);
        assert_eq!(t.matches("o.example:8935", "/apps/x"), None);
    }

    #[test]
    fn a_host_template_matches_the_host_name() {
        let t = ProxyTemplate::parse("https://{proxy}.run.example.com", "https://o:1").unwrap();
        assert_eq!(t.url("abc"), "https://abc.run.example.com");
        assert_eq!(
            t.matches("ABC.run.example.com:443", "/v1"),
            Some(("abc".into(), "/v1"))
        );
        assert_eq!(t.matches("run.example.com", "/v1"), None);
        assert_eq!(t.matches("abc.other.com", "/v1"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        let svc = "https://o:1";
        assert!(matches!(
            ProxyTemplate::parse("https://x/run", svc),
            Err(ProxyTemplateError::Placeholder(_))
        ));
        assert!(matches!(
            ProxyTemplate::parse("https://x/{proxy}/{proxy}", svc),
            Err(ProxyTemplateError::Placeholder(_))
        ));
        assert!(matches!(
            ProxyTemplate::parse("https://x/run/{proxy}/more", svc),
            Err(ProxyTemplateError::Position(_))
        ));
        assert!(matches!(
            ProxyTemplate::parse("ftp://x/{proxy}", svc),
            Err(ProxyTemplateError::NotUrl(_))
        ));
    }
}
