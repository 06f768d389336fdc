//! Bearer tokens with roles, one tower layer on every Kappa server.
//!
//! The token file (`--auth-tokens`) has a line per principal, `NAME ROLES SHA256-OF-TOKEN`
//! (roles comma-separated; `#` starts a comment), so it holds no secret: a stolen copy lets
//! nobody in. A call carries `authorization: Bearer TOKEN`; the layer hashes the token, finds
//! its principal, and checks the role the server's policy asks for the method. No or an unknown
//! token is `UNAUTHENTICATED`; a known token without the role is `PERMISSION_DENIED`. Health and
//! reflection stay open for probes and tools; a method the policy does not list is refused to
//! everyone (deny by default), so a new RPC cannot ship open by accident. `admin` holds every
//! role. The file is re-read when it changes, so principals are added and revoked without a
//! restart.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::future::{Either, Ready, ready};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tower::{Layer, Service};

use crate::reload::Reloading;

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Registry reads and watches, job reads, model metadata.
    Read,
    /// Scoring: ModelInfer, Predict, PredictStream.
    Infer,
    /// Publish, SetAlias, DeleteAlias, DeleteVersion.
    Write,
    /// StartTraining, CancelJob.
    Train,
    /// Everything, plus forced deletes and other principals' jobs.
    Admin,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Read, Role::Infer, Role::Write, Role::Train, Role::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Infer => "infer",
            Role::Write => "write",
            Role::Train => "train",
            Role::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| format!("unknown role {name:?}; roles are read, infer, write, train, admin"))
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Roles(u8);

impl Roles {
    pub fn of(roles: &[Role]) -> Self {
        Self(roles.iter().fold(0, |bits, r| bits | r.bit()))
    }

    /// Whether these roles grant `role` (`admin` grants every role).
    pub fn grants(self, role: Role) -> bool {
        self.0 & (role.bit() | Role::Admin.bit()) != 0
    }

    /// `read,infer` as written in the token file.
    pub fn parse(list: &str) -> Result<Self, String> {
        let roles: Vec<Role> = list
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        if roles.is_empty() {
            return Err("no roles given".into());
        }
        Ok(Self::of(&roles))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Role::ALL
            .into_iter()
            .filter(|r| self.0 & r.bit() != 0)
            .map(Role::name)
            .collect();
        f.write_str(&names.join(","))
    }
}

/// Who is calling: set by the auth layer in the request's extensions for handlers to read
/// (a server without `--auth-tokens` has no principals, and handlers see none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub roles: Roles,
}

impl Principal {
    /// The principal of a request, if the server authenticates.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<&Principal> {
        request.extensions().get::<Principal>()
    }

    /// Whether a request may do something that needs `role` beyond what its method needs: a
    /// server without authentication lets everyone, as it does for every call.
    pub fn allows<T>(request: &tonic::Request<T>, role: Role) -> bool {
        Self::of(request).is_none_or(|p| p.roles.grants(role))
    }

    /// The name to record as the author of a write: empty without authentication.
    pub fn name_of<T>(request: &tonic::Request<T>) -> String {
        Self::of(request).map(|p| p.name.clone()).unwrap_or_default()
    }
}

/// SHA-256 of a token, hex, as the token file holds it.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The principals of a token file, by token digest.
#[derive(Debug, Default)]
pub struct TokenTable {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl TokenTable {
    /// Parses a token file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, String> {
        let mut by_digest = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let at = || format!("{origin}:{}", number + 1);
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, roles, digest] = fields[..] else {
                return Err(format!(
                    "{}: expected NAME ROLES SHA256-OF-TOKEN, got {} fields",
                    at(),
                    fields.len()
                ));
            };
            let roles = Roles::parse(roles).map_err(|e| format!("{}: {e}", at()))?;
            let mut bytes = [0_u8; 32];
            hex::decode_to_slice(digest, &mut bytes)
                .map_err(|_| format!("{}: {digest:?} is not a SHA-256 in hex (64 characters)", at()))?;
            if !names.insert(name.to_owned()) {
                return Err(format!("{}: principal {name:?} is listed twice", at()));
            }
            let principal = Principal {
                name: name.to_owned(),
                roles,
            };
            if by_digest.insert(bytes, principal).is_some() {
                return Err(format!(
                    "{}: this token digest is already listed for another principal",
                    at()
                ));
            }
        }
        Ok(Self { by_digest })
    }

    pub fn read(path: &Path) -> Result<Self, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read --auth-tokens {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    fn principal(&self, token: &str) -> Option<&Principal> {
        self.by_digest.get(&<[u8; 32]>::from(Sha256::digest(token.as_bytes())))
    }
}

/// What a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, token or not (probes).
    Open,
    /// A principal holding the role.
    Needs(Role),
    /// Not listed: nobody.
    Unlisted,
}

/// A server's map from gRPC path (`/package.Service/Method`) to what it needs.
pub type Policy = fn(&str) -> Access;

/// Health and reflection are open on every server.
fn always_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.v1.ServerReflection/")
        || path.starts_with("/grpc.reflection.v1alpha.ServerReflection/")
}

/// The layer: checks every call against `policy` when a token table is configured, and lets
/// everything through when it is not.
#[derive(Clone)]
pub struct AuthLayer {
    tokens: Option<Arc<Reloading<TokenTable>>>,
    policy: Policy,
}

impl AuthLayer {
    /// No authentication: every call passes.
    pub fn disabled(policy: Policy) -> Self {
        Self { tokens: None, policy }
    }

    /// Reads `path` now (an error is a configuration error) and again whenever it changes.
    pub fn from_file(
        path: PathBuf,
        policy: Policy,
        reload_every: Duration,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        let tokens = Reloading::fail_closed(
            "auth tokens",
            vec![path.clone()],
            move || TokenTable::read(&path),
            TokenTable::default,
        )?;
        tokens.watch(reload_every, stop);
        Ok(Self {
            tokens: Some(tokens),
            policy,
        })
    }

    /// Whether calls need a token (`--auth-tokens` is set).
    pub fn authenticates(&self) -> bool {
        self.tokens.is_some()
    }

    /// The principal a bearer token stands for, as this server's token file says now: `None`
    /// without `--auth-tokens` (everyone may do everything), an error for an unknown token.
    /// For servers that take tokens other than in gRPC metadata (the console's sign-in).
    pub fn principal(&self, token: &str) -> Result<Option<Principal>, &'static str> {
        let Some(tokens) = &self.tokens else { return Ok(None) };
        tokens
            .current()
            .principal(token.trim())
            .cloned()
            .map(Some)
            .ok_or("the token is not known to this server (revoked, or for another one)")
    }

    /// Decides a call: the principal to pass on, or the status to answer with.
    fn decide(&self, path: &str, headers: &http::HeaderMap) -> Result<Option<Principal>, Status> {
        let Some(tokens) = &self.tokens else { return Ok(None) };
        let access = if always_open(path) {
            Access::Open
        } else {
            (self.policy)(path)
        };
        if access == Access::Open {
            return Ok(None);
        }
        let token = match headers.get(http::header::AUTHORIZATION).map(|v| v.to_str()) {
            None => {
                return Err(Status::unauthenticated(
                    "this call needs a token: send `authorization: Bearer TOKEN` (kappa: --token-file or KAPPA_TOKEN)",
                ));
            }
            Some(Ok(value)) => value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(str::trim)
                .ok_or_else(|| Status::unauthenticated("the authorization header is not `Bearer TOKEN`"))?,
            Some(Err(_)) => return Err(Status::unauthenticated("the authorization header is not text")),
        };
        let table = tokens.current();
        let Some(principal) = table.principal(token) else {
            return Err(Status::unauthenticated(
                "the token is not known to this server (revoked, or for another one)",
            ));
        };
        match access {
            Access::Needs(role) if principal.roles.grants(role) => Ok(Some(principal.clone())),
            Access::Needs(role) => Err(Status::permission_denied(format!(
                "{} holds roles [{}]; {path} needs the {} role",
                principal.name,
                principal.roles,
                role.name()
            ))),
            Access::Unlisted | Access::Open => Err(Status::permission_denied(format!(
                "{path} is not granted to any role on this server"
            ))),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authorized<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorized {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B, RB> Service<http::Request<B>> for Authorized<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>> + Clone,
    RB: Default,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    // The call itself, or the refusal: no allocation per call.
    type Future = Either<S::Future, Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        match self.layer.decide(request.uri().path(), request.headers()) {
            Ok(principal) => {
                if let Some(principal) = principal {
                    tracing::Span::current().record("enduser.id", principal.name.as_str());
                    request.extensions_mut().insert(principal);
                }
                Either::Left(crate::layer::take_ready(&mut self.inner).call(request))
            }
            Err(status) => {
                tracing::info!(
                    path = request.uri().path(),
                    code = ?status.code(),
                    reason = status.message(),
                    "refused a call"
                );
                Either::Right(ready(Ok(status.into_http::<RB>())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(path: &str) -> Access {
        match path {
            "/kappa.registry.v1.Registry/GetModel" => Access::Needs(Role::Read),
            "/kappa.registry.v1.Registry/Publish" => Access::Needs(Role::Write),
            _ => Access::Unlisted,
        }
    }

    fn layer(text: &str) -> AuthLayer {
        AuthLayer {
            tokens: Some(
                Reloading::new("tokens", vec![], {
                    let text = text.to_owned();
                    move || TokenTable::parse(&text, "test")
                })
                .unwrap(),
            ),
            policy,
        }
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    }

    #[test]
    fn tokens_map_to_principals_and_roles_decide() {
        let text = format!(
            "# who may do what\nreader read {}\nops admin {}  # everything\n",
            token_digest("r-token"),
            token_digest("a-token")
        );
        let auth = layer(&text);
        let get = "/kappa.registry.v1.Registry/GetModel";
        let publish = "/kappa.registry.v1.Registry/Publish";
        let reader = auth.decide(get, &bearer("r-token")).unwrap().unwrap();
        assert_eq!(reader.name, "reader");
        let denied = auth.decide(publish, &bearer("r-token")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("write"), "{}", denied.message());
        assert_eq!(auth.decide(publish, &bearer("a-token")).unwrap().unwrap().name, "ops");
        for headers in [http::HeaderMap::new(), bearer("wrong"), {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, "Basic abc".parse().unwrap());
            h
        }] {
            assert_eq!(
                auth.decide(get, &headers).unwrap_err().code(),
                tonic::Code::Unauthenticated
            );
        }
        assert_eq!(
            auth.decide("/kappa.registry.v1.Registry/Unheard", &bearer("a-token"))
                .unwrap_err()
                .code(),
            tonic::Code::PermissionDenied,
            "deny by default, even for admin"
        );
        assert!(matches!(
            auth.decide("/grpc.health.v1.Health/Check", &http::HeaderMap::new()),
            Ok(None)
        ));
        let open = AuthLayer::disabled(policy);
        assert!(matches!(open.decide(publish, &http::HeaderMap::new()), Ok(None)));
    }

    #[test]
    fn a_bad_token_file_is_refused_with_its_line() {
        let digest = token_digest("t");
        for (text, needle) in [
            ("a read\n".to_owned(), "test:1: expected NAME ROLES"),
            (format!("a reed {digest}"), "unknown role"),
            ("a read abc".to_owned(), "not a SHA-256"),
            (
                format!("a read {digest}\na write {}", token_digest("u")),
                "listed twice",
            ),
            (format!("a read {digest}\nb write {digest}"), "already listed"),
        ] {
            let error = TokenTable::parse(&text, "test").unwrap_err();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
        assert_eq!(Roles::parse("read,infer").unwrap().to_string(), "read,infer");
        assert!(Roles::parse("admin").unwrap().grants(Role::Write));
        assert!(!Roles::parse("read").unwrap().grants(Role::Infer));
    }
}
