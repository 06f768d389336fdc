//! TLS and mutual TLS for every Kappa server (rustls): the certificate, key and client CA are
//! PEM files, re-read when they change (cert-manager rotates them in place), and each new
//! connection is accepted with the configuration current at that moment. Handshakes run off the
//! accept loop, bounded in number and time, and the loop never waits for a free slot: a new
//! connection always gets one, taking it from the oldest handshake still pending when all are
//! in use. An honest client finishes its handshake in milliseconds, so peers that connect and
//! say nothing cannot keep a new client out.

use std::{collections::VecDeque, io, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        RootCertStore, ServerConfig,
        crypto::ring::default_provider,
        pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
        server::WebPkiClientVerifier,
    },
    server::TlsStream,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::{
    connection::{Closed, Connections},
    reload::Reloading,
};

/// Counts a handshake as in progress for as long as it lives, aborted or not.
struct Handshaking(Arc<Connections>);

impl Handshaking {
    fn new(connections: &Arc<Connections>) -> Self {
        connections.handshake_started();
        Self(Arc::clone(connections))
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        self.0.handshake_ended();
    }
}

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a connection past it displaces the oldest pending one.
const MAX_HANDSHAKES: usize = 256;

/// The handshakes in progress, oldest first, at most [`MAX_HANDSHAKES`].
#[derive(Default)]
struct Pending {
    tasks: VecDeque<JoinHandle<()>>,
}

impl Pending {
    /// Takes in a new handshake; past the limit, the oldest one still pending is dropped (its
    /// connection closed).
    fn admit(&mut self, handshake: JoinHandle<()>, connections: &Connections) {
        self.tasks.retain(|task| !task.is_finished());
        self.tasks.push_back(handshake);
        if self.tasks.len() > MAX_HANDSHAKES
            && let Some(oldest) = self.tasks.pop_front()
        {
            oldest.abort();
            connections.closed(Closed::HandshakeDisplaced);
            tracing::debug!("a pending TLS handshake gave its slot to a newer connection");
        }
    }
}

/// What is spoken over the TLS session, announced by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The metrics endpoint: HTTP/1.1.
    Http1,
}

impl Protocol {
    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Protocol::Grpc => vec![b"h2".to_vec()],
            Protocol::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// Where a server's TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.cert.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }
}

/// Reads the PEM certificates in `path` (a chain, or a CA bundle).
pub fn read_certificates(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{} is not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    Ok(certs)
}

/// Builds the rustls configuration from the files as they are now.
pub fn server_config(files: &TlsFiles, protocol: Protocol) -> Result<ServerConfig, String> {
    let provider = Arc::new(default_provider());
    let chain = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read the private key {}: {e}", files.key.display()))?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a usable identity: {e}",
            files.cert.display(),
            files.key.display()
        )
    })?;
    config.alpn_protocols = protocol.alpn();
    Ok(config)
}

/// A server's TLS: the configuration, rebuilt when its files change.
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<Reloading<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Loads the files now (an error here is a configuration error) and re-reads them every
    /// `reload_every` until `stop`.
    pub fn load(
        files: TlsFiles,
        protocol: Protocol,
        reload_every: Duration,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        let paths = files.paths();
        let config = Reloading::new("TLS certificate", paths, move || {
            server_config(&files, protocol).map(Arc::new)
        })?;
        config.watch(reload_every, stop);
        Ok(Self { config })
    }

    /// Checks that the files load, without watching them (`--check-config`).
    pub fn check(files: &TlsFiles) -> Result<(), String> {
        server_config(files, Protocol::Grpc).map(|_| ())
    }

    /// TLS connections accepted on `listener`, each with the configuration current when it
    /// arrived. Failed handshakes are logged, counted in `connections` and dropped; they never
    /// reach the gRPC server.
    pub fn incoming(
        &self,
        listener: TcpListener,
        connections: Arc<Connections>,
    ) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(64);
        let config = Arc::clone(&self.config);
        tokio::spawn(async move {
            let mut pending = Pending::default();
            loop {
                let (stream, peer) = tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(%error, "could not accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = stream.set_nodelay(true);
                let acceptor = TlsAcceptor::from(config.current().as_ref().clone());
                let (tx, handshaking) = (tx.clone(), Handshaking::new(&connections));
                pending.admit(
                    tokio::spawn(async move {
                        let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
                        let connections = Arc::clone(&handshaking.0);
                        drop(handshaking);
                        match outcome {
                            Ok(Ok(tls)) => {
                                let _ = tx.send(Ok(tls)).await;
                            }
                            Ok(Err(error)) => {
                                connections.closed(Closed::HandshakeFailed);
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                            }
                            Err(_) => {
                                connections.closed(Closed::HandshakeTimeout);
                                tracing::debug!(%peer, "TLS handshake timed out");
                            }
                        }
                    }),
                    &connections,
                );
            }
        });
        ReceiverStream::new(rx)
    }
}
