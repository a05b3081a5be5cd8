//! Reading a segment from memory into packets, and writing a rendition's
//! packets back into an in-memory MPEG-TS or fragmented MP4. No temporary
//! files: segments arrive and leave as bytes.

use std::io::{Cursor, Write};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ff::format::context::StreamIo;
use ff::media::Type;
use ffmpeg_next as ff;

use super::backend::VideoStreamInfo;
use super::VideoError;

/// Limits applied while demuxing untrusted input.
#[derive(Debug, Clone, Copy)]
pub struct DemuxLimits {
    pub max_width: u32,
    pub max_height: u32,
    pub max_video_packets: usize,
}

impl Default for DemuxLimits {
    fn default() -> Self {
        // 8K UHD; more than any segment go-livepeer forwards.
        DemuxLimits {
            max_width: 7680,
            max_height: 4320,
            max_video_packets: 100_000,
        }
    }
}

/// The stream-copied audio track of a segment.
pub struct AudioTrack {
    pub parameters: ff::codec::Parameters,
    pub time_base: ff::Rational,
    pub packets: Vec<ff::Packet>,
}

/// A whole segment, demuxed: video packets to decode, audio to copy through.
pub struct DemuxedSegment {
    pub video: VideoStreamInfo,
    pub video_packets: Vec<ff::Packet>,
    pub audio: Option<AudioTrack>,
    pub width: u32,
    pub height: u32,
    pub codec: ff::codec::Id,
    /// Container start time and duration in seconds, where known.
    pub start_seconds: f64,
    pub duration_seconds: f64,
}

/// Demuxes `bytes` (MPEG-TS, MP4 or anything libavformat probes), giving up
/// with `Timeout` once `deadline` passes.
pub fn demux(
    bytes: Arc<[u8]>,
    limits: &DemuxLimits,
    deadline: Option<Instant>,
) -> Result<DemuxedSegment, VideoError> {
    if bytes.is_empty() {
        return Err(VideoError::EmptyInput);
    }
    let io =
        StreamIo::from_read_seek(Cursor::new(bytes)).map_err(VideoError::internal("open input"))?;
    let mut input = ff::format::input_from_stream_with_interrupt(io, None, None, move || {
        deadline.is_some_and(|d| Instant::now() > d)
    })
    .map_err(|e| match e {
        ff::Error::Exit => VideoError::Timeout(Default::default()),
        e => VideoError::Demux(e),
    })?;

    let video_stream = input
        .streams()
        .best(Type::Video)
        .ok_or(VideoError::NoVideoStream)?;
    let video_index = video_stream.index();
    let parameters = video_stream.parameters();
    let codec = parameters.id();
    if !matches!(codec, ff::codec::Id::H264 | ff::codec::Id::HEVC) {
        return Err(VideoError::UnsupportedCodec(
            format!("{codec:?}").to_lowercase(),
        ));
    }
    // SAFETY: `parameters` wraps the stream's live AVCodecParameters; we read two ints.
    let (width, height) = unsafe {
        let p = parameters.as_ptr();
        ((*p).width, (*p).height)
    };
    let (width, height) = (width.max(0) as u32, height.max(0) as u32);
    if width == 0 || height == 0 || width > limits.max_width || height > limits.max_height {
        return Err(VideoError::BadResolution {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    let rate = video_stream.avg_frame_rate();
    let rate = if rate.numerator() > 0 && rate.denominator() > 0 {
        Some(rate)
    } else {
        let r = video_stream.rate();
        (r.numerator() > 0 && r.denominator() > 0).then_some(r)
    };
    let video = VideoStreamInfo {
        parameters,
        time_base: video_stream.time_base(),
        frame_rate: rate,
    };

    let audio_index = input.streams().best(Type::Audio).map(|s| s.index());
    let mut audio = input.streams().best(Type::Audio).map(|s| AudioTrack {
        parameters: s.parameters(),
        time_base: s.time_base(),
        packets: Vec::new(),
    });

    // SAFETY: reads one field of the open format context.
    let start_time = unsafe { (*input.as_ptr()).start_time };
    let start_seconds = if start_time == ff::ffi::AV_NOPTS_VALUE {
        0.0
    } else {
        start_time as f64 / f64::from(ff::ffi::AV_TIME_BASE)
    };
    let duration_seconds = if input.duration() > 0 {
        input.duration() as f64 / f64::from(ff::ffi::AV_TIME_BASE)
    } else {
        0.0
    };

    let mut video_packets = Vec::new();
    let mut damaged = 0usize;
    loop {
        let mut packet = ff::Packet::empty();
        match packet.read(&mut input) {
            Ok(()) => {}
            Err(ff::Error::Eof) => break,
            Err(ff::Error::Exit) => return Err(VideoError::Timeout(Default::default())),
            // A damaged packet is skipped, as FFmpeg does; the demuxer resyncs.
            Err(ff::Error::InvalidData) if damaged < 10_000 => {
                damaged += 1;
                continue;
            }
            // Truncated or unreadable past this point: keep what was read.
            Err(_) => break,
        }
        let stream = packet.stream();
        if stream == video_index {
            if video_packets.len() >= limits.max_video_packets {
                return Err(VideoError::TooManyPackets(video_packets.len()));
            }
            video_packets.push(packet);
        } else if Some(stream) == audio_index {
            if let Some(track) = audio.as_mut() {
                track.packets.push(packet);
            }
        }
    }
    if deadline.is_some_and(|d| Instant::now() > d) {
        return Err(VideoError::Timeout(Default::default()));
    }
    let audio = audio.map(normalize_aac).transpose()?;
    Ok(DemuxedSegment {
        video,
        video_packets,
        audio,
        width,
        height,
        codec,
        start_seconds,
        duration_seconds,
    })
}

/// AAC from MPEG-TS arrives as ADTS frames with no codec extradata. MP4 needs
/// raw frames plus an AudioSpecificConfig, which `aac_adtstoasc` produces;
/// the MPEG-TS muxer rebuilds ADTS headers from it, so one form serves both.
fn normalize_aac(mut track: AudioTrack) -> Result<AudioTrack, VideoError> {
    let is_adts = track.parameters.id() == ff::codec::Id::AAC
        && track
            .packets
            .first()
            .and_then(|p| p.data())
            .is_some_and(|d| d.len() > 2 && d[0] == 0xFF && d[1] & 0xF0 == 0xF0);
    if !is_adts {
        return Ok(track);
    }
    let mut bsf =
        super::bsf::BitstreamFilter::new("aac_adtstoasc", &track.parameters, track.time_base)?;
    let packets = std::mem::take(&mut track.packets)
        .into_iter()
        .flat_map(|p| bsf.filter(p))
        .collect();
    track.parameters = bsf.output_parameters();
    track.packets = packets;
    Ok(track)
}

/// A `Write` sink whose bytes stay reachable after the muxer that owns the
/// writer half is dropped.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("buffer lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One packet stream to mux.
pub struct MuxTrack<'a> {
    pub parameters: ff::codec::Parameters,
    pub time_base: ff::Rational,
    pub packets: &'a [ff::Packet],
}

/// Muxes `tracks` into `format` ("mpegts" or "mp4", the latter fragmented so
/// it needs no seeking) and returns the bytes. Packets keep their timestamps.
pub fn mux(format: &str, tracks: &[MuxTrack<'_>]) -> Result<Vec<u8>, VideoError> {
    let sink = SharedBuffer::default();
    let io = StreamIo::from_write(sink.clone()).map_err(VideoError::internal("open output"))?;
    let mut output = ff::format::output_to_stream(io, None, Some(format))
        .map_err(VideoError::internal("open muxer"))?;
    for track in tracks {
        let mut stream = output
            .add_stream(ff::encoder::find(ff::codec::Id::None))
            .map_err(VideoError::internal("add stream"))?;
        stream.set_parameters(track.parameters.clone());
        stream.set_time_base(track.time_base);
        // SAFETY: the stream was just created; clearing the codec tag lets the
        // muxer pick its own, as FFmpeg does for stream copy between containers.
        unsafe { (*(*stream.as_mut_ptr()).codecpar).codec_tag = 0 };
    }
    let mut options = ff::Dictionary::new();
    if format == "mp4" {
        options.set("movflags", "frag_keyframe+empty_moov+default_base_moof");
    }
    output
        .write_header_with(options)
        .map_err(VideoError::internal("write header"))?;
    let out_bases: Vec<_> = output.streams().map(|s| s.time_base()).collect();

    // Merge the tracks in decode-time order so the muxer need not buffer.
    let mut next = vec![0usize; tracks.len()];
    let mut last_dts: Vec<Option<i64>> = vec![None; tracks.len()];
    loop {
        let mut pick: Option<(usize, f64)> = None;
        for (i, track) in tracks.iter().enumerate() {
            if let Some(p) = track.packets.get(next[i]) {
                let ts = p.dts().or(p.pts()).unwrap_or(0) as f64 * f64::from(track.time_base);
                if pick.is_none_or(|(_, best)| ts < best) {
                    pick = Some((i, ts));
                }
            }
        }
        let Some((i, _)) = pick else { break };
        let mut packet = tracks[i].packets[next[i]].clone();
        next[i] += 1;
        packet.set_stream(i);
        packet.set_position(-1);
        packet.rescale_ts(tracks[i].time_base, out_bases[i]);
        // Copied packets from damaged or spliced input may lack timestamps or
        // run backwards; muxers refuse those, so they are dropped, as FFmpeg
        // drops what it cannot mux.
        let Some(dts) = packet.dts().or(packet.pts()) else {
            continue;
        };
        if last_dts[i].is_some_and(|last| dts <= last) {
            continue;
        }
        last_dts[i] = Some(dts);
        packet
            .write_interleaved(&mut output)
            .map_err(VideoError::internal("write packet"))?;
    }
    output
        .write_trailer()
        .map_err(VideoError::internal("write trailer"))?;
    drop(output);
    let bytes = std::mem::take(&mut *sink.0.lock().expect("buffer lock"));
    Ok(bytes)
}
