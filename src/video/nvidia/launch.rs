//! The shape of a ladder launch of the resize kernels: which renditions go
//! in one launch with which filter, the grid and block
//! `resize::scale_ladder` launches and the parameters it pushes, as
//! plain data with no CUDA types, so that they build without the `nvidia`
//! feature. The CPU run of the kernels (tests/kernels_cpu.rs) launches this
//! very grid, and the ABI check (tests/kernel_abi.rs) compares these
//! parameters with the ones NVRTC's cubin declares.

use std::mem::{align_of, size_of};

use super::ladder::{LpwLadder, MAX_RENDITIONS};
use super::reference::Filter;

/// Threads per block: 32 x 8 output samples, a warp per row segment.
pub const BLOCK: (u32, u32) = (32, 8);

/// A launch's grid and block sizes, in CUDA's x, y, z order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchGeometry {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// One launch writes every plane of `ladder`: x and y cover the largest
/// plane (threads past a smaller plane's edge return at the kernels' bounds
/// check) and `blockIdx.z` is rendition × 2 + plane (0 luma, 1 chroma).
pub fn ladder_launch_geometry(ladder: &LpwLadder) -> LaunchGeometry {
    let count = ladder.count.clamp(0, MAX_RENDITIONS as i32) as usize;
    let planes = ladder.luma[..count].iter().chain(&ladder.chroma[..count]);
    let (width, height) = planes.fold((0u32, 0u32), |(w, h), plane| {
        (
            w.max(plane.width.max(0) as u32),
            h.max(plane.height.max(0) as u32),
        )
    });
    LaunchGeometry {
        grid: (
            width.div_ceil(BLOCK.0),
            height.div_ceil(BLOCK.1),
            2 * count as u32,
        ),
        block: (BLOCK.0, BLOCK.1, 1),
    }
}

/// One kernel parameter as the launcher pushes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelParam {
    pub name: &'static str,
    pub size: usize,
    pub align: usize,
}

impl KernelParam {
    const fn of<T>(name: &'static str) -> Self {
        KernelParam {
            name,
            size: size_of::<T>(),
            align: align_of::<T>(),
        }
    }
}

/// The resize kernels' parameters in the order `scale_ladder` pushes them:
/// a source plane is a `CUdeviceptr` (what cudarc pushes for a
/// `&CudaSlice`), pitches and sizes are `i32`, the ladder goes by value.
pub const LADDER_KERNEL_PARAMS: [KernelParam; 7] = [
    KernelParam::of::<u64>("src_y"),
    KernelParam::of::<i32>("src_y_pitch"),
    KernelParam::of::<u64>("src_uv"),
    KernelParam::of::<i32>("src_uv_pitch"),
    KernelParam::of::<i32>("sw"),
    KernelParam::of::<i32>("sh"),
    KernelParam::of::<LpwLadder>("ladder"),
];

/// Where each parameter lands in the kernel's parameter buffer, as
/// (offset, size), and the buffer's size: every parameter at the next
/// multiple of its alignment, as cuLaunchKernel expects and as the CUDA
/// compiler lays out a kernel's parameters.
pub fn param_layout(params: &[KernelParam]) -> (Vec<(usize, usize)>, usize) {
    let mut end = 0usize;
    let layout = params
        .iter()
        .map(|param| {
            let offset = end.next_multiple_of(param.align);
            end = offset + param.size;
            (offset, param.size)
        })
        .collect();
    (layout, end)
}

/// The filter a rendition of `src` at `out` is scaled with: area averaging
/// when it shrinks in either direction, bilinear otherwise.
pub fn rendition_filter(src: (u32, u32), out: (u32, u32)) -> Filter {
    if out.0 < src.0 || out.1 < src.1 {
        Filter::Area
    } else {
        Filter::Bilinear
    }
}

/// One launch of a ladder: its filter and the renditions it writes, as
/// indices into the ladder's sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedLaunch {
    pub filter: Filter,
    pub renditions: Vec<usize>,
}

/// The launches that scale a `src` frame into every size of `sizes`: the
/// renditions of one filter together, up to [`MAX_RENDITIONS`] a launch, in
/// their order. A usual ladder only shrinks, so it is one launch.
pub fn plan_ladder(src: (u32, u32), sizes: &[(u32, u32)]) -> Vec<PlannedLaunch> {
    [Filter::Area, Filter::Bilinear]
        .into_iter()
        .flat_map(|filter| {
            let renditions: Vec<usize> = (0..sizes.len())
                .filter(|&i| rendition_filter(src, sizes[i]) == filter)
                .collect();
            renditions
                .chunks(MAX_RENDITIONS)
                .map(|chunk| PlannedLaunch {
                    filter,
                    renditions: chunk.to_vec(),
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::nvidia::ladder::LpwPlane;

    #[test]
    fn a_ladder_is_planned_in_launches_of_one_filter_and_at_most_eight_renditions() {
        let src = (1920, 1080);
        let usual = [(1280, 720), (854, 480), (640, 360), (426, 240)];
        assert_eq!(
            plan_ladder(src, &usual),
            [PlannedLaunch {
                filter: Filter::Area,
                renditions: vec![0, 1, 2, 3]
            }]
        );
        // The source's own size and an upscale go bilinear; a rendition
        // narrower but taller still shrinks (area); order is kept.
        let mixed = [(1920, 1080), (640, 360), (3840, 2160), (1280, 1440)];
        assert_eq!(
            plan_ladder(src, &mixed),
            [
                PlannedLaunch {
                    filter: Filter::Area,
                    renditions: vec![1, 3]
                },
                PlannedLaunch {
                    filter: Filter::Bilinear,
                    renditions: vec![0, 2]
                },
            ]
        );
        let ten = [(640, 360); 10];
        let plan = plan_ladder(src, &ten);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].renditions, (0..8).collect::<Vec<_>>());
        assert_eq!(plan[1].renditions, [8, 9]);
        assert!(plan_ladder(src, &[]).is_empty());
        // Every rendition exactly once.
        for sizes in [&usual[..], &mixed, &ten] {
            let mut all: Vec<usize> = plan_ladder(src, sizes)
                .into_iter()
                .flat_map(|l| l.renditions)
                .collect();
            all.sort_unstable();
            assert_eq!(all, (0..sizes.len()).collect::<Vec<_>>());
        }
    }

    fn ladder(sizes: &[(i32, i32)]) -> LpwLadder {
        let mut ladder = LpwLadder {
            count: sizes.len() as i32,
            ..Default::default()
        };
        for (i, &(width, height)) in sizes.iter().enumerate() {
            ladder.luma[i] = LpwPlane {
                ptr: 0,
                pitch: width,
                width,
                height,
            };
            ladder.chroma[i] = LpwPlane {
                ptr: 0,
                pitch: width,
                width: width / 2,
                height: height / 2,
            };
        }
        ladder
    }

    #[test]
    fn the_grid_covers_the_largest_plane_and_every_plane_of_each_rendition() {
        let geometry = ladder_launch_geometry(&ladder(&[(1280, 720), (854, 480), (426, 240)]));
        assert_eq!(geometry.grid, (40, 90, 6));
        assert_eq!(geometry.block, (32, 8, 1));
        // Partial blocks at the edges; a 1x1 rendition still gets a block.
        assert_eq!(
            ladder_launch_geometry(&ladder(&[(33, 9), (1, 1)])).grid,
            (2, 2, 4)
        );
        assert_eq!(ladder_launch_geometry(&ladder(&[])).grid, (0, 0, 0));
    }

    #[test]
    fn parameters_are_laid_out_at_their_alignment() {
        let (layout, size) = param_layout(&LADDER_KERNEL_PARAMS);
        assert_eq!(
            layout,
            [
                (0, 8),
                (8, 4),
                (16, 8),
                (24, 4),
                (28, 4),
                (32, 4),
                (40, 392)
            ]
        );
        assert_eq!(size, 432);
    }
}
