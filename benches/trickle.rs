//! The trickle server on loopback: N publishers × M subscribers; the
//! measurement is `lpworker::bench::trickle` (also `lpworker bench --trickle`).
//!
//! `cargo bench --bench trickle`: the load (LPW_TRICKLE_STREAMS=100,
//! LPW_TRICKLE_SUBS=2, LPW_TRICKLE_BITRATE=4M, LPW_TRICKLE_SECONDS=10;
//! LPW_TRICKLE_ALIGNED=1 has every publisher write at the same instants).
//! `cargo test --all-targets` runs it without `--bench`: a short smoke run.

use lpworker::bench::trickle::{self, Options};

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let seconds: f64 = env("LPW_TRICKLE_SECONDS", if bench { 10.0 } else { 2.0 });
    let options = Options {
        streams: env("LPW_TRICKLE_STREAMS", if bench { 100 } else { 4 }),
        subscribers: env("LPW_TRICKLE_SUBS", 2),
        bitrate: std::env::var("LPW_TRICKLE_BITRATE")
            .ok()
            .and_then(|b| trickle::parse_bitrate(&b).ok())
            .unwrap_or(4_000_000),
        seconds,
        throughput_seconds: (seconds / 2.0).max(1.0),
        aligned: env("LPW_TRICKLE_ALIGNED", 0u8) != 0,
    };
    let report = trickle::run(&options).expect("trickle bench");
    print!("{}", report.summary());
    assert!(
        report.live.pieces > 0
            && report.live.max_retained_bytes <= report.live.retained_bound_bytes
            && report.throughput.max_retained_bytes <= report.throughput.retained_bound_bytes,
        "pieces reached the subscribers and retention held"
    );
}
