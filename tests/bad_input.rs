//! Bad-input corpus: every input format the two command-line tools read, damaged (empty,
//! truncated, bit-flipped, the wrong type, a header claiming a huge size), run through the real
//! binaries. Each case must exit with status 1 (no signal, no panic), print one `error:` line
//! that names the file and says what was expected, stay within the address-space bound, and
//! leave no output behind.
//!
//! The bad files are made here from small valid ones (the demo clip and bundle, the official
//! fixtures) at fixed offsets; only the hand-made huge-header files are committed, under
//! `tests/data/bad/<format>/` (see its README).
//!
//! The binaries are the ones `cargo test --workspace` builds beside this test
//! (`target/<profile>/cavsync`, `target/<profile>/cavsync-export`): `CARGO_BIN_EXE_*` only
//! names binaries of the test's own package, and both live in other packages.

use std::fs;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

mod bins;

/// Address space (RLIMIT_AS) each child may map: 1 GiB.
///
/// Measured with `prlimit --as` on the debug binaries (2 cores, `MALLOC_ARENA_MAX=2`): `embed`
/// and `localize` on the demo bundle and clip, `fbank` on the demo WAV and `convert` of the
/// f16 official fixture all succeed at 128 MiB; the seeds below are run under this same bound
/// and must succeed. Every huge-header case claims at least 4 GiB, so an allocation sized by a
/// header fails here instead of passing unnoticed.
const ADDRESS_SPACE_LIMIT: u64 = 1 << 30;

/// How long one command may run before it counts as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (the `cavsync-suite` package).
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The two command-line tools.
#[derive(Clone, Copy, Debug)]
enum Tool {
    Cavsync,
    Export,
}

impl Tool {
    /// The binary beside this test executable (`target/<profile>/deps/..`).
    fn path(self) -> PathBuf {
        let name = match self {
            Tool::Cavsync => "cavsync",
            Tool::Export => "cavsync-export",
        };
        bins::workspace_binary(name)
    }
}

/// Valid inputs the bad ones are made from.
#[derive(Clone, Copy, Debug)]
enum Seed {
    Wav,
    Jpeg,
    Png,
    Npy,
    Datafile,
    Annotations,
    Results,
    PthZip,
    PthLegacy,
    Safetensors,
    Config,
    Calibration,
    Video,
}

/// Paths of the valid seed files.
struct Seeds {
    dir: PathBuf,
    video: Option<PathBuf>,
}

impl Seeds {
    fn path(&self, seed: Seed) -> PathBuf {
        match seed {
            Seed::Wav => root().join("models/demo/clip/audio/s2001_00000.wav"),
            Seed::Jpeg => root().join("models/demo/clip/frames/frame_0/s2001_00000.jpg"),
            Seed::Png => self.dir.join("frame.png"),
            Seed::Npy => self.dir.join("fbank.npy"),
            Seed::Datafile => self.dir.join("datafile.json"),
            Seed::Annotations => root().join("models/demo/clip/annotations.json"),
            Seed::Results => self.dir.join("localized/localization.jsonl"),
            Seed::PthZip => root().join("tests/data/official/sync_r8_cls/checkpoint.pth"),
            Seed::PthLegacy => root().join("tests/data/bad/pth/legacy_tiny.pth"),
            Seed::Safetensors => {
                root().join("tests/data/official/sync_d64h8_r2_f16/checkpoint.safetensors")
            }
            Seed::Config => self.dir.join("config.toml"),
            Seed::Calibration => self.dir.join("calibration.toml"),
            Seed::Video => self
                .video
                .clone()
                .expect("ffmpeg cases are skipped without ffmpeg"),
        }
    }
}

/// A `.npy` file of little-endian f32 zeros with the given shape.
fn npy_f32(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({},), }}",
        dims.join(", ")
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&u16::try_from(header.len()).unwrap().to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + 4 * shape.iter().product::<usize>(), 0);
    bytes
}

/// Commands on valid inputs, run under the same bound before the cases (`{out}` is the seeds'
/// folder); the last two make the seeds of the results and calibration cases.
const VALID: &[(Tool, &str)] = &[
    (
        Tool::Cavsync,
        "embed --bundle {demo} --wav {wav} --frame 3 --image {png} --out {out}/embedded",
    ),
    (
        Tool::Cavsync,
        "embed --bundle {demo} --audio-npy {npy} --image {jpg} --out {out}/embedded-npy",
    ),
    (
        Tool::Export,
        "convert --checkpoint {ckpt} --localization {calibration} --out {out}/converted",
    ),
    (Tool::Export, "inspect --checkpoint {pth}"),
    (
        Tool::Cavsync,
        "localize --bundle {demo} --datafile {datafile} --annotations {annotations} --no-overlays --summary-only --out {out}/localized",
    ),
    (
        Tool::Cavsync,
        "calibrate --results {out}/localized/localization.jsonl",
    ),
];

/// The arguments of a command template: `{name}` of `vars`, and the valid inputs `{demo}`,
/// `{clipdir}`, `{wav}`, `{jpg}`, `{png}`, `{npy}`, `{datafile}`, `{annotations}`,
/// `{calibration}`, `{ckpt}` (safetensors) and `{pth}`.
fn expand(template: &str, seeds: &Seeds, vars: &[(&str, &Path)]) -> Vec<String> {
    let valid = [
        ("demo", root().join("models/demo/bundle")),
        ("clipdir", root().join("models/demo/clip")),
        ("wav", seeds.path(Seed::Wav)),
        ("jpg", seeds.path(Seed::Jpeg)),
        ("png", seeds.path(Seed::Png)),
        ("npy", seeds.path(Seed::Npy)),
        ("datafile", seeds.path(Seed::Datafile)),
        ("annotations", seeds.path(Seed::Annotations)),
        ("calibration", seeds.path(Seed::Calibration)),
        ("ckpt", seeds.path(Seed::Safetensors)),
        ("pth", seeds.path(Seed::PthZip)),
    ];
    let all: Vec<(&str, &Path)> = vars
        .iter()
        .copied()
        .chain(valid.iter().map(|(name, path)| (*name, path.as_path())))
        .collect();
    template
        .split_whitespace()
        .map(|arg| {
            all.iter().fold(arg.to_string(), |arg, (name, path)| {
                arg.replace(&format!("{{{name}}}"), &path.display().to_string())
            })
        })
        .collect()
}

/// Write the generated seeds into `dir`, and check that the valid inputs pass under the bound.
fn make_seeds(dir: &Path) -> Seeds {
    let frame =
        image::open(root().join("models/demo/clip/frames/frame_0/s2001_00000.jpg")).unwrap();
    frame.save(dir.join("frame.png")).unwrap();
    fs::write(dir.join("fbank.npy"), npy_f32(&[1, 64, 128])).unwrap();
    let datafile = serde_json::json!({"data": [{
        "labels": "whistle,drum",
        "video_id": "s2001_00000",
        "video_path": root().join("models/demo/clip/frames"),
        "wav": root().join("models/demo/clip/audio/s2001_00000.wav"),
    }]});
    fs::write(dir.join("datafile.json"), datafile.to_string()).unwrap();
    fs::write(
        dir.join("config.toml"),
        "threads = 1\n\n[camera]\nfps = 15\n\n[tracker]\nhold = 10\n",
    )
    .unwrap();
    fs::write(
        dir.join("calibration.toml"),
        "active_threshold = 0.5\ncalibration = \"by hand\"\n\n[activity]\nweights = [1.0, 1.0, 1.0]\nbias = -1.0\n",
    )
    .unwrap();
    let video = ffmpeg_available().then(|| {
        let video = dir.join("clip.mp4");
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc=size=64x64:rate=8:duration=2")
            .args(["-f", "lavfi", "-i", "sine=frequency=440:duration=2"])
            .args(["-pix_fmt", "yuv420p", "-shortest"])
            .arg(&video)
            .status()
            .unwrap();
        assert!(status.success(), "ffmpeg could not make the seed video");
        video
    });
    let seeds = Seeds {
        dir: dir.to_path_buf(),
        video,
    };
    for (tool, template) in VALID {
        let args = expand(template, &seeds, &[("out", dir)]);
        let run = run_bounded(*tool, &args, &dir.join("logs"));
        assert!(
            run.code == Some(0),
            "valid input failed under the {ADDRESS_SPACE_LIMIT}-byte bound: {tool:?} {template}\n{}",
            run.stderr
        );
    }
    seeds
}

fn ffmpeg_available() -> bool {
    Command::new("ffmpeg")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How a case's bad file is made, in the case's own folder.
#[derive(Clone, Copy)]
enum Make {
    /// An empty file of this name.
    Empty(&'static str),
    /// The seed's first bytes (a negative count keeps all but that many), saved under this name.
    Truncate(Seed, isize, &'static str),
    /// The seed with these byte offsets inverted (negative: from the end), saved under this name.
    Flip(Seed, &'static [isize], &'static str),
    /// The seed's bytes unchanged, saved under this name (a file of the wrong type).
    AsIs(Seed, &'static str),
    /// A file of this name with this text.
    Text(&'static str, &'static str),
    /// The seed with the first occurrence of one string replaced, saved under this name.
    Replace(Seed, &'static str, &'static str, &'static str),
    /// A committed file under `tests/data/bad/`.
    Committed(&'static str),
    /// A copy of the demo bundle at `bundle/`, damaged by the function; the file it returns is the one the error must name.
    Bundle(fn(&Path) -> PathBuf),
    /// Files written by the function into the case's folder; the file it returns is the one the error must name.
    Custom(fn(&Seeds, &Path) -> PathBuf),
}

/// Offset `i` into `len` bytes, negative counting from the end.
fn offset(i: isize, len: usize) -> usize {
    if i < 0 {
        len - i.unsigned_abs()
    } else {
        i as usize
    }
}

impl Make {
    /// Write the bad file into `dir`; returns its path.
    fn make(self, seeds: &Seeds, dir: &Path) -> PathBuf {
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(name);
            fs::write(&path, bytes).unwrap();
            path
        };
        match self {
            Make::Empty(name) => write(name, b""),
            Make::Truncate(seed, keep, name) => {
                let bytes = fs::read(seeds.path(seed)).unwrap();
                write(name, &bytes[..offset(keep, bytes.len())])
            }
            Make::Flip(seed, offsets, name) => {
                let mut bytes = fs::read(seeds.path(seed)).unwrap();
                let len = bytes.len();
                for &i in offsets {
                    bytes[offset(i, len)] ^= 0xFF;
                }
                write(name, &bytes)
            }
            Make::AsIs(seed, name) => write(name, &fs::read(seeds.path(seed)).unwrap()),
            Make::Text(name, text) => write(name, text.as_bytes()),
            Make::Replace(seed, from, to, name) => {
                let mut bytes = fs::read(seeds.path(seed)).unwrap();
                let at = bytes
                    .windows(from.len())
                    .position(|w| w == from.as_bytes())
                    .unwrap_or_else(|| panic!("{seed:?} has no `{from}`"));
                bytes.splice(at..at + from.len(), to.bytes());
                write(name, &bytes)
            }
            Make::Committed(rel) => {
                let src = root().join("tests/data/bad").join(rel);
                write(
                    Path::new(rel).file_name().unwrap().to_str().unwrap(),
                    &fs::read(src).unwrap(),
                )
            }
            Make::Bundle(damage) => {
                let bundle = dir.join("bundle");
                fs::create_dir(&bundle).unwrap();
                for entry in fs::read_dir(root().join("models/demo/bundle")).unwrap() {
                    let entry = entry.unwrap();
                    fs::copy(entry.path(), bundle.join(entry.file_name())).unwrap();
                }
                damage(&bundle)
            }
            Make::Custom(make) => make(seeds, dir),
        }
    }
}

/// Replace `from` by `to` in the bundle's manifest; returns the manifest's path.
fn edit_manifest(bundle: &Path, from: &str, to: &str) -> PathBuf {
    let path = bundle.join("manifest.toml");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "demo manifest has no `{from}`");
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
    path
}

/// Overwrite the bundle's audio graph with `bytes` and record their hash in the manifest, so
/// that the graph itself (not the hash check) is what the runtime has to refuse.
fn replace_audio_graph(bundle: &Path, bytes: &[u8]) -> PathBuf {
    let graph = bundle.join("audio.onnx");
    let old = format!("{:x}", Sha256::digest(fs::read(&graph).unwrap()));
    fs::write(&graph, bytes).unwrap();
    edit_manifest(bundle, &old, &format!("{:x}", Sha256::digest(bytes)));
    graph
}

/// Damages of a bundle copy; each returns the file the error must name.
fn manifest_empty(bundle: &Path) -> PathBuf {
    let path = bundle.join("manifest.toml");
    fs::write(&path, "").unwrap();
    path
}

fn manifest_cut(bundle: &Path) -> PathBuf {
    let path = bundle.join("manifest.toml");
    let text = fs::read(&path).unwrap();
    fs::write(&path, &text[..400]).unwrap();
    path
}

fn manifest_is_json(bundle: &Path) -> PathBuf {
    let path = bundle.join("manifest.toml");
    fs::write(&path, r#"{"format_version": 1}"#).unwrap();
    path
}

fn huge_target_length(bundle: &Path) -> PathBuf {
    edit_manifest(
        bundle,
        "target_length = 64",
        "target_length = 1099511627776",
    );
    edit_manifest(
        bundle,
        "    1,\n    64,\n    128,",
        "    1,\n    1099511627776,\n    128,",
    )
}

fn huge_image_size(bundle: &Path) -> PathBuf {
    edit_manifest(bundle, "size = 224", "size = 1048576");
    edit_manifest(bundle, "    224,\n    224,", "    1048576,\n    1048576,")
}

/// 2^40 audio tokens on a 2^20 x 2^20 grid: consistent in the manifest, refused against the graph.
fn huge_tokens(bundle: &Path) -> PathBuf {
    edit_manifest(bundle, "tokens = 32", "tokens = 1099511627776");
    edit_manifest(bundle, "    8,\n    4,", "    1048576,\n    1048576,");
    bundle.join("audio.onnx")
}

fn graph_hash_mismatch(bundle: &Path) -> PathBuf {
    let path = bundle.join("visual.onnx");
    let mut graph = fs::read(&path).unwrap();
    graph[1000] ^= 0xFF;
    fs::write(&path, graph).unwrap();
    path
}

fn graph_missing(bundle: &Path) -> PathBuf {
    let path = bundle.join("audio.onnx");
    fs::remove_file(&path).unwrap();
    path
}

fn graph_cut(bundle: &Path) -> PathBuf {
    let graph = fs::read(bundle.join("audio.onnx")).unwrap();
    replace_audio_graph(bundle, &graph[..graph.len() / 2])
}

fn graph_flipped(bundle: &Path) -> PathBuf {
    let mut graph = fs::read(bundle.join("audio.onnx")).unwrap();
    for i in [0, 1, 2, 3, 40, 41] {
        graph[i] ^= 0xFF;
    }
    replace_audio_graph(bundle, &graph)
}

fn graph_is_jpeg(bundle: &Path) -> PathBuf {
    let jpeg = fs::read(root().join("models/demo/clip/frames/frame_0/s2001_00000.jpg")).unwrap();
    replace_audio_graph(bundle, &jpeg)
}

/// Datafiles in the case's folder whose clip is damaged; each returns the file the error must name.
fn datafile_wav_missing(seeds: &Seeds, dir: &Path) -> PathBuf {
    let wav = dir.join("absent.wav");
    datafile_in(seeds, dir, &wav, &fs::read(seeds.path(Seed::Jpeg)).unwrap());
    wav
}

fn datafile_wav_is_png(seeds: &Seeds, dir: &Path) -> PathBuf {
    let wav = dir.join("a.wav");
    fs::copy(seeds.path(Seed::Png), &wav).unwrap();
    datafile_in(seeds, dir, &wav, &fs::read(seeds.path(Seed::Jpeg)).unwrap());
    wav
}

fn datafile_frame_is_wav(seeds: &Seeds, dir: &Path) -> PathBuf {
    let wav = seeds.path(Seed::Wav);
    datafile_in(seeds, dir, &wav, &fs::read(&wav).unwrap());
    dir.join("frames/frame_5/c.jpg")
}

/// The demo frame with its SOF0 header claiming 65000 x 65000 pixels.
fn jpeg_65000x65000(seeds: &Seeds, dir: &Path) -> PathBuf {
    let mut jpeg = fs::read(seeds.path(Seed::Jpeg)).unwrap();
    assert_eq!(jpeg[20..22], [0xFF, 0xC0], "the demo frame's SOF0 moved");
    jpeg[25..29].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    let path = dir.join("a.jpg");
    fs::write(&path, jpeg).unwrap();
    path
}

/// A clip folder `dir/clip` with frames 0 to 3; returns the folder.
fn clip_folder(seeds: &Seeds, dir: &Path) -> PathBuf {
    let clip = dir.join("clip");
    fs::create_dir_all(clip.join("frames")).unwrap();
    for k in 0..4 {
        fs::copy(seeds.path(Seed::Jpeg), clip.join(format!("frames/{k}.jpg"))).unwrap();
    }
    fs::copy(seeds.path(Seed::Wav), clip.join("audio.wav")).unwrap();
    clip
}

fn clip_audio_is_png(seeds: &Seeds, dir: &Path) -> PathBuf {
    let audio = clip_folder(seeds, dir).join("audio.wav");
    fs::copy(seeds.path(Seed::Png), &audio).unwrap();
    audio
}

fn clip_frame_cut(seeds: &Seeds, dir: &Path) -> PathBuf {
    let frame = clip_folder(seeds, dir).join("frames/2.jpg");
    let jpeg = fs::read(&frame).unwrap();
    fs::write(&frame, &jpeg[..jpeg.len() / 2]).unwrap();
    frame
}

/// A datafile in `dir` whose one clip has its audio at `wav` and its frames under `dir/frames`
/// (copies of the demo frame, frame 5 replaced by `frame5`); returns the datafile's path.
fn datafile_in(seeds: &Seeds, dir: &Path, wav: &Path, frame5: &[u8]) -> PathBuf {
    let jpeg = fs::read(seeds.path(Seed::Jpeg)).unwrap();
    for k in 0..16 {
        let folder = dir.join(format!("frames/frame_{k}"));
        fs::create_dir_all(&folder).unwrap();
        fs::write(folder.join("c.jpg"), if k == 5 { frame5 } else { &jpeg }).unwrap();
    }
    let datafile = serde_json::json!({"data": [{
        "video_id": "c", "video_path": dir.join("frames"), "wav": wav,
    }]});
    let path = dir.join("datafile.json");
    fs::write(&path, datafile.to_string()).unwrap();
    path
}

/// A bad input, the command that reads it, and what its error must say.
struct Case {
    /// Unique name (the case's folder).
    name: &'static str,
    tool: Tool,
    /// Arguments: `{bad}` is the bad file, `{bundle}` its bundle folder (else the demo bundle),
    /// `{out}` the output path that must not exist afterwards, `{case}` the case's folder, and
    /// the valid inputs of [`expand`].
    args: &'static str,
    make: Make,
    /// Substring the error line must contain (besides the bad file's path).
    expect: &'static str,
}

/// The outcome of one command.
struct Run {
    code: Option<i32>,
    signal: Option<i32>,
    stderr: String,
}

/// Run `tool` with `args` under [`ADDRESS_SPACE_LIMIT`], stdout and stderr kept in `logs`.
fn run_bounded(tool: Tool, args: &[String], logs: &Path) -> Run {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    fs::create_dir_all(logs).unwrap();
    let log = logs.join(format!("{}.stderr", NEXT.fetch_add(1, Ordering::Relaxed)));
    let mut command = Command::new(tool.path());
    command
        .args(args)
        .current_dir(root())
        .env("MALLOC_ARENA_MAX", "2")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: ADDRESS_SPACE_LIMIT,
                rlim_max: ADDRESS_SPACE_LIMIT,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > CASE_TIMEOUT {
            child.kill().unwrap();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Run {
        code: status.code(),
        signal: status.signal(),
        stderr,
    }
}

/// What went wrong in one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Panic,
    Abort,
    SilentSuccess,
    Other,
}

/// Make the case's file, run its command and check the outcome; `Err` says what went wrong.
fn check(case: &Case, seeds: &Seeds, work: &Path) -> Result<(), (Failure, String)> {
    let dir = work.join(case.name);
    fs::create_dir(&dir).unwrap();
    let bad = case.make.make(seeds, &dir);
    let before: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let out = dir.join("out");
    let bundle = match case.make {
        Make::Bundle(_) => dir.join("bundle"),
        _ => root().join("models/demo/bundle"),
    };
    let args = expand(
        case.args,
        seeds,
        &[
            ("bad", &bad),
            ("bundle", &bundle),
            ("out", &out),
            ("case", &dir),
        ],
    );
    let run = run_bounded(case.tool, &args, &work.join("logs").join(case.name));
    let fail = |kind, what: &str| {
        Err((
            kind,
            format!(
                "{}: {what}\n  command: {:?} {}\n  exit: {:?}, signal: {:?}\n  stderr: {}",
                case.name,
                case.tool,
                args.join(" "),
                run.code,
                run.signal,
                run.stderr.trim_end().replace('\n', "\n          ")
            ),
        ))
    };
    if run.stderr.contains("panicked") || run.code == Some(101) {
        return fail(Failure::Panic, "panicked");
    }
    if run.signal.is_some() {
        return fail(
            Failure::Abort,
            "killed by a signal (abort, crash or timeout)",
        );
    }
    if run.code == Some(0) {
        return fail(Failure::SilentSuccess, "succeeded on a bad input");
    }
    if run.code != Some(1) {
        return fail(Failure::Other, "exit status is not 1");
    }
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    let [error] = errors[..] else {
        return fail(Failure::Other, "expected exactly one `error:` line");
    };
    if !error.contains(&bad.display().to_string()) {
        return fail(Failure::Other, "the error does not name the bad file");
    }
    if !error.contains(case.expect) {
        return fail(
            Failure::Other,
            &format!("the error does not say `{}`", case.expect),
        );
    }
    let after: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    if out.exists() || after.len() != before.len() {
        return fail(Failure::Other, "left output behind");
    }
    Ok(())
}

/// Checkpoint commands: `inspect` reads, `convert` reads and would write a bundle.
const INSPECT: &str = "inspect --checkpoint {bad}";
const CONVERT: &str = "convert --checkpoint {bad} --out {out}";
const FBANK: &str = "fbank --wav {bad} --out {out}";
const EMBED_WAV: &str = "embed --bundle {demo} --wav {bad} --frame 0 --image {jpg} --out {out}";
const EMBED_IMAGE: &str = "embed --bundle {demo} --wav {wav} --frame 0 --image {bad} --out {out}";
const EMBED_NPY: &str = "embed --bundle {demo} --audio-npy {bad} --image {jpg} --out {out}";
const EMBED_IMAGE_NPY: &str =
    "embed --bundle {demo} --wav {wav} --frame 0 --image-npy {bad} --out {out}";
const INFO: &str = "info --bundle {bundle}";
const EMBED_BUNDLE: &str =
    "embed --bundle {bundle} --wav {wav} --frame 0 --image {jpg} --out {out}";
const DATAFILE: &str = "localize --bundle {demo} --datafile {bad} --no-overlays --out {out}";
const ANNOTATIONS: &str =
    "localize --bundle {demo} --datafile {datafile} --annotations {bad} --no-overlays --out {out}";
const CONFIG: &str = "run --bundle {demo} --config {bad} --audio ffmpeg:none --video ffmpeg:none --duration 1 --summary {out}";
const CALIBRATION: &str = "convert --checkpoint {ckpt} --localization {bad} --out {out}";
const RESULTS: &str = "calibrate --results {bad} --out {out}";
const DATAFILE_IN_CASE: &str =
    "localize --bundle {demo} --datafile {case}/datafile.json --no-overlays --out {out}";
const TRAIN: &str = "train --data {clipdir} --config {bad} --out {out}";
const DISTILL: &str = "distill --teacher {demo} --data {clipdir} --config {bad} --out {out}";
const EXPORT_EMBED_WAV: &str =
    "embed --checkpoint {ckpt} --wav {bad} --frame 0 --image {jpg} --out {out}";
const EXPORT_EMBED_IMAGE: &str =
    "embed --checkpoint {ckpt} --wav {wav} --frame 0 --image {bad} --out {out}";
const EXPORT_EMBED_NPY: &str =
    "embed --checkpoint {ckpt} --audio-npy {bad} --image {jpg} --out {out}";
const CLIP: &str = "localize --bundle {demo} --clip {case}/clip --no-overlays --out {out}";
const VIDEO: &str = "localize --bundle {demo} --video {bad} --no-overlays --out {out}";

use Make::*;
use Tool::{Cavsync as C, Export as X};

#[rustfmt::skip]
const CASES: &[Case] = &[
    // WAV (fbank; embed --wav).
    Case { name: "wav_empty", tool: C, args: FBANK, make: Empty("a.wav"), expect: "the file ends early" },
    Case { name: "wav_header_cut", tool: C, args: FBANK, make: Truncate(Seed::Wav, 30, "a.wav"), expect: "the file ends early" },
    Case { name: "wav_data_cut", tool: C, args: FBANK, make: Truncate(Seed::Wav, 1001, "a.wav"), expect: "data chunk claims" },
    Case { name: "wav_riff_flipped", tool: C, args: FBANK, make: Flip(Seed::Wav, &[0], "a.wav"), expect: "expected a RIFF/WAVE file" },
    Case { name: "wav_format_tag_flipped", tool: C, args: FBANK, make: Flip(Seed::Wav, &[20], "a.wav"), expect: "expected 16/24/32-bit PCM or 32-bit float" },
    Case { name: "wav_channels_flipped", tool: C, args: FBANK, make: Flip(Seed::Wav, &[22, 23], "a.wav"), expect: "expected a RIFF/WAVE file" },
    Case { name: "wav_rate_flipped", tool: C, args: FBANK, make: Flip(Seed::Wav, &[24, 25, 26, 27], "a.wav"), expect: "inconsistent fmt chunk" },
    Case { name: "wav_is_png", tool: C, args: EMBED_WAV, make: AsIs(Seed::Png, "a.wav"), expect: "expected a RIFF/WAVE file" },
    Case { name: "wav_is_json", tool: C, args: FBANK, make: Text("a.wav", "{\"data\": []}"), expect: "expected a RIFF/WAVE file" },
    Case { name: "wav_claims_4gb", tool: C, args: FBANK, make: Committed("wav/claims_4gb.wav"), expect: "data chunk claims 4294967280 bytes" },
    Case { name: "wav_claims_4gb_float", tool: C, args: EMBED_WAV, make: Committed("wav/claims_4gb_float_stereo.wav"), expect: "data chunk claims 4294967288 bytes" },
    Case { name: "wav_claims_4gb_export", tool: X, args: EXPORT_EMBED_WAV, make: Committed("wav/claims_4gb.wav"), expect: "data chunk claims 4294967280 bytes" },
    // JPEG and PNG frames (embed --image).
    Case { name: "jpeg_empty", tool: C, args: EMBED_IMAGE, make: Empty("a.jpg"), expect: "expected a JPEG or PNG file" },
    Case { name: "jpeg_cut", tool: C, args: EMBED_IMAGE, make: Truncate(Seed::Jpeg, 600, "a.jpg"), expect: "expected a JPEG or PNG file" },
    Case { name: "jpeg_scan_cut", tool: C, args: EMBED_IMAGE, make: Truncate(Seed::Jpeg, -300, "a.jpg"), expect: "ends before its end-of-image marker" },
    Case { name: "jpeg_soi_flipped", tool: C, args: EMBED_IMAGE, make: Flip(Seed::Jpeg, &[1], "a.jpg"), expect: "expected a JPEG or PNG file" },
    Case { name: "jpeg_is_wav", tool: C, args: EMBED_IMAGE, make: AsIs(Seed::Wav, "a.jpg"), expect: "expected a JPEG or PNG file" },
    Case { name: "jpeg_65000x65000", tool: C, args: EMBED_IMAGE, make: Custom(jpeg_65000x65000), expect: "header claims 65000 x 65000 pixels" },
    Case { name: "png_empty", tool: C, args: EMBED_IMAGE, make: Empty("a.png"), expect: "expected a JPEG or PNG file" },
    Case { name: "png_cut", tool: C, args: EMBED_IMAGE, make: Truncate(Seed::Png, 2000, "a.png"), expect: "expected a JPEG or PNG file" },
    Case { name: "png_ihdr_flipped", tool: C, args: EMBED_IMAGE, make: Flip(Seed::Png, &[18], "a.png"), expect: "expected a JPEG or PNG file" },
    Case { name: "png_is_json", tool: C, args: EMBED_IMAGE, make: AsIs(Seed::Datafile, "a.png"), expect: "expected a JPEG or PNG file" },
    Case { name: "png_60000x60000", tool: C, args: EMBED_IMAGE, make: Committed("png/60000x60000.png"), expect: "header claims 60000 x 60000 pixels" },
    Case { name: "png_60000x60000_export", tool: X, args: EXPORT_EMBED_IMAGE, make: Committed("png/60000x60000.png"), expect: "header claims 60000 x 60000 pixels" },
    // .npy (embed --audio-npy / --image-npy).
    Case { name: "npy_empty", tool: C, args: EMBED_NPY, make: Empty("a.npy"), expect: "not a float32 .npy array" },
    Case { name: "npy_cut", tool: C, args: EMBED_NPY, make: Truncate(Seed::Npy, 5000, "a.npy"), expect: "header claims shape [1, 64, 128] but only" },
    Case { name: "npy_magic_flipped", tool: C, args: EMBED_NPY, make: Flip(Seed::Npy, &[1], "a.npy"), expect: "not a float32 .npy array" },
    Case { name: "npy_is_png", tool: C, args: EMBED_IMAGE_NPY, make: AsIs(Seed::Png, "a.npy"), expect: "not a float32 .npy array" },
    Case { name: "npy_f64", tool: C, args: EMBED_NPY, make: Replace(Seed::Npy, "<f4", "<f8", "a.npy"), expect: "not a float32 .npy array" },
    Case { name: "npy_wrong_shape", tool: C, args: EMBED_IMAGE_NPY, make: AsIs(Seed::Npy, "a.npy"), expect: "expected [batch, 3, 224, 224]" },
    Case { name: "npy_claims_2pow40", tool: C, args: EMBED_NPY, make: Committed("npy/claims_2pow40.npy"), expect: "header claims shape [1024, 1024, 1048576]" },
    Case { name: "npy_claims_2pow40_export", tool: X, args: EXPORT_EMBED_NPY, make: Committed("npy/claims_2pow40.npy"), expect: "header claims shape [1024, 1024, 1048576]" },
    // Bundles: the manifest and the graphs it names.
    Case { name: "manifest_empty", tool: C, args: INFO, make: Bundle(manifest_empty), expect: "missing field `format_version`" },
    Case { name: "manifest_cut", tool: C, args: INFO, make: Bundle(manifest_cut), expect: "invalid manifest" },
    Case { name: "manifest_is_json", tool: C, args: INFO, make: Bundle(manifest_is_json), expect: "invalid manifest" },
    Case { name: "manifest_2pow40_input", tool: C, args: EMBED_BUNDLE, make: Bundle(|b| edit_manifest(b, "    1,\n    64,\n    128,", "    1,\n    1048576,\n    1048576,")), expect: "field `audio.input_shape`: expected [1, 64, 128]" },
    Case { name: "manifest_huge_target_length", tool: C, args: EMBED_BUNDLE, make: Bundle(huge_target_length), expect: "field `audio_preprocessing.target_length`" },
    Case { name: "manifest_huge_image_size", tool: C, args: EMBED_BUNDLE, make: Bundle(huge_image_size), expect: "field `image_preprocessing.size`" },
    Case { name: "manifest_wrong_type", tool: C, args: INFO, make: Bundle(|b| edit_manifest(b, "dim = 128", "dim = \"128\"")), expect: "expected usize" },
    Case { name: "manifest_version_99", tool: C, args: INFO, make: Bundle(|b| edit_manifest(b, "format_version = 1", "format_version = 99")), expect: "this runtime reads version 1" },
    Case { name: "manifest_grid_overflow", tool: C, args: INFO, make: Bundle(|b| edit_manifest(b, "    8,\n    4,", "    1099511627776,\n    1099511627776,")), expect: "field `audio.grid`" },
    Case { name: "manifest_huge_tokens", tool: C, args: EMBED_BUNDLE, make: Bundle(huge_tokens), expect: "manifest implies [1, 1099511627776, 128]" },
    Case { name: "graph_hash_mismatch", tool: C, args: INFO, make: Bundle(graph_hash_mismatch), expect: "does not match the manifest's" },
    Case { name: "graph_missing", tool: C, args: INFO, make: Bundle(graph_missing), expect: "cannot read" },
    Case { name: "graph_empty", tool: C, args: INFO, make: Bundle(|b| replace_audio_graph(b, b"")), expect: "cannot load ONNX model" },
    Case { name: "graph_cut", tool: C, args: INFO, make: Bundle(graph_cut), expect: "cannot load ONNX model" },
    Case { name: "graph_flipped", tool: C, args: INFO, make: Bundle(graph_flipped), expect: "cannot load ONNX model" },
    Case { name: "graph_is_jpeg", tool: C, args: INFO, make: Bundle(graph_is_jpeg), expect: "cannot load ONNX model" },
    // Datafile JSON (localize --datafile).
    Case { name: "datafile_empty", tool: C, args: DATAFILE, make: Empty("datafile.json"), expect: "malformed datafile JSON" },
    Case { name: "datafile_cut", tool: C, args: DATAFILE, make: Truncate(Seed::Datafile, 40, "datafile.json"), expect: "malformed datafile JSON" },
    Case { name: "datafile_brace_flipped", tool: C, args: DATAFILE, make: Flip(Seed::Datafile, &[0], "datafile.json"), expect: "cannot read the datafile" },
    Case { name: "datafile_is_toml", tool: C, args: DATAFILE, make: AsIs(Seed::Config, "datafile.json"), expect: "malformed datafile JSON" },
    Case { name: "datafile_data_not_list", tool: C, args: DATAFILE, make: Text("datafile.json", "{\"data\": 5}"), expect: "expected a top-level object with a \"data\" array" },
    Case { name: "datafile_wav_missing", tool: C, args: DATAFILE_IN_CASE, make: Custom(datafile_wav_missing), expect: "No such file" },
    Case { name: "datafile_wav_is_png", tool: C, args: DATAFILE_IN_CASE, make: Custom(datafile_wav_is_png), expect: "expected a RIFF/WAVE file" },
    Case { name: "datafile_frame_is_wav", tool: C, args: DATAFILE_IN_CASE, make: Custom(datafile_frame_is_wav), expect: "expected a JPEG or PNG file" },
    // Clip folders (localize --clip: frames/*.jpg|png and audio.wav).
    Case { name: "clip_audio_is_png", tool: C, args: CLIP, make: Custom(clip_audio_is_png), expect: "expected a RIFF/WAVE file" },
    Case { name: "clip_frame_cut", tool: C, args: CLIP, make: Custom(clip_frame_cut), expect: "ends before its end-of-image marker" },
    // Annotations JSON (localize --annotations).
    Case { name: "annotations_empty", tool: C, args: ANNOTATIONS, make: Empty("annotations.json"), expect: "malformed annotations" },
    Case { name: "annotations_cut", tool: C, args: ANNOTATIONS, make: Truncate(Seed::Annotations, 300, "annotations.json"), expect: "malformed annotations" },
    Case { name: "annotations_is_toml", tool: C, args: ANNOTATIONS, make: AsIs(Seed::Config, "annotations.json"), expect: "malformed annotations" },
    Case { name: "annotations_wrong_format", tool: C, args: ANNOTATIONS, make: Replace(Seed::Annotations, "cavsync-annotations-1", "cavsync-annotations-9", "annotations.json"), expect: "expected \"cavsync-annotations-1\"" },
    Case { name: "annotations_bbox_wrong_type", tool: C, args: ANNOTATIONS, make: Replace(Seed::Annotations, "\"bbox\":[", "\"bbox\":[\"x\",", "annotations.json"), expect: "expected f32" },
    Case { name: "annotations_bbox_nan", tool: C, args: ANNOTATIONS, make: Replace(Seed::Annotations, "\"bbox\":[0.2721011", "\"bbox\":[1e999", "annotations.json"), expect: "malformed annotations" },
    Case { name: "annotations_bbox_outside", tool: C, args: ANNOTATIONS, make: Replace(Seed::Annotations, "\"bbox\":[0.2721011", "\"bbox\":[2.5", "annotations.json"), expect: "is not [x1, y1, x2, y2] within [0, 1]" },
    // Run configuration TOML (run --config).
    Case { name: "config_is_json", tool: C, args: CONFIG, make: Text("config.toml", "{\"threads\": 1}"), expect: "invalid board profile" },
    Case { name: "config_is_png", tool: C, args: CONFIG, make: AsIs(Seed::Png, "config.toml"), expect: "expected a UTF-8 TOML file" },
    Case { name: "config_cut", tool: C, args: CONFIG, make: Truncate(Seed::Config, 24, "config.toml"), expect: "invalid board profile" },
    Case { name: "config_unknown_field", tool: C, args: CONFIG, make: Text("config.toml", "[camera]\nzoom = 2\n"), expect: "unknown field `zoom`" },
    Case { name: "config_wrong_type", tool: C, args: CONFIG, make: Text("config.toml", "threads = \"two\"\n"), expect: "expected u32 in `threads`" },
    Case { name: "config_huge_camera", tool: C, args: CONFIG, make: Text("config.toml", "[camera]\nwidth = 60000\nheight = 60000\n"), expect: "field `camera`: 60000x60000 is larger" },
    Case { name: "config_huge_microphone", tool: C, args: CONFIG, make: Text("config.toml", "[microphone]\nsample_rate = 4000000000\nchannels = 65535\n"), expect: "field `microphone.sample_rate`" },
    Case { name: "board_is_a_file", tool: C, args: "run --board {bad} --bundle {demo} --duration 1 --summary {out}", make: AsIs(Seed::Config, "board.toml"), expect: "no bundled board profile named" },
    // Training and distillation configuration TOML (train --config, distill --config).
    Case { name: "train_config_is_json", tool: X, args: TRAIN, make: AsIs(Seed::Datafile, "train.toml"), expect: "expected key" },
    Case { name: "train_config_unknown_field", tool: X, args: TRAIN, make: Text("train.toml", "lr = 1\n"), expect: "unknown field `lr`" },
    Case { name: "train_config_huge_dim", tool: X, args: TRAIN, make: Text("train.toml", "[model]\ndim = 1099511627776\n"), expect: "model.dim = 1099511627776; expected at most 4096" },
    Case { name: "train_config_huge_batch", tool: X, args: TRAIN, make: Text("train.toml", "[optim]\nbatch_size = 1099511627776\n"), expect: "optim.batch_size = 1099511627776; expected at most 4096" },
    Case { name: "distill_config_huge_student", tool: X, args: DISTILL, make: Text("distill.toml", "[student]\ndim = 1099511627776\ndepth = 2\njoint_depth = 1\nregisters = 2\nmlp_ratio = 4\nimage_size = 224\n"), expect: "student.dim = 1099511627776; expected at most 4096" },
    // Activity calibration TOML (convert --localization).
    Case { name: "calibration_empty", tool: X, args: CALIBRATION, make: Empty("calibration.toml"), expect: "missing field `active_threshold`" },
    Case { name: "calibration_cut", tool: X, args: CALIBRATION, make: Truncate(Seed::Calibration, 30, "calibration.toml"), expect: "not an activity calibration" },
    Case { name: "calibration_is_json", tool: X, args: CALIBRATION, make: AsIs(Seed::Datafile, "calibration.toml"), expect: "not an activity calibration" },
    Case { name: "calibration_nan", tool: X, args: CALIBRATION, make: Replace(Seed::Calibration, "bias = -1.0", "bias = nan", "calibration.toml"), expect: "expected finite weights and bias" },
    // localize results JSON lines (calibrate --results).
    Case { name: "results_empty", tool: C, args: RESULTS, make: Empty("localization.jsonl"), expect: "calibration needs both sounding and silent frames" },
    Case { name: "results_cut", tool: C, args: RESULTS, make: Truncate(Seed::Results, 100, "localization.jsonl"), expect: "not a localization record" },
    Case { name: "results_is_png", tool: C, args: RESULTS, make: AsIs(Seed::Png, "localization.jsonl"), expect: "expected UTF-8 JSON lines" },
    // Checkpoints (inspect, convert).
    Case { name: "pth_empty", tool: X, args: INSPECT, make: Empty("a.pth"), expect: "not a readable PyTorch or safetensors checkpoint" },
    Case { name: "pth_zip_cut", tool: X, args: INSPECT, make: Truncate(Seed::PthZip, 100_000, "a.pth"), expect: "Could not find EOCD" },
    Case { name: "pth_zip_directory_flipped", tool: X, args: CONVERT, make: Flip(Seed::PthZip, &[-22, -21], "a.pth"), expect: "Could not find EOCD" },
    Case { name: "pth_zip_data_flipped", tool: X, args: INSPECT, make: Flip(Seed::PthZip, &[100, 101, 102], "a.pth"), expect: "Invalid checksum" },
    Case { name: "pth_is_png", tool: X, args: INSPECT, make: AsIs(Seed::Png, "a.pth"), expect: "not a readable PyTorch or safetensors checkpoint" },
    Case { name: "pth_is_json", tool: X, args: CONVERT, make: AsIs(Seed::Datafile, "a.pth"), expect: "not a readable PyTorch or safetensors checkpoint" },
    Case { name: "pth_legacy_cut", tool: X, args: INSPECT, make: Truncate(Seed::PthLegacy, -20, "a.pth"), expect: "extends beyond the end of the file" },
    Case { name: "pth_legacy_flipped", tool: X, args: INSPECT, make: Flip(Seed::PthLegacy, &[2], "a.pth"), expect: "not a readable PyTorch or safetensors checkpoint" },
    Case { name: "pth_legacy_claims_2pow40", tool: X, args: CONVERT, make: Committed("pth/legacy_claims_2pow40.pth"), expect: "would materialize 4398046511104 bytes" },
    Case { name: "safetensors_empty", tool: X, args: INSPECT, make: Empty("a.safetensors"), expect: "not a readable PyTorch or safetensors checkpoint" },
    Case { name: "safetensors_cut", tool: X, args: INSPECT, make: Truncate(Seed::Safetensors, 50_000, "a.safetensors"), expect: "incomplete metadata" },
    Case { name: "safetensors_header_flipped", tool: X, args: CONVERT, make: Flip(Seed::Safetensors, &[60], "a.safetensors"), expect: "invalid UTF-8 in header" },
    Case { name: "safetensors_is_png", tool: X, args: INSPECT, make: AsIs(Seed::Png, "a.safetensors"), expect: "not a readable PyTorch or safetensors checkpoint" },
    Case { name: "safetensors_header_len_4gb", tool: X, args: INSPECT, make: Committed("safetensors/header_len_4gb.safetensors"), expect: "header too large" },
    Case { name: "safetensors_absurd_offsets", tool: X, args: INSPECT, make: Committed("safetensors/absurd_offsets.safetensors"), expect: "invalid shape, data type, or offset" },
    Case { name: "safetensors_absurd_shape", tool: X, args: CONVERT, make: Committed("safetensors/absurd_shape.safetensors"), expect: "invalid shape, data type, or offset" },
    Case { name: "safetensors_shape_overflow", tool: X, args: INSPECT, make: Committed("safetensors/shape_overflow.safetensors"), expect: "overflow computing buffer size" },
    // Video files read through ffmpeg (localize --video).
    Case { name: "video_empty", tool: C, args: VIDEO, make: Empty("clip.mp4"), expect: "ffmpeg could not extract the audio track" },
    Case { name: "video_cut", tool: C, args: VIDEO, make: Truncate(Seed::Video, 2000, "clip.mp4"), expect: "ffmpeg could not extract the audio track" },
    Case { name: "video_moov_renamed", tool: C, args: VIDEO, make: Replace(Seed::Video, "moov", "mooX", "clip.mp4"), expect: "ffmpeg could not extract the audio track" },
    Case { name: "video_is_png", tool: C, args: VIDEO, make: AsIs(Seed::Png, "clip.mp4"), expect: "ffmpeg could not extract the audio track" },
];

#[test]
fn bad_inputs_fail_cleanly_naming_the_file() {
    let work = tempfile::tempdir().unwrap();
    let seeds_dir = work.path().join("seeds");
    fs::create_dir(&seeds_dir).unwrap();
    let seeds = make_seeds(&seeds_dir);
    let cases: Vec<&Case> = CASES
        .iter()
        .filter(|c| {
            let ffmpeg = c.args == VIDEO;
            if ffmpeg && seeds.video.is_none() {
                println!("{}: skipped, ffmpeg is not on the PATH", c.name);
            }
            !ffmpeg || seeds.video.is_some()
        })
        .collect();
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), CASES.len(), "case names must be unique");

    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some(case) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                    if let Err(failure) = check(case, &seeds, work.path()) {
                        failures.lock().unwrap().push(failure);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let count = |kind| failures.iter().filter(|(k, _)| *k == kind).count();
    let (panics, aborts, silent) = (
        count(Failure::Panic),
        count(Failure::Abort),
        count(Failure::SilentSuccess),
    );
    for (_, message) in &failures {
        println!("{message}\n");
    }
    println!(
        "bad-input corpus: {} cases, {panics} panics, {aborts} aborts, {silent} silent successes",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed (see above)",
        failures.len(),
        cases.len()
    );
}
