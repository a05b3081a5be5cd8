//! Reading text in images with RapidOCR's PP-OCR ONNX models, step for step
//! as `rapidocr_onnxruntime` 1.4 reads it: the image bounded to 2000 pixels
//! and at least 30, very flat images letterboxed, text boxes detected
//! ([`detect`]), each box cut out and straightened, turned upright when the
//! optional classifier says it is upside down, read ([`recognize`]), and
//! lines under 0.5 confidence dropped.
//!
//! Resampling uses the `image` crate's bilinear (triangle) filter where
//! RapidOCR uses OpenCV's bilinear `resize`; they agree when enlarging and
//! differ slightly when shrinking, where the triangle filter averages more
//! source pixels.

pub mod detect;
pub mod recognize;

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{Rgb, RgbImage};
use ndarray::Array4;

use super::AiError;
pub use detect::Quad;
use detect::TextDetector;
use recognize::{AngleClassifier, TextRecognizer};

/// Images are shrunk to this longest side first (`max_side_len`).
const MAX_SIDE_LEN: u32 = 2000;
/// ...and enlarged to this shortest side (`min_side_len`).
const MIN_SIDE_LEN: u32 = 30;
/// Images this low, or wider than `LETTERBOX_RATIO` times their height, are
/// padded with black above and below (`min_height`, `width_height_ratio`).
const LETTERBOX_MIN_HEIGHT: u32 = 30;
const LETTERBOX_RATIO: u32 = 8;
/// Lines read with less confidence are dropped (`text_score`).
const MIN_TEXT_SCORE: f32 = 0.5;
/// Boxes whose tops are closer than this are one row, read left to right.
const SAME_ROW_PIXELS: f32 = 10.0;

/// One line of text read, with its box in the input image's pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct TextLine {
    pub text: String,
    /// The mean probability of the line's characters.
    pub confidence: f32,
    pub corners: Quad,
}

/// The files of one OCR model folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OcrModelFiles {
    pub detector: PathBuf,
    pub recognizer: PathBuf,
    pub classifier: Option<PathBuf>,
    /// `keys.txt`: a character dictionary used instead of the one in the
    /// recognizer's metadata (RapidOCR's `rec_keys_path`).
    pub keys: Option<PathBuf>,
}

impl OcrModelFiles {
    /// `det.onnx`, `rec.onnx` and optionally `cls.onnx` and `keys.txt`, or
    /// the files RapidOCR ships (`ch_PP-OCRv4_det_infer.onnx`,
    /// `ch_PP-OCRv4_rec_infer.onnx`, `ch_ppocr_mobile_v2.0_cls_infer.onnx`).
    pub fn find(dir: &Path) -> Result<Self, AiError> {
        let onnx_files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| AiError::UnknownModel(format!("{}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "onnx") && p.is_file())
            .collect();
        let role = |short: &str, tag: &str| -> Result<Option<PathBuf>, AiError> {
            let exact = dir.join(format!("{short}.onnx"));
            if exact.is_file() {
                return Ok(Some(exact));
            }
            let matches: Vec<&PathBuf> = onnx_files
                .iter()
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().contains(tag))
                })
                .collect();
            match matches.as_slice() {
                [] => Ok(None),
                [one] => Ok(Some((*one).clone())),
                many => Err(AiError::UnknownModel(format!(
                    "{}: several {short} models ({many:?}); name the one to use {short}.onnx",
                    dir.display()
                ))),
            }
        };
        let required = |short: &str, tag: &str, what: &str| {
            role(short, tag)?.ok_or_else(|| {
                AiError::UnknownModel(format!(
                    "{}: no text {what} model ({short}.onnx or *{tag}*.onnx)",
                    dir.display()
                ))
            })
        };
        Ok(OcrModelFiles {
            detector: required("det", "_det", "detection")?,
            recognizer: required("rec", "_rec", "recognition")?,
            classifier: role("cls", "_cls")?,
            keys: Some(dir.join("keys.txt")).filter(|p| p.is_file()),
        })
    }
}

/// RapidOCR's pipeline over loaded models.
pub struct TextReader {
    detector: TextDetector,
    classifier: Option<AngleClassifier>,
    recognizer: TextRecognizer,
}

impl TextReader {
    /// Loads the models of `dir` (see [`OcrModelFiles::find`]), with
    /// `threads` intra-op threads each (ONNX Runtime's default when 0).
    pub fn load(dir: &Path, threads: usize) -> Result<Self, AiError> {
        let files = OcrModelFiles::find(dir)?;
        Ok(TextReader {
            detector: TextDetector::load(&files.detector, threads)?,
            classifier: files
                .classifier
                .as_deref()
                .map(|path| AngleClassifier::load(path, threads))
                .transpose()?,
            recognizer: TextRecognizer::load(&files.recognizer, files.keys.as_deref(), threads)?,
        })
    }

    /// The lines of text in `image`, top to bottom and, within a row, left
    /// to right.
    pub fn read(&self, image: &RgbImage) -> Result<Vec<TextLine>, AiError> {
        let (raw_width, raw_height) = image.dimensions();
        let bounded = Bounded::new(image);
        let (padded, top) = letterbox(&bounded.image);
        let mut boxes = self.detector.detect(&padded)?;
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        sort_reading_order(&mut boxes);
        let mut crops: Vec<RgbImage> = boxes.iter().map(|quad| crop_quad(&padded, quad)).collect();
        if let Some(classifier) = &self.classifier {
            classifier.make_upright(&mut crops)?;
        }
        let texts = self.recognizer.recognize(&crops)?;
        Ok(boxes
            .into_iter()
            .zip(texts)
            .filter(|(_, (_, confidence))| *confidence >= MIN_TEXT_SCORE)
            .map(|(quad, (text, confidence))| TextLine {
                text,
                confidence,
                corners: quad.map(|[x, y]| {
                    [
                        ((x * bounded.ratio_x).max(0.0)).min(raw_width as f32),
                        (((y - top as f32) * bounded.ratio_y).max(0.0)).min(raw_height as f32),
                    ]
                }),
            })
            .collect())
    }
}

/// The text of read lines: boxes of one row joined by spaces, rows by new
/// lines. A box continues the row when its vertical centre lies within the
/// previous box's height.
pub fn joined_text(lines: &[TextLine]) -> String {
    let mut text = String::new();
    let mut previous: Option<&TextLine> = None;
    for line in lines {
        if let Some(prev) = previous {
            let (top, bottom) = vertical_span(&prev.corners);
            let (line_top, line_bottom) = vertical_span(&line.corners);
            let centre = (line_top + line_bottom) / 2.0;
            text.push(if (top..=bottom).contains(&centre) {
                ' '
            } else {
                '\n'
            });
        }
        text.push_str(&line.text);
        previous = Some(line);
    }
    text
}

fn vertical_span(quad: &Quad) -> (f32, f32) {
    quad.iter().fold((f32::MAX, f32::MIN), |(lo, hi), [_, y]| {
        (lo.min(*y), hi.max(*y))
    })
}

/// The image after RapidOCR's `preprocess`, and how its pixels map back.
struct Bounded {
    image: RgbImage,
    ratio_x: f32,
    ratio_y: f32,
}

impl Bounded {
    /// Shrinks the longest side to 2000 or enlarges the shortest to 30,
    /// sides rounded to multiples of 32 (`reduce_max_side`,
    /// `increase_min_side`). RapidOCR keeps only the last step's ratios
    /// when both apply; here they compose, so boxes map back exactly.
    fn new(image: &RgbImage) -> Bounded {
        let mut bounded = Bounded {
            image: image.clone(),
            ratio_x: 1.0,
            ratio_y: 1.0,
        };
        let (w, h) = bounded.image.dimensions();
        if w.max(h) > MAX_SIDE_LEN {
            bounded.rescale(f64::from(MAX_SIDE_LEN) / f64::from(w.max(h)));
        }
        let (w, h) = bounded.image.dimensions();
        if w.min(h) < MIN_SIDE_LEN {
            bounded.rescale(f64::from(MIN_SIDE_LEN) / f64::from(w.min(h)));
        }
        bounded
    }

    fn rescale(&mut self, ratio: f64) {
        let (w, h) = self.image.dimensions();
        // At least 32 where RapidOCR fails on a side that rounds to nothing.
        let to_32 = |side: u32| {
            (((f64::from(side) * ratio).trunc() / 32.0).round_ties_even() * 32.0).max(32.0) as u32
        };
        let (new_w, new_h) = (to_32(w), to_32(h));
        self.image = image::imageops::resize(&self.image, new_w, new_h, FilterType::Triangle);
        self.ratio_x *= w as f32 / new_w as f32;
        self.ratio_y *= h as f32 / new_h as f32;
    }
}

/// Pads very low or very flat images with black above and below so that
/// the detector sees them at a usable scale (`maybe_add_letterbox`);
/// returns the image and the rows added on top.
fn letterbox(image: &RgbImage) -> (RgbImage, u32) {
    let (w, h) = image.dimensions();
    if h > LETTERBOX_MIN_HEIGHT && f64::from(w) / f64::from(h) <= f64::from(LETTERBOX_RATIO) {
        return (image.clone(), 0);
    }
    let target = (w / LETTERBOX_RATIO).max(LETTERBOX_MIN_HEIGHT) * 2;
    let pad = target.abs_diff(h) / 2;
    let mut padded = RgbImage::from_pixel(w, h + 2 * pad, Rgb([0, 0, 0]));
    image::imageops::replace(&mut padded, image, 0, i64::from(pad));
    (padded, pad)
}

/// Top to bottom by the top-left corner, then left to right among boxes
/// whose tops are within 10 pixels (`sorted_boxes`).
fn sort_reading_order(boxes: &mut [Quad]) {
    boxes.sort_by(|a, b| {
        a[0][1]
            .total_cmp(&b[0][1])
            .then(a[0][0].total_cmp(&b[0][0]))
    });
    for i in 0..boxes.len().saturating_sub(1) {
        for j in (0..=i).rev() {
            if (boxes[j + 1][0][1] - boxes[j][0][1]).abs() < SAME_ROW_PIXELS
                && boxes[j + 1][0][0] < boxes[j][0][0]
            {
                boxes.swap(j, j + 1);
            } else {
                break;
            }
        }
    }
}

/// Cuts a box out of `image` as an upright rectangle (`get_rotate_crop_image`):
/// a perspective warp of the box onto a rectangle as wide and high as its
/// longer opposite sides, bicubic, edges replicated; crops 1.5 times higher
/// than wide are turned a quarter counter-clockwise, as vertical text.
fn crop_quad(image: &RgbImage, quad: &Quad) -> RgbImage {
    let corner = |i: usize| [f64::from(quad[i][0]), f64::from(quad[i][1])];
    let distance = |a: [f64; 2], b: [f64; 2]| (a[0] - b[0]).hypot(a[1] - b[1]);
    let (p0, p1, p2, p3) = (corner(0), corner(1), corner(2), corner(3));
    let width = distance(p0, p1).max(distance(p2, p3)) as u32;
    let height = distance(p0, p3).max(distance(p1, p2)) as u32;
    let (width, height) = (width.max(1), height.max(1));
    let (w, h) = (f64::from(width), f64::from(height));
    let crop =
        match perspective_transform([[0.0, 0.0], [w, 0.0], [w, h], [0.0, h]], [p0, p1, p2, p3]) {
            Some(to_source) => RgbImage::from_fn(width, height, |u, v| {
                let (x, y) = to_source.apply(f64::from(u), f64::from(v));
                bicubic(image, x, y)
            }),
            // A degenerate box (its corners on a line): its bounding rectangle.
            None => {
                let x = quad.iter().map(|p| p[0]).fold(f32::MAX, f32::min).max(0.0) as u32;
                let y = quad.iter().map(|p| p[1]).fold(f32::MAX, f32::min).max(0.0) as u32;
                image::imageops::crop_imm(image, x, y, width, height).to_image()
            }
        };
    if f64::from(crop.height()) / f64::from(crop.width()) >= 1.5 {
        image::imageops::rotate270(&crop)
    } else {
        crop
    }
}

/// A 3×3 homography.
struct Homography([[f64; 3]; 3]);

impl Homography {
    fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        let w = m[2][0] * x + m[2][1] * y + m[2][2];
        (
            (m[0][0] * x + m[0][1] * y + m[0][2]) / w,
            (m[1][0] * x + m[1][1] * y + m[1][2]) / w,
        )
    }
}

/// The homography taking each `from` point to the matching `to` point
/// (OpenCV's `getPerspectiveTransform`), or None for degenerate points.
fn perspective_transform(from: [[f64; 2]; 4], to: [[f64; 2]; 4]) -> Option<Homography> {
    // Unknowns a..h of [[a b c] [d e f] [g h 1]]; two equations per point.
    let mut rows = [[0.0f64; 9]; 8];
    for i in 0..4 {
        let ([x, y], [u, v]) = (from[i], to[i]);
        rows[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -x * u, -y * u, u];
        rows[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -x * v, -y * v, v];
    }
    // Gaussian elimination with partial pivoting.
    for col in 0..8 {
        let pivot = (col..8).max_by(|&a, &b| rows[a][col].abs().total_cmp(&rows[b][col].abs()))?;
        if rows[pivot][col].abs() < 1e-12 {
            return None;
        }
        rows.swap(col, pivot);
        let pivot_row = rows[col];
        for (r, row) in rows.iter_mut().enumerate() {
            if r != col {
                let factor = row[col] / pivot_row[col];
                for (value, pivot_value) in row.iter_mut().zip(pivot_row).skip(col) {
                    *value -= factor * pivot_value;
                }
            }
        }
    }
    let p: Vec<f64> = (0..8).map(|i| rows[i][8] / rows[i][i]).collect();
    Some(Homography([
        [p[0], p[1], p[2]],
        [p[3], p[4], p[5]],
        [p[6], p[7], 1.0],
    ]))
}

/// OpenCV's bicubic interpolation (a = -0.75) at (x, y), edge pixels
/// replicated beyond the image.
fn bicubic(image: &RgbImage, x: f64, y: f64) -> Rgb<u8> {
    const A: f64 = -0.75;
    let weights = |t: f64| {
        let near = |d: f64| ((A + 2.0) * d - (A + 3.0)) * d * d + 1.0;
        let far = |d: f64| ((A * d - 5.0 * A) * d + 8.0 * A) * d - 4.0 * A;
        [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)]
    };
    let (x0, y0) = (x.floor(), y.floor());
    let (wx, wy) = (weights(x - x0), weights(y - y0));
    let (width, height) = (i64::from(image.width()), i64::from(image.height()));
    let mut sum = [0.0f64; 3];
    for (j, wy) in wy.iter().enumerate() {
        let sy = (y0 as i64 - 1 + j as i64).clamp(0, height - 1) as u32;
        for (i, wx) in wx.iter().enumerate() {
            let sx = (x0 as i64 - 1 + i as i64).clamp(0, width - 1) as u32;
            let pixel = image.get_pixel(sx, sy);
            for c in 0..3 {
                sum[c] += wx * wy * f64::from(pixel[c]);
            }
        }
    }
    Rgb(sum.map(|v| v.round().clamp(0.0, 255.0) as u8))
}

/// An RGB image as the PP-OCR models take it: BGR planes, (x / 255 - 0.5) /
/// 0.5, in a [1, 3, H, `width`] tensor whose columns past the image are 0.
fn bgr_tensor(image: &RgbImage, width: usize) -> Array4<f32> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let width = width.max(w);
    let plane = h * width;
    let mut data = vec![0.0f32; 3 * plane];
    let normalise = |v: u8| (f32::from(v) / 255.0 - 0.5) / 0.5;
    // Flat indexing: the per-element `[[n, c, y, x]]` form is many times
    // slower in unoptimised builds, where the tests run.
    for (i, rgb) in image.as_raw().chunks_exact(3).enumerate() {
        let at = (i / w) * width + i % w;
        data[at] = normalise(rgb[2]);
        data[plane + at] = normalise(rgb[1]);
        data[2 * plane + at] = normalise(rgb[0]);
    }
    Array4::from_shape_vec((1, 3, h, width), data).expect("the buffer is sized for the shape")
}

/// For tests of the OCR models and the ocr pipeline: RapidOCR's
/// models and text rendered in DejaVu Sans (Debian's fonts-dejavu-core),
/// black on white.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    use ab_glyph::{Font, FontRef, PxScale, ScaleFont};
    use image::{Rgb, RgbImage};

    use crate::ai::onnx;

    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

    /// The folder of RapidOCR's models, as the rapidocr-onnxruntime wheel
    /// installs them.
    pub(crate) fn rapidocr_models() -> PathBuf {
        onnx::find_package_file(Path::new(
            "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        ))
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("RapidOCR models: run scripts/install-deps to install rapidocr-onnxruntime")
    }

    /// `lines` at `size` pixels, one under another with a margin.
    pub(crate) fn render(lines: &[&str], size: f32, width: u32, height: u32) -> RgbImage {
        let data = std::fs::read(FONT).unwrap_or_else(|e| {
            panic!("{FONT}: {e} (scripts/install-deps installs fonts-dejavu-core)")
        });
        let font = FontRef::try_from_slice(&data).expect("DejaVu Sans parses");
        let scaled = font.as_scaled(PxScale::from(size));
        let mut image = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
        let margin = size;
        for (row, line) in lines.iter().enumerate() {
            let baseline = margin + scaled.ascent() + row as f32 * size * 1.8;
            let mut x = margin;
            let mut previous = None;
            for c in line.chars() {
                let id = scaled.glyph_id(c);
                if let Some(prev) = previous {
                    x += scaled.kern(prev, id);
                }
                let glyph = id.with_scale_and_position(size, ab_glyph::point(x, baseline));
                if let Some(outline) = font.outline_glyph(glyph) {
                    let bounds = outline.px_bounds();
                    outline.draw(|gx, gy, coverage| {
                        let (px, py) = (
                            bounds.min.x as i64 + i64::from(gx),
                            bounds.min.y as i64 + i64::from(gy),
                        );
                        if px >= 0 && py >= 0 && (px as u32) < width && (py as u32) < height {
                            let ink = (255.0 * (1.0 - coverage.clamp(0.0, 1.0))) as u8;
                            let pixel = image.get_pixel_mut(px as u32, py as u32);
                            let value = pixel[0].min(ink);
                            *pixel = Rgb([value, value, value]);
                        }
                    });
                }
                x += scaled.h_advance(id);
                previous = Some(id);
            }
        }
        image
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::test_support::{rapidocr_models, render};
    use super::*;

    fn reader() -> &'static TextReader {
        static READER: OnceLock<TextReader> = OnceLock::new();
        READER
            .get_or_init(|| TextReader::load(&rapidocr_models(), 0).expect("RapidOCR models load"))
    }

    #[test]
    fn finds_rapidocr_files_by_their_names() {
        let files = OcrModelFiles::find(&rapidocr_models()).unwrap();
        assert!(files.detector.ends_with("ch_PP-OCRv4_det_infer.onnx"));
        assert!(files.recognizer.ends_with("ch_PP-OCRv4_rec_infer.onnx"));
        assert!(files
            .classifier
            .as_deref()
            .is_some_and(|p| p.ends_with("ch_ppocr_mobile_v2.0_cls_infer.onnx")));
        let empty = tempfile::tempdir().unwrap();
        let e = OcrModelFiles::find(empty.path()).unwrap_err();
        assert!(matches!(e, AiError::UnknownModel(_)), "{e:?}");
    }

    /// The lines the tests render, at 64 px: at 48 px and below the model
    /// reads "LIVEPEER2026", dropping the space (as RapidOCR in Python does
    /// on the same image and box).
    fn two_lines() -> RgbImage {
        render(&["LIVEPEER 2026", "hello world"], 64.0, 1024, 320)
    }

    #[test]
    fn reads_two_rendered_lines_in_order() {
        let lines = reader().read(&two_lines()).unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["LIVEPEER 2026", "hello world"], "{lines:?}");
        for line in &lines {
            assert!(line.confidence > 0.9, "{line:?}");
        }
        // Boxes lie on the text: the first starts near the left margin (64
        // px), above the second, and both are level.
        let (first, second) = (&lines[0].corners, &lines[1].corners);
        assert!((first[0][0] - 64.0).abs() < 12.0, "{first:?}");
        assert!(first[3][1] <= second[0][1], "{first:?} {second:?}");
        assert!((first[0][1] - first[1][1]).abs() <= 1.0, "{first:?}");
        assert_eq!(joined_text(&lines), "LIVEPEER 2026\nhello world");
    }

    #[test]
    fn reads_slanted_lines_along_slanted_boxes() {
        let slanted = rotate(&two_lines(), 10.0, 1100, 500);
        let lines = reader().read(&slanted).unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["LIVEPEER 2026", "hello world"], "{lines:?}");
        for line in &lines {
            let [top_left, top_right, ..] = line.corners;
            let slope = (top_right[1] - top_left[1]) / (top_right[0] - top_left[0]);
            assert!((slope - 10f32.to_radians().tan()).abs() < 0.03, "{line:?}");
        }
    }

    #[test]
    fn upside_down_lines_are_turned_by_the_classifier() {
        let flipped = image::imageops::rotate180(&two_lines());
        let lines = reader().read(&flipped).unwrap();
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        // Upside down, "hello world" is the upper line.
        assert_eq!(texts, ["hello world", "LIVEPEER 2026"], "{lines:?}");
    }

    /// `image` turned `degrees` clockwise about its centre onto a white
    /// `width` × `height` canvas.
    fn rotate(image: &RgbImage, degrees: f64, width: u32, height: u32) -> RgbImage {
        let (sin, cos) = degrees.to_radians().sin_cos();
        let (src_w, src_h) = (f64::from(image.width()), f64::from(image.height()));
        RgbImage::from_fn(width, height, |x, y| {
            let dx = f64::from(x) - f64::from(width) / 2.0;
            let dy = f64::from(y) - f64::from(height) / 2.0;
            let sx = cos * dx + sin * dy + src_w / 2.0;
            let sy = -sin * dx + cos * dy + src_h / 2.0;
            if (0.0..=src_w - 1.0).contains(&sx) && (0.0..=src_h - 1.0).contains(&sy) {
                bicubic(image, sx, sy)
            } else {
                Rgb([255, 255, 255])
            }
        })
    }

    #[test]
    fn blank_images_hold_no_text() {
        let white = RgbImage::from_pixel(200, 100, Rgb([255, 255, 255]));
        assert_eq!(reader().read(&white).unwrap(), []);
        // A 10×10 image is enlarged to the 30-pixel minimum first.
        let tiny = RgbImage::from_pixel(10, 10, Rgb([255, 255, 255]));
        assert_eq!(reader().read(&tiny).unwrap(), []);
    }

    #[test]
    fn a_warp_of_an_axis_aligned_box_is_a_crop() {
        let image = RgbImage::from_fn(40, 30, |x, y| Rgb([x as u8 * 6, y as u8 * 8, 100]));
        let quad = [[5.0, 4.0], [25.0, 4.0], [25.0, 14.0], [5.0, 14.0]];
        let crop = crop_quad(&image, &quad);
        assert_eq!(crop.dimensions(), (20, 10));
        assert_eq!(
            crop,
            image::imageops::crop_imm(&image, 5, 4, 20, 10).to_image()
        );
    }

    #[test]
    fn reading_order_is_rows_then_left_to_right() {
        let quad = |x: f32, y: f32| [[x, y], [x + 10.0, y], [x + 10.0, y + 5.0], [x, y + 5.0]];
        let mut boxes = vec![
            quad(50.0, 42.0),
            quad(10.0, 40.0),
            quad(60.0, 5.0),
            quad(0.0, 47.0),
        ];
        sort_reading_order(&mut boxes);
        assert_eq!(
            boxes.iter().map(|q| q[0]).collect::<Vec<_>>(),
            [[60.0, 5.0], [0.0, 47.0], [10.0, 40.0], [50.0, 42.0]]
        );
    }

    #[test]
    fn letterbox_pads_flat_images() {
        let flat = RgbImage::new(400, 20);
        let (padded, top) = letterbox(&flat);
        assert_eq!((padded.dimensions(), top), ((400, 100), 40));
        let (same, top) = letterbox(&RgbImage::new(200, 100));
        assert_eq!((same.dimensions(), top), ((200, 100), 0));
    }
}
