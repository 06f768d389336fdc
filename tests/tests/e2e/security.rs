//! Security of every server, against the real binaries: TLS and mutual TLS (with certificates
//! made here by rcgen, independently of the code under test), certificate rotation without a
//! restart, and bearer tokens with roles on every RPC.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use kappa_api::{
    inference::{
        ModelInferRequest, ModelMetadataRequest, ServerLiveRequest, ServerMetadataRequest,
        grpc_inference_service_client::GrpcInferenceServiceClient,
    },
    predictor::{PredictRequest, predictor_client::PredictorClient},
    registry::{self as pb, registry_client::RegistryClient},
    trainer::{
        GetJobRequest, ListJobsRequest, StartTrainingRequest, TrainingSpec, trainer_client::TrainerClient,
        training_spec::Range,
    },
};
use kappa_client::{ClientSecurity, TracedChannel};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::support::*;

/// A certificate authority made for one test.
struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self { params, key, pem }
    }

    /// A leaf certificate and its key (PEM) for `names`, for a server or a client.
    fn issue(&self, common_name: &str, names: &[&str], client: bool) -> (String, String) {
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    }
}

/// PEM files in a directory of their own.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        // Write then rename, as a Secret volume swaps files: a reader never sees half a file.
        let partial = self.0.path().join(format!(".{name}.partial"));
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, &path).unwrap();
        path
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

fn server_flags(files: &Files, client_ca: bool) -> Vec<String> {
    let mut flags = vec![
        format!("--tls-cert={}", files.path("server.crt").display()),
        format!("--tls-key={}", files.path("server.key").display()),
    ];
    if client_ca {
        flags.push(format!("--tls-client-ca={}", files.path("ca.crt").display()));
    }
    flags
}

fn https(service: &Service) -> String {
    service.address.replace("http://", "https://")
}

/// A grpc.health.v1 liveness check over `security`: Ok when the TLS session and the call work.
async fn live(url: &str, security: &ClientSecurity) -> Result<(), String> {
    health(url, security, "liveness").await.map(|_| ())
}

/// The grpc.health.v1 status of `service_name`, asked over `security`.
async fn health(url: &str, security: &ClientSecurity, service_name: &str) -> Result<i32, String> {
    let channel = kappa_client::connect_with("kappa-service", url, security)
        .await
        .map_err(|e| e.to_string())?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service_name.to_owned(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

fn trusting(ca: &str) -> ClientSecurity {
    ClientSecurity {
        ca: Some(ca.as_bytes().to_vec()),
        ..ClientSecurity::default()
    }
}

fn with_identity(mut security: ClientSecurity, (cert, key): &(String, String)) -> ClientSecurity {
    security.identity = Some((cert.as_bytes().to_vec(), key.as_bytes().to_vec()));
    security
}

/// Waits (bounded) until `check` holds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 20 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_only_a_client_with_the_right_ca_and_certificate_gets_in_on_every_service() {
    let (ca, other) = (Ca::new("kappa test CA"), Ca::new("someone else's CA"));
    let files = Files::new();
    let (cert, key) = ca.issue("kappa", &["127.0.0.1", "localhost"], false);
    files.write("server.crt", &cert);
    files.write("server.key", &key);
    files.write("ca.crt", &ca.pem);
    let client = ca.issue("trainer", &[], true);
    let stranger = other.issue("intruder", &[], true);

    let mut setup = RegistrySetup::new();
    setup.extra.args = server_flags(&files, true);
    setup.extra.args.push("--metrics-tls".into());
    let registry = setup.spawn();
    let models = setup.topic.clone();
    let predictor = Launch::new("kappa-predictor", &models)
        .args(["--models-topic", &models, "--model", "absent"])
        .args(server_flags(&files, true))
        .spawn();
    let trainer = Launch::new("kappa-trainer", &models)
        .args(["--jobs-topic", &unique("test.jobs"), "--registry", &https(&registry)])
        .args(server_flags(&files, true))
        .spawn();

    let right = with_identity(trusting(&ca.pem), &client);
    for service in [&registry, &predictor, &trainer] {
        let url = https(service);
        eventually(&format!("{url} answers the right client"), || async {
            live(&url, &right).await.is_ok()
        })
        .await;
        let refusals = [
            ("a plaintext client", service.address.clone(), right.clone()),
            (
                "a client not trusting the CA",
                url.clone(),
                with_identity(ClientSecurity::default(), &client),
            ),
            (
                "a client trusting another CA",
                url.clone(),
                with_identity(trusting(&other.pem), &client),
            ),
            ("a client without a certificate", url.clone(), trusting(&ca.pem)),
            (
                "a client with another CA's certificate",
                url.clone(),
                with_identity(trusting(&ca.pem), &stranger),
            ),
        ];
        for (who, url, security) in refusals {
            // The plaintext case needs the TLS settings dropped to be tried at all.
            let security = if url.starts_with("http://") {
                ClientSecurity::default()
            } else {
                security
            };
            assert!(live(&url, &security).await.is_err(), "{who} got into {url}");
        }
    }

    // The CLI goes through the same client: with the right flags it works, without its
    // certificate it fails.
    eventually("the registry has replayed its topic", || async {
        health(&https(&registry), &right, "kappa.registry.v1.Registry").await == Ok(HealthStatus::Serving as i32)
    })
    .await;
    let ca_file = files.write("client-ca.crt", &ca.pem);
    let cert_file = files.write("client.crt", &client.0);
    let key_file = files.write("client.key", &client.1);
    let cli = |with_cert: bool| {
        let mut command = std::process::Command::new(binary("kappa"));
        command
            .args(["models", "list", "--registry", &https(&registry)])
            .arg(format!("--tls-ca={}", ca_file.display()));
        if with_cert {
            command
                .arg(format!("--tls-cert={}", cert_file.display()))
                .arg(format!("--tls-key={}", key_file.display()));
        }
        command.output().unwrap()
    };
    let ok = cli(true);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!cli(false).status.success(), "the CLI without its certificate got in");

    // --metrics-tls: Prometheus scrapes over TLS with the CA (no client certificate asked), and
    // a plaintext scrape gets nothing.
    let metrics = registry.metrics_url.replace("http://", "https://");
    let scraped = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(&ca_file)
        .arg(&metrics)
        .output()
        .expect("curl is needed for this test (Debian: apt-get install curl)");
    assert!(scraped.status.success(), "{}", String::from_utf8_lossy(&scraped.stderr));
    assert!(String::from_utf8_lossy(&scraped.stdout).contains("kappa_registry_"));
    let plain = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", &registry.metrics_url])
        .output()
        .unwrap();
    assert!(
        !plain.status.success(),
        "a plaintext scrape of a TLS metrics port answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_served_to_new_connections_without_a_restart() {
    let (first, second) = (Ca::new("first CA"), Ca::new("second CA"));
    let files = Files::new();
    let (cert, key) = first.issue("kappa", &["127.0.0.1"], false);
    files.write("server.crt", &cert);
    files.write("server.key", &key);
    let mut setup = RegistrySetup::new().arg("--security-reload-seconds=0.2");
    setup.extra.args.extend(server_flags(&files, false));
    let registry = setup.spawn();
    let url = https(&registry);
    eventually("the registry answers over TLS", || async {
        live(&url, &trusting(&first.pem)).await.is_ok()
    })
    .await;
    assert!(live(&url, &trusting(&second.pem)).await.is_err());

    // cert-manager writes the new pair in place; the key and certificate land one after the
    // other, so for a moment they do not match: the registry must keep serving through that.
    let (cert, key) = second.issue("kappa", &["127.0.0.1"], false);
    files.write("server.crt", &cert);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        live(&url, &trusting(&first.pem)).await.is_ok(),
        "a mismatched pair must not replace the good one"
    );
    files.write("server.key", &key);
    eventually("new connections get the new certificate", || async {
        live(&url, &trusting(&second.pem)).await.is_ok()
    })
    .await;
    assert!(
        live(&url, &trusting(&first.pem)).await.is_err(),
        "the old certificate is still served"
    );
    assert!(registry.log_text().contains("reloaded after the files changed"));
}

/// A network neighbour that opens connections to a TLS server and says nothing does not keep a
/// client out (the server allows 256 handshakes in progress, and these are 600), and health,
/// open without a token, takes no large message (issue 30, item 3).
#[tokio::test]
async fn silent_connections_do_not_keep_a_tls_client_out_and_open_probes_take_no_large_messages() {
    let ca = Ca::new("neighbour CA");
    let files = Files::new();
    let (cert, key) = ca.issue("kappa", &["127.0.0.1"], false);
    files.write("server.crt", &cert);
    files.write("server.key", &key);
    let mut setup = RegistrySetup::new();
    setup.extra.args.extend(server_flags(&files, false));
    let registry = setup.spawn();
    let url = https(&registry);
    let security = trusting(&ca.pem);
    eventually("the registry answers over TLS", || async {
        live(&url, &security).await.is_ok()
    })
    .await;
    let port: u16 = registry.address.rsplit(':').next().unwrap().parse().unwrap();
    let silent: Vec<std::net::TcpStream> = (0..600)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let started = Instant::now();
        live(&url, &security).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "a new client waited {:?} behind silent connections",
            started.elapsed()
        );
    }
    drop(silent);
    let displaced = metric_value(
        &scrape(&registry.metrics_url).await,
        r#"kappa_server_connections_closed_total{reason="handshake_displaced"}"#,
    );
    assert!(
        displaced >= 300.0,
        "{displaced} handshakes displaced of 600 silent connections"
    );

    let channel = kappa_client::connect_with("kappa-registry", &url, &security)
        .await
        .unwrap();
    let refused = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "x".repeat(1 << 20),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(refused.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{refused:?}"
    );
    live(&url, &security).await.unwrap();
}

/// The value of one series in a Prometheus text page (0 when absent).
fn metric_value(page: &str, series: &str) -> f64 {
    series_value(page, series).unwrap_or(0.0)
}

/// Peers that connect (plaintext) and then send nothing, or only the start of the HTTP/2
/// preface, are closed after the preface timeout (10 s), counted; a client that keeps its
/// connection open and idle is not (issue 30, item 3).
#[tokio::test]
async fn connections_that_never_finish_the_http2_preface_are_closed_and_counted() {
    use std::io::{Read as _, Write as _};
    let registry = RegistrySetup::new().start().await;
    let mut idle_client = registry_client(&registry).await;
    idle_client
        .list_versions(pb::ListVersionsRequest { name: "none".into() })
        .await
        .unwrap_err();
    let port: u16 = registry.address.rsplit(':').next().unwrap().parse().unwrap();
    let mut peers: Vec<std::net::TcpStream> = (0..40)
        .map(|i| {
            let mut peer = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            if i % 2 == 1 {
                peer.write_all(b"PRI * HTT").unwrap();
            }
            peer.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            peer
        })
        .collect();
    let started = Instant::now();
    for peer in &mut peers {
        // Closed by the server: end of stream (or a reset), not the read timeout.
        let mut buf = [0_u8; 256];
        loop {
            match peer.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(8) && waited < Duration::from_secs(18),
        "silent connections closed after {waited:?}"
    );
    let page = scrape(&registry.metrics_url).await;
    let closed = metric_value(
        &page,
        r#"kappa_server_connections_closed_total{reason="preface_timeout"}"#,
    );
    assert_eq!(closed, 40.0, "{page}");
    // The honest client's connection, idle all along, still answers.
    let code = idle_client
        .list_versions(pb::ListVersionsRequest { name: "none".into() })
        .await
        .unwrap_err()
        .code();
    assert_eq!(code, Code::NotFound);
    assert!(metric_value(&page, "kappa_server_connections") >= 1.0, "{page}");
}

/// Tokens for one principal per role, and the file that grants them.
struct Principals {
    file: PathBuf,
    _dir: tempfile::TempDir,
}

const ROLES: [&str; 5] = ["read", "infer", "write", "train", "admin"];

fn token(role: &str) -> String {
    format!("test-token-for-{role}-{}", "x".repeat(20))
}

impl Principals {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text: String = ROLES
            .iter()
            .map(|role| format!("{role}-bot {role} {}\n", sha256(token(role).as_bytes())))
            .collect();
        let file = dir.path().join("tokens");
        std::fs::write(&file, format!("# one principal per role\n{text}")).unwrap();
        Self { file, _dir: dir }
    }

    fn flag(&self) -> String {
        format!("--auth-tokens={}", self.file.display())
    }
}

fn as_role(role: Option<&str>) -> ClientSecurity {
    ClientSecurity {
        token: role.map(token),
        ..ClientSecurity::default()
    }
}

async fn channel(service: &Service, role: Option<&str>) -> TracedChannel {
    kappa_client::connect_with("kappa-service", &service.address, &as_role(role))
        .await
        .unwrap()
}

/// Revocation fails closed: a token file that is deleted or stops parsing grants nothing until
/// a good one is back, and the service keeps running (issue 30, item 6).
#[tokio::test]
async fn a_deleted_or_broken_token_file_revokes_every_token_until_a_good_one_is_back() {
    let principals = Principals::new();
    let good = std::fs::read_to_string(&principals.file).unwrap();
    let setup = RegistrySetup::new()
        .arg(principals.flag())
        .arg("--security-reload-seconds=0.2");
    let registry = setup.start().await;
    let list = |registry: &Service| {
        let address = registry.address.clone();
        async move {
            let channel = kappa_client::connect_with("kappa-registry", &address, &as_role(Some("read")))
                .await
                .unwrap();
            code_of(RegistryClient::new(channel).list_models(pb::ListModelsRequest {}).await)
        }
    };
    assert_eq!(list(&registry).await, Code::Ok);
    std::fs::remove_file(&principals.file).unwrap();
    eventually("the deleted file revokes the token", || async {
        list(&registry).await == Code::Unauthenticated
    })
    .await;
    std::fs::write(&principals.file, &good).unwrap();
    eventually("the restored file grants it again", || async {
        list(&registry).await == Code::Ok
    })
    .await;
    std::fs::write(&principals.file, "read-bot read not-a-digest\n").unwrap();
    eventually("a file that does not parse revokes it", || async {
        list(&registry).await == Code::Unauthenticated
    })
    .await;
    assert!(registry.log_text().contains("granting nothing until they do"));
}

/// Deleting the newest version rolls back every predictor following `latest`: it takes the
/// admin role, while `write` may delete older versions (issue 30, item 6).
#[tokio::test]
async fn deleting_the_newest_version_takes_the_admin_role() {
    let principals = Principals::new();
    let registry = RegistrySetup::new().arg(principals.flag()).start().await;
    let registry_as = |role: &str| {
        let address = registry.address.clone();
        let role = role.to_owned();
        async move {
            RegistryClient::new(
                kappa_client::connect_with("kappa-registry", &address, &as_role(Some(&role)))
                    .await
                    .unwrap(),
            )
        }
    };
    let mut writer = registry_as("write").await;
    let name = unique("newest");
    let manifest = kappa_fleet::car_autoencoder(&name, &[4]);
    for seed in 1..=3 {
        publish(
            &mut writer,
            &manifest,
            &kappa_model::example::random_weights(&manifest, seed),
            "",
        )
        .await
        .unwrap();
    }
    let delete = |version: u64| pb::DeleteVersionRequest {
        name: name.clone(),
        version,
        force: false,
    };
    let denied = writer.delete_version(delete(3)).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("admin"), "{}", denied.message());
    writer.delete_version(delete(1)).await.unwrap();
    let mut admin = registry_as("admin").await;
    admin.delete_version(delete(3)).await.unwrap();
    assert_eq!(listed_versions(&mut admin, &name).await, [2]);
}

/// Whether the auth layer let the call through: any answer but its two refusals.
fn code_of<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// Checks one RPC against every role and no token: the roles in `allowed` pass the auth layer,
/// the rest are PERMISSION_DENIED, no token is UNAUTHENTICATED.
async fn check_rpc<F, Fut>(rpc: &str, allowed: &[&str], service: &Service, call: F)
where
    F: Fn(TracedChannel) -> Fut,
    Fut: Future<Output = Code>,
{
    assert_eq!(
        call(channel(service, None).await).await,
        Code::Unauthenticated,
        "{rpc} without a token"
    );
    let wrong = ClientSecurity {
        token: Some("not-a-known-token".into()),
        ..ClientSecurity::default()
    };
    let unknown = kappa_client::connect_with("kappa-service", &service.address, &wrong)
        .await
        .unwrap();
    assert_eq!(
        call(unknown).await,
        Code::Unauthenticated,
        "{rpc} with an unknown token"
    );
    for role in ROLES {
        let code = call(channel(service, Some(role)).await).await;
        if allowed.contains(&role) || role == "admin" {
            assert!(
                !matches!(code, Code::Unauthenticated | Code::PermissionDenied),
                "{rpc} as {role} was refused: {code:?}"
            );
        } else {
            assert_eq!(code, Code::PermissionDenied, "{rpc} as {role}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_service_checks_its_role_and_a_refused_write_changes_nothing() {
    let principals = Principals::new();
    let setup = RegistrySetup::new().arg(principals.flag());
    let registry = setup.start().await;
    let topic = setup.topic.clone();

    // A model to read, published by the writer; the record names who did it.
    let fixture = fixture("autoencoder");
    let mut writer = kappa_client::Registry::new(channel(&registry, Some("write")).await);
    let published = writer.publish(&fixture.manifest, &fixture.weights, "").await.unwrap();
    let version = published.version.unwrap();
    assert_eq!(version.published_by, "write-bot");
    let name = fixture.manifest.name.clone();
    let (_, end_before) = watermarks(&topic).await;

    let reg = |c: TracedChannel| RegistryClient::new(c);
    check_rpc("ListModels", &["read"], &registry, |c| async move {
        code_of(reg(c).list_models(pb::ListModelsRequest {}).await)
    })
    .await;
    check_rpc("ListVersions", &["read"], &registry, |c| {
        let name = name.clone();
        async move { code_of(reg(c).list_versions(pb::ListVersionsRequest { name }).await) }
    })
    .await;
    check_rpc("GetModel", &["read"], &registry, |c| {
        let name = name.clone();
        async move {
            code_of(
                reg(c)
                    .get_model(pb::GetModelRequest {
                        name,
                        selector: None,
                        manifest_only: true,
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("WatchModels", &["read"], &registry, |c| async move {
        code_of(
            reg(c)
                .watch_models(pb::WatchModelsRequest {
                    from_position: 0,
                    name: String::new(),
                })
                .await,
        )
    })
    .await;
    // Writes that the auth layer lets through are made to fail in the handler (an unknown
    // version, an empty stream), so the log only changes by what is asserted.
    check_rpc("SetAlias", &["write"], &registry, |c| {
        let name = name.clone();
        async move {
            code_of(
                reg(c)
                    .set_alias(pb::SetAliasRequest {
                        name,
                        alias: "production".into(),
                        version: 99,
                        effective_from_ms: 0,
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("DeleteAlias", &["write"], &registry, |c| {
        let name = name.clone();
        async move {
            code_of(
                reg(c)
                    .delete_alias(pb::DeleteAliasRequest {
                        name,
                        alias: "absent".into(),
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("DeleteVersion", &["write"], &registry, |c| {
        let name = name.clone();
        async move {
            code_of(
                reg(c)
                    .delete_version(pb::DeleteVersionRequest {
                        name,
                        version: 99,
                        force: false,
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("Publish", &["write"], &registry, |c| async move {
        code_of(reg(c).publish(tokio_stream::empty::<pb::PublishRequest>()).await)
    })
    .await;
    let (_, end_after) = watermarks(&topic).await;
    assert_eq!(
        end_after, end_before,
        "a refused or failed write must not touch the models topic"
    );

    // A forced delete takes the admin role, beyond write.
    let mut admin = reg(channel(&registry, Some("admin")).await);
    set_alias(&mut admin, &name, "production", version.version)
        .await
        .unwrap();
    let forced = pb::DeleteVersionRequest {
        name: name.clone(),
        version: version.version,
        force: true,
    };
    let denied = reg(channel(&registry, Some("write")).await)
        .delete_version(forced.clone())
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("admin"), "{}", denied.message());

    // The predictor: scoring needs infer, metadata read, the OIP probes stay open.
    let predictor = PredictorSetup::new(&topic, &name, "production")
        .arg(principals.flag())
        .start()
        .await;
    let oip = |c: TracedChannel| GrpcInferenceServiceClient::new(c);
    for role in [None, Some("read"), Some("infer")] {
        let live = oip(channel(&predictor.service, role).await)
            .server_live(ServerLiveRequest {})
            .await;
        assert!(live.is_ok(), "ServerLive is a probe: open to {role:?}");
    }
    check_rpc("ModelInfer", &["infer"], &predictor.service, |c| {
        let name = name.clone();
        async move {
            code_of(
                oip(c)
                    .model_infer(ModelInferRequest {
                        model_name: name,
                        ..ModelInferRequest::default()
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("Predict", &["infer"], &predictor.service, |c| {
        let name = name.clone();
        async move {
            code_of(
                PredictorClient::new(c)
                    .predict(PredictRequest {
                        model: name,
                        ..PredictRequest::default()
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("ModelMetadata", &["read"], &predictor.service, |c| {
        let name = name.clone();
        async move {
            code_of(
                oip(c)
                    .model_metadata(ModelMetadataRequest {
                        name,
                        version: String::new(),
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("ServerMetadata", &["read"], &predictor.service, |c| async move {
        code_of(oip(c).server_metadata(ServerMetadataRequest {}).await)
    })
    .await;

    // The trainer: jobs take train; moving an alias takes write too; reads take read.
    let trainer = Launch::new("kappa-trainer", &topic)
        .args(["--jobs-topic", &unique("test.jobs"), "--registry", &registry.address])
        .args([principals.flag()])
        .start("kappa.trainer.v1.Trainer")
        .await;
    let spec = |promote: &str| TrainingSpec {
        model_name: "secured".into(),
        source_topic: unique("no-such-topic"),
        range: Some(Range::LastMinutes(5)),
        epochs: 1,
        promote_alias: promote.into(),
        ..TrainingSpec::default()
    };
    check_rpc("StartTraining", &["train"], &trainer, |c| {
        let spec = spec("");
        async move {
            code_of(
                TrainerClient::new(c)
                    .start_training(StartTrainingRequest { spec: Some(spec) })
                    .await,
            )
        }
    })
    .await;
    let promoting = TrainerClient::new(channel(&trainer, Some("train")).await)
        .start_training(StartTrainingRequest {
            spec: Some(spec("production")),
        })
        .await
        .unwrap_err();
    assert_eq!(promoting.code(), Code::PermissionDenied, "{promoting:?}");
    check_rpc("GetJob", &["read"], &trainer, |c| async move {
        code_of(
            TrainerClient::new(c)
                .get_job(GetJobRequest { job_id: "job-x".into() })
                .await,
        )
    })
    .await;
    check_rpc("ListJobs", &["read"], &trainer, |c| async move {
        code_of(TrainerClient::new(c).list_jobs(ListJobsRequest {}).await)
    })
    .await;
    check_rpc("CancelJob", &["train"], &trainer, |c| async move {
        code_of(
            TrainerClient::new(c)
                .cancel_job(GetJobRequest { job_id: "job-x".into() })
                .await,
        )
    })
    .await;
    check_rpc("ReadRange", &["train"], &trainer, |c| {
        let spec = spec("");
        async move {
            code_of(
                TrainerClient::new(c)
                    .read_range(kappa_api::trainer::ReadRangeRequest { spec: Some(spec) })
                    .await,
            )
        }
    })
    .await;
    check_rpc("Inspect", &["train"], &trainer, |c| {
        let spec = spec("");
        async move {
            code_of(
                TrainerClient::new(c)
                    .inspect(kappa_api::trainer::InspectRequest {
                        spec: Some(spec),
                        sample: 0,
                    })
                    .await,
            )
        }
    })
    .await;
    check_rpc("WatchMonitoring", &["read"], &trainer, |c| async move {
        code_of(
            TrainerClient::new(c)
                .watch_monitoring(kappa_api::trainer::WatchMonitoringRequest {
                    model: "m".into(),
                    topic: "test.no-such-monitoring-topic".into(),
                    last_seconds: 0,
                })
                .await,
        )
    })
    .await;
    check_rpc("CompareShadow", &["read"], &trainer, |c| async move {
        code_of(
            TrainerClient::new(c)
                .compare_shadow(kappa_api::trainer::CompareShadowRequest {
                    model: "m".into(),
                    topic: "test.no-such-shadow-topic".into(),
                    ..Default::default()
                })
                .await,
        )
    })
    .await;
    check_rpc("Backtest", &["train"], &trainer, |c| async move {
        code_of(
            TrainerClient::new(c)
                .backtest(kappa_api::trainer::BacktestRequest {
                    model: "no-such-model".into(),
                    versions: vec!["1".into()],
                    window: Some(kappa_api::trainer::TimeRange { from_ms: 0, to_ms: 1 }),
                    ..Default::default()
                })
                .await,
        )
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_predictor_with_trusted_keys_serves_only_signed_versions_and_never_fails_a_call() {
    // Keys and a signed publish through the CLI, as an operator would do it.
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = signing_keys(&dir.path().join("keys"));
    let trusted_dir = dir.path().join("trusted");
    std::fs::create_dir(&trusted_dir).unwrap();
    std::fs::copy(&public, trusted_dir.join("ci.pem")).unwrap();

    let setup = RegistrySetup::new().verifying(&trusted_dir);
    let registry = setup.start().await;
    let fixtures = fixture_dir();
    let published = std::process::Command::new(binary("kappa"))
        .args(["models", "publish", "--registry", &registry.address, "--output", "json"])
        .arg(fixtures.join("autoencoder.safetensors"))
        .arg(fixtures.join("autoencoder.manifest.json"))
        .arg(format!("--signing-key={}", private.display()))
        .output()
        .unwrap();
    assert!(
        published.status.success(),
        "{}",
        String::from_utf8_lossy(&published.stderr)
    );
    let version: serde_json::Value = serde_json::from_slice(&published.stdout).unwrap();
    let name = version["name"].as_str().unwrap().to_owned();
    assert!(
        !version["signingKeyId"].as_str().unwrap_or_default().is_empty(),
        "{version}"
    );
    let mut admin = registry_client(&registry).await;
    set_alias(&mut admin, &name, "production", 1).await.unwrap();

    let predictor = PredictorSetup::new(&setup.topic, &name, "production")
        .arg(format!("--trusted-keys={}", trusted_dir.display()))
        .start()
        .await;

    // Callers keep scoring throughout; not one call may fail, and all are answered by v1.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fixture = fixture("autoencoder");
    let mut callers = Vec::new();
    for _ in 0..4 {
        let (channel, stop, row, name) = (
            predictor.channel().await,
            stop.clone(),
            fixture.inputs[0].clone(),
            name.clone(),
        );
        callers.push(tokio::spawn(async move {
            let mut client = GrpcInferenceServiceClient::new(channel);
            let (mut calls, mut wrong) = (0_u32, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = oip_request(&name, &row);
                match client.model_infer(request).await {
                    Ok(answer) if answer.get_ref().model_version == "1" => {}
                    Ok(answer) => wrong.push(format!("served by version {}", answer.get_ref().model_version)),
                    Err(status) => wrong.push(format!("{:?}: {}", status.code(), status.message())),
                }
                calls += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (calls, wrong)
        }));
    }

    // Anyone who can write to the topic: an unsigned version with a correct digest, then one
    // signed by a key nobody trusts, then one with the trusted key's id and a forged signature,
    // the alias moved to each straight in the log (unsigned: only the registry's key signs
    // moves). The predictor refuses each record before reading a byte of weights.
    let forged_weights = kappa_model::example::random_weights(&fixture.manifest, 99);
    let mut forged = fixture.manifest.clone();
    forged.weights_sha256 = sha256(&forged_weights);
    forged.weights_size = forged_weights.len() as u64;
    let trusted_id = kappa_model::signing::ModelSigner::read(&private)
        .unwrap()
        .id()
        .to_owned();
    let stranger = kappa_model::signing::ModelSigner::generate();
    let attempts: Vec<(Vec<u8>, String)> = vec![
        (Vec::new(), String::new()),
        stranger.sign(&forged),
        (vec![7; 64], trusted_id.clone()),
    ];
    for (i, (signature, key_id)) in attempts.into_iter().enumerate() {
        let version = 2 + i as u64;
        let mut manifest = forged.clone();
        manifest.name = name.clone();
        manifest.version = version;
        let record = kappa_api::model::VersionRecord {
            manifest: Some(manifest),
            signature,
            signing_key_id: key_id,
            ..Default::default()
        };
        write_raw_record(&setup.topic, record, &forged_weights).await;
        write_raw_alias(&setup.topic, &name, "production", version).await;
        // The version record and the alias move.
        let expected = 2.0 * (i + 1) as f64;
        eventually(
            &format!("forged version {version} and its alias move refused unverified"),
            || async {
                predictor
                    .metric(r#"kappa_predictor_refused_log_records_total{reason="unverified"}"#)
                    .await
                    == Some(expected)
            },
        )
        .await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for caller in callers {
        let (calls, wrong) = caller.await.unwrap();
        assert!(
            wrong.is_empty(),
            "{} of {calls} calls went wrong: {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(5)]
        );
        total += calls;
    }
    assert!(total > 0);

    // Nothing was loaded; the log says why each record was refused.
    assert_eq!(
        predictor
            .metric(r#"kappa_predictor_load_failures_total{reason="signature"}"#)
            .await,
        Some(0.0)
    );
    for why in ["not among the trusted keys", "is not signed", "does not verify"] {
        assert!(predictor.log_text_contains(why), "the log should say {why:?}");
    }

    // A registry that requires signatures refuses the unsigned publish outright.
    let strict_keys = tempfile::tempdir().unwrap();
    std::fs::copy(&public, strict_keys.path().join("ci.pem")).unwrap();
    let strict = RegistrySetup::new().verifying(strict_keys.path()).start().await;
    let mut client = registry_client(&strict).await;
    let refused = publish(&mut client, &fixture.manifest, &fixture.weights, "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let signer = kappa_model::signing::ModelSigner::read(&private).unwrap();
    kappa_client::Registry::from(client.clone())
        .publish_signed(&fixture.manifest, &fixture.weights, "", Some(&signer))
        .await
        .unwrap();
}

/// One row for `model`.
pub(crate) fn oip_request(model: &str, row: &[f32]) -> ModelInferRequest {
    kappa_client::oip::infer_request(model, row.to_vec(), row.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_limits_hold_under_stalls_floods_and_oversized_messages_and_the_registry_keeps_serving() {
    let budget = 48 * 1024 * 1024;
    let setup = RegistrySetup::new()
        .arg(format!("--max-publish-buffer-bytes={budget}"))
        .arg("--max-model-bytes=40000000")
        // Short, so the stalled publisher below is cut off quickly, but not so short that the
        // flood's uploads, twenty sharing one connection's flow control on a loaded CI machine
        // (a debug registry hashing every chunk), go a whole idle period without a chunk.
        .arg("--publish-idle-seconds=5");
    let registry = setup.start().await;
    let mut client = registry_client(&registry).await;

    // A publisher that sends its header and then nothing is cut off, not waited for forever.
    let small = kappa_fleet::car_autoencoder("small", &[4]);
    let small_weights = kappa_model::example::random_weights(&small, 1);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(publish_messages(&small, &small_weights, "").remove(0))
        .await
        .unwrap();
    let started = Instant::now();
    let stalled = client
        .publish(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(stalled.code(), Code::DeadlineExceeded, "{stalled:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(tx);

    // Twenty publishes of 17 MiB at once against a 48 MiB budget: some are refused with
    // RESOURCE_EXHAUSTED, none fails otherwise, and a small publish still gets through.
    let big = kappa_fleet::car_autoencoder("big", &[2048, 2048]);
    let big_weights = kappa_model::example::random_weights(&big, 2);
    assert!(big_weights.len() > 16 * 1024 * 1024);
    let messages = std::sync::Arc::new(publish_messages(&big, &big_weights, ""));
    let mut flood = Vec::new();
    for _ in 0..20 {
        let (mut client, messages) = (client.clone(), std::sync::Arc::clone(&messages));
        flood.push(tokio::spawn(async move {
            client.publish(tokio_stream::iter(messages.to_vec())).await.map(|_| ())
        }));
    }
    let mut small_answer = Err(tonic::Status::unknown("not tried"));
    for _ in 0..5 {
        small_answer = publish(&mut client, &small, &small_weights, "").await.map(|_| ());
        match &small_answer {
            Err(status) if status.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break,
        }
    }
    assert!(
        small_answer.is_ok(),
        "a small publish during the flood: {small_answer:?}"
    );
    let (mut created, mut refused) = (0, 0);
    for task in flood {
        match task.await.unwrap() {
            Ok(()) => created += 1,
            Err(status) if status.code() == Code::ResourceExhausted => {
                assert!(
                    status.message().contains("--max-publish-buffer-bytes"),
                    "{}",
                    status.message()
                );
                refused += 1;
            }
            Err(other) => panic!("a flooding publish failed otherwise: {other:?}"),
        }
    }
    assert!(created >= 1 && refused >= 1, "{created} created, {refused} refused");

    // One message past the size limit is refused by gRPC before it is buffered.
    let mut oversized = publish_messages(&small, &small_weights, "");
    oversized.truncate(1);
    oversized.push(pb::PublishRequest {
        part: Some(pb::publish_request::Part::Chunk(vec![0; 5 * 1024 * 1024])),
    });
    let status = client.publish(tokio_stream::iter(oversized)).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("too large"), "{}", status.message());

    // A manifest too large for a Kafka record is the caller's error, named as such.
    let mut wordy = small.clone();
    wordy.description = "x".repeat(300 * 1024);
    let status = publish(&mut client, &wordy, &small_weights, "").await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("over the limit"), "{}", status.message());

    // Still serving: reads and a publish work, and the versions count up without gaps.
    let versions = client
        .list_versions(pb::ListVersionsRequest { name: "big".into() })
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert_eq!(versions.len(), created);
    let numbers: Vec<u64> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=created as u64).collect::<Vec<_>>());
    publish(&mut client, &small, &small_weights, "").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_the_secure_broker_each_service_works_with_its_own_principal_and_no_more() {
    use crate::trainer::{spec, start_job, trainer_client, wait_done};
    use kappa_api::trainer::JobPhase;
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let (bootstrap, clients) = secure_broker();
    let principal = |name: &str| clients.join(format!("{name}.properties"));
    let models = unique("test.models");
    let registry = Launch::new("kappa-registry", &models)
        .kafka(&bootstrap, &principal("registry"))
        .args([
            "--models-topic",
            &models,
            "--transactional-id",
            &unique("test-registry"),
        ])
        .start("kappa.registry.v1.Registry")
        .await;
    let fixture = fixture("autoencoder");
    let mut client = registry_client(&registry).await;
    publish(&mut client, &fixture.manifest, &fixture.weights, "")
        .await
        .unwrap();

    // The fleet writes sensor data as its own principal; the trainer reads it and keeps its jobs.
    let sensors = unique("test.sensors");
    let fleet = std::process::Command::new(binary("kappa"))
        .args(["fleet", "--kafka-bootstrap", &bootstrap, "--topic", &sensors])
        .arg(format!("--kafka-properties-file={}", principal("fleet").display()))
        .args([
            "--cars",
            "20",
            "--events",
            "3000",
            "--rate",
            "0",
            "--backdate-seconds",
            "3600",
        ])
        .output()
        .unwrap();
    assert!(fleet.status.success(), "{}", String::from_utf8_lossy(&fleet.stderr));
    let trainer = Launch::new("kappa-trainer", &models)
        .kafka(&bootstrap, &principal("trainer"))
        .args(["--registry", &registry.address, "--jobs-topic", &unique("test.jobs")])
        .start("kappa.trainer.v1.Trainer")
        .await;
    let mut jobs = trainer_client(&trainer).await;
    let job = start_job(&mut jobs, spec("secured-fleet", &sensors, 0, i64::MAX / 2)).await;
    let done = wait_done(&mut jobs, &job.job_id, Duration::from_secs(180)).await;
    assert_eq!(done.phase, JobPhase::Succeeded as i32, "{}", done.message);
    // The trainer asked each partition's leader, over SASL_SSL with SCRAM as its principal,
    // where the remote tier ends (the fleet made the topic tiered; nothing has moved yet).
    let lineage = done.lineage.unwrap();
    for p in &lineage.partitions {
        assert_eq!(p.earliest_local_offset, Some(0), "{p:?}");
    }

    // The predictor reads the models topic as its own principal and serves.
    let predictor = Launch::new("kappa-predictor", &models)
        .kafka(&bootstrap, &principal("predictor"))
        .args(["--models-topic", &models, "--model", &fixture.manifest.name])
        .start("kappa.predictor.v1.Predictor")
        .await;
    let answer = GrpcInferenceServiceClient::new(
        kappa_client::connect("kappa-predictor", &predictor.address)
            .await
            .unwrap(),
    )
    .model_infer(oip_request(&fixture.manifest.name, &fixture.inputs[0]))
    .await
    .unwrap();
    assert_eq!(answer.get_ref().model_version, "1");

    // Neither a predictor's nor the trainer's principal may write the models topic: the broker
    // refuses, whatever the record says.
    for name in ["predictor", "trainer", "fleet"] {
        let producer: FutureProducer = client_config_from(&bootstrap, &principal(name))
            .set("message.timeout.ms", "10000")
            .create()
            .unwrap();
        let sent = producer
            .send(
                FutureRecord::to(&models)
                    .key("model/forged/1")
                    .payload(b"forged".as_slice()),
                Duration::from_secs(10),
            )
            .await;
        let error = sent.expect_err("the broker accepted a write to the models topic").0;
        assert!(error.to_string().contains("authorization"), "{name}: {error}");
    }
}

#[tokio::test]
async fn an_idempotency_key_answers_only_its_own_publishers_retry() {
    let principals = Principals::new();
    let registry = RegistrySetup::new().arg(principals.flag()).start().await;
    let client_as = |role: &str| {
        let (address, role) = (registry.address.clone(), role.to_owned());
        async move {
            kappa_client::Registry::connect_with(&address, &as_role(Some(&role)))
                .await
                .unwrap()
        }
    };
    let (mut writer, mut admin) = (client_as("write").await, client_as("admin").await);
    let model = unique("claimed");
    let manifest = kappa_fleet::car_autoencoder(&model, &[4]);
    let weights = kappa_model::example::random_weights(&manifest, 1);
    let first = writer.publish(&manifest, &weights, "job-42").await.unwrap();
    // The same caller retrying the same publish gets the version it made.
    let retry = writer.publish(&manifest, &weights, "job-42").await.unwrap();
    assert!(retry.deduplicated);
    assert_eq!(retry.version.unwrap().version, first.version.unwrap().version);
    // Another principal with the same key and content, or the same caller with other weights,
    // is refused: a key is not a claim on a version someone else can redeem.
    for (who, client, weights) in [
        ("another principal", &mut admin, weights.clone()),
        (
            "other weights",
            &mut writer,
            kappa_model::example::random_weights(&manifest, 2),
        ),
    ] {
        let refused = client.publish(&manifest, &weights, "job-42").await.unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{who}: {}", refused.message());
        assert!(refused.message().contains("job-42"), "{who}: {}", refused.message());
    }
    let listed = admin
        .rpc()
        .list_versions(kappa_api::registry::ListVersionsRequest { name: model.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.versions.len(), 1);
    assert_eq!(listed.next_version, 2);
}

/// The secure broker's controller listener takes admin requests too (clients may bootstrap to a
/// controller): an anonymous client gets nothing there, the controller's principal does (issue
/// 30, item 5; it was a super user as `User:ANONYMOUS`).
#[test]
fn the_secure_brokers_controller_listener_refuses_anonymous_clients() {
    let (_, clients) = secure_broker();
    let state = clients.parent().unwrap();
    let properties = std::fs::read_to_string(state.join("server.properties")).unwrap();
    let controller = properties
        .lines()
        .find_map(|l| l.strip_prefix("controller.quorum.bootstrap.servers="))
        .unwrap()
        .to_owned();
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/kafka/.state/lib/*");
    let dir = tempfile::tempdir().unwrap();
    let list_acls = |extra: &str| {
        let config = dir.path().join("client.properties");
        std::fs::write(
            &config,
            format!("default.api.timeout.ms=8000\nrequest.timeout.ms=4000\n{extra}"),
        )
        .unwrap();
        std::process::Command::new("java")
            .arg("-cp")
            .arg(&lib)
            .arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=error")
            .arg("org.apache.kafka.tools.AclCommand")
            .args(["--bootstrap-controller", &controller, "--list", "--command-config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    let anonymous = list_acls("");
    assert!(
        !anonymous.status.success(),
        "an anonymous client listed the ACLs: {}",
        String::from_utf8_lossy(&anonymous.stdout)
    );
    let password = std::fs::read_to_string(state.join("controller.password")).unwrap();
    let controller_principal = list_acls(&format!(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username=\"controller\" password=\"{}\";\n",
        password.trim()
    ));
    assert!(
        controller_principal.status.success(),
        "{}",
        String::from_utf8_lossy(&controller_principal.stderr)
    );
    assert!(String::from_utf8_lossy(&controller_principal.stdout).contains("User:registry"));
}

/// A token is never sent in plaintext to another machine unless the user says so: the CLI
/// refuses the call, the trainer refuses to start, and the registry refuses `--trusted-keys`
/// without a key to sign its pointers (issue 30, item 5).
#[test]
fn tokens_are_not_sent_in_plaintext_to_another_machine_without_being_told() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, self::token("write")).unwrap();
    let remote = "http://registry.kappa.invalid:50051";
    let cli = |extra: &[&str]| {
        std::process::Command::new(binary("kappa"))
            .args(["models", "list", "--registry", remote, "--token-file"])
            .arg(&token)
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = cli(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("plaintext") && stderr.contains("--allow-plaintext-token"),
        "{stderr}"
    );
    // Allowed, it goes on to connect (and finds nobody there).
    let allowed = cli(&["--allow-plaintext-token"]);
    let stderr = String::from_utf8_lossy(&allowed.stderr);
    assert!(!allowed.status.success() && !stderr.contains("plaintext"), "{stderr}");

    let trainer = |extra: &[&str]| {
        std::process::Command::new(binary("kappa-trainer"))
            .args(["--registry", remote, "--registry-token-file"])
            .arg(&token)
            .args(extra)
            .arg("--check-config")
            .output()
            .unwrap()
    };
    let refused = trainer(&[]);
    assert_eq!(refused.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("plaintext"));
    let allowed = trainer(&["--registry-allow-plaintext-token"]);
    assert!(allowed.status.success(), "{}", String::from_utf8_lossy(&allowed.stderr));

    let keys = tempfile::tempdir().unwrap();
    let (_, public) = signing_keys(keys.path());
    let registry = std::process::Command::new(binary("kappa-registry"))
        .arg(format!("--trusted-keys={}", public.display()))
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(registry.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&registry.stderr).contains("--signing-key"));
}

/// Mutual TLS alone gives every certificate the CA signs every role: a server started that way
/// says so (issue 30, item 5), and says nothing once tokens give roles.
#[test]
fn mutual_tls_without_tokens_is_called_out_at_start() {
    let ca = Ca::new("warned CA");
    let files = Files::new();
    let (cert, key) = ca.issue("kappa", &["127.0.0.1"], false);
    files.write("server.crt", &cert);
    files.write("server.key", &key);
    files.write("ca.crt", &ca.pem);
    let principals = Principals::new();
    let check = |extra: Vec<String>| {
        std::process::Command::new(binary("kappa-registry"))
            .args(server_flags(&files, true))
            .args(extra)
            .arg("--check-config")
            .output()
            .unwrap()
    };
    let warned = check(Vec::new());
    assert!(warned.status.success(), "{}", String::from_utf8_lossy(&warned.stderr));
    assert!(
        String::from_utf8_lossy(&warned.stderr).contains("mutual TLS without --auth-tokens"),
        "{}",
        String::from_utf8_lossy(&warned.stderr)
    );
    let quiet = check(vec![principals.flag()]);
    assert!(quiet.status.success() && !String::from_utf8_lossy(&quiet.stderr).contains("warning"));
}

/// Watches held open cannot take every stream: one caller holds at most its quota, and watches
/// together at most half of --max-read-streams, so GetModel keeps working (issue 30, item 6).
#[tokio::test]
async fn held_watches_neither_exceed_a_callers_quota_nor_starve_get_model() {
    let principals = Principals::new();
    let registry = RegistrySetup::new()
        .arg(principals.flag())
        .args(["--max-read-streams=6", "--max-watch-streams-per-caller=2"])
        .start()
        .await;
    let client_as = |role: &str| {
        let (address, role) = (registry.address.clone(), role.to_owned());
        async move {
            RegistryClient::new(
                kappa_client::connect_with("kappa-registry", &address, &as_role(Some(&role)))
                    .await
                    .unwrap(),
            )
        }
    };
    let mut writer = client_as("write").await;
    let name = unique("watched");
    let manifest = kappa_fleet::car_autoencoder(&name, &[4]);
    publish(
        &mut writer,
        &manifest,
        &kappa_model::example::random_weights(&manifest, 1),
        "",
    )
    .await
    .unwrap();
    let watch = |mut client: RegistryClient<TracedChannel>| async move {
        client
            .watch_models(pb::WatchModelsRequest::default())
            .await
            .map(tonic::Response::into_inner)
    };
    let reader = client_as("read").await;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(watch(reader.clone()).await.unwrap());
    }
    let refused = watch(reader.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-watch-streams-per-caller"),
        "{}",
        refused.message()
    );
    // Another caller still watches, up to the watches' half of the read streams.
    let admin = client_as("admin").await;
    held.push(watch(admin.clone()).await.unwrap());
    let refused = watch(admin).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("max-read-streams"), "{}", refused.message());
    // GetModel, weights and all, is not starved.
    for _ in 0..3 {
        let (header, weights) = kappa_client::Registry::from(reader.clone())
            .get(&name, kappa_client::Selector::Latest)
            .await
            .unwrap();
        assert_eq!((header.version, weights.is_empty()), (1, false));
    }
    // A closed watch gives its place back.
    held.truncate(1);
    let reopened = eventually("a closed watch frees its place", || {
        let reader = reader.clone();
        async move { watch(reader).await.is_ok() }
    });
    reopened.await;
}

/// Trusted keys are read again when their directory changes, like tokens: a key added is
/// trusted from then on, a key removed no longer (issue 30, item 6).
#[tokio::test]
async fn trusted_keys_are_reloaded_a_new_key_is_trusted_and_a_removed_one_revoked() {
    use kappa_model::signing::ModelSigner;
    let keys = tempfile::tempdir().unwrap();
    let (first, second) = (ModelSigner::generate(), ModelSigner::generate());
    std::fs::write(keys.path().join("first.pem"), first.public_pem().unwrap()).unwrap();
    let setup = RegistrySetup::new()
        .verifying(keys.path())
        .arg("--security-reload-seconds=1");
    let registry = setup.start().await;
    let client = registry_client(&registry).await;
    let name = unique("rekeyed");
    let manifest = kappa_fleet::car_autoencoder(&name, &[4]);
    let publish_with = |signer: ModelSigner, seed: u64| {
        let (client, manifest) = (client.clone(), manifest.clone());
        async move {
            kappa_client::Registry::from(client)
                .publish_signed(
                    &manifest,
                    &kappa_model::example::random_weights(&manifest, seed),
                    "",
                    Some(&signer),
                )
                .await
        }
    };
    publish_with(first.clone(), 1).await.unwrap();
    let predictor = PredictorSetup::new(&setup.topic, &name, "latest")
        .arg(format!("--trusted-keys={}", keys.path().display()))
        .arg("--security-reload-seconds=1")
        .start()
        .await;
    predictor
        .wait_for_metric("kappa_predictor_loaded_version", 1.0, "version 1 is served")
        .await;
    let refused = publish_with(second.clone(), 2).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    let reloads = |service: &Service| service.log_text().matches("reloaded after the files changed").count();
    let (registry_before, predictor_before) = (reloads(&registry), reloads(&predictor.service));
    std::fs::write(keys.path().join("second.pem"), second.public_pem().unwrap()).unwrap();
    eventually("both reload the keys", || async {
        reloads(&registry) > registry_before && reloads(&predictor.service) > predictor_before
    })
    .await;
    assert_eq!(
        publish_with(second.clone(), 2).await.unwrap().version.unwrap().version,
        2
    );
    predictor
        .wait_for_metric(
            "kappa_predictor_loaded_version",
            2.0,
            "the newly trusted key's version is served",
        )
        .await;

    // Revoked: the registry refuses the key, and a version it signed written straight to the
    // topic is refused by the predictor, which keeps serving version 2.
    let predictor_before = reloads(&predictor.service);
    std::fs::remove_file(keys.path().join("second.pem")).unwrap();
    eventually("the predictor reloads the keys", || async {
        reloads(&predictor.service) > predictor_before
    })
    .await;
    eventually("the registry no longer trusts the removed key", || async {
        publish_with(second.clone(), 3)
            .await
            .is_err_and(|s| s.code() == Code::PermissionDenied)
    })
    .await;
    let weights = kappa_model::example::random_weights(&manifest, 3);
    let mut forged = manifest.clone();
    forged.version = 3;
    forged.weights_sha256 = sha256(&weights);
    forged.weights_size = weights.len() as u64;
    let (signature, signing_key_id) = second.sign(&forged);
    let unverified = r#"kappa_predictor_refused_log_records_total{reason="unverified"}"#;
    let before = predictor.metric(unverified).await.unwrap_or(0.0);
    write_raw_record(
        &setup.topic,
        kappa_api::model::VersionRecord {
            manifest: Some(forged),
            signature,
            signing_key_id,
            ..Default::default()
        },
        &weights,
    )
    .await;
    predictor
        .wait_for_metric(unverified, before + 1.0, "the revoked key's record is refused")
        .await;
    assert_eq!(predictor.metric("kappa_predictor_loaded_version").await, Some(2.0));
}
