//! Image decoding and encoding for the image pipelines, with size limits.

use std::io::Cursor;

use image::{ImageFormat, RgbImage};
use ndarray::{Array4, ArrayD, ArrayViewD, Ix4};

use super::AiError;

/// Decodes PNG, JPEG or WebP into RGB, refusing images over `max_pixels`
/// before their pixels are allocated.
pub fn decode_rgb(bytes: &[u8], max_pixels: u64) -> Result<RgbImage, AiError> {
    let format = image::guess_format(bytes)
        .map_err(|_| AiError::BadRequest("image is not a PNG, JPEG or WebP file".into()))?;
    if !matches!(
        format,
        ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP
    ) {
        return Err(AiError::UnsupportedMedia(format!(
            "image format {format:?} is not supported (PNG, JPEG, WebP)"
        )));
    }
    let reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| AiError::BadRequest(format!("image header is unreadable: {e}")))?;
    if u64::from(w) * u64::from(h) > max_pixels || w == 0 || h == 0 {
        return Err(AiError::TooLarge(format!(
            "image is {w}x{h}; at most {max_pixels} pixels are accepted"
        )));
    }
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| AiError::BadRequest(format!("image does not decode: {e}")))?;
    Ok(img.to_rgb8())
}

/// RGB8 → NCHW float32 in [0, 1].
pub fn to_tensor(img: &RgbImage) -> ArrayD<f32> {
    let (w, h) = img.dimensions();
    let mut t = Array4::<f32>::zeros((1, 3, h as usize, w as usize));
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            t[[0, c, y as usize, x as usize]] = f32::from(p[c]) / 255.0;
        }
    }
    t.into_dyn()
}

/// NCHW float32 in [0, 1] → RGB8 (values clamped, rounded to nearest).
pub fn from_tensor(t: ArrayViewD<'_, f32>) -> Result<RgbImage, AiError> {
    let t = t
        .into_dimensionality::<Ix4>()
        .map_err(|_| AiError::Internal("model output is not an NCHW image".into()))?;
    let (n, c, h, w) = t.dim();
    if n != 1 || c != 3 || h == 0 || w == 0 {
        return Err(AiError::Internal(format!(
            "model output has shape {:?}, expected [1, 3, H, W]",
            t.dim()
        )));
    }
    Ok(RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let px =
            |c: usize| (t[[0, c, y as usize, x as usize]].clamp(0.0, 1.0) * 255.0).round() as u8;
        image::Rgb([px(0), px(1), px(2)])
    }))
}

pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>, AiError> {
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, ImageFormat::Png)
        .map_err(|e| AiError::Internal(format!("PNG encoding failed: {e}")))?;
    Ok(out.into_inner())
}

pub fn data_url(mime: &str, data: &[u8]) -> String {
    use base64::Engine;
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(data)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_round_trip_is_exact() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 50) as u8, (y * 80) as u8, 7]));
        let back = from_tensor(to_tensor(&img).view()).unwrap();
        assert_eq!(img, back);
        let png = encode_png(&img).unwrap();
        assert_eq!(decode_rgb(&png, 100).unwrap(), img);
    }

    #[test]
    fn bad_images_are_refused_with_the_right_error() {
        let e = decode_rgb(b"not an image", 100).unwrap_err();
        assert!(matches!(e, AiError::BadRequest(_)), "{e:?}");
        let img = RgbImage::new(20, 20);
        let png = encode_png(&img).unwrap();
        let e = decode_rgb(&png, 399).unwrap_err();
        assert!(matches!(e, AiError::TooLarge(_)), "{e:?}");
        let e = decode_rgb(&png[..png.len() / 2], 1000).unwrap_err();
        assert!(matches!(e, AiError::BadRequest(_)), "{e:?}");
        // A GIF is recognised but not accepted.
        let e = decode_rgb(b"GIF89a\x01\x00\x01\x00\x00\x00\x00", 1000).unwrap_err();
        assert!(matches!(e, AiError::UnsupportedMedia(_)), "{e:?}");
    }
}
