//! Load tool for a running Kiln node (no criterion; `harness = false`).
//!
//! ```text
//! cargo bench --bench load -- --ingress http://127.0.0.1:8080 [--seconds 5] [--warmup 1]
//!                             [--concurrency 1,16,64] [--cases counter-hot,counter-1k,steps]
//!                             [--metrics http://127.0.0.1:9070/metrics]
//! ```
//!
//! It assumes the `Counter` (examples/counter) and `Steps` (examples/steps) services are
//! registered on that node. Each case runs at each concurrency level: a short warm-up (not
//! measured), then `--seconds` of closed-loop load (each worker sends its next request when the
//! previous one has answered). Latency is measured per request, end to end, from the client.
//!
//! Cases:
//! * `counter-hot`: `POST /Counter/hot/add` body `1` — one key, so every request queues behind the
//!   key's exclusive lock (measures the serial per-key path: journal + state commit per add).
//! * `counter-1k`: `POST /Counter/k{0..999}/add` body `1` — keys drawn at random from 1,000.
//! * `steps`: `POST /Steps/threeStep` with a unique string — a stateless handler with three
//!   journaled `run` steps (each acked only after fdatasync) and an output.
//!
//! `--metrics URL` (Kiln's admin `/metrics`): `kiln_storage_fsyncs_total` is read when the
//! measured window starts and again once every request of the window has answered; the column
//! `fsync/req` is the difference divided by the window's successful requests (`-` without it).
//!
//! Loss check (counter cases): before each run the tool reads every key it will touch
//! (`POST /Counter/{key}/get`), counts the 200 answers and the failed requests per key over
//! warm-up + window, waits for every request in flight, and reads the keys again. `lost` is the
//! number of acknowledged adds missing from the counters (per key: successes − delta, when
//! positive); `extra` the number of adds applied beyond successes + failed requests (a failed
//! request may or may not have been applied, so only what exceeds both counts). The tool exits
//! with status 3 if any run lost an add.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

struct Args {
    ingress: String,
    metrics: Option<String>,
    seconds: f64,
    warmup: f64,
    concurrency: Vec<usize>,
    cases: Vec<String>,
}

const ALL_CASES: [&str; 3] = ["counter-hot", "counter-1k", "steps"];

fn usage() -> &'static str {
    "usage: cargo bench --bench load -- --ingress http://127.0.0.1:8080 [--seconds 5] [--warmup 1] \
     [--concurrency 1,16,64] [--cases counter-hot,counter-1k,steps] [--metrics http://127.0.0.1:9070/metrics]"
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ingress: String::new(),
        metrics: None,
        seconds: 5.0,
        warmup: 1.0,
        concurrency: vec![1, 16, 64],
        cases: ALL_CASES.iter().map(|s| s.to_string()).collect(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (a.clone(), None),
        };
        let mut value = |name: &str| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it.next().with_context(|| format!("{name} needs a value\n{}", usage())),
            }
        };
        match flag.as_str() {
            "--ingress" => args.ingress = value("--ingress")?.trim_end_matches('/').to_string(),
            "--metrics" => args.metrics = Some(value("--metrics")?).filter(|m| !m.is_empty()),
            "--seconds" => args.seconds = value("--seconds")?.parse().context("--seconds")?,
            "--warmup" => args.warmup = value("--warmup")?.parse().context("--warmup")?,
            "--concurrency" => {
                args.concurrency = value("--concurrency")?
                    .split(',')
                    .map(|s| s.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--concurrency")?
            }
            "--cases" => {
                args.cases = value("--cases")?.split(',').map(|s| s.trim().to_string()).collect();
                for c in &args.cases {
                    if !ALL_CASES.contains(&c.as_str()) {
                        bail!("unknown case {c:?}; cases: {}", ALL_CASES.join(","));
                    }
                }
            }
            // `cargo bench` passes `--bench` to harness=false targets.
            "--bench" => {}
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if args.ingress.is_empty() {
        bail!("--ingress is required\n{}", usage());
    }
    if args.seconds <= 0.0 || args.warmup < 0.0 || args.concurrency.contains(&0) {
        bail!("--seconds and every --concurrency value must be > 0, --warmup >= 0");
    }
    Ok(args)
}

#[derive(Default)]
struct WorkerStats {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    /// Per counter key (index into `keys_for(case)`), over warm-up + window: 200 answers.
    key_ok: Vec<u64>,
    /// Per counter key, over warm-up + window: requests that failed (applied or not: unknown).
    key_err: Vec<u64>,
}

/// What the loss check found for one run of a counter case.
#[derive(Clone, Copy, Default)]
struct LossCheck {
    /// Acknowledged adds missing from the counters.
    lost: u64,
    /// Adds applied beyond acknowledged + failed requests.
    extra: u64,
    /// Keys with lost (or extra) adds.
    lost_keys: u64,
    extra_keys: u64,
}

struct CaseResult {
    case: String,
    concurrency: usize,
    requests: u64,
    errors: u64,
    seconds: f64,
    hist: Histogram<u64>,
    first_error: Option<String>,
    /// fdatasyncs during the window (`--metrics`), if read.
    fsyncs: Option<u64>,
    /// Counter cases only.
    loss: Option<LossCheck>,
}

/// The counter keys case `case` touches (empty for `steps`).
fn keys_for(case: &str) -> Vec<String> {
    match case {
        "counter-hot" => vec!["hot".to_string()],
        "counter-1k" => (0..1000).map(|k| format!("k{k}")).collect(),
        _ => Vec::new(),
    }
}

/// The request a worker sends for case `case`: (path, body, index of the counter key).
fn request_for(case: &str, worker: usize, n: u64, rng: &mut u64) -> (String, String, Option<usize>) {
    match case {
        "counter-hot" => ("Counter/hot/add".to_string(), "1".to_string(), Some(0)),
        "counter-1k" => {
            // xorshift64*
            *rng ^= *rng >> 12;
            *rng ^= *rng << 25;
            *rng ^= *rng >> 27;
            let k = rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1000;
            (format!("Counter/k{k}/add"), "1".to_string(), Some(k as usize))
        }
        "steps" => ("Steps/threeStep".to_string(), format!("\"w{worker}-{n}\""), None),
        other => unreachable!("unknown case {other}"),
    }
}

/// `kiln_storage_fsyncs_total` from a Prometheus text page.
async fn read_fsyncs(client: &reqwest::Client, url: &str) -> Result<u64> {
    let resp = client.get(url).send().await.with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("GET {url}: body"))?;
    if status.as_u16() != 200 {
        bail!("GET {url} → {status}");
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("kiln_storage_fsyncs_total"))
        .find_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .with_context(|| format!("GET {url}: no kiln_storage_fsyncs_total sample"))
}

/// The current value of every counter in `keys` (`POST /Counter/{key}/get`, a JSON number),
/// 16 requests at a time, each retried a few times.
async fn read_counters(client: &reqwest::Client, ingress: &str, keys: &[String]) -> Result<Vec<i64>> {
    const PARALLEL: usize = 16;
    let mut tasks = Vec::with_capacity(PARALLEL);
    for t in 0..PARALLEL.min(keys.len()) {
        let client = client.clone();
        let mine: Vec<(usize, String)> = keys.iter().cloned().enumerate().skip(t).step_by(PARALLEL).collect();
        let ingress = ingress.to_string();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(mine.len());
            for (i, key) in mine {
                out.push((i, read_counter(&client, &ingress, &key).await?));
            }
            anyhow::Ok(out)
        }));
    }
    let mut values = vec![0; keys.len()];
    for t in tasks {
        for (i, v) in t.await?? {
            values[i] = v;
        }
    }
    Ok(values)
}

async fn read_counter(client: &reqwest::Client, ingress: &str, key: &str) -> Result<i64> {
    let url = format!("{ingress}/Counter/{key}/get");
    let mut last = String::new();
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match client
            .post(&url)
            .header("content-type", "application/json")
            .send()
            .await
        {
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                if status.as_u16() == 200 {
                    return text
                        .trim()
                        .parse()
                        .with_context(|| format!("POST {url}: answer {text:?} is not a number"));
                }
                last = format!("{status} {}", &text[..text.len().min(200)]);
            }
            Err(e) => last = e.to_string(),
        }
    }
    bail!("POST {url}: {last}")
}

async fn run_case(client: &reqwest::Client, args: &Args, case: &str, concurrency: usize) -> Result<CaseResult> {
    let keys = keys_for(case);
    let before = read_counters(client, &args.ingress, &keys).await?;

    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let run_id = start.elapsed().as_nanos() as u64 ^ std::process::id() as u64;
    // The fsync counter when the window opens, read while the warm-up load goes on.
    let fsyncs_before = args.metrics.clone().map(|url| {
        let client = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            read_fsyncs(&client, &url).await
        })
    });
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let client = client.clone();
        let ingress = args.ingress.clone();
        let case = case.to_string();
        let nkeys = keys.len();
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
            let mut stats = WorkerStats {
                key_ok: vec![0; nkeys],
                key_err: vec![0; nkeys],
                ..WorkerStats::default()
            };
            let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0000_01b3) ^ run_id;
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                n += 1;
                let (path, body, key) = request_for(&case, w, n ^ (run_id << 20), &mut rng);
                let result = client
                    .post(format!("{ingress}/{path}"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                let outcome = match result {
                    Ok(resp) => {
                        let status = resp.status();
                        match resp.bytes().await {
                            Ok(_) if status.as_u16() == 200 => Ok(()),
                            Ok(b) => Err(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&b[..b.len().min(200)])
                            )),
                            Err(e) => Err(format!("reading body: {e}")),
                        }
                    }
                    Err(e) => Err(format!("{e}")),
                };
                let latency_us = t.elapsed().as_micros().max(1) as u64;
                if let Some(k) = key {
                    match outcome {
                        Ok(()) => stats.key_ok[k] += 1,
                        Err(_) => stats.key_err[k] += 1,
                    }
                }
                if t < measure_from {
                    continue; // warm-up
                }
                stats.requests += 1;
                match outcome {
                    Ok(()) => {
                        let _ = hist.record(latency_us.min(600_000_000));
                    }
                    Err(e) => {
                        stats.errors += 1;
                        stats.first_error.get_or_insert(e);
                        // Do not spin on a dead endpoint.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (hist, stats)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut requests = 0;
    let mut errors = 0;
    let mut first_error = None;
    let mut key_ok = vec![0u64; keys.len()];
    let mut key_err = vec![0u64; keys.len()];
    // Every worker finishes the request it has in flight at `end`: nothing is pending after this.
    for w in workers {
        let (h, s) = w.await?;
        hist.add(&h)?;
        requests += s.requests;
        errors += s.errors;
        if first_error.is_none() {
            first_error = s.first_error;
        }
        for (i, (ok, err)) in s.key_ok.iter().zip(&s.key_err).enumerate() {
            key_ok[i] += ok;
            key_err[i] += err;
        }
    }
    // Requests are counted when issued inside the window; the last ones answer after `end`.
    let seconds = (Instant::now().max(end) - measure_from).as_secs_f64();
    let fsyncs = match (fsyncs_before, &args.metrics) {
        (Some(task), Some(url)) => {
            let b = task.await??;
            let a = read_fsyncs(client, url).await?;
            Some(a.saturating_sub(b))
        }
        _ => None,
    };
    let loss = if keys.is_empty() {
        None
    } else {
        let after = read_counters(client, &args.ingress, &keys).await?;
        let mut l = LossCheck::default();
        for i in 0..keys.len() {
            let delta = after[i] - before[i];
            let ok = key_ok[i] as i64;
            let maybe = ok + key_err[i] as i64;
            if delta < ok {
                l.lost += (ok - delta) as u64;
                l.lost_keys += 1;
            }
            if delta > maybe {
                l.extra += (delta - maybe) as u64;
                l.extra_keys += 1;
            }
        }
        Some(l)
    };
    Ok(CaseResult {
        case: case.to_string(),
        concurrency,
        requests,
        errors,
        seconds,
        hist,
        first_error,
        fsyncs,
        loss,
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn print_header() {
    println!(
        "{:<12} {:>5} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9} {:>6} {:>6}",
        "case", "conc", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms", "fsync/req", "lost", "extra"
    );
    println!("{}", "-".repeat(100));
}

fn print_row(r: &CaseResult) {
    let ok = r.requests - r.errors;
    let (p50, p90, p99) = if r.hist.is_empty() {
        (f64::NAN, f64::NAN, f64::NAN)
    } else {
        (
            ms(r.hist.value_at_quantile(0.50)),
            ms(r.hist.value_at_quantile(0.90)),
            ms(r.hist.value_at_quantile(0.99)),
        )
    };
    let fsync_per_req = match r.fsyncs {
        Some(f) if ok > 0 => format!("{:.2}", f as f64 / ok as f64),
        _ => "-".to_string(),
    };
    let (lost, extra) = match r.loss {
        Some(l) => (l.lost.to_string(), l.extra.to_string()),
        None => ("-".to_string(), "-".to_string()),
    };
    println!(
        "{:<12} {:>5} {:>9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>6} {:>6}",
        r.case,
        r.concurrency,
        r.requests,
        r.errors,
        ok as f64 / r.seconds,
        p50,
        p90,
        p99,
        fsync_per_req,
        lost,
        extra
    );
}

async fn preflight(client: &reqwest::Client, args: &Args) -> Result<()> {
    let ingress = &args.ingress;
    // One request per service, so a missing registration fails fast with a clear message.
    for (path, body) in [("Counter/preflight/get", ""), ("Steps/threeStep", "\"preflight\"")] {
        let resp = client
            .post(format!("{ingress}/{path}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .with_context(|| format!("POST {ingress}/{path}: is kiln running there?"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.as_u16() != 200 {
            bail!("preflight POST /{path} → {status} {text}: are the Counter and Steps services registered?");
        }
    }
    if let Some(url) = &args.metrics {
        read_fsyncs(client, url).await?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let lost = rt.block_on(async {
        let max_conc = args.concurrency.iter().copied().max().unwrap_or(1);
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(max_conc * 2)
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        preflight(&client, &args).await?;
        println!(
            "kiln load: ingress {}, {} s measured per run after {} s warm-up, closed loop, fsyncs from {}",
            args.ingress,
            args.seconds,
            args.warmup,
            args.metrics.as_deref().unwrap_or("(no --metrics)")
        );
        let mut results = Vec::new();
        print_header();
        for case in &args.cases {
            for &c in &args.concurrency {
                let r = run_case(&client, &args, case, c).await?;
                print_row(&r);
                results.push(r);
            }
        }
        let errors: Vec<&CaseResult> = results.iter().filter(|r| r.errors > 0).collect();
        if !errors.is_empty() {
            println!();
            for r in errors {
                println!(
                    "errors in {} @ {}: {} (first: {})",
                    r.case,
                    r.concurrency,
                    r.errors,
                    r.first_error.as_deref().unwrap_or("?")
                );
            }
        }
        let mut lost = 0;
        for r in &results {
            let Some(l) = r.loss.filter(|l| l.lost > 0 || l.extra > 0) else {
                continue;
            };
            println!(
                "LOSS CHECK {} @ {}: {} acknowledged adds lost on {} keys, {} extra adds on {} keys",
                r.case, r.concurrency, l.lost, l.lost_keys, l.extra, l.extra_keys
            );
            lost += l.lost;
        }
        anyhow::Ok(lost)
    })?;
    if lost > 0 {
        eprintln!("load: {lost} acknowledged adds lost");
        std::process::exit(3);
    }
    Ok(())
}
