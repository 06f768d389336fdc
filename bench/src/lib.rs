//! What several benchmark binaries share: free loopback ports and counting a topic's records.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Counts the records of a topic from its watermarks (blocking calls: keep off async workers).
pub struct RecordCounter {
    consumer: BaseConsumer,
}

impl RecordCounter {
    pub fn new(bootstrap: &str) -> anyhow::Result<Self> {
        Ok(Self {
            consumer: rdkafka::ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .create()?,
        })
    }

    /// Records in `topic` across its partitions.
    pub fn count(&self, topic: &str) -> anyhow::Result<i64> {
        let metadata = self.consumer.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        let mut total = 0;
        for p in metadata.topics().first().map(|t| t.partitions()).unwrap_or_default() {
            let (low, high) = self.consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5))?;
            total += high - low;
        }
        Ok(total)
    }

    /// Waits until `topic` holds `events` records; the clock starts at the first one. Events/s.
    pub fn rate_until(&self, topic: &str, events: usize) -> anyhow::Result<f64> {
        let mut started = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let n = self.count(topic).unwrap_or(0);
            if n > 0 {
                started.get_or_insert_with(Instant::now);
            }
            if n >= events as i64 {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "only {n} of {events} records after 600 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(events as f64 / started.map_or(f64::NAN, |s: Instant| s.elapsed().as_secs_f64()))
    }
}

/// The value of one series on a service's `/metrics` (`address` is host:port); `None` when the
/// service does not answer or does not expose it.
pub async fn metric(address: &str, series: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    stream
        .write_all(format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}
