//! The models log, Kappa's most important idea: the compacted topic that is the registry's only
//! storage and every predictor's source. Here live its key scheme, its record codec, the one
//! fold every reader applies ([`ModelLog`]), the one follower that keeps a fold current, and the
//! chunk reader that fetches a version's weights by offset.

pub mod chunks;
mod fold;
pub mod follower;
pub mod keys;
pub mod records;
pub mod trust;

pub use fold::{Follow, Lookup, MAX_CHUNKS, MissingChunks, ModelLog, ModelState, StoredVersion};
pub use keys::ModelKey;
pub use records::Put;
