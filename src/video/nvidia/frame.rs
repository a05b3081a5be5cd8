//! Pictures as the NVIDIA backend holds them: 4:2:0 frames in host or device
//! memory, the copies between them, and a decoded or scaled picture tagged
//! with the GPU it lives on.
//!
//! Every copy is queued on the stream it is given: the decoder's or the
//! rendition's own, so it is ordered with that session's kernels and copies
//! and waits for no other session's.

use std::ptr;
use std::sync::Arc;

use cudarc::driver::{sys, CudaSlice, CudaStream, DevicePtr, DriverError};
use ffmpeg_next as ff;

use super::device::GpuDevice;
use super::error::{failed, GpuError};
use super::reference::Depth;
use crate::video::VideoError;

/// Rows of device planes start at multiples of this many bytes, as
/// cuMemAllocPitch would place them, so warps read whole cache lines.
const PITCH_ALIGN: usize = 256;

/// The frame layouts the kernels scale: 4:2:0 with a luma plane and an
/// interleaved chroma plane at half size in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// 8-bit samples.
    Nv12,
    /// 10-bit samples in the high bits of 16-bit little-endian words.
    P010,
}

impl PixelFormat {
    pub fn depth(self) -> Depth {
        match self {
            PixelFormat::Nv12 => Depth::Eight,
            PixelFormat::P010 => Depth::Ten,
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            PixelFormat::Nv12 => 1,
            PixelFormat::P010 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Nv12 => "nv12",
            PixelFormat::P010 => "p010",
        }
    }

    /// Bytes of picture (padding excluded) in a `width` x `height` frame.
    pub fn frame_bytes(self, width: usize, height: usize) -> usize {
        (width * height + (width / 2) * (height / 2) * 2) * self.bytes_per_sample()
    }
}

/// Checks a frame size the kernels can take: even (4:2:0 chroma), and small
/// enough for their `int` arithmetic.
fn check_size(width: usize, height: usize) -> Result<(), GpuError> {
    if width < 2
        || height < 2
        || width % 2 != 0
        || height % 2 != 0
        || width > 16384
        || height > 16384
    {
        return Err(GpuError::Invalid(format!(
            "{width}x{height}: 4:2:0 frames need even sizes from 2x2 to 16384x16384"
        )));
    }
    Ok(())
}

/// Whether a plane of `len` bytes holds `rows` rows of `row` bytes, `pitch`
/// bytes apart.
fn plane_fits(len: usize, pitch: usize, rows: usize, row: usize) -> bool {
    pitch >= row && len >= pitch * (rows - 1) + row
}

/// A frame in host memory: `luma` rows then `chroma` rows (interleaved U/V),
/// each plane's rows `*_pitch` bytes apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFrame {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    pub luma: Vec<u8>,
    pub luma_pitch: usize,
    pub chroma: Vec<u8>,
    pub chroma_pitch: usize,
}

impl HostFrame {
    /// A black-zero frame with rows packed tightly.
    pub fn new(format: PixelFormat, width: usize, height: usize) -> Self {
        let pitch = width * format.bytes_per_sample();
        HostFrame {
            format,
            width,
            height,
            luma: vec![0; pitch * height],
            luma_pitch: pitch,
            chroma: vec![0; pitch * (height / 2)],
            chroma_pitch: pitch,
        }
    }

    fn check(&self) -> Result<(), GpuError> {
        check_size(self.width, self.height)?;
        let row = self.width * self.format.bytes_per_sample();
        if !plane_fits(self.luma.len(), self.luma_pitch, self.height, row)
            || !plane_fits(self.chroma.len(), self.chroma_pitch, self.height / 2, row)
        {
            return Err(GpuError::Invalid(format!(
                "{}x{} {} frame: planes or pitches too small",
                self.width,
                self.height,
                self.format.name()
            )));
        }
        Ok(())
    }
}

/// A frame in device memory, from [`DeviceFrame::alloc`] or
/// [`DeviceFrame::upload`].
#[derive(Debug)]
pub struct DeviceFrame {
    pub format: PixelFormat,
    pub width: usize,
    pub height: usize,
    luma: CudaSlice<u8>,
    luma_pitch: usize,
    chroma: CudaSlice<u8>,
    chroma_pitch: usize,
}

impl DeviceFrame {
    /// A device frame of `width` x `height` on `stream`'s device, rows
    /// aligned to 256 bytes, its contents undefined: every producer (the
    /// decoder's copy-out, the resize kernels, an upload) overwrites the whole
    /// picture, so zeroing it first would only cost a memset per plane per
    /// frame. Freed memory is reused from the device's pool (see
    /// `device::keep_freed_memory_pooled`), so this is cheap per frame.
    pub fn alloc(
        stream: &Arc<CudaStream>,
        format: PixelFormat,
        width: usize,
        height: usize,
    ) -> Result<Self, GpuError> {
        check_size(width, height)?;
        let pitch = (width * format.bytes_per_sample()).next_multiple_of(PITCH_ALIGN);
        // SAFETY: any byte is a valid `u8`; the picture is written before it
        // is read (see above), and the row padding is never shown.
        let luma = unsafe { stream.alloc::<u8>(pitch * height) }.map_err(failed("cuMemAlloc"))?;
        // SAFETY: as for the luma plane.
        let chroma =
            unsafe { stream.alloc::<u8>(pitch * (height / 2)) }.map_err(failed("cuMemAlloc"))?;
        Ok(DeviceFrame {
            format,
            width,
            height,
            luma,
            luma_pitch: pitch,
            chroma,
            chroma_pitch: pitch,
        })
    }

    /// Copies a host frame to a new device frame.
    pub fn upload(stream: &Arc<CudaStream>, frame: &HostFrame) -> Result<Self, GpuError> {
        frame.check()?;
        let mut device = Self::alloc(stream, frame.format, frame.width, frame.height)?;
        let row = frame.width * frame.format.bytes_per_sample();
        let planes = [
            (
                &frame.luma,
                frame.luma_pitch,
                frame.height,
                &mut device.luma,
            ),
            (
                &frame.chroma,
                frame.chroma_pitch,
                frame.height / 2,
                &mut device.chroma,
            ),
        ];
        for (host, host_pitch, rows, dst) in planes {
            // Repack the rows at the device pitch, then one copy per plane.
            let pitch = dst.len() / rows;
            let mut staging = vec![0u8; dst.len()];
            for y in 0..rows {
                staging[y * pitch..y * pitch + row]
                    .copy_from_slice(&host[y * host_pitch..y * host_pitch + row]);
            }
            stream
                .memcpy_htod(&staging, dst)
                .map_err(failed("cuMemcpyHtoDAsync"))?;
        }
        Ok(device)
    }

    /// Copies the frame back to the host, at the device's pitches, and waits
    /// for everything queued on `stream`.
    pub fn download(&self, stream: &Arc<CudaStream>) -> Result<HostFrame, GpuError> {
        let luma = stream
            .clone_dtoh(&self.luma)
            .map_err(failed("cuMemcpyDtoHAsync"))?;
        let chroma = stream
            .clone_dtoh(&self.chroma)
            .map_err(failed("cuMemcpyDtoHAsync"))?;
        stream
            .synchronize()
            .map_err(failed("cuStreamSynchronize"))?;
        Ok(HostFrame {
            format: self.format,
            width: self.width,
            height: self.height,
            luma,
            luma_pitch: self.luma_pitch,
            chroma,
            chroma_pitch: self.chroma_pitch,
        })
    }

    /// The luma plane: `height` rows, [`Self::luma_pitch`] bytes apart.
    pub fn luma(&self) -> &CudaSlice<u8> {
        &self.luma
    }

    pub fn luma_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.luma
    }

    pub fn luma_pitch(&self) -> usize {
        self.luma_pitch
    }

    /// The interleaved U/V plane: `height / 2` rows, [`Self::chroma_pitch`]
    /// bytes apart.
    pub fn chroma(&self) -> &CudaSlice<u8> {
        &self.chroma
    }

    pub fn chroma_mut(&mut self) -> &mut CudaSlice<u8> {
        &mut self.chroma
    }

    pub fn chroma_pitch(&self) -> usize {
        self.chroma_pitch
    }

    /// Both planes at once, for a kernel that writes them together.
    pub fn planes_mut(&mut self) -> (&mut CudaSlice<u8>, &mut CudaSlice<u8>) {
        (&mut self.luma, &mut self.chroma)
    }

    /// Bytes of picture in the frame (what a resize reads or writes of it).
    pub fn picture_bytes(&self) -> usize {
        self.format.frame_bytes(self.width, self.height)
    }

    /// Whether both planes hold the frame's rows at their pitches.
    pub fn planes_fit(&self) -> bool {
        let row = self.width * self.format.bytes_per_sample();
        plane_fits(self.luma.len(), self.luma_pitch, self.height, row)
            && plane_fits(self.chroma.len(), self.chroma_pitch, self.height / 2, row)
    }

    /// Queues, on `stream`, copies of the picture into `dst` as NVENC reads
    /// an NV12 buffer: the luma rows, then the chroma rows from
    /// `pitch * height`. Fails with `CUDA_ERROR_INVALID_VALUE`, copying
    /// nothing, when either side is too small for the picture.
    pub fn copy_to_pitched(
        &self,
        stream: &CudaStream,
        dst: &PitchedBuffer,
    ) -> Result<(), DriverError> {
        let (row, height) = (self.width * self.format.bytes_per_sample(), self.height);
        if !self.planes_fit() || dst.row_bytes < row || dst.rows < height + height / 2 {
            return Err(DriverError(sys::CUresult::CUDA_ERROR_INVALID_VALUE));
        }
        let (luma, _luma_read) = self.luma.device_ptr(stream);
        let (chroma, _chroma_read) = self.chroma.device_ptr(stream);
        let chroma_offset = (dst.pitch * height) as sys::CUdeviceptr;
        let planes = [
            (luma, self.luma_pitch, dst.ptr, height),
            (
                chroma,
                self.chroma_pitch,
                dst.ptr + chroma_offset,
                height / 2,
            ),
        ];
        for (src, src_pitch, dst_ptr, rows) in planes {
            // SAFETY: both regions are device memory of the stream's context
            // large enough for `rows` rows of `row` bytes at their pitches
            // (checked above); the caller keeps the context current, and
            // `self` and `dst` stay allocated until the stream has run the
            // copy (the frame's planes are freed on this same stream).
            unsafe { copy_device_2d(stream, (src, src_pitch), (dst_ptr, dst.pitch), row, rows) }?;
        }
        Ok(())
    }
}

/// A decoded or scaled picture in a GPU's memory, with the GPU it lives on
/// and the stream that wrote it.
///
/// A consumer reads the frame on `stream`, or waits for `stream` first:
/// the picture may still be being written when it is handed on. The ladder
/// stage hands on its renditions right after queuing their launch (every
/// consumer of them reads on the ladder's stream: NVENC's upload, the
/// download). The decoder and a rendition's own scaler do wait for their
/// streams before handing a frame on: the decoder must before unmapping
/// NVDEC's surface, and the scaler so that its source may go.
///
/// The planes are freed in the order of the stream that allocated them when
/// the frame is dropped, so a consumer reading on another stream makes sure
/// its reads are done before letting go of the frame: a rendition's scaler
/// waits for its stream; the ladder stage keeps the decoded frame until an
/// event after its launch is done (`in_flight`).
#[derive(Debug)]
pub struct GpuFrame {
    pub device: Arc<GpuDevice>,
    pub frame: DeviceFrame,
    pub stream: Arc<CudaStream>,
}

/// Device memory from cuMemAllocPitch: `rows` rows of at least `row_bytes`
/// bytes, `pitch` bytes apart, freed on drop. The context it was allocated
/// in must be current wherever it is allocated and dropped.
#[derive(Debug)]
pub struct PitchedBuffer {
    ptr: sys::CUdeviceptr,
    pitch: usize,
    row_bytes: usize,
    rows: usize,
}

impl PitchedBuffer {
    /// Allocates `rows` rows of `row_bytes` bytes, pitched as the Video Codec
    /// SDK's samples allocate (16-byte elements).
    pub fn alloc(row_bytes: usize, rows: usize) -> Result<Self, DriverError> {
        let (mut ptr, mut pitch) = (0, 0);
        // SAFETY: valid out-pointers; the caller's context is current.
        unsafe { sys::cuMemAllocPitch_v2(&mut ptr, &mut pitch, row_bytes, rows, 16) }.result()?;
        Ok(PitchedBuffer {
            ptr,
            pitch,
            row_bytes,
            rows,
        })
    }

    /// The device address of the first row.
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    pub fn pitch(&self) -> usize {
        self.pitch
    }
}

impl Drop for PitchedBuffer {
    fn drop(&mut self) {
        // SAFETY: memory from cuMemAllocPitch in the context that is current
        // (the owner's contract), freed once.
        let result = unsafe { sys::cuMemFree_v2(self.ptr) };
        if result != sys::CUresult::CUDA_SUCCESS {
            tracing::warn!(?result, "cuMemFree of a pitched device buffer failed");
        }
    }
}

/// Queues a copy of `rows` rows of `width` bytes from one pitched device
/// buffer to another on `stream` (NVDEC's surface to a frame, a frame to
/// NVENC's input buffer).
///
/// # Safety
/// `src` and `dst` must be device memory of `stream`'s context, each holding
/// at least `rows` rows of `width` bytes at its pitch, and stay allocated
/// until the stream has run the copy; the context must be current.
pub unsafe fn copy_device_2d(
    stream: &CudaStream,
    (src, src_pitch): (sys::CUdeviceptr, usize),
    (dst, dst_pitch): (sys::CUdeviceptr, usize),
    width: usize,
    rows: usize,
) -> Result<(), DriverError> {
    let copy = sys::CUDA_MEMCPY2D {
        srcXInBytes: 0,
        srcY: 0,
        srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        srcHost: ptr::null(),
        srcDevice: src,
        srcArray: ptr::null_mut(),
        srcPitch: src_pitch,
        dstXInBytes: 0,
        dstY: 0,
        dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
        dstHost: ptr::null_mut(),
        dstDevice: dst,
        dstArray: ptr::null_mut(),
        dstPitch: dst_pitch,
        WidthInBytes: width,
        Height: rows,
    };
    // SAFETY: the caller's contract: both ranges are large enough device
    // memory of this stream's context, which is current.
    unsafe { sys::cuMemcpy2DAsync_v2(&copy, stream.cu_stream()) }.result()
}

/// NV12 (interleaved chroma) to planar YUV 4:2:0, the layout libx264 and
/// libx265 are opened with.
pub fn nv12_to_yuv420p(host: &HostFrame) -> Result<ff::frame::Video, VideoError> {
    if host.format != PixelFormat::Nv12 {
        return Err(VideoError::Gpu {
            stage: "download",
            message: format!("{} frames have no CPU encoder path", host.format.name()),
        });
    }
    let (width, height) = (host.width, host.height);
    let mut out = ff::frame::Video::new(ff::format::Pixel::YUV420P, width as u32, height as u32);
    let luma_stride = out.stride(0);
    let luma = out.data_mut(0);
    for y in 0..height {
        luma[y * luma_stride..y * luma_stride + width]
            .copy_from_slice(&host.luma[y * host.luma_pitch..y * host.luma_pitch + width]);
    }
    // U is every even byte of an NV12 chroma row, V every odd one. Each
    // plane is borrowed once: `data_mut` looks the plane up on every call.
    for (plane, offset) in [(1, 0), (2, 1)] {
        let stride = out.stride(plane);
        let dst = out.data_mut(plane);
        for y in 0..height / 2 {
            let row = &host.chroma[y * host.chroma_pitch..y * host.chroma_pitch + width];
            let dst_row = &mut dst[y * stride..y * stride + width / 2];
            for (d, s) in dst_row.iter_mut().zip(row.iter().skip(offset).step_by(2)) {
                *d = *s;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_and_bytes() {
        assert!(check_size(1920, 1080).is_ok());
        assert!(check_size(853, 480).is_err());
        assert!(check_size(0, 2).is_err());
        assert_eq!(
            PixelFormat::Nv12.frame_bytes(1920, 1080),
            1920 * 1080 * 3 / 2
        );
        assert_eq!(PixelFormat::P010.frame_bytes(4, 2), 24);
        let mut frame = HostFrame::new(PixelFormat::P010, 4, 2);
        assert!(frame.check().is_ok());
        frame.chroma.pop();
        assert!(frame.check().is_err());
    }

    #[test]
    fn nv12_download_becomes_planar_yuv420p() {
        let (w, h) = (6, 4);
        let mut host = HostFrame::new(PixelFormat::Nv12, w, h);
        // Pitches wider than the rows, as device frames have.
        host.luma_pitch = 8;
        host.chroma_pitch = 8;
        host.luma = (0..8 * h).map(|i| i as u8).collect();
        host.chroma = (0..8 * h / 2).map(|i| 100 + i as u8).collect();
        let out = nv12_to_yuv420p(&host).unwrap();
        assert_eq!((out.width(), out.height()), (6, 4));
        assert_eq!(out.format(), ff::format::Pixel::YUV420P);
        for y in 0..h {
            for x in 0..w {
                assert_eq!(out.data(0)[y * out.stride(0) + x], (y * 8 + x) as u8);
            }
        }
        for y in 0..h / 2 {
            for x in 0..w / 2 {
                assert_eq!(
                    out.data(1)[y * out.stride(1) + x],
                    100 + (y * 8 + 2 * x) as u8
                );
                assert_eq!(
                    out.data(2)[y * out.stride(2) + x],
                    100 + (y * 8 + 2 * x + 1) as u8
                );
            }
        }
        let p010 = HostFrame::new(PixelFormat::P010, 4, 4);
        assert!(nv12_to_yuv420p(&p010).is_err());
    }
}
