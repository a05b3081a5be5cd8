//! How the hardware decoder is created for a sequence: the parser's format
//! checked against what this decoder and the GPU take, and
//! cuvidCreateDecoder's parameters derived from it. Pure, so it is tested
//! without a GPU.

use std::ffi::c_ulong;
use std::ptr;

use nvidia_video_codec_sdk::sys::cuviddec::{
    _CUVIDDECODECREATEINFO__bindgen_ty_1 as DisplayArea, cudaVideoChromaFormat,
    cudaVideoCreateFlags, cudaVideoDeinterlaceMode, cudaVideoSurfaceFormat, CUVIDDECODECREATEINFO,
};
use nvidia_video_codec_sdk::sys::nvcuvid::CUVIDEOFORMAT;

use super::super::engines::DecodeLimits;
use super::api::{cuvid_codec, NvdecError};
use crate::video::profile::VideoCodec;

/// The fields of a CUVIDEOFORMAT the decoder is created from, read without
/// trusting its enums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceFormat {
    codec: u32,
    chroma_format: u32,
    bit_depth_luma_minus8: u8,
    bit_depth_chroma_minus8: u8,
    progressive: bool,
    min_surfaces: u8,
    coded_width: u32,
    coded_height: u32,
    /// left, top, right, bottom
    display: [i32; 4],
}

impl SequenceFormat {
    /// # Safety
    /// `format` must point to a readable, initialised CUVIDEOFORMAT.
    pub unsafe fn read(format: *const CUVIDEOFORMAT) -> SequenceFormat {
        // SAFETY: the caller guarantees `format`; the enum fields are read as
        // the 32-bit integers C stores, so any value is defined.
        unsafe {
            let area = (*format).display_area;
            SequenceFormat {
                codec: ptr::addr_of!((*format).codec).cast::<u32>().read(),
                chroma_format: ptr::addr_of!((*format).chroma_format).cast::<u32>().read(),
                bit_depth_luma_minus8: (*format).bit_depth_luma_minus8,
                bit_depth_chroma_minus8: (*format).bit_depth_chroma_minus8,
                progressive: (*format).progressive_sequence != 0,
                min_surfaces: (*format).min_num_decode_surfaces,
                coded_width: (*format).coded_width,
                coded_height: (*format).coded_height,
                display: [area.left, area.top, area.right, area.bottom],
            }
        }
    }
}

/// How the decoder is created for a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderConfig {
    pub codec: VideoCodec,
    pub coded_width: u32,
    pub coded_height: u32,
    /// The crop NVDEC applies: left, top, right, bottom in the coded frame.
    pub display: [i16; 4],
    /// Output (and frame) size: the display area's, rounded up to even.
    pub target_width: u32,
    pub target_height: u32,
    /// Decode surfaces, returned to the parser.
    pub surfaces: u32,
    pub progressive: bool,
}

/// Checks the parser's format against what this decoder and the GPU take and
/// derives the decoder's configuration.
pub fn decoder_config(
    format: &SequenceFormat,
    codec: VideoCodec,
    limits: &DecodeLimits,
) -> Result<DecoderConfig, NvdecError> {
    let unsupported = |what: String| Err(NvdecError::Unsupported(what));
    if format.codec != cuvid_codec(codec) as u32 {
        return unsupported(format!(
            "the parser reports codec {} for a {} stream",
            format.codec,
            codec.name()
        ));
    }
    if format.chroma_format != cudaVideoChromaFormat::cudaVideoChromaFormat_420 as u32 {
        let name = match format.chroma_format {
            0 => "monochrome",
            2 => "4:2:2",
            3 => "4:4:4",
            _ => "unknown",
        };
        return unsupported(format!("{name} chroma (only 4:2:0 is decoded)"));
    }
    if format.bit_depth_luma_minus8 != 0 || format.bit_depth_chroma_minus8 != 0 {
        return unsupported(format!(
            "{}-bit video (only 8-bit is decoded)",
            8 + u32::from(
                format
                    .bit_depth_luma_minus8
                    .max(format.bit_depth_chroma_minus8)
            )
        ));
    }
    let (width, height) = (format.coded_width, format.coded_height);
    let macroblocks = u64::from(width / 16) * u64::from(height / 16);
    if width < limits.min_width.max(1)
        || height < limits.min_height.max(1)
        || width > limits.max_width
        || height > limits.max_height
        || macroblocks > u64::from(limits.max_macroblocks)
    {
        return unsupported(format!(
            "coded size {width}x{height} is outside this GPU's range for {} \
             ({}x{} to {}x{}, {} macroblocks)",
            codec.name(),
            limits.min_width,
            limits.min_height,
            limits.max_width,
            limits.max_height,
            limits.max_macroblocks
        ));
    }
    // The display area, inside the coded frame; an empty one means all of it.
    let [left, top, right, bottom] = format.display;
    let clamp = |v: i32, max: u32| v.clamp(0, i32::try_from(max).unwrap_or(i32::MAX));
    let (left, right) = (clamp(left, width), clamp(right, width));
    let (top, bottom) = (clamp(top, height), clamp(bottom, height));
    let (left, top, right, bottom) = if right > left && bottom > top {
        (left, top, right, bottom)
    } else {
        (0, 0, clamp(i32::MAX, width), clamp(i32::MAX, height))
    };
    let short = |v: i32| {
        i16::try_from(v).map_err(|_| {
            NvdecError::Unsupported(format!("display area coordinate {v} out of range"))
        })
    };
    let display = [short(left)?, short(top)?, short(right)?, short(bottom)?];
    let even = |v: i32| (v.unsigned_abs() + 1) & !1;
    Ok(DecoderConfig {
        codec,
        coded_width: width,
        coded_height: height,
        display,
        target_width: even(right - left),
        target_height: even(bottom - top),
        surfaces: u32::from(format.min_surfaces.max(1)),
        progressive: format.progressive,
    })
}

/// cuvidCreateDecoder's parameters for `config`: NV12 output at the target
/// size, cropped to the display area, as NVIDIA's NvDecoder sample creates it.
pub fn create_info(config: &DecoderConfig) -> CUVIDDECODECREATEINFO {
    let [left, top, right, bottom] = config.display;
    CUVIDDECODECREATEINFO {
        ulWidth: c_ulong::from(config.coded_width),
        ulHeight: c_ulong::from(config.coded_height),
        ulNumDecodeSurfaces: c_ulong::from(config.surfaces),
        CodecType: cuvid_codec(config.codec),
        ChromaFormat: cudaVideoChromaFormat::cudaVideoChromaFormat_420,
        ulCreationFlags: cudaVideoCreateFlags::cudaVideoCreate_PreferCUVID as c_ulong,
        bitDepthMinus8: 0,
        ulIntraDecodeOnly: 0,
        ulMaxWidth: c_ulong::from(config.coded_width),
        ulMaxHeight: c_ulong::from(config.coded_height),
        display_area: DisplayArea {
            left,
            top,
            right,
            bottom,
        },
        OutputFormat: cudaVideoSurfaceFormat::cudaVideoSurfaceFormat_NV12,
        DeinterlaceMode: if config.progressive {
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Weave
        } else {
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Adaptive
        },
        ulTargetWidth: c_ulong::from(config.target_width),
        ulTargetHeight: c_ulong::from(config.target_height),
        ulNumOutputSurfaces: 2,
        vidLock: ptr::null_mut(),
        // target_rect zero: the whole target.
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nvidia_video_codec_sdk::sys::cuviddec::cudaVideoCodec;

    fn format_1080p() -> CUVIDEOFORMAT {
        let mut format = CUVIDEOFORMAT {
            codec: cudaVideoCodec::cudaVideoCodec_H264,
            chroma_format: cudaVideoChromaFormat::cudaVideoChromaFormat_420,
            progressive_sequence: 1,
            min_num_decode_surfaces: 9,
            coded_width: 1920,
            coded_height: 1088,
            ..Default::default()
        };
        format.display_area.right = 1920;
        format.display_area.bottom = 1080;
        format
    }

    const LIMITS: DecodeLimits = DecodeLimits {
        min_width: 48,
        min_height: 16,
        max_width: 4096,
        max_height: 4096,
        max_macroblocks: 65536,
    };

    fn config_of(format: &CUVIDEOFORMAT, codec: VideoCodec) -> Result<DecoderConfig, NvdecError> {
        // SAFETY: a valid, initialised CUVIDEOFORMAT.
        let format = unsafe { SequenceFormat::read(format) };
        decoder_config(&format, codec, &LIMITS)
    }

    #[test]
    fn decoder_creation_follows_the_sequence_format() {
        let config = config_of(&format_1080p(), VideoCodec::H264).expect("1080p decodes");
        assert_eq!((config.target_width, config.target_height), (1920, 1080));
        assert_eq!(config.display, [0, 0, 1920, 1080]);
        assert_eq!(config.surfaces, 9);
        let info = create_info(&config);
        assert_eq!((info.ulWidth, info.ulHeight), (1920, 1088));
        assert_eq!((info.ulTargetWidth, info.ulTargetHeight), (1920, 1080));
        assert_eq!(
            (
                info.display_area.left,
                info.display_area.top,
                info.display_area.right,
                info.display_area.bottom
            ),
            (0, 0, 1920, 1080)
        );
        assert_eq!(info.ulNumDecodeSurfaces, 9);
        assert_eq!(info.ulNumOutputSurfaces, 2);
        assert_eq!(info.CodecType, cudaVideoCodec::cudaVideoCodec_H264);
        assert_eq!(
            info.ChromaFormat,
            cudaVideoChromaFormat::cudaVideoChromaFormat_420
        );
        assert_eq!(
            info.OutputFormat,
            cudaVideoSurfaceFormat::cudaVideoSurfaceFormat_NV12
        );
        assert_eq!(info.bitDepthMinus8, 0);
        assert_eq!(
            info.DeinterlaceMode,
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Weave
        );
        assert_eq!(
            info.ulCreationFlags,
            cudaVideoCreateFlags::cudaVideoCreate_PreferCUVID as c_ulong
        );
        assert!(info.vidLock.is_null());

        // Interlaced: adaptive deinterlacing.
        let mut interlaced = format_1080p();
        interlaced.progressive_sequence = 0;
        let info = create_info(&config_of(&interlaced, VideoCodec::H264).unwrap());
        assert_eq!(
            info.DeinterlaceMode,
            cudaVideoDeinterlaceMode::cudaVideoDeinterlaceMode_Adaptive
        );

        // A cropped, odd display area: the output rounds up to even.
        let mut cropped = format_1080p();
        cropped.display_area.left = 8;
        cropped.display_area.top = 2;
        cropped.display_area.right = 1289;
        cropped.display_area.bottom = 723;
        let config = config_of(&cropped, VideoCodec::H264).unwrap();
        assert_eq!(config.display, [8, 2, 1289, 723]);
        assert_eq!((config.target_width, config.target_height), (1282, 722));

        // An empty display area means the whole coded frame.
        let mut uncropped = format_1080p();
        uncropped.display_area.right = 0;
        uncropped.display_area.bottom = 0;
        let config = config_of(&uncropped, VideoCodec::H264).unwrap();
        assert_eq!((config.target_width, config.target_height), (1920, 1088));

        // Refused: more than 8 bits, other chroma, another codec, too large.
        let mut ten_bit = format_1080p();
        ten_bit.bit_depth_luma_minus8 = 2;
        let e = config_of(&ten_bit, VideoCodec::H264).unwrap_err();
        assert!(e.to_string().contains("10-bit"), "{e}");
        let mut yuv444 = format_1080p();
        yuv444.chroma_format = cudaVideoChromaFormat::cudaVideoChromaFormat_444;
        assert!(config_of(&yuv444, VideoCodec::H264).is_err());
        assert!(config_of(&format_1080p(), VideoCodec::Hevc).is_err());
        let mut huge = format_1080p();
        huge.coded_width = 8192;
        assert!(config_of(&huge, VideoCodec::H264).is_err());
        let mut tiny = format_1080p();
        tiny.coded_width = 32;
        assert!(config_of(&tiny, VideoCodec::H264).is_err());
    }
}
