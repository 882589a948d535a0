//! `scorer bulk`: score a JSONL file through a running service's batches API, with a progress
//! bar, resumable after Ctrl-C or a crash.
//!
//! The input is sent a window of lines at a time, each window one batch, with a few batches in
//! flight so the workers never wait for the client. Finished lines are appended to the output
//! file (succeeded) or the error file (everything else) as soon as the service has them, one
//! whole line per write. On a rerun the custom_ids already in either file are skipped, so every
//! input line ends in exactly one of them, however often the run is interrupted.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

/// What `scorer bulk` was asked to do.
#[derive(Debug, Clone)]
pub struct BulkOptions {
    pub input: PathBuf,
    pub output: PathBuf,
    /// Default: the output path with `.errors.jsonl` in place of its extension.
    pub errors: Option<PathBuf>,
    /// The service, e.g. `http://127.0.0.1:8000`.
    pub url: String,
    pub api_key: Option<String>,
    /// Lines per batch.
    pub window: usize,
    /// Batches in flight at once.
    pub in_flight: usize,
    pub completion_window: String,
    pub poll: Duration,
    /// Draw the progress bar (on stderr, when it is a terminal).
    pub progress: bool,
}

impl BulkOptions {
    pub fn new(input: PathBuf, output: PathBuf, url: String) -> Self {
        BulkOptions {
            input,
            output,
            errors: None,
            url,
            api_key: None,
            window: 500,
            in_flight: 2,
            completion_window: "24h".into(),
            poll: Duration::from_millis(250),
            progress: true,
        }
    }

    pub fn errors_path(&self) -> PathBuf {
        self.errors
            .clone()
            .unwrap_or_else(|| default_errors_path(&self.output))
    }
}

/// `out.jsonl` -> `out.errors.jsonl`.
pub fn default_errors_path(output: &Path) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    output.with_file_name(format!("{stem}.errors.jsonl"))
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Input lines (non-blank).
    pub lines: u64,
    /// Already in the output or error file when the run started.
    pub skipped: u64,
    /// Written to the output file by this run.
    pub succeeded: u64,
    /// Written to the error file by this run.
    pub failed: u64,
    pub batches: u64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lines: {} succeeded, {} failed, {} skipped (already done) in {} batches",
            self.lines, self.succeeded, self.failed, self.skipped, self.batches
        )
    }
}

/// The key a line is tracked by: its custom_id, or its line number when it has none (such a
/// line can only fail, and is reported by number).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Id(String),
    Line(u64),
}

fn custom_id_of(line: &Value) -> Option<String> {
    line.get("custom_id")?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A results file opened for appending, with the keys it already holds. A last line cut short by
/// a crash is dropped (its request is sent again).
struct Sink {
    file: File,
}

fn open_sink(path: &Path, done: &mut HashSet<Key>) -> Result<Sink> {
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut good = 0usize;
    for piece in text.split_inclusive(|&b| b == b'\n') {
        if !piece.ends_with(b"\n") {
            break;
        }
        let Ok(v) = serde_json::from_slice::<Value>(piece) else {
            break;
        };
        good += piece.len();
        match (custom_id_of(&v), v.get("line").and_then(Value::as_u64)) {
            (Some(id), _) => done.insert(Key::Id(id)),
            (None, Some(n)) => done.insert(Key::Line(n)),
            (None, None) => false,
        };
    }
    if good < text.len() {
        file.set_len(good as u64)
            .with_context(|| format!("trimming a cut-off line from {}", path.display()))?;
        file.seek(SeekFrom::End(0))?;
    }
    Ok(Sink { file })
}

impl Sink {
    fn write(&mut self, line: &Value) -> Result<()> {
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        // One write per line: a crash leaves at most the last line cut, which the next run
        // trims.
        self.file.write_all(&bytes)?;
        Ok(())
    }
}

/// One batch the service is running for us.
struct InFlight {
    id: String,
    /// custom_id -> input line number, for the lines of this batch not yet written.
    waiting: HashMap<String, u64>,
    /// Line numbers in the uploaded window -> input line numbers.
    lines: Vec<u64>,
    finished: bool,
}

struct Client {
    http: reqwest::Client,
    base: String,
    api_key: Option<String>,
}

impl Client {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.api_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    /// Sends a request, retrying while the service is busy or briefly down (429, 503, connection
    /// errors), up to about a minute.
    async fn send(&self, build: impl Fn() -> reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let mut delay = Duration::from_millis(200);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let outcome = build().send().await;
            let retry = match &outcome {
                Ok(r) => matches!(r.status().as_u16(), 429 | 502 | 503),
                Err(e) => e.is_connect() || e.is_timeout(),
            };
            if !retry || Instant::now() > deadline {
                let resp = outcome.context("calling the scoring service")?;
                if !resp.status().is_success() {
                    let status = resp.status();
                    let text = resp.text().await.unwrap_or_default();
                    bail!("the service answered {status}: {text}");
                }
                return Ok(resp);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn json(&self, method: reqwest::Method, path: &str) -> Result<Value> {
        let resp = self.send(|| self.request(method.clone(), path)).await?;
        resp.json().await.context("decoding the service's answer")
    }

    async fn lines(&self, path: &str) -> Result<Vec<Value>> {
        let resp = self
            .send(|| self.request(reqwest::Method::GET, path))
            .await?;
        let text = resp.bytes().await.context("reading a results file")?;
        text.split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).context("a results line is not JSON"))
            .collect()
    }
}

/// Reads the next window of lines still to do. Lines with no usable custom_id, and repeats of a
/// custom_id seen earlier in the file, are answered locally in the error file.
struct Reader {
    lines: std::io::Lines<BufReader<File>>,
    number: u64,
    seen: HashSet<String>,
}

enum Next {
    Send {
        key: String,
        line: u64,
        text: String,
    },
    Local(Value),
    Skip,
    Blank,
}

impl Reader {
    fn next_line(&mut self, done: &HashSet<Key>) -> Result<Option<Next>> {
        let Some(text) = self.lines.next().transpose()? else {
            return Ok(None);
        };
        self.number += 1;
        let n = self.number;
        if text.trim().is_empty() {
            return Ok(Some(Next::Blank));
        }
        let parsed = serde_json::from_str::<Value>(&text).ok();
        let Some(id) = parsed.as_ref().and_then(custom_id_of) else {
            if done.contains(&Key::Line(n)) {
                return Ok(Some(Next::Skip));
            }
            let message = if parsed.is_some() {
                "custom_id must be a non-empty string"
            } else {
                "the line is not valid JSON"
            };
            return Ok(Some(Next::Local(json!({
                "id": null, "custom_id": null, "line": n, "response": null,
                "error": {"code": "invalid_request", "message": message},
            }))));
        };
        if !self.seen.insert(id.clone()) {
            if done.contains(&Key::Id(id.clone())) {
                return Ok(Some(Next::Skip));
            }
            return Ok(Some(Next::Local(json!({
                "id": null, "custom_id": id, "line": n, "response": null,
                "error": {"code": "invalid_request",
                          "message": format!("duplicate custom_id {id:?}: it is already used by an earlier line")},
            }))));
        }
        if done.contains(&Key::Id(id.clone())) {
            return Ok(Some(Next::Skip));
        }
        Ok(Some(Next::Send {
            key: id,
            line: n,
            text,
        }))
    }
}

/// Counts the non-blank lines of the input, for the progress bar's length.
fn count_lines(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut n = 0;
    for line in BufReader::new(file).lines() {
        if !line?.trim().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

/// Runs the whole file (or what is left of it) through the service.
pub async fn run(opts: &BulkOptions) -> Result<Summary> {
    anyhow::ensure!(opts.window > 0, "the window must hold at least one line");
    let errors_path = opts.errors_path();
    let mut done = HashSet::new();
    let mut out = open_sink(&opts.output, &mut done)?;
    let mut err = open_sink(&errors_path, &mut done)?;
    let total = count_lines(&opts.input)?;
    let input =
        File::open(&opts.input).with_context(|| format!("opening {}", opts.input.display()))?;
    let mut reader = Reader {
        lines: BufReader::new(input).lines(),
        number: 0,
        seen: HashSet::new(),
    };
    let client = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()?,
        base: opts.url.trim_end_matches('/').to_string(),
        api_key: opts.api_key.clone(),
    };
    let bar = if opts.progress {
        ProgressBar::new(total)
    } else {
        ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} lines ({per_sec}, ETA {eta}) {msg}",
        )?
        .progress_chars("=> "),
    );
    let mut summary = Summary {
        lines: total,
        ..Summary::default()
    };
    let started = Instant::now();
    let mut flights: VecDeque<InFlight> = VecDeque::new();
    let mut input_done = false;
    loop {
        // Keep the pipeline full.
        while !input_done && flights.len() < opts.in_flight {
            let mut body = String::new();
            let mut waiting = HashMap::new();
            let mut lines = Vec::new();
            while waiting.len() < opts.window {
                match reader.next_line(&done)? {
                    None => {
                        input_done = true;
                        break;
                    }
                    Some(Next::Blank) => {}
                    Some(Next::Skip) => {
                        summary.skipped += 1;
                        bar.inc(1);
                    }
                    Some(Next::Local(line)) => {
                        err.write(&line)?;
                        summary.failed += 1;
                        bar.inc(1);
                    }
                    Some(Next::Send { key, line, text }) => {
                        body.push_str(&text);
                        body.push('\n');
                        waiting.insert(key, line);
                        lines.push(line);
                    }
                }
            }
            if waiting.is_empty() {
                continue;
            }
            let path = format!("/v1/batches?completion_window={}", opts.completion_window);
            let created: Value = client
                .send(|| {
                    client
                        .request(reqwest::Method::POST, &path)
                        .header(reqwest::header::CONTENT_TYPE, "application/jsonl")
                        .body(body.clone())
                })
                .await?
                .json()
                .await
                .context("decoding the new batch")?;
            let id = created["id"]
                .as_str()
                .context("the new batch has no id")?
                .to_string();
            summary.batches += 1;
            flights.push_back(InFlight {
                id,
                waiting,
                lines,
                finished: false,
            });
        }
        if flights.is_empty() {
            break;
        }
        // Collect what has finished, in every batch in flight.
        for flight in flights.iter_mut() {
            let batch = client
                .json(reqwest::Method::GET, &format!("/v1/batches/{}", flight.id))
                .await?;
            let status = batch["status"].as_str().unwrap_or_default();
            let terminal = matches!(status, "completed" | "failed" | "cancelled" | "expired");
            let counts = &batch["request_counts"];
            let finished =
                counts["completed"].as_u64().unwrap_or(0) + counts["failed"].as_u64().unwrap_or(0);
            let written = (flight.lines.len() - flight.waiting.len()) as u64;
            if finished > written || terminal {
                collect(&client, flight, &mut out, &mut err, &mut summary, &bar).await?;
            }
            if terminal {
                // Anything the service did not account for is reported, so no line is lost.
                for (id, line) in flight.waiting.drain() {
                    err.write(&json!({
                        "id": null, "custom_id": id, "line": line, "response": null,
                        "error": {"code": "missing_result",
                                  "message": format!("batch {} ended {status} without this line", flight.id)},
                    }))?;
                    summary.failed += 1;
                    bar.inc(1);
                }
                flight.finished = true;
            }
        }
        flights.retain(|f| !f.finished);
        if !flights.is_empty() {
            tokio::time::sleep(opts.poll).await;
        }
    }
    out.file.flush()?;
    err.file.flush()?;
    bar.finish_with_message(format!("done in {:.1?}", started.elapsed()));
    Ok(summary)
}

/// Appends the batch's finished lines not yet written.
async fn collect(
    client: &Client,
    flight: &mut InFlight,
    out: &mut Sink,
    err: &mut Sink,
    summary: &mut Summary,
    bar: &ProgressBar,
) -> Result<()> {
    for line in client
        .lines(&format!("/v1/batches/{}/output", flight.id))
        .await?
    {
        let Some(id) = custom_id_of(&line) else {
            continue;
        };
        if flight.waiting.remove(&id).is_some() {
            out.write(&line)?;
            summary.succeeded += 1;
            bar.inc(1);
        }
    }
    for mut line in client
        .lines(&format!("/v1/batches/{}/errors", flight.id))
        .await?
    {
        // Line numbers from the service count within the window: make them the input's.
        if let Some(n) = line.get("line").and_then(Value::as_u64)
            && let Some(input_line) = n.checked_sub(1).and_then(|i| flight.lines.get(i as usize))
        {
            line["line"] = json!(input_line);
        }
        let Some(id) = custom_id_of(&line) else {
            continue;
        };
        if flight.waiting.remove(&id).is_some() {
            err.write(&line)?;
            summary.failed += 1;
            bar.inc(1);
        }
    }
    Ok(())
}

/// `scorer bulk INPUT.jsonl -o OUTPUT.jsonl`.
#[derive(clap::Args, Debug, Clone)]
pub struct BulkArgs {
    /// JSONL input: lines {custom_id, body} or {custom_id, method: "POST", url: "/v1/score", body}.
    pub input: PathBuf,
    /// Where succeeded lines go (appended; lines already there are skipped on a rerun).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Where failed lines go (default: OUTPUT with `.errors.jsonl`).
    #[arg(long)]
    pub errors: Option<PathBuf>,
    /// The scoring service (`scorer serve` or `scorer api`).
    #[arg(long, env = "SCORER_URL", default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Bearer API key, when the service requires one.
    #[arg(long, env = "SCORER_API_KEY")]
    pub api_key: Option<String>,
    /// Lines per batch.
    #[arg(long, default_value_t = 500)]
    pub window: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 2)]
    pub in_flight: usize,
    /// Each batch's completion window, e.g. 24h.
    #[arg(long, default_value = "24h")]
    pub completion_window: String,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `scorer bulk` to the end, or until Ctrl-C (what was written stays; rerun to go on).
pub fn main(args: BulkArgs) -> Result<()> {
    let mut opts = BulkOptions::new(args.input, args.output, args.url);
    opts.errors = args.errors;
    opts.api_key = args.api_key;
    opts.window = args.window;
    opts.in_flight = args.in_flight.max(1);
    opts.completion_window = args.completion_window;
    opts.progress = !args.quiet;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let started = Instant::now();
    let summary = runtime.block_on(async {
        tokio::select! {
            summary = run(&opts) => summary.map(Some),
            _ = tokio::signal::ctrl_c() => Ok(None),
        }
    })?;
    let secs = started.elapsed().as_secs_f64();
    match summary {
        Some(s) => {
            let rate = (s.succeeded + s.failed) as f64 / secs.max(1e-9);
            eprintln!("{s}; {secs:.1} s, {rate:.1} lines/s");
            eprintln!(
                "output: {}  errors: {}",
                opts.output.display(),
                opts.errors_path().display()
            );
            Ok(())
        }
        None => {
            eprintln!(
                "interrupted after {secs:.1} s: finished lines are in {} and {}; rerun the same \
                 command to score the rest",
                opts.output.display(),
                opts.errors_path().display()
            );
            std::process::exit(130);
        }
    }
}
