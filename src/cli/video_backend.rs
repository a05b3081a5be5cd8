//! The video backend flags `serve`, `attach`, `transcode` and `bench` share.

use std::sync::Arc;

use lpworker::video::nvidia::selection::GpuSelection;
use lpworker::video::probe::{self, BackendChoice, Capabilities};
use lpworker::video::{VideoBackend, VideoError};

#[derive(Debug, clap::Args)]
pub struct VideoBackendArgs {
    /// Which backend transcodes.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto, env = "LPWORKER_BACKEND")]
    pub backend: BackendChoice,
    /// NVIDIA GPUs to transcode on, like go-livepeer's `-nvidia`: `all` or
    /// indices such as `0,1`. Implies the NVIDIA backend.
    #[arg(long, env = "LPWORKER_NVIDIA")]
    pub nvidia: Option<GpuSelection>,
    /// x264/x265 preset (go-livepeer uses medium).
    #[arg(long, default_value = "medium")]
    pub preset: String,
}

impl VideoBackendArgs {
    /// The backend the flags choose, among what the probe found.
    pub fn select(&self, caps: &Capabilities) -> Result<Arc<dyn VideoBackend>, VideoError> {
        probe::select_backend(self.backend, self.nvidia.as_ref(), caps)
    }
}
