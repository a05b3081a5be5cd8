//! Text detection with a PP-OCR DB (Differentiable Binarization) model, as
//! RapidOCR's `ch_ppocr_det` runs it: the image scaled so that its short
//! side is 736 and both sides are multiples of 32, a text probability map,
//! and boxes drawn around the map's text regions (`DBPostProcess`).
//!
//! OpenCV is not used: its three steps are redone here. `findContours`
//! becomes 8-connected component labelling (outer boundaries only; holes in
//! a region, which RapidOCR also scores but which never pass its size and
//! score filters on text, are ignored), `minAreaRect` a rotating-calipers
//! search over the region's convex hull, and pyclipper's rounded polygon
//! offset (`unclip`) the equivalent exact growth of the rectangle, since the
//! smallest rectangle around a rectangle grown by `d` with round corners is
//! that rectangle with `d` added on every side.

use std::path::Path;

use image::imageops::FilterType;
use image::RgbImage;
use ndarray::{Array4, Ix4};

use super::bgr_tensor;
use crate::ai::onnx::{OnnxInput, OnnxSession};
use crate::ai::AiError;

/// A quadrilateral in image pixels: top-left, top-right, bottom-right,
/// bottom-left corners as (x, y).
pub type Quad = [[f32; 2]; 4];

/// The short side the network sees (`limit_side_len`, `limit_type: min`).
const LIMIT_SIDE_LEN: f64 = 736.0;
/// Probability above which a pixel is text (`thresh`).
const PIXEL_THRESHOLD: f32 = 0.3;
/// Mean probability a box needs to be kept (`box_thresh`).
const BOX_THRESHOLD: f32 = 0.5;
/// Regions examined at most (`max_candidates`).
const MAX_CANDIDATES: usize = 1000;
/// How far boxes grow beyond the shrunk text kernels DB predicts (`unclip_ratio`).
const UNCLIP_RATIO: f32 = 1.6;
/// Shortest side of a region's rectangle, in map pixels (`min_size`).
const MIN_SIZE: f32 = 3.0;

pub struct TextDetector {
    model: OnnxSession,
    input: String,
}

impl TextDetector {
    pub fn load(path: &Path, threads: usize) -> Result<Self, AiError> {
        let model = OnnxSession::load(path, threads)?;
        let input = model.input_names().first().cloned().ok_or_else(|| {
            AiError::UnknownModel(format!("{}: the model has no input", path.display()))
        })?;
        Ok(TextDetector { model, input })
    }

    /// The text boxes of `image`, corners ordered clockwise from the top
    /// left, in `image`'s pixels (RapidOCR's `TextDetector.__call__`).
    pub fn detect(&self, image: &RgbImage) -> Result<Vec<Quad>, AiError> {
        let (width, height) = image.dimensions();
        let Some((map_width, map_height)) = network_size(width, height) else {
            return Ok(Vec::new());
        };
        let resized = image::imageops::resize(image, map_width, map_height, FilterType::Triangle);
        let input = bgr_tensor(&resized, map_width as usize);
        let outputs = self
            .model
            .run(&[(self.input.as_str(), OnnxInput::F32(input.view().into_dyn()))])?;
        let map = outputs
            .into_iter()
            .next()
            .ok_or_else(|| AiError::Internal("text detector produced no output".into()))?
            .into_dimensionality::<Ix4>()
            .map_err(|_| AiError::Internal("text detector output is not [1, 1, H, W]".into()))?;
        let probabilities = ProbabilityMap::from_output(&map)?;
        Ok(probabilities
            .boxes(width, height)
            .into_iter()
            .filter_map(|quad| clip_and_filter(quad, width, height))
            .collect())
    }
}

/// The network's input size for an image: the short side scaled to 736,
/// both sides rounded to multiples of 32 (`DetPreProcess.resize`); None when
/// one rounds to nothing.
fn network_size(width: u32, height: u32) -> Option<(u32, u32)> {
    let (w, h) = (f64::from(width), f64::from(height));
    let ratio = if w.min(h) < LIMIT_SIDE_LEN {
        LIMIT_SIDE_LEN / w.min(h)
    } else {
        1.0
    };
    let to_32 = |side: f64| (((side * ratio).trunc() / 32.0).round_ties_even() * 32.0) as u32;
    let (map_width, map_height) = (to_32(w), to_32(h));
    (map_width > 0 && map_height > 0).then_some((map_width, map_height))
}

/// The detector's text probability map, row-major.
struct ProbabilityMap {
    width: usize,
    height: usize,
    values: Vec<f32>,
}

impl ProbabilityMap {
    fn from_output(map: &Array4<f32>) -> Result<Self, AiError> {
        let (n, c, height, width) = map.dim();
        if n != 1 || c != 1 {
            return Err(AiError::Internal(format!(
                "text detector output has shape {:?}, expected [1, 1, H, W]",
                map.dim()
            )));
        }
        Ok(ProbabilityMap {
            width,
            height,
            values: map
                .as_slice()
                .map_or_else(|| map.iter().copied().collect(), <[f32]>::to_vec),
        })
    }

    /// Boxes in `dest_width` × `dest_height` pixels (`boxes_from_bitmap`).
    fn boxes(&self, dest_width: u32, dest_height: u32) -> Vec<Quad> {
        let mask = dilate_2x2(&self.threshold(), self.width, self.height);
        let mut boxes = Vec::new();
        for region in regions(&mask, self.width, self.height)
            .into_iter()
            .take(MAX_CANDIDATES)
        {
            let rect = min_area_rect(&convex_hull(region));
            if rect.short_side() < MIN_SIZE {
                continue;
            }
            let corners = rect.ordered_corners();
            if self.mean_inside(&corners) < BOX_THRESHOLD {
                continue;
            }
            let grown = rect.grown(rect.area() * UNCLIP_RATIO / rect.perimeter());
            if grown.short_side() < MIN_SIZE + 2.0 {
                continue;
            }
            let scale = |v: f32, from: usize, to: u32| {
                (f64::from(v) / from as f64 * f64::from(to))
                    .round_ties_even()
                    .clamp(0.0, f64::from(to)) as i32 as f32
            };
            boxes.push(grown.ordered_corners().map(|[x, y]| {
                [
                    scale(x, self.width, dest_width),
                    scale(y, self.height, dest_height),
                ]
            }));
        }
        boxes
    }

    fn threshold(&self) -> Vec<bool> {
        self.values.iter().map(|&p| p > PIXEL_THRESHOLD).collect()
    }

    /// The mean probability inside a convex quadrilateral, over the pixels
    /// of its integer bounding box that lie inside it (`box_score_fast`).
    fn mean_inside(&self, corners: &Quad) -> f32 {
        let (w, h) = (self.width as i64, self.height as i64);
        let xs = corners.map(|[x, _]| x);
        let ys = corners.map(|[_, y]| y);
        let bound = |vals: [f32; 4], max: bool, limit: i64| -> i64 {
            let v = if max {
                vals.iter().copied().fold(f32::MIN, f32::max).ceil()
            } else {
                vals.iter().copied().fold(f32::MAX, f32::min).floor()
            };
            (v as i64).clamp(0, limit - 1)
        };
        let (x0, x1) = (bound(xs, false, w), bound(xs, true, w));
        let (y0, y1) = (bound(ys, false, h), bound(ys, true, h));
        // RapidOCR fills the polygon at integer corners (relative to the
        // bounding box's origin, truncated).
        let polygon = corners.map(|[x, y]| {
            [
                f64::from((x - x0 as f32).trunc()),
                f64::from((y - y0 as f32).trunc()),
            ]
        });
        let (mut sum, mut count) = (0.0f64, 0u32);
        for y in y0..=y1 {
            for x in x0..=x1 {
                if inside_convex(&polygon, (x - x0) as f64, (y - y0) as f64) {
                    sum += f64::from(self.values[y as usize * self.width + x as usize]);
                    count += 1;
                }
            }
        }
        if count == 0 {
            0.0
        } else {
            (sum / f64::from(count)) as f32
        }
    }
}

/// Grows text pixels by one pixel up and left (OpenCV's `dilate` with a 2×2
/// kernel anchored at its centre): a pixel is set if it or its neighbour
/// above, to the left or above-left is.
fn dilate_2x2(mask: &[bool], width: usize, height: usize) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for y in 0..height {
        for x in 0..width {
            let at = |dx: usize, dy: usize| x >= dx && y >= dy && mask[(y - dy) * width + (x - dx)];
            out[y * width + x] = at(0, 0) || at(1, 0) || at(0, 1) || at(1, 1);
        }
    }
    out
}

/// The 8-connected regions of set pixels, in raster order of their first
/// pixel; each as its pixels' (x, y).
fn regions(mask: &[bool], width: usize, height: usize) -> Vec<Vec<(i32, i32)>> {
    let mut seen = vec![false; mask.len()];
    let mut regions = Vec::new();
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let mut pixels = Vec::new();
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % width) as i64, (i / width) as i64);
            pixels.push((x as i32, y as i32));
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as i64 || ny >= height as i64 {
                        continue;
                    }
                    let j = ny as usize * width + nx as usize;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        regions.push(pixels);
    }
    regions
}

/// The convex hull of pixel centres, counter-clockwise in image
/// coordinates (Andrew's monotone chain); collinear points dropped.
fn convex_hull(mut points: Vec<(i32, i32)>) -> Vec<[f64; 2]> {
    points.sort_unstable();
    points.dedup();
    if points.len() < 3 {
        return points
            .into_iter()
            .map(|(x, y)| [f64::from(x), f64::from(y)])
            .collect();
    }
    let cross = |o: (i32, i32), a: (i32, i32), b: (i32, i32)| {
        i64::from(a.0 - o.0) * i64::from(b.1 - o.1) - i64::from(a.1 - o.1) * i64::from(b.0 - o.0)
    };
    // Lower then upper half; each drops its last point, the other's first.
    let half = |ordered: &mut dyn Iterator<Item = (i32, i32)>| {
        let mut chain: Vec<(i32, i32)> = Vec::new();
        for p in ordered {
            while chain.len() >= 2 && cross(chain[chain.len() - 2], chain[chain.len() - 1], p) <= 0
            {
                chain.pop();
            }
            chain.push(p);
        }
        chain.pop();
        chain
    };
    let mut hull = half(&mut points.iter().copied());
    hull.extend(half(&mut points.iter().rev().copied()));
    hull.into_iter()
        .map(|(x, y)| [f64::from(x), f64::from(y)])
        .collect()
}

/// A rotated rectangle: centre, unit direction of its first side, and side
/// lengths along that direction and across it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RotatedRect {
    center: [f64; 2],
    direction: [f64; 2],
    length: f64,
    breadth: f64,
}

impl RotatedRect {
    fn short_side(&self) -> f32 {
        self.length.min(self.breadth) as f32
    }

    fn area(&self) -> f32 {
        (self.length * self.breadth) as f32
    }

    fn perimeter(&self) -> f32 {
        (2.0 * (self.length + self.breadth)) as f32
    }

    /// The rectangle grown by `distance` on every side.
    fn grown(&self, distance: f32) -> RotatedRect {
        let d = 2.0 * f64::from(distance);
        RotatedRect {
            length: self.length + d,
            breadth: self.breadth + d,
            ..*self
        }
    }

    /// Corners as RapidOCR's `get_mini_boxes` orders them: of the two
    /// leftmost, the upper is first and the lower last; of the two
    /// rightmost, the upper second and the lower third.
    fn ordered_corners(&self) -> Quad {
        let [cx, cy] = self.center;
        let [ux, uy] = self.direction;
        let (vx, vy) = (-uy, ux);
        let (hl, hb) = (self.length / 2.0, self.breadth / 2.0);
        let mut points: Vec<[f32; 2]> = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
            .iter()
            .map(|&(a, b)| {
                [
                    (cx + a * hl * ux + b * hb * vx) as f32,
                    (cy + a * hl * uy + b * hb * vy) as f32,
                ]
            })
            .collect();
        points.sort_by(|p, q| p[0].total_cmp(&q[0]));
        let (top_left, bottom_left) = if points[1][1] > points[0][1] {
            (points[0], points[1])
        } else {
            (points[1], points[0])
        };
        let (top_right, bottom_right) = if points[3][1] > points[2][1] {
            (points[2], points[3])
        } else {
            (points[3], points[2])
        };
        [top_left, top_right, bottom_right, bottom_left]
    }
}

/// The smallest-area rectangle around a convex hull: one of its sides lies
/// on a hull edge, so every edge direction is tried.
fn min_area_rect(hull: &[[f64; 2]]) -> RotatedRect {
    let directions: Vec<[f64; 2]> = match hull.len() {
        0 => {
            return RotatedRect {
                center: [0.0, 0.0],
                direction: [1.0, 0.0],
                length: 0.0,
                breadth: 0.0,
            }
        }
        1 => vec![[1.0, 0.0]],
        n => (0..n)
            .filter_map(|i| {
                let (a, b) = (hull[i], hull[(i + 1) % n]);
                let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
                let norm = dx.hypot(dy);
                (norm > 0.0).then(|| [dx / norm, dy / norm])
            })
            .collect(),
    };
    let mut best: Option<(f64, RotatedRect)> = None;
    for [ux, uy] in directions {
        let (mut min_u, mut max_u, mut min_v, mut max_v) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &[x, y] in hull {
            let (u, v) = (x * ux + y * uy, -x * uy + y * ux);
            min_u = min_u.min(u);
            max_u = max_u.max(u);
            min_v = min_v.min(v);
            max_v = max_v.max(v);
        }
        let area = (max_u - min_u) * (max_v - min_v);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (cu, cv) = ((min_u + max_u) / 2.0, (min_v + max_v) / 2.0);
            best = Some((
                area,
                RotatedRect {
                    center: [cu * ux - cv * uy, cu * uy + cv * ux],
                    direction: [ux, uy],
                    length: max_u - min_u,
                    breadth: max_v - min_v,
                },
            ));
        }
    }
    best.expect("at least one direction").1
}

/// Whether (x, y) lies inside or on a convex polygon of either winding.
fn inside_convex(polygon: &[[f64; 2]; 4], x: f64, y: f64) -> bool {
    let (mut positive, mut negative) = (false, false);
    for i in 0..4 {
        let [ax, ay] = polygon[i];
        let [bx, by] = polygon[(i + 1) % 4];
        let cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax);
        positive |= cross > 1e-9;
        negative |= cross < -1e-9;
    }
    !(positive && negative)
}

/// RapidOCR's `filter_tag_det_res`: corners reordered clockwise from the
/// top left, clipped to the image (truncated to whole pixels), and boxes of
/// 3 pixels or less on a side dropped.
fn clip_and_filter(quad: Quad, width: u32, height: u32) -> Option<Quad> {
    let ordered = order_clockwise(quad).map(|[x, y]| {
        [
            x.clamp(0.0, (width - 1) as f32).trunc(),
            y.clamp(0.0, (height - 1) as f32).trunc(),
        ]
    });
    let side = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).hypot(a[1] - b[1]).trunc();
    (side(ordered[0], ordered[1]) > 3.0 && side(ordered[0], ordered[3]) > 3.0).then_some(ordered)
}

/// imutils' `order_points`: the two leftmost points are the left side (upper
/// first), the two rightmost the right side.
fn order_clockwise(quad: Quad) -> Quad {
    let mut points = quad;
    points.sort_by(|p, q| p[0].total_cmp(&q[0]));
    let by_y = |a: [f32; 2], b: [f32; 2]| if b[1] < a[1] { (b, a) } else { (a, b) };
    let (top_left, bottom_left) = by_y(points[0], points[1]);
    let (top_right, bottom_right) = by_y(points[2], points[3]);
    [top_left, top_right, bottom_right, bottom_left]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_size_scales_the_short_side_to_736_in_multiples_of_32() {
        assert_eq!(network_size(480, 160), Some((2208, 736)));
        assert_eq!(network_size(1000, 800), Some((992, 800)));
        // 2000 / 32 = 62.5 rounds half to even, as Python rounds.
        assert_eq!(network_size(2000, 1000), Some((1984, 992)));
    }

    #[test]
    fn min_area_rect_of_a_horizontal_bar_spans_its_pixel_centres() {
        let pixels: Vec<(i32, i32)> = (10..=109)
            .flat_map(|x| (20..=29).map(move |y| (x, y)))
            .collect();
        let rect = min_area_rect(&convex_hull(pixels));
        assert!((rect.area() - 99.0 * 9.0).abs() < 1e-3);
        assert_eq!(
            rect.ordered_corners(),
            [[10.0, 20.0], [109.0, 20.0], [109.0, 29.0], [10.0, 29.0]]
        );
        let grown = rect.grown(2.0).ordered_corners();
        assert_eq!(grown[0], [8.0, 18.0]);
        assert_eq!(grown[2], [111.0, 31.0]);
    }

    #[test]
    fn min_area_rect_follows_a_slanted_region() {
        // A 60×8 bar rotated by 30 degrees, rasterised.
        let (c, s) = (30f64.to_radians().cos(), 30f64.to_radians().sin());
        let mut pixels = Vec::new();
        for y in 0..100 {
            for x in 0..100 {
                let (dx, dy) = (f64::from(x) - 50.0, f64::from(y) - 50.0);
                let (u, v) = (dx * c + dy * s, -dx * s + dy * c);
                if u.abs() <= 30.0 && v.abs() <= 4.0 {
                    pixels.push((x, y));
                }
            }
        }
        let rect = min_area_rect(&convex_hull(pixels));
        let angle = rect.direction[1].atan2(rect.direction[0]).to_degrees();
        let angle = angle.rem_euclid(180.0);
        assert!((angle - 30.0).abs() < 2.0, "angle {angle}");
        assert!((rect.length.max(rect.breadth) - 60.0).abs() < 2.0);
        assert!((rect.length.min(rect.breadth) - 8.0).abs() < 2.0);
        let corners = rect.ordered_corners();
        assert!(corners[0][0] < corners[1][0] && corners[3][1] > corners[0][1]);
    }

    #[test]
    fn regions_are_8_connected_and_dilation_reaches_up_and_left() {
        #[rustfmt::skip]
        let mask = [
            true,  false, false, false,
            false, true,  false, false,
            false, false, false, true,
        ];
        let found = regions(&mask, 4, 3);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].len(), 2);
        let dilated = dilate_2x2(&mask, 4, 3);
        assert!(dilated[1] && dilated[4] && dilated[5] && !dilated[3]);
    }

    #[test]
    fn score_is_the_mean_inside_the_box() {
        let mut values = vec![0.0f32; 10 * 10];
        for y in 2..=5 {
            for x in 2..=7 {
                values[y * 10 + x] = 1.0;
            }
        }
        let map = ProbabilityMap {
            width: 10,
            height: 10,
            values,
        };
        assert_eq!(
            map.mean_inside(&[[2.0, 2.0], [7.0, 2.0], [7.0, 5.0], [2.0, 5.0]]),
            1.0
        );
        let wider = map.mean_inside(&[[2.0, 2.0], [9.0, 2.0], [9.0, 5.0], [2.0, 5.0]]);
        assert!((wider - 0.75).abs() < 1e-6);
    }
}
