//! How Kappa connects to an MQTT broker. The bridge and `kappa fleet` take the same flags
//! ([`MqttUrl`] and [`MqttAccess`]) and build their connection options here, so TLS and
//! credentials behave the same way in every MQTT client.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;
use rumqttc::{TlsConfiguration, Transport, v5::MqttOptions};

/// Publishes a connection may have unacknowledged (the broker may ask for fewer).
pub const OUTGOING_IN_FLIGHT: u16 = 64;

/// Where the MQTT broker is: `mqtt://HOST[:PORT]` (1883) or `mqtts://HOST[:PORT]` (8883).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl MqttUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (tls, rest) = if let Some(rest) = text.strip_prefix("mqtts://") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("mqtt://") {
            (false, rest)
        } else {
            return Err(format!("{text:?} is not mqtt://HOST:PORT or mqtts://HOST:PORT"));
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (
                host,
                port.parse::<u16>()
                    .map_err(|_| format!("{port:?} in {text:?} is not a port number"))?,
            ),
            None => (rest, if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            return Err(format!("{text:?} names no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

impl std::fmt::Display for MqttUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

/// Credentials and trust for the broker, shared by every MQTT client.
#[derive(Debug, Clone, Default, Args)]
pub struct MqttAccess {
    /// MQTT user name.
    #[arg(long, env = "KAPPA_MQTT_USERNAME", value_name = "NAME")]
    pub mqtt_username: Option<String>,

    /// File holding the MQTT password (a mounted Secret), read at start-up.
    #[arg(
        long,
        env = "KAPPA_MQTT_PASSWORD_FILE",
        value_name = "FILE",
        requires = "mqtt_username"
    )]
    pub mqtt_password_file: Option<PathBuf>,

    /// PEM CA bundle that signs the broker's certificate, for mqtts://.
    #[arg(long, env = "KAPPA_MQTT_CA", value_name = "PEM")]
    pub mqtt_ca: Option<PathBuf>,
}

/// What a client needs to connect, read once from the flags' files.
#[derive(Clone)]
pub struct MqttConnection {
    url: MqttUrl,
    credentials: Option<(String, String)>,
    ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for MqttConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of logs and --check-config output.
        f.debug_struct("MqttConnection")
            .field("url", &self.url.to_string())
            .field("username", &self.credentials.as_ref().map(|(user, _)| user))
            .field("ca", &self.ca.as_ref().map(|ca| format!("{} bytes", ca.len())))
            .finish()
    }
}

impl MqttAccess {
    /// Reads the password and CA files and checks they fit the URL's scheme.
    pub fn connection(&self, url: &MqttUrl) -> anyhow::Result<MqttConnection> {
        let credentials = match &self.mqtt_username {
            Some(user) => {
                let password = match &self.mqtt_password_file {
                    Some(path) => std::fs::read_to_string(path)
                        .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
                        .with_context(|| format!("--mqtt-password-file {}", path.display()))?,
                    None => String::new(),
                };
                Some((user.clone(), password))
            }
            None => None,
        };
        let ca = match (&self.mqtt_ca, url.tls) {
            (Some(path), true) => Some(std::fs::read(path).with_context(|| format!("--mqtt-ca {}", path.display()))?),
            (Some(_), false) => anyhow::bail!("--mqtt-ca is set but --mqtt-url {url} is not mqtts://"),
            (None, true) => {
                anyhow::bail!("{url} needs --mqtt-ca: the PEM bundle that signs the broker's certificate")
            }
            (None, false) => None,
        };
        Ok(MqttConnection {
            url: url.clone(),
            credentials,
            ca,
        })
    }
}

impl MqttConnection {
    pub fn url(&self) -> &MqttUrl {
        &self.url
    }

    /// Options for one client: the broker, keep-alive, credentials and TLS; the caller adds
    /// what its role needs (session, acknowledgements, flow control).
    pub fn options(&self, client_id: impl Into<String>) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.url.host.clone(), self.url.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(Some(1 << 20))
            // rumqttc keeps a slot for every publish that may be in flight, 65,535 unless told
            // (about 13 MB per connection): a fleet of a thousand connections would take 13 GB.
            .set_outgoing_inflight_upper_limit(OUTGOING_IN_FLIGHT);
        if let Some((user, password)) = &self.credentials {
            options.set_credentials(user.clone(), password.clone());
        }
        if let Some(ca) = &self.ca {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            }));
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_at_parse_time() {
        assert_eq!(
            MqttUrl::parse("mqtts://broker.example.com").unwrap(),
            MqttUrl {
                host: "broker.example.com".into(),
                port: 8883,
                tls: true
            }
        );
        assert_eq!(MqttUrl::parse("mqtt://127.0.0.1:1884").unwrap().port, 1884);
        assert_eq!(MqttUrl::parse("mqtt://h").unwrap().port, 1883);
        assert!(MqttUrl::parse("tcp://x:1").is_err());
        assert!(MqttUrl::parse("mqtt://:1883").is_err());
        assert!(MqttUrl::parse("mqtt://x:http").is_err());
    }

    #[test]
    fn tls_needs_a_ca_and_a_ca_needs_tls() {
        let plain = MqttUrl::parse("mqtt://h").unwrap();
        let tls = MqttUrl::parse("mqtts://h").unwrap();
        let dir = std::env::temp_dir().join(format!("kappa-mqtt-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\n").unwrap();
        let with_ca = MqttAccess {
            mqtt_ca: Some(ca),
            ..MqttAccess::default()
        };
        assert!(
            MqttAccess::default()
                .connection(&tls)
                .unwrap_err()
                .to_string()
                .contains("--mqtt-ca")
        );
        assert!(
            with_ca
                .connection(&plain)
                .unwrap_err()
                .to_string()
                .contains("not mqtts://")
        );
        assert!(with_ca.connection(&tls).is_ok());
        let missing = MqttAccess {
            mqtt_username: Some("car".into()),
            mqtt_password_file: Some(dir.join("absent")),
            ..MqttAccess::default()
        };
        assert!(
            missing
                .connection(&plain)
                .unwrap_err()
                .to_string()
                .contains("--mqtt-password-file")
        );
        let password = dir.join("password");
        std::fs::write(&password, "s3cret\n").unwrap();
        let access = MqttAccess {
            mqtt_username: Some("car".into()),
            mqtt_password_file: Some(password),
            ..MqttAccess::default()
        };
        let connection = access.connection(&plain).unwrap();
        assert_eq!(connection.credentials, Some(("car".into(), "s3cret".into())));
        assert!(
            !format!("{connection:?}").contains("s3cret"),
            "the password is never printed"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
