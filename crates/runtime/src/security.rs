//! The security flags every Kappa server takes, and what they become: TLS (or mutual TLS) on the
//! gRPC port and the auth layer. [`crate::ServerArgs`] flattens [`ServerSecurityArgs`] into every
//! service's configuration and the host serves with the loaded [`ServerSecurity`], so every
//! server gets the same defence without code of its own.

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::{
    auth::{AuthLayer, Policy, TokenTable},
    connection::Connections,
    deadline::DeadlineLayer,
    tls::{Protocol, ServerTls, TlsFiles},
};

#[derive(Debug, Clone, Args)]
pub struct ServerSecurityArgs {
    /// PEM certificate chain of this server: serves gRPC over TLS (with --tls-key). Re-read when
    /// the file changes, as cert-manager rotates it. Without it the port is plaintext.
    #[arg(long, env = "KAPPA_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KAPPA_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM bundle of the CAs that sign client certificates: with it, every client must present
    /// a certificate signed by one of them (mutual TLS). Needs --tls-cert.
    #[arg(long, env = "KAPPA_TLS_CLIENT_CA", value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Bearer tokens and their roles: lines `NAME ROLES SHA256-OF-TOKEN` (`kappa token new`
    /// prints one). With it, every call but health and reflection needs a token with the
    /// method's role. Re-read when the file changes; while it is missing or does not parse,
    /// no token is accepted (revocation fails closed).
    #[arg(long, env = "KAPPA_AUTH_TOKENS", value_name = "FILE")]
    pub auth_tokens: Option<PathBuf>,

    /// Largest gRPC message a client may send, in bytes; a larger one is refused with
    /// RESOURCE_EXHAUSTED before it is buffered. (Publish streams weights in 1 MiB chunks.)
    #[arg(long, env = "KAPPA_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024,
          value_parser = clap::value_parser!(u32).range(64 * 1024..=(256 * 1024 * 1024)))]
    pub max_message_bytes: u32,

    /// Concurrent calls (HTTP/2 streams) one client connection may have open.
    #[arg(long, env = "KAPPA_MAX_CONCURRENT_STREAMS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub max_concurrent_streams: u32,

    /// Seconds between HTTP/2 pings on an idle connection; a peer that does not answer within
    /// 20 s is dropped, so vanished clients do not hold streams and memory.
    #[arg(long = "keepalive-seconds", env = "KAPPA_KEEPALIVE_SECONDS", default_value = "30",
          value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub keepalive: Duration,

    /// Seconds a unary call may run before it is answered DEADLINE_EXCEEDED and its work
    /// dropped. Streaming calls (watches, publishes, streamed scoring) are exempt; a caller's
    /// shorter grpc-timeout always applies.
    #[arg(long = "request-timeout-seconds", env = "KAPPA_REQUEST_TIMEOUT_SECONDS", default_value = "60",
          value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub request_timeout: Duration,

    /// Serve /metrics over TLS too, with --tls-cert (no client certificate asked: Prometheus
    /// scrapes with `scheme: https` and the CA).
    #[arg(long, env = "KAPPA_METRICS_TLS", requires = "tls_cert")]
    pub metrics_tls: bool,

    /// How often the TLS and token files are checked for changes, in seconds.
    #[arg(long = "security-reload-seconds", env = "KAPPA_SECURITY_RELOAD_SECONDS", default_value = "5",
          value_name = "SECONDS", value_parser = crate::args::seconds)]
    pub reload_every: Duration,
}

impl ServerSecurityArgs {
    fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// Loads every file once, as `--check-config` and the start do: a missing or malformed
    /// certificate, key, CA or token file is a configuration error.
    pub fn check(&self) -> Result<(), String> {
        if let Some(files) = self.tls_files() {
            ServerTls::check(&files).map_err(|e| format!("--tls-cert/--tls-key/--tls-client-ca: {e}"))?;
        }
        if let Some(path) = &self.auth_tokens {
            TokenTable::read(path)?;
        }
        if self.reload_every.is_zero() {
            return Err("--security-reload-seconds must be above 0".into());
        }
        if self.keepalive.is_zero() {
            return Err("--keepalive-seconds must be above 0".into());
        }
        if self.request_timeout.is_zero() {
            return Err("--request-timeout-seconds must be above 0".into());
        }
        Ok(())
    }

    /// What an operator should hear about this combination at start-up, if anything.
    pub fn warning(&self) -> Option<&'static str> {
        (self.tls_client_ca.is_some() && self.auth_tokens.is_none()).then_some(
            "mutual TLS without --auth-tokens: every certificate the client CA signs (a bridge's, a probe's) may call every RPC, publishes and deletions included; give principals their roles with --auth-tokens",
        )
    }

    /// `tls=… auth=…` for `--check-config` and the start-up log.
    pub fn summary(&self) -> String {
        let tls = match (&self.tls_cert, &self.tls_client_ca) {
            (None, _) => "off",
            (Some(_), None) => "on",
            (Some(_), Some(_)) => "mutual",
        };
        let auth = match &self.auth_tokens {
            None => "off".to_owned(),
            Some(path) => match TokenTable::read(path) {
                Ok(table) => format!("{} principals", table.len()),
                Err(_) => "unreadable".to_owned(),
            },
        };
        let metrics = if self.metrics_tls { " metrics_tls=on" } else { "" };
        format!("tls={tls} auth={auth}{metrics}")
    }

    /// The server's security, watching its files until `stop`. `streaming` lists the paths of
    /// the streaming methods, which the per-call deadline leaves alone.
    pub fn load(
        &self,
        policy: Policy,
        streaming: Vec<String>,
        stop: CancellationToken,
    ) -> Result<ServerSecurity, String> {
        let tls = self
            .tls_files()
            .map(|files| ServerTls::load(files, Protocol::Grpc, self.reload_every, stop.clone()))
            .transpose()?;
        // Browsers and Prometheus speak HTTP/1.1 and present no client certificate.
        let http_tls = match self.tls_files() {
            Some(files) => Some(ServerTls::load(
                TlsFiles {
                    client_ca: None,
                    ..files
                },
                Protocol::Http1,
                self.reload_every,
                stop.clone(),
            )?),
            None => None,
        };
        let metrics_tls = http_tls.clone().filter(|_| self.metrics_tls);
        let auth = match &self.auth_tokens {
            None => AuthLayer::disabled(policy),
            Some(path) => AuthLayer::from_file(path.clone(), policy, self.reload_every, stop)?,
        };
        Ok(ServerSecurity {
            tls,
            http_tls,
            metrics_tls,
            auth,
            deadline: DeadlineLayer::new(self.request_timeout, streaming),
            limits: ConnectionLimits {
                max_message_bytes: self.max_message_bytes as usize,
                max_concurrent_streams: self.max_concurrent_streams,
                keepalive: self.keepalive,
            },
            connections: Connections::for_keepalive(self.keepalive),
        })
    }
}

/// What one client connection may hold.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_message_bytes: usize,
    pub max_concurrent_streams: u32,
    pub keepalive: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_message_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 256,
            keepalive: Duration::from_secs(30),
        }
    }
}

/// A server's loaded security.
#[derive(Clone)]
pub struct ServerSecurity {
    pub(crate) tls: Option<ServerTls>,
    /// TLS for a service's own HTTP/1.1 port (the console's web pages), with --tls-cert.
    pub http_tls: Option<ServerTls>,
    /// TLS for /metrics, when --metrics-tls.
    pub metrics_tls: Option<ServerTls>,
    /// Who may call: the gRPC layer, and the principal of a token for other ports.
    pub auth: AuthLayer,
    pub(crate) deadline: DeadlineLayer,
    pub limits: ConnectionLimits,
    /// The gRPC port's connections: how long they may stay silent, and their metrics.
    pub connections: Arc<Connections>,
}

impl ServerSecurity {
    /// Plaintext and no authentication (in-process tests).
    pub fn none(policy: Policy) -> Self {
        Self {
            tls: None,
            http_tls: None,
            metrics_tls: None,
            auth: AuthLayer::disabled(policy),
            deadline: DeadlineLayer::new(Duration::from_secs(60), Vec::new()),
            limits: ConnectionLimits::default(),
            connections: Connections::for_keepalive(ConnectionLimits::default().keepalive),
        }
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}
