//! One rendition's thread: frame-rate conversion, scaling (unless the
//! ladder stage already did), the transform stage, encoding and muxing.

use std::sync::mpsc::Receiver;

use ffmpeg_next as ff;

use super::fan_out::{Content, Picture};
use super::{PixelCount, Rendition, Stop, TranscodeOptions};
use crate::video::backend::{Encoder, EncoderSettings, Frame, Scaler, VideoBackend};
use crate::video::container::{self, MuxTrack};
use crate::video::fps::FpsConverter;
use crate::video::profile::{OutputContainer, VideoProfile};
use crate::video::transform::StageRun;
use crate::video::VideoError;

/// Everything one rendition thread needs.
pub(super) struct RenditionJob<'a> {
    pub backend: &'a dyn VideoBackend,
    pub profile: &'a VideoProfile,
    pub options: &'a TranscodeOptions,
    pub time_base: ff::Rational,
    pub input_fps: ff::Rational,
    /// The audio track to copy: its own parameters, the shared packets.
    pub audio: Option<(ff::codec::Parameters, ff::Rational, &'a [ff::Packet])>,
    pub stop: &'a Stop<'a>,
}

/// The per-rendition pipeline, built when the first picture shows the input
/// size.
struct Pipeline {
    /// Opened at the first decoded frame that needs it: none when the ladder
    /// stage scales.
    scaler: Option<Box<dyn Scaler>>,
    encoder: Box<dyn Encoder>,
    width: u32,
    height: u32,
    /// The number of the last picture shown and its frame at the
    /// rendition's size, shown again when the frame-rate converter repeats
    /// it (or the transform stage drops the next one).
    last: Option<(u64, Frame)>,
    stage: Option<StageRun>,
}

impl Pipeline {
    /// The rendition's frame for a picture not shown before; `None` when the
    /// transform stage drops it to keep up with real time.
    fn frame_of(
        &mut self,
        backend: &dyn VideoBackend,
        picture: &Picture,
    ) -> Result<Option<Frame>, VideoError> {
        let src = match &picture.content {
            Content::Scaled(frame) => {
                let frame = frame.take().ok_or_else(|| {
                    VideoError::Contract(format!("picture {} was taken twice", picture.index))
                })?;
                if (frame.width, frame.height) != (self.width, self.height) {
                    return Err(VideoError::Contract(format!(
                        "a {}x{} frame for a {}x{} rendition",
                        frame.width, frame.height, self.width, self.height
                    )));
                }
                return Ok(Some(frame));
            }
            Content::Decoded(src) => src,
        };
        let (width, height) = (self.width, self.height);
        let scaler = match &mut self.scaler {
            Some(scaler) => scaler,
            None => self.scaler.insert(backend.scaler(width, height)?),
        };
        let Some(stage) = self.stage.as_mut() else {
            return scaler.scale(src).map(Some);
        };
        if stage.behind(src.pts, self.last.is_some()) {
            // Behind real time: the frame is dropped at the input and the
            // last output shown again.
            stage.count.dropped += 1;
            return Ok(None);
        }
        stage.apply(src, &mut **scaler, width, height).map(Some)
    }
}

impl RenditionJob<'_> {
    pub fn run(&self, pictures: Receiver<Picture>) -> Result<Rendition, VideoError> {
        let time_base = self.time_base;
        let out_rate = self
            .profile
            .frame_rate()
            .map(|(n, d)| ff::Rational(n as i32, d as i32))
            .unwrap_or(self.input_fps);
        let mut converter = FpsConverter::new(
            (time_base.numerator(), time_base.denominator()),
            (out_rate.numerator() as u32, out_rate.denominator() as u32),
        );
        // One input frame's duration in the input time base.
        let frame_ticks =
            ((f64::from(time_base).recip() / f64::from(self.input_fps)).round() as i64).max(1);

        let mut pipeline: Option<Pipeline> = None;
        let mut packets = Vec::new();
        let mut encoded = PixelCount::default();
        let mut last_pts = None;
        let mut emit = |picture: &Picture, pts: i64| -> Result<(), VideoError> {
            self.stop.check()?;
            let p = match pipeline.as_mut() {
                Some(p) => p,
                None => pipeline.insert(self.pipeline(picture.source_size, out_rate)?),
            };
            let repeat = matches!(&p.last, Some((shown, _)) if *shown == picture.index);
            if !repeat {
                match (p.frame_of(self.backend, picture)?, p.last.as_mut()) {
                    (Some(frame), _) => p.last = Some((picture.index, frame)),
                    // Dropped: the last frame stands in for this picture.
                    (None, Some(last)) => last.0 = picture.index,
                    (None, None) => unreachable!("a frame is dropped only after an output"),
                }
            }
            let (_, frame) = p.last.as_mut().expect("a frame was just stored");
            frame.pts = pts;
            p.encoder
                .encode(Some(frame), &mut |pkt| packets.push(pkt))?;
            encoded.frames += 1;
            encoded.pixels += u64::from(p.width) * u64::from(p.height);
            Ok(())
        };
        for picture in pictures {
            last_pts = Some(picture.pts);
            let pts = picture.pts;
            converter.push(picture, pts, &mut emit)?;
        }
        self.stop.check()?;
        converter.finish(last_pts.map(|p| p + frame_ticks), &mut emit)?;
        let Some(mut pipeline) = pipeline else {
            return Err(VideoError::NoFrames {
                errors: 0,
                last: None,
            });
        };
        pipeline.last = None;
        pipeline
            .encoder
            .encode(None, &mut |pkt| packets.push(pkt))?;

        let mut tracks = vec![MuxTrack {
            parameters: pipeline.encoder.parameters(),
            time_base,
            packets: &packets,
        }];
        if let Some((parameters, time_base, packets)) = &self.audio {
            tracks.push(MuxTrack {
                parameters: parameters.clone(),
                time_base: *time_base,
                packets,
            });
        }
        let format = self.profile.format.unwrap_or(self.options.container);
        let data = container::mux(format.muxer(), &tracks)?;
        Ok(Rendition {
            profile: self.profile.name.clone(),
            width: pipeline.width,
            height: pipeline.height,
            container: format,
            encoded,
            transform: pipeline.stage.map(|s| s.count),
            bytes: data.len(),
            data,
        })
    }

    fn pipeline(
        &self,
        (in_w, in_h): (u32, u32),
        out_rate: ff::Rational,
    ) -> Result<Pipeline, VideoError> {
        let (width, height) = self.profile.output_size(in_w, in_h);
        let settings = EncoderSettings {
            profile: self.profile.clone(),
            width,
            height,
            time_base: self.time_base,
            frame_rate: out_rate,
            global_header: self.profile.format.unwrap_or(self.options.container)
                == OutputContainer::Mp4,
            preset: self.options.preset.clone(),
            threads: self.options.encoder_threads,
        };
        Ok(Pipeline {
            scaler: None,
            encoder: self.backend.encoder(&settings)?,
            width,
            height,
            last: None,
            stage: self.options.transform.clone().map(|stage| {
                let tick = f64::from(self.time_base);
                StageRun::new(stage, tick, 1.0 / f64::from(out_rate).max(1.0))
            }),
        })
    }
}
