use std::time::Duration;

use kappa_runtime::{TracedChannel, traced, traced_with_token};

use crate::ClientSecurity;
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

/// The address of a Kappa service, checked when it is parsed (a flag's value, a test's address):
/// `http://` or `https://`, a host and a port tonic can connect to.
#[derive(Debug, Clone)]
pub struct ServiceUrl {
    text: String,
    endpoint: Endpoint,
}

impl ServiceUrl {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &str {
        if self.text.starts_with("https://") {
            "https"
        } else {
            "http"
        }
    }

    /// The host, without an IPv6 address's brackets.
    pub fn host(&self) -> &str {
        self.endpoint.uri().host().unwrap_or_default().trim_matches(['[', ']'])
    }

    /// The port, or the scheme's own when the URL names none.
    pub fn port(&self) -> u16 {
        let default = if self.scheme() == "https" { 443 } else { 80 };
        self.endpoint.uri().port_u16().unwrap_or(default)
    }

    /// Refuses a token sent in plaintext (`http://`) to another machine, unless `security`
    /// allows it: anyone on the path could read the token and call as its principal.
    pub fn check_token_transport(&self, security: &ClientSecurity) -> Result<(), String> {
        let host = self.endpoint.uri().host().unwrap_or_default();
        if security.token.is_none()
            || !self.text.starts_with("http://")
            || security.plaintext_token
            || is_loopback(host)
        {
            return Ok(());
        }
        Err(format!(
            "a token would travel in plaintext to {host}: use an https:// URL, or allow it (--allow-plaintext-token) if every hop of the network is yours"
        ))
    }
}

impl std::str::FromStr for ServiceUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "{url:?} must start with http:// or https:// (e.g. http://127.0.0.1:50051)"
            ));
        }
        let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| format!("{url:?} is not a valid URL: {e}"))?;
        Ok(Self {
            text: url.to_owned(),
            endpoint,
        })
    }
}

impl std::fmt::Display for ServiceUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// A traced channel to `service` (for messages: "kappa-registry") at `url`, without TLS
/// settings of its own (an `https://` URL trusts the system's roots) or a token.
pub async fn connect(service: &'static str, url: &str) -> Result<TracedChannel, ClientError> {
    connect_with(service, url, &ClientSecurity::default()).await
}

/// A traced channel to `service` at `url`: TLS for `https://` URLs with the CA and identity of
/// `security`, and its token on every call.
pub async fn connect_with(
    service: &'static str,
    url: &str,
    security: &ClientSecurity,
) -> Result<TracedChannel, ClientError> {
    let bad = |reason: String| ClientError::BadUrl {
        service,
        url: url.to_owned(),
        reason,
    };
    let parsed: ServiceUrl = url.parse().map_err(bad)?;
    parsed.check_token_transport(security).map_err(bad)?;
    let mut endpoint = parsed
        .endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .max_frame_size(kappa_runtime::HTTP2_MAX_FRAME_SIZE)
        .initial_stream_window_size(kappa_runtime::HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(kappa_runtime::HTTP2_CONNECTION_WINDOW);
    if url.starts_with("https://") {
        endpoint = endpoint
            .tls_config(security.tls())
            .map_err(|e| bad(format!("its TLS settings do not apply: {e}")))?;
    } else if security.identity.is_some() || security.ca.is_some() {
        return Err(bad("TLS settings are given, so use an https:// URL".into()));
    }
    let channel = endpoint.connect().await.map_err(|e| ClientError::Unreachable {
        service,
        url: url.to_owned(),
        reason: error_chain(&e),
    })?;
    match &security.token {
        None => Ok(traced(channel)),
        Some(token) => traced_with_token(channel, token).map_err(bad),
    }
}

/// Whether `host` (from a URL) names this machine, where a plaintext token never leaves it.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// An error and its causes: tonic's transport error alone says only "transport error", while
/// the cause says what went wrong (a certificate not trusted, a handshake refused).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_goes_in_plaintext_only_to_this_machine_or_when_allowed() {
        let with_token = ClientSecurity {
            token: Some("secret".into()),
            ..ClientSecurity::default()
        };
        let check =
            |url: &str, security: &ClientSecurity| url.parse::<ServiceUrl>().unwrap().check_token_transport(security);
        for local in [
            "http://127.0.0.1:50051",
            "http://localhost:1",
            "http://[::1]:50051",
            "http://127.3.2.1:9",
        ] {
            assert_eq!(check(local, &with_token), Ok(()), "{local}");
        }
        let refused = check("http://registry.kappa.svc:50051", &with_token).unwrap_err();
        assert!(
            refused.contains("registry.kappa.svc") && refused.contains("https://"),
            "{refused}"
        );
        assert!(check("http://10.0.0.7:50051", &with_token).is_err());
        assert_eq!(check("https://registry.kappa.svc:50051", &with_token), Ok(()));
        assert_eq!(
            check("http://registry.kappa.svc:50051", &ClientSecurity::default()),
            Ok(())
        );
        let allowed = ClientSecurity {
            plaintext_token: true,
            ..with_token
        };
        assert_eq!(check("http://registry.kappa.svc:50051", &allowed), Ok(()));
    }
}
