//! The benchmark's outputs: a Markdown summary and a plot (SVG and PNG) of
//! real-time ratio and latency against concurrency.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::Report;

/// The sentence the benchmark exists to answer.
pub fn verdict(report: &Report) -> String {
    match report.max_realtime_concurrency {
        Some(n) => format!(
            "This machine keeps {n} concurrent stream{} in real time ({} backend, {} into {}).",
            if n == 1 { "" } else { "s" },
            report.backend,
            report.input,
            report.profiles.join(", ")
        ),
        None => format!(
            "This machine cannot keep even one stream in real time ({} backend, {} into {}).",
            report.backend,
            report.input,
            report.profiles.join(", ")
        ),
    }
}

/// "yes (h264, hevc)", "no" or "unknown" (no probe in this build).
fn engine_summary(usable: Option<bool>, codecs: &[String]) -> String {
    match usable {
        None => "unknown".into(),
        Some(false) => "no".into(),
        Some(true) if codecs.is_empty() => "yes".into(),
        Some(true) => format!("yes ({})", codecs.join(", ")),
    }
}

pub fn markdown(report: &Report) -> String {
    let h = &report.hardware;
    let mut md = String::new();
    let _ = writeln!(md, "# lpworker bench\n");
    let _ = writeln!(
        md,
        "- lpworker {}, backend `{}`, x264 preset `{}`",
        report.lpworker_version, report.backend, report.preset
    );
    let _ = writeln!(
        md,
        "- CPU: {} ({} cores), memory {} MiB, {}",
        h.cpu_model, h.cpu_cores, h.memory_mib, h.os
    );
    if h.gpus.is_empty() {
        let _ = writeln!(md, "- GPUs: none found");
    }
    for g in &h.gpus {
        let _ = writeln!(
            md,
            "- GPU: {} ({} MiB, driver {}; NVDEC {}, NVENC {}){}",
            g.name,
            g.memory_mib,
            g.driver,
            engine_summary(g.nvdec, &g.nvdec_codecs),
            engine_summary(g.nvenc, &g.nvenc_codecs),
            if g.problems.is_empty() {
                String::new()
            } else {
                format!(": {}", g.problems.join("; "))
            }
        );
    }
    let _ = writeln!(
        md,
        "- Input: {} ({:.1} s in {} segments), profiles {}\n",
        report.input,
        report.media_seconds,
        report.segments,
        report.profiles.join(", ")
    );
    let _ = writeln!(md, "## Video\n");
    let _ = writeln!(md, "| streams | real-time ratio | aggregate | segment latency p50 / p95 / p99 (ms) | Mpixel/s | CPU | GPU | peak RSS (MiB) | vs ffmpeg CLI |");
    let _ = writeln!(md, "|---:|---:|---:|---|---:|---:|---:|---:|---:|");
    for l in &report.video {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2} | {:.0} / {:.0} / {:.0} | {:.1} | {} | {} | {} | {} |",
            l.concurrency,
            l.realtime_ratio,
            l.aggregate_realtime_ratio,
            l.segment_latency_ms.p50,
            l.segment_latency_ms.p95,
            l.segment_latency_ms.p99,
            l.pixels_per_second / 1e6,
            l.cpu_utilisation
                .map_or("n/a".into(), |c| format!("{:.0}%", c * 100.0)),
            l.gpu_utilisation
                .map_or("n/a".into(), |g| format!("{:.0}%", g * 100.0)),
            l.peak_rss_mib.map_or("n/a".into(), |m| format!("{m:.0}")),
            l.ffmpeg
                .as_ref()
                .map_or("-".into(), |f| format!("{:.2}x", f.lpworker_speedup)),
        );
    }
    if let Some(l) = report.video.first() {
        let _ = writeln!(md, "\nPer rendition at {} stream(s):\n", l.concurrency);
        for r in &l.renditions {
            let _ = writeln!(
                md,
                "- {} ({}x{}): {:.1} fps, {} frames",
                r.profile, r.width, r.height, r.fps, r.frames
            );
        }
    }
    for ai in &report.ai {
        let _ = writeln!(
            md,
            "\n## AI: {} / {} ({})\n",
            ai.pipeline, ai.model_id, ai.runtime
        );
        let _ = writeln!(
            md,
            "| concurrency | requests | requests/s | latency p50 / p95 / p99 (ms) |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---|");
        for l in &ai.levels {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.1} / {:.1} / {:.1} |",
                l.concurrency,
                l.requests,
                l.requests_per_second,
                l.latency_ms.p50,
                l.latency_ms.p95,
                l.latency_ms.p99
            );
        }
    }
    let _ = writeln!(md, "\n**{}**", verdict(report));
    md
}

#[derive(Debug, thiserror::Error)]
#[error("plotting failed: {0}")]
pub struct PlotError(String);

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    report: &Report,
    labels: bool,
) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let err = |e: &dyn std::fmt::Display| PlotError(e.to_string());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, bottom) = root.split_vertically(root.dim_in_pixel().1 / 2);
    let levels = &report.video;
    let max_c = levels.iter().map(|l| l.concurrency).max().unwrap_or(1) as f64;
    let x_range = 0.5..(max_c + 0.5);
    let font = ("sans-serif", 16);

    let max_ratio = levels
        .iter()
        .map(|l| l.realtime_ratio)
        .fold(1.2f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&top);
    chart
        .margin(12)
        .x_label_area_size(if labels { 36 } else { 0 })
        .y_label_area_size(if labels { 56 } else { 0 });
    if labels {
        chart.caption("real-time ratio per stream", font);
    }
    let mut chart = chart
        .build_cartesian_2d(x_range.clone(), 0.0..max_ratio)
        .map_err(|e| err(&e))?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("concurrent streams")
            .y_desc("media s / wall s")
            .draw()
            .map_err(|e| err(&e))?;
    }
    chart
        .draw_series(LineSeries::new(
            [(0.5, 1.0), (max_c + 0.5, 1.0)],
            RED.stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    let points: Vec<_> = levels
        .iter()
        .map(|l| (l.concurrency as f64, l.realtime_ratio))
        .collect();
    chart
        .draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(points.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))
        .map_err(|e| err(&e))?;

    let max_latency = levels
        .iter()
        .map(|l| l.segment_latency_ms.p99)
        .fold(1.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&bottom);
    chart
        .margin(12)
        .x_label_area_size(if labels { 36 } else { 0 })
        .y_label_area_size(if labels { 56 } else { 0 });
    if labels {
        chart.caption("segment latency (ms): p50, p95, p99", font);
    }
    let mut chart = chart
        .build_cartesian_2d(x_range, 0.0..max_latency)
        .map_err(|e| err(&e))?;
    if labels {
        chart
            .configure_mesh()
            .x_desc("concurrent streams")
            .y_desc("ms")
            .draw()
            .map_err(|e| err(&e))?;
    }
    for (name, pick, color) in [
        (
            "p50",
            (|l: &super::VideoLevel| l.segment_latency_ms.p50) as fn(&super::VideoLevel) -> f64,
            GREEN,
        ),
        (
            "p95",
            |l: &super::VideoLevel| l.segment_latency_ms.p95,
            MAGENTA,
        ),
        (
            "p99",
            |l: &super::VideoLevel| l.segment_latency_ms.p99,
            BLACK,
        ),
    ] {
        let points: Vec<_> = levels
            .iter()
            .map(|l| (l.concurrency as f64, pick(l)))
            .collect();
        let series = chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|e| err(&e))?;
        if labels {
            series.label(name).legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2))
            });
        }
    }
    if labels {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// Registers DejaVu Sans for the PNG's text; without it the PNG has no labels
/// (the SVG always has them: its text is rendered by the viewer).
fn register_font() -> bool {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let Ok(bytes) = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf") else {
            return false;
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
    })
}

/// Writes `<stem>.svg` and `<stem>.png`.
pub fn plot(report: &Report, dir: &Path, stem: &str) -> Result<(), PlotError> {
    let size = (900, 900);
    let fonts = register_font();
    let svg = dir.join(format!("{stem}.svg"));
    draw(
        SVGBackend::new(&svg, size).into_drawing_area(),
        report,
        fonts,
    )?;
    let png = dir.join(format!("{stem}.png"));
    draw(
        BitMapBackend::new(&png, size).into_drawing_area(),
        report,
        fonts,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::engine_summary;

    #[test]
    fn engines_read_plainly() {
        assert_eq!(engine_summary(None, &[]), "unknown");
        assert_eq!(engine_summary(Some(false), &[]), "no");
        assert_eq!(engine_summary(Some(true), &[]), "yes");
        let codecs = ["h264".to_string(), "hevc".to_string()];
        assert_eq!(engine_summary(Some(true), &codecs), "yes (h264, hevc)");
    }
}
