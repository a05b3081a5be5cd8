//! Livepeer video profiles: the standard ladder with go-livepeer's names, custom
//! profiles in go-livepeer's `-transcodingOptions` JSON format, and the rule that
//! maps a profile onto an input's aspect ratio.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::VideoError;

/// Output video codec of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VideoCodec {
    H264,
    Hevc,
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
        }
    }
}

/// Container of the rendition files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputContainer {
    /// MPEG transport stream, as go-livepeer returns renditions.
    #[default]
    Mpegts,
    /// Fragmented MP4.
    Mp4,
}

impl OutputContainer {
    pub fn muxer(self) -> &'static str {
        match self {
            OutputContainer::Mpegts => "mpegts",
            OutputContainer::Mp4 => "mp4",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            OutputContainer::Mpegts => "ts",
            OutputContainer::Mp4 => "mp4",
        }
    }
}

/// H.264 profile requested by a rendition (go-livepeer's `profile` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum H264Profile {
    Baseline,
    Main,
    High,
    ConstrainedHigh,
}

impl H264Profile {
    /// The value of libx264's `profile` option.
    pub fn x264_name(self) -> &'static str {
        match self {
            H264Profile::Baseline => "baseline",
            H264Profile::Main => "main",
            // x264 has no "constrained high"; lpms encodes it as high without B-frames.
            H264Profile::High | H264Profile::ConstrainedHigh => "high",
        }
    }
}

/// Keyframe spacing of a rendition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Gop {
    /// Let the encoder decide (one keyframe at the start of each segment at least).
    Default,
    /// Every frame is a keyframe.
    Intra,
    /// A keyframe every this many seconds.
    Seconds(f64),
}

/// One output rendition: what go-livepeer calls a `VideoProfile`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VideoProfile {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Target bitrate in bits per second.
    pub bitrate: u64,
    /// Frame rate numerator; 0 keeps the input's frame rate.
    pub fps: u32,
    /// Frame rate denominator (1 when unset).
    pub fps_den: u32,
    pub codec: VideoCodec,
    pub h264_profile: Option<H264Profile>,
    pub gop: Gop,
    /// Constant-quality value (CRF-like); when set, `bitrate` is only the maximum.
    pub quality: Option<u32>,
    /// Container of this rendition; `None` uses the request's.
    pub format: Option<OutputContainer>,
}

/// (name, width, height, fps, bitrate in kbit/s): lpms' predefined profiles.
const STANDARD: &[(&str, u32, u32, u32, u64)] = &[
    ("P720p60fps16x9", 1280, 720, 60, 6000),
    ("P720p30fps16x9", 1280, 720, 30, 4000),
    ("P720p25fps16x9", 1280, 720, 25, 3500),
    ("P720p30fps4x3", 960, 720, 30, 3500),
    ("P576p30fps16x9", 1024, 576, 30, 1500),
    ("P576p25fps16x9", 1024, 576, 25, 1500),
    ("P360p30fps16x9", 640, 360, 30, 1200),
    ("P360p25fps16x9", 640, 360, 25, 1000),
    ("P360p30fps4x3", 480, 360, 30, 1000),
    ("P240p30fps16x9", 426, 240, 30, 600),
    ("P240p25fps16x9", 426, 240, 25, 600),
    ("P240p30fps4x3", 320, 240, 30, 600),
    ("P144p30fps16x9", 256, 144, 30, 400),
    ("P144p25fps16x9", 256, 144, 25, 400),
];

/// The ladder `lpworker transcode` uses when no profiles are named: 1080p, 720p,
/// 576p (lpms' "480p-class" rung), 360p and 240p, all 30 fps.
pub const DEFAULT_LADDER: &[&str] = &[
    "P1080p30fps16x9",
    "P720p30fps16x9",
    "P576p30fps16x9",
    "P360p30fps16x9",
    "P240p30fps16x9",
];

impl VideoProfile {
    fn standard(name: &str, width: u32, height: u32, fps: u32, kbps: u64) -> Self {
        VideoProfile {
            name: name.to_string(),
            width,
            height,
            bitrate: kbps * 1000,
            fps,
            fps_den: 1,
            codec: VideoCodec::H264,
            h264_profile: None,
            gop: Gop::Default,
            quality: None,
            format: None,
        }
    }

    /// Every predefined profile, in lpms' order, plus the 1080p rung that lpms
    /// lacks but every real ladder uses (named in the same pattern).
    pub fn standard_profiles() -> Vec<VideoProfile> {
        let mut all: Vec<_> = STANDARD
            .iter()
            .map(|&(n, w, h, f, k)| Self::standard(n, w, h, f, k))
            .collect();
        all.insert(0, Self::standard("P1080p30fps16x9", 1920, 1080, 30, 6000));
        all
    }

    /// Live AI video's output: the input's size and frame rate, H.264 with
    /// no B-frames and a keyframe every second (a player joining, or a
    /// dropped segment, recovers within a second), at `bitrate`.
    pub fn live(bitrate: u64) -> VideoProfile {
        VideoProfile {
            name: "live".into(),
            width: 0,
            height: 0,
            bitrate,
            fps: 0,
            fps_den: 1,
            codec: VideoCodec::H264,
            h264_profile: Some(H264Profile::ConstrainedHigh),
            gop: Gop::Seconds(1.0),
            quality: None,
            format: Some(OutputContainer::Mpegts),
        }
    }

    /// A 0x0 profile keeps the input's size (rounded down to even sides),
    /// up to 720p's pixel count: live AI video is paid as 720p.
    pub fn keeps_input_size(&self) -> bool {
        self.width == 0 && self.height == 0
    }

    /// Looks up a predefined profile by its go-livepeer name.
    pub fn by_name(name: &str) -> Option<VideoProfile> {
        Self::standard_profiles()
            .into_iter()
            .find(|p| p.name == name)
    }

    /// Parses a comma-separated list of predefined profile names, as
    /// go-livepeer's `-transcodingOptions P720p30fps16x9,P360p30fps16x9`.
    pub fn parse_list(list: &str) -> Result<Vec<VideoProfile>, VideoError> {
        let profiles: Vec<_> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|name| {
                Self::by_name(name).ok_or_else(|| {
                    VideoError::InvalidProfile(format!(
                        "unknown profile {:?}; known: {}",
                        crate::log_limit::clip(name, 64),
                        Self::standard_profiles()
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        if profiles.is_empty() {
            return Err(VideoError::InvalidProfile("no profiles given".into()));
        }
        Ok(profiles)
    }

    /// Reads profiles from a comma-separated name list or, when `spec` names a
    /// file, from go-livepeer's `-transcodingOptions` JSON format.
    pub fn from_spec(spec: &str) -> Result<Vec<VideoProfile>, VideoError> {
        let path = Path::new(spec);
        if spec.ends_with(".json") || path.is_file() {
            let text = std::fs::read_to_string(path).map_err(|e| {
                VideoError::InvalidProfile(format!("cannot read profiles file {spec}: {e}"))
            })?;
            Self::parse_json(&text)
        } else {
            Self::parse_list(spec)
        }
    }

    /// Parses go-livepeer's JSON profile format: a top-level array of objects.
    pub fn parse_json(text: &str) -> Result<Vec<VideoProfile>, VideoError> {
        let list: Vec<ProfileSpec> = serde_json::from_str(text)
            .map_err(|e| VideoError::InvalidProfile(format!("profiles JSON: {e}")))?;
        if list.is_empty() {
            return Err(VideoError::InvalidProfile(
                "profiles JSON holds no profiles".into(),
            ));
        }
        list.into_iter().map(ProfileSpec::into_profile).collect()
    }

    /// Output frame rate as (num, den), or None to keep the input's.
    pub fn frame_rate(&self) -> Option<(u32, u32)> {
        (self.fps > 0).then_some((self.fps, self.fps_den.max(1)))
    }

    /// Output size for an input of `in_w`×`in_h`, as lpms computes it: the
    /// profile's larger dimension (clamped to the encoder's limits) becomes the
    /// output's longer side; the shorter side follows the input's aspect ratio
    /// (FFmpeg's `-2`: rounded to the nearest even number), unless it would fall
    /// below the encoder's minimum, in which case it is the minimum and the
    /// longer side follows instead.
    pub fn output_size(&self, in_w: u32, in_h: u32) -> (u32, u32) {
        if self.keeps_input_size() {
            return keep_within_720p(in_w, in_h);
        }
        let limits = self.codec.size_limits();
        let clamp_w = u64::from(self.width.clamp(limits.min_w, limits.max_w));
        let clamp_h = u64::from(self.height.clamp(limits.min_h, limits.max_h));
        let max_d = clamp_w.max(clamp_h);
        let (iw, ih) = (u64::from(in_w.max(1)), u64::from(in_h.max(1)));
        let (min_w, min_h) = (u64::from(limits.min_w), u64::from(limits.min_h));
        // `None` stands for FFmpeg's `-2`: derived from the other side.
        let (w, h) = if iw >= ih {
            if max_d * ih >= min_h * iw {
                (Some(max_d), None)
            } else {
                (None, Some(min_h))
            }
        } else if max_d * iw >= min_w * ih {
            (None, Some(max_d))
        } else {
            (Some(min_w), None)
        };
        let (w, h) = match (w, h) {
            (Some(w), _) => (w, scale_even(w, ih, iw)),
            (_, Some(h)) => (scale_even(h, iw, ih), h),
            (None, None) => unreachable!("one side is always fixed"),
        };
        let w = w.min(u64::from(limits.max_w)) & !1;
        let h = h.min(u64::from(limits.max_h)) & !1;
        (w as u32, h as u32)
    }
}

/// Frame size limits lpms applies per output codec (its NVIDIA limits, used
/// for every encoder).
#[derive(Debug, Clone, Copy)]
pub struct SizeLimits {
    pub min_w: u32,
    pub min_h: u32,
    pub max_w: u32,
    pub max_h: u32,
}

impl VideoCodec {
    pub fn size_limits(self) -> SizeLimits {
        match self {
            VideoCodec::H264 => SizeLimits {
                min_w: 146,
                min_h: 50,
                max_w: 4096,
                max_h: 4096,
            },
            VideoCodec::Hevc => SizeLimits {
                min_w: 132,
                min_h: 40,
                max_w: 8192,
                max_h: 8192,
            },
        }
    }
}

/// `other * num / den` rounded to the nearest even value, as FFmpeg's scale
/// filter evaluates a `-2` dimension (`av_rescale(x, num, den * 2) * 2`).
fn scale_even(other: u64, num: u64, den: u64) -> u64 {
    let half = (other * num + den) / (den * 2);
    (half * 2).max(2)
}

/// A profile as go-livepeer writes it: one entry of its `-transcodingOptions`
/// JSON file, or the same fields arriving over the wire. Validated into a
/// [`VideoProfile`] by [`ProfileSpec::into_profile`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    #[serde(default)]
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// Bits per second.
    pub bitrate: u64,
    #[serde(default)]
    pub fps: u32,
    #[serde(default, rename = "fpsDen")]
    pub fps_den: u32,
    /// "", "none", "H264Baseline", "H264Main", "H264High", "H264ConstrainedHigh" (any case).
    #[serde(default)]
    pub profile: String,
    /// "", "intra", or seconds.
    #[serde(default)]
    pub gop: String,
    /// "H.264" (or "H264") or "HEVC".
    #[serde(default)]
    pub encoder: String,
    #[serde(default)]
    pub quality: u32,
    #[serde(default, rename = "colorDepth")]
    pub color_depth: u32,
    #[serde(default, rename = "chromaFormat")]
    pub chroma_format: u32,
}

impl ProfileSpec {
    pub fn into_profile(mut self) -> Result<VideoProfile, VideoError> {
        if self.name.is_empty() {
            // go-livepeer's name for an unnamed custom profile.
            self.name = format!("custom_{}x{}_{}", self.width, self.height, self.bitrate);
        }
        // Names and strings come from the gateway: named back clipped, so a
        // refusal (and the log lines quoting it) has a bounded size.
        let bad = |what: String| {
            VideoError::InvalidProfile(format!(
                "profile {:?}: {what}",
                crate::log_limit::clip(&self.name, 64)
            ))
        };
        if self.width == 0 || self.height == 0 || self.width > 8192 || self.height > 8192 {
            return Err(bad(format!(
                "size {}x{} is outside 1..=8192",
                self.width, self.height
            )));
        }
        if self.bitrate == 0 && self.quality == 0 {
            return Err(bad("needs a bitrate or a quality".into()));
        }
        // In 64 bits: fps_den comes from the gateway and 240× it may not fit 32.
        if u64::from(self.fps) > 240 * u64::from(self.fps_den.max(1)) {
            return Err(bad(format!(
                "frame rate {}/{} is above 240",
                self.fps, self.fps_den
            )));
        }
        if self.color_depth > 0 || self.chroma_format != 0 {
            return Err(bad("only 8-bit 4:2:0 output is supported".into()));
        }
        // go-livepeer spells the H.264 encoder "H.264"; "H264" is accepted too.
        let codec = match self.encoder.as_str() {
            "" | "H.264" | "H264" => VideoCodec::H264,
            "HEVC" => VideoCodec::Hevc,
            other => {
                return Err(bad(format!(
                    "encoder {:?} is not supported (H.264, HEVC)",
                    crate::log_limit::clip(other, 32)
                )))
            }
        };
        let h264_profile = match self.profile.to_ascii_lowercase().as_str() {
            "" | "none" => None,
            "h264baseline" => Some(H264Profile::Baseline),
            "h264main" => Some(H264Profile::Main),
            "h264high" => Some(H264Profile::High),
            "h264constrainedhigh" => Some(H264Profile::ConstrainedHigh),
            other => {
                return Err(bad(format!(
                    "unknown codec profile {:?}",
                    crate::log_limit::clip(other, 32)
                )))
            }
        };
        let gop = match self.gop.as_str() {
            "" => Gop::Default,
            "intra" => Gop::Intra,
            secs => match secs.parse::<f64>() {
                Ok(0.0) => Gop::Default,
                Ok(s) if s > 0.0 && s.is_finite() => Gop::Seconds(s),
                _ => {
                    return Err(bad(format!(
                        "gop {secs:?} is neither \"intra\" nor seconds"
                    )))
                }
            },
        };
        Ok(VideoProfile {
            bitrate: self.bitrate,
            fps: self.fps,
            fps_den: self.fps_den.max(1),
            codec,
            h264_profile,
            gop,
            quality: (self.quality > 0).then_some(self.quality),
            format: None,
            width: self.width,
            height: self.height,
            name: self.name,
        })
    }
}

/// `(w, h)` with even sides, scaled down to 1280×720's pixel count when
/// larger (the aspect kept).
fn keep_within_720p(w: u32, h: u32) -> (u32, u32) {
    const MAX_PIXELS: f64 = 1280.0 * 720.0;
    let (w, h) = (w.max(2), h.max(2));
    let pixels = f64::from(w) * f64::from(h);
    let scale = if pixels > MAX_PIXELS {
        (MAX_PIXELS / pixels).sqrt()
    } else {
        1.0
    };
    let side = |v: u32| (((f64::from(v) * scale) as u32).max(2)) & !1;
    (side(w), side(h))
}

#[cfg(test)]
mod tests {

    #[test]
    fn live_output_keeps_the_input_size_up_to_720p() {
        let live = VideoProfile::live(1);
        assert_eq!(live.output_size(640, 361), (640, 360));
        assert_eq!(live.output_size(1280, 720), (1280, 720));
        // 4K comes out at 720p, a portrait 4K at 720p's pixel count.
        assert_eq!(live.output_size(3840, 2160), (1280, 720));
        let (w, h) = live.output_size(2160, 3840);
        assert!(w * h <= 1280 * 720 && (w, h) == (720, 1280), "{w}x{h}");
        assert_eq!(live.output_size(0, 0), (2, 2));
    }
    /// A refusal names the gateway's strings back clipped, however long.
    #[test]
    fn refusals_name_long_values_back_clipped() {
        let long = "n".repeat(4096);
        let spec = |name: &str, encoder: &str, profile: &str| ProfileSpec {
            name: name.into(),
            width: 640,
            height: 360,
            bitrate: 1_000_000,
            fps: 30,
            encoder: encoder.into(),
            profile: profile.into(),
            ..Default::default()
        };
        for bad in [
            spec(&long, "", "").into_profile().map(|_| ()),
            spec(&long, &long, "").into_profile().map(|_| ()),
            spec("p", &long, "").into_profile().map(|_| ()),
            spec("p", "", &long).into_profile().map(|_| ()),
            VideoProfile::parse_list(&long).map(|_| ()),
        ] {
            let Err(VideoError::InvalidProfile(msg)) = &bad else {
                // A long name alone is still a valid custom profile.
                assert!(bad.is_ok());
                continue;
            };
            assert!(msg.contains('…'), "{msg}");
            assert!(!msg.contains(&long[..100]), "{msg}");
        }
        let Err(VideoError::InvalidProfile(msg)) = spec("p", "VP9", "").into_profile() else {
            panic!("VP9 is refused")
        };
        assert!(msg.contains("\"VP9\""), "{msg}");
    }

    use super::*;

    #[test]
    fn standard_names_resolve() {
        let p = VideoProfile::by_name("P720p30fps16x9").unwrap();
        assert_eq!(
            (p.width, p.height, p.fps, p.bitrate),
            (1280, 720, 30, 4_000_000)
        );
        let p = VideoProfile::by_name("P240p30fps4x3").unwrap();
        assert_eq!((p.width, p.height, p.bitrate), (320, 240, 600_000));
        assert!(VideoProfile::by_name("P9000p").is_none());
        assert_eq!(VideoProfile::standard_profiles().len(), 15);
    }

    #[test]
    fn parse_list_rejects_unknown_names() {
        assert_eq!(
            VideoProfile::parse_list("P720p30fps16x9, P360p30fps16x9")
                .unwrap()
                .len(),
            2
        );
        let err = VideoProfile::parse_list("P720p30fps16x9,bogus").unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        assert!(VideoProfile::parse_list(" , ").is_err());
    }

    #[test]
    fn aspect_follows_lpms_rule() {
        let p720 = VideoProfile::by_name("P720p30fps16x9").unwrap();
        let p240 = VideoProfile::by_name("P240p30fps16x9").unwrap();
        assert_eq!(p720.output_size(1920, 1080), (1280, 720));
        // Portrait input gives a portrait rendition.
        assert_eq!(p720.output_size(720, 1280), (720, 1280));
        // 4:3 input keeps 4:3; 426*480/640 = 319.5 rounds to the even 320.
        assert_eq!(p240.output_size(640, 480), (426, 320));
        // 1280 * 9 / 21 = 548.57 → nearest even is 548.
        assert_eq!(p720.output_size(2560, 1080), (1280, 540));
        // A very wide input: the short side is held at H.264's minimum of 50
        // and the long side follows (clamped to 4096).
        assert_eq!(p240.output_size(1000, 100), (500, 50));
        assert_eq!(p240.output_size(100_000, 10), (4096, 50));
        // A very tall input: the minimum width of 146 holds.
        assert_eq!(p240.output_size(100, 1000), (146, 1460));
    }

    #[test]
    fn json_profiles_in_go_livepeer_format() {
        let json = r#"[
          {"name":"hi","width":1920,"height":1080,"bitrate":5000000,"fps":60,"fpsDen":1,
           "profile":"H264High","gop":"2.0","encoder":"H.264"},
          {"name":"lo","width":320,"height":180,"bitrate":300000,"fps":30000,"fpsDen":1001,"gop":"intra"},
          {"name":"hevc","width":640,"height":360,"bitrate":800000,"encoder":"HEVC"},
          {"fps":0,"bitrate":250000,"width":426,"height":240,"profile":"h264constrainedhigh","gop":"1"}
        ]"#;
        let p = VideoProfile::parse_json(json).unwrap();
        assert_eq!(p[0].h264_profile, Some(H264Profile::High));
        assert_eq!(p[0].gop, Gop::Seconds(2.0));
        assert_eq!(p[1].frame_rate(), Some((30000, 1001)));
        assert_eq!(p[1].gop, Gop::Intra);
        assert_eq!(p[2].codec, VideoCodec::Hevc);
        assert_eq!(p[2].frame_rate(), None);
        // go-livepeer's own livepeer_bench example: unnamed, lower-case profile.
        assert_eq!(p[3].name, "custom_426x240_250000");
        assert_eq!(p[3].h264_profile, Some(H264Profile::ConstrainedHigh));
        assert_eq!(p[3].gop, Gop::Seconds(1.0));
    }

    #[test]
    fn json_profiles_reject_bad_values() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"[{"name":"x","width":0,"height":2,"bitrate":1}]"#,
            r#"[{"name":"x","width":2,"height":2,"bitrate":0}]"#,
            r#"[{"name":"x","width":2,"height":2,"bitrate":1,"encoder":"AV1"}]"#,
            r#"[{"name":"x","width":2,"height":2,"bitrate":1,"gop":"often"}]"#,
            r#"[{"name":"x","width":2,"height":2,"bitrate":1,"gop":"-1"}]"#,
            r#"[{"name":"x","width":2,"height":2,"bitrate":"4000k"}]"#,
            r#"[{"name":"x","width":2,"height":2,"bitrate":1,"profile":"H264Ultra"}]"#,
            r#"[{"name":"x","width":2,"height":2,"bitrate":1,"typo":1}]"#,
        ] {
            assert!(VideoProfile::parse_json(bad).is_err(), "accepted {bad:?}");
        }
    }
}
