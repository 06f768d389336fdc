//! Browser sessions. A browser never holds a bearer token after signing in: it gets an opaque
//! session cookie (HttpOnly, SameSite=Strict, Secure over HTTPS), and the console keeps the
//! token server-side. The principal is looked up again on every request, so a token revoked in
//! the token file signs its sessions out at once. Each session has a CSRF secret that every
//! state-changing request must send back in a header (a form on another site cannot).

use std::{
    collections::{HashMap, VecDeque},
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
    /// The session's id as its cookie carries it; `None` for a request without a live session
    /// (a script, or a page whose session ended), which is answered without one being made.
    pub id: Option<String>,
    /// The session's CSRF secret; `None` without a session, and then no action is taken.
    pub csrf: Option<String>,
    /// `None` while not signed in (or signed out by a revoked token).
    pub principal: Option<Principal>,
    pub token: Option<String>,
}

impl Caller {
    pub fn may(&self, role: Role) -> bool {
        self.principal.as_ref().is_some_and(|p| p.roles.grants(role))
    }
}

/// Why no session could be opened.
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    pub max: usize,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<[u8; 32], Session>,
    /// Sessions not signed in, oldest first: the ones given up to make room. Signed-in
    /// sessions are never evicted (only token holders make them, and they idle out), so a
    /// client opening sessions in a loop cannot sign anyone out. Entries of sessions that have
    /// signed in or gone since are skipped when met.
    anonymous: VecDeque<[u8; 32]>,
}

#[derive(Debug)]
pub struct Sessions {
    table: Mutex<Table>,
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

impl Table {
    /// Gives up the oldest session not signed in; false when every session is signed in.
    fn evict_an_anonymous_one(&mut self) -> bool {
        while let Some(oldest) = self.anonymous.pop_front() {
            if self.by_id.get(&oldest).is_some_and(|s| s.token.is_none()) {
                self.by_id.remove(&oldest);
                return true;
            }
        }
        false
    }
}

impl Sessions {
    pub fn new(max: usize, idle: Duration) -> Self {
        Self {
            table: Mutex::new(Table::default()),
            swept: Mutex::new(Instant::now()),
            max,
            idle,
        }
    }

    /// The live session `id` (a cookie's value) names, marked as used.
    fn live<'a>(&self, table: &'a mut Table, id: Option<&str>, now: Instant) -> Option<&'a mut Session> {
        {
            let mut swept = self.swept.lock().expect("sweep lock");
            if now.duration_since(*swept) >= SWEEP_EVERY {
                table.by_id.retain(|_, s| now.duration_since(s.last_used) < self.idle);
                let by_id = &table.by_id;
                table
                    .anonymous
                    .retain(|k| by_id.get(k).is_some_and(|s| s.token.is_none()));
                *swept = now;
            }
        }
        let session = table
            .by_id
            .get_mut(&key(id?))
            .filter(|s| now.duration_since(s.last_used) < self.idle)?;
        session.last_used = now;
        Some(session)
    }

    /// The caller behind `id` (a cookie's value). Nothing is stored for a request without a
    /// live session: only the page's own [`Sessions::open`] makes sessions.
    pub fn caller(&self, id: Option<&str>, auth: &AuthLayer) -> Caller {
        let mut table = self.table.lock().expect("sessions lock");
        match self.live(&mut table, id, Instant::now()) {
            Some(session) => Caller {
                id: id.map(str::to_owned),
                csrf: Some(session.csrf.clone()),
                principal: principal(auth, session.token.as_deref()),
                token: session.token.clone(),
            },
            None => Caller {
                id: None,
                csrf: None,
                principal: principal(auth, None),
                token: None,
            },
        }
    }

    /// The caller behind `id`, or a new anonymous session when it names none (the second value
    /// is then true: set its cookie). At `max` sessions the oldest one not signed in gives way;
    /// when all are signed in, none is made.
    pub fn open(&self, id: Option<&str>, auth: &AuthLayer) -> Result<(Caller, bool), Full> {
        let now = Instant::now();
        let mut table = self.table.lock().expect("sessions lock");
        if self.live(&mut table, id, now).is_some() {
            drop(table);
            return Ok((self.caller(id, auth), false));
        }
        if table.by_id.len() >= self.max && !table.evict_an_anonymous_one() {
            return Err(Full { max: self.max });
        }
        let id = random_hex();
        let csrf = random_hex();
        let k = key(&id);
        table.by_id.insert(
            k,
            Session {
                token: None,
                csrf: csrf.clone(),
                last_used: now,
            },
        );
        table.anonymous.push_back(k);
        let caller = Caller {
            id: Some(id),
            csrf: Some(csrf),
            principal: principal(auth, None),
            token: None,
        };
        Ok((caller, true))
    }

    /// The principal of the session `id` now, without making one when it is gone (an open
    /// page's event stream checks this each second; a lost session ends it).
    pub fn principal_of(&self, id: &str, auth: &AuthLayer) -> Option<Principal> {
        let token = {
            let table = self.table.lock().expect("sessions lock");
            let session = table.by_id.get(&key(id))?;
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
        let mut table = self.table.lock().expect("sessions lock");
        let session = table
            .by_id
            .get_mut(&key(id))
            .ok_or("the session expired; reload the page")?;
        session.token = Some(token.trim().to_owned());
        // A new secret after signing in: one learnt before does not carry over.
        session.csrf = random_hex();
        Ok(principal)
    }

    pub fn sign_out(&self, id: &str) {
        self.table.lock().expect("sessions lock").by_id.remove(&key(id));
    }

    pub fn len(&self) -> usize {
        self.table.lock().expect("sessions lock").by_id.len()
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

    fn no_tokens() -> AuthLayer {
        AuthLayer::disabled(|_| kappa_runtime::auth::Access::Unlisted)
    }

    #[test]
    fn an_unknown_cookie_opens_a_fresh_session_and_a_known_one_keeps_it() {
        let (sessions, auth) = (Sessions::new(10, Duration::from_secs(60)), no_tokens());
        let (first, new) = sessions.open(Some("forged"), &auth).unwrap();
        assert!(new);
        let id = first.id.clone().unwrap();
        assert_ne!(id, "forged", "a session id is never the client's choice");
        let (again, new) = sessions.open(Some(&id), &auth).unwrap();
        assert!(!new);
        assert_eq!(again.csrf, first.csrf);
        assert!(again.may(Role::Write), "without tokens everyone may write");
        assert_eq!(sessions.caller(Some(&id), &auth).csrf, first.csrf);
    }

    #[test]
    fn requests_without_a_session_are_answered_without_one_being_made() {
        let (sessions, auth) = (Sessions::new(10, Duration::from_secs(60)), no_tokens());
        for cookie in [None, Some("forged")] {
            let caller = sessions.caller(cookie, &auth);
            assert_eq!((&caller.id, &caller.csrf), (&None, &None), "no session, so no action");
            assert!(caller.may(Role::Read), "without tokens everyone reads");
        }
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn a_stream_of_a_lost_session_learns_it_without_a_new_session_being_made() {
        let (sessions, auth) = (Sessions::new(10, Duration::from_secs(60)), no_tokens());
        let (caller, _) = sessions.open(None, &auth).unwrap();
        let id = caller.id.unwrap();
        assert!(sessions.principal_of(&id, &auth).is_some());
        sessions.sign_out(&id);
        assert!(sessions.principal_of(&id, &auth).is_none());
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn sessions_are_bounded_by_giving_up_the_oldest_not_signed_in() {
        let (sessions, auth) = (Sessions::new(3, Duration::from_secs(60)), no_tokens());
        let (oldest, _) = sessions.open(None, &auth).unwrap();
        for _ in 0..10 {
            sessions.open(None, &auth).unwrap();
        }
        assert_eq!(sessions.len(), 3);
        assert_eq!(
            sessions.caller(oldest.id.as_deref(), &auth).id,
            None,
            "the oldest gave way"
        );
    }

    #[tokio::test]
    async fn signed_in_sessions_are_never_given_up_to_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let (tokens, token) = (dir.path().join("tokens"), "a-reader's-token");
        let digest = kappa_runtime::auth::token_digest(token);
        std::fs::write(&tokens, format!("reader read {digest}\n")).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let auth = AuthLayer::from_file(
            tokens,
            |_| kappa_runtime::auth::Access::Unlisted,
            Duration::from_secs(3600),
            stop.clone(),
        )
        .unwrap();
        let sessions = Sessions::new(2, Duration::from_secs(60));
        let signed_in: Vec<String> = (0..2)
            .map(|_| {
                let id = sessions.open(None, &auth).unwrap().0.id.unwrap();
                sessions.sign_in(&id, token, &auth).unwrap();
                id
            })
            .collect();
        // A client opening sessions in a loop is refused; no one is signed out.
        for _ in 0..5 {
            assert_eq!(sessions.open(None, &auth).unwrap_err(), Full { max: 2 });
        }
        for id in &signed_in {
            assert!(sessions.caller(Some(id), &auth).may(Role::Read));
        }
        stop.cancel();
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
