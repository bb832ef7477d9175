//! Helpers for the durable communication / time / workflow tests (protocol §5): admin listing
//! with paging, cancel and kill, terminal failures, waiting for a final status, invocations in
//! flight, awakeable ids written by the Waiter.

#![allow(dead_code, unused_imports)]

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use super::*;

/// Final invocation statuses.
pub const FINISHED: [&str; 3] = ["completed", "failed", "killed"];

pub fn is_finished(v: &Value) -> bool {
    FINISHED.contains(&inv_status(v))
}

/// `(code, message)` of a terminal failure answer: HTTP 500 (as documented for handler failures)
/// or the code itself as HTTP status, with a JSON body `{"code", "message"}`.
pub fn failure_of(resp: &Resp) -> Result<(u64, String)> {
    ensure!(resp.status >= 400, "expected a failure answer, got {resp}");
    let v = resp.json()?;
    let code = v
        .get("code")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("failure body has no numeric \"code\": {resp}"))?;
    let message = v
        .get("message")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("failure body has no string \"message\": {resp}"))?
        .to_string();
    Ok((code, message))
}

/// The `output` of an admin invocation JSON: `Ok(value text)` or `Err((code, message))`.
pub fn inv_output(v: &Value) -> Option<std::result::Result<String, (u64, String)>> {
    let out = v.get("output")?;
    if let Some(val) = out.get("value") {
        return Some(Ok(val.as_str().map(str::to_string).unwrap_or_else(|| val.to_string())));
    }
    let f = out.get("failure")?;
    Some(Err((
        f.get("code").and_then(Value::as_u64).unwrap_or(0),
        f.get("message").and_then(Value::as_str).unwrap_or("").to_string(),
    )))
}

/// Journal entry kinds of an admin invocation JSON, in order.
pub fn journal_kinds(v: &Value) -> Vec<String> {
    v.get("journal")
        .and_then(Value::as_array)
        .map(|j| {
            j.iter()
                .map(|e| e.get("kind").and_then(Value::as_str).unwrap_or("?").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// One page of `GET {admin}/invocations?{query}`: (invocations, nextAfter).
pub async fn list_page(kiln: &Kiln, query: &str) -> Result<(Vec<Value>, Option<String>)> {
    let url = format!("{}/invocations?{query}", kiln.admin());
    let resp = kiln.http.get_timeout(&url, Duration::from_secs(20)).await?;
    let v = resp.ok_json().with_context(|| format!("GET {url}"))?;
    let items = v
        .get("invocations")
        .and_then(Value::as_array)
        .cloned()
        .ok_or_else(|| anyhow!("GET {url}: no \"invocations\" array: {v}"))?;
    let next = match v.get("nextAfter") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Null) => None,
        other => bail!("GET {url}: \"nextAfter\" is neither a string nor null: {other:?}"),
    };
    Ok((items, next))
}

/// Every invocation matching `query` (without `after`), following `nextAfter` page by page
/// (`limit` per page, at most 10,000 pages).
pub async fn list_all(kiln: &Kiln, query: &str, limit: usize) -> Result<(Vec<Value>, usize)> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for page in 1..=10_000usize {
        let q = match &after {
            Some(a) => format!("{query}&limit={limit}&after={a}"),
            None => format!("{query}&limit={limit}"),
        };
        let (items, next) = list_page(kiln, &q).await?;
        ensure!(items.len() <= limit, "page of {} > limit {limit} for {q}", items.len());
        all.extend(items);
        match next {
            Some(n) => after = Some(n),
            None => return Ok((all, page)),
        }
    }
    bail!("listing {query} did not end after 10,000 pages")
}

impl Kiln {
    /// `PATCH {admin}/invocations/{id}/{action}` (cancel or kill).
    pub async fn patch_invocation(&self, id: &str, action: &str) -> Result<Resp> {
        self.http
            .request(
                reqwest::Method::PATCH,
                &format!("{}/invocations/{id}/{action}", self.admin()),
                None,
                &[],
                Some(Duration::from_secs(20)),
            )
            .await
    }

    /// Polls the admin API until the invocation's status is final (bounded); returns its JSON.
    pub async fn wait_finished(&self, id: &str, timeout: Duration) -> Result<Value> {
        self.wait_invocation(id, timeout, "a final status (completed, failed or killed)", is_finished)
            .await
    }

    /// `POST {ingress}/{path}` with a per-request timeout.
    pub async fn call_timeout(&self, path: &str, body: &str, timeout: Duration) -> Result<Resp> {
        self.http
            .post_timeout(&format!("{}/{path}", self.ingress()), body.to_string(), &[], timeout)
            .await
    }
}

/// `inflightInvocations` of `GET {admin}/health`.
pub async fn inflight(kiln: &Kiln) -> Result<u64> {
    let health = kiln
        .http
        .get_timeout(&format!("{}/health", kiln.admin()), Duration::from_secs(10))
        .await?
        .ok_json()?;
    health["inflightInvocations"]
        .as_u64()
        .with_context(|| format!("no inflightInvocations in {health}"))
}

/// Polls `GET /health` until `inflightInvocations` is `want`; returns how long it took.
pub async fn wait_inflight(kiln: &Kiln, want: u64, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    let deadline = Deadline::after(timeout, format!("waiting for {want} invocations in flight"));
    loop {
        let now = inflight(kiln).await?;
        if now == want {
            return Ok(t0.elapsed());
        }
        deadline.check(format!("inflightInvocations = {now}"))?;
        sleep_ms(50).await;
    }
}

/// Waits for the awakeable id the Waiter (tests/services) writes to `$AWAKEABLE_DIR/<x>`.
pub async fn awakeable_id(dir: &Path, x: &str) -> Result<String> {
    let path = dir.join(x);
    let deadline = Deadline::after(Duration::from_secs(30), format!("waiting for {}", path.display()));
    loop {
        if let Ok(s) = std::fs::read_to_string(&path) {
            if !s.trim().is_empty() {
                return Ok(s.trim().to_string());
            }
        }
        deadline.check("file absent or empty")?;
        sleep_ms(20).await;
    }
}

/// A seed for the randomized tests: env `KILN_E2E_SEED`, else the clock (printed by the caller).
pub fn test_seed() -> u64 {
    std::env::var("KILN_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(42)
        })
}

/// (object, key, handler, trip id) of a saga participant's invocation (`GET /invocations/{id}`
/// JSON): the identity under which a reserve/cancel must run at most once.
pub fn saga_call(object: &str, handler: &str, invocation: &Value) -> (String, String, String, String) {
    let input = invocation["journal"]
        .as_array()
        .and_then(|j| j.first())
        .and_then(|e| e["value"].as_str())
        .unwrap_or("");
    let input: Value = serde_json::from_str(input).unwrap_or(Value::Null);
    let trip = input
        .get("tripId")
        .unwrap_or(&input)
        .as_str()
        .unwrap_or("?")
        .to_string();
    let key = invocation["key"].as_str().unwrap_or("?").to_string();
    (object.to_string(), key, handler.to_string(), trip)
}
