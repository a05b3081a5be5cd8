//! Pixel-level comparison of two backends on the same input: the frames their
//! decoders produce (largest and mean difference per plane) and the
//! renditions their ladders produce, each decoded back on the CPU (PSNR per
//! plane). This is how a GPU backend proves its pixels against the CPU's:
//! speed figures alone cannot see a wrong picture.

use std::sync::Arc;

use ff::format::Pixel;
use ffmpeg_next as ff;
use serde::Serialize;

use super::backend::{Decoder, Frame, Scaler, VideoBackend};
use super::container::{demux, DemuxLimits};
use super::cpu::{CpuBackend, CpuScaler};
use super::{TranscodeOptions, Transcoder, VideoError};

/// Why two backends could not be compared, or how their outputs failed to
/// line up (a missing frame or a wrong size is itself a finding).
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Video(#[from] VideoError),
    #[error("{0}")]
    Mismatch(String),
}

/// How one plane of one picture sequence differs from the reference's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PlaneDifference {
    /// The largest absolute difference of any sample.
    pub max_abs: u8,
    pub mean_abs: f64,
    /// Peak signal-to-noise ratio over every sample of every frame, in dB;
    /// `None` when the planes are identical (infinite PSNR).
    pub psnr_db: Option<f64>,
}

/// How a sequence of 8-bit 4:2:0 pictures differs from the reference's, plane
/// by plane (Y, U, V), frame `i` against frame `i`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PictureComparison {
    pub frames: usize,
    pub width: u32,
    pub height: u32,
    pub y: PlaneDifference,
    pub u: PlaneDifference,
    pub v: PlaneDifference,
}

impl PictureComparison {
    /// Luma PSNR, infinite for identical pictures.
    pub fn luma_psnr(&self) -> f64 {
        self.y.psnr_db.unwrap_or(f64::INFINITY)
    }
}

/// Sums over one plane of every frame.
#[derive(Default)]
struct PlaneSums {
    max_abs: u8,
    abs_sum: u64,
    squared_sum: u64,
    samples: u64,
}

impl PlaneSums {
    fn add(&mut self, a: &[u8], b: &[u8]) {
        for (&x, &y) in a.iter().zip(b) {
            let d = x.abs_diff(y);
            self.max_abs = self.max_abs.max(d);
            self.abs_sum += u64::from(d);
            self.squared_sum += u64::from(d) * u64::from(d);
        }
        self.samples += a.len() as u64;
    }

    fn finish(&self) -> PlaneDifference {
        let samples = self.samples.max(1) as f64;
        let mse = self.squared_sum as f64 / samples;
        PlaneDifference {
            max_abs: self.max_abs,
            mean_abs: self.abs_sum as f64 / samples,
            psnr_db: (self.squared_sum > 0).then(|| 10.0 * (255.0 * 255.0 / mse).log10()),
        }
    }
}

/// The rows of plane `plane` of a YUV 4:2:0 frame, without the stride's padding.
fn plane_rows(frame: &ff::frame::Video, plane: usize) -> impl Iterator<Item = &[u8]> {
    let (width, height) = (frame.width() as usize, frame.height() as usize);
    let (w, h) = if plane == 0 {
        (width, height)
    } else {
        (width.div_ceil(2), height.div_ceil(2))
    };
    let stride = frame.stride(plane);
    let data = frame.data(plane);
    (0..h).map(move |y| &data[y * stride..y * stride + w])
}

/// Compares `test` with `reference` frame by frame. Both must be 8-bit 4:2:0
/// sequences of the same length and picture size: a missing frame or a
/// wrong size is itself the finding, reported as an error.
pub fn compare_pictures(
    test: &[ff::frame::Video],
    reference: &[ff::frame::Video],
) -> Result<PictureComparison, CompareError> {
    let mismatch = |what: String| Err(CompareError::Mismatch(what));
    if test.len() != reference.len() {
        return mismatch(format!(
            "{} frames against the reference's {}",
            test.len(),
            reference.len()
        ));
    }
    let Some(first) = reference.first() else {
        return mismatch("no frames to compare".into());
    };
    let mut sums: [PlaneSums; 3] = Default::default();
    for (i, (a, b)) in test.iter().zip(reference).enumerate() {
        if a.format() != Pixel::YUV420P || b.format() != Pixel::YUV420P {
            return mismatch(format!("frame {i} is not 8-bit 4:2:0"));
        }
        if (a.width(), a.height()) != (b.width(), b.height()) {
            return mismatch(format!(
                "frame {i} is {}x{}, the reference's {}x{}",
                a.width(),
                a.height(),
                b.width(),
                b.height()
            ));
        }
        for (plane, sum) in sums.iter_mut().enumerate() {
            for (row_a, row_b) in plane_rows(a, plane).zip(plane_rows(b, plane)) {
                sum.add(row_a, row_b);
            }
        }
    }
    let [y, u, v] = sums.map(|s| s.finish());
    Ok(PictureComparison {
        frames: test.len(),
        width: first.width(),
        height: first.height(),
        y,
        u,
        v,
    })
}

/// A decoded frame as an 8-bit planar 4:2:0 picture in host memory,
/// downloaded first when it is in a GPU's memory.
fn to_host_yuv420p(frame: &Frame) -> Result<ff::frame::Video, VideoError> {
    #[cfg(feature = "nvidia")]
    if let super::backend::FrameData::Device(gpu) = &frame.data {
        return to_host_yuv420p(&super::nvidia::backend::download(gpu, frame.pts)?);
    }
    let video = frame.host_video()?;
    // Same size, so only the layout changes (lossless for 8-bit 4:2:0 input).
    let host = CpuScaler::new(video.width(), video.height()).scale(frame)?;
    Ok(host.host_video()?.clone())
}

/// Every frame `backend`'s decoder makes of `input`, in the order it emits
/// them (display order), as host pictures.
pub fn decode_pictures(
    backend: &dyn VideoBackend,
    input: Arc<[u8]>,
) -> Result<Vec<ff::frame::Video>, VideoError> {
    super::init_ffmpeg();
    let segment = demux(input, &DemuxLimits::default(), None)?;
    let mut decoder: Box<dyn Decoder> = backend.decoder(&segment.video)?;
    let mut pictures = Vec::new();
    let mut keep = |frame: Frame| -> Result<(), VideoError> {
        pictures.push(to_host_yuv420p(&frame)?);
        Ok(())
    };
    for packet in segment.video_packets.iter().map(Some).chain([None]) {
        match decoder.decode(packet, &mut keep) {
            // A damaged picture is skipped by either decoder; the frame
            // counts then differ, which the comparison reports.
            Ok(()) | Err(VideoError::Decode(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pictures)
}

/// One rendition of the ladder on both backends, compared.
#[derive(Debug, Clone, Serialize)]
pub struct RenditionComparison {
    pub profile: String,
    #[serde(flatten)]
    pub pictures: PictureComparison,
}

/// Two backends on the same input: their decoders, then every rendition of
/// the same ladder.
#[derive(Debug, Clone, Serialize)]
pub struct BackendComparison {
    pub backend: &'static str,
    pub reference: &'static str,
    pub decode: PictureComparison,
    pub renditions: Vec<RenditionComparison>,
}

impl BackendComparison {
    /// What falls short of `min_luma_psnr` (dB) in the renditions, or any
    /// difference at all in decoding (a hardware decoder of a conforming
    /// stream must match the reference decoder sample for sample).
    pub fn failures(&self, min_luma_psnr: f64) -> Vec<String> {
        let mut failures = Vec::new();
        if self.decode.y.max_abs > 0 || self.decode.u.max_abs > 0 || self.decode.v.max_abs > 0 {
            failures.push(format!(
                "decoded frames differ from {}'s: max |diff| Y {} U {} V {}",
                self.reference, self.decode.y.max_abs, self.decode.u.max_abs, self.decode.v.max_abs
            ));
        }
        for r in &self.renditions {
            let psnr = r.pictures.luma_psnr();
            if psnr < min_luma_psnr {
                failures.push(format!(
                    "{}: luma PSNR {psnr:.2} dB against {}'s rendition, under {min_luma_psnr} dB",
                    r.profile, self.reference
                ));
            }
        }
        failures
    }
}

/// Decodes `input` on both backends and transcodes it through `options`'
/// ladder on both; every rendition is decoded back on the CPU and compared
/// with the reference backend's.
pub fn compare_backends(
    backend: Arc<dyn VideoBackend>,
    reference: Arc<dyn VideoBackend>,
    input: Arc<[u8]>,
    options: &TranscodeOptions,
) -> Result<BackendComparison, CompareError> {
    let decode = compare_pictures(
        &decode_pictures(backend.as_ref(), Arc::clone(&input))?,
        &decode_pictures(reference.as_ref(), Arc::clone(&input))?,
    )?;
    let tested = Transcoder::new(Arc::clone(&backend)).transcode(
        Arc::clone(&input),
        options,
        &mut |_| {},
    )?;
    let expected =
        Transcoder::new(Arc::clone(&reference)).transcode(input, options, &mut |_| {})?;
    let cpu = CpuBackend;
    let mut renditions = Vec::new();
    for (t, e) in tested.renditions.iter().zip(&expected.renditions) {
        let pictures = compare_pictures(
            &decode_pictures(&cpu, t.data.clone().into())?,
            &decode_pictures(&cpu, e.data.clone().into())?,
        )
        .map_err(|err| CompareError::Mismatch(format!("rendition {}: {err}", t.profile)))?;
        renditions.push(RenditionComparison {
            profile: t.profile.clone(),
            pictures,
        });
    }
    Ok(BackendComparison {
        backend: backend.name(),
        reference: reference.name(),
        decode,
        renditions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::VideoProfile;

    fn picture(width: u32, height: u32, seed: u8) -> ff::frame::Video {
        crate::video::init_ffmpeg();
        let mut frame = ff::frame::Video::new(Pixel::YUV420P, width, height);
        for plane in 0..3 {
            let stride = frame.stride(plane);
            for (i, b) in frame.data_mut(plane).iter_mut().enumerate() {
                *b = ((i % stride) as u8).wrapping_mul(3).wrapping_add(seed);
            }
        }
        frame
    }

    #[test]
    fn identical_pictures_have_no_difference_and_infinite_psnr() {
        let a = vec![picture(33, 17, 1), picture(33, 17, 9)];
        let c = compare_pictures(&a, &a.clone()).unwrap();
        assert_eq!((c.frames, c.width, c.height), (2, 33, 17));
        for p in [c.y, c.u, c.v] {
            assert_eq!((p.max_abs, p.mean_abs, p.psnr_db), (0, 0.0, None));
        }
        assert!(c.luma_psnr().is_infinite());
    }

    #[test]
    fn one_changed_sample_shows_in_its_plane_only() {
        let a = vec![picture(16, 8, 0)];
        let mut b = a.clone();
        // Chroma V of a 16x8 picture is 8x4: change one sample by 10.
        let stride = b[0].stride(2);
        b[0].data_mut(2)[stride + 3] = b[0].data(2)[stride + 3].wrapping_add(10);
        let c = compare_pictures(&b, &a).unwrap();
        assert_eq!((c.y.max_abs, c.u.max_abs, c.v.max_abs), (0, 0, 10));
        assert!((c.v.mean_abs - 10.0 / 32.0).abs() < 1e-9);
        // MSE 100/32 → PSNR 10·log10(255² · 32 / 100) ≈ 43.2 dB.
        let psnr = c.v.psnr_db.unwrap();
        assert!((psnr - 43.18).abs() < 0.01, "{psnr}");
    }

    #[test]
    fn missing_frames_and_other_sizes_are_errors() {
        let a = vec![picture(16, 8, 0), picture(16, 8, 1)];
        let e = compare_pictures(&a[..1], &a).unwrap_err().to_string();
        assert!(e.contains("1 frames against the reference's 2"), "{e}");
        let e = compare_pictures(&[picture(18, 8, 0)], &a[..1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("18x8"), "{e}");
    }

    #[test]
    fn the_cpu_backend_against_itself_is_identical_and_passes() {
        use crate::bench::input::{generate, ClipSpec};
        let dir = tempfile::tempdir().unwrap();
        let spec = ClipSpec::parse("160x90p30:1s").unwrap();
        let clip =
            std::fs::read(generate(spec, dir.path()).expect("the FFmpeg CLI makes the clip"))
                .unwrap();
        let options = TranscodeOptions {
            profiles: VideoProfile::parse_list("P240p30fps16x9,P144p30fps16x9").unwrap(),
            preset: "ultrafast".into(),
            ..Default::default()
        };
        let cpu: Arc<dyn VideoBackend> = Arc::new(CpuBackend);
        let c = compare_backends(Arc::clone(&cpu), cpu, clip.into(), &options).unwrap();
        assert_eq!(c.decode.frames, 30);
        assert_eq!(c.renditions.len(), 2);
        assert_eq!(c.decode.y.max_abs, 0);
        // x264 is deterministic for the same input and settings.
        assert!(c.renditions.iter().all(|r| r.pictures.y.psnr_db.is_none()));
        assert!(c.failures(40.0).is_empty(), "{:?}", c.failures(40.0));

        // The gate can fail: a comparison with a degraded rendition does.
        let mut worse = c.clone();
        worse.renditions[0].pictures.y.psnr_db = Some(31.5);
        worse.decode.u.max_abs = 2;
        let failures = worse.failures(40.0);
        assert_eq!(failures.len(), 2, "{failures:?}");
        assert!(failures[1].contains("31.50 dB"), "{failures:?}");
    }
}
