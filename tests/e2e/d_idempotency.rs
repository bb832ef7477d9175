//! (d) An idempotency key makes one execution and one response, sequentially and concurrently,
//! for request-response calls and for `/send`.

use std::time::Duration;

use anyhow::{ensure, Result};

use crate::harness::*;

/// All responses must have the same status and byte-identical bodies (and the same invocation id
/// header where present).
fn all_identical(what: &str, resps: &[Resp]) -> Result<()> {
    let first = &resps[0];
    for (i, r) in resps.iter().enumerate().skip(1) {
        ensure!(
            r.status == first.status && r.body == first.body,
            "{what}: response #{i} differs from #0: {r} vs {first}"
        );
        if let (Some(a), Some(b)) = (first.invocation_id(), r.invocation_id()) {
            ensure!(a == b, "{what}: response #{i} has x-kiln-invocation-id {b}, #0 has {a}");
        }
    }
    Ok(())
}

#[test]
fn d_idempotency_keys() {
    run("d_idempotency_keys", Duration::from_secs(120), |env| async move {
        let kiln = Kiln::start(&env, KilnOpts::default()).await?;
        let counter = Service::start(&env, Jar::Counter, &[]).await?;
        register_expect(&kiln, &counter.uri(), &["Counter"]).await?;

        // Same key twice, sequentially.
        let r1 = kiln.call_idem("Counter/d/add", "1", "idem-A").await?;
        let r2 = kiln.call_idem("Counter/d/add", "1", "idem-A").await?;
        ensure!(
            r1.status == 200 && r1.json()? == 1,
            "first idempotent add: expected 200 1, got {r1}"
        );
        all_identical("sequential idem-A", &[r1.clone(), r2.clone()])?;
        ensure!(
            kiln.counter_get("d").await? == 1,
            "counter incremented more than once for idem-A"
        );

        // 20 concurrent with another key.
        let resps: Vec<Resp> =
            futures_util::future::join_all((0..20).map(|_| kiln.call_idem("Counter/d/add", "1", "idem-B")))
                .await
                .into_iter()
                .collect::<Result<_>>()?;
        ensure!(resps[0].status == 200, "concurrent idem-B: {}", resps[0]);
        all_identical("20 concurrent idem-B", &resps)?;
        ensure!(resps[0].json()? == 2, "idem-B add should return 2: {}", resps[0]);
        let after_b = kiln.counter_get("d").await?;
        ensure!(
            after_b == 2,
            "after idem-A and 20×idem-B the counter is {after_b}, expected 2"
        );

        // The key is scoped to the target: the same key on another object executes there.
        let other = kiln.call_idem("Counter/d2/add", "1", "idem-A").await?;
        ensure!(
            other.status == 200 && other.json()? == 1,
            "idem-A on Counter/d2: {other}"
        );
        ensure!(kiln.counter_get("d").await? == 2, "idem-A on d2 changed d");

        // /send with an idempotency key: same invocation id, one execution.
        let s: Vec<Resp> =
            futures_util::future::join_all((0..5).map(|_| kiln.send_idem("Counter/d/add", "1", "idem-C")))
                .await
                .into_iter()
                .collect::<Result<_>>()?;
        let s_seq = kiln.send_idem("Counter/d/add", "1", "idem-C").await?;
        let mut ids = Vec::new();
        for r in s.iter().chain(std::iter::once(&s_seq)) {
            ids.push(send_id(r)?);
        }
        ensure!(
            ids.iter().all(|i| i == &ids[0]),
            "/send with idem-C gave different invocation ids: {ids:?}"
        );
        let bodies_identical = s.iter().chain(std::iter::once(&s_seq)).all(|r| r.body == s[0].body);
        if !bodies_identical {
            println!("d: note: /send responses with one idempotency key have the same invocationId but different bodies: {} vs {}", s[0], s_seq);
        }
        let att = kiln.attach(&ids[0], Duration::from_secs(30)).await?;
        ensure!(att.status == 200 && att.json()? == 3, "attach to idem-C send: {att}");
        let fin = kiln.counter_get("d").await?;
        ensure!(
            fin == 3,
            "after idem-A, idem-B and idem-C the counter is {fin}, expected 3"
        );
        println!(
            "d: idem-A ×2 sequential → {}; idem-B ×20 concurrent → {} (all identical); idem-C /send ×6 → one id {}; final count {fin}",
            r2.text(),
            resps[0].text(),
            ids[0]
        );
        Ok(())
    });
}

/// (issue 10, item 6) An invocation made with an idempotency key is found again by that key at
/// Restate's path shape — for an object and for a stateless service — to attach to or to read.
#[test]
fn d_attach_by_idempotency_key() {
    run(
        "d_attach_by_idempotency_key",
        Duration::from_secs(120),
        |env| async move {
            let kiln = Kiln::start(&env, KilnOpts::default()).await?;
            let counter = Service::start(&env, Jar::Counter, &[]).await?;
            let steps = Service::start(&env, Jar::Steps, &[]).await?;
            register_expect(&kiln, &counter.uri(), &["Counter"]).await?;
            register_expect(&kiln, &steps.uri(), &["Steps"]).await?;
            let base = format!("{}/restate/invocation", kiln.ingress());

            let first = kiln.call_idem("Counter/ak/add", "5", "order-9").await?;
            ensure!(first.status == 200 && first.json()? == 5, "the add: {first}");
            for what in ["attach", "output"] {
                let r = kiln.http.get(&format!("{base}/Counter/ak/add/order-9/{what}")).await?;
                ensure!(
                    r.status == 200 && r.body == first.body && r.invocation_id() == first.invocation_id(),
                    "{what} by key of an object's invocation: {r} vs {first}"
                );
            }
            let sent = kiln.send_idem("Steps/threeStep", "\"abc\"", "job-1").await?;
            let sent_id = send_id(&sent)?;
            let r = kiln.http.get(&format!("{base}/Steps/threeStep/job-1/attach")).await?;
            ensure!(
                r.status == 200 && r.invocation_id().as_deref() == Some(sent_id.as_str()),
                "attach by key of a service's sent invocation: {r}"
            );
            let output = kiln.http.get(&format!("{base}/Steps/threeStep/job-1/output")).await?;
            ensure!(output.body == r.body, "its output: {output} vs {r}");
            println!(
                "d_attach_by_idempotency_key: object → {}, service → {}",
                first.text(),
                r.text()
            );

            let unknown = kiln
                .http
                .get(&format!("{base}/Counter/ak/add/no-such-key/attach"))
                .await?;
            let (code, _) = unknown.expect_error(404)?;
            ensure!(code == 404, "an unknown key: {unknown}");
            let wrong = kiln.http.get(&format!("{base}/Counter/add/order-9/attach")).await?;
            let (_, message) = wrong.expect_error(400)?;
            ensure!(
                message.contains("{key}"),
                "an object without its key names the shape: {message}"
            );
            Ok(())
        },
    );
}
