//! The one way a command line names a time range, and the one way a range is resolved against
//! the clock.

use clap::Args;
use kappa_api::trainer::{TimeRange, training_spec::Range};

/// `--from-ms/--to-ms` or `--last-minutes`.
#[derive(Debug, Clone, Default, Args)]
pub struct TimeRangeArgs {
    /// Start of the range, in milliseconds since the Unix epoch (inclusive; event time).
    #[arg(long, requires = "to_ms", conflicts_with = "last_minutes")]
    pub from_ms: Option<i64>,
    /// End of the range, in milliseconds since the Unix epoch (exclusive).
    #[arg(long)]
    pub to_ms: Option<i64>,
    /// The last N minutes instead of a fixed range.
    #[arg(long)]
    pub last_minutes: Option<u32>,
}

impl TimeRangeArgs {
    /// The range as a training spec or inspection names it; `None` when no flag was given.
    pub fn range(&self) -> Option<Range> {
        match (self.from_ms, self.to_ms, self.last_minutes) {
            (Some(from_ms), Some(to_ms), _) => Some(Range::TimeRange(TimeRange { from_ms, to_ms })),
            (_, _, Some(minutes)) => Some(Range::LastMinutes(minutes)),
            _ => None,
        }
    }
}

/// `[from_ms, to_ms)` of `range` at `now_ms`: a fixed range as it is, the last N minutes up to
/// now; `None` when there is no range.
pub fn resolve_range(range: Option<&Range>, now_ms: i64) -> Option<(i64, i64)> {
    match range? {
        Range::TimeRange(r) => Some((r.from_ms, r.to_ms)),
        Range::LastMinutes(minutes) => Some((now_ms - i64::from(*minutes) * 60_000, now_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_resolves_against_the_clock_only_when_it_is_relative() {
        let fixed = TimeRangeArgs {
            from_ms: Some(10),
            to_ms: Some(20),
            last_minutes: None,
        };
        assert_eq!(resolve_range(fixed.range().as_ref(), 1_000_000), Some((10, 20)));
        let last = TimeRangeArgs {
            last_minutes: Some(2),
            ..TimeRangeArgs::default()
        };
        assert_eq!(
            resolve_range(last.range().as_ref(), 1_000_000),
            Some((1_000_000 - 120_000, 1_000_000))
        );
        assert_eq!(TimeRangeArgs::default().range(), None);
    }
}
