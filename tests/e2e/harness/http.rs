//! HTTP client helpers and the Kiln ingress/admin API calls the tests use.

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
    /// Reads a whole response; `what` names the request in errors.
    async fn read(resp: reqwest::Response, what: &str) -> Result<Resp> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.with_context(|| format!("{what}: reading body"))?;
        Ok(Resp { status, headers, body })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("response body is not JSON: {self}"))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
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
        ensure!(!message.trim().is_empty(), "error body has an empty message: {self}");
        Ok((code, message))
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HTTP {} body={:?}", self.status, truncate(&self.text(), 600))
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
        let resp = req.send().await.with_context(|| format!("{method} {url}"))?;
        Resp::read(resp, &format!("{method} {url}")).await
    }

    pub async fn get(&self, url: &str) -> Result<Resp> {
        self.request(reqwest::Method::GET, url, None, &[], None).await
    }

    pub async fn get_timeout(&self, url: &str, timeout: Duration) -> Result<Resp> {
        self.request(reqwest::Method::GET, url, None, &[], Some(timeout)).await
    }

    pub async fn post(&self, url: &str, body: impl Into<Bytes>, headers: &[(&str, &str)]) -> Result<Resp> {
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
        self.request(reqwest::Method::POST, url, Some(body.into()), headers, Some(timeout))
            .await
    }

    /// POST with a chunked (streamed, no content-length) body.
    pub async fn post_chunked(&self, url: &str, body: Bytes, chunk: usize) -> Result<Resp> {
        let chunks: Vec<Result<Bytes, std::io::Error>> =
            body.chunks(chunk).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let stream = futures_util::stream::iter(chunks);
        let resp = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .with_context(|| format!("POST (chunked) {url}"))?;
        Resp::read(resp, &format!("POST {url}")).await
    }
}

// ---- free-standing API helpers (base URLs are `http://127.0.0.1:PORT`) ----

/// `POST {admin}/deployments {"uri": uri}` → 200/201; returns the deployment JSON.
pub async fn register(http: &Http, admin: &str, uri: &str) -> Result<Value> {
    let body = serde_json::json!({ "uri": uri }).to_string();
    let resp = http.post(&format!("{admin}/deployments"), body, &[]).await?;
    ensure!(
        resp.status == 200 || resp.status == 201,
        "registering deployment {uri}: expected 200/201, got {resp}"
    );
    resp.json()
}

/// `POST {ingress}/{path}` (path like `Counter/k/add`), optionally with an idempotency key.
pub async fn call(http: &Http, ingress: &str, path: &str, body: &str, idempotency_key: Option<&str>) -> Result<Resp> {
    let url = format!("{ingress}/{path}");
    match idempotency_key {
        Some(k) => http.post(&url, body.to_string(), &[("idempotency-key", k)]).await,
        None => http.post(&url, body.to_string(), &[]).await,
    }
}

/// `POST {ingress}/{path}/send` → 202 `{"invocationId": ..., "status": "Accepted"}`; returns the
/// whole response (use [`send_id`] for the id).
pub async fn send(http: &Http, ingress: &str, path: &str, body: &str, idempotency_key: Option<&str>) -> Result<Resp> {
    call(http, ingress, &format!("{path}/send"), body, idempotency_key).await
}

/// The invocation id of a `/send` response, asserting 202 and the documented shape.
pub fn send_id(resp: &Resp) -> Result<String> {
    resp.expect_status(202)?;
    let v = resp.json()?;
    let id = v
        .get("invocationId")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("/send response without invocationId: {resp}"))?;
    ensure!(is_invocation_id(id), "/send returned a malformed invocation id {id:?}");
    Ok(id.to_string())
}

/// `GET {ingress}/invocations/{id}/attach`.
pub async fn attach(http: &Http, ingress: &str, id: &str, timeout: Duration) -> Result<Resp> {
    http.get_timeout(&format!("{ingress}/invocations/{id}/attach"), timeout)
        .await
}

/// `GET {ingress}/invocations/{id}/output`.
pub async fn output(http: &Http, ingress: &str, id: &str) -> Result<Resp> {
    http.get(&format!("{ingress}/invocations/{id}/output")).await
}

/// `GET {admin}/invocations/{id}` → 200 JSON.
pub async fn invocation(http: &Http, admin: &str, id: &str) -> Result<Value> {
    let resp = http
        .get_timeout(&format!("{admin}/invocations/{id}"), Duration::from_secs(10))
        .await?;
    resp.ok_json().with_context(|| format!("GET /invocations/{id}"))
}

/// `inv_` + 32 lowercase hex chars.
pub fn is_invocation_id(id: &str) -> bool {
    id.strip_prefix("inv_")
        .map(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .unwrap_or(false)
}

/// Status string of an admin invocation JSON.
pub fn inv_status(v: &Value) -> &str {
    v.get("status").and_then(Value::as_str).unwrap_or("<no status>")
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
        v.get("attempts").map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
        truncate(
            &v.get("lastError").map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
            300
        ),
        journal.join(", "),
        truncate(
            &v.get("output").map(|a| a.to_string()).unwrap_or_else(|| "?".into()),
            200
        ),
    )
}
