//! Audio input for speech models: any format FFmpeg reads, decoded from
//! memory and resampled to 16 kHz mono, as 16-bit samples scaled to [-1, 1)
//! exactly as ai-runner prepares Whisper's input (PyAV to s16 mono 16 kHz,
//! then divided by 32768).

use std::io::Cursor;

use ff::format::context::StreamIo;
use ff::media::Type;
use ffmpeg_next as ff;

use super::AiError;

pub const SAMPLE_RATE: u32 = 16_000;

fn malformed(detail: impl std::fmt::Display) -> AiError {
    AiError::UnsupportedMedia(format!(
        "Unsupported audio format or malformed file: {detail}"
    ))
}

/// Decodes `bytes` to 16 kHz mono samples; refuses audio longer than
/// `max_seconds` (413) without decoding all of it.
pub fn decode_mono_16k(bytes: &[u8], max_seconds: f64) -> Result<Vec<f32>, AiError> {
    crate::video::init_ffmpeg();
    if bytes.is_empty() {
        return Err(malformed("empty file"));
    }
    let io = StreamIo::from_read_seek(Cursor::new(bytes.to_vec()))
        .map_err(|e| AiError::Internal(format!("audio input: {e}")))?;
    let mut input = ff::format::input_from_stream(io, None, None).map_err(malformed)?;
    let stream = input
        .streams()
        .best(Type::Audio)
        .ok_or_else(|| malformed("no audio stream"))?;
    let index = stream.index();
    let context =
        ff::codec::context::Context::from_parameters(stream.parameters()).map_err(malformed)?;
    let mut decoder = context.decoder().audio().map_err(malformed)?;
    let max_samples = (max_seconds * f64::from(SAMPLE_RATE)) as usize;
    let mut out = Vec::new();
    let mut resampler: Option<ff::software::resampling::Context> = None;
    let mut frame = ff::frame::Audio::empty();

    let mut drain = |decoder: &mut ff::decoder::Audio,
                     resampler: &mut Option<ff::software::resampling::Context>,
                     out: &mut Vec<f32>|
     -> Result<(), AiError> {
        while decoder.receive_frame(&mut frame).is_ok() {
            if frame.channel_layout().is_empty() {
                frame.set_channel_layout(ff::ChannelLayout::default(frame.channels().into()));
            }
            let r = match resampler {
                Some(r) => r,
                None => resampler.insert(
                    ff::software::resampling::Context::get(
                        frame.format(),
                        frame.channel_layout(),
                        frame.rate(),
                        ff::format::Sample::I16(ff::format::sample::Type::Packed),
                        ff::ChannelLayout::MONO,
                        SAMPLE_RATE,
                    )
                    .map_err(malformed)?,
                ),
            };
            // Room for every output sample of this frame plus the resampler's backlog.
            let capacity =
                frame.samples() * SAMPLE_RATE as usize / frame.rate().max(1) as usize + 512;
            let mut resampled = ff::frame::Audio::new(
                ff::format::Sample::I16(ff::format::sample::Type::Packed),
                capacity,
                ff::ChannelLayout::MONO,
            );
            r.run(&frame, &mut resampled).map_err(malformed)?;
            push_samples(&resampled, out);
            if out.len() > max_samples {
                return Err(AiError::TooLarge(format!(
                    "audio longer than the {max_seconds} s this model accepts"
                )));
            }
        }
        Ok(())
    };

    for (s, packet) in input.packets() {
        if s.index() != index {
            continue;
        }
        decoder.send_packet(&packet).map_err(malformed)?;
        drain(&mut decoder, &mut resampler, &mut out)?;
    }
    decoder.send_eof().map_err(malformed)?;
    drain(&mut decoder, &mut resampler, &mut out)?;
    if let Some(r) = resampler.as_mut() {
        loop {
            let mut rest = ff::frame::Audio::new(
                ff::format::Sample::I16(ff::format::sample::Type::Packed),
                4096,
                ff::ChannelLayout::MONO,
            );
            r.flush(&mut rest).map_err(malformed)?;
            if rest.samples() == 0 {
                break;
            }
            push_samples(&rest, &mut out);
        }
    }
    if out.is_empty() {
        return Err(malformed("no audio samples"));
    }
    Ok(out)
}

fn push_samples(frame: &ff::frame::Audio, out: &mut Vec<f32>) {
    let n = frame.samples();
    let bytes = &frame.data(0)[..n * 2];
    out.extend(
        bytes
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0),
    );
}
