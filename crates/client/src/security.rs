//! How a Kappa client proves itself and checks the server: TLS (which CA to trust, and its own
//! certificate for mutual TLS) and a bearer token. Every client (the trainer's registry client,
//! the CLI, the benches, the tests) builds one [`ClientSecurity`] and connects through
//! [`crate::connect_with`], so none of them handles TLS or tokens on its own.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// What a client presents and trusts.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// CA bundle (PEM) to trust for `https://` servers; the system's roots when unset.
    pub ca: Option<Vec<u8>>,
    /// This client's certificate chain and key (PEM), for servers that require mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Sent as `authorization: Bearer …` on every call.
    pub token: Option<String>,
    /// The name to check the server's certificate against, when it differs from the URL's host
    /// (a probe calling its own pod at 127.0.0.1 with a certificate for the Service's name).
    pub server_name: Option<String>,
    /// Send the token over `http://` to a host that is not loopback (a private network the
    /// operator trusts); refused otherwise, since anyone on the path could read and replay it.
    pub plaintext_token: bool,
}

/// Never prints the token or the key.
impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("ca", &self.ca.is_some())
            .field("identity", &self.identity.is_some())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("server_name", &self.server_name)
            .field("plaintext_token", &self.plaintext_token)
            .finish()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// A token file's first non-empty line (a mounted Secret may end with a newline).
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = String::from_utf8(read(path, "the token file")?)
        .map_err(|_| format!("the token file {} is not text", path.display()))?;
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| format!("the token file {} is empty", path.display()))
}

impl ClientSecurity {
    /// From file paths, as flags give them.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        token_file: Option<&Path>,
        token: Option<&str>,
    ) -> Result<Self, String> {
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read(cert, "the client certificate")?, read(key, "the client key")?)),
            (None, None) => None,
            _ => return Err("give the client certificate and its key together".into()),
        };
        let token = match (token_file, token) {
            (Some(path), _) => Some(read_token(path)?),
            (None, Some(token)) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            (None, _) => None,
        };
        Ok(Self {
            ca: ca.map(|p| read(p, "the CA bundle")).transpose()?,
            identity,
            token,
            server_name: None,
            plaintext_token: false,
        })
    }

    /// The TLS settings for an `https://` endpoint.
    pub(crate) fn tls(&self) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::new();
        tls = match &self.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(ca)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        tls
    }
}

/// The client flags of the `kappa` command line (and any other client binary).
#[derive(Debug, Clone, Args)]
pub struct ClientSecurityArgs {
    /// PEM bundle of the CA that signed the server's certificate, for https:// URLs (the
    /// system's roots when unset).
    #[arg(long, env = "KAPPA_TLS_CA", value_name = "PEM", global = true)]
    pub tls_ca: Option<PathBuf>,

    /// This client's PEM certificate, for servers that require mutual TLS (with --tls-key).
    #[arg(
        long,
        env = "KAPPA_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key",
        global = true
    )]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "KAPPA_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert",
        global = true
    )]
    pub tls_key: Option<PathBuf>,

    /// File holding the bearer token to send (`kappa token new` makes one).
    #[arg(long, env = "KAPPA_TOKEN_FILE", value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,

    /// The bearer token itself; prefer --token-file or the environment variable to a flag,
    /// which other users of the machine can see.
    #[arg(
        long,
        env = "KAPPA_TOKEN",
        hide_env_values = true,
        global = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,

    /// Check the server's certificate against this name instead of the URL's host.
    #[arg(long, env = "KAPPA_TLS_SERVER_NAME", value_name = "NAME", global = true)]
    pub tls_server_name: Option<String>,

    /// Send the token over an http:// URL to a host other than this machine. Without it the
    /// client refuses: anyone on the path could read the token and use it. Only for a network
    /// you trust end to end.
    #[arg(long, env = "KAPPA_ALLOW_PLAINTEXT_TOKEN", global = true)]
    pub allow_plaintext_token: bool,
}

impl ClientSecurityArgs {
    pub fn security(&self) -> Result<ClientSecurity, String> {
        let mut security = ClientSecurity::from_files(
            self.tls_ca.as_deref(),
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.token_file.as_deref(),
            self.token.as_deref(),
        )?;
        security.server_name = self.tls_server_name.clone();
        security.plaintext_token = self.allow_plaintext_token;
        Ok(security)
    }
}
