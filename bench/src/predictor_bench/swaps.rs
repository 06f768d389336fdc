//! Roll-outs under load: swaps, large models, ONNX graphs, the shadow.

use super::*;

/// Load with `in_flight` workers until `stop`; records latencies and when each version was first seen.
pub(super) async fn load_until(
    url: &str,
    in_flight: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    first_seen: Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>,
) -> anyhow::Result<Vec<Duration>> {
    use std::sync::atomic::Ordering;
    let channel = Channel::from_shared(url.to_owned())?.connect().await?;
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let mut client = PredictorClient::new(channel.clone());
        let (stop, first_seen) = (Arc::clone(&stop), Arc::clone(&first_seen));
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut highest = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let answer = client
                    .predict(request())
                    .await
                    .expect("request failed during swaps")
                    .into_inner();
                latencies.push(t.elapsed());
                if answer.model_version > highest {
                    highest = answer.model_version;
                    first_seen.lock().unwrap().entry(highest).or_insert_with(Instant::now);
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }
    Ok(all)
}

/// Alternates rounds against the plain and the shadowed predictor, so both see the same noise.
pub(super) async fn shadow_bench(
    plain: &str,
    shadowed: &str,
    shadowed_metrics: &str,
    seconds: u64,
    rounds: usize,
) -> anyhow::Result<()> {
    println!("| measurement | with --shadow | without | ratio | target |");
    println!("|---|---|---|---|---|");
    for in_flight in [1, 16] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        let (mut with_rps, mut without_rps) = (0.0, 0.0);
        for _ in 0..rounds {
            let run = drive(plain, in_flight, seconds).await?;
            without_rps += run.rps();
            without.extend(run.latencies);
            let run = drive(shadowed, in_flight, seconds).await?;
            with_rps += run.rps();
            with.extend(run.latencies);
        }
        let (w, wo) = (p99(&mut with), p99(&mut without));
        println!(
            "| p99 latency, {in_flight} in flight | {:.3} ms | {:.3} ms | {:.2}x | <= 1.2x |",
            ms(w),
            ms(wo),
            ms(w) / ms(wo)
        );
        println!(
            "| throughput, {in_flight} in flight | {:.0} req/s | {:.0} req/s | {:.2}x | |",
            with_rps / rounds as f64,
            without_rps / rounds as f64,
            with_rps / without_rps
        );
    }
    let mut rows = Vec::new();
    for outcome in ["scored", "dropped", "produce_failed"] {
        let series = format!("kappa_predictor_shadow_rows_total{{outcome=\"{outcome}\"}}");
        rows.push(kappa_bench::metric(shadowed_metrics, &series).await.unwrap_or(0.0));
    }
    println!(
        "\nshadow copies: {:.0} scored and in Kafka, {:.0} dropped while it was behind, {:.0} not produced (every live call answered)",
        rows[0], rows[1], rows[2]
    );
    Ok(())
}

/// Publishes large versions one after another and times each from its publish returning to the
/// predictor's first answer on it (one client polling).
/// Publishes a version and times publish returned -> the first answer `client`'s predictor
/// gives on it (or a later one).
pub(super) async fn publish_until_served(
    registry: &mut kappa_client::Registry,
    client: &mut PredictorClient<Channel>,
    manifest: &kappa_model::ModelManifest,
    bytes: &[u8],
) -> anyhow::Result<Duration> {
    let version = registry
        .publish(manifest, bytes, "")
        .await?
        .version
        .context("the publish answered no version")?
        .version;
    let published = Instant::now();
    let deadline = published + Duration::from_secs(60);
    loop {
        let answer = client.predict(request()).await.map(Response::into_inner).ok();
        if answer.is_some_and(|a| a.model_version >= version) {
            return Ok(published.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "version {version} not served within 60 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub(super) async fn large_swap(
    predictor: &str,
    registry: &str,
    model: &str,
    mib: u64,
    versions: u64,
) -> anyhow::Result<()> {
    // Two square hidden layers of width w hold about w * w * 4 bytes.
    let width = (((mib * 1024 * 1024 / 4) as f64).sqrt()) as u32;
    let manifest = kappa_model::example::autoencoder_over(model, &CAR_FIELDS, &[width, width]);
    let mut registry = kappa_client::Registry::connect(registry).await?;
    let mut client = PredictorClient::new(Channel::from_shared(predictor.to_owned())?.connect().await?);
    let mut delays = Vec::new();
    let mut size = 0;
    for seed in 0..versions {
        let weights = kappa_model::example::random_weights(&manifest, 7000 + seed);
        size = weights.len();
        delays.push(publish_until_served(&mut registry, &mut client, &manifest, &weights).await?);
    }
    delays.sort_unstable();
    println!("| measurement | value | budget |");
    println!("|---|---|---|");
    println!(
        "| publish returned -> first response on the new version, {:.0} MiB model, {versions} versions | p50 {:.0} ms, max {:.0} ms | <= 2 s |",
        size as f64 / (1024.0 * 1024.0),
        ms(delays[delays.len() / 2]),
        ms(*delays.last().expect("at least one version"))
    );
    Ok(())
}

pub(super) async fn onnx_swap(
    serving: &str,
    other: &str,
    registry: &str,
    model: &str,
    mib: u64,
    swaps: u64,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    // An autoencoder F -> H -> F holds about 2 * F * H floats.
    let hidden = (mib * 1024 * 1024 / 4 / (2 * CAR_FIELDS.len() as u64)) as u32;
    let mut registry = kappa_client::Registry::connect(registry).await?;
    let mut client = PredictorClient::new(Channel::from_shared(serving.to_owned())?.connect().await?);
    let unused = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let load = |stop: &Arc<AtomicBool>| {
        tokio::spawn(load_until_owned(
            other.to_owned(),
            Arc::clone(stop),
            Arc::clone(&unused),
        ))
    };

    // The graphs are made before either phase, so their making loads neither.
    let graphs: Vec<(kappa_model::ModelManifest, Vec<u8>)> = (0..swaps)
        .map(|seed| kappa_model::example::onnx_autoencoder(model, &CAR_FIELDS, &[hidden], 9000 + seed))
        .collect();
    let size = graphs[0].1.len();

    // Rounds alternate: a tenth of the roll-outs under load, then the same load for as long
    // with nothing published, so both phases see the machine's noise alike.
    let (mut delays, mut with, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for round in graphs.chunks(graphs.len().div_ceil(10)) {
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let during = load(&stop);
        for (manifest, graph) in round {
            delays.push(publish_until_served(&mut registry, &mut client, manifest, graph).await?);
        }
        let swapping = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        with.extend(during.await??);

        let stop = Arc::new(AtomicBool::new(false));
        let quiet = load(&stop);
        tokio::time::sleep(swapping).await;
        stop.store(true, Ordering::Relaxed);
        without.extend(quiet.await??);
    }

    delays.sort_unstable();
    let (p_with, p_without) = (p99(&mut with), p99(&mut without));
    println!("| measurement | value | baseline, same run | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| publish returned -> first answer, {:.0} MiB ONNX graph, {swaps} versions | p50 {:.0} ms, max {:.0} ms | | | <= 2 s |",
        size as f64 / (1024.0 * 1024.0),
        ms(delays[delays.len() / 2]),
        ms(*delays.last().expect("at least one swap"))
    );
    println!(
        "| p99 of another model's calls (16 in flight), during the swaps | {:.3} ms ({} calls) | {:.3} ms ({} calls) without | {:.2}x | <= 1.2x |",
        ms(p_with),
        with.len(),
        ms(p_without),
        without.len(),
        ms(p_with) / ms(p_without)
    );
    Ok(())
}

pub(super) fn p99(latencies: &mut [Duration]) -> Duration {
    latencies.sort_unstable();
    latencies[(latencies.len() - 1) * 99 / 100]
}

pub(super) async fn swap_bench(predictor: &str, registry: &str, model: &str, swaps: u64) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let first_seen = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));

    // Both phases publish `swaps` versions at the same cadence, so the registry and the broker
    // do the same work; in the baseline the versions belong to another model, so the predictor
    // does not swap. The difference is the cost of swapping itself.
    let mut registry = kappa_client::Registry::connect(registry).await?;
    let other = format!("{model}-other");
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load_until_owned(
        predictor.to_owned(),
        Arc::clone(&stop),
        Arc::clone(&first_seen),
    ));
    for seed in 0..swaps {
        publish_version(&mut registry, &other, 5000 + seed).await?;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut quiet = load.await??;

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(load_until_owned(
        predictor.to_owned(),
        Arc::clone(&stop),
        Arc::clone(&first_seen),
    ));
    let mut published = Vec::new();
    for seed in 0..swaps {
        let version = publish_version(&mut registry, model, 1000 + seed).await?;
        published.push((version, Instant::now()));
        // Wait until served before the next publish, so every version is measured.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !first_seen.lock().unwrap().contains_key(&version) {
            anyhow::ensure!(Instant::now() < deadline, "version {version} not served within 10 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut swapping = load.await??;
    let seen = first_seen.lock().unwrap();
    let mut delays: Vec<Duration> = published
        .iter()
        .map(|(v, at)| seen[v].saturating_duration_since(*at))
        .collect();
    delays.sort_unstable();
    let (q, s) = (p99(&mut quiet), p99(&mut swapping));
    println!("| measurement | value | baseline | ratio | budget |");
    println!("|---|---|---|---|---|");
    println!(
        "| publish returned -> first response on the new version, {swaps} swaps | p50 {:.1} ms, p99 {:.1} ms | | | p99 <= 50 ms |",
        ms(delays[delays.len() / 2]),
        ms(delays[(delays.len() - 1) * 99 / 100])
    );
    println!(
        "| p99 latency, 16 in flight: {swaps} swaps vs {swaps} publishes of another model | {:.3} ms | {:.3} ms | {:.2}x | <= 1.2x |",
        ms(s),
        ms(q),
        ms(s) / ms(q)
    );
    println!("| failed requests during swaps | 0 of {} | | | 0 |", swapping.len());
    Ok(())
}

pub(super) async fn publish_version(
    registry: &mut kappa_client::Registry,
    model: &str,
    seed: u64,
) -> anyhow::Result<u64> {
    let manifest = kappa_fleet::car_autoencoder(model, &[8]);
    let weights = kappa_model::example::random_weights(&manifest, seed);
    Ok(registry
        .publish(&manifest, &weights, "")
        .await?
        .version
        .unwrap_or_default()
        .version)
}

pub(super) async fn load_until_owned(
    url: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    first_seen: Arc<std::sync::Mutex<std::collections::HashMap<u64, Instant>>>,
) -> anyhow::Result<Vec<Duration>> {
    load_until(&url, 16, stop, first_seen).await
}
