//! How every Kappa client reaches a Kappa service: one channel builder (address check, connect
//! timeout, the tracing layer that carries W3C context in gRPC metadata) and one registry client
//! (streamed publish with an idempotency key, get with the digest checked). The trainer, the
//! CLI, the benches and the tests all go through it, so what a connection needs (TLS, tokens,
//! limits) is added here once.

mod channel;
pub mod oip;
mod peer_flags;
mod registry;
mod security;

pub use channel::{ClientError, ServiceUrl, connect, connect_with};
pub use kappa_runtime::TracedChannel;
pub use peer_flags::{Peer, PeerSecurityArgs};
pub use registry::{GetError, Registry, Selector, UPLOAD_CHUNK_BYTES};
pub use security::{ClientSecurity, ClientSecurityArgs, read_token};
