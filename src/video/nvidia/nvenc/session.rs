//! One rendition's encode session and the buffers it encodes through: each
//! slot is an NV12 device buffer of the session's own, registered with
//! NVENC, paired with the bitstream buffer its frame's output goes to.
//! Normally one slot serves every frame; if the driver ever holds a frame
//! back (`NV_ENC_ERR_NEED_MORE_INPUT`) further slots are added so the held
//! frame's input stays intact until its output is read.

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::CudaStream;
use nvidia_video_codec_sdk::sys::nvEncodeAPI as nv;

use super::super::device::GpuDevice;
use super::super::frame::{DeviceFrame, PitchedBuffer};
use super::api::{
    self, codec_guid, cuda_error, Bitstream, EncodedPicture, MappedInput, NvencError, Registered,
    Session, NEED_MORE_INPUT, SUCCESS,
};
use super::config::{configure, initialize_params};
use crate::video::backend::EncoderSettings;

/// Input (and bitstream) buffers a session may hold at once; more than one
/// only while the driver holds frames back.
const MAX_SLOTS: usize = 8;

/// Bytes offered to `nvEncGetSequenceParams` (SPS + PPS, or VPS + SPS + PPS).
const SEQUENCE_HEADER_CAPACITY: usize = 1024;

/// One registered NV12 input buffer with the bitstream buffer its frame's
/// output goes to. `None` members are not (yet) created.
struct Slot {
    /// `height` luma rows, then `height / 2` chroma rows.
    buffer: PitchedBuffer,
    registered: Option<Registered>,
    bitstream: Option<Bitstream>,
    /// The mapped input while a frame from this slot is being encoded.
    mapped: Option<MappedInput>,
}

/// What became of a submitted frame.
pub enum Submitted {
    /// Its output (and any held back before it) is ready to read.
    Output,
    /// The driver holds it back; its output comes with a later frame's.
    Held,
}

/// An initialised encode session with its slots; released on drop, the
/// GPU's context bound.
pub struct EncodeSession {
    session: Session,
    slots: Vec<Slot>,
    /// Slots whose frames were submitted and whose output is not yet read,
    /// oldest first.
    pending: VecDeque<usize>,
    width: u32,
    height: u32,
    /// Last, so the CUDA context outlives everything above when dropped.
    device: Arc<GpuDevice>,
}

impl EncodeSession {
    /// Opens a session on `device` and initialises it for `settings`:
    /// preset P4 with the high-quality tuning, the rendition's settings
    /// written over it. Binds the device's context.
    pub fn open(device: Arc<GpuDevice>, settings: &EncoderSettings) -> Result<Self, NvencError> {
        let api = api::api()?;
        api::bind(device.context())?;
        let session = Session::open(api, device.context().cu_ctx())?;
        let mut preset = session.preset_config(
            codec_guid(settings.profile.codec),
            nv::NV_ENC_PRESET_P4_GUID,
            nv::NV_ENC_TUNING_INFO::NV_ENC_TUNING_INFO_HIGH_QUALITY,
        )?;
        configure(&mut preset.presetCfg, settings);
        let mut init = initialize_params(settings, &mut preset.presetCfg);
        session.initialize(&mut init, &mut preset.presetCfg)?;
        Ok(EncodeSession {
            session,
            slots: Vec::new(),
            pending: VecDeque::new(),
            width: settings.width,
            height: settings.height,
            device,
        })
    }

    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.device
    }

    /// The pitch of the first input buffer, once there is one.
    pub fn input_pitch(&self) -> Option<usize> {
        self.slots.first().map(|slot| slot.buffer.pitch())
    }

    /// The sequence (and picture, video) parameter sets as Annex-B bytes.
    pub fn sequence_header(&self) -> Result<Vec<u8>, NvencError> {
        let mut buffer = vec![0u8; SEQUENCE_HEADER_CAPACITY];
        let size = self.session.sequence_params(&mut buffer)?;
        buffer.truncate(size.min(SEQUENCE_HEADER_CAPACITY));
        if buffer.is_empty() {
            return Err(NvencError::Invalid(
                "nvEncGetSequenceParams returned no parameter sets".into(),
            ));
        }
        Ok(buffer)
    }

    /// Allocates, registers and pairs with a bitstream buffer one more input
    /// slot. The context must be current.
    pub fn add_slot(&mut self) -> Result<usize, NvencError> {
        let (width, height) = (self.width as usize, self.height as usize);
        // Luma rows then chroma rows, pitched as the SDK's samples allocate.
        let buffer = PitchedBuffer::alloc(width, height + height / 2)
            .map_err(cuda_error("cuMemAllocPitch"))?;
        let (memory, pitch) = (buffer.ptr(), buffer.pitch());
        self.slots.push(Slot {
            buffer,
            registered: None,
            bitstream: None,
            mapped: None,
        });
        let index = self.slots.len() - 1;
        if pitch < width || pitch % 4 != 0 || pitch > u32::MAX as usize {
            return Err(NvencError::Invalid(format!(
                "cuMemAllocPitch gave a pitch of {pitch} bytes for {width}-byte rows"
            )));
        }
        // SAFETY: the buffer holds a whole NV12 picture of the session's size
        // at this pitch and stays allocated until unregistered (the slot,
        // which owns it, is released after unregistering, in `Drop`).
        let registered = unsafe {
            self.session
                .register_nv12(memory, self.width, self.height, pitch as u32)
        }?;
        self.slots[index].registered = Some(registered);
        self.slots[index].bitstream = Some(self.session.create_bitstream()?);
        Ok(index)
    }

    /// A slot no pending frame uses, created when all are busy.
    fn free_slot(&mut self) -> Result<usize, NvencError> {
        if let Some(index) = (0..self.slots.len()).find(|i| !self.pending.contains(i)) {
            return Ok(index);
        }
        if self.slots.len() >= MAX_SLOTS {
            return Err(NvencError::Invalid(format!(
                "NVENC holds {} frames back without output",
                self.pending.len()
            )));
        }
        tracing::debug!(
            slots = self.slots.len() + 1,
            "NVENC held a frame back: adding an input buffer"
        );
        self.add_slot()
    }

    /// Copies a frame's planes into a slot's buffer on `stream` (the
    /// rendition's own) and waits for the copies, and so for nothing queued
    /// by other sessions.
    fn upload(
        &self,
        slot: usize,
        frame: &DeviceFrame,
        stream: &CudaStream,
    ) -> Result<(), NvencError> {
        frame
            .copy_to_pitched(stream, &self.slots[slot].buffer)
            .map_err(cuda_error("cuMemcpy2DAsync"))?;
        stream
            .synchronize()
            .map_err(cuda_error("cuStreamSynchronize"))
    }

    fn map(&mut self, slot: usize) -> Result<(), NvencError> {
        let registered = self.slots[slot]
            .registered
            .as_ref()
            .ok_or_else(|| NvencError::Invalid("an input slot without a buffer".into()))?;
        let mapped = self.session.map_input(registered)?;
        self.slots[slot].mapped = Some(mapped);
        Ok(())
    }

    fn unmap(&mut self, slot: usize) -> Result<(), NvencError> {
        match self.slots[slot].mapped.take() {
            Some(mapped) => self.session.unmap_input(mapped),
            None => Ok(()),
        }
    }

    /// Encodes one NV12 frame of the session's size, stamped `pts` and
    /// lasting `duration`, copying it in on `stream`, the frame's own. The
    /// context must be current.
    pub fn submit(
        &mut self,
        frame: &DeviceFrame,
        stream: &CudaStream,
        pts: i64,
        duration: i64,
    ) -> Result<Submitted, NvencError> {
        let slot = self.free_slot()?;
        self.upload(slot, frame, stream)?;
        self.map(slot)?;
        let status = {
            let Slot {
                buffer,
                bitstream,
                mapped,
                ..
            } = &self.slots[slot];
            let (Some(input), Some(output)) = (mapped, bitstream) else {
                return Err(NvencError::Invalid("an input slot without a buffer".into()));
            };
            let pitch = buffer.pitch() as u32;
            self.session.encode_picture(
                input,
                output,
                self.width,
                self.height,
                pitch,
                pts,
                duration,
            )
        };
        match status {
            SUCCESS => {
                self.pending.push_back(slot);
                Ok(Submitted::Output)
            }
            // Buffered for later output (B-frames or lookahead, neither of
            // which is configured): its output comes with a later SUCCESS.
            NEED_MORE_INPUT => {
                self.pending.push_back(slot);
                tracing::debug!(pending = self.pending.len(), "NVENC needs more input");
                Ok(Submitted::Held)
            }
            _ => {
                let error =
                    NvencError::call("nvEncEncodePicture", status, self.session.last_error());
                let _ = self.unmap(slot);
                Err(error)
            }
        }
    }

    /// Sends the end of the stream: `true` when outputs are to be read.
    /// The context must be current.
    pub fn end_of_stream(&mut self) -> Result<bool, NvencError> {
        match self.session.end_of_stream() {
            SUCCESS => Ok(true),
            // Nothing held back: nothing to read. (With frames held back the
            // outputs may not be locked after this status, so that is an
            // error below.)
            NEED_MORE_INPUT if self.pending.is_empty() => Ok(false),
            status => Err(NvencError::call(
                "nvEncEncodePicture (end of stream)",
                status,
                self.session.last_error(),
            )),
        }
    }

    /// Reads the oldest pending frame's output (waiting for the hardware),
    /// handing its bytes to `read`, and unmaps its input; `None` when no
    /// frame is pending.
    pub fn read_next<T>(
        &mut self,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Option<Result<EncodedPicture<T>, NvencError>> {
        let slot = self.pending.pop_front()?;
        let output = match &self.slots[slot].bitstream {
            Some(bitstream) => self.session.read_bitstream(bitstream, read),
            None => Err(NvencError::Invalid("an input slot without a buffer".into())),
        };
        let unmapped = self.unmap(slot);
        Some(output.and_then(|output| unmapped.map(|()| output)))
    }
}

impl Drop for EncodeSession {
    fn drop(&mut self) {
        if let Err(e) = super::super::driver::bind(self.device.context()) {
            tracing::warn!(error = %e, "NVENC teardown: the CUDA context could not be bound");
        }
        for slot in &mut self.slots {
            // Statuses unchecked: the session goes next either way.
            if let Some(mapped) = slot.mapped.take() {
                let _ = self.session.unmap_input(mapped);
            }
            if let Some(registered) = slot.registered.take() {
                self.session.unregister(registered);
            }
            if let Some(bitstream) = slot.bitstream.take() {
                self.session.destroy_bitstream(bitstream);
            }
        }
        self.session.close();
        // The input buffers, no longer registered, are freed in the context
        // bound above.
        self.slots.clear();
    }
}
