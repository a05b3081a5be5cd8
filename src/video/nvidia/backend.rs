//! The NVIDIA video backend: NVDEC decodes into GPU memory, the resize
//! kernels scale there (the engine's ladder stage: every rendition in one
//! launch; a lone rendition's own scaler: one launch each), NVENC encodes
//! from there; a frame stays on its GPU from decoder to encoder. A stage a GPU cannot do falls back to the CPU on
//! its own:
//! - no NVENC (H100, H200, A100): the scaled frames are downloaded and
//!   encoded with libx264/libx265, still decoded and scaled on the GPU;
//! - a stream NVDEC does not take (10-bit, 4:2:2): the CPU decodes it, and
//!   the scalers and encoders, which bind to the first frame they see, stay
//!   on the CPU for that segment.
//!
//! Each segment's decoder picks the least busy of the backend's GPUs, so
//! sessions spread over every GPU given to `--nvidia`. A GPU whose context a
//! sticky CUDA error poisoned (checked whenever a GPU stage fails) takes no
//! new sessions until it is re-opened; with every GPU out, segments are
//! decoded on the CPU.

use std::sync::Arc;

use cudarc::driver::{sys, CudaEvent, CudaStream, DriverError};
use ffmpeg_next as ff;

use super::device::{GpuDevice, SessionGuard};
use super::error::{failed, GpuError};
use super::frame::{nv12_to_yuv420p, DeviceFrame, GpuFrame};
use super::in_flight::{Fence, InFlight};
use super::launch::{plan_ladder, rendition_filter};
use super::probe::GpuInfo;
use super::selection::{GpuSelection, GpuSet};
use super::{nvdec, nvenc, resize};
use crate::video::backend::{
    Decoder, Encoder, EncoderSettings, Frame, FrameData, Ladder, LadderScaler, Scaler,
    VideoBackend, VideoStreamInfo,
};
use crate::video::cpu::{CpuDecoder, CpuEncoder, CpuScaler};
use crate::video::VideoError;

/// The GPUs one backend transcodes on.
pub struct NvidiaBackend {
    gpus: GpuSet,
}

impl NvidiaBackend {
    /// Opens the GPUs of `selection` among those `found`. Fails when one
    /// asked for by index is missing or does not open, or none has NVDEC.
    pub fn open(selection: &GpuSelection, found: &[GpuInfo]) -> Result<Self, VideoError> {
        Ok(NvidiaBackend {
            gpus: GpuSet::open(selection, found)?,
        })
    }

    /// The GPUs open now (one being re-opened after a fault is left out).
    pub fn gpus(&self) -> Vec<Arc<GpuDevice>> {
        self.gpus.gpus()
    }
}

impl VideoBackend for NvidiaBackend {
    fn name(&self) -> &'static str {
        "nvidia"
    }

    fn decoder(&self, stream: &VideoStreamInfo) -> Result<Box<dyn Decoder>, VideoError> {
        if !nvdec::supports_stream(stream) {
            tracing::debug!(
                "stream not decodable by NVDEC (bit depth or chroma format): CPU decode"
            );
            return Ok(Box::new(CpuDecoder::new(stream)?));
        }
        let Some(gpu) = self.gpus.pick()? else {
            tracing::warn!("every GPU is out of rotation after a fault: CPU decode");
            return Ok(Box::new(CpuDecoder::new(stream)?));
        };
        let session = gpu.begin_session();
        match nvdec::NvdecDecoder::new(Arc::clone(&gpu), stream) {
            Ok(decoder) => Ok(Box::new(FallbackDecoder::new(
                Box::new(decoder),
                Some(session),
                stream,
            ))),
            Err(e) => {
                tracing::warn!(gpu = gpu.info().index, error = %e, "NVDEC decoder did not open: CPU decode");
                Ok(Box::new(CpuDecoder::new(stream)?))
            }
        }
    }

    fn scaler(&self, width: u32, height: u32) -> Result<Box<dyn Scaler>, VideoError> {
        Ok(Box::new(FollowingScaler {
            width,
            height,
            cpu: None,
            stream: None,
        }))
    }

    fn encoder(&self, settings: &EncoderSettings) -> Result<Box<dyn Encoder>, VideoError> {
        Ok(Box::new(FollowingEncoder {
            settings: settings.clone(),
            inner: None,
        }))
    }

    fn ladder_scaler(&self) -> Option<Box<dyn LadderScaler>> {
        Some(Box::new(GpuLadder {
            stream: None,
            reading: InFlight::new(LADDER_IN_FLIGHT),
        }))
    }
}

/// An NVDEC decoder, counted as one session on its GPU while it lives, that
/// hands the segment to the CPU decoder if the GPU fails before the first
/// frame came out (a sequence NVDEC refuses once it sees it, say): the
/// packets fed so far are kept until then and decoded again on the CPU, so
/// nothing is lost.
struct FallbackDecoder {
    gpu: Option<(Box<dyn Decoder>, Option<SessionGuard>)>,
    cpu: Option<CpuDecoder>,
    /// A copy of what the CPU decoder needs to open.
    stream: VideoStreamInfo,
    /// Packets fed before the first frame; `None` once one came out.
    replay: Option<Vec<ff::Packet>>,
}

impl FallbackDecoder {
    fn new(gpu: Box<dyn Decoder>, session: Option<SessionGuard>, stream: &VideoStreamInfo) -> Self {
        FallbackDecoder {
            gpu: Some((gpu, session)),
            cpu: None,
            stream: stream.clone(),
            replay: Some(Vec::new()),
        }
    }

    /// Opens the CPU decoder and feeds it the kept packets (and the end of
    /// the stream when `end`); one damaged packet among them is reported as
    /// the CPU decoder reports it, after the rest were decoded.
    fn switch_to_cpu(
        &mut self,
        end: bool,
        emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
    ) -> Result<(), VideoError> {
        self.gpu = None;
        let cpu = self.cpu.insert(CpuDecoder::new(&self.stream)?);
        let packets = self.replay.take().unwrap_or_default();
        let mut damaged = None;
        for packet in packets.iter().map(Some).chain(end.then_some(None)) {
            match cpu.decode(packet, emit) {
                Ok(()) => {}
                Err(e @ VideoError::Decode(_)) => damaged = Some(e),
                Err(e) => return Err(e),
            }
        }
        damaged.map_or(Ok(()), Err)
    }
}

impl Decoder for FallbackDecoder {
    fn decode(
        &mut self,
        packet: Option<&ff::Packet>,
        emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
    ) -> Result<(), VideoError> {
        if let Some(cpu) = &mut self.cpu {
            return cpu.decode(packet, emit);
        }
        let Some((gpu, _)) = &mut self.gpu else {
            return Err(VideoError::Gpu {
                stage: "decode",
                message: "no decoder".into(),
            });
        };
        if let (Some(replay), Some(packet)) = (&mut self.replay, packet) {
            replay.push(packet.clone());
        }
        let mut emitted = false;
        let result = gpu.decode(packet, &mut |frame| {
            emitted = true;
            emit(frame)
        });
        if emitted {
            self.replay = None;
        }
        if let (Err(VideoError::Gpu { .. }), Some((_, Some(session)))) = (&result, &self.gpu) {
            session.device().check_after_failure();
        }
        match result {
            Err(VideoError::Gpu { stage, message }) if self.replay.is_some() => {
                tracing::warn!(
                    stage,
                    error = %message,
                    "NVDEC failed before its first frame: decoding this segment on the CPU"
                );
                self.switch_to_cpu(packet.is_none(), emit)
            }
            other => other,
        }
    }
}

/// Scales on the GPU a frame that is on one, else on the CPU.
struct FollowingScaler {
    width: u32,
    height: u32,
    cpu: Option<CpuScaler>,
    /// The rendition's own stream on the GPU its frames come from, made at
    /// the first GPU frame.
    stream: Option<Arc<CudaStream>>,
}

/// A scaler's own stream on `device`, made on first use (again if the
/// frames moved to another GPU).
fn stream_on(
    stream: &mut Option<Arc<CudaStream>>,
    device: &GpuDevice,
) -> Result<Arc<CudaStream>, GpuError> {
    match stream {
        Some(stream) if Arc::ptr_eq(stream.context(), device.context()) => Ok(Arc::clone(stream)),
        _ => Ok(Arc::clone(stream.insert(device.new_stream()?))),
    }
}

impl Scaler for FollowingScaler {
    fn scale(&mut self, frame: &Frame) -> Result<Frame, VideoError> {
        let FrameData::Device(src) = &frame.data else {
            let (width, height) = (self.width, self.height);
            return self
                .cpu
                .get_or_insert_with(|| CpuScaler::new(width, height))
                .scale(frame);
        };
        let stream = stream_on(&mut self.stream, &src.device)
            .map_err(failure_on(&src.device, "stream creation"))?;
        let mut out = DeviceFrame::alloc(
            &stream,
            src.frame.format,
            self.width as usize,
            self.height as usize,
        )
        .map_err(failure_on(&src.device, "frame allocation"))?;
        let filter = rendition_filter((frame.width, frame.height), (self.width, self.height));
        resize::scale_ladder_on(
            src.device.gpu(),
            &stream,
            &src.frame,
            std::slice::from_mut(&mut out),
            filter,
        )
        .map_err(failure_on(&src.device, "scale"))?;
        // The source may be freed once this returns, in the order of the
        // decoder's stream, which knows nothing of this read: wait for it.
        stream
            .synchronize()
            .map_err(|e| failure_on(&src.device, "scale")(failed("cuStreamSynchronize")(e)))?;
        Ok(Frame {
            pts: frame.pts,
            width: self.width,
            height: self.height,
            data: FrameData::Device(GpuFrame {
                device: Arc::clone(&src.device),
                frame: out,
                stream,
            }),
        })
    }
}

/// Decoded frames the ladder keeps while their launches may still read
/// them. A few frames' worth: enough for launches to queue back to back,
/// and a bound on the extra GPU memory held.
const LADDER_IN_FLIGHT: usize = 3;

/// The engine's ladder stage on a GPU: a decoded GPU frame is scaled into
/// every rendition in one kernel launch (two when the ladder both shrinks
/// and enlarges, more past eight renditions: `launch::plan_ladder`), on
/// the ladder's own stream. A host frame (the CPU decoded) is declined: the
/// renditions scale it on their own threads, in parallel.
///
/// Nothing waits on the host per frame: the renditions use their frames on
/// this stream, so after this launch, and the decoded frame is kept until
/// an event recorded after the launch is done (see `in_flight`).
struct GpuLadder {
    stream: Option<Arc<CudaStream>>,
    reading: InFlight<CudaEvent, Frame>,
}

impl Fence for CudaEvent {
    type Error = DriverError;

    fn is_done(&self) -> Result<bool, DriverError> {
        self.try_is_complete()
    }

    fn wait(&self) -> Result<(), DriverError> {
        self.synchronize()
    }
}

impl GpuLadder {
    /// Queues the launches that write every rendition of `src`, and an
    /// event after them. On an error after a launch was queued the stream
    /// is waited for, so that `src` may be freed (in its own stream's
    /// order) when the caller drops it.
    fn launch(
        stream: &Arc<CudaStream>,
        src: &GpuFrame,
        source_size: (u32, u32),
        sizes: &[(u32, u32)],
    ) -> Result<(Vec<DeviceFrame>, CudaEvent), VideoError> {
        let device = &src.device;
        let mut outputs: Vec<Option<DeviceFrame>> = sizes.iter().map(|_| None).collect();
        let mut queued = || -> Result<CudaEvent, VideoError> {
            for launch in plan_ladder(source_size, sizes) {
                let mut frames = launch
                    .renditions
                    .iter()
                    .map(|&i| {
                        let (width, height) = sizes[i];
                        DeviceFrame::alloc(
                            stream,
                            src.frame.format,
                            width as usize,
                            height as usize,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(failure_on(device, "frame allocation"))?;
                resize::scale_ladder_on(
                    device.gpu(),
                    stream,
                    &src.frame,
                    &mut frames,
                    launch.filter,
                )
                .map_err(failure_on(device, "ladder scale"))?;
                for (&i, out) in launch.renditions.iter().zip(frames) {
                    outputs[i] = Some(out);
                }
            }
            // Blocking sync: a wait for the oldest frame sleeps, not spins.
            stream
                .record_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))
                .map_err(|e| failure_on(device, "ladder scale")(failed("cuEventRecord")(e)))
        };
        let read_done = queued().inspect_err(|_| {
            if let Err(e) = stream.synchronize() {
                tracing::warn!(error = %e, "the ladder's stream did not finish after a failure");
            }
        })?;
        let outputs = outputs
            .into_iter()
            .zip(sizes)
            .map(|(out, &(width, height))| {
                out.ok_or_else(|| {
                    VideoError::Contract(format!("the launch plan left out {width}x{height}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((outputs, read_done))
    }
}

impl LadderScaler for GpuLadder {
    fn scale(&mut self, frame: Frame, sizes: &[(u32, u32)]) -> Result<Ladder, VideoError> {
        let FrameData::Device(src) = &frame.data else {
            return Ok(Ladder::Declined(frame));
        };
        let device = Arc::clone(&src.device);
        let stream =
            stream_on(&mut self.stream, &device).map_err(failure_on(&device, "stream creation"))?;
        let (outputs, read_done) =
            GpuLadder::launch(&stream, src, (frame.width, frame.height), sizes)?;
        let pts = frame.pts;
        // On an error the frame stays in the queue: its launch may still
        // be reading it.
        self.reading
            .push(read_done, frame)
            .map_err(|e| failure_on(&device, "ladder scale")(failed("cuEventQuery")(e)))?;
        let scaled = outputs
            .into_iter()
            .zip(sizes)
            .map(|(out, &(width, height))| Frame {
                pts,
                width,
                height,
                data: FrameData::Device(GpuFrame {
                    device: Arc::clone(&device),
                    frame: out,
                    stream: Arc::clone(&stream),
                }),
            })
            .collect();
        Ok(Ladder::Scaled(scaled))
    }
}

impl Drop for GpuLadder {
    fn drop(&mut self) {
        // The kept frames are freed only once their reads are done. A fence
        // that fails to answer is a sticky error (an earlier launch faulted
        // the context): the stream is waited for as a last resort, and the
        // frames go with a context that is reset before it is used again.
        if let Err(e) = self.reading.drain() {
            tracing::warn!(error = %e, "a ladder launch did not finish");
            if let Some(stream) = &self.stream {
                let _ = stream.synchronize();
            }
        }
    }
}

/// Binds to the first frame: NVENC for a GPU frame on a GPU that encodes the
/// codec, else the CPU encoder (downloading GPU frames first).
struct FollowingEncoder {
    settings: EncoderSettings,
    inner: Option<BoundEncoder>,
}

enum BoundEncoder {
    /// With its GPU, checked for a fault when the encoder fails.
    Nvenc(Box<nvenc::NvencEncoder>, Arc<GpuDevice>),
    Download(CpuEncoder),
    Cpu(CpuEncoder),
}

impl FollowingEncoder {
    fn bind(&self, frame: &Frame) -> Result<BoundEncoder, VideoError> {
        let FrameData::Device(gpu_frame) = &frame.data else {
            return Ok(BoundEncoder::Cpu(CpuEncoder::new(&self.settings)?));
        };
        let gpu = &gpu_frame.device;
        let codec = self.settings.profile.codec;
        if gpu.engines().encodes(codec) {
            match nvenc::NvencEncoder::new(Arc::clone(gpu), &self.settings) {
                Ok(encoder) => return Ok(BoundEncoder::Nvenc(Box::new(encoder), Arc::clone(gpu))),
                // Every NVENC session slot taken (consumer cards cap them),
                // or the settings refused: the CPU keeps the rendition going.
                Err(e) => tracing::warn!(
                    gpu = gpu.info().index,
                    error = %e,
                    "NVENC session did not open: encoding this rendition on the CPU"
                ),
            }
        }
        Ok(BoundEncoder::Download(CpuEncoder::new(&self.settings)?))
    }
}

impl Encoder for FollowingEncoder {
    fn encode(
        &mut self,
        frame: Option<&Frame>,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), VideoError> {
        let inner = match (&mut self.inner, frame) {
            (Some(inner), _) => inner,
            // Flushing an encoder that never saw a frame: nothing to emit.
            (None, None) => return Ok(()),
            (None, Some(first)) => {
                let bound = self.bind(first)?;
                self.inner.insert(bound)
            }
        };
        match inner {
            BoundEncoder::Nvenc(nvenc, gpu) => {
                let result = nvenc.encode(frame, emit);
                if let Err(VideoError::Gpu { .. }) = &result {
                    gpu.check_after_failure();
                }
                result
            }
            BoundEncoder::Cpu(cpu) => cpu.encode(frame, emit),
            BoundEncoder::Download(cpu) => match frame.map(|f| (f, &f.data)) {
                Some((frame, FrameData::Device(gpu))) => {
                    cpu.encode(Some(&download(gpu, frame.pts)?), emit)
                }
                _ => cpu.encode(frame, emit),
            },
        }
    }

    fn parameters(&self) -> ff::codec::Parameters {
        match &self.inner {
            Some(BoundEncoder::Nvenc(e, _)) => e.parameters(),
            Some(BoundEncoder::Download(e) | BoundEncoder::Cpu(e)) => e.parameters(),
            None => ff::codec::Parameters::new(),
        }
    }
}

/// Copies a GPU frame to a host frame the CPU encoders (and the frame
/// transform stage) take.
pub(crate) fn download(gpu: &GpuFrame, pts: i64) -> Result<Frame, VideoError> {
    let host = gpu
        .frame
        .download(&gpu.stream)
        .map_err(failure_on(&gpu.device, "download"))?;
    Ok(Frame::host(nv12_to_yuv420p(&host)?, pts))
}

/// A GPU stage's failure as a `VideoError`, once the GPU was checked for a
/// sticky error (which takes it out of rotation).
fn failure_on<'a>(
    device: &'a GpuDevice,
    stage: &'static str,
) -> impl FnOnce(GpuError) -> VideoError + 'a {
    move |e| {
        device.check_after_failure();
        VideoError::gpu(stage)(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backend's structure without any GPU: what the fallbacks do when no
    /// stage can use one.
    fn backend_without_gpus() -> NvidiaBackend {
        NvidiaBackend {
            gpus: GpuSet::default(),
        }
    }

    fn ffmpeg_clip(pix_fmt: &str, ext: &str) -> Vec<u8> {
        crate::video::test_clip(320, 240, "libx264", pix_fmt, ext)
    }

    #[test]
    fn a_stream_nvdec_refuses_is_transcoded_whole_on_the_cpu() {
        use crate::video::{TranscodeOptions, Transcoder, VideoProfile};
        crate::video::init_ffmpeg();
        // 10-bit H.264: NVDEC is not asked; decode, the scalers and the
        // encoders, which bind to the frames they get, all stay on the CPU.
        let transcoder = Transcoder::new(Arc::new(backend_without_gpus()));
        let options = TranscodeOptions {
            profiles: VideoProfile::parse_list("P240p30fps16x9,P144p30fps16x9").unwrap(),
            preset: "ultrafast".into(),
            ..Default::default()
        };
        let out = transcoder
            .transcode(ffmpeg_clip("yuv420p10le", "mp4"), &options, &mut |_| {})
            .expect("transcodes on the CPU");
        assert_eq!(out.backend, "nvidia");
        assert_eq!(out.decoded.frames, 30);
        assert_eq!(out.renditions.len(), 2);
        for (r, profile) in out.renditions.iter().zip(&options.profiles) {
            let (w, h) = profile.output_size(320, 240);
            assert_eq!((r.width, r.height), (w, h));
            assert_eq!(r.encoded.frames, 30);
            // The rendition decodes back to as many frames of its size.
            let back = Transcoder::new(Arc::new(crate::video::cpu::CpuBackend))
                .decode_only(r.data.clone(), &options)
                .expect("the rendition decodes");
            assert_eq!(back.decoded.frames, 30);
            assert_eq!(back.decoded.pixels, 30 * u64::from(w * h));
        }

        // An 8-bit stream needs a GPU for NVDEC: with none open the request
        // fails with a reason, never a panic.
        let err = transcoder
            .transcode(ffmpeg_clip("yuv420p", "ts"), &options, &mut |_| {})
            .unwrap_err();
        assert!(matches!(err, VideoError::BackendUnavailable(_)), "{err}");
    }

    /// A GPU decoder that fails as NVDEC does when it refuses a sequence:
    /// after `packets_before_failing` packets with no frame out.
    struct RefusingDecoder {
        packets_before_failing: usize,
        seen: usize,
    }

    impl Decoder for RefusingDecoder {
        fn decode(
            &mut self,
            _packet: Option<&ff::Packet>,
            _emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
        ) -> Result<(), VideoError> {
            self.seen += 1;
            if self.seen > self.packets_before_failing {
                return Err(VideoError::Gpu {
                    stage: "NVDEC decode",
                    message: "cuvidCreateDecoder failed: CUDA_ERROR_NOT_SUPPORTED".into(),
                });
            }
            Ok(())
        }
    }

    #[test]
    fn a_gpu_decoder_failing_before_its_first_frame_hands_every_packet_to_the_cpu() {
        use crate::video::container::{demux, DemuxLimits};
        crate::video::init_ffmpeg();
        let segment = demux(
            ffmpeg_clip("yuv420p", "ts").into(),
            &DemuxLimits::default(),
            None,
        )
        .unwrap();
        for fail_after in [0, 3, segment.video_packets.len()] {
            let gpu = RefusingDecoder {
                packets_before_failing: fail_after,
                seen: 0,
            };
            let mut decoder = FallbackDecoder::new(Box::new(gpu), None, &segment.video);
            let mut frames = Vec::new();
            for packet in segment.video_packets.iter().map(Some).chain([None]) {
                decoder
                    .decode(packet, &mut |f| {
                        frames.push(f.pts);
                        Ok(())
                    })
                    .unwrap();
            }
            // Every picture, once each, in order, whenever the GPU gave up.
            assert_eq!(frames.len(), 30, "failing after {fail_after} packets");
            assert!(frames.windows(2).all(|w| w[0] < w[1]), "{frames:?}");
            assert!(decoder.cpu.is_some() && decoder.gpu.is_none());
        }
    }

    #[test]
    fn an_encoder_that_saw_no_frame_flushes_to_nothing() {
        let settings = EncoderSettings {
            profile: crate::video::VideoProfile::parse_list("P144p30fps16x9")
                .unwrap()
                .remove(0),
            width: 256,
            height: 144,
            time_base: ff::Rational(1, 90_000),
            frame_rate: ff::Rational(30, 1),
            global_header: false,
            preset: "ultrafast".into(),
            threads: 1,
        };
        let mut encoder = backend_without_gpus().encoder(&settings).unwrap();
        let mut packets = 0;
        encoder.encode(None, &mut |_| packets += 1).unwrap();
        assert_eq!(packets, 0);
        assert_eq!(encoder.parameters().id(), ff::codec::Id::None);
    }
}
