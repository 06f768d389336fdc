# Sourced by the local brokers' scripts (deploy/kafka/kafka.sh, deploy/mqtt/mqtt.sh): TLS
# material for a loopback broker and random passwords, made with openssl.

secret() { head -c 18 /dev/urandom | base64 | tr -d '/+=' ; }

# local_broker_tls DIR CA_NAME PASSWORD_FILE: a CA (DIR/ca.pem, DIR/ca.key) and a certificate it
# signs for 127.0.0.1 and localhost (DIR/broker.pem, DIR/broker.key), also in a PKCS#12
# keystore (DIR/broker.p12) whose password is written to PASSWORD_FILE.
local_broker_tls() {
  local tls=$1 ca_name=$2 password_file=$3
  command -v openssl >/dev/null || { echo "openssl is required for the local brokers' TLS material." >&2; return 1; }
  mkdir -p "$tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$ca_name" \
    -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$tls/ext.cnf"
  openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 3650 \
    -extfile "$tls/ext.cnf" -out "$tls/broker.pem" 2>/dev/null
  secret > "$password_file"
  openssl pkcs12 -export -in "$tls/broker.pem" -inkey "$tls/broker.key" -name broker \
    -passout "pass:$(cat "$password_file")" -out "$tls/broker.p12"
  chmod 600 "$tls"/*.key "$password_file"
}
