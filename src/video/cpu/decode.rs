use ffmpeg_next as ff;

use crate::video::backend::{Decoder, Frame, VideoStreamInfo};
use crate::video::VideoError;

/// A libavcodec software decoder (H.264, HEVC), frame-threaded.
pub struct CpuDecoder {
    decoder: ff::decoder::Video,
}

impl CpuDecoder {
    pub fn new(stream: &VideoStreamInfo) -> Result<Self, VideoError> {
        let mut context = ff::codec::Context::from_parameters(stream.parameters.clone())
            .map_err(VideoError::internal("decoder setup"))?;
        context.set_threading(ff::threading::Config {
            kind: ff::threading::Type::Frame,
            count: 0,
            ..Default::default()
        });
        let mut decoder = context.decoder();
        decoder.set_packet_time_base(stream.time_base);
        let decoder = decoder.video().map_err(VideoError::Decode)?;
        Ok(CpuDecoder { decoder })
    }
}

impl Decoder for CpuDecoder {
    fn decode(
        &mut self,
        packet: Option<&ff::Packet>,
        emit: &mut dyn FnMut(Frame) -> Result<(), VideoError>,
    ) -> Result<(), VideoError> {
        let sent = match packet {
            Some(p) => self.decoder.send_packet(p),
            None => self.decoder.send_eof(),
        };
        loop {
            let mut frame = ff::frame::Video::empty();
            match self.decoder.receive_frame(&mut frame) {
                Ok(()) => {
                    let pts = frame.timestamp().or(frame.pts()).unwrap_or(0);
                    emit(Frame::host(frame, pts))?;
                }
                Err(ff::Error::Other {
                    errno: ff::error::EAGAIN,
                })
                | Err(ff::Error::Eof) => break,
                // A damaged picture: skip it, later ones may be fine.
                Err(e) => return Err(VideoError::Decode(e)),
            }
        }
        match sent {
            Ok(()) | Err(ff::Error::Eof) => Ok(()),
            Err(e) => Err(VideoError::Decode(e)),
        }
    }
}
