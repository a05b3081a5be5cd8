//! Seeded mutation test: 1000+ damaged segments (bit flips, truncations,
//! spliced packets, corrupted PES and NAL headers) through the engine. Every
//! one must end in a valid output or a clear error within 5 s, with no panic
//! and no memory growth over the run.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{clip, tempdir, Clip};
use lpworker::video::cpu::CpuBackend;
use lpworker::video::{TranscodeOptions, Transcoder, VideoProfile};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CASES: usize = 1200;
const LIMIT: Duration = Duration::from_secs(5);

/// Offsets just past each `00 00 01` start code.
fn start_codes(bytes: &[u8]) -> Vec<usize> {
    bytes
        .windows(3)
        .enumerate()
        .filter(|(_, w)| *w == [0, 0, 1])
        .map(|(i, _)| i + 3)
        .collect()
}

fn mutate(base: &[u8], rng: &mut SmallRng) -> (&'static str, Vec<u8>) {
    let mut b = base.to_vec();
    let kind = rng.gen_range(0..6);
    match kind {
        0 => {
            for _ in 0..rng.gen_range(1..64) {
                let i = rng.gen_range(0..b.len());
                b[i] ^= 1 << rng.gen_range(0..8);
            }
            ("bit flips", b)
        }
        1 => {
            let len = rng.gen_range(0..b.len());
            b.truncate(len);
            ("truncation", b)
        }
        2 => {
            // Splice whole 188-byte TS packets: drop, duplicate or move a few.
            let mut packets: Vec<Vec<u8>> = b.chunks(188).map(<[u8]>::to_vec).collect();
            for _ in 0..rng.gen_range(1..12) {
                let n = packets.len();
                let (from, to) = (rng.gen_range(0..n), rng.gen_range(0..n));
                match rng.gen_range(0..3) {
                    0 if n > 1 => {
                        packets.remove(from);
                    }
                    1 => {
                        let p = packets[from].clone();
                        packets.insert(to, p);
                    }
                    _ => packets.swap(from, to),
                }
            }
            ("spliced packets", packets.concat())
        }
        3 => {
            // PES headers: stream id, length, flags and PTS/DTS bytes.
            let pes: Vec<usize> = start_codes(&b)
                .into_iter()
                .filter(|&i| {
                    i < b.len() && (b[i] & 0xE0) == 0xE0 || (i < b.len() && (b[i] & 0xE0) == 0xC0)
                })
                .collect();
            for _ in 0..rng.gen_range(1..6) {
                if pes.is_empty() {
                    break;
                }
                let at = pes[rng.gen_range(0..pes.len())] + rng.gen_range(0..14);
                if at < b.len() {
                    b[at] = rng.gen();
                }
            }
            ("PES headers", b)
        }
        4 => {
            // NAL unit headers and the first bytes of their payload (SPS/PPS/slice headers).
            let nals = start_codes(&b);
            for _ in 0..rng.gen_range(1..8) {
                if nals.is_empty() {
                    break;
                }
                let at = nals[rng.gen_range(0..nals.len())] + rng.gen_range(0..6);
                if at < b.len() {
                    b[at] = rng.gen();
                }
            }
            ("NAL headers", b)
        }
        _ => {
            let start = rng.gen_range(0..b.len());
            let end = (start + rng.gen_range(1..4096)).min(b.len());
            rng.fill(&mut b[start..end]);
            ("overwritten run", b)
        }
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn mutated_segments_end_cleanly() {
    let dir = tempdir();
    let small = |codec, ext| Clip {
        width: 192,
        height: 108,
        fps: 30,
        seconds: 0.5,
        codec,
        ext,
        audio: true,
    };
    let bases = [
        clip(dir.path(), "h264", &small("libx264", "ts")).1,
        clip(dir.path(), "hevc", &small("libx265", "ts")).1,
        clip(dir.path(), "mp4", &small("libx264", "mp4")).1,
    ];
    let transcoder = Transcoder::new(Arc::new(CpuBackend));
    let options = TranscodeOptions {
        profiles: VideoProfile::parse_list("P240p30fps16x9,P144p30fps16x9").unwrap(),
        // The engine's own deadline sits below the limit the test enforces.
        timeout: Some(LIMIT - Duration::from_millis(500)),
        preset: "ultrafast".into(),
        encoder_threads: 1,
        ..Default::default()
    };
    let mut rng = SmallRng::seed_from_u64(0x1_2345);
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut rss_after_warmup = 0;
    let mut slowest = Duration::ZERO;
    for case in 0..CASES {
        let base = &bases[case % bases.len()];
        let (kind, input) = mutate(base, &mut rng);
        let started = Instant::now();
        let result = transcoder.transcode(input, &options, &mut |_| {});
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(took < LIMIT, "case {case} ({kind}) took {took:?}");
        match result {
            Ok(out) => {
                ok += 1;
                assert_eq!(out.renditions.len(), 2, "case {case} ({kind})");
                for r in &out.renditions {
                    assert!(
                        !r.data.is_empty() && r.encoded.frames > 0,
                        "case {case} ({kind}): empty {}",
                        r.profile
                    );
                    assert_eq!(
                        r.encoded.pixels,
                        r.encoded.frames * u64::from(r.width * r.height)
                    );
                }
            }
            Err(e) => {
                failed += 1;
                assert!(
                    e.to_string().len() > 10,
                    "case {case} ({kind}): terse error {e}"
                );
                assert!(
                    e.kind() != "internal" || e.to_string().contains("failed"),
                    "case {case}: {e}"
                );
            }
        }
        if case == 100 {
            rss_after_warmup = rss_kib();
        }
    }
    let growth_mib = rss_kib().saturating_sub(rss_after_warmup) / 1024;
    eprintln!("{CASES} mutated segments: {ok} transcoded, {failed} refused; slowest {slowest:?}; RSS growth after warm-up {growth_mib} MiB");
    assert!(
        ok > CASES / 10,
        "most mutations should still transcode ({ok})"
    );
    assert!(failed > 0, "some mutations must be refused");
    assert!(
        growth_mib < 48,
        "memory grew by {growth_mib} MiB over the run"
    );
}
