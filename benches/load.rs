//! Load tool for a running Kiln node (no criterion; `harness = false`).
//!
//! ```text
//! cargo bench --bench load -- --ingress http://127.0.0.1:8080 [--seconds 5] [--warmup 1]
//!                             [--concurrency 1,16,64] [--cases counter-hot,counter-1k,steps]
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

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;

struct Args {
    ingress: String,
    seconds: f64,
    warmup: f64,
    concurrency: Vec<usize>,
    cases: Vec<String>,
}

const ALL_CASES: [&str; 3] = ["counter-hot", "counter-1k", "steps"];

fn usage() -> &'static str {
    "usage: cargo bench --bench load -- --ingress http://127.0.0.1:8080 [--seconds 5] [--warmup 1] \
     [--concurrency 1,16,64] [--cases counter-hot,counter-1k,steps]"
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        ingress: String::new(),
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
    if args.seconds <= 0.0 || args.concurrency.contains(&0) {
        bail!("--seconds and every --concurrency value must be > 0");
    }
    Ok(args)
}

#[derive(Default)]
struct WorkerStats {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

struct CaseResult {
    case: String,
    concurrency: usize,
    requests: u64,
    errors: u64,
    seconds: f64,
    hist: Histogram<u64>,
    first_error: Option<String>,
}

/// The request a worker sends for case `case`: (path, body).
fn request_for(case: &str, worker: usize, n: u64, rng: &mut u64) -> (String, String) {
    match case {
        "counter-hot" => ("Counter/hot/add".to_string(), "1".to_string()),
        "counter-1k" => {
            // xorshift64*
            *rng ^= *rng >> 12;
            *rng ^= *rng << 25;
            *rng ^= *rng >> 27;
            let k = rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % 1000;
            (format!("Counter/k{k}/add"), "1".to_string())
        }
        "steps" => ("Steps/threeStep".to_string(), format!("\"w{worker}-{n}\"")),
        other => unreachable!("unknown case {other}"),
    }
}

async fn run_case(client: &reqwest::Client, args: &Args, case: &str, concurrency: usize) -> Result<CaseResult> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(args.warmup);
    let end = measure_from + Duration::from_secs_f64(args.seconds);
    let run_id = start.elapsed().as_nanos() as u64 ^ std::process::id() as u64;
    let mut workers = Vec::with_capacity(concurrency);
    for w in 0..concurrency {
        let client = client.clone();
        let ingress = args.ingress.clone();
        let case = case.to_string();
        workers.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram");
            let mut stats = WorkerStats::default();
            let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 0x1000_0000_01b3) ^ run_id;
            let mut n = 0u64;
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                n += 1;
                let (path, body) = request_for(&case, w, n ^ (run_id << 20), &mut rng);
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
    for w in workers {
        let (h, s) = w.await?;
        hist.add(&h)?;
        requests += s.requests;
        errors += s.errors;
        if first_error.is_none() {
            first_error = s.first_error;
        }
    }
    // Requests are counted when issued inside the window; the last ones answer after `end`.
    let seconds = (Instant::now().max(end) - measure_from).as_secs_f64();
    Ok(CaseResult {
        case: case.to_string(),
        concurrency,
        requests,
        errors,
        seconds,
        hist,
        first_error,
    })
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn print_header() {
    println!(
        "{:<12} {:>5} {:>9} {:>7} {:>10} {:>9} {:>9} {:>9}",
        "case", "conc", "requests", "errors", "req/s", "p50 ms", "p90 ms", "p99 ms"
    );
    println!("{}", "-".repeat(76));
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
    println!(
        "{:<12} {:>5} {:>9} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2}",
        r.case,
        r.concurrency,
        r.requests,
        r.errors,
        ok as f64 / r.seconds,
        p50,
        p90,
        p99
    );
}

async fn preflight(client: &reqwest::Client, ingress: &str) -> Result<()> {
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
    Ok(())
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async {
        let max_conc = args.concurrency.iter().copied().max().unwrap_or(1);
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(max_conc * 2)
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .build()?;
        preflight(&client, &args.ingress).await?;
        println!(
            "kiln load: ingress {}, {} s measured per run after {} s warm-up, closed loop",
            args.ingress, args.seconds, args.warmup
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
        Ok(())
    })
}
