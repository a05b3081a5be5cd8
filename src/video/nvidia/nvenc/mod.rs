//! NVENC H.264 and HEVC encoding of NV12 frames that are already in a GPU's
//! memory, through `libnvidia-encode.so.1` opened at run time (`api`, with
//! the parameter structs its calls take in `params`). `config` turns a
//! rendition's settings into NVENC's configuration, `session` holds the
//! encode session and its buffers, and the [`NvencEncoder`] here turns
//! frames into packets.
//!
//! How a rendition is encoded:
//! - one session per encoder, on the GPU's primary CUDA context (bound to the
//!   calling thread before every call: frames arrive on a worker thread);
//! - preset P4 with the high-quality tuning (`nvEncGetEncodePresetConfigEx`),
//!   then the profile's rate control and GOP written over it (`configure`),
//!   as the CPU encoder configures libx264: min = average = max rate = VBV
//!   buffer = the profile's bitrate (NVENC's CBR mode), a keyframe every
//!   `gop` (250 frames by default, x264's default), every keyframe an IDR;
//! - **no B-frames and no lookahead** (`frameIntervalP = 1`,
//!   `zeroReorderDelay`), so packets come out in input order and each
//!   packet's `dts` equals its `pts` (the frame's own timestamp);
//! - a profile's `quality` (a CRF-like 1..=51) selects NVENC's constant-quality
//!   VBR mode instead (`targetQuality`), the bitrate then only capping it, as
//!   x264's CRF with a VBV limit;
//! - synchronous mode: each frame is copied into a registered NV12 device
//!   buffer of the encoder's own (luma rows, then the interleaved chroma rows
//!   from `pitch * height`), mapped, encoded, and its bitstream locked (which
//!   waits for the hardware) and copied into an FFmpeg packet. Normally one
//!   input buffer and one bitstream buffer serve every frame; if the driver
//!   ever holds a frame back (`NV_ENC_ERR_NEED_MORE_INPUT`, which this
//!   configuration should never cause) further buffers are added so the held
//!   frame's input stays intact until its output is locked;
//! - MPEG-TS output (`global_header == false`) repeats SPS/PPS (and VPS) at
//!   every IDR; MP4 output gets them once, out of band, as Annex-B extradata
//!   from `nvEncGetSequenceParams` (and not in band, as FFmpeg's nvenc does);
//!   the MP4 muxer converts both the extradata and the Annex-B packets.
//!
//! GPUs without NVENC (H100, H200, A100) fail at `nvEncOpenEncodeSessionEx`;
//! that is an [`NvencError`], never a panic.

pub(super) mod api;
mod config;
mod params;
mod session;

use std::ptr;
use std::sync::Arc;

use ffmpeg_next as ff;

use super::device::GpuDevice;
use super::frame::{GpuFrame, PixelFormat};
use crate::video::backend::{Encoder, EncoderSettings, Frame, FrameData};
use crate::video::profile::VideoCodec;
use crate::video::VideoError;
use api::{guarded, EncodedPicture};
use config::{frame_ticks, gop_frames, is_keyframe};
use session::{EncodeSession, Submitted};

pub use api::{library_loads, NvencError};

/// NVENC H.264 / HEVC encoder of NV12 device frames (see the module docs).
pub struct NvencEncoder {
    session: EncodeSession,
    codec: VideoCodec,
    width: u32,
    height: u32,
    bit_rate: u64,
    /// Annex-B SPS/PPS (VPS) for out-of-band headers; empty for in-band.
    extradata: Vec<u8>,
    frame_ticks: i64,
    submitted: u64,
    finished: bool,
}

impl NvencEncoder {
    /// Opens and initialises a session for one rendition on `device`.
    pub fn new(device: Arc<GpuDevice>, settings: &EncoderSettings) -> Result<Self, VideoError> {
        guarded(|| Self::open(device, settings)).map_err(VideoError::gpu("NVENC setup"))
    }

    fn open(device: Arc<GpuDevice>, settings: &EncoderSettings) -> Result<Self, NvencError> {
        let (width, height) = (settings.width, settings.height);
        if width < 2 || height < 2 || width % 2 != 0 || height % 2 != 0 {
            return Err(NvencError::Invalid(format!(
                "{width}x{height}: NV12 encoding needs even sizes"
            )));
        }
        let codec = settings.profile.codec;
        // What the engine probe found once for this GPU.
        if !device.engines().encodes(codec) {
            return Err(NvencError::Invalid(format!(
                "this GPU's NVENC does not encode {}",
                codec.name()
            )));
        }
        // From here on the session's Drop releases whatever exists.
        let session = EncodeSession::open(device, settings)?;
        let mut encoder = NvencEncoder {
            session,
            codec,
            width,
            height,
            bit_rate: settings.profile.bitrate,
            extradata: Vec::new(),
            frame_ticks: frame_ticks(settings.time_base, settings.frame_rate),
            submitted: 0,
            finished: false,
        };
        if settings.global_header {
            encoder.extradata = encoder.session.sequence_header()?;
        }
        encoder.session.add_slot()?;
        tracing::debug!(
            codec = codec.name(),
            width,
            height,
            bitrate = settings.profile.bitrate,
            gop = gop_frames(settings.profile.gop, settings.frame_rate),
            quality = ?settings.profile.quality,
            global_header = settings.global_header,
            pitch = encoder.session.input_pitch(),
            "NVENC session open"
        );
        Ok(encoder)
    }

    /// Checks that a device frame is what this session encodes.
    fn check_frame(&self, gpu: &GpuFrame) -> Result<(), NvencError> {
        let frame = &gpu.frame;
        if frame.format != PixelFormat::Nv12 {
            return Err(NvencError::Invalid(format!(
                "NVENC encodes 8-bit NV12 here, not {}",
                frame.format.name()
            )));
        }
        if frame.width != self.width as usize || frame.height != self.height as usize {
            return Err(NvencError::Invalid(format!(
                "a {}x{} frame reached a {}x{} NVENC session",
                frame.width, frame.height, self.width, self.height
            )));
        }
        if gpu.device.context().cu_ctx() != self.session.device().context().cu_ctx() {
            return Err(NvencError::Invalid(
                "a frame from another GPU reached this NVENC session".into(),
            ));
        }
        if !frame.planes_fit() {
            return Err(NvencError::Invalid(format!(
                "{}x{} NV12 frame: planes or pitches too small",
                frame.width, frame.height
            )));
        }
        Ok(())
    }

    fn encode_frame(
        &mut self,
        frame: &Frame,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), NvencError> {
        let gpu = match &frame.data {
            FrameData::Device(gpu) => gpu,
            FrameData::Host(_) => {
                return Err(NvencError::Invalid(
                    "a host frame reached the NVENC encoder".into(),
                ))
            }
        };
        if self.finished {
            return Err(NvencError::Invalid(
                "a frame reached the NVENC encoder after the end of the stream".into(),
            ));
        }
        self.check_frame(gpu)?;
        api::bind(self.session.device().context())?;
        let submitted =
            self.session
                .submit(&gpu.frame, &gpu.stream, frame.pts, self.frame_ticks)?;
        self.submitted += 1;
        match submitted {
            Submitted::Output => self.drain(emit),
            Submitted::Held => Ok(()),
        }
    }

    /// Sends end-of-stream and emits whatever output is still pending.
    fn flush(&mut self, emit: &mut dyn FnMut(ff::Packet)) -> Result<(), NvencError> {
        if self.finished {
            return Ok(());
        }
        self.finished = true;
        if self.submitted == 0 {
            return Ok(());
        }
        api::bind(self.session.device().context())?;
        if self.session.end_of_stream()? {
            self.drain(emit)?;
        }
        Ok(())
    }

    /// Reads every pending frame's output, in submission order.
    fn drain(&mut self, emit: &mut dyn FnMut(ff::Packet)) -> Result<(), NvencError> {
        while let Some(output) = self.session.read_next(ff::Packet::copy) {
            if let Some(packet) = self.packet(output?) {
                emit(packet);
            }
        }
        Ok(())
    }

    /// The packet of one picture's output, timestamped; `None` for an empty
    /// output.
    fn packet(&self, output: EncodedPicture<ff::Packet>) -> Option<ff::Packet> {
        // Opaque to NVENC: the input's pts, wrapped to u64 and back.
        let pts = output.timestamp as i64;
        let Some(mut packet) = output.data else {
            tracing::debug!(pts, "NVENC produced an empty picture");
            return None;
        };
        packet.set_pts(Some(pts));
        // No B-frames: decode order is presentation order.
        packet.set_dts(Some(pts));
        if self.frame_ticks > 0 {
            packet.set_duration(self.frame_ticks);
        }
        if is_keyframe(output.picture_type) {
            packet.set_flags(ff::packet::Flags::KEY);
        }
        Some(packet)
    }
}

impl Encoder for NvencEncoder {
    fn encode(
        &mut self,
        frame: Option<&Frame>,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), VideoError> {
        match frame {
            Some(frame) => self.encode_frame(frame, emit),
            None => self.flush(emit),
        }
        .map_err(VideoError::gpu("NVENC encode"))
    }

    fn parameters(&self) -> ff::codec::Parameters {
        stream_parameters(
            self.codec,
            self.width,
            self.height,
            self.bit_rate,
            &self.extradata,
        )
    }
}

/// Codec parameters describing an encoded stream for the muxer: an H.264 or
/// HEVC video stream of `width` x `height` that decodes to YUV 4:2:0, with
/// `extradata` (Annex-B parameter sets; empty for in-band headers).
pub fn stream_parameters(
    codec: VideoCodec,
    width: u32,
    height: u32,
    bit_rate: u64,
    extradata: &[u8],
) -> ff::codec::Parameters {
    let mut parameters = ff::codec::Parameters::new();
    // SAFETY: `Parameters::new` allocates a fresh AVCodecParameters (checked
    // for null) that `parameters` owns; these are plain fields, and the
    // extradata buffer comes from av_mallocz with the zeroed padding FFmpeg
    // requires, so avcodec_parameters_free (in its Drop) frees it with
    // av_free, as it expects.
    unsafe {
        let p = parameters.as_mut_ptr();
        if p.is_null() {
            return parameters;
        }
        (*p).codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
        (*p).codec_id = match codec {
            VideoCodec::H264 => ff::ffi::AVCodecID::AV_CODEC_ID_H264,
            VideoCodec::Hevc => ff::ffi::AVCodecID::AV_CODEC_ID_HEVC,
        };
        (*p).width = width.min(i32::MAX as u32) as i32;
        (*p).height = height.min(i32::MAX as u32) as i32;
        (*p).format = ff::ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32;
        (*p).bit_rate = bit_rate.min(i64::MAX as u64) as i64;
        if !extradata.is_empty() && extradata.len() < i32::MAX as usize / 2 {
            let padding = ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
            let buffer = ff::ffi::av_mallocz(extradata.len() + padding).cast::<u8>();
            if !buffer.is_null() {
                ptr::copy_nonoverlapping(extradata.as_ptr(), buffer, extradata.len());
                (*p).extradata = buffer;
                (*p).extradata_size = extradata.len() as i32;
            }
        }
    }
    parameters
}

/// A rendition's settings for the tests here and in the submodules.
#[cfg(test)]
fn test_settings(codec: VideoCodec, global_header: bool) -> EncoderSettings {
    EncoderSettings {
        profile: crate::video::VideoProfile {
            name: "test".into(),
            width: 320,
            height: 180,
            bitrate: 600_000,
            fps: 30,
            fps_den: 1,
            codec,
            h264_profile: None,
            gop: crate::video::Gop::Default,
            quality: None,
            format: None,
        },
        width: 320,
        height: 180,
        time_base: ff::Rational::new(1, 90_000),
        frame_rate: ff::Rational::new(30, 1),
        global_header,
        preset: "ultrafast".into(),
        threads: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::container::{self, DemuxLimits, MuxTrack};
    use crate::video::cpu::{CpuDecoder, CpuEncoder};
    use crate::video::profile::H264Profile;
    use crate::video::Decoder;
    use test_settings as settings;

    // ---- NVENC-shaped output through the muxer, without a GPU ----

    /// A moving gradient, so that the encoder has something to code.
    fn picture(width: u32, height: u32, index: usize) -> ff::frame::Video {
        let mut video = ff::frame::Video::new(ff::format::Pixel::YUV420P, width, height);
        for plane in 0..3 {
            let stride = video.stride(plane);
            let (w, h) = if plane == 0 {
                (width as usize, height as usize)
            } else {
                (width as usize / 2, height as usize / 2)
            };
            let data = video.data_mut(plane);
            for y in 0..h {
                for x in 0..w {
                    data[y * stride + x] = ((x + 2 * y + 3 * index + 40 * plane) % 256) as u8;
                }
            }
        }
        video
    }

    /// Splits Annex-B bytes into NAL units (start codes removed).
    fn nal_units(data: &[u8]) -> Vec<&[u8]> {
        let mut starts = Vec::new();
        let mut i = 0;
        while i + 3 <= data.len() {
            if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
                starts.push(i + 3);
                i += 3;
            } else {
                i += 1;
            }
        }
        starts
            .iter()
            .enumerate()
            .map(|(n, &start)| {
                let mut end = starts.get(n + 1).map_or(data.len(), |next| next - 3);
                // A 4-byte start code's leading zero belongs to it.
                while end > start && data[end - 1] == 0 {
                    end -= 1;
                }
                &data[start..end]
            })
            .collect()
    }

    fn nal_type(codec: VideoCodec, nal: &[u8]) -> u8 {
        match codec {
            VideoCodec::H264 => nal[0] & 0x1f,
            VideoCodec::Hevc => (nal[0] >> 1) & 0x3f,
        }
    }

    fn is_parameter_set(codec: VideoCodec, nal: &[u8]) -> bool {
        match codec {
            VideoCodec::H264 => matches!(nal_type(codec, nal), 7 | 8),
            VideoCodec::Hevc => matches!(nal_type(codec, nal), 32..=34),
        }
    }

    fn annex_b(nals: &[&[u8]]) -> Vec<u8> {
        nals.iter()
            .flat_map(|nal| [0, 0, 0, 1].iter().chain(nal.iter()).copied())
            .collect()
    }

    const FRAMES: usize = 12;

    /// Encodes FRAMES pictures with the CPU encoder, headers in band, no
    /// B-frames: what NVENC emits for MPEG-TS.
    fn cpu_packets(codec: VideoCodec) -> Option<(EncoderSettings, Vec<ff::Packet>)> {
        crate::video::init_ffmpeg();
        ff::encoder::find_by_name(CpuEncoder::library(codec))?;
        let mut s = settings(codec, false);
        // The CPU encoder drops B-frames for this profile (for either codec).
        s.profile.h264_profile = Some(H264Profile::ConstrainedHigh);
        let mut encoder = CpuEncoder::new(&s).expect("CPU encoder opens");
        let mut packets = Vec::new();
        let ticks = frame_ticks(s.time_base, s.frame_rate);
        for i in 0..FRAMES {
            let frame = Frame::host(picture(s.width, s.height, i), i as i64 * ticks);
            encoder
                .encode(Some(&frame), &mut |p| packets.push(p))
                .expect("encodes");
        }
        encoder
            .encode(None, &mut |p| packets.push(p))
            .expect("flushes");
        assert_eq!(packets.len(), FRAMES);
        for (i, p) in packets.iter().enumerate() {
            // NVENC's packet shape: decode order is presentation order.
            assert_eq!(p.pts(), Some(i as i64 * ticks));
            assert_eq!(p.dts(), p.pts());
        }
        assert!(packets[0].is_key());
        Some((s, packets))
    }

    /// Demuxes and decodes a rendition, returning its frames' sizes.
    fn decode_all(bytes: Vec<u8>, codec: VideoCodec) -> Vec<(u32, u32)> {
        let segment =
            container::demux(Arc::from(bytes), &DemuxLimits::default(), None).expect("demuxes");
        let id = match codec {
            VideoCodec::H264 => ff::codec::Id::H264,
            VideoCodec::Hevc => ff::codec::Id::HEVC,
        };
        assert_eq!(segment.codec, id);
        assert_eq!(segment.video_packets.len(), FRAMES);
        let mut decoder = CpuDecoder::new(&segment.video).expect("decoder opens");
        let mut sizes = Vec::new();
        for packet in segment.video_packets.iter().map(Some).chain([None]) {
            decoder
                .decode(packet, &mut |f| {
                    sizes.push((f.width, f.height));
                    Ok(())
                })
                .expect("decodes");
        }
        sizes
    }

    /// The MP4 path: parameter sets only in Annex-B extradata (as
    /// nvEncGetSequenceParams gives them, with disableSPSPPS), Annex-B
    /// packets without them.
    fn mp4_round_trip(codec: VideoCodec) {
        let Some((s, packets)) = cpu_packets(codec) else {
            eprintln!(
                "{} is not in this FFmpeg build; skipped",
                CpuEncoder::library(codec)
            );
            return;
        };
        let first = packets[0].data().expect("packet data");
        let headers: Vec<&[u8]> = nal_units(first)
            .into_iter()
            .filter(|nal| is_parameter_set(codec, nal))
            .collect();
        let wanted = if codec == VideoCodec::H264 { 2 } else { 3 };
        assert_eq!(
            headers.len(),
            wanted,
            "parameter sets in the first keyframe"
        );
        let extradata = annex_b(&headers);

        let stripped: Vec<ff::Packet> = packets
            .iter()
            .map(|p| {
                let nals: Vec<&[u8]> = nal_units(p.data().expect("packet data"))
                    .into_iter()
                    .filter(|nal| !is_parameter_set(codec, nal))
                    .collect();
                let mut out = ff::Packet::copy(&annex_b(&nals));
                out.set_pts(p.pts());
                out.set_dts(p.dts());
                out.set_duration(p.duration());
                out.set_flags(p.flags());
                out
            })
            .collect();

        let parameters = stream_parameters(codec, s.width, s.height, s.profile.bitrate, &extradata);
        assert_eq!(
            parameters.id(),
            match codec {
                VideoCodec::H264 => ff::codec::Id::H264,
                VideoCodec::Hevc => ff::codec::Id::HEVC,
            }
        );
        assert_eq!(parameters.medium(), ff::media::Type::Video);
        assert_eq!(parameters.bit_rate(), 600_000);
        // SAFETY: reads plain fields of the parameters just built.
        unsafe {
            let p = parameters.as_ptr();
            assert_eq!(((*p).width, (*p).height), (320, 180));
            assert_eq!(
                (*p).format,
                ff::ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32
            );
            assert_eq!((*p).extradata_size as usize, extradata.len());
            let copied = std::slice::from_raw_parts((*p).extradata, extradata.len());
            assert_eq!(copied, &extradata[..]);
        }
        let mp4 = container::mux(
            "mp4",
            &[MuxTrack {
                parameters,
                time_base: s.time_base,
                packets: &stripped,
            }],
        )
        .expect("muxes to MP4");
        let sizes = decode_all(mp4, codec);
        assert_eq!(sizes, vec![(320, 180); FRAMES]);
    }

    #[test]
    fn h264_mp4_with_annex_b_extradata_plays() {
        mp4_round_trip(VideoCodec::H264);
    }

    #[test]
    fn hevc_mp4_with_annex_b_extradata_plays() {
        mp4_round_trip(VideoCodec::Hevc);
    }

    #[test]
    fn mpegts_with_in_band_headers_plays() {
        let codec = VideoCodec::H264;
        let (s, packets) = cpu_packets(codec).expect("libx264 is in this FFmpeg build");
        let parameters = stream_parameters(codec, s.width, s.height, s.profile.bitrate, &[]);
        // SAFETY: reads a plain field of the parameters just built.
        assert_eq!(unsafe { (*parameters.as_ptr()).extradata_size }, 0);
        let ts = container::mux(
            "mpegts",
            &[MuxTrack {
                parameters,
                time_base: s.time_base,
                packets: &packets,
            }],
        )
        .expect("muxes to MPEG-TS");
        assert_eq!(decode_all(ts, codec), vec![(320, 180); FRAMES]);
    }

    #[test]
    fn nal_splitting() {
        let data = [
            0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 0,
        ];
        let nals = nal_units(&data);
        assert_eq!(
            nals,
            vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4][..]]
        );
        assert!(is_parameter_set(VideoCodec::H264, nals[0]));
        assert!(!is_parameter_set(VideoCodec::H264, nals[2]));
        assert_eq!(annex_b(&nals[..1]), vec![0, 0, 0, 1, 0x67, 1, 2]);
    }
}
