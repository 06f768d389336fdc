//! Browser sessions. A browser never holds a bearer token after signing in: it gets an opaque
//! session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS), and the console keeps the
//! token server-side. The principal is looked up again on every request, so a token revoked in
//! the token file signs its sessions out at once. Each session has a CSRF secret that every
//! state-changing request must send back in a header (a form on another site cannot).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kappa_runtime::auth::{AuthLayer, Principal, Role, Roles};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

pub const COOKIE: &str = "kappa_console";
pub const CSRF_HEADER: &str = "x-kappa-csrf";

#[derive(Debug)]
struct Session {
    /// The token the user signed in with (forwarded for their writes).
    token: Option<String>,
    csrf: String,
    last_used: Instant,
}

/// Who is calling, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The session's id as its cookie carries it.
    pub id: String,
    pub csrf: String,
    /// `None` while not signed in (or signed out by a revoked token).
    pub principal: Option<Principal>,
    pub token: Option<String>,
}

impl Caller {
    pub fn may(&self, role: Role) -> bool {
        self.principal.as_ref().is_some_and(|p| p.roles.grants(role))
    }
}

#[derive(Debug)]
pub struct Sessions {
    by_id: Mutex<HashMap<[u8; 32], Session>>,
    /// When idle sessions were last swept out: at most once a minute, not on every request.
    swept: Mutex<Instant>,
    max: usize,
    idle: Duration,
}

/// How often idle sessions are swept out (a lookup checks idleness itself meanwhile).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

fn random_hex() -> String {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Sessions are found by a hash of their id, so a lookup's timing says nothing of the ids.
fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new(max: usize, idle: Duration) -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
            swept: Mutex::new(Instant::now()),
            max,
            idle,
        }
    }

    /// The caller behind `id` (a cookie's value), or a new anonymous session when it names none
    /// (the second value is then true: set its cookie).
    pub fn caller(&self, id: Option<&str>, auth: &AuthLayer) -> (Caller, bool) {
        let now = Instant::now();
        let mut sessions = self.by_id.lock().expect("sessions lock");
        {
            let mut swept = self.swept.lock().expect("sweep lock");
            if now.duration_since(*swept) >= SWEEP_EVERY {
                sessions.retain(|_, s| now.duration_since(s.last_used) < self.idle);
                *swept = now;
            }
        }
        let existing = id
            .and_then(|id| sessions.get_mut(&key(id)).map(|s| (id.to_owned(), s)))
            .filter(|(_, s)| now.duration_since(s.last_used) < self.idle);
        let (id, session, new) = match existing {
            Some((id, session)) => {
                session.last_used = now;
                (id, session, false)
            }
            None => {
                if sessions.len() >= self.max
                    && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last_used).map(|(k, _)| *k)
                {
                    sessions.remove(&oldest);
                }
                let id = random_hex();
                let session = sessions.entry(key(&id)).or_insert(Session {
                    token: None,
                    csrf: random_hex(),
                    last_used: now,
                });
                (id, session, true)
            }
        };
        let principal = principal(auth, session.token.as_deref());
        let caller = Caller {
            id,
            csrf: session.csrf.clone(),
            principal,
            token: session.token.clone(),
        };
        (caller, new)
    }

    /// The principal of the session `id` now, without making one when it is gone (an open
    /// page's event stream checks this each second; a lost session ends it).
    pub fn principal_of(&self, id: &str, auth: &AuthLayer) -> Option<Principal> {
        let token = {
            let sessions = self.by_id.lock().expect("sessions lock");
            let session = sessions.get(&key(id))?;
            if session.last_used.elapsed() >= self.idle {
                return None;
            }
            session.token.clone()
        };
        principal(auth, token.as_deref())
    }

    /// Signs the session in with `token`, checked against the token file: the principal, or why not.
    pub fn sign_in(&self, id: &str, token: &str, auth: &AuthLayer) -> Result<Principal, &'static str> {
        let principal = auth
            .principal(token)?
            .ok_or("this console does not use tokens (no --auth-tokens): there is nothing to sign in to")?;
        let mut sessions = self.by_id.lock().expect("sessions lock");
        let session = sessions
            .get_mut(&key(id))
            .ok_or("the session expired; reload the page")?;
        session.token = Some(token.trim().to_owned());
        // A new secret after signing in: one learnt before does not carry over.
        session.csrf = random_hex();
        Ok(principal)
    }

    pub fn sign_out(&self, id: &str) {
        self.by_id.lock().expect("sessions lock").remove(&key(id));
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().expect("sessions lock").len()
    }
}

/// Who a session with `token` is now: without a token file everyone may do everything, as on
/// every Kappa port; with one, the token's principal if the file still lists it.
fn principal(auth: &AuthLayer, token: Option<&str>) -> Option<Principal> {
    match (auth.authenticates(), token) {
        (false, _) => Some(Principal {
            name: String::new(),
            roles: Roles::of(&[Role::Admin]),
        }),
        (true, Some(token)) => auth.principal(token).ok().flatten(),
        (true, None) => None,
    }
}

/// Whether two secrets are equal, in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0_u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_cookie_gets_a_fresh_session_and_a_known_one_keeps_it() {
        let sessions = Sessions::new(10, Duration::from_secs(60));
        let auth = AuthLayer::disabled(|_| kappa_runtime::auth::Access::Unlisted);
        let (first, new) = sessions.caller(Some("forged"), &auth);
        assert!(new);
        assert_ne!(first.id, "forged", "a session id is never the client's choice");
        let (again, new) = sessions.caller(Some(&first.id), &auth);
        assert!(!new);
        assert_eq!(again.csrf, first.csrf);
        assert!(again.may(Role::Write), "without tokens everyone may write");
    }

    #[test]
    fn a_stream_of_a_lost_session_learns_it_without_a_new_session_being_made() {
        let sessions = Sessions::new(10, Duration::from_secs(60));
        let auth = AuthLayer::disabled(|_| kappa_runtime::auth::Access::Unlisted);
        let (caller, _) = sessions.caller(None, &auth);
        assert!(sessions.principal_of(&caller.id, &auth).is_some());
        sessions.sign_out(&caller.id);
        assert!(sessions.principal_of(&caller.id, &auth).is_none());
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn sessions_are_bounded() {
        let sessions = Sessions::new(3, Duration::from_secs(60));
        let auth = AuthLayer::disabled(|_| kappa_runtime::auth::Access::Unlisted);
        for _ in 0..10 {
            sessions.caller(None, &auth);
        }
        assert_eq!(sessions.len(), 3);
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
