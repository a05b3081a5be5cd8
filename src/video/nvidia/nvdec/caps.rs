//! Which streams NVDEC takes, from the demuxer's codec parameters alone (no
//! GPU): H.264 and HEVC, 8-bit 4:2:0. What a given GPU decodes, and up to
//! which sizes, is its engines' answer (`super::super::engines`).

use std::ffi::c_int;

use ff::ffi::AVPixelFormat::{AV_PIX_FMT_NONE, AV_PIX_FMT_YUV420P, AV_PIX_FMT_YUVJ420P};
use ffmpeg_next as ff;

use crate::video::backend::VideoStreamInfo;
use crate::video::profile::VideoCodec;

/// The codec of a stream NVDEC may decode.
pub fn stream_codec(id: ff::codec::Id) -> Option<VideoCodec> {
    match id {
        ff::codec::Id::H264 => Some(VideoCodec::H264),
        ff::codec::Id::HEVC => Some(VideoCodec::Hevc),
        _ => None,
    }
}

/// Whether NVDEC can take this stream: H.264/HEVC, 8-bit 4:2:0 (from the
/// codec parameters' codec id and pixel format; yuv420p / yuvj420p / unknown
/// accepted; 10-bit or 4:2:2/4:4:4 refused). Pure function, no GPU.
///
/// Where the pixel format is unknown, a profile that implies more than 8 bits
/// or 4:2:0 (H.264 High 10/4:2:2/4:4:4, HEVC Main 10/RExt) or a known sample
/// depth above 8 bits refuses the stream.
pub fn supports_stream(stream: &VideoStreamInfo) -> bool {
    let Some(codec) = stream_codec(stream.parameters.id()) else {
        return false;
    };
    // SAFETY: `parameters` wraps a live AVCodecParameters; three ints are read.
    let (format, profile, bits) = unsafe {
        let p = stream.parameters.as_ptr();
        ((*p).format, (*p).profile, (*p).bits_per_raw_sample)
    };
    if format == AV_PIX_FMT_YUV420P as c_int || format == AV_PIX_FMT_YUVJ420P as c_int {
        return true;
    }
    if format != AV_PIX_FMT_NONE as c_int {
        return false;
    }
    if bits > 8 {
        return false;
    }
    match codec {
        // FF_PROFILE_H264_*: High 10 (110), High 4:2:2 (122), High 4:4:4
        // (144, 244), CAVLC 4:4:4 (44), with or without the intra flag (2048).
        VideoCodec::H264 => !matches!(profile & !2048, 44 | 110 | 122 | 144 | 244),
        // FF_PROFILE_HEVC_MAIN_10 (2), FF_PROFILE_HEVC_REXT (4).
        VideoCodec::Hevc => !matches!(profile, 2 | 4),
    }
}

#[cfg(test)]
mod tests {
    use super::super::clip;
    use super::*;

    #[test]
    fn supports_8_bit_4_2_0_h264_and_hevc_only() {
        let h264 = clip(64, 64, "libx264", "yuv420p", "ts");
        let hevc = clip(64, 64, "libx265", "yuv420p", "ts");
        let h264_10 = clip(64, 64, "libx264", "yuv420p10le", "ts");
        let h264_444 = clip(64, 64, "libx264", "yuv444p", "mp4");
        assert!(supports_stream(&h264.video));
        assert!(supports_stream(&hevc.video));
        assert!(!supports_stream(&h264_10.video));
        assert!(!supports_stream(&h264_444.video));

        // An unknown pixel format is accepted, unless the profile rules it out.
        let with = |stream: &VideoStreamInfo, format: c_int, profile: Option<c_int>| {
            let mut stream = stream.clone();
            // SAFETY: `parameters` is our own copy; two ints are written.
            unsafe {
                let p = stream.parameters.as_mut_ptr();
                (*p).format = format;
                if let Some(profile) = profile {
                    (*p).profile = profile;
                }
            }
            stream
        };
        assert!(supports_stream(&with(&h264.video, -1, None)));
        assert!(supports_stream(&with(&hevc.video, -1, None)));
        assert!(!supports_stream(&with(&h264.video, -1, Some(110))));
        assert!(!supports_stream(&with(&hevc.video, -1, Some(2))));
        let yuvj = ff::ffi::AVPixelFormat::AV_PIX_FMT_YUVJ420P as c_int;
        assert!(supports_stream(&with(&h264.video, yuvj, None)));
        let nv12 = ff::ffi::AVPixelFormat::AV_PIX_FMT_NV12 as c_int;
        assert!(!supports_stream(&with(&h264.video, nv12, None)));
    }
}
