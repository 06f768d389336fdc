//! Service processes: the one way a test starts a Kappa binary (its own ports, the test broker, a log file), stops or kills it, and reads its log.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::*;

/// A name no other test run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// A port for a service to listen on, free when asked. Taken below Linux's ephemeral range
/// (32768-60999), where the kernel hands out the local ports of outgoing connections: a port
/// the kernel picked for us could be given to any client's connection before the service
/// binds it, and CI saw a registry fail to bind its metrics port so.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    // Each process starts at a place of its own, so two test binaries at once start apart.
    static NEXT: std::sync::LazyLock<AtomicU32> = std::sync::LazyLock::new(|| AtomicU32::new(std::process::id() * 7));
    for _ in FIRST..LAST {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % u32::from(LAST - FIRST);
        let port = FIRST + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {FIRST} and {LAST} on 127.0.0.1");
}

/// Binaries are built next to the test executable's `deps/` folder (`make test` builds them).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `make test` does)",
        path.display()
    );
    path
}

fn log_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().join("e2e-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A service process; killed when dropped so a failing test leaves nothing running.
pub struct Service {
    child: Child,
    pub address: String,
    pub log: PathBuf,
    /// `http://host:port/metrics`.
    pub metrics_url: String,
}

/// The one way the tests start a Kappa service: the binary with its own loopback gRPC and metrics
/// ports, the test broker, a log file per process, and whatever the test adds.
pub struct Launch {
    binary: &'static str,
    label: String,
    bootstrap: String,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Launch {
    /// `binary` (e.g. `kappa-registry`); `label` names its log file.
    pub fn new(binary: &'static str, label: &str) -> Self {
        Self {
            binary,
            label: label.to_owned(),
            bootstrap: bootstrap(),
            args: Vec::new(),
            envs: Vec::new(),
        }
    }

    /// Another broker than the test broker.
    pub fn bootstrap(mut self, bootstrap: &str) -> Self {
        self.bootstrap = bootstrap.to_owned();
        self
    }

    /// Another broker than the test broker, with the client properties of a principal.
    pub fn kafka(mut self, bootstrap: &str, properties_file: &std::path::Path) -> Self {
        self.bootstrap = bootstrap.to_owned();
        self.args
            .push(format!("--kafka-properties-file={}", properties_file.display()));
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn envs(mut self, envs: &[(String, String)]) -> Self {
        self.envs.extend(envs.iter().cloned());
        self
    }

    /// A setup's extra flags and environment.
    pub fn extra(self, extra: &Extra) -> Self {
        self.args(extra.args.iter().cloned()).envs(&extra.envs)
    }

    /// Starts the process without waiting for it to serve.
    pub fn spawn(self) -> Service {
        let (port, metrics_port) = (free_port(), free_port());
        let log = log_dir().join(format!("{}-{}-{port}.log", self.label, self.binary));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary(self.binary))
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--kafka-bootstrap", &self.bootstrap])
            // KAPPA_TEST_LOG (a --log filter) to see more of every service, e.g. rumqttc=trace.
            .args([
                "--log",
                &std::env::var("KAPPA_TEST_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            ])
            .args(&self.args)
            .envs(self.envs)
            // The test's own environment must not point the service elsewhere.
            .env_remove("KAPPA_LISTEN")
            .env_remove("KAPPA_METRICS_LISTEN")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Service {
            child,
            address: format!("http://127.0.0.1:{port}"),
            log,
            metrics_url: format!("http://127.0.0.1:{metrics_port}/metrics"),
        }
    }

    /// Starts the process and waits until grpc.health.v1 reports `service_name` SERVING.
    pub async fn start(self, service_name: &str) -> Service {
        let service = self.spawn();
        wait_serving(&service, service_name).await;
        service
    }
}

impl Service {
    /// The process id (to read its memory from /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (bounded) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "service did not stop within 30 s of SIGTERM; log: {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no clean-up of any kind, as in a crash.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits (bounded by `limit`) for a process that must stop on its own, as a service refusing
    /// its configuration does; panics with `what` if it keeps running.
    pub async fn exit_status(&mut self, limit: Duration, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `lines` lines, whether the process still runs and its metrics: what a
    /// failure report needs when the log is too long to be shown whole.
    pub async fn report(&mut self, lines: usize) -> String {
        let text = self.log_text();
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        let (status, metrics) = match self.child.try_wait() {
            Ok(Some(status)) => (format!("exited: {status}"), String::new()),
            Ok(None) => ("still running".to_owned(), scrape(&self.metrics_url).await),
            Err(e) => (format!("status unknown: {e}"), String::new()),
        };
        let kappa: Vec<&str> = metrics.lines().filter(|l| l.starts_with("kappa_")).collect();
        format!(
            "{status}; its kappa_ metrics:\n{}\nthe last {lines} of its {} log lines:\n{tail}",
            kappa.join("\n"),
            all.len()
        )
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test's services say what they did: CI keeps only what the run printed.
        if std::thread::panicking() {
            let text = self.log_text();
            let all: Vec<&str> = text.lines().collect();
            let tail = all[all.len().saturating_sub(LOG_TAIL_ON_FAILURE)..].join("\n");
            eprintln!(
                "--- {} (last {LOG_TAIL_ON_FAILURE} of {} lines) ---\n{tail}\n--- end of {} ---",
                self.log.display(),
                all.len(),
                self.log.display()
            );
        }
    }
}

/// How much of each service's log a failing test prints.
const LOG_TAIL_ON_FAILURE: usize = 40;

/// Runs `command` to its end and returns its standard output; panics with `what` and its
/// standard error when it fails.
pub fn run_ok(command: &mut Command, what: &str) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `kappa fleet` into `topic`; panics if it fails.
pub fn run_fleet(topic: &str, args: &[&str]) {
    run_ok(
        Command::new(binary("kappa"))
            .args(["fleet", "--kafka-bootstrap", &bootstrap(), "--topic", topic])
            .args(args),
        "kappa fleet",
    );
}

/// `kappa backtest` of `model`'s `version` over everything `topic` holds (event times up to a
/// minute from now), on the registry at `registry`: the command, to which a test adds flags.
pub fn kappa_backtest(registry: &str, model: &str, version: &str, topic: &str) -> Command {
    let to_ms = (std::time::SystemTime::now() + Duration::from_secs(60))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    let mut command = Command::new(binary("kappa"));
    command.args([
        "backtest",
        "--registry",
        registry,
        "--kafka-bootstrap",
        &bootstrap(),
        "--model",
        model,
        "--version",
        version,
        "--topic",
        topic,
        "--from-ms",
        "0",
        "--to-ms",
        &to_ms,
    ]);
    command
}
