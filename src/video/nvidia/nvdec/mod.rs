//! NVDEC decoding of H.264 and HEVC (8-bit 4:2:0) into NV12 frames in CUDA
//! device memory.
//!
//! `libnvcuvid.so.1` is opened at run time (`api`). The flow is NVIDIA's
//! `NvDecoder` sample's: packets, converted to Annex B by FFmpeg's
//! `*_mp4toannexb` filter, go to NVIDIA's bitstream parser, whose callbacks
//! (`parser`) create the hardware decoder for each sequence (`config`),
//! submit the pictures and copy the decoded ones out. `caps` says which
//! streams it takes.

pub(super) mod api;
mod caps;
mod config;
mod parser;
#[cfg(test)]
mod parser_check;

use std::sync::Arc;

use cudarc::driver::CudaStream;
use ffmpeg_next as ff;

use super::device::GpuDevice;
use super::frame::GpuFrame;
use crate::video::backend::{Decoder, Frame, FrameData, VideoStreamInfo};
use crate::video::bsf::BitstreamFilter;
use crate::video::profile::VideoCodec;
use crate::video::VideoError;
use api::guarded;
use caps::stream_codec;
use parser::{Nvdec, Parser, PictureEngine};

pub use api::{library_loads, NvdecError};
pub use caps::supports_stream;
pub use parser::ParserClock;

/// `VideoError::Gpu` stages.
const SETUP: &str = "NVDEC setup";
const DECODE: &str = "NVDEC decode";

/// Turns the demuxer's packets into the Annex B byte stream NVIDIA's parser
/// reads: MP4's length-prefixed NAL units (with the parameter sets from
/// avcC/hvcC put in front of keyframes) through FFmpeg's `h264_mp4toannexb`
/// / `hevc_mp4toannexb`; input that is Annex B already (MPEG-TS) passes
/// through unchanged.
struct AnnexB {
    filter: BitstreamFilter,
}

impl AnnexB {
    fn new(stream: &VideoStreamInfo) -> Result<AnnexB, VideoError> {
        let name = match stream_codec(stream.parameters.id()) {
            Some(VideoCodec::H264) => "h264_mp4toannexb",
            Some(VideoCodec::Hevc) => "hevc_mp4toannexb",
            None => {
                return Err(VideoError::UnsupportedCodec(
                    format!("{:?}", stream.parameters.id()).to_lowercase(),
                ))
            }
        };
        Ok(AnnexB {
            filter: BitstreamFilter::new(name, &stream.parameters, stream.time_base)?,
        })
    }

    /// The Annex B packets for one demuxed packet (usually exactly one).
    fn convert(&mut self, packet: &ff::Packet) -> Vec<ff::Packet> {
        self.filter.filter(packet.clone())
    }

    /// Signals the end of the stream and returns what the filter held.
    fn flush(&mut self) -> Vec<ff::Packet> {
        // A packet without data or side data is libavcodec's end of stream.
        self.filter.filter(ff::Packet::empty())
    }
}

/// An NVDEC decoder for one H.264 or HEVC stream; frames come out as NV12 in
/// the GPU's memory.
pub struct NvdecDecoder {
    feed: Feed<Nvdec>,
    device: Arc<GpuDevice>,
    /// The stream this decoder's pictures are copied out on, its own.
    stream: Arc<CudaStream>,
}

/// Demuxed packets into the parser: converted to Annex B, with their
/// presentation times in the parser's clock, then the end of stream once.
struct Feed<E: PictureEngine> {
    parser: Parser<E>,
    annexb: AnnexB,
    clock: ParserClock,
    /// The end of stream was sent to the parser.
    flushed: bool,
}

impl<E: PictureEngine> Feed<E> {
    /// Parses one packet (`None`: the end of the stream), running the
    /// callbacks; stops early once decoding failed for good. The engine's
    /// context must be current.
    fn packet(&mut self, packet: Option<&ff::Packet>) {
        let packets = match packet {
            Some(packet) => self.annexb.convert(packet),
            None => self.annexb.flush(),
        };
        for packet in &packets {
            if self.parser.state().fatal.is_some() {
                break;
            }
            if let Some(data) = packet.data().filter(|d| !d.is_empty()) {
                // Only a presentation time: a decode time would come back
                // in display order as the wrong picture's.
                let timestamp = packet.pts().map(|pts| self.clock.to_parser(pts));
                self.parser.parse(data, timestamp, false);
            }
        }
        if packet.is_none() && !self.flushed && self.parser.state().fatal.is_none() {
            self.flushed = true;
            self.parser.parse(&[], None, true);
        }
    }

    /// The pictures shown since the last call, in display order, with
    /// their presentation times back in the stream's time base.
    fn shown(&mut self) -> Vec<(i64, E::Picture)> {
        let clock = self.clock;
        std::mem::take(&mut self.parser.state().frames)
            .into_iter()
            .map(|(timestamp, picture)| (clock.from_parser(timestamp), picture))
            .collect()
    }
}

impl NvdecDecoder {
    /// Opens a decoder for `stream` on `device`. Fails (for a CPU fallback)
    /// when the library is missing, the stream is not 8-bit 4:2:0 H.264/HEVC
    /// or its size is outside what the GPU's NVDEC decodes.
    pub fn new(device: Arc<GpuDevice>, stream: &VideoStreamInfo) -> Result<Self, VideoError> {
        let Some(codec) = stream_codec(stream.parameters.id()) else {
            return Err(VideoError::UnsupportedCodec(
                format!("{:?}", stream.parameters.id()).to_lowercase(),
            ));
        };
        if !supports_stream(stream) {
            return Err(VideoError::gpu(SETUP)(NvdecError::Unsupported(
                "not 8-bit 4:2:0 video".into(),
            )));
        }
        let api = api::api().map_err(VideoError::gpu(SETUP))?;
        let annexb = AnnexB::new(stream)?;
        // The caps the engine probe read once for this GPU.
        let limits = device.engines().decode_limits(codec).ok_or_else(|| {
            VideoError::gpu(SETUP)(NvdecError::Unsupported(format!(
                "this GPU's NVDEC does not decode 8-bit 4:2:0 {}",
                codec.name()
            )))
        })?;
        // SAFETY: `parameters` wraps a live AVCodecParameters; two ints are read.
        let (width, height) = unsafe {
            let p = stream.parameters.as_ptr();
            ((*p).width, (*p).height)
        };
        let (width, height) = (width.max(0) as u32, height.max(0) as u32);
        if width > 0
            && height > 0
            && (width < limits.min_width
                || height < limits.min_height
                || width > limits.max_width
                || height > limits.max_height)
        {
            return Err(VideoError::gpu(SETUP)(NvdecError::Unsupported(format!(
                "{width}x{height} is outside this GPU's range for {} ({}x{} to {}x{})",
                codec.name(),
                limits.min_width,
                limits.min_height,
                limits.max_width,
                limits.max_height
            ))));
        }
        let clock = ParserClock::for_time_base(stream.time_base);
        let stream = device.new_stream().map_err(VideoError::gpu(SETUP))?;
        let engine = Nvdec::new(api, Arc::clone(&stream));
        let parser =
            Parser::new(api, engine, codec, limits, clock.rate).map_err(VideoError::gpu(SETUP))?;
        tracing::debug!(codec = codec.name(), ?limits, "NVDEC parser created");
        Ok(NvdecDecoder {
            feed: Feed {
                parser,
                annexb,
                clock,
                flushed: false,
            },
            device,
            stream,
        })
    }
}

impl Decoder for NvdecDecoder {
    fn decode(
        &mut self,
        packet: Option<&ff::Packet>,
        emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
    ) -> Result<(), VideoError> {
        if let Some(e) = &self.feed.parser.state().fatal {
            return Err(VideoError::gpu(DECODE)(e));
        }
        let context = Arc::clone(self.device.context());
        guarded(|| api::bind(&context)).map_err(VideoError::gpu(DECODE))?;
        self.feed.packet(packet);
        for (pts, frame) in self.feed.shown() {
            emit(Frame {
                pts,
                width: frame.width as u32,
                height: frame.height as u32,
                data: FrameData::Device(GpuFrame {
                    device: Arc::clone(&self.device),
                    frame,
                    stream: Arc::clone(&self.stream),
                }),
            })?;
        }
        let state = self.feed.parser.state();
        if let Some(e) = &state.fatal {
            return Err(VideoError::gpu(DECODE)(e));
        }
        if state.damaged > 0 {
            tracing::debug!(
                pictures = state.damaged,
                last = state.last_damage.as_deref().unwrap_or_default(),
                "NVDEC skipped damaged pictures"
            );
            state.damaged = 0;
            return Err(VideoError::Decode(ff::Error::InvalidData));
        }
        Ok(())
    }
}

/// A 1 s testsrc2 clip from the FFmpeg CLI, demuxed.
#[cfg(test)]
fn clip(
    width: u32,
    height: u32,
    codec: &str,
    pix_fmt: &str,
    ext: &str,
) -> crate::video::container::DemuxedSegment {
    use crate::video::container::{demux, DemuxLimits};
    let bytes = crate::video::test_clip(width, height, codec, pix_fmt, ext);
    demux(bytes.into(), &DemuxLimits::default(), None).expect("the clip demuxes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::container::DemuxedSegment;

    fn starts_with_start_code(data: &[u8]) -> bool {
        data.starts_with(&[0, 0, 0, 1]) || data.starts_with(&[0, 0, 1])
    }

    /// Every video packet of `segment` through [`AnnexB`], flushed.
    fn to_annex_b(segment: &DemuxedSegment) -> Vec<ff::Packet> {
        let mut annexb = AnnexB::new(&segment.video).expect("filter opens");
        let mut out: Vec<ff::Packet> = segment
            .video_packets
            .iter()
            .flat_map(|packet| annexb.convert(packet))
            .collect();
        out.extend(annexb.flush());
        out
    }

    #[test]
    fn mp4_packets_become_annex_b_and_mpegts_packets_pass_unchanged() {
        for codec in ["libx264", "libx265"] {
            let mp4 = clip(64, 64, codec, "yuv420p", "mp4");
            assert!(!mp4.video_packets.is_empty());
            // MP4 stores NAL units with 4-byte length prefixes.
            let first = mp4.video_packets[0].data().expect("data");
            assert!(
                !starts_with_start_code(first),
                "{codec}: MP4 already Annex B?"
            );
            let out = to_annex_b(&mp4);
            assert_eq!(out.len(), mp4.video_packets.len(), "{codec}");
            for (packet, original) in out.iter().zip(&mp4.video_packets) {
                let data = packet.data().expect("data");
                assert!(starts_with_start_code(data), "{codec}: {:02x?}", &data[..8]);
                assert_eq!(packet.pts(), original.pts());
            }
            // The keyframe carries the parameter sets from avcC/hvcC in band.
            let key = out[0].data().expect("data");
            let nal_types: Vec<u8> = key
                .windows(4)
                .filter(|w| w[..3] == [0, 0, 1])
                .map(|w| match codec {
                    "libx264" => w[3] & 0x1f,
                    _ => (w[3] >> 1) & 0x3f,
                })
                .collect();
            let (sps, pps) = if codec == "libx264" { (7, 8) } else { (33, 34) };
            assert!(
                nal_types.contains(&sps) && nal_types.contains(&pps),
                "{codec}: {nal_types:?}"
            );

            let ts = clip(64, 64, codec, "yuv420p", "ts");
            let out = to_annex_b(&ts);
            assert_eq!(out.len(), ts.video_packets.len(), "{codec}");
            for (packet, original) in out.iter().zip(&ts.video_packets) {
                assert_eq!(packet.data(), original.data(), "{codec}");
                assert_eq!(packet.pts(), original.pts());
            }
        }
    }

    /// On a machine with an NVIDIA GPU and libnvcuvid: NVDEC's frames are
    /// the CPU decoder's, bit for bit, with the same timestamps (H.264 with
    /// B-frames in MPEG-TS, HEVC in MP4, both with a cropped coded size).
    /// Elsewhere it returns at once.
    #[test]
    fn decodes_like_the_cpu_decoder_where_a_gpu_is_present() {
        use crate::video::cpu::CpuDecoder;

        let Some(info) = super::super::probe::probe()
            .into_iter()
            .find(|g| g.nvdec_library)
        else {
            return;
        };
        let device = super::super::device::open_shared(&info).expect("GPU opens");
        let codecs = super::super::engines::decode_codecs(device.context()).expect("decoder caps");
        for codec in [VideoCodec::H264, VideoCodec::Hevc] {
            assert!(
                codecs
                    .iter()
                    .any(|&(c, l)| c == codec && l.max_width >= 1920 && l.max_height >= 1080),
                "{codecs:?}"
            );
        }
        for (codec, ext) in [("libx264", "ts"), ("libx265", "mp4"), ("libx264", "mp4")] {
            let segment = clip(320, 180, codec, "yuv420p", ext);

            let mut cpu = Vec::new();
            let mut decoder = CpuDecoder::new(&segment.video).expect("CPU decoder");
            for packet in segment.video_packets.iter().map(Some).chain([None]) {
                decoder
                    .decode(packet, &mut |frame| {
                        let video = frame.host_video()?;
                        let (w, h) = (video.width() as usize, video.height() as usize);
                        let plane = |i: usize, w: usize, h: usize| -> Vec<u8> {
                            (0..h)
                                .flat_map(|y| {
                                    let row = y * video.stride(i);
                                    video.data(i)[row..row + w].to_vec()
                                })
                                .collect()
                        };
                        let (u, v) = (plane(1, w / 2, h / 2), plane(2, w / 2, h / 2));
                        let uv: Vec<u8> = u.iter().zip(&v).flat_map(|(&u, &v)| [u, v]).collect();
                        cpu.push((frame.pts, w, h, plane(0, w, h), uv));
                        Ok(())
                    })
                    .expect("CPU decode");
            }

            let mut gpu = Vec::new();
            let mut decoder =
                NvdecDecoder::new(Arc::clone(&device), &segment.video).expect("NVDEC opens");
            for packet in segment.video_packets.iter().map(Some).chain([None]) {
                decoder
                    .decode(packet, &mut |frame| {
                        let FrameData::Device(f) = &frame.data else {
                            panic!("a host frame from NVDEC");
                        };
                        let host = f.frame.download(&f.stream).expect("download");
                        let (w, h) = (host.width, host.height);
                        let plane = |data: &[u8], pitch: usize, rows: usize| -> Vec<u8> {
                            (0..rows)
                                .flat_map(|y| data[y * pitch..y * pitch + w].to_vec())
                                .collect()
                        };
                        gpu.push((
                            frame.pts,
                            w,
                            h,
                            plane(&host.luma, host.luma_pitch, h),
                            plane(&host.chroma, host.chroma_pitch, h / 2),
                        ));
                        Ok(())
                    })
                    .expect("NVDEC decode");
            }

            assert_eq!(gpu.len(), cpu.len(), "{codec} {ext}: frame count");
            assert_eq!(gpu.len(), 30, "{codec} {ext}");
            // Both decoders are exact by the standards; a tolerance keeps a
            // 1:1 NVDEC crop that resampled by a hair from failing, while a
            // wrong pitch, offset or plane is off by tens.
            let differ = |a: &[u8], b: &[u8]| {
                assert_eq!(a.len(), b.len());
                let diffs = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y)));
                let (max, sum) = diffs.fold((0, 0), |(m, s), d| (m.max(d), s + d));
                (max, sum as f64 / a.len().max(1) as f64)
            };
            for (i, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
                assert_eq!((g.0, g.1, g.2), (c.0, c.1, c.2), "{codec} {ext} frame {i}");
                for (plane, a, b) in [("luma", &g.3, &c.3), ("chroma", &g.4, &c.4)] {
                    let (max, mean) = differ(a, b);
                    assert!(
                        max <= 8 && mean < 0.5,
                        "{codec} {ext} frame {i}: {plane} differs (max {max}, mean {mean:.3})"
                    );
                }
            }
        }
    }
}
