//! Where a segment runs: a registered remote transcoder with room and the
//! capabilities it asks for, else the `serve` workers. A transcoder that
//! leaves mid-segment hands the segment on to the next; one that posts an
//! error or runs out of time fails it, as in go-livepeer (a gateway has
//! likely moved on by then).

use bytes::Bytes;
use tonic::Status;

use super::gateway::Gateway;
use super::transcoders::{Attempt, Outcome, Segment};
use super::workers::Transcoded;
use crate::proto::{lp_rpc as net, worker as pb};

/// Transcoders tried for one segment before the workers take it.
const MAX_REMOTE_ATTEMPTS: usize = 8;

/// Transcodes one segment (`data`, of `duration_ms`, whose worker request
/// is `request`).
pub async fn transcode(
    gw: &Gateway,
    seg: &net::SegData,
    duration_ms: u32,
    data: Bytes,
    request: pb::TranscodeRequest,
) -> Result<Transcoded, Status> {
    if let Some(pool) = &gw.transcoders {
        let segment = Segment {
            seg,
            data,
            renditions: request.profiles.len(),
            duration_ms,
        };
        for _ in 0..MAX_REMOTE_ATTEMPTS {
            match pool
                .transcode(&segment, &gw.service_uri, &gw.orch_id())
                .await
            {
                Attempt::NoneFree => break,
                Attempt::Gone => continue,
                Attempt::TimedOut => {
                    return Err(Status::deadline_exceeded("Remote transcoder took too long"))
                }
                Attempt::Answered(Outcome::Failed(message)) => {
                    return Err(Status::unknown(message))
                }
                Attempt::Answered(Outcome::Done {
                    renditions,
                    decoded_pixels,
                }) => {
                    return Ok(Transcoded {
                        renditions: renditions
                            .into_iter()
                            .enumerate()
                            .map(|(index, r)| {
                                let header = pb::RenditionHeader {
                                    index: index as u32,
                                    pixels: r.pixels.max(0) as u64,
                                    size: r.data.len() as u64,
                                    ..Default::default()
                                };
                                (header, Vec::from(r.data))
                            })
                            .collect(),
                        summary: Some(pb::TranscodeSummary {
                            request_id: request.request_id,
                            decoded_pixels: decoded_pixels.max(0) as u64,
                            ..Default::default()
                        }),
                    });
                }
            }
        }
    }
    gw.workers.transcode(request).await
}
