//! Fuzzes the segment entry point: arbitrary bytes through demux, decode,
//! scale, encode and mux. Any panic, hang (past the engine deadline) or
//! sanitizer report is a bug; errors are fine.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use lpworker::video::cpu::CpuBackend;
use lpworker::video::{TranscodeOptions, Transcoder, VideoProfile};

fn setup() -> &'static (Transcoder, TranscodeOptions) {
    static SETUP: OnceLock<(Transcoder, TranscodeOptions)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let options = TranscodeOptions {
            profiles: VideoProfile::parse_list("P144p30fps16x9").unwrap(),
            timeout: Some(Duration::from_secs(5)),
            preset: "ultrafast".into(),
            encoder_threads: 1,
            ..Default::default()
        };
        (Transcoder::new(Arc::new(CpuBackend)), options)
    })
}

fuzz_target!(|data: &[u8]| {
    let (transcoder, options) = setup();
    if let Ok(out) = transcoder.transcode(data.to_vec(), options, &mut |_| {}) {
        for r in &out.renditions {
            assert!(!r.data.is_empty());
            assert_eq!(r.encoded.pixels, r.encoded.frames * u64::from(r.width * r.height));
        }
    }
});
