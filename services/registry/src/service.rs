//! The `kappa.registry.v1.Registry` gRPC service.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock},
};

use kappa_api::{
    model::{AliasRecord, Cutover, ModelManifest, VersionRecord},
    registry::{self as pb, registry_server::Registry},
};
use kappa_kafka::KafkaClients;
use kappa_model::{
    Backend, DigestStream, ModelError,
    admission::{self, Policy, Signature},
    signing::TrustedKeys,
    validate_manifest,
};
use kappa_modellog::{ModelKey, ModelLog, follower::Progress};
use kappa_runtime::{
    auth::{Principal, Role},
    propagation::span_context_map,
};
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::{
    RegistryError,
    catalog::Catalog,
    metrics::{OutcomeLabels, RegistryMetrics},
    reader,
    requests::{AliasMove, AliasRemoval, ModelName, ModelQuery, VersionRemoval, Wanted, WatchQuery},
    writer::{Put, Transaction, WriteLock, Writer},
};

const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// How long a write waits for an earlier one still in flight before it is UNAVAILABLE.
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a publish may keep the log to itself while its client uploads (see `publish_inner`).
const STREAM_HOLD: std::time::Duration = std::time::Duration::from_secs(2);

pub struct RegistryService {
    pub catalog: Arc<RwLock<ModelLog>>,
    pub writer: Arc<Writer>,
    pub progress: Progress,
    pub consumer_config: KafkaClients,
    /// GetModel's chunk consumers, kept between reads.
    pub chunk_readers: Arc<kappa_modellog::chunks::ChunkReaders>,
    pub topic: String,
    pub chunk_bytes: usize,
    pub max_model_bytes: u64,
    pub metrics: Arc<RegistryMetrics>,
    pub readiness: Arc<kappa_runtime::Readiness>,
    /// When set, only versions signed by one of these keys are accepted.
    pub trusted_keys: Option<TrustedKeys>,
    pub limits: Limits,
}

/// What the registry holds for callers at once, so no mix of clients can exhaust its memory.
pub struct Limits {
    /// Bytes of weights held across every Publish stream in progress.
    pub publish_buffer: Arc<tokio::sync::Semaphore>,
    pub publish_buffer_bytes: u64,
    /// Longest pause between two messages of a Publish stream.
    pub publish_idle: std::time::Duration,
    /// GetModel and WatchModels streams served at once (each holds a Kafka consumer).
    pub read_streams: Arc<tokio::sync::Semaphore>,
    pub max_read_streams: u64,
}

impl Limits {
    fn read_stream(&self) -> Result<tokio::sync::OwnedSemaphorePermit, RegistryError> {
        Arc::clone(&self.read_streams)
            .try_acquire_owned()
            .map_err(|_| RegistryError::Busy {
                what: "GetModel and WatchModels streams",
                held: self.max_read_streams,
                limit: self.max_read_streams,
                flag: "max-read-streams",
            })
    }
}

/// A signature as the publisher sent it.
#[derive(Clone)]
struct Signed {
    signature: Vec<u8>,
    key_id: String,
}

/// A malformed request, through the one error map like every other refusal.
fn invalid(message: impl Into<String>) -> Status {
    RegistryError::BadRequest(message.into()).into()
}

impl RegistryService {
    fn catalog(&self) -> std::sync::RwLockReadGuard<'_, ModelLog> {
        self.catalog.read().expect("catalog lock poisoned")
    }

    fn ready(&self) -> Result<(), RegistryError> {
        if *self.progress.caught_up.borrow() {
            Ok(())
        } else {
            Err(RegistryError::NotReady)
        }
    }

    /// Writes `records` in one transaction and waits until the follower has applied them.
    async fn write(&self, records: Vec<Put>, lock: WriteLock) -> Result<i64, RegistryError> {
        let span = transaction_span();
        let transaction = self.begin_in(&span, lock).await?;
        self.finish_in(span, transaction, records).await
    }

    /// Opens a transaction whose records carry `span`'s trace context.
    async fn begin_in(&self, span: &tracing::Span, lock: WriteLock) -> Result<Transaction, RegistryError> {
        let begun = self.writer.begin(lock).instrument(span.clone()).await;
        if begun.is_err() {
            span.record("otel.status_code", "ERROR");
            note_fenced(&self.writer, &self.metrics, &self.readiness);
        }
        begun
    }

    /// Adds `records` to `transaction`, commits it and waits until the follower has applied it,
    /// inside `span`.
    async fn finish_in(
        &self,
        span: tracing::Span,
        transaction: Transaction,
        records: Vec<Put>,
    ) -> Result<i64, RegistryError> {
        span.record("records", transaction.len() + records.len());
        let written = self.finish_now(transaction, records).instrument(span.clone()).await;
        match &written {
            Ok(offset) => span.record("offset", offset),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        written
    }

    /// Commits and waits until the follower applied the records, in a task of its own that holds
    /// the lock to the end: a caller that hangs up (a cancelled call, a `grpc-timeout`) leaves the
    /// transaction running, and the next write must not read the catalog before it lands, or it
    /// would reuse the version number with other weights.
    async fn finish_now(&self, mut transaction: Transaction, records: Vec<Put>) -> Result<i64, RegistryError> {
        let (writer, progress, metrics, readiness) = (
            Arc::clone(&self.writer),
            self.progress.clone(),
            Arc::clone(&self.metrics),
            Arc::clone(&self.readiness),
        );
        let task = tokio::spawn(
            async move {
                let committed = async {
                    for put in &records {
                        transaction.send(put).await?;
                    }
                    transaction.commit().await
                }
                .await;
                note_fenced(&writer, &metrics, &readiness);
                let (offset, lock) = committed?;
                let applied = progress.wait_applied(offset).await;
                drop(lock);
                if applied {
                    Ok(offset)
                } else {
                    Err(RegistryError::KafkaUnavailable(
                        "the models-topic follower stopped".into(),
                    ))
                }
            }
            .in_current_span(),
        );
        task.await
            .map_err(|e| RegistryError::Internal(format!("the write task failed: {e}")))?
    }

    async fn publish_inner(
        &self,
        mut stream: Streaming<pb::PublishRequest>,
        published_by: String,
    ) -> Result<pb::PublishResponse, Status> {
        use pb::publish_request::Part;
        self.ready()?;
        let idle = self.limits.publish_idle;
        let first = tokio::time::timeout(idle, stream.message())
            .await
            .map_err(|_| RegistryError::Idle(idle))??
            .ok_or_else(|| invalid("the publish stream was empty: send a header, then the weights in chunks"))?;
        let Some(Part::Header(header)) = first.part else {
            return Err(invalid(
                "the first Publish message must be the header with the manifest",
            ));
        };
        let mut manifest = header
            .manifest
            .ok_or_else(|| invalid("the Publish header carries no manifest"))?;
        if manifest.version != 0 {
            return Err(invalid("leave manifest.version at 0: the registry assigns versions"));
        }
        validate_manifest(&manifest).map_err(RegistryError::from)?;
        let pb::PublishHeader {
            manifest: _,
            idempotency_key: key,
            signature,
            signing_key_id,
        } = header;
        // An Ed25519 signature is 64 bytes; a key id 16 hex digits. Anything else is junk to keep out of the log.
        if !(signature.is_empty() || signature.len() == 64) || signing_key_id.len() > 64 {
            return Err(invalid(
                "signature must be 64 bytes (Ed25519) and signing_key_id at most 64 characters",
            ));
        }
        let signed = Signed {
            signature,
            key_id: signing_key_id,
        };
        if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(invalid(format!(
                "the idempotency key is longer than {MAX_IDEMPOTENCY_KEY_LEN} bytes"
            )));
        }
        if let Some(existing) = self.deduplicate(&manifest.name, &key)? {
            return Ok(existing);
        }

        // The size the client declares (the bytes are checked later) saves growing the buffer,
        // each doubling of which copies it into fresh pages; capped by the limits, so a false
        // size reserves no more than an honest publish could hold.
        if manifest.weights_size > self.max_model_bytes {
            return Err(RegistryError::TooLarge {
                size: manifest.weights_size,
                limit: self.max_model_bytes,
            }
            .into());
        }
        let declared = manifest.weights_size.min(self.limits.publish_buffer_bytes);
        let mut weights = Vec::with_capacity(usize::try_from(declared).unwrap_or(0));
        // Held until this publish is answered: the bytes it buffers count against the budget.
        let mut held: Option<tokio::sync::OwnedSemaphorePermit> = None;
        // Hashed as it arrives (about a millisecond a chunk), not all at once after the upload.
        let mut check = DigestStream::default();
        // The version record names the transaction's span: predictors loading it continue there.
        let span = transaction_span();
        // A model of several chunks, its size declared, goes into the log as it arrives when no
        // other write is under way, so the upload and the write overlap; otherwise it is
        // buffered and written after. Either way a refusal leaves nothing a reader sees.
        let streams = declared > self.chunk_bytes as u64;
        let mut streamed = match streams.then(|| self.writer.try_lock()).flatten() {
            Some(lock) => match self.open_version(&span, &manifest.name, &key, lock).await? {
                Ok(writer) => Some(writer),
                Err(existing) => return Ok(existing),
            },
            None => None,
        };
        // How long the upload may keep the log to itself: past it, the transaction is rolled
        // back (on drop) and the rest buffered, so a slow client does not hold up other writes.
        let hold = tokio::time::Instant::now() + STREAM_HOLD;
        loop {
            let waiting = tokio::time::Instant::now();
            let message = loop {
                let wait = match &streamed {
                    Some(_) => idle.min(hold.saturating_duration_since(waiting)),
                    None => idle.saturating_sub(waiting.elapsed()),
                };
                match tokio::time::timeout(wait, stream.message()).await {
                    Ok(message) => break message?,
                    Err(_) if streamed.is_some() && hold <= tokio::time::Instant::now() => {
                        tracing::info!(
                            model = manifest.name,
                            "the upload outlasted the time a streamed publish may hold the log; buffering the rest"
                        );
                        streamed = None;
                    }
                    Err(_) => return Err(RegistryError::Idle(idle).into()),
                }
            };
            let Some(message) = message else { break };
            match message.part {
                Some(Part::Chunk(bytes)) => {
                    let size = (weights.len() + bytes.len()) as u64;
                    if size > self.max_model_bytes {
                        return Err(RegistryError::TooLarge {
                            size,
                            limit: self.max_model_bytes,
                        }
                        .into());
                    }
                    let more = Arc::clone(&self.limits.publish_buffer)
                        .try_acquire_many_owned(u32::try_from(bytes.len()).unwrap_or(u32::MAX))
                        .map_err(|_| RegistryError::Busy {
                            what: "publishes",
                            held: self.limits.publish_buffer_bytes
                                - self.limits.publish_buffer.available_permits() as u64,
                            limit: self.limits.publish_buffer_bytes,
                            flag: "max-publish-buffer-bytes",
                        })?;
                    match held.as_mut() {
                        Some(permit) => permit.merge(more),
                        None => held = Some(more),
                    }
                    weights.extend_from_slice(&bytes);
                    // A millisecond of hashing a chunk (far more in a debug build) held on an
                    // async worker keeps it from reading the connection's other uploads, which
                    // then look idle; on a blocking thread it holds up this upload alone.
                    (weights, check) = off_the_workers(move || {
                        check.extend(&weights);
                        (weights, check)
                    })
                    .await?;
                    if let Some(writer) = streamed.as_mut() {
                        writer.write_chunks(&weights, false).await?;
                    }
                }
                Some(Part::Header(_)) => {
                    return Err(invalid("a second header arrived; send one header, then only chunks"));
                }
                None => return Err(invalid("a Publish message carried neither header nor chunk")),
            }
        }
        if weights.is_empty() {
            return Err(invalid("no weights arrived after the header"));
        }

        // Admission (the model built and a probe batch run, as every predictor will before it
        // serves the version) stays off the async workers; meanwhile librdkafka goes on sending
        // a streamed publish's chunks. A refused one is rolled back when `streamed` drops, its
        // last chunk not yet written.
        let policy = (self.max_model_bytes, self.trusted_keys.clone());
        let signature = signed.clone();
        // Below the priority of the threads serving requests, like a predictor's load.
        let (weights, admitted) = kappa_runtime::run_in_background("admission", move || {
            let (max_bytes, trusted_keys) = policy;
            let policy = Policy {
                max_bytes,
                trusted_keys: trusted_keys.as_ref(),
                backend: Backend::Native,
            };
            let digest = check.finish(&weights);
            let signature = Signature {
                bytes: &signature.signature,
                key_id: &signature.key_id,
            };
            let admitted = admission::admit(manifest, &weights, Some(digest), signature, &policy);
            (weights, admitted)
        })
        .await
        .map_err(|e| RegistryError::Internal(format!("admission failed: {e}")))?;
        manifest = match admitted {
            Ok(admitted) => admitted.manifest,
            Err(ModelError::Signature(e)) => {
                return Err(RegistryError::Forbidden(format!(
                    "this registry accepts only models signed by a trusted key: {e}"
                ))
                .into());
            }
            Err(ModelError::TooLarge { size, limit }) => return Err(RegistryError::TooLarge { size, limit }.into()),
            Err(e) => return Err(RegistryError::from(e).into()),
        };

        let mut writer = match streamed {
            Some(writer) => writer,
            None => {
                let lock = self.writer.lock(WRITE_WAIT).await?;
                // A concurrent retry with the same key may have won the lock first.
                match self.open_version(&span, &manifest.name, &key, lock).await? {
                    Ok(writer) => writer,
                    Err(existing) => return Ok(existing),
                }
            }
        };
        writer.write_chunks(&weights, true).await?;
        let (name, version) = (manifest.name.clone(), writer.version);
        manifest.version = version;
        manifest.created_at_ms = kappa_runtime::now_ms();
        let record = version_record(
            manifest,
            writer.chunks(),
            key,
            span_context_map(&span),
            published_by.clone(),
            signed,
        );
        self.finish_in(span, writer.transaction, vec![record]).await?;
        self.metrics.published_bytes.inc_by(weights.len() as u64);
        self.metrics
            .publishes
            .get_or_create(&OutcomeLabels { outcome: "created" })
            .inc();
        tracing::info!(
            model = name,
            version,
            bytes = weights.len(),
            principal = published_by,
            "published a new model version"
        );
        Ok(pb::PublishResponse {
            version: Some(self.catalog().model_version(&name, version)?),
            deduplicated: false,
        })
    }

    /// Under `lock`: the version stored for `key` already (a retry), or the next version of
    /// `name` with its transaction open, whose records carry `span`'s trace context.
    async fn open_version(
        &self,
        span: &tracing::Span,
        name: &str,
        key: &str,
        lock: WriteLock,
    ) -> Result<Result<VersionWriter, pb::PublishResponse>, RegistryError> {
        if let Some(existing) = self.deduplicate(name, key)? {
            return Ok(Err(existing));
        }
        let version = self.catalog().next_version(name);
        Ok(Ok(VersionWriter {
            transaction: self.begin_in(span, lock).await?,
            name: name.to_owned(),
            version,
            chunk_bytes: self.chunk_bytes,
            written: 0,
        }))
    }

    fn deduplicate(&self, name: &str, key: &str) -> Result<Option<pb::PublishResponse>, RegistryError> {
        if key.is_empty() {
            return Ok(None);
        }
        let catalog = self.catalog();
        let Some(version) = catalog.version_for_idempotency_key(name, key) else {
            return Ok(None);
        };
        self.metrics
            .publishes
            .get_or_create(&OutcomeLabels {
                outcome: "deduplicated",
            })
            .inc();
        Ok(Some(pb::PublishResponse {
            version: Some(catalog.model_version(name, version)?),
            deduplicated: true,
        }))
    }

    fn resolve(&self, query: &ModelQuery) -> Result<pb::ModelVersion, RegistryError> {
        let name = query.name.as_str();
        let catalog = self.catalog();
        let version = match &query.wanted {
            Wanted::Version(v) => *v,
            Wanted::Alias(alias) => catalog.alias(name, alias)?,
            Wanted::Latest => catalog.latest_version(name)?,
        };
        catalog.model_version(name, version)
    }

    async fn set_alias_inner(
        &self,
        request: pb::SetAliasRequest,
        updated_by: String,
    ) -> Result<pb::SetAliasResponse, RegistryError> {
        self.ready()?;
        let AliasMove {
            name,
            alias,
            version,
            effective_from_ms,
        } = request.try_into()?;
        let (name, alias) = (name.as_str(), alias.as_str());
        let lock = self.writer.lock(WRITE_WAIT).await?;
        let previous = {
            let catalog = self.catalog();
            catalog.version(name, version)?;
            catalog.alias(name, alias).unwrap_or(0)
        };
        let cutover = match effective_from_ms {
            None => None,
            Some(_) if previous == 0 => {
                return Err(RegistryError::NothingBeforeCutover {
                    name: name.to_owned(),
                    alias: alias.to_owned(),
                });
            }
            // A move onto the version it already holds changes nothing before or after.
            Some(_) if previous == version => None,
            Some(effective_from_ms) => Some(Cutover {
                effective_from_ms,
                previous_version: previous,
            }),
        };
        let record = AliasRecord {
            name: name.to_owned(),
            alias: alias.to_owned(),
            version,
            updated_at_ms: kappa_runtime::now_ms(),
            updated_by: updated_by.clone(),
            cutover,
        };
        let key = ModelKey::Alias {
            name: name.to_owned(),
            alias: alias.to_owned(),
        };
        let position = self
            .write(
                vec![Put {
                    key: key.to_string(),
                    value: Some(record.encode_to_vec()),
                }],
                lock,
            )
            .await?;
        tracing::info!(
            model = name,
            alias,
            version,
            previous,
            effective_from_ms = cutover.map_or(0, |c| c.effective_from_ms),
            principal = updated_by,
            "moved an alias"
        );
        Ok(pb::SetAliasResponse {
            previous_version: previous,
            position,
        })
    }

    async fn delete_alias_inner(
        &self,
        request: pb::DeleteAliasRequest,
        principal: String,
    ) -> Result<pb::DeleteAliasResponse, RegistryError> {
        self.ready()?;
        let AliasRemoval { name, alias } = request.try_into()?;
        let (name, alias) = (name.as_str(), alias.as_str());
        let lock = self.writer.lock(WRITE_WAIT).await?;
        let previous = self.catalog().alias(name, alias)?;
        let key = ModelKey::Alias {
            name: name.to_owned(),
            alias: alias.to_owned(),
        };
        self.write(
            vec![Put {
                key: key.to_string(),
                value: None,
            }],
            lock,
        )
        .await?;
        tracing::info!(model = name, alias, principal, "deleted an alias");
        Ok(pb::DeleteAliasResponse {
            previous_version: previous,
        })
    }

    async fn delete_version_inner(
        &self,
        request: pb::DeleteVersionRequest,
        principal: String,
        may_force: bool,
    ) -> Result<pb::DeleteVersionResponse, RegistryError> {
        self.ready()?;
        let VersionRemoval { name, version, force } = request.try_into()?;
        if force && !may_force {
            return Err(RegistryError::Forbidden(format!(
                "{principal} may delete versions, but a forced delete (which removes the aliases \
                 serving it) needs the admin role"
            )));
        }
        let name = name.as_str().to_owned();
        let lock = self.writer.lock(WRITE_WAIT).await?;
        let (aliases, chunks) = {
            let catalog = self.catalog();
            catalog.version(&name, version)?;
            (
                catalog.aliases_of(&name, version),
                catalog.chunk_indices(&name, version),
            )
        };
        if !aliases.is_empty() && !force {
            return Err(RegistryError::VersionInUse { name, version, aliases });
        }
        let mut records: Vec<Put> = chunks
            .into_iter()
            .map(|index| Put {
                key: ModelKey::Chunk {
                    name: name.clone(),
                    version,
                    index,
                }
                .to_string(),
                value: None,
            })
            .collect();
        records.extend(aliases.iter().map(|alias| {
            Put {
                key: ModelKey::Alias {
                    name: name.clone(),
                    alias: alias.clone(),
                }
                .to_string(),
                value: None,
            }
        }));
        // Not a tombstone: the small `deleted` record keeps the version number taken after compaction.
        let marker = VersionRecord {
            deleted: true,
            ..VersionRecord::default()
        };
        records.push(Put {
            key: ModelKey::Version {
                name: name.clone(),
                version,
            }
            .to_string(),
            value: Some(marker.encode_to_vec()),
        });
        self.write(records, lock).await?;
        tracing::info!(model = name, version, removed_aliases = ?aliases, principal, "deleted a model version");
        Ok(pb::DeleteVersionResponse {
            removed_aliases: aliases,
        })
    }
}

/// One chunk of a version's weights.
fn chunk_record(name: &str, version: u64, index: u32, data: &[u8]) -> Put {
    Put {
        key: ModelKey::Chunk {
            name: name.to_owned(),
            version,
            index,
        }
        .to_string(),
        value: Some(kappa_modellog::chunks::encode_chunk(index, data)),
    }
}

/// The record that makes a version exist, written after its `chunk_count` chunks: readers take
/// it as the sign that every chunk before it is there.
fn version_record(
    manifest: ModelManifest,
    chunk_count: u32,
    idempotency_key: String,
    trace_context: BTreeMap<String, String>,
    published_by: String,
    signed: Signed,
) -> Put {
    let (name, version) = (manifest.name.clone(), manifest.version);
    let record = VersionRecord {
        chunk_count,
        manifest: Some(manifest),
        idempotency_key,
        deleted: false,
        trace_context,
        published_by,
        signature: signed.signature,
        signing_key_id: signed.key_id,
    };
    Put {
        key: ModelKey::Version { name, version }.to_string(),
        value: Some(record.encode_to_vec()),
    }
}

/// A version being written: its transaction, open under the writer's lock, into which the
/// weights go chunk by chunk, while they upload (a streamed publish) or once they are in.
struct VersionWriter {
    transaction: Transaction,
    name: String,
    /// Assigned under the lock the transaction holds.
    version: u64,
    chunk_bytes: usize,
    /// Bytes of the weights already in chunk records.
    written: usize,
}

impl VersionWriter {
    /// Writes every whole chunk of `weights` not yet written, and with `last` the rest too.
    /// Each record is one copy of at most a chunk; the task yields between them, so a large
    /// model written at once does not hold an async worker for the whole of it.
    async fn write_chunks(&mut self, weights: &[u8], last: bool) -> Result<(), RegistryError> {
        while weights.len() - self.written >= self.chunk_bytes || (last && self.written < weights.len()) {
            let end = weights.len().min(self.written + self.chunk_bytes);
            let index = (self.written / self.chunk_bytes) as u32;
            let record = chunk_record(&self.name, self.version, index, &weights[self.written..end]);
            self.transaction.send(&record).await?;
            self.written = end;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// The number of chunk records written.
    fn chunks(&self) -> u32 {
        self.written.div_ceil(self.chunk_bytes) as u32
    }
}

/// Reports a registry that a newer one fenced: the metric, and readiness (writes go elsewhere).
fn note_fenced(writer: &Writer, metrics: &RegistryMetrics, readiness: &kappa_runtime::Readiness) {
    if writer.is_fenced() {
        metrics.fenced.set(1);
        readiness.report(
            "writer",
            "fenced by a newer registry with the same transactional id: writes go to that one",
        );
    }
}

fn transaction_span() -> tracing::Span {
    tracing::info_span!(
        "kafka.transaction",
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        messaging.system = "kafka",
        records = tracing::field::Empty,
        offset = tracing::field::Empty,
    )
}

type ResponseStream<T> = ReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn publish(
        &self,
        request: Request<Streaming<pb::PublishRequest>>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let by = Principal::name_of(&request);
        let result = self.publish_inner(request.into_inner(), by).await;
        if let Err(status) = &result {
            let outcome = match status.code() {
                tonic::Code::InvalidArgument | tonic::Code::ResourceExhausted => "rejected",
                _ => "failed",
            };
            self.metrics.publishes.get_or_create(&OutcomeLabels { outcome }).inc();
            tracing::warn!(code = ?status.code(), message = status.message(), "publish refused");
        }
        self.metrics.observe("Publish", &result);
        result.map(Response::new)
    }

    type GetModelStream = ResponseStream<pb::GetModelResponse>;

    async fn get_model(&self, request: Request<pb::GetModelRequest>) -> Result<Response<Self::GetModelStream>, Status> {
        let result = (|| {
            self.ready()?;
            let query = ModelQuery::try_from(request.into_inner())?;
            let permit = if query.manifest_only {
                None
            } else {
                Some(self.limits.read_stream()?)
            };
            let header = self.resolve(&query)?;
            let offsets = if query.manifest_only {
                Vec::new()
            } else {
                self.catalog().chunk_locations(&header.name, header.version)?
            };
            Ok::<_, RegistryError>((header, offsets, query.manifest_only, permit))
        })()
        .map_err(Status::from);
        self.metrics.observe("GetModel", &result);
        let (header, offsets, manifest_only, permit) = result?;

        let (tx, rx) = mpsc::channel(4);
        tx.try_send(Ok(pb::GetModelResponse {
            part: Some(pb::get_model_response::Part::Header(header)),
        }))
        .expect("a new channel has room for the header");
        if manifest_only {
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        let readers = Arc::clone(&self.chunk_readers);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(error) = reader::stream_chunks(&readers, &topic, &offsets, &tx) {
                let status = Status::from(error);
                tracing::error!(code = ?status.code(), message = status.message(), "GetModel could not stream the weights");
                let _ = tx.blocking_send(Err(status));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_models(
        &self,
        _request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let result = self
            .ready()
            .map(|()| pb::ListModelsResponse {
                models: self.catalog().list_models(),
            })
            .map_err(Status::from);
        self.metrics.observe("ListModels", &result);
        result.map(Response::new)
    }

    async fn list_versions(
        &self,
        request: Request<pb::ListVersionsRequest>,
    ) -> Result<Response<pb::ListVersionsResponse>, Status> {
        let result = (|| {
            self.ready()?;
            let name = ModelName::try_from(request.into_inner())?;
            Ok::<_, RegistryError>(pb::ListVersionsResponse {
                versions: self.catalog().list_versions(name.as_str())?,
            })
        })()
        .map_err(Status::from);
        self.metrics.observe("ListVersions", &result);
        result.map(Response::new)
    }

    async fn set_alias(&self, request: Request<pb::SetAliasRequest>) -> Result<Response<pb::SetAliasResponse>, Status> {
        let by = Principal::name_of(&request);
        let result = self
            .set_alias_inner(request.into_inner(), by)
            .await
            .map_err(Status::from);
        self.metrics.observe("SetAlias", &result);
        result.map(Response::new)
    }

    async fn delete_alias(
        &self,
        request: Request<pb::DeleteAliasRequest>,
    ) -> Result<Response<pb::DeleteAliasResponse>, Status> {
        let by = Principal::name_of(&request);
        let result = self
            .delete_alias_inner(request.into_inner(), by)
            .await
            .map_err(Status::from);
        self.metrics.observe("DeleteAlias", &result);
        result.map(Response::new)
    }

    async fn delete_version(
        &self,
        request: Request<pb::DeleteVersionRequest>,
    ) -> Result<Response<pb::DeleteVersionResponse>, Status> {
        let (by, may_force) = (Principal::name_of(&request), Principal::allows(&request, Role::Admin));
        let result = self
            .delete_version_inner(request.into_inner(), by, may_force)
            .await
            .map_err(Status::from);
        self.metrics.observe("DeleteVersion", &result);
        result.map(Response::new)
    }

    type WatchModelsStream = ResponseStream<pb::WatchModelsResponse>;

    async fn watch_models(
        &self,
        request: Request<pb::WatchModelsRequest>,
    ) -> Result<Response<Self::WatchModelsStream>, Status> {
        let result = WatchQuery::try_from(request.into_inner())
            .and_then(|query| Ok((query, self.limits.read_stream()?)))
            .map_err(Status::from);
        self.metrics.observe("WatchModels", &result);
        let (WatchQuery { from_position, name }, permit) = result?;
        let name = name.map(|n| n.as_str().to_owned()).unwrap_or_default();
        let (tx, rx) = mpsc::channel(64);
        let config = self.consumer_config.clone();
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(error) = reader::stream_events(&config, &topic, from_position, &name, &tx) {
                let _ = tx.blocking_send(Err(Status::from(error)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Runs the CPU-bound checks of an upload on a blocking thread.
async fn off_the_workers<T: Send + 'static>(check: impl FnOnce() -> T + Send + 'static) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(check)
        .await
        .map_err(|e| RegistryError::Internal(format!("the validation task failed: {e}")))
}
