//! Which role each trainer call needs (the auth layer's policy). Two rules need the request and
//! are checked in the handlers: a job that moves an alias also needs `write` (it changes what is
//! served), and cancelling another principal's job needs `admin`.

use kappa_runtime::auth::{Access, Role};

pub fn access(path: &str) -> Access {
    let Some(method) = path.strip_prefix("/kappa.trainer.v1.Trainer/") else {
        return Access::Unlisted;
    };
    match method {
        // Monitoring windows and shadow comparisons are aggregates of what was scored, not events.
        "GetJob" | "ListJobs" | "WatchJob" | "WatchMonitoring" | "CompareShadow" => Access::Needs(Role::Read),
        // Reading a range is a job's first step, with the trainer's own Kafka credentials.
        "StartTraining" | "CancelJob" | "ReadRange" | "Inspect" | "Backtest" => Access::Needs(Role::Train),
        _ => Access::Unlisted,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_trainer_method_has_a_role() {
        let paths = kappa_api::method_paths("kappa.trainer.v1.Trainer");
        assert_eq!(paths.len(), 10, "{paths:?}");
        for path in paths {
            assert_ne!(super::access(&path), kappa_runtime::auth::Access::Unlisted, "{path}");
        }
    }
}
