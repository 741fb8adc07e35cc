//! `bench ingest`: sustained events per second that `tally ingest` accepts
//! over HTTP into the real broker, and the request latency, with concurrent
//! clients posting NDJSON batches of a fixed size.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ingest::load::client::request;
use ingest::load::generate::{Generator, GeneratorConfig, Truth};

/// One POST over a fresh connection; returns the status code.
async fn post(addr: &str, token: &str, body: &[u8]) -> Result<u16> {
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/x-ndjson"),
    ];
    let reply = request(addr, "POST", "/v1/orders", &headers, body)
        .await
        .with_context(|| format!("posting to {addr}"))?;
    Ok(reply.status)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Runs the load and prints throughput and latency percentiles.
pub async fn run(addr: &str, token: &str, events: u64, batch: usize, clients: usize) -> Result<()> {
    let config = GeneratorConfig {
        seed: 9,
        events,
        invalid_share: 0.0,
        ..GeneratorConfig::default()
    };
    let payloads: Vec<Vec<u8>> = Generator::new(config)
        .filter(|m| !matches!(m.truth, Truth::Invalid(_)))
        .map(|m| m.payload)
        .collect();
    let bodies: Vec<Vec<u8>> = payloads.chunks(batch).map(|c| c.join(&b'\n')).collect();
    println!(
        "ingest: {} events in {} requests of {batch}, {clients} clients, {addr}",
        payloads.len(),
        bodies.len()
    );
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let mine: Vec<Vec<u8>> = bodies
            .iter()
            .skip(client)
            .step_by(clients)
            .cloned()
            .collect();
        let (addr, token) = (addr.to_owned(), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(mine.len());
            for body in &mine {
                let sent = Instant::now();
                let status = post(&addr, &token, body).await?;
                if status != 200 {
                    bail!("ingest answered {status}");
                }
                latencies.push(sent.elapsed());
            }
            Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "  {:.0} events/s sustained; request latency p50 {:.1} ms, p99 {:.1} ms",
        payloads.len() as f64 / elapsed,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    Ok(())
}
