//! The resize kernels' entry points run on the CPU: kernels/resize.cu, the
//! very source NVRTC compiles, built as C++ through kernels/cpu_shim.h
//! (kernels/cpu_run.cpp) with AddressSanitizer and UBSan, launched over the
//! whole grid the scaler computes (video::nvidia::launch) and compared on
//! every output byte with the Rust reference (video::nvidia::reference).
//!
//! Every plane is allocated at exactly its size (the last row ends at its
//! last sample), so a read or write past a plane aborts the run; padding
//! between rows, which the sanitizer cannot see, must come back untouched.
//! The run is a separate executable because the sanitizers need their
//! runtime from the process's start. Needs clang++ and its sanitizer
//! runtime (scripts/install-deps).

use std::io::{Read, Write};
use std::mem::{offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lpworker::video::nvidia::ladder::{LpwLadder, LpwPlane, MAX_RENDITIONS};
use lpworker::video::nvidia::launch::{
    ladder_launch_geometry, plan_ladder, rendition_filter, LaunchGeometry,
};
use lpworker::video::nvidia::reference::{self, fill_test_pattern, Depth, Filter, Plane};
use lpworker::video::nvidia::KERNELS;
use lpworker::video::profile::VideoProfile;

const FILTERS: [Filter; 2] = [Filter::Bilinear, Filter::Area];
const FORMATS: [Format; 2] = [Format::Nv12, Format::P010];
/// What the kernels leave in an output byte they must not write.
const SENTINEL: u8 = 0xa5;

// ---------------------------------------------------------------------------
// Building the CPU runner.

/// How the runner is built: checked (sanitizers, for the comparisons) or
/// optimized (plain -O2, for a run time comparable with the Rust reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Build {
    Sanitized,
    Optimized,
}

impl Build {
    fn flags(self) -> &'static [&'static str] {
        match self {
            // -O1 keeps the sanitizers' reports precise and the run quick.
            Build::Sanitized => &[
                "-O1",
                "-g",
                "-fsanitize=address,undefined",
                "-fno-sanitize-recover=all",
                "-fno-omit-frame-pointer",
            ],
            Build::Optimized => &["-O2"],
        }
    }
}

fn kernels_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels")
}

/// Builds kernels/cpu_run.cpp once per source version and build kind, into
/// the target directory; later test runs reuse the executable.
fn runner(build: Build) -> &'static Path {
    static SANITIZED: OnceLock<PathBuf> = OnceLock::new();
    static OPTIMIZED: OnceLock<PathBuf> = OnceLock::new();
    let cell = match build {
        Build::Sanitized => &SANITIZED,
        Build::Optimized => &OPTIMIZED,
    };
    cell.get_or_init(|| compile_runner(build))
}

fn compile_runner(build: Build) -> PathBuf {
    // Its own variable, not CXX: the sanitizer flags and runtime are clang's.
    let compiler = std::env::var("LPW_KERNELS_CXX").unwrap_or_else(|_| "clang++".into());
    // Same arithmetic as the GPU build (NVRTC --fmad=false): no contraction
    // of a * b + c into one rounding.
    let common = [
        "-std=c++17",
        "-ffp-contract=off",
        "-Wall",
        "-Wextra",
        "-Werror",
    ];
    let dir = kernels_dir();
    let mut sources: Vec<_> = std::fs::read_dir(&dir)
        .expect("kernels/ is readable")
        .map(|entry| entry.expect("kernels/ entry").path())
        .collect();
    sources.sort();
    // FNV-1a over the sources and the command: a changed kernel rebuilds.
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    for path in &sources {
        feed(path.file_name().unwrap().as_encoded_bytes());
        feed(&std::fs::read(path).expect("kernel source"));
    }
    for flag in common.iter().chain(build.flags()) {
        feed(flag.as_bytes());
    }
    feed(compiler.as_bytes());
    let name = match build {
        Build::Sanitized => "sanitized",
        Build::Optimized => "optimized",
    };
    let exe =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kernels_cpu_run-{name}-{hash:016x}"));
    if exe.is_file() {
        return exe;
    }
    // Built under a temporary name and renamed, so a concurrent test
    // process never runs a half-written executable.
    let partial = exe.with_extension(format!("partial{}", std::process::id()));
    let started = Instant::now();
    let output = Command::new(&compiler)
        .args(common)
        .args(build.flags())
        .arg("-I")
        .arg(&dir)
        .arg(dir.join("cpu_run.cpp"))
        .arg("-o")
        .arg(&partial)
        .output()
        .unwrap_or_else(|e| panic!("{compiler} did not start ({e}): run scripts/install-deps"));
    assert!(
        output.status.success(),
        "{compiler} failed to build kernels/cpu_run.cpp ({name}; the sanitizer runtime is \
         libclang-rt-dev):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::rename(&partial, &exe).expect("rename the built runner");
    report(&format!(
        "kernels_cpu: built the {name} runner in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    exe
}

/// Prints past the test harness's capture, so the figures show in every run.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

// ---------------------------------------------------------------------------
// Frames and jobs.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Nv12,
    P010,
}

impl Format {
    fn depth(self) -> Depth {
        match self {
            Format::Nv12 => Depth::Eight,
            Format::P010 => Depth::Ten,
        }
    }

    fn bytes_per_sample(self) -> usize {
        match self {
            Format::Nv12 => 1,
            Format::P010 => 2,
        }
    }

    /// The entry point `resize::scale_ladder` launches for this format and filter.
    fn kernel(self, filter: Filter) -> &'static str {
        match (self, filter) {
            (Format::Nv12, Filter::Bilinear) => "lpw_nv12_bilinear",
            (Format::Nv12, Filter::Area) => "lpw_nv12_area",
            (Format::P010, Filter::Bilinear) => "lpw_p010_bilinear",
            (Format::P010, Filter::Area) => "lpw_p010_area",
        }
    }
}

/// A plane whose rows are `pitch` bytes apart and whose buffer ends right
/// after the last row's `row_bytes` bytes of picture.
#[derive(Debug, Clone)]
struct HostPlane {
    data: Vec<u8>,
    pitch: usize,
    row_bytes: usize,
}

impl HostPlane {
    fn exact_len(pitch: usize, row_bytes: usize, rows: usize) -> usize {
        if rows == 0 {
            0
        } else {
            pitch * (rows - 1) + row_bytes
        }
    }

    /// An output plane filled with [`SENTINEL`].
    fn blank(pitch: usize, row_bytes: usize, rows: usize) -> Self {
        HostPlane {
            data: vec![SENTINEL; Self::exact_len(pitch, row_bytes, rows)],
            pitch,
            row_bytes,
        }
    }

    /// A source plane: edges, gradients and noise across the whole pitch,
    /// so a read of the padding would show in the output.
    fn pattern(pitch: usize, row_bytes: usize, rows: usize, depth: Depth, seed: u32) -> Self {
        let bytes = if depth == Depth::Ten { 2 } else { 1 };
        let mut data = vec![0; pitch * rows];
        let mut state = seed.wrapping_mul(2_654_435_761) | 1;
        fill_test_pattern(&mut data, pitch, pitch / bytes, rows, depth, &mut state);
        data.truncate(Self::exact_len(pitch, row_bytes, rows));
        HostPlane {
            data,
            pitch,
            row_bytes,
        }
    }
}

/// A 4:2:0 frame: luma, then chroma at half size (rounded down) with U and
/// V interleaved, as the kernels see planes.
#[derive(Debug, Clone)]
struct Frame {
    width: usize,
    height: usize,
    luma: HostPlane,
    chroma: HostPlane,
}

impl Frame {
    /// `extra` bytes of padding after each row's picture (a multiple of the
    /// sample size, so P010 rows stay 2-byte aligned).
    fn source(format: Format, width: usize, height: usize, extra: usize, seed: u32) -> Self {
        let depth = format.depth();
        let luma_row = width * format.bytes_per_sample();
        let chroma_row = (width / 2) * 2 * format.bytes_per_sample();
        Frame {
            width,
            height,
            luma: HostPlane::pattern(luma_row + extra, luma_row, height, depth, seed),
            chroma: HostPlane::pattern(chroma_row + extra, chroma_row, height / 2, depth, !seed),
        }
    }

    fn output(format: Format, width: usize, height: usize, pitch: impl Fn(usize) -> usize) -> Self {
        let luma_row = width * format.bytes_per_sample();
        let chroma_row = (width / 2) * 2 * format.bytes_per_sample();
        Frame {
            width,
            height,
            luma: HostPlane::blank(pitch(luma_row), luma_row, height),
            chroma: HostPlane::blank(pitch(chroma_row), chroma_row, height / 2),
        }
    }
}

/// Output rows aligned as the scaler allocates them (256 bytes).
fn device_pitch(row_bytes: usize) -> usize {
    row_bytes.max(1).next_multiple_of(256)
}

/// One launch: a source frame into 1 to 8 renditions, as
/// `resize::scale_ladder` launches it.
#[derive(Debug, Clone)]
struct Job {
    format: Format,
    filter: Filter,
    src: Frame,
    outputs: Vec<Frame>,
    geometry: LaunchGeometry,
    /// The ladder argument as the scaler fills it (plane pointers left 0:
    /// the runner points them at its own buffers).
    ladder: LpwLadder,
    /// Bytes the source luma plane starts into its buffer (0 but to
    /// misalign it on purpose).
    src_luma_offset: u32,
}

impl Job {
    fn new(format: Format, filter: Filter, src: Frame, outputs: Vec<Frame>) -> Self {
        assert!((1..=MAX_RENDITIONS).contains(&outputs.len()));
        let mut ladder = LpwLadder {
            count: outputs.len() as i32,
            ..Default::default()
        };
        for (i, out) in outputs.iter().enumerate() {
            let (width, height) = (out.width as i32, out.height as i32);
            ladder.luma[i] = LpwPlane {
                ptr: 0,
                pitch: out.luma.pitch as i32,
                width,
                height,
            };
            ladder.chroma[i] = LpwPlane {
                ptr: 0,
                pitch: out.chroma.pitch as i32,
                width: width / 2,
                height: height / 2,
            };
        }
        Job {
            format,
            filter,
            geometry: ladder_launch_geometry(&ladder),
            src,
            outputs,
            ladder,
            src_luma_offset: 0,
        }
    }

    fn output_planes(&self) -> impl Iterator<Item = &HostPlane> {
        self.outputs.iter().flat_map(|o| [&o.luma, &o.chroma])
    }

    /// The job in cpu_run.cpp's input format.
    fn encode(&self, out: &mut Vec<u8>) {
        let u32s = |out: &mut Vec<u8>, values: &[u32]| {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        };
        let buffer = |out: &mut Vec<u8>, offset: u32, plane: &HostPlane| {
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&(plane.data.len() as u64).to_le_bytes());
            out.extend_from_slice(&plane.data);
        };
        out.extend_from_slice(b"LPWJ");
        let name = self.format.kernel(self.filter);
        u32s(out, &[name.len() as u32]);
        out.extend_from_slice(name.as_bytes());
        let LaunchGeometry { grid, block } = self.geometry;
        u32s(out, &[grid.0, grid.1, grid.2, block.0, block.1, block.2]);
        for v in [
            self.src.luma.pitch,
            self.src.chroma.pitch,
            self.src.width,
            self.src.height,
        ] {
            out.extend_from_slice(&(v as i32).to_le_bytes());
        }
        buffer(out, self.src_luma_offset, &self.src.luma);
        buffer(out, 0, &self.src.chroma);
        out.extend_from_slice(&ladder_bytes(&self.ladder));
        for plane in self.output_planes() {
            buffer(out, 0, plane);
        }
    }

    /// The Rust reference's output: the blank planes with every sample of
    /// the picture written.
    fn expected(&self) -> Vec<Vec<u8>> {
        let depth = self.format.depth();
        let (sw, sh) = (self.src.width, self.src.height);
        let mut planes = Vec::new();
        for out in &self.outputs {
            let luma = Plane {
                data: &self.src.luma.data,
                pitch: self.src.luma.pitch,
                width: sw,
                height: sh,
                step: 1,
                channel: 0,
                depth,
            };
            let mut luma_out = out.luma.data.clone();
            reference::scale_plane(
                self.filter,
                &luma,
                &mut luma_out,
                out.luma.pitch,
                out.width,
                out.height,
            );
            let mut chroma_out = out.chroma.data.clone();
            for channel in 0..2 {
                let chroma = Plane {
                    data: &self.src.chroma.data,
                    pitch: self.src.chroma.pitch,
                    width: sw / 2,
                    height: sh / 2,
                    step: 2,
                    channel,
                    depth,
                };
                reference::scale_plane(
                    self.filter,
                    &chroma,
                    &mut chroma_out,
                    out.chroma.pitch,
                    out.width / 2,
                    out.height / 2,
                );
            }
            planes.push(luma_out);
            planes.push(chroma_out);
        }
        planes
    }

    fn describe(&self) -> String {
        let sizes: Vec<_> = self
            .outputs
            .iter()
            .map(|o| format!("{}x{}", o.width, o.height))
            .collect();
        format!(
            "{} {}x{} (pitches {}/{}) -> [{}], grid {:?}",
            self.format.kernel(self.filter),
            self.src.width,
            self.src.height,
            self.src.luma.pitch,
            self.src.chroma.pitch,
            sizes.join(", "),
            self.geometry.grid
        )
    }
}

/// The ladder's bytes as the kernels read their by-value argument: the
/// Rust mirror's fields at the Rust mirror's offsets (padding zero).
fn ladder_bytes(ladder: &LpwLadder) -> Vec<u8> {
    let mut bytes = vec![0u8; size_of::<LpwLadder>()];
    let mut put = |at: usize, value: &[u8]| bytes[at..at + value.len()].copy_from_slice(value);
    put(offset_of!(LpwLadder, count), &ladder.count.to_le_bytes());
    for (base, planes) in [
        (offset_of!(LpwLadder, luma), &ladder.luma),
        (offset_of!(LpwLadder, chroma), &ladder.chroma),
    ] {
        for (i, plane) in planes.iter().enumerate() {
            let at = base + i * size_of::<LpwPlane>();
            put(at + offset_of!(LpwPlane, ptr), &plane.ptr.to_le_bytes());
            put(at + offset_of!(LpwPlane, pitch), &plane.pitch.to_le_bytes());
            put(at + offset_of!(LpwPlane, width), &plane.width.to_le_bytes());
            put(
                at + offset_of!(LpwPlane, height),
                &plane.height.to_le_bytes(),
            );
        }
    }
    bytes
}

/// What one run of the runner gave back: per job, its output planes and
/// the launch's time.
struct Ran {
    planes: Vec<Vec<Vec<u8>>>,
    times: Vec<Duration>,
}

/// Runs `jobs` in one process. Err carries the exit status and stderr (a
/// sanitizer's report) of a run that failed.
fn run(build: Build, jobs: &[Job]) -> Result<Ran, String> {
    let mut input = Vec::new();
    for job in jobs {
        job.encode(&mut input);
    }
    let mut child = Command::new(runner(build))
        // Leaks are not the question here, and LeakSanitizer cannot run
        // under ptrace (a debugger, some sandboxes). memcpy/memset range
        // checks off: the only copies are the launcher's, of each thread's
        // by-value arguments from its own stack, and checking those 392
        // ladder bytes was three quarters of the run time. The kernels' own
        // loads and stores are checked inline, unaffected; the entry-point
        // test makes sure no kernel calls those functions.
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=0:replace_intrin=0:intercept_intrin=0",
        )
        .env("UBSAN_OPTIONS", "print_stacktrace=1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the runner starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let (reply, errors) = std::thread::scope(|scope| {
        // A run that aborts stops reading: the write then fails, which the
        // exit status below explains.
        scope.spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let errors = scope.spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut reply = Vec::new();
        stdout
            .read_to_end(&mut reply)
            .expect("read the runner's reply");
        (reply, errors.join().expect("stderr reader"))
    });
    let status = child.wait().expect("the runner exits");
    if !status.success() {
        return Err(format!("{status}\n{errors}"));
    }
    let mut rest = reply.as_slice();
    let mut take = |n: usize| {
        assert!(rest.len() >= n, "the runner's reply is short");
        let (head, tail) = rest.split_at(n);
        rest = tail;
        head.to_vec()
    };
    let mut ran = Ran {
        planes: Vec::new(),
        times: Vec::new(),
    };
    for job in jobs {
        ran.planes
            .push(job.output_planes().map(|p| take(p.data.len())).collect());
        let nanos = u64::from_le_bytes(take(8).try_into().unwrap());
        ran.times.push(Duration::from_nanos(nanos));
    }
    assert!(rest.is_empty(), "the runner's reply is long");
    Ok(ran)
}

/// Every byte of every output plane as the reference has it: picture
/// samples equal, padding untouched. Err describes the first difference.
fn compare(job: &Job, got: &[Vec<u8>], expected: &[Vec<u8>]) -> Result<(), String> {
    let depth = job.format.depth();
    let bytes = job.format.bytes_per_sample();
    for (index, (got, want)) in got.iter().zip(expected).enumerate() {
        let Some(first) = got.iter().zip(want).position(|(a, b)| a != b) else {
            continue;
        };
        let differing = got.iter().zip(want).filter(|(a, b)| a != b).count();
        let out = &job.outputs[index / 2];
        let plane = if index % 2 == 0 {
            &out.luma
        } else {
            &out.chroma
        };
        let (y, column) = (first / plane.pitch, first % plane.pitch);
        let what = if column >= plane.row_bytes {
            "padding byte written".to_string()
        } else {
            let x = column / bytes;
            let sample = |data: &[u8]| reference::read_sample(data, plane.pitch, x, y, depth);
            format!(
                "sample {} where the reference has {}",
                sample(got),
                sample(want)
            )
        };
        return Err(format!(
            "{}: rendition {} {}, byte {first} (row {y}, column byte {column}): {what}; \
             {differing} bytes differ",
            job.describe(),
            index / 2,
            if index % 2 == 0 { "luma" } else { "chroma" },
        ));
    }
    Ok(())
}

/// Runs `jobs` sanitized and checks every one against the reference,
/// computed meanwhile on another thread; reports both times.
fn check(what: &str, jobs: &[Job]) {
    let (ran, (expected, reference_time)) = std::thread::scope(|scope| {
        let reference = scope.spawn(|| {
            let started = Instant::now();
            let expected: Vec<_> = jobs.iter().map(Job::expected).collect();
            (expected, started.elapsed())
        });
        let ran = run(Build::Sanitized, jobs);
        (ran, reference.join().expect("the reference runs"))
    });
    let ran = ran.unwrap_or_else(|e| panic!("the kernels' CPU run failed: {e}"));
    for ((job, got), expected) in jobs.iter().zip(&ran.planes).zip(&expected) {
        compare(job, got, expected).unwrap_or_else(|e| panic!("{e}"));
    }
    report(&format!(
        "kernels_cpu: {what}, {} launches: kernels on the CPU (ASan + UBSan) {:.2} s, Rust reference ({}) {:.2} s",
        jobs.len(),
        ran.times.iter().sum::<Duration>().as_secs_f64(),
        profile(),
        reference_time.as_secs_f64()
    ));
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug build"
    } else {
        "release build"
    }
}

// ---------------------------------------------------------------------------
// Ladders.

/// go-livepeer's usual 720p/480p/360p/240p of a 1080p source, the ladder
/// `lpworker bench --gpu-kernels` scales in one launch
/// (video::nvidia::gpu_bench::LADDER, which needs the nvidia feature).
const BENCH_LADDER: [(usize, usize); 4] = [(1280, 720), (854, 480), (640, 360), (426, 240)];

/// The renditions the engine makes of a `width` x `height` source, no larger
/// than the source: every predefined profile's output size (lpms' rule)
/// and the source's own size. (The upscaling rungs of small sources go
/// through the same code as the odd sizes' upscales, at seconds of run time
/// each.)
fn engine_renditions(width: usize, height: usize) -> Vec<(usize, usize)> {
    let mut sizes: Vec<_> = VideoProfile::standard_profiles()
        .iter()
        .map(|p| p.output_size(width as u32, height as u32))
        .map(|(w, h)| (w as usize, h as usize))
        .chain([(width, height)])
        .filter(|&(w, h)| w <= width && h <= height)
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    sizes
}

/// Jobs covering `sizes` from `src`, up to 8 renditions a launch, at the
/// scaler's pitches.
fn ladder_jobs(format: Format, filter: Filter, src: &Frame, sizes: &[(usize, usize)]) -> Vec<Job> {
    sizes
        .chunks(MAX_RENDITIONS)
        .map(|chunk| {
            let outputs = chunk
                .iter()
                .map(|&(w, h)| Frame::output(format, w, h, device_pitch))
                .collect();
            Job::new(format, filter, src.clone(), outputs)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn kernels_on_the_cpu_are_the_entry_points_rust_launches() {
    let output = Command::new(runner(Build::Sanitized))
        .arg("--list")
        .output()
        .expect("the runner starts");
    assert!(output.status.success());
    let listed = String::from_utf8(output.stdout).unwrap();
    assert_eq!(listed.lines().collect::<Vec<_>>(), KERNELS);
    for format in FORMATS {
        for filter in FILTERS {
            assert!(KERNELS.contains(&format.kernel(filter)));
        }
    }
    // The run leaves memcpy and friends unchecked (see `run`), which holds
    // only while no kernel calls them.
    for (name, source) in lpworker::video::nvidia::KERNEL_SOURCES {
        for call in ["memcpy", "memmove", "memset"] {
            assert!(
                !source.contains(call),
                "{name} calls {call}: turn the runner's intrinsic checks back on (ASAN_OPTIONS in run())"
            );
        }
    }
}

/// Every rendition the engine makes of 1080p, portrait and 4:3 sources,
/// launched both ways the NVIDIA backend launches them: the whole ladder
/// as its ladder stage plans it (video::nvidia::launch::plan_ladder), and
/// one rendition a launch as its per-rendition scaler does (one rendition,
/// or a transform stage), each with the filter the backend picks, at the
/// scaler's pitches; every output byte as the reference.
#[test]
fn kernels_on_the_cpu_match_the_reference_on_engine_renditions() {
    let sources = [
        ((1920, 1080), Format::Nv12),
        ((720, 1280), Format::P010),
        ((640, 480), Format::Nv12),
    ];
    let mut jobs = Vec::new();
    let mut launches = Vec::new();
    for (i, &((width, height), format)) in sources.iter().enumerate() {
        // Source rows padded past the picture, as a decoder's are.
        let src = Frame::source(
            format,
            width,
            height,
            64 * format.bytes_per_sample(),
            i as u32 + 1,
        );
        let sizes = engine_renditions(width, height);
        let as_u32: Vec<(u32, u32)> = sizes.iter().map(|&(w, h)| (w as u32, h as u32)).collect();
        let plan = plan_ladder((width as u32, height as u32), &as_u32);
        launches.push(plan.len());
        for launch in plan {
            let chosen: Vec<_> = launch.renditions.iter().map(|&r| sizes[r]).collect();
            let planned = ladder_jobs(format, launch.filter, &src, &chosen);
            assert_eq!(
                planned.len(),
                1,
                "the plan keeps a launch to eight renditions"
            );
            jobs.extend(planned);
        }
        for size in sizes {
            let filter = rendition_filter(
                (width as u32, height as u32),
                (size.0 as u32, size.1 as u32),
            );
            jobs.extend(ladder_jobs(format, filter, &src, &[size]));
        }
    }
    // Shrinking renditions in one launch, the source's own size in another.
    assert_eq!(launches, [2, 2, 2]);
    check("engine renditions", &jobs);
}

/// Several renditions in one launch, as `scale_ladder` takes them (the
/// bench's ladder from 1080p), each filter once, each depth once.
#[test]
fn kernels_on_the_cpu_match_the_reference_on_one_launch_ladders() {
    let jobs: Vec<_> = [
        (Format::Nv12, Filter::Bilinear),
        (Format::P010, Filter::Area),
    ]
    .into_iter()
    .flat_map(|(format, filter)| {
        let src = Frame::source(format, 1920, 1080, 64 * format.bytes_per_sample(), 9);
        ladder_jobs(format, filter, &src, &BENCH_LADDER)
    })
    .collect();
    assert!(jobs
        .iter()
        .all(|job| job.outputs.len() == BENCH_LADDER.len()));
    check("one-launch ladders", &jobs);
}

#[cfg(feature = "nvidia")]
#[test]
fn kernels_on_the_cpu_scale_the_gpu_bench_ladder() {
    assert_eq!(BENCH_LADDER, lpworker::video::nvidia::gpu_bench::LADDER);
}

/// Odd and tiny sizes (down to 1x1 outputs and 2x2 sources, the smallest
/// with chroma), upscales, pitches from tight to odd paddings, 8 renditions
/// in one launch; then a large odd source to odd rungs.
#[test]
fn kernels_on_the_cpu_match_the_reference_on_odd_sizes_and_pitches() {
    let sources = [(2, 2), (3, 3), (2, 5), (7, 2), (17, 9), (333, 199)];
    let mut jobs = Vec::new();
    let mut push = |format: Format, filter: Filter, src: &Frame, sizes: &[(usize, usize)]| {
        let bytes = format.bytes_per_sample();
        let outputs = sizes
            .iter()
            .enumerate()
            .map(|(r, &(w, h))| Frame::output(format, w, h, |row| row + r * bytes))
            .collect();
        jobs.push(Job::new(format, filter, src.clone(), outputs));
    };
    for (i, &(sw, sh)) in sources.iter().enumerate() {
        let sizes = [
            (1, 1),
            (2, 1),
            (1, 3),
            (3, 3),
            (sw, sh),
            (sw / 2 + 1, sh / 3 + 1),
            (2 * sw + 1, sh + 2),
            ((sw * 3 / 4) | 1, (sh * 5 / 4) | 1),
        ];
        for format in FORMATS {
            // Tight rows for one source in three, odd sample counts of padding for the others.
            let padding = (i % 3) * 3 * format.bytes_per_sample();
            let src = Frame::source(format, sw, sh, padding, 100 + i as u32);
            for filter in FILTERS {
                push(format, filter, &src, &sizes);
            }
        }
    }
    // Large odd sources to the odd neighbours of the ladder's rungs
    // (downscales only: a large upscale's grid costs seconds).
    let large = [
        (
            (1919, 1079),
            Format::Nv12,
            Filter::Area,
            &[(1279, 719), (853, 479), (425, 239), (3, 3), (1, 1)][..],
        ),
        (
            (959, 539),
            Format::P010,
            Filter::Bilinear,
            &[(639, 359), (481, 271), (1, 3), (2, 1)][..],
        ),
    ];
    for ((sw, sh), format, filter, rungs) in large {
        let src = Frame::source(format, sw, sh, 6 * format.bytes_per_sample(), 200);
        push(format, filter, &src, rungs);
    }
    check("odd sizes", &jobs);
}

/// The CPU run's time beside the Rust reference's for the same work (1080p
/// to the bench ladder, both filters, NV12), from the optimized build: the
/// kernels' arithmetic on one CPU core, not a GPU figure. Reported, not
/// asserted.
#[test]
fn kernels_on_the_cpu_report_their_time_beside_the_reference() {
    let src = Frame::source(Format::Nv12, 1920, 1080, 128, 7);
    let jobs: Vec<_> = FILTERS
        .iter()
        .flat_map(|&filter| ladder_jobs(Format::Nv12, filter, &src, &BENCH_LADDER))
        .collect();
    let ran = run(Build::Optimized, &jobs).unwrap_or_else(|e| panic!("{e}"));
    for (job, (got, cpu)) in jobs.iter().zip(ran.planes.iter().zip(&ran.times)) {
        let started = Instant::now();
        let expected = job.expected();
        let reference = started.elapsed();
        compare(job, got, &expected).unwrap_or_else(|e| panic!("{e}"));
        report(&format!(
            "kernels_cpu: {:?} 1080p -> 720p/480p/360p/240p NV12: kernels on the CPU (-O2) {:.1} ms, \
             Rust reference ({}) {:.1} ms",
            job.filter,
            cpu.as_secs_f64() * 1e3,
            profile(),
            reference.as_secs_f64() * 1e3
        ));
    }
}

// The checks can fail: each planted fault below must be caught.

/// A ladder pitch larger than the plane it describes: the kernel writes past
/// the plane's end, and AddressSanitizer stops the run.
#[test]
fn kernels_cpu_run_catches_a_write_past_a_plane() {
    let src = Frame::source(Format::Nv12, 64, 36, 0, 1);
    let out = Frame::output(Format::Nv12, 32, 18, |row| row);
    let mut job = Job::new(Format::Nv12, Filter::Bilinear, src, vec![out]);
    job.ladder.luma[0].pitch += 16;
    let error = run(Build::Sanitized, &[job])
        .err()
        .expect("the run must fail");
    assert!(
        error.contains("AddressSanitizer: heap-buffer-overflow")
            && error.contains("WRITE of size 1"),
        "{error}"
    );
    assert!(
        error.contains("lpw_resize_ladder"),
        "the report names the kernel: {error}"
    );
}

/// A P010 plane at an odd address: the 16-bit loads are misaligned (a fault
/// on a GPU), and UBSan stops the run.
#[test]
fn kernels_cpu_run_catches_a_misaligned_p010_plane() {
    let src = Frame::source(Format::P010, 8, 8, 0, 2);
    let out = Frame::output(Format::P010, 4, 4, device_pitch);
    let mut job = Job::new(Format::P010, Filter::Area, src, vec![out]);
    job.src_luma_offset = 1;
    let error = run(Build::Sanitized, &[job])
        .err()
        .expect("the run must fail");
    assert!(
        error.contains("runtime error: load of misaligned address"),
        "{error}"
    );
}

/// A grid one block short leaves samples unwritten, which the comparison
/// reports (the sentinel is still there).
#[test]
fn kernels_cpu_comparison_catches_a_grid_that_misses_samples() {
    let src = Frame::source(Format::Nv12, 128, 72, 0, 3);
    let out = Frame::output(Format::Nv12, 100, 50, device_pitch);
    let mut job = Job::new(Format::Nv12, Filter::Bilinear, src, vec![out]);
    job.geometry.grid.0 -= 1;
    let ran = run(Build::Sanitized, std::slice::from_ref(&job)).unwrap_or_else(|e| panic!("{e}"));
    let error =
        compare(&job, &ran.planes[0], &job.expected()).expect_err("a short grid must be caught");
    assert!(error.contains("rendition 0 luma"), "{error}");
}
