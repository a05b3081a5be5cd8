//! BlipImageProcessor's preprocessing, pixel for pixel: the resize to the
//! model's square input with Pillow's bicubic filter (what transformers calls
//! on 8-bit images), then rescale by 1/255 and normalise per channel.
//!
//! The resize is Pillow's `ImagingResample` (libImaging/Resample.c) in its
//! own arithmetic, not a generic bicubic: filter support widened by the scale
//! when shrinking (antialiasing), coefficients rounded to 22-bit fixed point,
//! a horizontal pass rounded to 8 bits before the vertical one. The `image`
//! crate's Catmull-Rom filter is the same kernel but keeps floats between
//! passes and runs them in the other order, which moves pixels by a level
//! here and there; with fixed point the values are the ones transformers
//! feeds the model.

use image::RgbImage;

/// Fixed-point precision of Pillow's 8-bit resampling (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// For each output index, the first input index read and the fixed-point
/// weights of the inputs from there (Pillow's `precompute_coeffs` and
/// `normalize_coeffs_8bpc`).
fn coefficients(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) cast: truncation toward zero, then clamped.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let weights: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) / filterscale))
                .collect();
            let sum: f64 = weights.iter().sum();
            let one = f64::from(1u32 << PRECISION_BITS);
            let fixed = weights
                .iter()
                .map(|&w| {
                    let w = if sum != 0.0 { w / sum } else { w };
                    if w < 0.0 {
                        (-0.5 + w * one) as i32
                    } else {
                        (0.5 + w * one) as i32
                    }
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// Pillow's `clip8`: the fixed-point sum back to a byte.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

fn weighted(samples: impl Iterator<Item = u8>, weights: &[i32]) -> u8 {
    let sum = samples
        .zip(weights)
        .fold(1i32 << (PRECISION_BITS - 1), |acc, (v, &w)| {
            acc.wrapping_add(i32::from(v).wrapping_mul(w))
        });
    clip8(sum)
}

/// `image.resize((width, height), Image.BICUBIC)` as Pillow computes it for
/// an RGB image.
pub fn resize_bicubic(src: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = src.dimensions();
    let horizontal = if w != width {
        let coeffs = coefficients(w as usize, width as usize);
        RgbImage::from_fn(width, h, |x, y| {
            let (start, weights) = &coeffs[x as usize];
            image::Rgb(std::array::from_fn(|c| {
                weighted((*start..).map(|sx| src.get_pixel(sx as u32, y)[c]), weights)
            }))
        })
    } else {
        src.clone()
    };
    if h == height {
        return horizontal;
    }
    let coeffs = coefficients(h as usize, height as usize);
    RgbImage::from_fn(width, height, |x, y| {
        let (start, weights) = &coeffs[y as usize];
        image::Rgb(std::array::from_fn(|c| {
            weighted(
                (*start..).map(|sy| horizontal.get_pixel(x, sy as u32)[c]),
                weights,
            )
        }))
    })
}

/// How a BLIP checkpoint's images become its input (preprocessor_config.json).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// The square side the vision model takes.
    pub size: u32,
    pub rescale_factor: f64,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// transformers' OPENAI_CLIP_MEAN and OPENAI_CLIP_STD, Python floats that
/// numpy rounds to float32 for the normalisation (as [`ImageProcessor::new`]).
pub const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

impl ImageProcessor {
    /// BlipImageProcessor's defaults for a model of `size` pixels a side.
    pub fn new(size: u32) -> Self {
        ImageProcessor {
            size,
            rescale_factor: 1.0 / 255.0,
            mean: CLIP_MEAN.map(|v| v as f32),
            std: CLIP_STD.map(|v| v as f32),
        }
    }

    /// The pixel values, channels first, `3 × size × size`, row-major: what
    /// transformers computes (float64 rescale, then float32 normalisation).
    pub fn pixel_values(&self, image: &RgbImage) -> Vec<f32> {
        let side = self.size;
        let resized = if image.dimensions() == (side, side) {
            image.clone()
        } else {
            resize_bicubic(image, side, side)
        };
        let plane = (side * side) as usize;
        let mut out = vec![0f32; 3 * plane];
        for (i, p) in resized.pixels().enumerate() {
            for c in 0..3 {
                let v = (f64::from(p[c]) * self.rescale_factor) as f32;
                out[c * plane + i] = (v - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_is_pillows() {
        assert_eq!(bicubic(0.0), 1.0);
        assert_eq!(bicubic(1.0), 0.0);
        assert_eq!(bicubic(2.0), 0.0);
        assert!((bicubic(0.5) - 0.5625).abs() < 1e-12);
        assert!((bicubic(1.5) + 0.0625).abs() < 1e-12);
        // Weights of every output pixel sum to one in fixed point (within
        // the rounding of each), shrinking and growing.
        for (from, to) in [(50, 48), (37, 48), (1000, 384), (3, 384)] {
            for (_, w) in coefficients(from, to) {
                let sum: i32 = w.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i32,
                    "{from}->{to}"
                );
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat_and_the_same_size_is_untouched() {
        let flat = RgbImage::from_pixel(13, 7, image::Rgb([10, 128, 250]));
        let out = resize_bicubic(&flat, 40, 3);
        assert!(out.pixels().all(|p| p.0 == [10, 128, 250]));
        let ramp = RgbImage::from_fn(9, 9, |x, y| image::Rgb([(x * 20) as u8, (y * 20) as u8, 0]));
        assert_eq!(resize_bicubic(&ramp, 9, 9), ramp);
    }

    #[test]
    fn pixel_values_are_rescaled_and_normalised_channels_first() {
        let p = ImageProcessor::new(2);
        let img = RgbImage::from_pixel(2, 2, image::Rgb([0, 255, 128]));
        let v = p.pixel_values(&img);
        assert_eq!(v.len(), 12);
        let expected = |c: usize, v: f64| ((v - CLIP_MEAN[c]) / CLIP_STD[c]) as f32;
        assert!((v[0] - expected(0, 0.0)).abs() < 1e-6);
        assert!((v[4] - expected(1, 1.0)).abs() < 1e-6);
        assert!((v[11] - expected(2, 128.0 / 255.0)).abs() < 1e-6);
    }
}
