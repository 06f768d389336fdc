//! Where a partition's remote tier ends: the broker's earliest *local* offset (KIP-1005's
//! `EARLIEST_LOCAL`, ListOffsets timestamp -4, answered from request version 9 on). Offsets below
//! it are served from the remote tier. librdkafka sends older ListOffsets versions, so this
//! module speaks that one request itself, to each partition's leader, with the security the
//! librdkafka clients are configured with: PLAINTEXT, SSL (rustls, the CA of `ssl.ca.location`,
//! a client certificate for mutual TLS), SASL PLAIN or SCRAM-SHA-256/512.
//!
//! Blocking, like the range readers that call it, and bounded by the caller's timeout on every
//! connect, read and write.

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    net::{TcpStream, ToSocketAddrs},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use base64::{Engine as _, engine::general_purpose::STANDARD as BASE64};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::{
    messages::{
        ListOffsetsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
        list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic},
    },
    protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes},
};
use rdkafka::{
    ClientConfig,
    consumer::{BaseConsumer, Consumer},
};
use thiserror::Error;
use tokio_rustls::rustls::{
    self, ClientConnection, RootCertStore, StreamOwned,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject},
};

use crate::KafkaClients;

/// ListOffsets' timestamp for "the first offset on the leader's local disk".
const EARLIEST_LOCAL: i64 = -4;
/// The first ListOffsets version that answers [`EARLIEST_LOCAL`].
const LIST_OFFSETS_VERSION: i16 = 9;
/// Responses larger than this are not ListOffsets answers for one topic.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum EarliestLocalError {
    #[error("Kafka metadata for {topic:?}: {source}")]
    Metadata {
        topic: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("broker {broker}: {message}")]
    Broker { broker: String, message: String },
    #[error("partition {partition}: the broker answered error code {code}")]
    Partition { partition: i32, code: i16 },
}

/// The earliest local offset of every partition of `topic`, from each partition's leader.
pub fn earliest_local_offsets(
    clients: &KafkaClients,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, EarliestLocalError> {
    let config = clients.config(&[]);
    let security = Security::from_config(&config)?;
    let leaders = leaders(&config, topic, timeout)?;
    let mut offsets = BTreeMap::new();
    for (address, partitions) in leaders {
        let broker = |message: String| EarliestLocalError::Broker {
            broker: address.clone(),
            message,
        };
        let mut connection = Connection::open(&address, &security, timeout).map_err(broker)?;
        for (partition, offset) in connection.list_earliest_local(topic, &partitions).map_err(broker)? {
            offsets.insert(partition, offset?);
        }
    }
    Ok(offsets)
}

/// The partitions of `topic` by their leader's `host:port`.
fn leaders(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<HashMap<String, Vec<i32>>, EarliestLocalError> {
    let metadata_error = |source| EarliestLocalError::Metadata {
        topic: topic.to_owned(),
        source,
    };
    let consumer: BaseConsumer = config.create().map_err(metadata_error)?;
    let metadata = consumer.fetch_metadata(Some(topic), timeout).map_err(metadata_error)?;
    let brokers: HashMap<i32, String> = metadata
        .brokers()
        .iter()
        .map(|b| (b.id(), format!("{}:{}", b.host(), b.port())))
        .collect();
    let mut leaders: HashMap<String, Vec<i32>> = HashMap::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        let address = brokers
            .get(&partition.leader())
            .ok_or_else(|| EarliestLocalError::Broker {
                broker: partition.leader().to_string(),
                message: format!("leads partition {} but is not in the metadata", partition.id()),
            })?;
        leaders.entry(address.clone()).or_default().push(partition.id());
    }
    Ok(leaders)
}

/// How the librdkafka clients reach the brokers, as far as this client needs it.
struct Security {
    tls: Option<Arc<rustls::ClientConfig>>,
    sasl: Option<Sasl>,
}

struct Sasl {
    mechanism: Mechanism,
    username: String,
    password: String,
}

#[derive(Clone, Copy)]
enum Mechanism {
    Plain,
    Scram {
        name: &'static str,
        hmac: &'static ring::hmac::Algorithm,
        pbkdf2: ring::pbkdf2::Algorithm,
    },
}

impl Security {
    fn from_config(config: &ClientConfig) -> Result<Self, EarliestLocalError> {
        let get = |key: &str| config.get(key).map(str::trim).filter(|v| !v.is_empty());
        let protocol = get("security.protocol").unwrap_or("plaintext").to_ascii_lowercase();
        let (tls, sasl) = match protocol.as_str() {
            "plaintext" => (false, false),
            "ssl" => (true, false),
            "sasl_plaintext" => (false, true),
            "sasl_ssl" => (true, true),
            other => return Err(unsupported(format!("security.protocol={other}"))),
        };
        let tls = tls.then(|| tls_config(&get)).transpose()?;
        let sasl = sasl
            .then(|| {
                let mechanism = get("sasl.mechanism").or(get("sasl.mechanisms")).unwrap_or("GSSAPI");
                let mechanism = match mechanism.to_ascii_uppercase().as_str() {
                    "PLAIN" => Mechanism::Plain,
                    "SCRAM-SHA-256" => Mechanism::Scram {
                        name: "SCRAM-SHA-256",
                        hmac: &ring::hmac::HMAC_SHA256,
                        pbkdf2: ring::pbkdf2::PBKDF2_HMAC_SHA256,
                    },
                    "SCRAM-SHA-512" => Mechanism::Scram {
                        name: "SCRAM-SHA-512",
                        hmac: &ring::hmac::HMAC_SHA512,
                        pbkdf2: ring::pbkdf2::PBKDF2_HMAC_SHA512,
                    },
                    other => return Err(unsupported(format!("sasl.mechanism={other}"))),
                };
                Ok(Sasl {
                    mechanism,
                    username: get("sasl.username").unwrap_or_default().to_owned(),
                    password: config.get("sasl.password").unwrap_or_default().to_owned(),
                })
            })
            .transpose()?;
        Ok(Self { tls, sasl })
    }
}

fn unsupported(what: String) -> EarliestLocalError {
    EarliestLocalError::Unsupported(format!(
        "{what} is not supported for looking up earliest local offsets (PLAINTEXT, SSL and SASL \
         PLAIN/SCRAM are)"
    ))
}

fn tls_config<'a>(get: &impl Fn(&str) -> Option<&'a str>) -> Result<Arc<rustls::ClientConfig>, EarliestLocalError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| EarliestLocalError::Unsupported(format!("{what}: {e}"));
    if get("ssl.endpoint.identification.algorithm").is_some_and(|v| v.eq_ignore_ascii_case("none")) {
        return Err(unsupported("ssl.endpoint.identification.algorithm=none".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    let certificates: Vec<CertificateDer<'static>> = match (get("ssl.ca.location"), get("ssl.ca.pem")) {
        (Some(path), _) => CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|e| bad(&format!("ssl.ca.location {path}"), &e))?,
        (None, Some(pem)) => CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| bad("ssl.ca.pem", &e))?,
        (None, None) => rustls_native_certs::load_native_certs().certs,
    };
    for certificate in certificates {
        roots.add(certificate).map_err(|e| bad("a CA certificate", &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("TLS", &e))?
        .with_root_certificates(roots);
    let config = match (get("ssl.certificate.location"), get("ssl.key.location")) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect())
                .map_err(|e| bad(&format!("ssl.certificate.location {cert}"), &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(&format!("ssl.key.location {key}"), &e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| bad("client certificate", &e))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A partition and its leader's answer: the offset, or the error code.
type PartitionAnswer = (i32, Result<i64, EarliestLocalError>);

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// One connection to one broker, authenticated.
struct Connection {
    io: Box<dyn Io>,
    correlation: i32,
}

impl Connection {
    fn open(address: &str, security: &Security, timeout: Duration) -> Result<Self, String> {
        let socket = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve: {e}"))?
            .next()
            .ok_or("resolves to no address")?;
        let tcp = TcpStream::connect_timeout(&socket, timeout).map_err(|e| format!("cannot connect: {e}"))?;
        tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let io: Box<dyn Io> = match &security.tls {
            None => Box::new(tcp),
            Some(config) => {
                let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
                let name = ServerName::try_from(host.to_owned()).map_err(|e| format!("{host}: {e}"))?;
                let client = ClientConnection::new(Arc::clone(config), name).map_err(|e| format!("TLS: {e}"))?;
                Box::new(StreamOwned::new(client, tcp))
            }
        };
        let mut connection = Self { io, correlation: 0 };
        if let Some(sasl) = &security.sasl {
            connection.authenticate(sasl)?;
        }
        Ok(connection)
    }

    fn call<R: Request>(&mut self, request: &R, version: i16) -> Result<R::Response, String> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("kappa")));
        let mut frame = BytesMut::new();
        frame.put_i32(0);
        let encoded = header
            .encode(&mut frame, R::header_version(version))
            .and_then(|()| request.encode(&mut frame, version));
        encoded.map_err(|e| format!("cannot encode the request: {e}"))?;
        let length = i32::try_from(frame.len() - 4).map_err(|_| "request too large")?;
        frame[..4].copy_from_slice(&length.to_be_bytes());
        self.io.write_all(&frame).map_err(|e| format!("cannot send: {e}"))?;
        self.io.flush().map_err(|e| format!("cannot send: {e}"))?;

        let mut length = [0_u8; 4];
        self.io.read_exact(&mut length).map_err(|e| format!("no answer: {e}"))?;
        let length = usize::try_from(i32::from_be_bytes(length)).map_err(|_| "negative frame length")?;
        if length > MAX_RESPONSE_BYTES {
            return Err(format!("answer of {length} bytes is not a ListOffsets answer"));
        }
        let mut body = vec![0; length];
        self.io
            .read_exact(&mut body)
            .map_err(|e| format!("answer cut short: {e}"))?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .map_err(|e| format!("cannot decode the answer: {e}"))?;
        if header.correlation_id != self.correlation {
            return Err("the answer is not to this request".to_owned());
        }
        R::Response::decode(&mut body, version).map_err(|e| format!("cannot decode the answer: {e}"))
    }

    fn authenticate(&mut self, sasl: &Sasl) -> Result<(), String> {
        let name = match sasl.mechanism {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram { name, .. } => name,
        };
        let handshake = self.call(
            &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(name)),
            1,
        )?;
        if handshake.error_code != 0 {
            return Err(format!(
                "the broker does not take SASL {name} (error {})",
                handshake.error_code
            ));
        }
        match sasl.mechanism {
            Mechanism::Plain => {
                let token = format!("\0{}\0{}", sasl.username, sasl.password);
                self.sasl_step(token.into_bytes())?;
            }
            Mechanism::Scram { hmac, pbkdf2, .. } => {
                let scram = Scram::new(&sasl.username, hmac, pbkdf2)?;
                let server_first = self.sasl_step(scram.client_first().into_bytes())?;
                let (client_final, server_signature) = scram.client_final(&server_first, &sasl.password)?;
                let server_final = self.sasl_step(client_final.into_bytes())?;
                if server_final != format!("v={}", BASE64.encode(server_signature)).as_bytes() {
                    return Err("the broker's SCRAM signature does not verify".to_owned());
                }
            }
        }
        Ok(())
    }

    fn sasl_step(&mut self, token: Vec<u8>) -> Result<Bytes, String> {
        let answer = self.call(&SaslAuthenticateRequest::default().with_auth_bytes(token.into()), 2)?;
        if answer.error_code != 0 {
            let message = answer.error_message.map(|m| m.to_string()).unwrap_or_default();
            return Err(format!(
                "SASL authentication failed (error {}): {message}",
                answer.error_code
            ));
        }
        Ok(answer.auth_bytes)
    }

    /// Each partition's earliest local offset, or the error code its leader answered.
    fn list_earliest_local(&mut self, topic: &str, partitions: &[i32]) -> Result<Vec<PartitionAnswer>, String> {
        let request = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_isolation_level(1)
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(StrBytes::from_string(topic.to_owned()).into())
                    .with_partitions(
                        partitions
                            .iter()
                            .map(|&p| {
                                ListOffsetsPartition::default()
                                    .with_partition_index(p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(EARLIEST_LOCAL)
                            })
                            .collect(),
                    ),
            ]);
        let response = self.call(&request, LIST_OFFSETS_VERSION)?;
        Ok(response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| {
                let offset = match p.error_code {
                    0 => Ok(p.offset),
                    code => Err(EarliestLocalError::Partition {
                        partition: p.partition_index,
                        code,
                    }),
                };
                (p.partition_index, offset)
            })
            .collect())
    }
}

/// A SCRAM exchange (RFC 5802) from the client's side.
struct Scram {
    client_first_bare: String,
    nonce: String,
    hmac: &'static ring::hmac::Algorithm,
    pbkdf2: ring::pbkdf2::Algorithm,
}

impl Scram {
    fn new(
        username: &str,
        hmac: &'static ring::hmac::Algorithm,
        pbkdf2: ring::pbkdf2::Algorithm,
    ) -> Result<Self, String> {
        let mut random = [0_u8; 18];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut random)
            .map_err(|_| "no random bytes for the SCRAM nonce")?;
        let nonce = BASE64.encode(random);
        let user = username.replace('=', "=3D").replace(',', "=2C");
        Ok(Self {
            client_first_bare: format!("n={user},r={nonce}"),
            nonce,
            hmac,
            pbkdf2,
        })
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client's final message and the signature the server must answer with.
    fn client_final(&self, server_first: &[u8], password: &str) -> Result<(String, Vec<u8>), String> {
        let server_first = std::str::from_utf8(server_first).map_err(|_| "SCRAM server-first is not text")?;
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(name))
                .ok_or_else(|| format!("SCRAM server-first lacks {name}"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) {
            return Err("SCRAM server nonce does not extend ours".to_owned());
        }
        let salt = BASE64.decode(field("s=")?).map_err(|_| "SCRAM salt is not base64")?;
        let iterations: NonZeroU32 = field("i=")?.parse().map_err(|_| "SCRAM iterations not a count")?;

        let mut salted = vec![0_u8; self.hmac.digest_algorithm().output_len()];
        ring::pbkdf2::derive(self.pbkdf2, iterations, &salt, password.as_bytes(), &mut salted);
        let salted = ring::hmac::Key::new(*self.hmac, &salted);
        let client_key = ring::hmac::sign(&salted, b"Client Key");
        let stored_key = ring::digest::digest(self.hmac.digest_algorithm(), client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = ring::hmac::sign(
            &ring::hmac::Key::new(*self.hmac, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        let server_key = ring::hmac::sign(&salted, b"Server Key");
        let server_signature = ring::hmac::sign(
            &ring::hmac::Key::new(*self.hmac, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            server_signature.as_ref().to_vec(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677's SCRAM-SHA-256 example, with its nonce.
    #[test]
    fn scram_sha_256_matches_the_rfc_example() {
        let scram = Scram {
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".to_owned(),
            nonce: "rOprNGfwEbeRWgbNEkqO".to_owned(),
            hmac: &ring::hmac::HMAC_SHA256,
            pbkdf2: ring::pbkdf2::PBKDF2_HMAC_SHA256,
        };
        let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, server_signature) = scram.client_final(server_first, "pencil").unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        assert_eq!(
            BASE64.encode(server_signature),
            "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let forged = b"r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert!(scram.client_final(forged, "pencil").unwrap_err().contains("nonce"));
    }

    #[test]
    fn unknown_security_is_refused_by_name() {
        let mut config = ClientConfig::new();
        config
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", "OAUTHBEARER");
        let Err(e) = Security::from_config(&config) else {
            panic!("OAUTHBEARER is not spoken here")
        };
        assert!(e.to_string().contains("sasl.mechanism=OAUTHBEARER"), "{e}");
    }
}
