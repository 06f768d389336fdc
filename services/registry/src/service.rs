//! The `kappa.registry.v1.Registry` gRPC service.

use std::sync::{Arc, RwLock};

use kappa_api::{
    model::{AliasRecord, Cutover},
    registry::{self as pb, registry_server::Registry},
};
use kappa_kafka::KafkaClients;
use kappa_model::signing::{ModelSigner, Pointer, TrustedKeys};
use kappa_modellog::{ModelLog, follower::Progress};
use kappa_runtime::auth::{Principal, Role};
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

/// How long a write waits for an earlier one still in flight before it is UNAVAILABLE.
pub(crate) const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// When set, signs every alias move and deletion this registry writes.
    pub signing_key: Option<ModelSigner>,
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
    /// WatchModels streams at once: at most half of the read streams, so watches held open
    /// never take every one GetModel needs.
    pub watch_streams: Arc<tokio::sync::Semaphore>,
    /// WatchModels streams one caller may hold.
    pub watchers: Arc<crate::quota::PerCaller>,
}

impl Limits {
    /// `bytes` more of the publish buffer, or RESOURCE_EXHAUSTED when the publishes in
    /// progress hold too much already.
    pub(crate) fn buffer(&self, bytes: usize) -> Result<tokio::sync::OwnedSemaphorePermit, RegistryError> {
        Arc::clone(&self.publish_buffer)
            .try_acquire_many_owned(u32::try_from(bytes).unwrap_or(u32::MAX))
            .map_err(|_| RegistryError::Busy {
                what: "publishes",
                held: self.publish_buffer_bytes - self.publish_buffer.available_permits() as u64,
                limit: self.publish_buffer_bytes,
                flag: "max-publish-buffer-bytes",
            })
    }

    /// A watch for `caller`: its own quota, the watches' share, and a read stream.
    fn watch_stream(&self, caller: &str) -> Result<WatchPermit, RegistryError> {
        let own = self.watchers.take(caller).ok_or_else(|| {
            RegistryError::TooManyStreams(format!(
                "{caller} holds {} WatchModels streams already (--max-watch-streams-per-caller); close one, or watch every model in one stream",
                self.watchers.limit()
            ))
        })?;
        let share = Arc::clone(&self.watch_streams)
            .try_acquire_owned()
            .map_err(|_| RegistryError::Busy {
                what: "WatchModels streams (half of the read streams)",
                held: self.max_read_streams.div_ceil(2),
                limit: self.max_read_streams,
                flag: "max-read-streams",
            })?;
        Ok(WatchPermit {
            _own: own,
            _share: share,
            _read: self.read_stream()?,
        })
    }

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

/// What a watch holds while it runs.
struct WatchPermit {
    _own: crate::quota::Held,
    _share: tokio::sync::OwnedSemaphorePermit,
    _read: tokio::sync::OwnedSemaphorePermit,
}

/// Who a call counts against: its principal, or without tokens the peer's address.
fn caller_of<T>(request: &Request<T>) -> String {
    match Principal::of(request) {
        Some(principal) => principal.name.clone(),
        None => request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_owned(), |peer| peer.ip().to_string()),
    }
}

impl RegistryService {
    pub(crate) fn catalog(&self) -> std::sync::RwLockReadGuard<'_, ModelLog> {
        self.catalog.read().expect("catalog lock poisoned")
    }

    pub(crate) fn ready(&self) -> Result<(), RegistryError> {
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
    pub(crate) async fn begin_in(&self, span: &tracing::Span, lock: WriteLock) -> Result<Transaction, RegistryError> {
        let begun = self.writer.begin(lock).instrument(span.clone()).await;
        if begun.is_err() {
            span.record("otel.status_code", "ERROR");
            note_fenced(&self.writer, &self.metrics, &self.readiness);
        }
        begun
    }

    /// Adds `records` to `transaction`, commits it and waits until the follower has applied it,
    /// inside `span`.
    pub(crate) async fn finish_in(
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
        let updated_at_ms = kappa_runtime::now_ms();
        // Above every earlier move of this model's aliases, even one whose record compaction
        // removed since: its time, unless the clock is behind the last move.
        let highest = self.catalog().highest_sequence(name);
        let mut record = AliasRecord {
            name: name.to_owned(),
            alias: alias.to_owned(),
            version,
            updated_at_ms,
            updated_by: updated_by.clone(),
            cutover,
            sequence: u64::try_from(updated_at_ms).unwrap_or(0).max(highest + 1),
            signature: Vec::new(),
            signing_key_id: String::new(),
        };
        if let Some(key) = &self.signing_key {
            (record.signature, record.signing_key_id) = key.sign_pointer(Pointer::Alias(&record));
        }
        let position = self.write(vec![Put::alias(&record)], lock).await?;
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
        self.write(vec![Put::alias_tombstone(name, alias)], lock).await?;
        tracing::info!(model = name, alias, principal, "deleted an alias");
        Ok(pb::DeleteAliasResponse {
            previous_version: previous,
        })
    }

    async fn delete_version_inner(
        &self,
        request: pb::DeleteVersionRequest,
        principal: String,
        is_admin: bool,
    ) -> Result<pb::DeleteVersionResponse, RegistryError> {
        self.ready()?;
        let VersionRemoval { name, version, force } = request.try_into()?;
        if force && !is_admin {
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
            // Every predictor following `latest` serves the newest version: deleting it rolls
            // them all back, which is an administrator's call, like a forced delete.
            if !is_admin && catalog.latest_version(&name).ok() == Some(version) {
                return Err(RegistryError::Forbidden(format!(
                    "{principal} may delete versions, but version {version} is the newest of {name:?}, \
                     which every predictor following latest serves: deleting it needs the admin role"
                )));
            }
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
            .map(|index| Put::chunk_tombstone(&name, version, index))
            .collect();
        records.extend(aliases.iter().map(|alias| Put::alias_tombstone(&name, alias)));
        let (signature, key_id) = self.signing_key.as_ref().map_or_else(Default::default, |key| {
            key.sign_pointer(Pointer::Deletion { name: &name, version })
        });
        records.push(Put::deleted_version(&name, version, signature, key_id));
        self.write(records, lock).await?;
        tracing::info!(model = name, version, removed_aliases = ?aliases, principal, "deleted a model version");
        Ok(pb::DeleteVersionResponse {
            removed_aliases: aliases,
        })
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

pub(crate) fn transaction_span() -> tracing::Span {
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
                next_version: self.catalog().next_version(name.as_str()),
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
        let (by, is_admin) = (Principal::name_of(&request), Principal::allows(&request, Role::Admin));
        let result = self
            .delete_version_inner(request.into_inner(), by, is_admin)
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
        let caller = caller_of(&request);
        let result = WatchQuery::try_from(request.into_inner())
            .and_then(|query| Ok((query, self.limits.watch_stream(&caller)?)))
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
pub(crate) async fn off_the_workers<T: Send + 'static>(
    check: impl FnOnce() -> T + Send + 'static,
) -> Result<T, RegistryError> {
    tokio::task::spawn_blocking(check)
        .await
        .map_err(|e| RegistryError::Internal(format!("the validation task failed: {e}")))
}
