//! A topic's time range as a dataset, the one way the trainer, backtests, `kappa data inspect`
//! and the benches read history:
//!
//! - [`range`] locates `[from, to)` on every partition through the broker's time index
//!   (offsets_for_times), says when retention has cut its start, and samples it;
//! - [`scan`] reads the located offsets of every partition in parallel and decodes each record
//!   through the schema (JSON or protobuf, by the record's content type);
//! - [`rows`] turns decoded events into feature rows with their labels, counting each event it
//!   cannot use by reason;
//! - [`prepare`] splits rows into train, validation and hold-out, screens gross outliers and
//!   fits the robust scaling;
//! - [`infer`] names a spec's features from a sample when the user names none;
//! - [`TimeRangeArgs`] is the one flag group that names a range on a command line.
//!
//! `kappa-kafka` stays plumbing (clients, defaults, admin); what an event means is the schema's
//! (`kappa_model::schema`).

mod flags;
pub mod infer;
pub mod inspect;
pub mod prepare;
pub mod range;
pub mod recent;
pub mod rows;
pub mod scan;

pub use flags::{TimeRangeArgs, resolve_range};
