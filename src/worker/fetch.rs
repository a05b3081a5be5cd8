//! Fetching a segment by URL, bounded in size and time.

use std::time::Duration;

use futures::StreamExt;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("segment URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("segment at {url} is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("fetching {url} failed: {source}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("fetching {url} returned HTTP {status}")]
    Status { url: String, status: u16 },
}

/// An HTTP client for segment URLs.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    max_bytes: usize,
}

impl Fetcher {
    /// `accept_invalid_certs` trusts self-signed certificates, as go-livepeer's
    /// orchestrators serve segments over TLS with a self-signed certificate.
    pub fn new(timeout: Duration, max_bytes: usize, accept_invalid_certs: bool) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .danger_accept_invalid_certs(accept_invalid_certs)
            .build()
            .expect("HTTP client builds with static settings");
        Fetcher { client, max_bytes }
    }

    pub async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| FetchError::BadUrl(url.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl(url.to_string()));
        }
        let http = |source| FetchError::Http {
            url: url.to_string(),
            source,
        };
        let response = self.client.get(parsed).send().await.map_err(http)?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
            limit: self.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(http)?;
            if body.len() + chunk.len() > self.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}
