//! The CPU scaler on its own: one decoded 1080p frame to each rung of the
//! ladder, as the engine does per frame.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ffmpeg_next as ff;
use lpworker::video::backend::{Frame, Scaler};
use lpworker::video::cpu::CpuScaler;

fn frame_1080p() -> Frame {
    lpworker::video::init_ffmpeg();
    let mut f = ff::frame::Video::new(ff::format::Pixel::YUV420P, 1920, 1080);
    for plane in 0..3 {
        let stride = f.stride(plane);
        let data = f.data_mut(plane);
        for (i, b) in data.iter_mut().enumerate() {
            let (x, y) = (i % stride, i / stride);
            *b = ((x * 3 + y * 5) ^ (x / 7)) as u8;
        }
    }
    Frame::host(f, 0)
}

fn bench_scaler(c: &mut Criterion) {
    let src = Arc::new(frame_1080p());
    let mut group = c.benchmark_group("cpu_scaler_1080p");
    for (w, h) in [(1280, 720), (1024, 576), (640, 360), (426, 240)] {
        let mut scaler = CpuScaler::new(w, h);
        // Bytes read (4:2:0 source) plus bytes written, per frame.
        group.throughput(Throughput::Bytes(
            (1920 * 1080 * 3 / 2 + w * h * 3 / 2) as u64,
        ));
        group.bench_function(format!("to_{w}x{h}"), |b| {
            b.iter(|| scaler.scale(&src).expect("scales"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_scaler);
criterion_main!(benches);
