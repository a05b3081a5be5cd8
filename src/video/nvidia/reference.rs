//! Rust reference of the resize kernels' per-pixel arithmetic
//! (kernels/resize_math.cuh): the same float operations in the same order,
//! so the kernels (on a GPU) and their CPU harness (everywhere) can be
//! checked against it sample by sample.

/// The kernels' filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    Bilinear,
    /// Box average over each output sample's footprint (downscaling); an
    /// upscaled axis falls back to bilinear.
    Area,
}

/// Sample layout: 8-bit (NV12) or 10-bit in the high bits of 16 (P010).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Eight,
    Ten,
}

/// A plane of samples: `step` samples between pixels (2 for interleaved
/// chroma), reading sample `channel` of each pixel.
#[derive(Debug, Clone, Copy)]
pub struct Plane<'a> {
    pub data: &'a [u8],
    pub pitch: usize,
    pub width: usize,
    pub height: usize,
    pub step: usize,
    pub channel: usize,
    pub depth: Depth,
}

impl Plane<'_> {
    fn load(&self, x: usize, y: usize) -> f32 {
        let i = y * self.pitch;
        match self.depth {
            Depth::Eight => f32::from(self.data[i + x * self.step + self.channel]),
            Depth::Ten => {
                let o = i + 2 * (x * self.step + self.channel);
                f32::from(u16::from_le_bytes([self.data[o], self.data[o + 1]]) >> 6)
            }
        }
    }
}

/// The kernels' rounding: truncate `v + 0.5` toward zero, clamp, shift back.
pub fn quantize(v: f32, depth: Depth) -> u16 {
    let (max, shift) = match depth {
        Depth::Eight => (255, 0),
        Depth::Ten => (1023, 6),
    };
    ((v + 0.5) as i32).clamp(0, max) as u16 * (1 << shift)
}

pub fn bilinear(src: &Plane<'_>, dx: usize, dy: usize, dw: usize, dh: usize) -> f32 {
    let (sw, sh) = (src.width as i32, src.height as i32);
    let mut sx = (dx as f32 + 0.5) * (sw as f32 / dw as f32) - 0.5;
    let mut sy = (dy as f32 + 0.5) * (sh as f32 / dh as f32) - 0.5;
    sx = if sx < 0.0 {
        0.0
    } else if sx > (sw - 1) as f32 {
        (sw - 1) as f32
    } else {
        sx
    };
    sy = if sy < 0.0 {
        0.0
    } else if sy > (sh - 1) as f32 {
        (sh - 1) as f32
    } else {
        sy
    };
    let x0 = sx as i32;
    let y0 = sy as i32;
    let x1 = if x0 + 1 < sw { x0 + 1 } else { sw - 1 };
    let y1 = if y0 + 1 < sh { y0 + 1 } else { sh - 1 };
    let fx = sx - x0 as f32;
    let fy = sy - y0 as f32;
    let p00 = src.load(x0 as usize, y0 as usize);
    let p01 = src.load(x1 as usize, y0 as usize);
    let p10 = src.load(x0 as usize, y1 as usize);
    let p11 = src.load(x1 as usize, y1 as usize);
    let top = p00 * (1.0 - fx) + p01 * fx;
    let bottom = p10 * (1.0 - fx) + p11 * fx;
    top * (1.0 - fy) + bottom * fy
}

pub fn area(src: &Plane<'_>, dx: usize, dy: usize, dw: usize, dh: usize) -> f32 {
    if src.width < dw || src.height < dh {
        return bilinear(src, dx, dy, dw, dh);
    }
    let scale_x = src.width as f32 / dw as f32;
    let scale_y = src.height as f32 / dh as f32;
    let ax = dx as f32 * scale_x;
    let bx = (dx + 1) as f32 * scale_x;
    let ay = dy as f32 * scale_y;
    let by = (dy + 1) as f32 * scale_y;
    let (x_first, y_first) = (ax as usize, ay as usize);
    let x_last = (bx as usize).min(src.width - 1);
    let y_last = (by as usize).min(src.height - 1);
    let mut total = 0.0f32;
    let mut weight = 0.0f32;
    for y in y_first..=y_last {
        let top = if y as f32 > ay { y as f32 } else { ay };
        let bottom = if ((y + 1) as f32) < by {
            (y + 1) as f32
        } else {
            by
        };
        let wy = bottom - top;
        if wy <= 0.0 {
            continue;
        }
        let mut row = 0.0f32;
        let mut row_weight = 0.0f32;
        for x in x_first..=x_last {
            let left = if x as f32 > ax { x as f32 } else { ax };
            let right = if ((x + 1) as f32) < bx {
                (x + 1) as f32
            } else {
                bx
            };
            let wx = right - left;
            if wx <= 0.0 {
                continue;
            }
            row += wx * src.load(x, y);
            row_weight += wx;
        }
        total += wy * row;
        weight += wy * row_weight;
    }
    total / weight
}

/// Scales one plane into `dst` (same depth, step and channel layout).
pub fn scale_plane(
    filter: Filter,
    src: &Plane<'_>,
    dst: &mut [u8],
    dst_pitch: usize,
    dw: usize,
    dh: usize,
) {
    for y in 0..dh {
        for x in 0..dw {
            let v = match filter {
                Filter::Bilinear => bilinear(src, x, y, dw, dh),
                Filter::Area => area(src, x, y, dw, dh),
            };
            let q = quantize(v, src.depth);
            let i = y * dst_pitch;
            match src.depth {
                Depth::Eight => dst[i + x * src.step + src.channel] = q as u8,
                Depth::Ten => {
                    let o = i + 2 * (x * src.step + src.channel);
                    dst[o..o + 2].copy_from_slice(&q.to_le_bytes());
                }
            }
        }
    }
}

/// Fills `rows` rows of `samples` samples of a plane (`pitch` bytes a row,
/// `depth`'s layout) with edges, gradients and xorshift noise continuing from
/// `state`: the pattern the kernel checks use, which exercises every branch
/// of both filters.
pub fn fill_test_pattern(
    data: &mut [u8],
    pitch: usize,
    samples: usize,
    rows: usize,
    depth: Depth,
    state: &mut u32,
) {
    for y in 0..rows {
        for x in 0..samples {
            *state ^= *state << 13;
            *state ^= *state >> 17;
            *state ^= *state << 5;
            let smooth = ((x * 7 + y * 3) % 1024) as u32;
            let edge = if (x / 37 + y / 23) % 2 == 0 { 200 } else { 0 };
            let v10 = (smooth / 2 + edge * 2 + (*state % 64)) % 1024;
            match depth {
                Depth::Eight => data[y * pitch + x] = (v10 >> 2) as u8,
                Depth::Ten => data[y * pitch + 2 * x..y * pitch + 2 * x + 2]
                    .copy_from_slice(&((v10 as u16) << 6).to_le_bytes()),
            }
        }
    }
}

/// One sample of a plane in `depth`'s layout (10-bit samples in P010's high bits).
pub fn read_sample(data: &[u8], pitch: usize, x: usize, y: usize, depth: Depth) -> i32 {
    match depth {
        Depth::Eight => i32::from(data[y * pitch + x]),
        Depth::Ten => {
            let o = y * pitch + 2 * x;
            i32::from(u16::from_le_bytes([data[o], data[o + 1]]) >> 6)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        // kernels/harness.cpp, built by build.rs.
        fn lpw_harness_scale_plane(
            area: i32,
            depth: i32,
            src: *const u8,
            src_pitch: i32,
            sw: i32,
            sh: i32,
            step: i32,
            channel: i32,
            dst: *mut u8,
            dst_pitch: i32,
            dw: i32,
            dh: i32,
        );
    }

    /// A plane with edges, gradients and noise, in `depth`'s layout.
    fn test_plane(w: usize, h: usize, step: usize, depth: Depth, seed: u32) -> (Vec<u8>, usize) {
        let bytes = if depth == Depth::Ten { 2 } else { 1 };
        let pitch = w * step * bytes + 32;
        let mut data = vec![0u8; pitch * h];
        let mut state = seed.wrapping_mul(2654435761) | 1;
        fill_test_pattern(&mut data, pitch, w * step, h, depth, &mut state);
        (data, pitch)
    }

    use super::read_sample as sample;

    /// The same header compiled as C++ and the Rust reference agree on every
    /// output sample of a 1080p ladder (luma and interleaved chroma), both
    /// filters, 8 and 10 bit, and an upscale.
    #[test]
    fn harness_matches_reference_on_every_sample() {
        let cases = [
            (1920, 1080, 1280, 720),
            (1920, 1080, 854, 480),
            (1920, 1080, 640, 360),
            (1920, 1080, 426, 240),
            (320, 180, 640, 360),
        ];
        for depth in [Depth::Eight, Depth::Ten] {
            for filter in [Filter::Bilinear, Filter::Area] {
                for (i, &(sw, sh, dw, dh)) in cases.iter().enumerate() {
                    // Luma (step 1), then chroma (half size, step 2, both channels).
                    for (w, h, ow, oh, step) in
                        [(sw, sh, dw, dh, 1), (sw / 2, sh / 2, dw / 2, dh / 2, 2)]
                    {
                        let (src, pitch) = test_plane(w, h, step, depth, i as u32 + 1);
                        let bytes = if depth == Depth::Ten { 2 } else { 1 };
                        let dst_pitch = ow * step * bytes + 16;
                        for channel in 0..step {
                            let plane = Plane {
                                data: &src,
                                pitch,
                                width: w,
                                height: h,
                                step,
                                channel,
                                depth,
                            };
                            let mut ours = vec![0u8; dst_pitch * oh];
                            scale_plane(filter, &plane, &mut ours, dst_pitch, ow, oh);
                            let mut theirs = vec![0u8; dst_pitch * oh];
                            // SAFETY: both buffers hold `pitch * rows` bytes as the harness expects.
                            unsafe {
                                lpw_harness_scale_plane(
                                    i32::from(filter == Filter::Area),
                                    if depth == Depth::Ten { 10 } else { 8 },
                                    src.as_ptr(),
                                    pitch as i32,
                                    w as i32,
                                    h as i32,
                                    step as i32,
                                    channel as i32,
                                    theirs.as_mut_ptr(),
                                    dst_pitch as i32,
                                    ow as i32,
                                    oh as i32,
                                )
                            };
                            let mut max = 0;
                            for y in 0..oh {
                                for x in 0..ow {
                                    let xi = x * step + channel;
                                    max = max.max(
                                        (sample(&ours, dst_pitch, xi, y, depth)
                                            - sample(&theirs, dst_pitch, xi, y, depth))
                                        .abs(),
                                    );
                                }
                            }
                            assert!(max <= 1, "{filter:?} {depth:?} {w}x{h}->{ow}x{oh} step {step}: max diff {max}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn area_of_a_flat_plane_is_flat_and_quantization_clamps() {
        let data = vec![77u8; 64 * 64];
        let plane = Plane {
            data: &data,
            pitch: 64,
            width: 64,
            height: 64,
            step: 1,
            channel: 0,
            depth: Depth::Eight,
        };
        for (dw, dh) in [(21, 13), (64, 64), (1, 1), (100, 90)] {
            let mut out = vec![0u8; dw * dh];
            scale_plane(Filter::Area, &plane, &mut out, dw, dw, dh);
            assert!(out.iter().all(|&v| v == 77), "{dw}x{dh}");
        }
        assert_eq!(quantize(-3.0, Depth::Eight), 0);
        assert_eq!(quantize(300.0, Depth::Eight), 255);
        assert_eq!(quantize(1023.4, Depth::Ten), 1023 << 6);
    }
}
