//! Reading cropped text lines with a PP-OCR recognition model (CTC over a
//! character dictionary), and turning upside-down lines upright with the
//! optional 0°/180° classifier, as RapidOCR's `ch_ppocr_rec` and
//! `ch_ppocr_cls` run them.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use ndarray::{s, Array4, Axis, Ix2, Ix3};

use super::bgr_tensor;
use crate::ai::onnx::{OnnxInput, OnnxSession};
use crate::ai::AiError;

/// Lines are scaled to this height (`rec_img_shape` [3, 48, 320]).
const LINE_HEIGHT: u32 = 48;
/// A batch is at least this wide; wider lines widen their batch.
const MIN_LINE_WIDTH: u32 = 320;
/// Crops per model call (`rec_batch_num`, `cls_batch_num`).
const BATCH: usize = 6;
/// The classifier's input width (`cls_image_shape` [3, 48, 192]).
const CLASSIFIER_WIDTH: u32 = 192;
/// Confidence above which a crop classified as upside down is turned (`cls_thresh`).
const UPSIDE_DOWN_THRESHOLD: f32 = 0.9;
/// The recognition model's metadata key holding its dictionary.
const DICTIONARY_KEY: &str = "character";

pub struct TextRecognizer {
    model: OnnxSession,
    input: String,
    /// Class index → text: the CTC blank at 0, the dictionary, then a space.
    characters: Vec<String>,
}

impl TextRecognizer {
    /// Loads the model; its dictionary comes from `keys_file` (one character
    /// a line, RapidOCR's `rec_keys_path`) when given, else from the model's
    /// `character` metadata, which RapidOCR's models carry.
    pub fn load(path: &Path, keys_file: Option<&Path>, threads: usize) -> Result<Self, AiError> {
        let model = OnnxSession::load(path, threads)?;
        let input = first_input(&model, path)?;
        let dictionary = match keys_file {
            Some(keys) => read_keys_file(keys)?,
            None => model
                .metadata(DICTIONARY_KEY)?
                .map(|text| python_splitlines(&text))
                .ok_or_else(|| {
                    AiError::UnknownModel(format!(
                        "{}: no {DICTIONARY_KEY:?} metadata and no keys file",
                        path.display()
                    ))
                })?,
        };
        if dictionary.is_empty() {
            return Err(AiError::UnknownModel(format!(
                "{}: empty character dictionary",
                path.display()
            )));
        }
        let mut characters = Vec::with_capacity(dictionary.len() + 2);
        characters.push(String::new());
        characters.extend(dictionary);
        characters.push(" ".to_string());
        Ok(TextRecognizer {
            model,
            input,
            characters,
        })
    }

    /// The text and confidence of each crop, in the order given. Crops are
    /// batched by aspect ratio as RapidOCR batches them, which matters: a
    /// batch is as wide as its widest line and the rest are padded.
    pub fn recognize(&self, crops: &[RgbImage]) -> Result<Vec<(String, f32)>, AiError> {
        let ratio = |img: &RgbImage| f64::from(img.width()) / f64::from(img.height());
        let mut order: Vec<usize> = (0..crops.len()).collect();
        order.sort_by(|&a, &b| ratio(&crops[a]).total_cmp(&ratio(&crops[b])));
        let mut results = vec![(String::new(), 0.0f32); crops.len()];
        for batch in order.chunks(BATCH) {
            let widest = batch
                .iter()
                .map(|&i| ratio(&crops[i]))
                .fold(f64::from(MIN_LINE_WIDTH) / f64::from(LINE_HEIGHT), f64::max);
            let width = (f64::from(LINE_HEIGHT) * widest) as u32;
            let images: Vec<RgbImage> = batch
                .iter()
                .map(|&i| fit_to_height(&crops[i], width))
                .collect();
            let probabilities = self
                .run(&images, width)?
                .into_dimensionality::<Ix3>()
                .map_err(|_| AiError::Internal("recognizer output is not [N, T, C]".into()))?;
            for (row, &i) in probabilities.axis_iter(Axis(0)).zip(batch) {
                results[i] = self.ctc_greedy(row)?;
            }
        }
        Ok(results)
    }

    fn run(&self, images: &[RgbImage], width: u32) -> Result<ndarray::ArrayD<f32>, AiError> {
        let batch = stack(images, width);
        let mut outputs = self
            .model
            .run(&[(self.input.as_str(), OnnxInput::F32(batch.view().into_dyn()))])?;
        if outputs.is_empty() {
            return Err(AiError::Internal("recognizer produced no output".into()));
        }
        Ok(outputs.swap_remove(0))
    }

    /// CTC greedy decoding (`CTCLabelDecode`): the most probable class at
    /// each step, repeats merged, blanks dropped; the confidence is the mean
    /// probability of the characters kept (0 when none are).
    fn ctc_greedy(&self, steps: ndarray::ArrayView2<'_, f32>) -> Result<(String, f32), AiError> {
        let mut text = String::new();
        let (mut sum, mut kept) = (0.0f64, 0u32);
        let mut previous: Option<usize> = None;
        for step in steps.axis_iter(Axis(0)) {
            // The first maximum, as numpy's argmax picks.
            let (class, p) =
                step.iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f32::MIN),
                        |best, (i, p)| if p > best.1 { (i, p) } else { best },
                    );
            if class != 0 && previous != Some(class) {
                let character = self.characters.get(class).ok_or_else(|| {
                    AiError::Internal(format!(
                        "recognizer class {class} is outside its {}-entry dictionary",
                        self.characters.len()
                    ))
                })?;
                text.push_str(character);
                sum += f64::from(p);
                kept += 1;
            }
            previous = Some(class);
        }
        let confidence = if kept == 0 {
            0.0
        } else {
            sum / f64::from(kept)
        };
        Ok((text, confidence as f32))
    }
}

/// The 0°/180° text-line classifier.
pub struct AngleClassifier {
    model: OnnxSession,
    input: String,
}

impl AngleClassifier {
    pub fn load(path: &Path, threads: usize) -> Result<Self, AiError> {
        let model = OnnxSession::load(path, threads)?;
        let input = first_input(&model, path)?;
        Ok(AngleClassifier { model, input })
    }

    /// Turns crops the model is confident are upside down (`TextClassifier`).
    pub fn make_upright(&self, crops: &mut [RgbImage]) -> Result<(), AiError> {
        for batch in crops.chunks_mut(BATCH) {
            let images: Vec<RgbImage> = batch
                .iter()
                .map(|img| fit_to_height(img, CLASSIFIER_WIDTH))
                .collect();
            let tensor = stack(&images, CLASSIFIER_WIDTH);
            let outputs = self.model.run(&[(
                self.input.as_str(),
                OnnxInput::F32(tensor.view().into_dyn()),
            )])?;
            let scores = outputs
                .into_iter()
                .next()
                .ok_or_else(|| AiError::Internal("classifier produced no output".into()))?
                .into_dimensionality::<Ix2>()
                .map_err(|_| AiError::Internal("classifier output is not [N, 2]".into()))?;
            for (crop, row) in batch.iter_mut().zip(scores.axis_iter(Axis(0))) {
                let (label, score) =
                    row.iter()
                        .copied()
                        .enumerate()
                        .fold(
                            (0, f32::MIN),
                            |best, (i, p)| if p > best.1 { (i, p) } else { best },
                        );
                // Labels are ["0", "180"].
                if label == 1 && score > UPSIDE_DOWN_THRESHOLD {
                    image::imageops::rotate180_in_place(crop);
                }
            }
        }
        Ok(())
    }
}

fn first_input(model: &OnnxSession, path: &Path) -> Result<String, AiError> {
    model
        .input_names()
        .first()
        .cloned()
        .ok_or_else(|| AiError::UnknownModel(format!("{}: the model has no input", path.display())))
}

/// A PaddleOCR keys file: Python's `readlines()`, line ends stripped.
fn read_keys_file(path: &Path) -> Result<Vec<String>, AiError> {
    let bytes = std::fs::read(path)
        .map_err(|e| AiError::UnknownModel(format!("{}: {e}", path.display())))?;
    Ok(String::from_utf8_lossy(&bytes)
        .split_inclusive('\n')
        .map(|line| line.trim_matches(['\r', '\n']).to_string())
        .collect())
}

/// A crop scaled to 48 pixels high keeping its aspect ratio (width rounded
/// up), at most `max_width` wide (`resize_norm_img`).
fn fit_to_height(crop: &RgbImage, max_width: u32) -> RgbImage {
    let ratio = f64::from(crop.width()) / f64::from(crop.height());
    let width = (f64::from(LINE_HEIGHT) * ratio)
        .ceil()
        .min(f64::from(max_width)) as u32;
    image::imageops::resize(crop, width.max(1), LINE_HEIGHT, FilterType::Triangle)
}

/// Normalised crops side by side in one [N, 3, 48, width] batch, each padded
/// on the right with zeros (mid-grey after normalisation).
fn stack(images: &[RgbImage], width: u32) -> Array4<f32> {
    let mut batch = Array4::<f32>::zeros((images.len(), 3, LINE_HEIGHT as usize, width as usize));
    for (i, img) in images.iter().enumerate() {
        batch
            .slice_mut(s![i..i + 1, .., .., ..])
            .assign(&bgr_tensor(img, width as usize));
    }
    batch
}

/// Python's `str.splitlines()`, which RapidOCR applies to the dictionary:
/// splits at every Unicode line boundary, a final one adding no empty line.
fn python_splitlines(text: &str) -> Vec<String> {
    let is_break = |c: char| {
        matches!(
            c,
            '\n' | '\r'
                | '\u{0b}'
                | '\u{0c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        )
    };
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_break(c) {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            lines.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitlines_matches_python() {
        assert_eq!(
            python_splitlines("a\nb\r\nc\rd\u{2028}e\n"),
            ["a", "b", "c", "d", "e"]
        );
        assert_eq!(python_splitlines("a\n\nb"), ["a", "", "b"]);
        assert!(python_splitlines("").is_empty());
    }

    #[test]
    fn fit_to_height_keeps_the_aspect_ratio_up_to_the_batch_width() {
        let line = RgbImage::new(100, 20);
        assert_eq!(fit_to_height(&line, 320).dimensions(), (240, 48));
        assert_eq!(fit_to_height(&line, 192).dimensions(), (192, 48));
        let batch = stack(&[fit_to_height(&line, 320)], 320);
        assert_eq!(batch.shape(), [1, 3, 48, 320]);
        // Black pixels normalise to -1, the padding stays 0.
        assert_eq!(batch[[0, 0, 10, 0]], -1.0);
        assert_eq!(batch[[0, 0, 10, 300]], 0.0);
    }
}
