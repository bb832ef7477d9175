//! Child processes: the kiln binary and the Kotlin service jars, killed on drop.

#![allow(dead_code, unused_imports)]

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

use super::*;

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
        let ingress_port = free_port();
        let mut admin_port = free_port();
        while admin_port == ingress_port {
            admin_port = free_port();
        }
        let mut kiln = Kiln::prepare(env, "kiln", ingress_port, admin_port, &[], &opts)?;
        kiln.spawn_and_wait().await?;
        Ok(kiln)
    }

    /// A kiln on a fresh data dir (`<dir>/data`, dir named after `prefix`) and the given ports,
    /// with `node_args` before the options' flags; not started yet (see [`Kiln::spawn_only`]).
    pub fn prepare(
        env: &Env,
        prefix: &str,
        ingress_port: u16,
        admin_port: u16,
        node_args: &[String],
        opts: &KilnOpts,
    ) -> Result<Kiln> {
        let dir = env.new_dir(prefix);
        let label = dir.file_name().unwrap().to_string_lossy().into_owned();
        let data_dir = dir.join("data");
        let mut args = vec![
            "serve".to_string(),
            "--data-dir".to_string(),
            data_dir.to_string_lossy().into_owned(),
            "--ingress-addr".to_string(),
            format!("127.0.0.1:{ingress_port}"),
            "--admin-addr".to_string(),
            format!("127.0.0.1:{admin_port}"),
        ];
        args.extend(node_args.iter().cloned());
        let mut opt = |name: &str, v: Option<u64>| {
            if let Some(v) = v {
                args.push(name.to_string());
                args.push(v.to_string());
            }
        };
        opt("--max-body-bytes", opts.max_body_bytes);
        opt("--retry-initial-ms", opts.retry_initial_ms);
        opt("--retry-max-ms", opts.retry_max_ms);
        opt("--idempotency-retention-secs", opts.idempotency_retention_secs);
        args.extend(opts.extra_args.iter().cloned());
        let log = dir.join(format!("{label}.log"));
        env.add_log(&format!("kiln {label}"), &log);
        Ok(Kiln {
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
        })
    }

    /// Starts the process without waiting for it to be ready (see [`Kiln::wait_ready`]).
    pub fn spawn_only(&mut self) -> Result<()> {
        self.spawn()
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The path of this kiln's log file (every start appends to it).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "kiln {} is already running", self.label);
        self.starts += 1;
        let (out, err) = open_log(
            &self.log,
            &format!("start #{}: kiln {}", self.starts, self.args.join(" ")),
        )?;
        let mut cmd = Command::new(KILN_BIN);
        cmd.args(&self.args).stdin(Stdio::null()).stdout(out).stderr(err);
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
                    bail!("kiln {} exited during start-up with {status} (see its log)", self.label);
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
            if let Err(e) = deadline.check(&last) {
                self.dump_stacks();
                return Err(e);
            }
            sleep_ms(50).await;
        }
        // The ingress listener must accept connections too.
        let deadline = Deadline::after(Duration::from_secs(10), "waiting for the ingress port to accept");
        loop {
            match tokio::net::TcpStream::connect(("127.0.0.1", self.ingress_port)).await {
                Ok(_) => return Ok(()),
                Err(e) => deadline.check(e)?,
            }
            sleep_ms(50).await;
        }
    }

    /// Appends every thread's stack to kiln's log (when gdb is installed): a kiln that is alive
    /// but never gets ready is a hang worth seeing.
    fn dump_stacks(&self) {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return;
        };
        let Ok(out) = Command::new("gdb")
            .args(["-p", &pid.to_string(), "-batch", "-ex", "thread apply all bt 40"])
            .output()
        else {
            return;
        };
        if let Ok(mut log) = OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(log, "===== [e2e harness] kiln is alive but not ready; thread stacks:");
            let _ = log.write_all(&out.stdout);
        }
    }

    /// SIGKILL (no clean shutdown) and reap.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
        let _ = open_log(&self.log, "SIGKILL sent by the test");
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to the running process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("kiln is not running")?;
        let status = std::process::Command::new("kill")
            .args(["-s", signal, &pid.to_string()])
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -s {signal} {pid} failed: {status}");
        let _ = open_log(&self.log, &format!("SIG{signal} sent by the test"));
        Ok(())
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
        let r = self.call(&format!("Counter/{key}/add"), &n.to_string()).await?;
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
    /// `Slowpoke`, `Shifty`, `Flaky`, `Sleeper`, `Waiter`, `Signup`, `Sender`, `Receiver`,
    /// `CycleA`, `CycleB` (see tests/services/README.md).
    TestServices,
    /// `Trip` (service), `Flights`, `Hotels`, `Cars` (objects): examples/saga.
    Saga,
    /// `Device`, `Alerts` (objects): examples/digital-twin.
    DigitalTwin,
}

impl Jar {
    pub fn rel_path(self) -> &'static str {
        match self {
            Jar::Counter => "examples/counter/target/counter.jar",
            Jar::Steps => "examples/steps/target/steps.jar",
            Jar::TestServices => "tests/services/target/test-services.jar",
            Jar::Saga => "examples/saga/target/saga.jar",
            Jar::DigitalTwin => "examples/digital-twin/target/digital-twin.jar",
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
            Jar::Saga => "saga",
            Jar::DigitalTwin => "digital-twin",
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

    pub async fn start_on(env: &Env, jar: Jar, port: u16, envs: &[(&str, &str)]) -> Result<Service> {
        jar.path()?;
        let dir = env.new_dir(jar.label());
        let log = dir.join(format!("{}-{}.log", jar.label(), port));
        env.add_log(&format!("{} :{port}", jar.label()), &log);
        let mut svc = Service {
            env: env.clone(),
            jar,
            port,
            envs: envs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log,
            child: None,
            starts: 0,
            http: Http::new(),
        };
        svc.spawn_and_wait().await?;
        Ok(svc)
    }

    fn spawn(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "{} is already running", self.jar.label());
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
            format!("waiting for {} GET /discover on port {}", self.jar.label(), self.port),
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
