use kappa_api::{
    model::ModelManifest,
    registry::{self as pb, get_model_request, get_model_response, publish_request, registry_client::RegistryClient},
};
use kappa_model::signing::ModelSigner;
use kappa_runtime::TracedChannel;
use thiserror::Error;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

use crate::{ClientError, ClientSecurity, connect_with};

/// Size of the chunks a publish streams: far below gRPC's 4 MiB message limit.
pub const UPLOAD_CHUNK_BYTES: usize = 1024 * 1024;
/// Publishes a signed publish may lose to others before it gives up.
const PUBLISH_RACES: usize = 5;
/// Largest message a registry answer may hold (a chunk of a model written by another client).
const MAX_DECODING_BYTES: usize = 64 * 1024 * 1024;

/// Which version of a model to get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Latest,
    Version(u64),
    Alias(String),
}

impl From<Selector> for Option<get_model_request::Selector> {
    fn from(selector: Selector) -> Self {
        match selector {
            Selector::Latest => None,
            Selector::Version(v) => Some(get_model_request::Selector::Version(v)),
            Selector::Alias(a) => Some(get_model_request::Selector::Alias(a)),
        }
    }
}

#[derive(Debug, Error)]
pub enum GetError {
    #[error("{0}")]
    Status(#[from] Status),
    #[error("the registry answered without a header")]
    NoHeader,
    #[error("the downloaded weights hash to {actual}, not {expected}; the copy is corrupt")]
    DigestMismatch { actual: String, expected: String },
}

/// The registry client every Kappa caller uses.
#[derive(Debug, Clone)]
pub struct Registry {
    inner: RegistryClient<TracedChannel>,
}

impl From<RegistryClient<TracedChannel>> for Registry {
    fn from(inner: RegistryClient<TracedChannel>) -> Self {
        Self {
            inner: inner.max_decoding_message_size(MAX_DECODING_BYTES),
        }
    }
}

impl Registry {
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, &ClientSecurity::default()).await
    }

    pub async fn connect_with(url: &str, security: &ClientSecurity) -> Result<Self, ClientError> {
        Ok(Self::new(connect_with("kappa-registry", url, security).await?))
    }

    pub fn new(channel: TracedChannel) -> Self {
        Self {
            inner: RegistryClient::new(channel).max_decoding_message_size(MAX_DECODING_BYTES),
        }
    }

    /// The generated client, for the calls that need no help (list, aliases, delete, watch).
    pub fn rpc(&mut self) -> &mut RegistryClient<TracedChannel> {
        &mut self.inner
    }

    /// Publishes as one client stream: the header, then the weights in 1 MiB chunks. A retry
    /// with the same non-empty `idempotency_key` returns the version the first attempt wrote.
    pub async fn publish(
        &mut self,
        manifest: &ModelManifest,
        weights: &[u8],
        idempotency_key: &str,
    ) -> Result<pb::PublishResponse, Status> {
        self.publish_signed(manifest, weights, idempotency_key, None).await
    }

    /// Like [`Self::publish`], signed with `signer` when given. The manifest's weights digest
    /// and size are filled in from `weights` (so a retry is recognised by its content); a
    /// signed publish also names its version, which the signature covers: the next one, asked
    /// of the registry and asked again when another publish took it first.
    pub async fn publish_signed(
        &mut self,
        manifest: &ModelManifest,
        weights: &[u8],
        idempotency_key: &str,
        signer: Option<&ModelSigner>,
    ) -> Result<pb::PublishResponse, Status> {
        let mut manifest = manifest.clone();
        manifest.weights_size = weights.len() as u64;
        manifest.weights_sha256 = kappa_model::sha256_hex(weights);
        let Some(signer) = signer else {
            manifest.version = 0;
            return self
                .upload(manifest, weights, idempotency_key, (Vec::new(), String::new()))
                .await;
        };
        let mut version = self.next_version(&manifest.name).await?;
        // Each lost race means another version was published meanwhile; a few are plenty.
        for _ in 0..PUBLISH_RACES {
            manifest.version = version;
            let signature = signer.sign(&manifest);
            match self.upload(manifest.clone(), weights, idempotency_key, signature).await {
                Err(status) if status.code() == Code::Aborted => {
                    version = status
                        .metadata()
                        .get(pb::NEXT_VERSION_METADATA)
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .ok_or(status)?;
                }
                answer => return answer,
            }
        }
        Err(Status::aborted(format!(
            "{PUBLISH_RACES} other publishes of {:?} took the next version first; publish again",
            manifest.name
        )))
    }

    /// The number the next publish of `name` takes.
    pub async fn next_version(&mut self, name: &str) -> Result<u64, Status> {
        match self
            .inner
            .list_versions(pb::ListVersionsRequest { name: name.to_owned() })
            .await
        {
            Ok(list) => Ok(list.into_inner().next_version.max(1)),
            // Unknown to readers: never published, or every version deleted (then the
            // registry answers the first try with the number to use).
            Err(status) if status.code() == Code::NotFound => Ok(1),
            Err(status) => Err(status),
        }
    }

    async fn upload(
        &mut self,
        manifest: ModelManifest,
        weights: &[u8],
        idempotency_key: &str,
        (signature, signing_key_id): (Vec<u8>, String),
    ) -> Result<pb::PublishResponse, Status> {
        let header = pb::PublishRequest {
            part: Some(publish_request::Part::Header(pb::PublishHeader {
                manifest: Some(manifest),
                idempotency_key: idempotency_key.to_owned(),
                signature,
                signing_key_id,
            })),
        };
        let chunks = weights.chunks(UPLOAD_CHUNK_BYTES).map(|c| pb::PublishRequest {
            part: Some(publish_request::Part::Chunk(c.to_vec())),
        });
        let messages: Vec<pb::PublishRequest> = std::iter::once(header).chain(chunks).collect();
        Ok(self.inner.publish(tokio_stream::iter(messages)).await?.into_inner())
    }

    /// A version's header and weights, the weights checked against the manifest's SHA-256.
    pub async fn get(&mut self, name: &str, selector: Selector) -> Result<(pb::ModelVersion, Vec<u8>), GetError> {
        let (header, weights) = self.fetch(name, selector, false).await?;
        let expected = header.weights_sha256.clone();
        let actual = kappa_model::sha256_hex(&weights);
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(GetError::DigestMismatch { actual, expected });
        }
        Ok((header, weights))
    }

    /// A version's header alone (manifest, aliases), without its weights.
    pub async fn get_manifest(&mut self, name: &str, selector: Selector) -> Result<pb::ModelVersion, GetError> {
        Ok(self.fetch(name, selector, true).await?.0)
    }

    async fn fetch(
        &mut self,
        name: &str,
        selector: Selector,
        manifest_only: bool,
    ) -> Result<(pb::ModelVersion, Vec<u8>), GetError> {
        let mut stream = self
            .inner
            .get_model(pb::GetModelRequest {
                name: name.to_owned(),
                selector: selector.into(),
                manifest_only,
            })
            .await?
            .into_inner();
        let (mut header, mut weights) = (None, Vec::new());
        while let Some(message) = stream.next().await {
            match message?.part {
                Some(get_model_response::Part::Header(h)) => {
                    // The size is the registry's word: bounded, so a wrong one costs no more.
                    weights.reserve(usize::try_from(h.weights_size).unwrap_or(0).min(256 << 20));
                    header = Some(h);
                }
                Some(get_model_response::Part::Chunk(c)) => weights.extend_from_slice(&c),
                None => {}
            }
        }
        Ok((header.ok_or(GetError::NoHeader)?, weights))
    }
}
