//! NVIDIA's bitstream parser and the state its callbacks share with the
//! decoder. The parser calls back
//!
//! * the sequence callback on the first sequence header (and on a format
//!   change): the hardware decoder is created for the stream's coded size,
//!   cropping to the display area;
//! * the decode callback for every picture, in decode order:
//!   `cuvidDecodePicture`;
//! * the display callback for every picture, in display order: the decoded
//!   surface is mapped and copied into a fresh [`DeviceFrame`] on the decoder's
//!   own stream, then unmapped.
//!
//! The callbacks run synchronously inside `cuvidParseVideoData` on the thread
//! that parses; they never unwind into the parser.
//!
//! What needs a GPU (creating the decoder, decoding, copying out) sits behind
//! [`PictureEngine`]: [`Nvdec`] on a GPU. NVIDIA's parser itself is software,
//! so the tests run it and these callbacks on machines without one, with an
//! engine that records what the hardware would have been asked to do.

use std::ffi::{c_int, c_ulonglong, c_void};
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DevicePtrMut};
use ffmpeg_next as ff;
use nvidia_video_codec_sdk::sys::cuviddec::{cuvidDecodeStatus, CUVIDPICPARAMS, CUVIDPROCPARAMS};
use nvidia_video_codec_sdk::sys::nvcuvid::{CUVIDEOFORMAT, CUVIDPARSERDISPINFO, CUVIDPARSERPARAMS};

use super::super::driver;
use super::super::engines::DecodeLimits;
use super::super::frame::{copy_device_2d, DeviceFrame, PixelFormat};
use super::api::{
    bind, cuvid_codec, result_name, Api, CuStatus, MappedPicture, NvdecError, VideoDecoder,
    VideoParser, CUDA_ERROR_INVALID_VALUE, CUDA_SUCCESS,
};
use super::config::{create_info, decoder_config, DecoderConfig, SequenceFormat};
use crate::video::profile::VideoCodec;

/// A picture the engine was asked to show.
pub(super) enum Shown<P> {
    Picture(P),
    /// The hardware reports the picture damaged: skipped, decoding goes on.
    Damaged(String),
}

/// The device side of decoding, driven by the parser's callbacks.
pub(super) trait PictureEngine {
    /// What a displayed picture becomes.
    type Picture;
    /// Creates the decoder for `config`, replacing any open one.
    fn open(&mut self, config: &DecoderConfig) -> Result<(), NvdecError>;
    fn is_open(&self) -> bool;
    /// Destroys the decoder (its context must be current).
    fn close(&mut self);
    /// Gives the decoder up without destroying it: its context could not
    /// be made current, so destroying it might free another context's.
    fn abandon(&mut self);
    /// Makes the engine's context current on this thread.
    fn bind(&self) -> Result<(), NvdecError>;
    /// Submits one picture, in decode order; the driver's status.
    ///
    /// # Safety
    /// `picture` is the parser's, valid for the call.
    unsafe fn decode(&mut self, picture: *mut CUVIDPICPARAMS) -> CuStatus;
    /// Copies out the decoded picture `info` names.
    fn show(
        &mut self,
        info: &CUVIDPARSERDISPINFO,
        config: &DecoderConfig,
    ) -> Result<Shown<Self::Picture>, NvdecError>;
}

/// The hardware decoder on one GPU; pictures come out as NV12 device frames.
pub(super) struct Nvdec {
    api: &'static Api,
    /// The decoder's own stream: its copy-outs wait for nobody else's work;
    /// its context is the one NVDEC runs in.
    stream: Arc<CudaStream>,
    decoder: Option<VideoDecoder>,
}

// SAFETY: the decoder handle is owned by this value alone and used through
// `&mut self` (the parser's callbacks run inside such calls); NVDEC handles
// have no thread affinity once the context is bound to the calling thread,
// which every entry point does.
unsafe impl Send for Nvdec {}

impl Nvdec {
    pub(super) fn new(api: &'static Api, stream: Arc<CudaStream>) -> Self {
        Nvdec {
            api,
            stream,
            decoder: None,
        }
    }
}

impl PictureEngine for Nvdec {
    type Picture = DeviceFrame;

    fn open(&mut self, config: &DecoderConfig) -> Result<(), NvdecError> {
        self.close();
        // The context is current: bound by the decoder before parsing.
        self.decoder = Some(VideoDecoder::create(self.api, &create_info(config))?);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.decoder.is_some()
    }

    fn close(&mut self) {
        self.decoder = None;
    }

    fn abandon(&mut self) {
        std::mem::forget(self.decoder.take());
    }

    fn bind(&self) -> Result<(), NvdecError> {
        bind(self.stream.context())
    }

    unsafe fn decode(&mut self, picture: *mut CUVIDPICPARAMS) -> CuStatus {
        match &self.decoder {
            // SAFETY: the parser's parameters, inside its decode callback
            // (the caller's contract).
            Some(decoder) => unsafe { decoder.decode_picture(picture) },
            None => CUDA_ERROR_INVALID_VALUE,
        }
    }

    /// Maps picture `info.picture_index`, copies it into a new frame and
    /// unmaps it.
    fn show(
        &mut self,
        info: &CUVIDPARSERDISPINFO,
        config: &DecoderConfig,
    ) -> Result<Shown<DeviceFrame>, NvdecError> {
        let Some(decoder) = self.decoder.as_ref() else {
            return Err(NvdecError::Unsupported(
                "a picture to display without a decoder".into(),
            ));
        };
        let index = info.picture_index;
        let did_not_decode = cuvidDecodeStatus::cuvidDecodeStatus_Error as u32;
        // As NVIDIA's NvDecoder sample sets them.
        let params = CUVIDPROCPARAMS {
            // The sequence's flag, not the picture's: FFmpeg's cuviddec
            // found the per-picture one unreliable.
            progressive_frame: c_int::from(config.progressive),
            second_field: info.repeat_first_field + 1,
            top_field_first: info.top_field_first,
            unpaired_field: c_int::from(info.repeat_first_field < 0),
            ..Default::default()
        };
        let damaged = || Shown::Damaged(format!("picture {index} did not decode"));
        let picture = match decoder.map(index, params, &self.stream) {
            Ok(picture) => picture,
            Err(result) => {
                if decoder.decode_status(index) == Some(did_not_decode) {
                    return Ok(damaged());
                }
                return Err(NvdecError::Call {
                    call: "cuvidMapVideoFrame64",
                    result,
                });
            }
        };
        let status = decoder.decode_status(index);
        let copied = match status {
            Some(s) if s == did_not_decode => Ok(damaged()),
            Some(s) if s == cuvidDecodeStatus::cuvidDecodeStatus_Error_Concealed as u32 => {
                // libavcodec shows concealed pictures too.
                tracing::debug!(index, "NVDEC concealed errors in a picture");
                copy_picture(&self.stream, &picture, config).map(Shown::Picture)
            }
            _ => copy_picture(&self.stream, &picture, config).map(Shown::Picture),
        };
        // The copies reading the surface have finished (the stream was
        // synchronised) or failed.
        let unmapped = decoder.unmap(picture);
        let shown = copied?;
        unmapped?;
        Ok(shown)
    }
}

/// What the callbacks work on: owned by [`Parser`] through a raw pointer
/// (the parser's `pUserData`), so it does not move and no Rust reference to
/// it is alive while the parser runs.
pub(super) struct ParserState<E: PictureEngine> {
    engine: E,
    codec: VideoCodec,
    limits: DecodeLimits,
    config: Option<DecoderConfig>,
    /// Frames the display callback produced, in display order, with the
    /// parser's timestamps.
    pub(super) frames: Vec<(i64, E::Picture)>,
    /// An error that ends decoding (GPU fault, unsupported format); kept.
    pub(super) fatal: Option<NvdecError>,
    /// Pictures that failed to decode since the last report.
    pub(super) damaged: usize,
    pub(super) last_damage: Option<String>,
    /// Per picture index: its cuvidDecodePicture failed, so it is not shown.
    failed: Vec<bool>,
}

impl<E: PictureEngine> ParserState<E> {
    fn fail(&mut self, error: NvdecError) {
        tracing::warn!(error = %error, "NVDEC decoding failed");
        if self.fatal.is_none() {
            self.fatal = Some(error);
        }
    }

    pub(super) fn damage(&mut self, what: String) {
        tracing::debug!(%what, "NVDEC picture damaged");
        self.damaged += 1;
        self.last_damage = Some(what);
    }

    fn set_failed(&mut self, index: c_int, failed: bool) {
        let Ok(index) = usize::try_from(index) else {
            return;
        };
        if index >= 256 {
            return;
        }
        if self.failed.len() <= index {
            self.failed.resize(index + 1, false);
        }
        self.failed[index] = failed;
    }

    fn is_failed(&self, index: c_int) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.failed.get(i).copied())
            .unwrap_or(false)
    }

    /// Destroys the decoder (the context must be current).
    fn destroy_decoder(&mut self) {
        self.engine.close();
        self.config = None;
    }

    /// The sequence callback: (re)creates the decoder for `format`.
    fn on_sequence(&mut self, format: *const CUVIDEOFORMAT) -> c_int {
        if self.fatal.is_some() || format.is_null() {
            return 0;
        }
        // SAFETY: the parser passes a valid CUVIDEOFORMAT for the call.
        let format = unsafe { SequenceFormat::read(format) };
        let config = match decoder_config(&format, self.codec, &self.limits) {
            Ok(config) => config,
            Err(e) => {
                self.fail(e);
                return 0;
            }
        };
        let surfaces = c_int::try_from(config.surfaces).unwrap_or(1);
        if self.config == Some(config) && self.engine.is_open() {
            return surfaces;
        }
        if self.engine.is_open() {
            tracing::info!(
                old = ?self.config,
                new = ?config,
                "stream format changed: NVDEC decoder recreated"
            );
            self.destroy_decoder();
        }
        if let Err(e) = self.engine.open(&config) {
            self.fail(e);
            return 0;
        }
        tracing::debug!(?config, "NVDEC decoder created");
        self.config = Some(config);
        self.failed.clear();
        surfaces
    }

    /// The decode callback: submits one picture.
    fn on_decode(&mut self, picture: *mut CUVIDPICPARAMS) -> c_int {
        if self.fatal.is_some() {
            return 0;
        }
        if !self.engine.is_open() || picture.is_null() {
            self.fail(NvdecError::Unsupported(
                "a picture arrived before a usable sequence header".into(),
            ));
            return 0;
        }
        // SAFETY: the parser passes valid picture parameters for the call.
        let index = unsafe { (*picture).CurrPicIdx };
        // SAFETY: the parser's parameters, inside its decode callback.
        let result = unsafe { self.engine.decode(picture) };
        self.set_failed(index, result != CUDA_SUCCESS);
        match result {
            CUDA_SUCCESS => 1,
            // Parameters the hardware refuses: a damaged bitstream. The
            // picture is skipped at display; decoding goes on.
            CUDA_ERROR_INVALID_VALUE => {
                self.damage(format!(
                    "cuvidDecodePicture failed: {}",
                    result_name(result)
                ));
                1
            }
            _ => {
                self.fail(NvdecError::Call {
                    call: "cuvidDecodePicture",
                    result,
                });
                0
            }
        }
    }

    /// The display callback: copies one decoded picture out.
    fn on_display(&mut self, info: *const CUVIDPARSERDISPINFO) -> c_int {
        if info.is_null() {
            // End of stream (CUVID_PKT_NOTIFY_EOS); nothing to show.
            return 1;
        }
        if self.fatal.is_some() {
            return 0;
        }
        // SAFETY: the parser passes a valid CUVIDPARSERDISPINFO (all integers).
        let info = unsafe { *info };
        if self.is_failed(info.picture_index) {
            // Counted when its decode failed.
            self.set_failed(info.picture_index, false);
            return 1;
        }
        match self.output(&info) {
            Ok(Some(frame)) => {
                self.frames.push((info.timestamp, frame));
                1
            }
            Ok(None) => 1,
            Err(e) => {
                self.fail(e);
                0
            }
        }
    }

    /// Asks the engine for the picture `info` names. `None` for a picture
    /// the hardware reports damaged.
    fn output(&mut self, info: &CUVIDPARSERDISPINFO) -> Result<Option<E::Picture>, NvdecError> {
        let Some(config) = self.config.filter(|_| self.engine.is_open()) else {
            return Err(NvdecError::Unsupported(
                "a picture to display without a decoder".into(),
            ));
        };
        match self.engine.show(info, &config)? {
            Shown::Picture(picture) => Ok(Some(picture)),
            Shown::Damaged(what) => {
                self.damage(what);
                Ok(None)
            }
        }
    }
}

/// Copies a mapped NV12 surface into a new frame on the decoder's stream
/// and waits for the copies.
fn copy_picture(
    stream: &Arc<CudaStream>,
    picture: &MappedPicture,
    config: &DecoderConfig,
) -> Result<DeviceFrame, NvdecError> {
    let (width, height) = (config.target_width as usize, config.target_height as usize);
    let mut frame =
        DeviceFrame::alloc(stream, PixelFormat::Nv12, width, height).map_err(NvdecError::Alloc)?;
    let (luma_pitch, chroma_pitch) = (frame.luma_pitch(), frame.chroma_pitch());
    let (surface, pitch) = (picture.device_ptr, picture.pitch as usize);
    // The NV12 surface: `height` luma rows, then the interleaved chroma
    // rows, `pitch` bytes apart (the sample's `pitch * ((height + 1) & ~1)`;
    // the target height is even).
    let chroma = surface + (pitch * height) as c_ulonglong;
    let queued = copy_plane(
        stream,
        surface,
        pitch,
        frame.luma_mut(),
        luma_pitch,
        width,
        height,
    )
    .and_then(|()| {
        copy_plane(
            stream,
            chroma,
            pitch,
            frame.chroma_mut(),
            chroma_pitch,
            width,
            height / 2,
        )
    });
    // Waited for even when a copy failed to queue: the surface is
    // unmapped next, so nothing may still be reading it.
    let synced = stream.synchronize().map_err(|source| NvdecError::Cuda {
        call: "cuStreamSynchronize",
        source,
    });
    queued?;
    synced?;
    Ok(frame)
}

/// Queues a copy of `rows` rows of `width` bytes from device address `src`
/// (rows `src_pitch` apart) into `dst` (rows `dst_pitch` apart) on `stream`.
fn copy_plane(
    stream: &CudaStream,
    src: c_ulonglong,
    src_pitch: usize,
    dst: &mut CudaSlice<u8>,
    dst_pitch: usize,
    width: usize,
    rows: usize,
) -> Result<(), NvdecError> {
    if rows == 0 || src_pitch < width || dst_pitch < width || dst.len() < dst_pitch * rows {
        return Err(NvdecError::Unsupported(format!(
            "plane copy of {rows} rows of {width} bytes does not fit \
             (source pitch {src_pitch}, destination pitch {dst_pitch}, {} bytes)",
            dst.len()
        )));
    }
    let (dst_ptr, _written) = dst.device_ptr_mut(stream);
    // SAFETY: both ranges are device memory of at least `pitch * rows` bytes
    // (the mapped surface holds the target size; `dst` was checked above);
    // the stream belongs to the current context.
    unsafe { copy_device_2d(stream, (src, src_pitch), (dst_ptr, dst_pitch), width, rows) }.map_err(
        |source| NvdecError::Cuda {
            call: "cuMemcpy2DAsync",
            source,
        },
    )
}

/// Runs one callback body on the state, never unwinding into the parser.
///
/// # Safety
/// `user` must be the `ParserState` pointer the parser was created with, not
/// otherwise borrowed while the parser runs.
unsafe fn with_state<E: PictureEngine>(
    user: *mut c_void,
    f: impl FnOnce(&mut ParserState<E>) -> c_int,
) -> c_int {
    if user.is_null() {
        return 0;
    }
    // SAFETY: the caller's contract: the state is alive and unaliased.
    let state = unsafe { &mut *user.cast::<ParserState<E>>() };
    match driver::catch_panic(|| f(&mut *state)) {
        Ok(result) => result,
        Err(message) => {
            state.fail(NvdecError::Panic(message));
            0
        }
    }
}

unsafe extern "C" fn sequence_callback<E: PictureEngine>(
    user: *mut c_void,
    format: *mut CUVIDEOFORMAT,
) -> c_int {
    // SAFETY: `user` is the parser's pUserData, our ParserState<E>.
    unsafe { with_state::<E>(user, |state| state.on_sequence(format)) }
}

unsafe extern "C" fn decode_callback<E: PictureEngine>(
    user: *mut c_void,
    picture: *mut CUVIDPICPARAMS,
) -> c_int {
    // SAFETY: `user` is the parser's pUserData, our ParserState<E>.
    unsafe { with_state::<E>(user, |state| state.on_decode(picture)) }
}

unsafe extern "C" fn display_callback<E: PictureEngine>(
    user: *mut c_void,
    info: *mut CUVIDPARSERDISPINFO,
) -> c_int {
    // SAFETY: `user` is the parser's pUserData, our ParserState<E>.
    unsafe { with_state::<E>(user, |state| state.on_display(info)) }
}

/// The parser with the state its callbacks work on; on drop, the parser,
/// then the decoder (with the context bound), then the state go.
pub(super) struct Parser<E: PictureEngine> {
    parser: Option<VideoParser>,
    /// From `Box::into_raw`; freed in `Drop`.
    state: *mut ParserState<E>,
}

// SAFETY: the parser, the decoder and the state are owned by this value alone
// and used only through `&mut self` (and the parser's synchronous callbacks
// within such calls); NVDEC handles have no thread affinity once the
// context is bound to the calling thread, which every entry point does.
unsafe impl<E: PictureEngine + Send> Send for Parser<E> {}

impl<E: PictureEngine> Parser<E> {
    /// Creates a parser for `codec` whose decoder, created at the first
    /// sequence header, takes sizes within `limits`; timestamps are in units
    /// of `clock_rate` Hz.
    pub(super) fn new(
        api: &'static Api,
        engine: E,
        codec: VideoCodec,
        limits: DecodeLimits,
        clock_rate: u32,
    ) -> Result<Self, NvdecError> {
        let state = Box::into_raw(Box::new(ParserState {
            engine,
            codec,
            limits,
            config: None,
            frames: Vec::new(),
            fatal: None,
            damaged: 0,
            last_damage: None,
            failed: Vec::new(),
        }));
        // From here `Drop` frees the state (and the parser, once created).
        let mut parser = Parser {
            parser: None,
            state,
        };
        let mut params = CUVIDPARSERPARAMS {
            CodecType: cuvid_codec(codec),
            // The sequence callback returns the number the stream needs.
            ulMaxNumDecodeSurfaces: 1,
            ulClockRate: clock_rate,
            ulErrorThreshold: 0,
            ulMaxDisplayDelay: 1,
            pUserData: state.cast(),
            pfnSequenceCallback: Some(sequence_callback::<E>),
            pfnDecodePicture: Some(decode_callback::<E>),
            pfnDisplayPicture: Some(display_callback::<E>),
            ..Default::default()
        };
        // SAFETY: the callbacks match the header's prototypes and `state`
        // outlives the parser (see `Drop`).
        parser.parser = Some(unsafe { VideoParser::create(api, &mut params) }?);
        Ok(parser)
    }

    /// The engine the callbacks drive (the tests read what it recorded).
    #[cfg(test)]
    pub(super) fn engine(&mut self) -> &mut E {
        &mut self.state().engine
    }

    pub(super) fn state(&mut self) -> &mut ParserState<E> {
        // SAFETY: the state lives until `Drop`; the parser only touches it
        // during `parse`, which takes `&mut self` and holds no reference.
        unsafe { &mut *self.state }
    }

    /// Sends one packet (or, with `end`, the end of stream) to the parser,
    /// which runs the callbacks. The context must be bound.
    pub(super) fn parse(&mut self, payload: &[u8], timestamp: Option<i64>, end: bool) {
        let Some(parser) = self.parser.as_mut() else {
            return;
        };
        // SAFETY: the context is bound (the caller's contract) and no
        // reference to the state the callbacks use is held across the call.
        let result = unsafe { parser.parse(payload, timestamp, end) };
        if result != CUDA_SUCCESS {
            let state = self.state();
            // A callback's fatal error explains the failure; otherwise the
            // parser rejected the data.
            if state.fatal.is_none() {
                state.damage(format!(
                    "cuvidParseVideoData failed: {}",
                    result_name(result)
                ));
            }
        }
    }
}

impl<E: PictureEngine> Drop for Parser<E> {
    fn drop(&mut self) {
        let (parser, state) = (self.parser.take(), self.state);
        let cleaned = driver::catch_panic(|| {
            // SAFETY: the state is alive until freed below; only read here.
            let bound = unsafe { &*state }.engine.bind();
            if let Err(e) = &bound {
                tracing::warn!(error = %e, "NVDEC teardown without the CUDA context");
            }
            // First the parser, which calls into the decoder and the state.
            drop(parser);
            // SAFETY: the state is alive until freed below; the parser is gone.
            let state = unsafe { &mut *state };
            if bound.is_ok() {
                state.destroy_decoder();
            } else if state.engine.is_open() {
                tracing::warn!("NVDEC decoder leaked: its context could not be bound");
                state.engine.abandon();
            }
        });
        // SAFETY: `state` came from Box::into_raw in `new` and is freed once
        // here; nothing refers to it any more.
        let mut state = unsafe { Box::from_raw(self.state) };
        if let Err(message) = cleaned {
            tracing::warn!(%message, "NVDEC teardown panicked");
            // Whether its context is bound is unknown: leaked, not destroyed.
            state.engine.abandon();
        }
        drop(state);
    }
}

/// The parser's timestamp units. It reorders timestamps into display order
/// and interpolates them for pictures that came without one, in units of
/// `ulClockRate` Hz: the stream's own when its time base is 1/N (MPEG-TS's
/// 1/90000, exact), else 10 MHz with a rescale each way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParserClock {
    pub rate: u32,
    time_base: ff::Rational,
}

const DEFAULT_CLOCK_HZ: u32 = 10_000_000;

impl ParserClock {
    pub fn for_time_base(time_base: ff::Rational) -> ParserClock {
        let rate = match (time_base.numerator(), time_base.denominator()) {
            (1, den) if den > 0 => den as u32,
            _ => DEFAULT_CLOCK_HZ,
        };
        ParserClock { rate, time_base }
    }

    fn parser_base(&self) -> ff::Rational {
        ff::Rational(1, self.rate as i32)
    }

    /// A stream timestamp in the parser's units.
    pub fn to_parser(&self, pts: i64) -> i64 {
        use ff::Rescale;
        pts.rescale(self.time_base, self.parser_base())
    }

    /// A parser timestamp back in the stream's time base.
    pub fn from_parser(&self, timestamp: i64) -> i64 {
        use ff::Rescale;
        timestamp.rescale(self.parser_base(), self.time_base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_timestamps_round_trip_in_the_streams_time_base() {
        // MPEG-TS: the parser counts in the stream's own 90 kHz.
        let ts = ParserClock::for_time_base(ff::Rational(1, 90_000));
        assert_eq!(ts.rate, 90_000);
        for pts in [0, 1, 3003, 8_589_934_591, -3003] {
            assert_eq!(ts.to_parser(pts), pts);
            assert_eq!(ts.from_parser(pts), pts);
        }
        // A time base that is not 1/N: 10 MHz, rescaled both ways without loss
        // at frame granularity.
        let ntsc = ParserClock::for_time_base(ff::Rational(1001, 30_000));
        assert_eq!(ntsc.rate, 10_000_000);
        assert_eq!(ntsc.to_parser(30), 10_010_000);
        for pts in [0, 1, 29, 30, 12_345] {
            assert_eq!(ntsc.from_parser(ntsc.to_parser(pts)), pts);
        }
        // MP4's common 1/15360: native rate.
        let mp4 = ParserClock::for_time_base(ff::Rational(1, 15_360));
        assert_eq!((mp4.rate, mp4.to_parser(512)), (15_360, 512));
    }
}
