//! A libavcodec bitstream filter, owned. ffmpeg-next has no wrapper for the
//! `av_bsf_*` API, so this is the one FFI edge for it.

use std::ffi::CString;
use std::ptr;

use ff::ffi;
use ff::packet::Mut;
use ffmpeg_next as ff;

use super::VideoError;

pub struct BitstreamFilter {
    ctx: *mut ffi::AVBSFContext,
}

// SAFETY: the context is owned exclusively by this value and used through
// `&mut self` only; libavcodec contexts have no thread affinity.
unsafe impl Send for BitstreamFilter {}

impl BitstreamFilter {
    /// Opens filter `name` for a stream with `parameters` and `time_base`.
    pub fn new(
        name: &str,
        parameters: &ff::codec::Parameters,
        time_base: ff::Rational,
    ) -> Result<Self, VideoError> {
        let cname = CString::new(name).expect("filter names have no NUL");
        let err = |rc: i32| VideoError::Internal {
            stage: "bitstream filter",
            source: ff::Error::from(rc),
        };
        // SAFETY: plain libavcodec calls on pointers we own; `ctx` is freed by
        // `Drop` (or here on failure), and `par_in` is a valid, allocated
        // AVCodecParameters owned by the context that we copy into.
        unsafe {
            let filter = ffi::av_bsf_get_by_name(cname.as_ptr());
            if filter.is_null() {
                return Err(err(ffi::AVERROR_BSF_NOT_FOUND));
            }
            let mut ctx = ptr::null_mut();
            let rc = ffi::av_bsf_alloc(filter, &mut ctx);
            if rc < 0 {
                return Err(err(rc));
            }
            let this = BitstreamFilter { ctx };
            let rc = ffi::avcodec_parameters_copy((*ctx).par_in, parameters.as_ptr());
            if rc < 0 {
                return Err(err(rc));
            }
            (*ctx).time_base_in = time_base.into();
            let rc = ffi::av_bsf_init(ctx);
            if rc < 0 {
                return Err(err(rc));
            }
            Ok(this)
        }
    }

    /// Filters one packet; returns the packets it produced (possibly none).
    /// A packet the filter rejects is dropped, as FFmpeg drops what it cannot fix.
    pub fn filter(&mut self, mut packet: ff::Packet) -> Vec<ff::Packet> {
        let mut out = Vec::new();
        // SAFETY: `self.ctx` is an initialised filter context; send_packet takes
        // ownership of the packet's reference, receive_packet fills our packets.
        unsafe {
            if ffi::av_bsf_send_packet(self.ctx, packet.as_mut_ptr()) < 0 {
                return out;
            }
            loop {
                let mut p = ff::Packet::empty();
                if ffi::av_bsf_receive_packet(self.ctx, p.as_mut_ptr()) < 0 {
                    break;
                }
                out.push(p);
            }
        }
        out
    }

    /// The stream's parameters after filtering (e.g. with new extradata).
    pub fn output_parameters(&self) -> ff::codec::Parameters {
        let mut params = ff::codec::Parameters::new();
        // SAFETY: both are valid AVCodecParameters; the copy is owned by `params`.
        unsafe {
            ffi::avcodec_parameters_copy(params.as_mut_ptr(), (*self.ctx).par_out);
        }
        params
    }
}

impl Drop for BitstreamFilter {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from av_bsf_alloc and is freed exactly once here.
        unsafe { ffi::av_bsf_free(&mut self.ctx) };
    }
}
