//! Test harness for the end-to-end tests: the real `kiln` binary and real Kotlin services,
//! on free ports, with temp data dirs.
//!
//! Rules every helper follows:
//! * every wait is bounded (a test must be able to fail, never hang);
//! * every child process is killed when its handle is dropped (also on panic and on timeout);
//! * the logs of every process are captured into the test's temp dir; when a test fails, their
//!   tails are printed and the full logs are copied to `test-artifacts/e2e/<test>/`.

#![allow(dead_code, unused_imports)]

mod cluster;
mod durable;
mod http;
mod load;
mod nginx;
mod process;

pub use cluster::*;
pub use durable::*;
pub use http::*;
pub use load::*;
pub use nginx::*;
pub use process::*;

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
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
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
            panic!("[{name}] FAILED after {:.1} s: {msg}", elapsed.as_secs_f64());
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
        let text = fs::read_to_string(&path).unwrap_or_else(|e| format!("<cannot read {path:?}: {e}>"));
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
        let file_name = path.file_name().map(|f| f.to_os_string()).unwrap_or_default();
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
