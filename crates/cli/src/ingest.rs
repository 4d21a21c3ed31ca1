//! `custody ingest`: send events from files to a running server.
//!
//! Files are NDJSON (one event a line), a JSON array, or a sequence of
//! pretty-printed objects, optionally gzipped; directories are walked. Each
//! item is checked locally first, so a bad one is reported with its file and
//! line and skipped while the rest go on. Items without an id get one derived
//! from their file, line and content, which makes sending the same item twice
//! harmless, and the last acknowledged line of each file is kept in a
//! progress file so an interrupted import resumes where it stopped.
//!
//! With `--format cloudtrail`, `okta` or `github`, files hold audit-log
//! records instead: AWS CloudTrail (delivered `{"Records": [...]}` files,
//! `.json.gz` or not, arrays, NDJSON), Okta System Log events (API pages,
//! NDJSON) or GitHub audit log entries (API pages, NDJSON streams).
//! They are mapped to events here, by `custody-import`, so a bad record is
//! reported with its file and line before anything is sent, and the events
//! go to `POST /v1/events` in the same batches, with the same retries and
//! progress as Custody events. Their ids come from the records' own ids
//! (`eventID`, `uuid`, `_document_id`), so a record sent twice, from any
//! file, is stored once.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use custody_event::EventId;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::ServerArgs;
use crate::client::{Client, Refusal};

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Files or directories (walked recursively); `.gz` files are
    /// decompressed.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Events per request.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// What the files hold: Custody events, or the records of an audit log.
    #[arg(long, value_enum, default_value_t = Format::Custody)]
    format: Format,
    /// Send every file from its start, ignoring recorded progress.
    #[arg(long)]
    restart: bool,
    /// Where progress is recorded [default: $XDG_STATE_HOME/custody/ingest,
    /// or ~/.local/state/custody/ingest].
    #[arg(long, env = "CUSTODY_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

/// What the files hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Custody events (JSON), as `POST /v1/events` takes them.
    Custody,
    /// AWS CloudTrail records.
    Cloudtrail,
    /// Okta System Log events.
    Okta,
    /// GitHub audit log entries.
    Github,
}

/// Largest request body `ingest` builds, half the server's default limit, so
/// that batches of large events are cut short rather than refused.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Requests in flight at once; their acknowledgements are processed in order
/// so progress only ever records a prefix of the file as done.
const IN_FLIGHT: usize = 4;

/// How many times a batch is retried after a server or network failure
/// before the import stops (resumably).
const MAX_FAILURES: u32 = 6;

/// Namespace of ids derived for items without one.
const ID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6a0d_6a35_4f0c_4b8e_9a55_7c2e_1d3f_c0de);

/// Totals over a whole import.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    rejected: u64,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.server)?;
    let state_dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir()?,
    };
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating `{}`", state_dir.display()))?;
    let mut files = Vec::new();
    for path in &args.paths {
        walk(path, &mut files)?;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {pos} events sent ({per_sec}) {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    // Files are read, checked and cut into batches on a thread of their own,
    // a few batches ahead of the requests, so reading the next file overlaps
    // the server's work on the last ones.
    let (steps, mut prepared) = tokio::sync::mpsc::channel::<Step>(PREPARED_AHEAD);
    let reader = {
        let bar = bar.clone();
        let options = ReadOptions {
            state_dir,
            batch: args.batch as usize,
            format: args.format,
            restart: args.restart,
        };
        tokio::task::spawn_blocking(move || read_files(&files, &options, &bar, &steps))
    };
    let mut upload = Upload {
        client: &client,
        files: VecDeque::new(),
        pending: VecDeque::new(),
        bar: &bar,
        totals: Totals::default(),
    };
    let mut uploaded = Ok(());
    while let Some(step) = prepared.recv().await {
        uploaded = upload.step(step).await;
        if uploaded.is_err() {
            break;
        }
    }
    // Stops the reader at its next batch if sending failed.
    drop(prepared);
    let read = reader.await.context("the reading thread failed")?;
    // Whatever was sent before a failure is still settled and recorded.
    while uploaded.is_ok() && !upload.pending.is_empty() {
        uploaded = upload.settle().await;
    }
    uploaded?;
    let read = read?;
    let totals = upload.totals;
    bar.finish_and_clear();
    let rejected = totals.rejected + read.rejected;
    eprintln!(
        "sent {} events from {} files; {rejected} refused; {} skipped as already sent",
        totals.sent, read.files, read.skipped
    );
    Ok(if rejected > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

fn default_state_dir() -> anyhow::Result<PathBuf> {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        return Ok(PathBuf::from(state).join("custody/ingest"));
    }
    let home =
        std::env::var_os("HOME").context("neither --state-dir, XDG_STATE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".local/state/custody/ingest"))
}

/// Collects the files under `path`, sorted so imports are repeatable.
fn walk(path: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading `{}`", path.display()))?;
    if meta.is_dir() {
        let mut entries = std::fs::read_dir(path)
            .with_context(|| format!("listing `{}`", path.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("listing `{}`", path.display()))?;
        entries.sort();
        for entry in entries {
            walk(&entry, files)?;
        }
    } else {
        files.push(path.to_owned());
    }
    Ok(())
}

/// What is recorded of one file's import.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Progress {
    path: PathBuf,
    /// SHA-256 of the file's first `min(size, 64 KiB)` bytes.
    head: String,
    /// Size when last recorded.
    size: u64,
    /// The last line (or element) acknowledged by the server.
    done_through: usize,
    /// Whether the whole file was sent.
    complete: bool,
}

fn progress_path(state_dir: &Path, file: &Path) -> PathBuf {
    let digest = Sha256::digest(file.to_string_lossy().as_bytes());
    let name: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    state_dir.join(format!("{name}.json"))
}

fn save_progress(path: &Path, progress: &Progress) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_vec(progress)?)
        .with_context(|| format!("writing `{}`", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing `{}`", path.display()))?;
    Ok(())
}

/// SHA-256 of the file's first `min(size, 64 KiB)` bytes. A file that only
/// grew since `size` was recorded has the same digest over those bytes.
fn head_digest(file: &Path, size: u64) -> anyhow::Result<String> {
    let mut head = Vec::with_capacity(64 << 10);
    std::fs::File::open(file)
        .with_context(|| format!("opening `{}`", file.display()))?
        .take(size.min(64 << 10))
        .read_to_end(&mut head)
        .with_context(|| format!("reading `{}`", file.display()))?;
    Ok(Sha256::digest(&head)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// What the reading thread hands to the sending side, in file order.
enum Step {
    /// A file starts; progress is recorded in `state_path`.
    File {
        file: PathBuf,
        state_path: PathBuf,
        progress: Progress,
    },
    /// A batch of the last file started: its NDJSON body, the line of each
    /// event, and the last line done once it is acknowledged.
    Batch {
        body: Vec<u8>,
        lines: Vec<usize>,
        through: usize,
    },
    /// The last file started was read through `last_line`.
    End { last_line: usize },
}

/// Batches prepared ahead of the requests.
const PREPARED_AHEAD: usize = 8;

/// How files are read.
struct ReadOptions {
    state_dir: PathBuf,
    batch: usize,
    format: Format,
    restart: bool,
}

/// What the reading side counts.
#[derive(Debug, Default)]
struct ReadTotals {
    rejected: u64,
    skipped: u64,
    files: u64,
}

/// Reads every file in order, reporting bad items, and hands their batches
/// to the sending side through `steps`. Stops early when the sending side is
/// gone.
fn read_files(
    files: &[PathBuf],
    options: &ReadOptions,
    bar: &ProgressBar,
    steps: &tokio::sync::mpsc::Sender<Step>,
) -> anyhow::Result<ReadTotals> {
    let mut totals = ReadTotals::default();
    for file in files {
        if !read_file(file, options, bar, steps, &mut totals)? {
            break;
        }
        totals.files += 1;
    }
    Ok(totals)
}

/// Reads one file; `false` when the sending side is gone.
fn read_file(
    file: &Path,
    options: &ReadOptions,
    bar: &ProgressBar,
    steps: &tokio::sync::mpsc::Sender<Step>,
    totals: &mut ReadTotals,
) -> anyhow::Result<bool> {
    let canonical =
        std::fs::canonicalize(file).with_context(|| format!("resolving `{}`", file.display()))?;
    let size = std::fs::metadata(file)?.len();
    let state_path = progress_path(&options.state_dir, &canonical);
    let earlier: Option<Progress> = std::fs::read(&state_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut progress = Progress {
        path: canonical.clone(),
        head: head_digest(file, size)?,
        size,
        done_through: 0,
        complete: false,
    };
    // The same file, perhaps grown: its first bytes, as many as were there
    // last time (up to 64 KiB), are unchanged.
    let same_file = |p: &Progress| {
        p.size <= size && head_digest(file, p.size).is_ok_and(|digest| digest == p.head)
    };
    if let Some(earlier) = earlier.filter(|p| !options.restart && same_file(p)) {
        if earlier.complete && earlier.size == size {
            bar.suspend(|| {
                eprintln!(
                    "{}: already sent (use --restart to send it again)",
                    file.display()
                )
            });
            return Ok(true);
        }
        progress.done_through = earlier.done_through;
        if progress.done_through > 0 {
            bar.suspend(|| {
                eprintln!(
                    "{}: resuming after line {}",
                    file.display(),
                    progress.done_through
                )
            });
        }
    }
    let done_through = progress.done_through;
    let send = |step: Step| steps.blocking_send(step).is_ok();
    if !send(Step::File {
        file: file.to_owned(),
        state_path,
        progress,
    }) {
        return Ok(false);
    }

    let mut batch: Vec<u8> = Vec::new();
    let mut lines: Vec<usize> = Vec::new();
    let batch_size = options.batch;
    let mut items = Items::open(file, options.format)?;
    while let Some(item) = items.next_item() {
        let (line, bytes) = match item {
            Ok(item) => item,
            Err(error) => {
                totals.rejected += 1;
                bar.suspend(|| eprintln!("{}: {error}", file.display()));
                if items.stopped() {
                    break;
                }
                continue;
            }
        };
        if line <= done_through {
            totals.skipped += 1;
            continue;
        }
        let events = match options.format {
            Format::Custody => vec![(line, prepare(&canonical, line, &bytes))],
            Format::Cloudtrail => prepare_records(&custody_import::CloudTrail, line, &bytes),
            Format::Okta => prepare_records(&custody_import::Okta, line, &bytes),
            Format::Github => prepare_records(&custody_import::GitHub, line, &bytes),
        };
        let count = events.len();
        for (n, (at, event)) in events.into_iter().enumerate() {
            match event {
                Ok(event) => {
                    batch.extend_from_slice(&event);
                    batch.push(b'\n');
                    lines.push(at);
                }
                Err(error) => {
                    totals.rejected += 1;
                    bar.suspend(|| eprintln!("{}:{at}: {error}", file.display()));
                }
            }
            if lines.len() >= batch_size || batch.len() >= MAX_BATCH_BYTES {
                // An item cut between two batches is done only with the
                // second: resuming after the first sends it again, whole.
                let through = if n + 1 == count {
                    line
                } else {
                    line.saturating_sub(1)
                };
                let step = Step::Batch {
                    body: std::mem::take(&mut batch),
                    lines: std::mem::take(&mut lines),
                    through,
                };
                if !send(step) {
                    return Ok(false);
                }
            }
        }
    }
    if !lines.is_empty() {
        let step = Step::Batch {
            body: batch,
            lines,
            through: items.last_line,
        };
        if !send(step) {
            return Ok(false);
        }
    }
    Ok(send(Step::End {
        last_line: items.last_line,
    }))
}

/// One batch on its way: its file, the lines of its items, the last line
/// done once it is acknowledged, its body (kept to send it again) and the
/// request.
struct Pending {
    file: u64,
    lines: Vec<usize>,
    through: usize,
    body: Vec<u8>,
    request: JoinHandle<anyhow::Result<Result<serde_json::Value, Refusal>>>,
}

/// A file being sent: what is recorded as done, and, once it is read
/// through, its last line.
struct Sending {
    number: u64,
    file: PathBuf,
    state_path: PathBuf,
    progress: Progress,
    read_through: Option<usize>,
}

/// The sending of files: batches in flight, across files, acknowledged in
/// order, and what is recorded as done of each file.
struct Upload<'a> {
    client: &'a Client,
    files: VecDeque<Sending>,
    pending: VecDeque<Pending>,
    bar: &'a ProgressBar,
    totals: Totals,
}

/// Checks one item locally and gives it an id if it has none.
fn prepare(file: &Path, line: usize, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut event = custody_event::decode(bytes).map_err(|error| error.to_string())?;
    if event.id.is_none() {
        let mut name = file.to_string_lossy().into_owned().into_bytes();
        name.extend_from_slice(format!(":{line}:").as_bytes());
        name.extend_from_slice(bytes);
        event.id = Some(EventId(uuid::Uuid::new_v5(&ID_NAMESPACE, &name)));
    }
    Ok(serde_json::to_vec(&event).unwrap_or_default())
}

/// The events of the `source` records in one item starting on `line`, each
/// with the line its record starts on, or why it was refused. Records are
/// mapped and serialized on as many threads as there are cores.
fn prepare_records<S: custody_import::Source + Sync>(
    source: &S,
    line: usize,
    bytes: &[u8],
) -> Vec<(usize, Result<Vec<u8>, String>)> {
    // Asked once: the answer can cost reading the cgroup's files.
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let imported =
        custody_import::import_parallel(source, bytes, chrono::Utc::now(), threads, |item| {
            match item {
                Ok((at, event)) => (
                    line + at.line - 1,
                    Ok(serde_json::to_vec(&event).unwrap_or_default()),
                ),
                Err(refused) => (line + refused.position.line - 1, Err(refused)),
            }
        });
    let several = imported.len() > 1;
    imported
        .into_iter()
        .map(|(at, event)| {
            let event = event.map_err(|refused| {
                if several {
                    format!("record {}: {}", refused.position.index, refused.error)
                } else {
                    refused.error.to_string()
                }
            });
            (at, event)
        })
        .collect()
}

impl Upload<'_> {
    /// Takes one step of the reading side.
    async fn step(&mut self, step: Step) -> anyhow::Result<()> {
        match step {
            Step::File {
                file,
                state_path,
                progress,
            } => {
                let number = self.files.back().map_or(0, |f| f.number + 1);
                self.bar.set_message(file.display().to_string());
                self.files.push_back(Sending {
                    number,
                    file,
                    state_path,
                    progress,
                    read_through: None,
                });
            }
            Step::Batch {
                body,
                lines,
                through,
            } => {
                let file = self.files.back().map_or(0, |f| f.number);
                let request = self.request(body.clone());
                self.pending.push_back(Pending {
                    file,
                    lines,
                    through,
                    body,
                    request,
                });
                if self.pending.len() >= IN_FLIGHT {
                    self.settle().await?;
                }
            }
            Step::End { last_line } => {
                if let Some(sending) = self.files.back_mut() {
                    sending.read_through = Some(last_line);
                }
                self.complete_files()?;
            }
        }
        Ok(())
    }

    fn request(
        &self,
        body: Vec<u8>,
    ) -> JoinHandle<anyhow::Result<Result<serde_json::Value, Refusal>>> {
        let client = self.client.clone();
        tokio::spawn(async move { client.post_events(body).await })
    }

    /// Records as complete the files read through whose batches are all
    /// acknowledged.
    fn complete_files(&mut self) -> anyhow::Result<()> {
        while let Some(sending) = self.files.front_mut() {
            let Some(last_line) = sending.read_through else {
                break;
            };
            if self
                .pending
                .front()
                .is_some_and(|p| p.file == sending.number)
            {
                break;
            }
            sending.progress.complete = true;
            sending.progress.done_through = sending.progress.done_through.max(last_line);
            save_progress(&sending.state_path, &sending.progress)?;
            self.files.pop_front();
        }
        Ok(())
    }

    /// Waits for the oldest batch, retrying it while the server is busy or
    /// failing, then records its lines as done.
    async fn settle(&mut self) -> anyhow::Result<()> {
        let Some(Pending {
            file: number,
            lines,
            through,
            body,
            mut request,
        }) = self.pending.pop_front()
        else {
            return Ok(());
        };
        let Some(sending) = self.files.iter_mut().find(|f| f.number == number) else {
            anyhow::bail!("a batch of no file was sent");
        };
        let file = sending.file.display();
        let mut failures = 0;
        let answer = loop {
            let failure = match (&mut request).await.context("a request task failed")? {
                Ok(Ok(answer)) => break Ok(answer),
                Ok(Err(refusal)) if refusal.status.as_u16() == 429 => {
                    tokio::time::sleep(Duration::from_secs(refusal.retry_after.unwrap_or(1))).await;
                    None
                }
                Ok(Err(refusal)) if refusal.status.is_client_error() => break Err(refusal),
                Ok(Err(refusal)) => Some(refusal.to_string()),
                Err(error) => Some(format!("{error:#}")),
            };
            if let Some(failure) = failure {
                failures += 1;
                anyhow::ensure!(
                    failures < MAX_FAILURES,
                    "{file}: stopping, progress is saved: {failure}"
                );
                tokio::time::sleep(Duration::from_millis(250 << failures)).await;
            }
            // Ids are fixed, so a batch the server did store before failing
            // is not stored twice.
            let client = self.client.clone();
            let body = body.clone();
            request = tokio::spawn(async move { client.post_events(body).await });
        };
        let errors = match &answer {
            Ok(answer) => {
                let accepted = answer["accepted"].as_u64().unwrap_or(0);
                self.totals.sent += accepted;
                self.bar.inc(accepted);
                &answer["errors"]
            }
            Err(refusal) if refusal.body.get("rejected").is_some() => &refusal.body["rejected"],
            Err(refusal) => anyhow::bail!("{file}: {refusal}"),
        };
        report_rejects(&sending.file, &lines, errors, self.bar, &mut self.totals);
        sending.progress.done_through = sending.progress.done_through.max(through);
        save_progress(&sending.state_path, &sending.progress)?;
        self.complete_files()
    }
}

fn report_rejects(
    file: &Path,
    lines: &[usize],
    errors: &serde_json::Value,
    bar: &ProgressBar,
    totals: &mut Totals,
) {
    for error in errors.as_array().into_iter().flatten() {
        totals.rejected += 1;
        let line = error["index"]
            .as_u64()
            .and_then(|i| lines.get(i as usize))
            .copied()
            .unwrap_or(0);
        let path = error["path"].as_str().unwrap_or("");
        let message = error["message"].as_str().unwrap_or("refused");
        bar.suspend(|| {
            eprintln!(
                "{}:{line}: {}{message}",
                file.display(),
                if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}: ")
                }
            )
        });
    }
}

/// Reads the items of a file one by one, with their line numbers (or, for a
/// JSON array, their element numbers from 1).
struct Items {
    source: Source,
    last_line: usize,
    stopped: bool,
}

enum Source {
    Lines(Box<dyn BufRead + Send>),
    Values(std::vec::IntoIter<(usize, Result<Vec<u8>, String>)>),
}

impl Items {
    fn open(file: &Path, format: Format) -> anyhow::Result<Items> {
        let raw =
            std::fs::File::open(file).with_context(|| format!("opening `{}`", file.display()))?;
        let mut reader: Box<dyn BufRead + Send> =
            Box::new(BufReader::with_capacity(256 << 10, raw));
        if reader.fill_buf()?.starts_with(&[0x1f, 0x8b]) {
            reader = Box::new(BufReader::with_capacity(
                256 << 10,
                flate2::bufread::MultiGzDecoder::new(reader),
            ));
        }
        // A file whose first line is an array or a lone `{` holds
        // multi-line JSON, read whole; anything else is NDJSON, read line by
        // line so that one bad line costs only itself.
        let mut first = String::new();
        loop {
            let buffer = reader.fill_buf().map_err(|e| {
                anyhow::anyhow!("`{}`: {}", file.display(), describe_read_error(&e))
            })?;
            let Some(start) = buffer.iter().position(|b| !b.is_ascii_whitespace()) else {
                if buffer.is_empty() {
                    break;
                }
                let length = buffer.len();
                reader.consume(length);
                continue;
            };
            let rest = buffer.get(start..).unwrap_or_default();
            let line_end = rest.iter().position(|b| *b == b'\n').unwrap_or(rest.len());
            first = String::from_utf8_lossy(rest.get(..line_end).unwrap_or_default())
                .trim()
                .to_owned();
            break;
        }
        let multi_line = first.starts_with('[') || first == "{";
        // CloudTrail delivers one `{"Records": [...]}` object a file, and
        // the Okta and GitHub APIs one array a page, on one line or
        // pretty-printed: unless its first line is a record of its own
        // (NDJSON), the file is one item, which the importer splits into
        // records, keeping those before any syntax error.
        let whole = format != Format::Custody
            && (multi_line || serde_json::from_str::<serde::de::IgnoredAny>(&first).is_err());
        let source = if whole {
            let mut text = Vec::new();
            let mut items = Vec::new();
            let read = reader.read_to_end(&mut text);
            items.push((1, Ok(text)));
            if let Err(error) = read {
                items.push((0, Err(describe_read_error(&error))));
            }
            Source::Values(items.into_iter())
        } else if multi_line {
            let mut text = Vec::new();
            reader.read_to_end(&mut text).map_err(|e| {
                anyhow::anyhow!("`{}`: {}", file.display(), describe_read_error(&e))
            })?;
            Source::Values(split_values(&text).into_iter())
        } else {
            Source::Lines(reader)
        };
        Ok(Items {
            source,
            last_line: 0,
            stopped: false,
        })
    }

    /// Whether reading stopped early (a truncated or corrupt file).
    fn stopped(&self) -> bool {
        self.stopped
    }

    fn next_item(&mut self) -> Option<Result<(usize, Vec<u8>), String>> {
        if self.stopped {
            return None;
        }
        match &mut self.source {
            Source::Lines(reader) => loop {
                let mut line = Vec::new();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => return None,
                    Ok(_) => {
                        self.last_line += 1;
                        if line.iter().any(|b| !b.is_ascii_whitespace()) {
                            return Some(Ok((self.last_line, line)));
                        }
                    }
                    Err(error) => {
                        self.stopped = true;
                        return Some(Err(format!(
                            "after line {}: {}",
                            self.last_line,
                            describe_read_error(&error)
                        )));
                    }
                }
            },
            Source::Values(values) => {
                let (number, value) = values.next()?;
                self.last_line = number;
                Some(
                    value
                        .map(|bytes| (number, bytes))
                        .inspect_err(|_| self.stopped = true),
                )
            }
        }
    }
}

fn describe_read_error(error: &std::io::Error) -> String {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        "the gzip stream is truncated".to_owned()
    } else {
        error.to_string()
    }
}

/// Splits multi-line JSON into items: the elements of a top-level array, or
/// a sequence of objects. Each item is numbered by the line it starts on, so
/// errors point into the file; a syntax error ends the sequence with an error
/// saying where.
fn split_values(text: &[u8]) -> Vec<(usize, Result<Vec<u8>, String>)> {
    use serde_json::value::RawValue;
    let mut lines = custody_import::shape::LineCounter::new(text);
    let trimmed = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if text.get(trimmed) == Some(&b'[') {
        return match serde_json::from_slice::<Vec<&RawValue>>(text) {
            Ok(elements) => elements
                .into_iter()
                .map(|raw| {
                    // The element borrows from `text`: its address says where
                    // it starts.
                    let offset =
                        (raw.get().as_ptr() as usize).saturating_sub(text.as_ptr() as usize);
                    (lines.line_at(offset), Ok(raw.get().as_bytes().to_vec()))
                })
                .collect(),
            Err(error) => vec![(0, Err(format!("not a valid JSON array: {error}")))],
        };
    }
    let mut items = Vec::new();
    let mut values = serde_json::Deserializer::from_slice(text).into_iter::<&RawValue>();
    loop {
        let start = values.byte_offset();
        let Some(value) = values.next() else { break };
        let start = start
            + text
                .get(start..)
                .and_then(|rest| rest.iter().position(|b| !b.is_ascii_whitespace()))
                .unwrap_or(0);
        match value {
            Ok(raw) => items.push((lines.line_at(start), Ok(raw.get().as_bytes().to_vec()))),
            Err(error) => {
                items.push((lines.line_at(start), Err(format!("invalid JSON: {error}"))));
                break;
            }
        }
    }
    items
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn read_all(file: &Path) -> Vec<String> {
        read_all_as(file, Format::Custody)
    }

    fn read_all_as(file: &Path, format: Format) -> Vec<String> {
        let mut items = Items::open(file, format).unwrap();
        let mut out = Vec::new();
        while let Some(item) = items.next_item() {
            out.push(match item {
                Ok((line, bytes)) => format!("{line}: {}", String::from_utf8_lossy(&bytes).trim()),
                Err(error) => format!("error {error}"),
            });
        }
        out
    }

    fn check(content: &[u8], expected: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("events");
        std::fs::write(&file, content).unwrap();
        let got = read_all(&file);
        assert_eq!(got, expected);
    }

    #[test]
    fn files_split_into_numbered_items() {
        check(
            b"{\"a\":1}\n\n{\"b\":2}\n",
            &["1: {\"a\":1}", "3: {\"b\":2}"],
        );
        check(
            b"{\"a\":1}\nnot json\n{\"b\":2}",
            &["1: {\"a\":1}", "2: not json", "3: {\"b\":2}"],
        );
        check(
            b"[\n {\"a\":1},\n {\"b\":2}\n]\n",
            &["2: {\"a\":1}", "3: {\"b\":2}"],
        );
        check(
            b"{\n  \"a\": 1\n}\n{\n  \"b\": 2\n}\n",
            &["1: {\n  \"a\": 1\n}", "4: {\n  \"b\": 2\n}"],
        );
        check(
            b"{\n  \"a\": 1\n}\n{\n  \"b\": \n",
            &[
                "1: {\n  \"a\": 1\n}",
                "error invalid JSON: EOF while parsing a value at line 6 column 0",
            ],
        );
        check(
            b"[{\"a\":1}, ",
            &["error not a valid JSON array: EOF while parsing a value at line 1 column 10"],
        );
        check(b"", &[]);
    }

    #[test]
    fn gzip_is_read_and_truncation_is_named() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..2000 {
            writeln!(encoder, "{{\"n\":{i}}}").unwrap();
        }
        let compressed = encoder.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let whole = dir.path().join("whole.ndjson.gz");
        std::fs::write(&whole, &compressed).unwrap();
        let items = read_all(&whole);
        assert_eq!(items.len(), 2000);
        assert_eq!(items[1999], "2000: {\"n\":1999}");

        let cut = dir.path().join("cut.ndjson.gz");
        std::fs::write(&cut, &compressed[..compressed.len() / 2]).unwrap();
        let items = read_all(&cut);
        let last = items.last().unwrap();
        assert!(
            last.starts_with("error after line ") && last.ends_with("the gzip stream is truncated"),
            "{last}"
        );
        assert!(items.len() > 1, "the readable part is kept");
    }

    #[test]
    fn cloudtrail_files_are_whole_unless_ndjson_and_records_keep_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let record = |name: &str| {
            format!(
                r#"{{"eventName":"{name}","eventSource":"s3.amazonaws.com","eventTime":"2026-11-25T10:00:00Z","eventID":"{name}"}}"#
            )
        };
        // Pretty-printed: one item, the importer finds the records' lines.
        let pretty = dir.path().join("pretty.json");
        let text = format!(
            "{{\"Records\": [\n  {},\n  {}\n]}}\n",
            record("A"),
            record("B")
        );
        std::fs::write(&pretty, &text).unwrap();
        let items = read_all_as(&pretty, Format::Cloudtrail);
        assert_eq!(items.len(), 1, "{items:?}");
        assert!(items[0].starts_with("1: {\"Records\""), "{items:?}");
        let lines: Vec<usize> = prepare_records(&custody_import::CloudTrail, 1, text.as_bytes())
            .into_iter()
            .map(|(line, event)| {
                assert!(event.is_ok());
                line
            })
            .collect();
        assert_eq!(lines, [2, 3]);
        // NDJSON: one item a line, numbered in the file.
        let ndjson = dir.path().join("export.ndjson");
        std::fs::write(&ndjson, format!("{}\n\n{}\n", record("A"), record("B"))).unwrap();
        let items = read_all_as(&ndjson, Format::Cloudtrail);
        assert_eq!(items.len(), 2);
        assert!(items[1].starts_with("3: "), "{items:?}");
        let (line, refused) = prepare_records(&custody_import::CloudTrail, 7, b"[1]")
            .pop()
            .unwrap();
        assert_eq!(
            (line, refused),
            (7, Err("record: a record is a JSON object".into()))
        );
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let event = br#"{"kind":"other","action":"x","observed_at":"2026-11-25T10:00:00Z","source":{"type":"api"},"actor":{"current":{"type":"service","id":"s"}},"outcome":{"status":"success"}}"#;
        let id = |line: usize| {
            let bytes = prepare(Path::new("/data/a.ndjson"), line, event).unwrap();
            custody_event::decode(&bytes).unwrap().id.unwrap()
        };
        assert_eq!(id(1), id(1));
        assert_ne!(id(1), id(2));
    }
}
