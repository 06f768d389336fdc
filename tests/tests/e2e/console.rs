//! kappa-console under load: predictions for 150,000 units (more than its `--max-units` of
//! 100,000) arrive at a sustained rate while page readers and an event stream time it. Its memory
//! stops growing once it holds its bound of units, and its pages keep answering within 200 ms at
//! the 99th percentile. The load is `console-bench` (bench/), the same tool `make bench` runs at
//! 50,000 predictions/s on a release build.

use std::process::Command;

use crate::support::*;

const UNITS_KEPT: u64 = 100_000;

#[tokio::test(flavor = "multi_thread")]
async fn the_console_stays_within_its_memory_and_answers_quickly_under_a_sustained_stream() {
    let predictions = unique("test.console-predictions");
    let registry = RegistrySetup::new().start().await;
    let http = free_port();
    let console = Launch::new("kappa-console", &predictions)
        .args([
            format!("--http-listen=127.0.0.1:{http}"),
            format!("--registry={}", registry.address),
            format!("--predictions-topic={predictions}"),
            format!("--max-units={UNITS_KEPT}"),
            "--lookback-seconds=60".to_owned(),
        ])
        .start("")
        .await;
    // A rate a debug build keeps up with while the rest of the suite runs beside it; `make bench`
    // measures 50,000/s on a release build.
    let (rate, seconds) = (10_000_u64, 20_u64);
    let out = run_ok(
        Command::new(binary("console-bench"))
            .args(["--kafka-bootstrap", &bootstrap(), "--topic", &predictions])
            .args(["--console", &format!("127.0.0.1:{http}")])
            .args(["--console-pid", &console.pid().to_string()])
            .args([
                "--units",
                "150000",
                "--rate",
                &rate.to_string(),
                "--seconds",
                &seconds.to_string(),
            ]),
        "console-bench",
    );
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("console-bench prints one JSON object");
    println!("{report}");
    let number = |field: &str| report[field].as_f64().unwrap_or_else(|| panic!("{field} in {report}"));
    assert!(
        number("predictions") >= 0.9 * (rate * seconds) as f64,
        "the load itself fell short: {report}"
    );
    // At the bound, the longest silent hundredth is forgotten at once to make room.
    let units = report["units_on_page"].as_u64().unwrap_or(0);
    assert!(
        (UNITS_KEPT * 99 / 100..=UNITS_KEPT).contains(&units),
        "the console holds its bound of units, no more: {report}"
    );
    assert!(number("page_requests") >= 100.0, "{report}");
    assert!(
        number("page_p99_ms") < 200.0,
        "pages answer within 200 ms at p99: {report}"
    );
    // How late they arrive is the benchmark's to say (this machine runs other tests meanwhile).
    assert!(
        number("anomalies_seen_on_pages") > 0.0,
        "anomalies reach an open page: {report}"
    );
    // Units are at their bound within the first half (100,000 of them in 10 s); from then on
    // older units make room for newer ones and memory stays where it was, give or take what
    // waits in the consumer's bounded queue.
    let (first, second) = (number("rss_mib_first_half_max"), number("rss_mib_second_half_max"));
    assert!(
        second <= first + 48.0,
        "resident memory kept growing ({first:.0} MiB, then {second:.0} MiB): {report}"
    );
    // The readers sent no cookie: they were answered, and no session was kept for any of them
    // (only the page's own /api/session opens one), so scripts cannot crowd out browsers.
    let metrics = scrape(&console.metrics_url).await;
    assert!(
        metrics.lines().any(|line| line == "kappa_console_sessions 0"),
        "{} requests without a cookie left sessions behind:\n{metrics}",
        number("page_requests")
    );
}
