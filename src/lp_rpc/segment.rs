//! Reading segment data (a gateway's `Livepeer-Segment`, an orchestrator's
//! `NotifySegment`) as go-livepeer does: which profiles to produce, in what
//! order, and whether this node may take it.

use crate::proto::lp_rpc::{self, video_profile as net};
use crate::video::profile::ProfileSpec;
use crate::video::{OutputContainer, VideoProfile};

/// Longest segment go-livepeer accepts (5 minutes), in milliseconds.
pub const MAX_DURATION_MS: i32 = 5 * 60 * 1000;

/// go-livepeer's special GOP values, carried as negative nanoseconds.
const GOP_INTRA_ONLY: i32 = -1;

/// What a segment asks for.
#[derive(Debug, Clone)]
pub struct SegmentJob {
    pub profiles: Vec<VideoProfile>,
    /// Segment duration in milliseconds (0 on the wire means 2 s).
    pub duration_ms: u32,
}

/// Why a segment cannot be taken (posted back as the error text).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SegmentError {
    #[error("segment has no segData")]
    MissingSegData,
    #[error("segment has no profiles")]
    NoProfiles,
    #[error("invalid segment duration {0} ms")]
    BadDuration(i32),
    #[error("incompatible segment capabilities")]
    Incompatible,
    #[error("segment slicing (segment_parameters) is not supported by this transcoder")]
    SlicingUnsupported,
    #[error("{0}")]
    BadProfile(String),
}

/// Converts one wire profile (go-livepeer's units: bit/s, GOP in ms or a
/// negative special value) into an engine profile.
pub fn profile_from_net(p: &lp_rpc::VideoProfile) -> Result<VideoProfile, SegmentError> {
    let name = if p.name.is_empty() {
        format!("net_{}x{}_{}", p.width, p.height, p.bitrate)
    } else {
        p.name.clone()
    };
    let bad = |what: &str| SegmentError::BadProfile(format!("profile {name:?}: {what}"));
    // Wire enums into go-livepeer's JSON spellings; the rules themselves
    // (sizes, rates, GOP, codecs) are ProfileSpec's, shared with the JSON file
    // and the worker API.
    let encoder = match net::VideoCodec::try_from(p.encoder) {
        Ok(net::VideoCodec::H264) => "H.264",
        Ok(net::VideoCodec::H265) => "HEVC",
        Ok(net::VideoCodec::Vp8) => "VP8",
        Ok(net::VideoCodec::Vp9) => "VP9",
        Err(_) => return Err(bad("unknown encoder")),
    };
    let profile = match net::Profile::try_from(p.profile) {
        Ok(net::Profile::EncoderDefault) => "",
        Ok(net::Profile::H264Baseline) => "H264Baseline",
        Ok(net::Profile::H264Main) => "H264Main",
        Ok(net::Profile::H264High) => "H264High",
        Ok(net::Profile::H264ConstrainedHigh) => "H264ConstrainedHigh",
        Err(_) => return Err(bad("unknown codec profile")),
    };
    let format = match net::Format::try_from(p.format) {
        Ok(net::Format::Mpegts) => OutputContainer::Mpegts,
        Ok(net::Format::Mp4) => OutputContainer::Mp4,
        Err(_) => return Err(bad("unknown format")),
    };
    // GOP on the wire: milliseconds, or go-livepeer's negative special values.
    let gop = match p.gop {
        0 => String::new(),
        GOP_INTRA_ONLY => "intra".into(),
        ms if ms > 0 => (f64::from(ms) / 1000.0).to_string(),
        _ => return Err(bad("invalid GOP")),
    };
    let spec = ProfileSpec {
        name,
        // A negative size becomes 0, which the spec refuses.
        width: u32::try_from(p.width).unwrap_or(0),
        height: u32::try_from(p.height).unwrap_or(0),
        bitrate: u64::try_from(p.bitrate).unwrap_or(0),
        fps: p.fps,
        fps_den: p.fps_den,
        profile: profile.into(),
        gop,
        encoder: encoder.into(),
        quality: p.quality,
        ..Default::default()
    };
    let mut profile = spec
        .into_profile()
        .map_err(|e| SegmentError::BadProfile(e.to_string()))?;
    profile.format = Some(format);
    Ok(profile)
}

/// Semver "a >= b", ignoring pre-release tags as go-livepeer does; an
/// unparsable minimum accepts anything, an unparsable version nothing.
fn version_at_least(version: &str, minimum: &str) -> bool {
    fn parse(v: &str) -> Option<(u64, u64, u64)> {
        let core = v.trim_start_matches('v').split(['-', '+']).next()?;
        let mut it = core.split('.').map(|n| n.parse::<u64>().ok());
        Some((
            it.next()??,
            it.next().flatten().unwrap_or(0),
            it.next().flatten().unwrap_or(0),
        ))
    }
    if minimum.is_empty() {
        return true;
    }
    if version.is_empty() || version == "undefined" {
        return false;
    }
    match (parse(version), parse(minimum)) {
        (_, None) => true,
        (None, _) => false,
        (Some(v), Some(m)) => v >= m,
    }
}

/// go-livepeer's `CompatibleWith`, for what a transcoder can check: version
/// constraint, the node's mandatories, and the segment's bitstring being a
/// subset of the node's.
pub fn compatible(segment: &lp_rpc::Capabilities, node: &lp_rpc::Capabilities) -> bool {
    let min = segment
        .constraints
        .as_ref()
        .map(|c| c.min_version.as_str())
        .unwrap_or("");
    version_at_least(&node.version, min)
        && super::capabilities::is_subset(&node.mandatories, &segment.bitstring)
        && super::capabilities::is_subset(&segment.bitstring, &node.bitstring)
}

/// Validates a segment notification against this node and extracts the job.
pub fn job_from_notify(
    n: &lp_rpc::NotifySegment,
    node: &lp_rpc::Capabilities,
) -> Result<SegmentJob, SegmentError> {
    job_from_seg_data(
        n.seg_data.as_ref().ok_or(SegmentError::MissingSegData)?,
        node,
    )
}

/// Validates segment data (as a gateway sends it in `Livepeer-Segment`, or an
/// orchestrator in `NotifySegment`) against this node and extracts the job.
pub fn job_from_seg_data(
    seg: &lp_rpc::SegData,
    node: &lp_rpc::Capabilities,
) -> Result<SegmentJob, SegmentError> {
    if seg.duration < 0 || seg.duration > MAX_DURATION_MS {
        return Err(SegmentError::BadDuration(seg.duration));
    }
    if let Some(caps) = &seg.capabilities {
        if !compatible(caps, node) {
            return Err(SegmentError::Incompatible);
        }
    }
    if seg
        .segment_parameters
        .as_ref()
        .is_some_and(|p| p.from != 0 || p.to != 0)
    {
        return Err(SegmentError::SlicingUnsupported);
    }
    // Newest field first, as go-livepeer reads them.
    let wire = [&seg.full_profiles3, &seg.full_profiles2, &seg.full_profiles]
        .into_iter()
        .find(|l| !l.is_empty())
        .ok_or(SegmentError::NoProfiles)?;
    let profiles = wire
        .iter()
        .map(profile_from_net)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SegmentJob {
        profiles,
        duration_ms: if seg.duration == 0 {
            2000
        } else {
            seg.duration as u32
        },
    })
}

/// True for go-livepeer's session teardown notice: no URL, only a session id.
pub fn is_session_end(n: &lp_rpc::NotifySegment) -> bool {
    n.url.is_empty()
        && n.seg_data
            .as_ref()
            .and_then(|s| s.auth_token.as_ref())
            .is_some_and(|t| !t.session_id.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::{Gop, H264Profile};

    fn net_profile(name: &str) -> lp_rpc::VideoProfile {
        lp_rpc::VideoProfile {
            name: name.into(),
            width: 640,
            height: 360,
            bitrate: 1_200_000,
            fps: 30,
            ..Default::default()
        }
    }

    #[test]
    fn wire_profiles_convert_with_go_livepeer_units() {
        let mut p = net_profile("a");
        p.gop = 2000;
        p.format = net::Format::Mp4 as i32;
        p.profile = net::Profile::H264Main as i32;
        p.fps_den = 1001;
        p.fps = 30000;
        let v = profile_from_net(&p).unwrap();
        assert_eq!(v.gop, Gop::Seconds(2.0));
        assert_eq!(v.format, Some(OutputContainer::Mp4));
        assert_eq!(v.h264_profile, Some(H264Profile::Main));
        assert_eq!(v.frame_rate(), Some((30000, 1001)));
        assert_eq!(v.bitrate, 1_200_000);
        p.gop = -1;
        assert_eq!(profile_from_net(&p).unwrap().gop, Gop::Intra);
        p.gop = -2;
        assert!(profile_from_net(&p).is_err());
        p.gop = 0;
        p.encoder = net::VideoCodec::Vp9 as i32;
        assert!(profile_from_net(&p)
            .unwrap_err()
            .to_string()
            .contains("VP9"));
        let unnamed = lp_rpc::VideoProfile {
            name: String::new(),
            ..net_profile("")
        };
        assert_eq!(
            profile_from_net(&unnamed).unwrap().name,
            "net_640x360_1200000"
        );
    }

    #[test]
    fn newest_profile_list_wins_and_limits_hold() {
        let node = super::super::capabilities::to_net(
            &[super::super::capabilities::Capability::H264],
            "0.9.1",
        );
        let mut seg = lp_rpc::SegData {
            full_profiles: vec![net_profile("old")],
            full_profiles3: vec![net_profile("new1"), net_profile("new2")],
            ..Default::default()
        };
        let notify = |seg: &lp_rpc::SegData| lp_rpc::NotifySegment {
            url: "https://o/x".into(),
            seg_data: Some(seg.clone()),
            ..Default::default()
        };
        let job = job_from_notify(&notify(&seg), &node).unwrap();
        assert_eq!(
            job.profiles
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["new1", "new2"]
        );
        assert_eq!(job.duration_ms, 2000);
        seg.duration = MAX_DURATION_MS + 1;
        assert_eq!(
            job_from_notify(&notify(&seg), &node).unwrap_err(),
            SegmentError::BadDuration(MAX_DURATION_MS + 1)
        );
        seg.duration = 2000;
        seg.capabilities = Some(super::super::capabilities::to_net(
            &[super::super::capabilities::Capability::Mpeg7VideoSignature],
            "",
        ));
        assert_eq!(
            job_from_notify(&notify(&seg), &node).unwrap_err(),
            SegmentError::Incompatible
        );
        seg.capabilities = None;
        seg.segment_parameters = Some(lp_rpc::SegParameters { from: 0, to: 1000 });
        assert_eq!(
            job_from_notify(&notify(&seg), &node).unwrap_err(),
            SegmentError::SlicingUnsupported
        );
        assert_eq!(
            job_from_notify(&lp_rpc::NotifySegment::default(), &node).unwrap_err(),
            SegmentError::MissingSegData
        );
    }

    #[test]
    fn version_constraint() {
        assert!(version_at_least("0.9.1", "0.9.0"));
        assert!(version_at_least("0.9.1-abc", "0.9.1"));
        assert!(!version_at_least("0.8.9", "0.9.0"));
        assert!(!version_at_least("undefined", "0.1.0"));
        assert!(version_at_least("", ""));
        assert!(version_at_least("0.9.1", "garbage"));
    }

    #[test]
    fn session_end_notice() {
        let end = lp_rpc::NotifySegment {
            seg_data: Some(lp_rpc::SegData {
                auth_token: Some(lp_rpc::AuthToken {
                    session_id: "abc".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(is_session_end(&end));
        assert!(!is_session_end(&lp_rpc::NotifySegment {
            url: "u".into(),
            ..end
        }));
    }
}
