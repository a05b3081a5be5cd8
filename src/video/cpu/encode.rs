use ffmpeg_next as ff;

use crate::video::backend::{Encoder, EncoderSettings, Frame};
use crate::video::profile::{Gop, H264Profile, VideoCodec};
use crate::video::VideoError;

/// libx264 (H.264) or libx265 (HEVC), configured as lpms configures them:
/// min = average = max rate = VBV buffer = the profile's bitrate, `forced-idr`,
/// B-frames unless the profile forbids them.
pub struct CpuEncoder {
    encoder: ff::encoder::Video,
}

impl CpuEncoder {
    pub fn library(codec: VideoCodec) -> &'static str {
        match codec {
            VideoCodec::H264 => "libx264",
            VideoCodec::Hevc => "libx265",
        }
    }

    pub fn new(settings: &EncoderSettings) -> Result<Self, VideoError> {
        let profile = &settings.profile;
        let library = Self::library(profile.codec);
        let codec = ff::encoder::find_by_name(library)
            .ok_or_else(|| VideoError::EncoderUnavailable(library.to_string()))?;
        let mut context = ff::codec::Context::new_with_codec(codec);
        if settings.global_header {
            context.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        context.set_threading(ff::threading::Config {
            kind: ff::threading::Type::Frame,
            count: settings.threads,
            ..Default::default()
        });
        let mut encoder = context
            .encoder()
            .video()
            .map_err(VideoError::internal("encoder setup"))?;
        encoder.set_width(settings.width);
        encoder.set_height(settings.height);
        encoder.set_format(ff::format::Pixel::YUV420P);
        encoder.set_time_base(settings.time_base);
        encoder.set_frame_rate(Some(settings.frame_rate));
        let bitrate = profile.bitrate as usize;
        encoder.set_bit_rate(bitrate);
        encoder.set_max_bit_rate(bitrate);
        // SAFETY: `encoder` wraps a live, not yet opened AVCodecContext; these
        // two rate-control fields have no safe setter in ffmpeg-next.
        unsafe {
            let ctx = encoder.as_mut_ptr();
            (*ctx).rc_min_rate = profile.bitrate as i64;
            (*ctx).rc_buffer_size = profile.bitrate.min(i32::MAX as u64) as i32;
        }
        let fps = f64::from(settings.frame_rate);
        let no_b_frames = matches!(
            profile.h264_profile,
            Some(H264Profile::Baseline | H264Profile::ConstrainedHigh)
        );
        match profile.gop {
            Gop::Default => {}
            Gop::Intra => encoder.set_gop(1),
            Gop::Seconds(s) => encoder.set_gop(((s * fps) as u32).max(1)),
        }
        encoder.set_max_b_frames(if no_b_frames || profile.gop == Gop::Intra {
            0
        } else {
            3
        });

        let mut options = ff::Dictionary::new();
        options.set("preset", &settings.preset);
        options.set("forced-idr", "1");
        if let Some(p) = profile
            .h264_profile
            .filter(|_| profile.codec == VideoCodec::H264)
        {
            options.set("profile", p.x264_name());
        }
        if let Some(q) = profile.quality {
            options.set("crf", &q.min(51).to_string());
        }
        if profile.codec == VideoCodec::Hevc {
            options.set("x265-params", "log-level=none");
        }
        let encoder = encoder
            .open_with(options)
            .map_err(|e| VideoError::Internal {
                stage: "encoder open",
                source: e,
            })?;
        Ok(CpuEncoder { encoder })
    }

    fn drain(&mut self, emit: &mut dyn FnMut(ff::Packet)) -> Result<(), VideoError> {
        loop {
            let mut packet = ff::Packet::empty();
            match self.encoder.receive_packet(&mut packet) {
                Ok(()) => emit(packet),
                Err(ff::Error::Other {
                    errno: ff::error::EAGAIN,
                })
                | Err(ff::Error::Eof) => return Ok(()),
                Err(e) => {
                    return Err(VideoError::Internal {
                        stage: "encode",
                        source: e,
                    })
                }
            }
        }
    }
}

impl Encoder for CpuEncoder {
    fn encode(
        &mut self,
        frame: Option<&Frame>,
        emit: &mut dyn FnMut(ff::Packet),
    ) -> Result<(), VideoError> {
        let sent = match frame {
            Some(frame) => {
                let input = super::frame_ref(frame.host_video()?, frame.pts)?;
                self.encoder.send_frame(&input)
            }
            None => self.encoder.send_eof(),
        };
        sent.map_err(|e| VideoError::Internal {
            stage: "encode",
            source: e,
        })?;
        self.drain(emit)
    }

    fn parameters(&self) -> ff::codec::Parameters {
        ff::codec::Parameters::from(&*self.encoder)
    }
}
