//! The result bodies remote workers post back to an orchestrator
//! (`/transcodeResults`, `/aiResults`): go-livepeer's protocol markers, the
//! multipart/mixed encoding its workers write and the reading its
//! orchestrator does (server/ot_rpc.go `TranscodeResults`).

use rand::Rng;

use crate::ai::PipelineOutput;
use crate::video::{OutputContainer, TranscodeOutput};

/// go-livepeer's protocol marker for remote transcoders (`protoVerLPT`).
pub const TRANSCODER_AUTH: &str = "Livepeer-Transcoder-1.0";
/// go-livepeer's protocol marker for remote AI workers.
pub const AI_WORKER_AUTH: &str = "Livepeer-AI-Worker-1.0";
/// Content type of a failed transcode.
pub const TRANSCODE_ERROR: &str = "livepeer/transcoding-error";
/// Content type of a failed AI job.
pub const AI_ERROR: &str = "livepeer/ai-worker-error";

/// MIME type of a rendition part (go-livepeer's `ext2mime`).
pub fn mime(container: OutputContainer) -> &'static str {
    match container {
        OutputContainer::Mpegts => "video/mp2t",
        OutputContainer::Mp4 => "video/mp4",
    }
}

/// Builds a multipart/mixed body as Go's `mime/multipart` writes it.
/// Hand-written because reqwest only writes multipart/form-data.
pub struct Multipart {
    boundary: String,
    body: Vec<u8>,
}

impl Default for Multipart {
    fn default() -> Self {
        Self::new()
    }
}

impl Multipart {
    pub fn new() -> Self {
        let mut rng = rand::thread_rng();
        let boundary = (0..30)
            .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
            .collect();
        Multipart {
            boundary,
            body: Vec::new(),
        }
    }

    pub fn part(&mut self, headers: &[(&str, String)], data: &[u8]) {
        self.body
            .extend_from_slice(format!("--{}\r\n", self.boundary).as_bytes());
        for (name, value) in headers {
            self.body
                .extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        self.body.extend_from_slice(b"\r\n");
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
    }

    /// The content type and the body.
    pub fn finish(mut self) -> (String, Vec<u8>) {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        (
            format!("multipart/mixed; boundary={}", self.boundary),
            self.body,
        )
    }
}

/// One part per rendition, in profile order, with its encoded `Pixels`.
pub fn transcode_body(output: &TranscodeOutput) -> (String, Vec<u8>) {
    let mut m = Multipart::new();
    for r in &output.renditions {
        let headers = [
            ("Content-Type", mime(r.container).to_string()),
            ("Content-Length", r.data.len().to_string()),
            ("Pixels", r.encoded.pixels.to_string()),
        ];
        m.part(&headers, &r.data);
    }
    m.finish()
}

/// One attachment per output file, then the response JSON (whose media `url`s
/// name the attachments), as go-livepeer's AI worker sends them.
pub fn ai_body(output: &PipelineOutput) -> (String, Vec<u8>) {
    let mut m = Multipart::new();
    for f in &output.files {
        let headers = [
            ("Content-Type", f.mime.to_string()),
            ("Content-Length", f.data.len().to_string()),
            (
                "Content-Disposition",
                format!("attachment; filename={}", f.name),
            ),
        ];
        m.part(&headers, &f.data);
    }
    let json = serde_json::to_vec(&output.body).expect("JSON values serialize");
    m.part(
        &[
            ("Content-Type", "application/json".into()),
            ("Content-Length", json.len().to_string()),
        ],
        &json,
    );
    m.finish()
}

/// Why a posted result body cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResultsError {
    #[error("invalid content type {0:?}")]
    ContentType(String),
    #[error("malformed multipart body: {0}")]
    Malformed(&'static str),
    #[error("invalid Pixels header {0:?}")]
    Pixels(String),
    #[error("more than {0} renditions")]
    TooManyParts(usize),
    #[error("perceptual hash part with no rendition before it")]
    OrphanHash,
}

/// A content type split into its lowercased media type and its parameters
/// (Go's `mime.ParseMediaType`, for what a result post carries).
pub fn media_type(content_type: &str) -> Result<(String, Vec<(String, String)>), ResultsError> {
    let bad = || ResultsError::ContentType(content_type.chars().take(100).collect());
    let mut pieces = content_type.split(';');
    let media = pieces
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match media.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => {}
        _ => return Err(bad()),
    }
    let mut params = Vec::new();
    for piece in pieces {
        let piece = piece.trim();
        if piece.is_empty() {
            continue;
        }
        let (name, value) = piece.split_once('=').ok_or_else(bad)?;
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        params.push((name.trim().to_ascii_lowercase(), value.to_string()));
    }
    Ok((media, params))
}

/// One rendition read from a result: its bytes and encoded pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostedRendition {
    pub data: bytes::Bytes,
    pub pixels: i64,
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Reads a multipart/mixed transcode result as go-livepeer's orchestrator
/// does: parts with a `Pixels` header are renditions in profile order; an
/// `application/octet-stream` part without one is the previous rendition's
/// perceptual hash (dropped: lpworker asks for none); other parts are
/// skipped. More than `max_renditions` renditions is an error, so a peer
/// cannot make us index an unbounded list.
pub fn read_transcode_parts(
    boundary: &str,
    body: &bytes::Bytes,
    max_renditions: usize,
) -> Result<Vec<PostedRendition>, ResultsError> {
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(ResultsError::Malformed("boundary"));
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter may follow a preamble; later ones follow CRLF.
    let mut at = match find(body, delimiter, 0) {
        Some(0) => 0,
        Some(_) => find(body, &[b"\r\n", delimiter].concat(), 0)
            .map(|i| i + 2)
            .ok_or(ResultsError::Malformed("no first boundary"))?,
        None => return Err(ResultsError::Malformed("no first boundary")),
    };
    let next_delimiter = [b"\r\n", delimiter].concat();
    let mut renditions: Vec<PostedRendition> = Vec::new();
    loop {
        let after = at + delimiter.len();
        let rest = body
            .get(after..)
            .ok_or(ResultsError::Malformed("truncated"))?;
        if rest.starts_with(b"--") {
            return Ok(renditions);
        }
        // Linear white space may trail a boundary line.
        let line_end = find(body, b"\r\n", after).ok_or(ResultsError::Malformed("truncated"))?;
        if !body[after..line_end]
            .iter()
            .all(|b| *b == b' ' || *b == b'\t')
        {
            return Err(ResultsError::Malformed("boundary line"));
        }
        let headers_start = line_end + 2;
        let (headers, data_start) = if body[headers_start..].starts_with(b"\r\n") {
            (&body[headers_start..headers_start], headers_start + 2)
        } else {
            let end = find(body, b"\r\n\r\n", headers_start)
                .ok_or(ResultsError::Malformed("unterminated part header"))?;
            (&body[headers_start..end], end + 4)
        };
        let data_end = find(body, &next_delimiter, data_start)
            .ok_or(ResultsError::Malformed("unterminated part"))?;
        let header = |wanted: &str| {
            headers
                .split(|b| *b == b'\n')
                .filter_map(|line| {
                    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
                    let (name, value) = line.split_once(':')?;
                    name.trim()
                        .eq_ignore_ascii_case(wanted)
                        .then(|| value.trim().to_string())
                })
                .next()
        };
        if let Some(pixels) = header("Pixels") {
            if renditions.len() == max_renditions {
                return Err(ResultsError::TooManyParts(max_renditions));
            }
            let pixels = pixels
                .parse::<i64>()
                .map_err(|_| ResultsError::Pixels(pixels.chars().take(32).collect()))?;
            renditions.push(PostedRendition {
                data: body.slice(data_start..data_end),
                pixels,
            });
        } else if header("Content-Type").as_deref() == Some("application/octet-stream")
            && renditions.is_empty()
        {
            return Err(ResultsError::OrphanHash);
        }
        at = data_end + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Part<'a> = (&'a [(&'a str, String)], &'a [u8]);

    fn body(parts: &[Part]) -> (String, bytes::Bytes) {
        let mut m = Multipart::new();
        for (headers, data) in parts {
            m.part(headers, data);
        }
        let (ct, body) = m.finish();
        let (_, params) = media_type(&ct).unwrap();
        (params[0].1.clone(), bytes::Bytes::from(body))
    }

    #[test]
    fn what_the_workers_write_the_orchestrator_reads() {
        let ts = [
            ("Content-Type", "video/mp2t".into()),
            ("Pixels", "921600".into()),
        ];
        let hash = [("Content-Type", "application/octet-stream".into())];
        let mp4 = [("Content-Type", "video/mp4".into()), ("Pixels", "3".into())];
        let (boundary, data) = body(&[(&ts, b"first\r\n--not-it"), (&hash, b"phash"), (&mp4, b"")]);
        let parts = read_transcode_parts(&boundary, &data, 2).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(&parts[0].data[..], b"first\r\n--not-it");
        assert_eq!(parts[0].pixels, 921_600);
        assert_eq!(&parts[1].data[..], b"");
        assert_eq!(parts[1].pixels, 3);
        assert_eq!(
            read_transcode_parts(&boundary, &data, 1),
            Err(ResultsError::TooManyParts(1))
        );
    }

    #[test]
    fn broken_bodies_are_refused() {
        let bad_pixels = [("Pixels", "many".into())];
        let (boundary, data) = body(&[(&bad_pixels, b"x")]);
        assert!(matches!(
            read_transcode_parts(&boundary, &data, 4),
            Err(ResultsError::Pixels(_))
        ));
        let hash = [("Content-Type", "application/octet-stream".into())];
        let (boundary, data) = body(&[(&hash, b"x")]);
        assert_eq!(
            read_transcode_parts(&boundary, &data, 4),
            Err(ResultsError::OrphanHash)
        );
        let ts = [("Pixels", "1".into())];
        let (boundary, data) = body(&[(&ts, b"abc")]);
        // Cut before the closing boundary.
        let cut = data.slice(..data.len() - boundary.len() - 8);
        assert!(read_transcode_parts(&boundary, &cut, 4).is_err());
        assert!(read_transcode_parts("other", &data, 4).is_err());
        assert!(read_transcode_parts("", &data, 4).is_err());
        assert!(read_transcode_parts(&"b".repeat(71), &data, 4).is_err());
    }

    #[test]
    fn content_types_parse_as_go_does() {
        let (media, params) = media_type("Multipart/Mixed; boundary=\"ab c\"").unwrap();
        assert_eq!(media, "multipart/mixed");
        assert_eq!(params, vec![("boundary".into(), "ab c".into())]);
        assert_eq!(media_type(TRANSCODE_ERROR).unwrap().0, TRANSCODE_ERROR);
        assert!(media_type("").is_err());
        assert!(media_type("text").is_err());
        assert!(media_type("a/b; novalue").is_err());
    }
}
