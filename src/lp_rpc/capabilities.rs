//! go-livepeer's capability bitstring: which codecs, containers and features a
//! node offers, as the orchestrator matches them against segments.

use std::collections::BTreeMap;

use crate::proto::lp_rpc;
use crate::video::probe::Capabilities as Probe;

/// go-livepeer's capability numbers (core/capabilities.go). Only the ones
/// lpworker reads or offers are listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Capability {
    H264 = 0,
    Mpegts = 1,
    Mp4 = 2,
    FractionalFramerates = 3,
    StorageDirect = 4,
    StorageS3 = 5,
    StorageGcs = 6,
    ProfileH264Baseline = 7,
    ProfileH264Main = 8,
    ProfileH264High = 9,
    ProfileH264ConstrainedHigh = 10,
    Gop = 11,
    AuthToken = 12,
    Mpeg7VideoSignature = 14,
    HevcDecode = 15,
    HevcEncode = 16,
    SegmentSlicing = 26,
}

/// Packs capability numbers into go-livepeer's bitstring: number `c` is bit
/// `c % 64` of word `c / 64`.
pub fn bitstring(caps: impl IntoIterator<Item = u32>) -> Vec<u64> {
    let mut words = Vec::new();
    for c in caps {
        add(&mut words, c);
    }
    words
}

/// Sets capability `c` in a bitstring, growing it as needed.
pub fn add(words: &mut Vec<u64>, c: u32) {
    let word = (c / 64) as usize;
    if words.len() <= word {
        words.resize(word + 1, 0);
    }
    words[word] |= 1u64 << (c % 64);
}

/// True when every capability in `wanted` is in `offered` (go-livepeer's
/// subset rule: a longer `wanted` than `offered` fails).
pub fn is_subset(wanted: &[u64], offered: &[u64]) -> bool {
    wanted.len() <= offered.len() && wanted.iter().zip(offered).all(|(w, o)| w & !o == 0)
}

/// What this transcoder offers, from what the probe found: H.264 in MPEG-TS and
/// MP4 with every H.264 profile, fractional frame rates and GOP control; HEVC
/// decode and encode when FFmpeg has them. Perceptual hashes (MPEG-7) and
/// segment slicing are not offered, because lpworker does not produce them.
pub fn transcoder_capabilities(probe: &Probe) -> Vec<Capability> {
    use Capability::*;
    let mut caps = vec![
        Mpegts,
        Mp4,
        FractionalFramerates,
        StorageDirect,
        StorageS3,
        StorageGcs,
        Gop,
        AuthToken,
    ];
    if probe.decoders.iter().any(|d| d == "h264") && probe.encoders.iter().any(|e| e == "libx264") {
        caps.extend([
            H264,
            ProfileH264Baseline,
            ProfileH264Main,
            ProfileH264High,
            ProfileH264ConstrainedHigh,
        ]);
    }
    if probe.decoders.iter().any(|d| d == "hevc") {
        caps.push(HevcDecode);
    }
    if probe.encoders.iter().any(|e| e == "libx265") {
        caps.push(HevcEncode);
    }
    caps.sort_by_key(|c| *c as u32);
    caps
}

/// The wire form: bitstring, capacity 1 per capability (as go-livepeer's
/// `NewCapabilities`), no mandatories, and the node's version.
pub fn to_net(caps: &[Capability], version: &str) -> lp_rpc::Capabilities {
    lp_rpc::Capabilities {
        bitstring: bitstring(caps.iter().map(|c| *c as u32)),
        mandatories: Vec::new(),
        capacities: caps
            .iter()
            .map(|c| (*c as u32, 1))
            .collect::<BTreeMap<_, _>>(),
        version: version.to_string(),
        constraints: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_layout_matches_go_livepeer() {
        // go-livepeer's DefaultCapabilities {0..=12, 14, 26} is word 0 = 0x4005FFF.
        let default = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 26];
        assert_eq!(bitstring(default), vec![0x0400_5FFF]);
        assert_eq!(bitstring([64, 1]), vec![0b10, 1]);
        assert!(bitstring([]).is_empty());
    }

    #[test]
    fn subset_rule() {
        assert!(is_subset(&[0b0110], &[0b1111]));
        assert!(!is_subset(&[0b1_0000], &[0b1111]));
        assert!(!is_subset(&[0, 1], &[u64::MAX]));
        assert!(is_subset(&[], &[]));
    }

    #[test]
    fn probe_drives_codec_capabilities() {
        let probe = crate::video::probe::probe();
        let caps = transcoder_capabilities(&probe);
        assert!(caps.contains(&Capability::H264));
        assert!(!caps.contains(&Capability::Mpeg7VideoSignature));
        assert!(!caps.contains(&Capability::SegmentSlicing));
        let net = to_net(&caps, "0.8.0");
        assert_eq!(net.capacities.len(), caps.len());
        // A segment asking for H.264 in MPEG-TS is compatible.
        assert!(is_subset(&bitstring([0, 1]), &net.bitstring));
        // One asking for perceptual hashes is not.
        assert!(!is_subset(&bitstring([0, 1, 14]), &net.bitstring));
    }
}
