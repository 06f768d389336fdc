//! Values built from files that operators replace while the service runs (certificates that
//! cert-manager rotates, a token table): built once at start (a bad file stops the start),
//! then rebuilt whenever one of the files changes. A rebuild that fails keeps the previous value
//! and says why, so a half-written certificate never takes a serving process down; what grants
//! access (a token table) fails closed instead: a file that stops loading grants nothing until
//! it loads again, so deleting or breaking it revokes every token.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime},
};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

/// What a file looked like the last time it was read (modification time and length).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    // `metadata` follows symlinks: a Kubernetes Secret volume swaps a symlink to a new directory.
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A value rebuilt from `paths` when they change.
pub struct Reloading<T> {
    current: ArcSwap<T>,
    paths: Vec<PathBuf>,
    /// The files' stamps taken just before the first build, so a change that lands between
    /// that build and the watcher's start is still seen.
    built_from: Vec<Stamp>,
    build: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
    /// What to hold while the files do not load; `None` keeps the previous value.
    closed: Option<Box<dyn Fn() -> T + Send + Sync>>,
    what: &'static str,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the value now; `what` names it in logs ("TLS certificate").
    pub fn new(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, String> {
        Self::with(what, paths, Box::new(build), None)
    }

    /// Like [`Reloading::new`], but while the files, once changed, do not load, the value is
    /// `closed()` (a token table with no principals) instead of the last good one.
    pub fn fail_closed(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, String> + Send + Sync + 'static,
        closed: impl Fn() -> T + Send + Sync + 'static,
    ) -> Result<Arc<Self>, String> {
        Self::with(what, paths, Box::new(build), Some(Box::new(closed)))
    }

    fn with(
        what: &'static str,
        paths: Vec<PathBuf>,
        build: Box<dyn Fn() -> Result<T, String> + Send + Sync>,
        closed: Option<Box<dyn Fn() -> T + Send + Sync>>,
    ) -> Result<Arc<Self>, String> {
        let built_from = paths.iter().map(stamp).collect();
        let first = build()?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(first),
            paths,
            built_from,
            build,
            closed,
            what,
        }))
    }

    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Checks the files every `every` until `stop`, rebuilding on a change.
    pub fn watch(self: &Arc<Self>, every: Duration, stop: CancellationToken) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut seen = this.built_from.clone();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now: Vec<Stamp> = this.paths.iter().map(stamp).collect();
                if now == seen {
                    continue;
                }
                match (this.build)() {
                    Ok(value) => {
                        this.current.store(Arc::new(value));
                        seen = now;
                        tracing::info!(what = this.what, files = ?this.paths, "reloaded after the files changed");
                    }
                    // Not marked seen: a file caught half-written is read again at the next tick.
                    Err(error) => match &this.closed {
                        Some(closed) => {
                            this.current.store(Arc::new(closed()));
                            tracing::error!(
                                what = this.what,
                                %error,
                                "the files changed and do not load; granting nothing until they do"
                            );
                        }
                        None => tracing::error!(
                            what = this.what,
                            %error,
                            "the files changed but do not load; keeping the previous one"
                        ),
                    },
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").unwrap();
        let value = Reloading::new("number", vec![path.clone()], number_in(&path)).unwrap();
        let stop = CancellationToken::new();
        value.watch(Duration::from_millis(10), stop.clone());
        std::fs::write(&path, "22").unwrap();
        wait_for(|| *value.current() == 22).await;
        std::fs::write(&path, "not a number").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*value.current(), 22, "a broken file keeps the last good value");
        std::fs::write(&path, "333").unwrap();
        wait_for(|| *value.current() == 333).await;
        stop.cancel();
        assert!(Reloading::new("number", vec![dir.path().join("absent")], || Err::<u32, _>("no".into())).is_err());
    }

    #[tokio::test]
    async fn what_fails_closed_holds_the_closed_value_while_its_file_does_not_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").unwrap();
        let value = Reloading::fail_closed("number", vec![path.clone()], number_in(&path), || 0).unwrap();
        let stop = CancellationToken::new();
        value.watch(Duration::from_millis(10), stop.clone());
        std::fs::write(&path, "not a number").unwrap();
        wait_for(|| *value.current() == 0).await;
        std::fs::write(&path, "7").unwrap();
        wait_for(|| *value.current() == 7).await;
        std::fs::remove_file(&path).unwrap();
        wait_for(|| *value.current() == 0).await;
        stop.cancel();
    }

    /// Reads the number a test file holds.
    fn number_in(path: &std::path::Path) -> impl Fn() -> Result<u32, String> + Send + Sync + 'static {
        let path = path.to_owned();
        move || {
            std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())?
                .trim()
                .parse::<u32>()
                .map_err(|e| e.to_string())
        }
    }

    async fn wait_for(done: impl Fn() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not reloaded within 5 s");
    }
}
