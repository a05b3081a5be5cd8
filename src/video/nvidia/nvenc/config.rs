//! How a rendition's settings become NVENC's configuration, without a GPU:
//! the profile GUID, the GOP (no B-frames), rate control, where the
//! parameter sets go, and the session's initialisation parameters; plus the
//! timing arithmetic the encoder's packets use.

use ffmpeg_next as ff;
use nvidia_video_codec_sdk::sys::nvEncodeAPI as nv;

use super::api::codec_guid;
use super::params;
use crate::video::backend::EncoderSettings;
use crate::video::profile::{Gop, H264Profile, VideoCodec};

/// Keyframe interval for [`Gop::Default`]: x264's default `keyint`.
pub const DEFAULT_GOP_FRAMES: u32 = 250;

/// The NVENC profile for a rendition. H.264 without a named profile is High,
/// x264's choice for 8-bit 4:2:0. Constrained High is High without B-frames
/// (as lpms and the CPU encoder encode it); this encoder never uses
/// B-frames, so High's GUID serves, avoiding NVENC's separate Constrained
/// High GUID, which is not needed for a conforming stream.
pub fn profile_guid(codec: VideoCodec, h264: Option<H264Profile>) -> nv::GUID {
    match codec {
        VideoCodec::Hevc => nv::NV_ENC_HEVC_PROFILE_MAIN_GUID,
        VideoCodec::H264 => match h264 {
            Some(H264Profile::Baseline) => nv::NV_ENC_H264_PROFILE_BASELINE_GUID,
            Some(H264Profile::Main) => nv::NV_ENC_H264_PROFILE_MAIN_GUID,
            Some(H264Profile::High | H264Profile::ConstrainedHigh) | None => {
                nv::NV_ENC_H264_PROFILE_HIGH_GUID
            }
        },
    }
}

/// Frames per second of a rational rate, or `None` when it is not a rate.
fn fps(rate: ff::Rational) -> Option<f64> {
    let (num, den) = (rate.numerator(), rate.denominator());
    (num > 0 && den > 0).then(|| f64::from(num) / f64::from(den))
}

/// Keyframe interval in frames, as the CPU encoder sets libx264's:
/// [`DEFAULT_GOP_FRAMES`] by default, 1 for intra-only, else seconds × fps.
pub fn gop_frames(gop: Gop, frame_rate: ff::Rational) -> u32 {
    match gop {
        Gop::Default => DEFAULT_GOP_FRAMES,
        Gop::Intra => 1,
        Gop::Seconds(s) => match fps(frame_rate) {
            Some(fps) => ((s * fps) as u32).max(1),
            None => DEFAULT_GOP_FRAMES,
        },
    }
}

/// The frame rate as NVENC's (num, den); 30/1 when the rate is unusable.
fn frame_rate_parts(rate: ff::Rational) -> (u32, u32) {
    match fps(rate) {
        Some(_) => (rate.numerator() as u32, rate.denominator() as u32),
        None => (30, 1),
    }
}

/// One frame's duration in `time_base` ticks, rounded; 0 when unknown.
pub fn frame_ticks(time_base: ff::Rational, frame_rate: ff::Rational) -> i64 {
    let num = i128::from(frame_rate.denominator()) * i128::from(time_base.denominator());
    let den = i128::from(frame_rate.numerator()) * i128::from(time_base.numerator());
    if num <= 0 || den <= 0 {
        return 0;
    }
    ((num + den / 2) / den).min(i128::from(i64::MAX)) as i64
}

/// Writes a rendition's settings over an encode config (the preset's, in
/// use; a zeroed one in tests): profile, GOP without B-frames, rate control,
/// and where SPS/PPS go.
pub fn configure(config: &mut nv::NV_ENC_CONFIG, settings: &EncoderSettings) {
    let profile = &settings.profile;
    let bitrate = profile.bitrate.min(u64::from(u32::MAX)) as u32;
    let gop = gop_frames(profile.gop, settings.frame_rate);

    config.version = nv::NV_ENC_CONFIG_VER;
    config.profileGUID = profile_guid(profile.codec, profile.h264_profile);
    config.gopLength = gop;
    // IPP…: no B-frames, so output order is input order and dts == pts.
    config.frameIntervalP = 1;
    config.frameFieldMode =
        nv::NV_ENC_PARAMS_FRAME_FIELD_MODE::NV_ENC_PARAMS_FRAME_FIELD_MODE_FRAME;

    let rc = &mut config.rcParams;
    match profile.quality {
        // libx264 with min = average = max rate = VBV buffer.
        None => {
            rc.rateControlMode = nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_CBR;
            rc.averageBitRate = bitrate;
            rc.maxBitRate = bitrate;
            rc.targetQuality = 0;
        }
        // libx264's CRF capped by the bitrate: constant-quality VBR. With an
        // average of 0 the target quality alone drives the rate.
        Some(quality) => {
            rc.rateControlMode = nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_VBR;
            rc.averageBitRate = 0;
            rc.maxBitRate = bitrate;
            rc.targetQuality = quality.clamp(1, 51) as u8;
        }
    }
    rc.targetQualityLSB = 0;
    rc.vbvBufferSize = bitrate;
    rc.vbvInitialDelay = bitrate;
    // Lookahead delays output behind input; none, and no reordering either.
    rc.set_enableLookahead(0);
    rc.lookaheadDepth = 0;
    rc.set_zeroReorderDelay(1);

    let in_band = u32::from(!settings.global_header);
    match profile.codec {
        VideoCodec::H264 => {
            // SAFETY: the H.264 member of the codec union is the one an H.264
            // session reads; every field of it is valid as whatever the
            // preset (or zeroing) left there.
            let h264 = unsafe { &mut config.encodeCodecConfig.h264Config };
            h264.idrPeriod = gop;
            h264.set_repeatSPSPPS(in_band);
            h264.set_disableSPSPPS(1 - in_band);
            h264.chromaFormatIDC = 1;
            h264.useBFramesAsRef = nv::NV_ENC_BFRAME_REF_MODE::NV_ENC_BFRAME_REF_MODE_DISABLED;
            match profile.h264_profile {
                // Baseline has neither CABAC nor the 8x8 transform; Main no 8x8.
                Some(H264Profile::Baseline) => {
                    h264.entropyCodingMode =
                        nv::NV_ENC_H264_ENTROPY_CODING_MODE::NV_ENC_H264_ENTROPY_CODING_MODE_CAVLC;
                    h264.adaptiveTransformMode =
                        nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE;
                }
                Some(H264Profile::Main) => {
                    h264.adaptiveTransformMode =
                        nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE;
                }
                _ => {}
            }
        }
        VideoCodec::Hevc => {
            // SAFETY: as above, for the HEVC member.
            let hevc = unsafe { &mut config.encodeCodecConfig.hevcConfig };
            hevc.idrPeriod = gop;
            hevc.set_repeatSPSPPS(in_band);
            hevc.set_disableSPSPPS(1 - in_band);
            hevc.set_chromaFormatIDC(1);
            hevc.set_pixelBitDepthMinus8(0);
            hevc.useBFramesAsRef = nv::NV_ENC_BFRAME_REF_MODE::NV_ENC_BFRAME_REF_MODE_DISABLED;
        }
    }
}

/// NV_ENC_INITIALIZE_PARAMS for a synchronous session with picture-type
/// decision, preset P4 / high-quality tuning and `config`.
pub fn initialize_params(
    settings: &EncoderSettings,
    config: *mut nv::NV_ENC_CONFIG,
) -> nv::NV_ENC_INITIALIZE_PARAMS {
    let mut init = params::zeroed_initialize_params();
    let (num, den) = frame_rate_parts(settings.frame_rate);
    init.version = nv::NV_ENC_INITIALIZE_PARAMS_VER;
    init.encodeGUID = codec_guid(settings.profile.codec);
    init.presetGUID = nv::NV_ENC_PRESET_P4_GUID;
    init.tuningInfo = nv::NV_ENC_TUNING_INFO::NV_ENC_TUNING_INFO_HIGH_QUALITY;
    init.encodeWidth = settings.width;
    init.encodeHeight = settings.height;
    init.darWidth = settings.width;
    init.darHeight = settings.height;
    init.maxEncodeWidth = settings.width;
    init.maxEncodeHeight = settings.height;
    init.frameRateNum = num;
    init.frameRateDen = den;
    init.enableEncodeAsync = 0;
    init.enablePTD = 1;
    init.encodeConfig = config;
    init
}

/// Whether an NV_ENC_PIC_TYPE value is a random-access point: an IDR only
/// (pictures after a plain I may reference ones before it), as FFmpeg's
/// nvenc flags packets.
pub fn is_keyframe(picture_type: u32) -> bool {
    picture_type == nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_IDR as u32
}

#[cfg(test)]
mod tests {
    use super::super::params::zeroed_config;
    use super::super::test_settings as settings;
    use super::*;

    fn h264(config: &nv::NV_ENC_CONFIG) -> &nv::NV_ENC_CONFIG_H264 {
        // SAFETY: test configs for H.264 sessions; the union is plain data.
        unsafe { &config.encodeCodecConfig.h264Config }
    }

    fn hevc(config: &nv::NV_ENC_CONFIG) -> &nv::NV_ENC_CONFIG_HEVC {
        // SAFETY: as above, for HEVC.
        unsafe { &config.encodeCodecConfig.hevcConfig }
    }

    #[test]
    fn profile_guids() {
        use H264Profile::*;
        let h264 = |p| profile_guid(VideoCodec::H264, p);
        assert_eq!(h264(Some(Baseline)), nv::NV_ENC_H264_PROFILE_BASELINE_GUID);
        assert_eq!(h264(Some(Main)), nv::NV_ENC_H264_PROFILE_MAIN_GUID);
        assert_eq!(h264(Some(High)), nv::NV_ENC_H264_PROFILE_HIGH_GUID);
        assert_eq!(
            h264(Some(ConstrainedHigh)),
            nv::NV_ENC_H264_PROFILE_HIGH_GUID
        );
        assert_eq!(h264(None), nv::NV_ENC_H264_PROFILE_HIGH_GUID);
        assert_eq!(
            profile_guid(VideoCodec::Hevc, Some(High)),
            nv::NV_ENC_HEVC_PROFILE_MAIN_GUID
        );
        assert_eq!(codec_guid(VideoCodec::H264), nv::NV_ENC_CODEC_H264_GUID);
        assert_eq!(codec_guid(VideoCodec::Hevc), nv::NV_ENC_CODEC_HEVC_GUID);
        // The GUIDs as the header spells them.
        assert_eq!(nv::NV_ENC_H264_PROFILE_HIGH_GUID.Data1, 0xe7cbc309);
        assert_eq!(nv::NV_ENC_PRESET_P4_GUID.Data1, 0x90a7b826);
    }

    #[test]
    fn gop_and_timing() {
        let fps30 = ff::Rational::new(30, 1);
        let ntsc = ff::Rational::new(30000, 1001);
        assert_eq!(gop_frames(Gop::Default, fps30), 250);
        assert_eq!(gop_frames(Gop::Intra, fps30), 1);
        assert_eq!(gop_frames(Gop::Seconds(2.0), fps30), 60);
        assert_eq!(gop_frames(Gop::Seconds(2.0), ntsc), 59);
        assert_eq!(gop_frames(Gop::Seconds(0.01), fps30), 1);
        assert_eq!(gop_frames(Gop::Seconds(2.0), ff::Rational::new(0, 1)), 250);
        assert_eq!(frame_rate_parts(ntsc), (30000, 1001));
        assert_eq!(frame_rate_parts(ff::Rational::new(0, 0)), (30, 1));
        assert_eq!(frame_ticks(ff::Rational::new(1, 90_000), fps30), 3000);
        assert_eq!(frame_ticks(ff::Rational::new(1, 90_000), ntsc), 3003);
        assert_eq!(frame_ticks(ff::Rational::new(1, 1000), ntsc), 33);
        assert_eq!(
            frame_ticks(ff::Rational::new(1, 90_000), ff::Rational::new(0, 1)),
            0
        );
        assert!(is_keyframe(nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_IDR as u32));
        assert!(!is_keyframe(nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_I as u32));
        assert!(!is_keyframe(nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_P as u32));
        assert!(!is_keyframe(
            nv::NV_ENC_PIC_TYPE::NV_ENC_PIC_TYPE_UNKNOWN as u32
        ));
    }

    #[test]
    fn h264_config_mirrors_the_cpu_encoder() {
        let mut s = settings(VideoCodec::H264, false);
        s.profile.h264_profile = Some(H264Profile::Baseline);
        s.profile.gop = Gop::Seconds(2.0);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.version, nv::NV_ENC_CONFIG_VER);
        assert_eq!(config.profileGUID, nv::NV_ENC_H264_PROFILE_BASELINE_GUID);
        assert_eq!(config.gopLength, 60);
        assert_eq!(config.frameIntervalP, 1);
        assert_eq!(
            config.frameFieldMode,
            nv::NV_ENC_PARAMS_FRAME_FIELD_MODE::NV_ENC_PARAMS_FRAME_FIELD_MODE_FRAME
        );
        let rc = &config.rcParams;
        assert_eq!(
            rc.rateControlMode,
            nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_CBR
        );
        assert_eq!(
            (
                rc.averageBitRate,
                rc.maxBitRate,
                rc.vbvBufferSize,
                rc.vbvInitialDelay
            ),
            (600_000, 600_000, 600_000, 600_000)
        );
        assert_eq!((rc.enableLookahead(), rc.lookaheadDepth), (0, 0));
        assert_eq!(rc.zeroReorderDelay(), 1);
        assert_eq!(rc.targetQuality, 0);
        let h = h264(&config);
        assert_eq!(h.idrPeriod, 60);
        assert_eq!((h.repeatSPSPPS(), h.disableSPSPPS()), (1, 0));
        assert_eq!(h.chromaFormatIDC, 1);
        assert_eq!(
            h.entropyCodingMode,
            nv::NV_ENC_H264_ENTROPY_CODING_MODE::NV_ENC_H264_ENTROPY_CODING_MODE_CAVLC
        );
        assert_eq!(
            h.adaptiveTransformMode,
            nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE
        );
        assert_eq!(
            h.useBFramesAsRef,
            nv::NV_ENC_BFRAME_REF_MODE::NV_ENC_BFRAME_REF_MODE_DISABLED
        );

        // MP4: headers out of band only; intra-only; High keeps the preset's
        // entropy coding and transform.
        let mut s = settings(VideoCodec::H264, true);
        s.profile.h264_profile = Some(H264Profile::ConstrainedHigh);
        s.profile.gop = Gop::Intra;
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.profileGUID, nv::NV_ENC_H264_PROFILE_HIGH_GUID);
        assert_eq!((config.gopLength, config.frameIntervalP), (1, 1));
        let h = h264(&config);
        assert_eq!(h.idrPeriod, 1);
        assert_eq!((h.repeatSPSPPS(), h.disableSPSPPS()), (0, 1));
        assert_eq!(
            h.entropyCodingMode,
            nv::NV_ENC_H264_ENTROPY_CODING_MODE::NV_ENC_H264_ENTROPY_CODING_MODE_AUTOSELECT
        );

        // Main: no 8x8 transform; default GOP is x264's 250.
        let mut s = settings(VideoCodec::H264, false);
        s.profile.h264_profile = Some(H264Profile::Main);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.profileGUID, nv::NV_ENC_H264_PROFILE_MAIN_GUID);
        assert_eq!((config.gopLength, h264(&config).idrPeriod), (250, 250));
        assert_eq!(
            h264(&config).adaptiveTransformMode,
            nv::NV_ENC_H264_ADAPTIVE_TRANSFORM_MODE::NV_ENC_H264_ADAPTIVE_TRANSFORM_DISABLE
        );
    }

    #[test]
    fn quality_selects_constant_quality_vbr() {
        let mut s = settings(VideoCodec::H264, false);
        s.profile.quality = Some(23);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        let rc = &config.rcParams;
        assert_eq!(
            rc.rateControlMode,
            nv::NV_ENC_PARAMS_RC_MODE::NV_ENC_PARAMS_RC_VBR
        );
        assert_eq!((rc.targetQuality, rc.targetQualityLSB), (23, 0));
        assert_eq!(
            (rc.averageBitRate, rc.maxBitRate, rc.vbvBufferSize),
            (0, 600_000, 600_000)
        );
        s.profile.quality = Some(80);
        s.profile.bitrate = 0;
        configure(&mut config, &s);
        let rc = &config.rcParams;
        assert_eq!(rc.targetQuality, 51);
        assert_eq!(
            (rc.maxBitRate, rc.vbvBufferSize, rc.vbvInitialDelay),
            (0, 0, 0)
        );
        // An absurd bitrate saturates rather than wrapping.
        s.profile.quality = None;
        s.profile.bitrate = 10_000_000_000;
        configure(&mut config, &s);
        assert_eq!(config.rcParams.averageBitRate, u32::MAX);
    }

    #[test]
    fn hevc_config() {
        let mut s = settings(VideoCodec::Hevc, false);
        s.profile.gop = Gop::Seconds(1.0);
        let mut config = zeroed_config();
        configure(&mut config, &s);
        assert_eq!(config.profileGUID, nv::NV_ENC_HEVC_PROFILE_MAIN_GUID);
        assert_eq!((config.gopLength, config.frameIntervalP), (30, 1));
        let h = hevc(&config);
        assert_eq!(h.idrPeriod, 30);
        assert_eq!((h.repeatSPSPPS(), h.disableSPSPPS()), (1, 0));
        assert_eq!((h.chromaFormatIDC(), h.pixelBitDepthMinus8()), (1, 0));
        let s = settings(VideoCodec::Hevc, true);
        configure(&mut config, &s);
        assert_eq!(
            (hevc(&config).repeatSPSPPS(), hevc(&config).disableSPSPPS()),
            (0, 1)
        );
    }

    #[test]
    fn initialize_params_open_a_synchronous_p4_session() {
        let s = settings(VideoCodec::Hevc, false);
        let mut config = zeroed_config();
        let init = initialize_params(&s, &mut config);
        assert_eq!(init.version, nv::NV_ENC_INITIALIZE_PARAMS_VER);
        assert_eq!(init.encodeGUID, nv::NV_ENC_CODEC_HEVC_GUID);
        assert_eq!(init.presetGUID, nv::NV_ENC_PRESET_P4_GUID);
        assert_eq!(
            init.tuningInfo,
            nv::NV_ENC_TUNING_INFO::NV_ENC_TUNING_INFO_HIGH_QUALITY
        );
        assert_eq!((init.encodeWidth, init.encodeHeight), (320, 180));
        assert_eq!((init.darWidth, init.darHeight), (320, 180));
        assert_eq!((init.frameRateNum, init.frameRateDen), (30, 1));
        assert_eq!((init.enableEncodeAsync, init.enablePTD), (0, 1));
        assert_eq!(init.encodeConfig, &mut config as *mut _);
    }
}
