use std::time::Duration;

use kappa_runtime::{TracedChannel, traced};
use thiserror::Error;
use tonic::transport::Endpoint;

/// How long a first connection may take before the caller hears the service is not there.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("{url:?} is not a valid {service} URL (expected e.g. http://127.0.0.1:50051): {reason}")]
    BadUrl {
        service: &'static str,
        url: String,
        reason: String,
    },
    #[error("cannot reach {service} at {url}; is it running, and is the address right? ({reason})")]
    Unreachable {
        service: &'static str,
        url: String,
        reason: String,
    },
}

/// A traced channel to `service` (for messages: "kappa-registry") at `url`.
pub async fn connect(service: &'static str, url: &str) -> Result<TracedChannel, ClientError> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ClientError::BadUrl {
            service,
            url: url.to_owned(),
            reason: "it must start with http:// or https://".into(),
        });
    }
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| ClientError::BadUrl {
        service,
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| ClientError::Unreachable {
            service,
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(traced(channel))
}
