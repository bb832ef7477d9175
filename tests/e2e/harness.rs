//! Test harness for the end-to-end tests: the real `kiln` binary and real Kotlin services,
//! on free ports, with temp data dirs.
//!
//! Rules every helper follows:
//! * every wait is bounded (a test must be able to fail, never hang);
//! * every child process is killed when its handle is dropped (also on panic and on timeout);
//! * the logs of every process are captured into the test's temp dir; when a test fails, their
//!   tails are printed and the full logs are copied to `test-artifacts/e2e/<test>/`.

#![allow(dead_code)]

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener as StdTcpListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use bytes::Bytes;
use serde_json::Value;

pub const KILN_BIN: &str = env!("CARGO_BIN_EXE_kiln");
pub const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// Default per-request timeout of the test HTTP client.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long kiln may take to answer `GET /health` with 200 after start.
pub const KILN_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a JVM service may take until `GET /discover` answers 200.
pub const SERVICE_READY_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Test runner
// ---------------------------------------------------------------------------------------------

/// Tests run one at a time: they start JVMs and time crashes to a few hundred milliseconds, which
/// is not reliable on a 2-core machine when six tests do it at once.
static SERIAL: Mutex<()> = Mutex::new(());

/// Per-test environment: a temp dir (kept by the runner until after failure reporting) and the
/// list of log files to report.
#[derive(Clone)]
pub struct Env {
    inner: Arc<EnvInner>,
}

struct EnvInner {
    name: String,
    root: PathBuf,
    logs: Mutex<Vec<(String, PathBuf)>>,
    seq: AtomicUsize,
}

impl Env {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A path inside the test's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.inner.root.join(name)
    }

    /// A fresh, unique sub-directory of the test's temp dir.
    pub fn new_dir(&self, prefix: &str) -> PathBuf {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let dir = self.inner.root.join(format!("{prefix}-{n}"));
        fs::create_dir_all(&dir).expect("create dir in temp dir");
        dir
    }

    /// Registers a log file whose tail is printed if the test fails.
    pub fn add_log(&self, label: &str, path: &Path) {
        self.inner
            .logs
            .lock()
            .unwrap()
            .push((label.to_string(), path.to_path_buf()));
    }
}

/// Runs one end-to-end test: takes the global lock, creates a temp dir and a tokio runtime, runs
/// `body` with a hard time limit, and on failure prints log tails and keeps the logs.
pub fn run<F, Fut>(name: &str, limit: Duration, body: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let tmp = tempfile::Builder::new()
        .prefix(&format!("kiln-e2e-{name}-"))
        .tempdir()
        .expect("create temp dir");
    let env = Env {
        inner: Arc::new(EnvInner {
            name: name.to_string(),
            root: tmp.path().to_path_buf(),
            logs: Mutex::new(Vec::new()),
            seq: AtomicUsize::new(0),
        }),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("build tokio runtime");
    let started = Instant::now();
    let fut = body(env.clone());
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        // The future (and with it every Kiln/Service handle, which kill their processes on drop)
        // is dropped inside block_on, also when the time limit is hit.
        rt.block_on(async { tokio::time::timeout(limit, fut).await })
    }));
    rt.shutdown_timeout(Duration::from_secs(5));
    let failure = match outcome {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(format!("{e:#}")),
        Ok(Err(_elapsed)) => Some(format!("timed out after {limit:?} (test time limit)")),
        Err(panic) => Some(panic_message(&panic)),
    };
    let elapsed = started.elapsed();
    match failure {
        None => println!("[{name}] PASSED in {:.1} s", elapsed.as_secs_f64()),
        Some(msg) => {
            report_logs(&env);
            panic!(
                "[{name}] FAILED after {:.1} s: {msg}",
                elapsed.as_secs_f64()
            );
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "panic with a non-string payload".to_string()
    }
}

fn report_logs(env: &Env) {
    let artifacts = Path::new(MANIFEST_DIR)
        .join("test-artifacts")
        .join("e2e")
        .join(env.name());
    let _ = fs::remove_dir_all(&artifacts);
    let _ = fs::create_dir_all(&artifacts);
    let logs = env.inner.logs.lock().unwrap().clone();
    for (label, path) in logs {
        let text =
            fs::read_to_string(&path).unwrap_or_else(|e| format!("<cannot read {path:?}: {e}>"));
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(60)..];
        eprintln!(
            "----- {label}: last {} of {} lines ({}) -----",
            tail.len(),
            lines.len(),
            path.display()
        );
        for line in tail {
            eprintln!("{line}");
        }
        let file_name = path
            .file_name()
            .map(|f| f.to_os_string())
            .unwrap_or_default();
        let _ = fs::copy(&path, artifacts.join(file_name));
    }
    eprintln!("----- full logs kept in {} -----", artifacts.display());
}

// ---------------------------------------------------------------------------------------------
// Ports, deadlines, small utilities
// ---------------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1, chosen outside the kernel's ephemeral range (32768–60999) so
/// that outgoing connections cannot take it between a service's kill and its restart.
pub fn free_port() -> u16 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ (std::process::id() as u64) << 32;
    for _ in 0..1000 {
        let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        let port = 20000 + (x % 12000) as u16;
        if StdTcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    // Fall back to the kernel's choice.
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// A bounded wait: `check()` fails once the time is up.
pub struct Deadline {
    what: String,
    start: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn after(limit: Duration, what: impl Into<String>) -> Self {
        Deadline {
            what: what.into(),
            start: Instant::now(),
            limit,
        }
    }

    pub fn expired(&self) -> bool {
        self.start.elapsed() >= self.limit
    }

    /// Errors with `last` (the last observation) once the deadline has passed.
    pub fn check(&self, last: impl std::fmt::Display) -> Result<()> {
        if self.expired() {
            bail!(
                "timed out after {:?} {}; last observed: {}",
                self.limit,
                self.what,
                last
            );
        }
        Ok(())
    }
}

pub async fn sleep_ms(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// JSON text of a string (the request body for a handler taking a `String`).
pub fn json_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        s.to_string()
    } else {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &s[..end], s.len())
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A fully read HTTP response.
#[derive(Clone, Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {self}"))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    pub fn invocation_id(&self) -> Option<String> {
        self.header("x-kiln-invocation-id")
    }

    /// Asserts the status is `status`.
    pub fn expect_status(&self, status: u16) -> Result<&Self> {
        ensure!(self.status == status, "expected HTTP {status}, got {self}");
        Ok(self)
    }

    /// Asserts 200 and parses the body as JSON.
    pub fn ok_json(&self) -> Result<Value> {
        self.expect_status(200)?;
        self.json()
    }

    /// Asserts `status` and a JSON error body `{"code": <number>, "message": <string>}`;
    /// returns (code, message).
    pub fn expect_error(&self, status: u16) -> Result<(u64, String)> {
        self.expect_status(status)?;
        let v = self.json()?;
        let code = v
            .get("code")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("error body has no numeric \"code\": {self}"))?;
        let message = v
            .get("message")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("error body has no string \"message\": {self}"))?
            .to_string();
        ensure!(
            !message.trim().is_empty(),
            "error body has an empty message: {self}"
        );
        Ok((code, message))
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP {} body={:?}",
            self.status,
            truncate(&self.text(), 600)
        )
    }
}

/// A cheap-to-clone HTTP client with the helpers the tests use.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

impl Default for Http {
    fn default() -> Self {
        Self::new()
    }
}

impl Http {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(REQUEST_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .expect("build reqwest client");
        Http { client }
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Bytes>,
        headers: &[(&str, &str)],
        timeout: Option<Duration>,
    ) -> Result<Resp> {
        let mut req = self.client.request(method.clone(), url);
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {url}: reading body"))?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub async fn get(&self, url: &str) -> Result<Resp> {
        self.request(reqwest::Method::GET, url, None, &[], None)
            .await
    }

    pub async fn get_timeout(&self, url: &str, timeout: Duration) -> Result<Resp> {
        self.request(reqwest::Method::GET, url, None, &[], Some(timeout))
            .await
    }

    pub async fn post(
        &self,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<Resp> {
        self.request(reqwest::Method::POST, url, Some(body.into()), headers, None)
            .await
    }

    pub async fn post_timeout(
        &self,
        url: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Resp> {
        self.request(
            reqwest::Method::POST,
            url,
            Some(body.into()),
            headers,
            Some(timeout),
        )
        .await
    }

    /// POST with a chunked (streamed, no content-length) body.
    pub async fn post_chunked(&self, url: &str, body: Bytes, chunk: usize) -> Result<Resp> {
        let chunks: Vec<Result<Bytes, std::io::Error>> = body
            .chunks(chunk)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = futures_util::stream::iter(chunks);
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .with_context(|| format!("POST (chunked) {url}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("POST {url}: reading body"))?;
        Ok(Resp {
            status,
            headers,
            body,
        })
    }
}

// ---- free-standing API helpers (base URLs are `http://127.0.0.1:PORT`) ----

/// `POST {admin}/deployments {"uri": uri}` → 200/201; returns the deployment JSON.
pub async fn register(http: &Http, admin: &str, uri: &str) -> Result<Value> {
    let body = serde_json::json!({ "uri": uri }).to_string();
    let resp = http
        .post(&format!("{admin}/deployments"), body, &[])
        .await?;
    ensure!(
        resp.status == 200 || resp.status == 201,
        "registering deployment {uri}: expected 200/201, got {resp}"
    );
    resp.json()
}

/// `POST {ingress}/{path}` (path like `Counter/k/add`), optionally with an idempotency key.
pub async fn call(
    http: &Http,
    ingress: &str,
    path: &str,
    body: &str,
    idempotency_key: Option<&str>,
) -> Result<Resp> {
    let url = format!("{ingress}/{path}");
    match idempotency_key {
        Some(k) => {
            http.post(&url, body.to_string(), &[("idempotency-key", k)])
                .await
        }
        None => http.post(&url, body.to_string(), &[]).await,
    }
}

/// `POST {ingress}/{path}/send` → 202 `{"invocationId": ..., "status": "Accepted"}`; returns the
/// whole response (use [`send_id`] for the id).
pub async fn send(
    http: &Http,
    ingress: &str,
    path: &str,
    body: &str,
    idempotency_key: Option<&str>,
) -> Result<Resp> {
    call(
        http,
        ingress,
        &format!("{path}/send"),
        body,
        idempotency_key,
    )
    .await
}

/// The invocation id of a `/send` response, asserting 202 and the documented shape.
pub fn send_id(resp: &Resp) -> Result<String> {
    resp.expect_status(202)?;
    let v = resp.json()?;
    let id = v
        .get("invocationId")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("/send response without invocationId: {resp}"))?;
    ensure!(
        is_invocation_id(id),
        "/send returned a malformed invocation id {id:?}"
    );
    Ok(id.to_string())
}

/// `GET {ingress}/invocations/{id}/attach`.
pub async fn attach(http: &Http, ingress: &str, id: &str, timeout: Duration) -> Result<Resp> {
    http.get_timeout(&format!("{ingress}/invocations/{id}/attach"), timeout)
        .await
}

/// `GET {ingress}/invocations/{id}/output`.
pub async fn output(http: &Http, ingress: &str, id: &str) -> Result<Resp> {
    http.get(&format!("{ingress}/invocations/{id}/output"))
        .await
}

/// `GET {admin}/invocations/{id}` → 200 JSON.
pub async fn invocation(http: &Http, admin: &str, id: &str) -> Result<Value> {
    let resp = http
        .get_timeout(
            &format!("{admin}/invocations/{id}"),
            Duration::from_secs(10),
        )
        .await?;
    resp.ok_json()
        .with_context(|| format!("GET /invocations/{id}"))
}

/// `inv_` + 32 lowercase hex chars.
pub fn is_invocation_id(id: &str) -> bool {
    id.strip_prefix("inv_")
        .map(|hex| {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .unwrap_or(false)
}

/// Status string of an admin invocation JSON.
pub fn inv_status(v: &Value) -> &str {
    v.get("status")
        .and_then(Value::as_str)
        .unwrap_or("<no status>")
}

/// A compact one-line summary of an admin invocation JSON.
pub fn inv_summary(v: &Value) -> String {
    let journal: Vec<String> = v
        .get("journal")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .map(|e| {
                    let kind = e.get("kind").and_then(Value::as_str).unwrap_or("?");
                    match e.get("name").and_then(Value::as_str) {
                        Some(name) => format!("{kind}({name})"),
                        None => kind.to_string(),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    format!(
        "status={} attempts={} lastError={} journal=[{}] output={}",
        inv_status(v),
        v.get("attempts")
            .map(|a| a.to_string())
            .unwrap_or_else(|| "?".into()),
        truncate(
            &v.get("lastError")
                .map(|a| a.to_string())
                .unwrap_or_else(|| "?".into()),
            300
        ),
        journal.join(", "),
        truncate(
            &v.get("output")
                .map(|a| a.to_string())
                .unwrap_or_else(|| "?".into()),
            200
        ),
    )
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

fn open_log(path: &Path, banner: &str) -> Result<(File, File)> {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open log {path:?}"))?;
    writeln!(f, "===== [e2e harness] {banner} =====")?;
    let f2 = f.try_clone()?;
    Ok((f, f2))
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill(); // SIGKILL
        let _ = c.wait();
    }
}

/// Options for `kiln serve`.
#[derive(Clone, Debug, Default)]
pub struct KilnOpts {
    pub max_body_bytes: Option<u64>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub idempotency_retention_secs: Option<u64>,
    pub extra_args: Vec<String>,
}

impl KilnOpts {
    pub fn retry(initial_ms: u64, max_ms: u64) -> Self {
        KilnOpts {
            retry_initial_ms: Some(initial_ms),
            retry_max_ms: Some(max_ms),
            ..Default::default()
        }
    }
}

/// A `kiln serve` process on its own data dir and ports.
pub struct Kiln {
    env: Env,
    pub label: String,
    pub data_dir: PathBuf,
    pub ingress_port: u16,
    pub admin_port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
    pub http: Http,
}

impl Kiln {
    /// Starts kiln on a fresh data dir and free ports, and waits until `GET /health` is 200.
    pub async fn start(env: &Env, opts: KilnOpts) -> Result<Kiln> {
        let dir = env.new_dir("kiln");
        let label = dir.file_name().unwrap().to_string_lossy().into_owned();
        let data_dir = dir.join("data");
        let ingress_port = free_port();
        let mut admin_port = free_port();
        while admin_port == ingress_port {
            admin_port = free_port();
        }
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".to_string(),
            data_dir.to_string_lossy().into_owned(),
            "--ingress-addr".to_string(),
            format!("127.0.0.1:{ingress_port}"),
            "--admin-addr".to_string(),
            format!("127.0.0.1:{admin_port}"),
        ];
        let mut opt = |name: &str, v: Option<u64>| {
            if let Some(v) = v {
                args.push(name.to_string());
                args.push(v.to_string());
            }
        };
        opt("--max-body-bytes", opts.max_body_bytes);
        opt("--retry-initial-ms", opts.retry_initial_ms);
        opt("--retry-max-ms", opts.retry_max_ms);
        opt(
            "--idempotency-retention-secs",
            opts.idempotency_retention_secs,
        );
        args.extend(opts.extra_args.iter().cloned());
        let log = dir.join(format!("{label}.log"));
        env.add_log(&format!("kiln {label}"), &log);
        let mut kiln = Kiln {
            env: env.clone(),
            label,
            data_dir,
            ingress_port,
            admin_port,
            args,
            log,
            child: None,
            starts: 0,
            http: Http::new(),
        };
        kiln.spawn_and_wait().await?;
        Ok(kiln)
    }

    fn spawn(&mut self) -> Result<()> {
        ensure!(
            self.child.is_none(),
            "kiln {} is already running",
            self.label
        );
        self.starts += 1;
        let (out, err) = open_log(
            &self.log,
            &format!("start #{}: kiln {}", self.starts, self.args.join(" ")),
        )?;
        let mut cmd = Command::new(KILN_BIN);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // Only the flags given here configure the node: no KILN_* from the caller's environment.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KILN_") {
                cmd.env_remove(k);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
        let child = cmd.spawn().with_context(|| format!("spawn {KILN_BIN}"))?;
        self.child = Some(child);
        Ok(())
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Polls `GET /health` until 200 (30 s); fails early if the process exits.
    pub async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Deadline::after(
            KILN_READY_TIMEOUT,
            format!("waiting for kiln {} GET /health", self.label),
        );
        let url = format!("{}/health", self.admin());
        let mut last;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "kiln {} exited during start-up with {status} (see its log)",
                        self.label
                    );
                }
            } else {
                bail!("kiln {} is not running", self.label);
            }
            match self.http.get_timeout(&url, Duration::from_secs(2)).await {
                Ok(r) if r.status == 200 => {
                    let v = r.json().unwrap_or(Value::Null);
                    ensure!(
                        v.get("status").and_then(Value::as_str) == Some("ok"),
                        "GET /health answered 200 but not {{\"status\":\"ok\"}}: {r}"
                    );
                    break;
                }
                Ok(r) => last = r.to_string(),
                Err(e) => last = format!("{e:#}"),
            }
            deadline.check(&last)?;
            sleep_ms(50).await;
        }
        // The ingress listener must accept connections too.
        let deadline = Deadline::after(
            Duration::from_secs(10),
            "waiting for the ingress port to accept",
        );
        loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", self.ingress_port)).await {
                Ok(_) => return Ok(()),
                Err(e) => deadline.check(e)?,
            }
            sleep_ms(50).await;
        }
    }

    /// SIGKILL (no clean shutdown) and reap.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
        let _ = open_log(&self.log, "SIGKILL sent by the test");
    }

    /// Kills kiln if running and starts it again on the same data dir and ports.
    pub async fn restart(&mut self) -> Result<()> {
        kill_child(&mut self.child);
        self.spawn_and_wait().await
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn ingress(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingress_port)
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub async fn register(&self, uri: &str) -> Result<Value> {
        register(&self.http, &self.admin(), uri).await
    }

    /// `POST /{path}` on the ingress (e.g. `Counter/k/add`).
    pub async fn call(&self, path: &str, body: &str) -> Result<Resp> {
        call(&self.http, &self.ingress(), path, body, None).await
    }

    pub async fn call_idem(&self, path: &str, body: &str, key: &str) -> Result<Resp> {
        call(&self.http, &self.ingress(), path, body, Some(key)).await
    }

    /// `POST /{path}/send` → invocation id (asserts 202).
    pub async fn send(&self, path: &str, body: &str) -> Result<String> {
        let resp = send(&self.http, &self.ingress(), path, body, None).await?;
        send_id(&resp).with_context(|| format!("POST /{path}/send"))
    }

    pub async fn send_idem(&self, path: &str, body: &str, key: &str) -> Result<Resp> {
        send(&self.http, &self.ingress(), path, body, Some(key)).await
    }

    pub async fn attach(&self, id: &str, timeout: Duration) -> Result<Resp> {
        attach(&self.http, &self.ingress(), id, timeout).await
    }

    pub async fn output(&self, id: &str) -> Result<Resp> {
        output(&self.http, &self.ingress(), id).await
    }

    /// `GET /invocations/{id}` on the admin API (asserts 200).
    pub async fn invocation(&self, id: &str) -> Result<Value> {
        invocation(&self.http, &self.admin(), id).await
    }

    /// Polls the admin invocation until `pred` holds (bounded); returns the matching JSON.
    pub async fn wait_invocation(
        &self,
        id: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Deadline::after(timeout, format!("waiting for invocation {id}: {what}"));
        loop {
            let last = match self.invocation(id).await {
                Ok(v) if pred(&v) => return Ok(v),
                Ok(v) => inv_summary(&v),
                Err(e) => format!("{e:#}"),
            };
            deadline.check(last)?;
            sleep_ms(25).await;
        }
    }

    /// `Counter/{key}/add(n)` must answer 200 with a number; returns it.
    pub async fn counter_add(&self, key: &str, n: i64) -> Result<i64> {
        let r = self
            .call(&format!("Counter/{key}/add"), &n.to_string())
            .await?;
        r.ok_json()?
            .as_i64()
            .ok_or_else(|| anyhow!("Counter/{key}/add answered a non-number: {r}"))
    }

    pub async fn counter_get(&self, key: &str) -> Result<i64> {
        let r = self.call(&format!("Counter/{key}/get"), "").await?;
        r.ok_json()?
            .as_i64()
            .ok_or_else(|| anyhow!("Counter/{key}/get answered a non-number: {r}"))
    }
}

impl Drop for Kiln {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// The Kotlin jars the tests use.
#[derive(Clone, Copy, Debug)]
pub enum Jar {
    /// Virtual object `Counter`: exclusive `add(n: Long): Long`, shared `get(): Long`.
    Counter,
    /// Service `Steps`: `threeStep(input: String): String`.
    Steps,
    /// `Slowpoke`, `Shifty`, `Flaky`.
    TestServices,
}

impl Jar {
    pub fn rel_path(self) -> &'static str {
        match self {
            Jar::Counter => "examples/counter/target/counter.jar",
            Jar::Steps => "examples/steps/target/steps.jar",
            Jar::TestServices => "tests/services/target/test-services.jar",
        }
    }

    /// The jar's path, or an error telling how to build it.
    pub fn path(self) -> Result<PathBuf> {
        let p = Path::new(MANIFEST_DIR).join(self.rel_path());
        if !p.is_file() {
            bail!(
                "missing {} — the end-to-end tests need the Kotlin jars; build them first with\n    \
                 cd {MANIFEST_DIR} && mvn -q -f examples/pom.xml install -DskipTests\n\
                 (it builds sdk-kotlin, examples/counter, examples/steps and tests/services).",
                p.display()
            );
        }
        Ok(p)
    }

    fn label(self) -> &'static str {
        match self {
            Jar::Counter => "counter",
            Jar::Steps => "steps",
            Jar::TestServices => "test-services",
        }
    }
}

/// A Kotlin service (`java -jar X`) on a fixed port.
pub struct Service {
    env: Env,
    pub jar: Jar,
    pub port: u16,
    envs: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    starts: usize,
    http: Http,
}

impl Service {
    /// Starts the jar on a free port with extra environment variables; waits for `GET /discover`.
    pub async fn start(env: &Env, jar: Jar, envs: &[(&str, &str)]) -> Result<Service> {
        Self::start_on(env, jar, free_port(), envs).await
    }

    pub async fn start_on(
        env: &Env,
        jar: Jar,
        port: u16,
        envs: &[(&str, &str)],
    ) -> Result<Service> {
        jar.path()?;
        let dir = env.new_dir(jar.label());
        let log = dir.join(format!("{}-{}.log", jar.label(), port));
        env.add_log(&format!("{} :{port}", jar.label()), &log);
        let mut svc = Service {
            env: env.clone(),
            jar,
            port,
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            log,
            child: None,
            starts: 0,
            http: Http::new(),
        };
        svc.spawn_and_wait().await?;
        Ok(svc)
    }

    fn spawn(&mut self) -> Result<()> {
        ensure!(
            self.child.is_none(),
            "{} is already running",
            self.jar.label()
        );
        self.starts += 1;
        let jar = self.jar.path()?;
        let java = std::env::var_os("JAVA_HOME")
            .map(|h| Path::new(&h).join("bin").join("java"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("java"));
        // Quick start-up on a 2-core machine; override with KILN_E2E_JAVA_OPTS.
        let java_opts = std::env::var("KILN_E2E_JAVA_OPTS")
            .unwrap_or_else(|_| "-XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xmx512m".to_string());
        let env_desc: Vec<String> = self.envs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let (out, err) = open_log(
            &self.log,
            &format!(
                "start #{}: PORT={} {} java -jar {}",
                self.starts,
                self.port,
                env_desc.join(" "),
                jar.display()
            ),
        )?;
        let mut cmd = Command::new(java);
        cmd.args(java_opts.split_whitespace())
            .arg("-jar")
            .arg(&jar)
            .env("PORT", self.port.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("spawn java (is a JDK installed?)")?;
        self.child = Some(child);
        Ok(())
    }

    async fn spawn_and_wait(&mut self) -> Result<()> {
        self.spawn()?;
        let deadline = Deadline::after(
            SERVICE_READY_TIMEOUT,
            format!(
                "waiting for {} GET /discover on port {}",
                self.jar.label(),
                self.port
            ),
        );
        let url = format!("{}/discover", self.uri());
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    bail!(
                        "{} exited during start-up with {status} (see its log)",
                        self.jar.label()
                    );
                }
            }
            let last = match self.http.get_timeout(&url, Duration::from_secs(2)).await {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => r.to_string(),
                Err(e) => format!("{e:#}"),
            };
            deadline.check(last)?;
            sleep_ms(100).await;
        }
    }

    /// SIGKILL the JVM and reap it.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
        let _ = open_log(&self.log, "SIGKILL sent by the test");
    }

    /// Kills (if running) and starts again on the same port with the same environment.
    pub async fn restart(&mut self) -> Result<()> {
        kill_child(&mut self.child);
        self.spawn_and_wait().await
    }

    /// Kills (if running) and starts again on the same port, with `envs` set/overridden.
    pub async fn restart_with(&mut self, envs: &[(&str, &str)]) -> Result<()> {
        for (k, v) in envs {
            self.envs.retain(|(ek, _)| ek != k);
            self.envs.push((k.to_string(), v.to_string()));
        }
        self.restart().await
    }

    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

/// Names of the services in a deployment JSON (`{"services":[{"name":...}]}`).
pub fn service_names(deployment: &Value) -> Vec<String> {
    deployment
        .get("services")
        .and_then(Value::as_array)
        .map(|s| {
            s.iter()
                .filter_map(|x| x.get("name").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Registers a deployment and checks it declares `expected` services.
pub async fn register_expect(kiln: &Kiln, uri: &str, expected: &[&str]) -> Result<Value> {
    let dep = kiln.register(uri).await?;
    let names = service_names(&dep);
    for e in expected {
        ensure!(
            names.iter().any(|n| n == e),
            "deployment {uri} does not declare service {e}: {dep}"
        );
    }
    Ok(dep)
}
