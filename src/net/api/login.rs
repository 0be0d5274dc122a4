//! The desk page's logins: an agent's browser exchanges its desk token once
//! (`POST /v1/desk/login`) for a short-lived session cookie (HttpOnly, SameSite=Strict) and a
//! CSRF token the page keeps in memory and sends on every state-changing request. A login
//! carries the desk role only, whatever else the browser presents.
//!
//! No I/O and no clock: every method takes `now_ms`. Cookie values are kept as SHA-256 hashes
//! (a memory read does not hand out a usable cookie) and compared by hash lookup; CSRF tokens
//! are compared in constant time. Neither is ever logged or put in an error.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The session cookie's name.
pub(super) const COOKIE: &str = "tonewall_desk";

/// The header the page sends its CSRF token in.
pub(super) const CSRF_HEADER: &str = "x-tonewall-csrf";

/// How long logins last and how many may be open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LoginConfig {
    /// A login ends this long after it opened (an agent's shift), however busy.
    pub(super) ttl_ms: u64,
    /// A login unused this long ends (the page's event stream and its fetches use it).
    pub(super) idle_ms: u64,
    /// Open logins at most; opening one more ends the least recently used.
    pub(super) max: usize,
}

impl Default for LoginConfig {
    fn default() -> LoginConfig {
        LoginConfig {
            ttl_ms: 10 * 3_600_000,
            idle_ms: 30 * 60_000,
            max: 4_096,
        }
    }
}

/// An open login: whose, its CSRF token, when it opened and was last used.
struct Login {
    name: Arc<str>,
    csrf: Zeroizing<String>,
    opened_ms: u64,
    used_ms: u64,
}

/// What a presented cookie stands for.
#[derive(Clone)]
pub(super) struct LoginView {
    /// The desk token's name: the agent's identity.
    pub(super) name: Arc<str>,
    pub(super) csrf: Zeroizing<String>,
}

/// A login just opened: the cookie's value and the CSRF token, for the browser only.
pub(super) struct Opened {
    pub(super) cookie: Zeroizing<String>,
    pub(super) csrf: Zeroizing<String>,
    pub(super) max_age_s: u64,
}

/// The open logins. See the module documentation.
pub(super) struct Logins {
    cfg: LoginConfig,
    by_hash: HashMap<[u8; 32], Login>,
}

impl std::fmt::Debug for Logins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logins")
            .field("open", &self.by_hash.len())
            .finish_non_exhaustive()
    }
}

fn hash(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

fn random_hex() -> Zeroizing<String> {
    let bytes = Zeroizing::new(rand::random::<[u8; 32]>());
    let mut s = Zeroizing::new(String::with_capacity(64));
    for b in bytes.iter() {
        s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    s
}

impl Logins {
    pub(super) fn new(cfg: LoginConfig) -> Logins {
        Logins {
            cfg,
            by_hash: HashMap::new(),
        }
    }

    /// Opens a login for the desk token named `name`.
    pub(super) fn open(&mut self, name: &str, now_ms: u64) -> Opened {
        self.sweep(now_ms);
        while self.by_hash.len() >= self.cfg.max.max(1) {
            let oldest = self
                .by_hash
                .iter()
                .min_by_key(|(_, l)| l.used_ms)
                .map(|(h, _)| *h);
            match oldest {
                Some(h) => self.by_hash.remove(&h),
                None => break,
            };
        }
        let cookie = random_hex();
        let csrf = random_hex();
        self.by_hash.insert(
            hash(&cookie),
            Login {
                name: name.into(),
                csrf: csrf.clone(),
                opened_ms: now_ms,
                used_ms: now_ms,
            },
        );
        Opened {
            cookie,
            csrf,
            max_age_s: self.cfg.ttl_ms / 1_000,
        }
    }

    /// The login the cookie stands for, if open; marks it used.
    pub(super) fn check(&mut self, cookie: &str, now_ms: u64) -> Option<LoginView> {
        let h = hash(cookie);
        let cfg = self.cfg;
        let login = self.by_hash.get_mut(&h)?;
        if Self::over(&cfg, login, now_ms) {
            self.by_hash.remove(&h);
            return None;
        }
        login.used_ms = now_ms;
        Some(LoginView {
            name: login.name.clone(),
            csrf: login.csrf.clone(),
        })
    }

    /// Ends the login the cookie stands for.
    pub(super) fn close(&mut self, cookie: &str) {
        self.by_hash.remove(&hash(cookie));
    }

    /// Ends every login past its lifetime or idle too long.
    pub(super) fn sweep(&mut self, now_ms: u64) {
        let cfg = self.cfg;
        self.by_hash.retain(|_, l| !Self::over(&cfg, l, now_ms));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_hash.len()
    }

    fn over(cfg: &LoginConfig, l: &Login, now_ms: u64) -> bool {
        now_ms >= l.opened_ms.saturating_add(cfg.ttl_ms)
            || now_ms >= l.used_ms.saturating_add(cfg.idle_ms)
    }
}

/// Whether `presented` is the login's CSRF token (constant time).
pub(super) fn csrf_matches(login: &LoginView, presented: &str) -> bool {
    let want = login.csrf.as_bytes();
    want.len() == presented.len() && bool::from(want.ct_eq(presented.as_bytes()))
}

/// The value of the cookie named [`COOKIE`] in a `Cookie` header, if any.
pub(super) fn cookie_value(header: &str) -> Option<&str> {
    header
        .split(';')
        .map(str::trim)
        .find_map(|kv| kv.strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_000_000;

    fn small() -> Logins {
        Logins::new(LoginConfig {
            ttl_ms: 10_000,
            idle_ms: 4_000,
            max: 2,
        })
    }

    #[test]
    fn a_login_opens_checks_and_closes() {
        let mut l = small();
        let o = l.open("7001", T0);
        assert_eq!(o.cookie.len(), 64);
        assert_ne!(o.cookie.as_str(), o.csrf.as_str());
        let v = l.check(&o.cookie, T0 + 1).unwrap();
        assert_eq!(&*v.name, "7001");
        assert!(csrf_matches(&v, &o.csrf));
        assert!(!csrf_matches(&v, ""));
        assert!(!csrf_matches(&v, &o.cookie));
        assert!(l.check("not-a-cookie", T0).is_none());
        l.close(&o.cookie);
        assert!(l.check(&o.cookie, T0 + 2).is_none());
    }

    #[test]
    fn logins_end_when_idle_or_old_and_the_oldest_makes_room() {
        let mut l = small();
        let a = l.open("a", T0);
        // Used every 3 s: never idle, but over at 10 s whatever happens.
        for t in [3_000, 6_000, 9_000] {
            assert!(l.check(&a.cookie, T0 + t).is_some());
        }
        assert!(l.check(&a.cookie, T0 + 10_000).is_none());
        let b = l.open("b", T0 + 10_000);
        assert!(l.check(&b.cookie, T0 + 14_000).is_none(), "idle 4 s");
        let c = l.open("c", T0 + 20_000);
        let d = l.open("d", T0 + 20_001);
        let e = l.open("e", T0 + 20_002);
        assert_eq!(l.len(), 2);
        assert!(
            l.check(&c.cookie, T0 + 20_003).is_none(),
            "least recently used goes"
        );
        assert!(l.check(&d.cookie, T0 + 20_003).is_some());
        assert!(l.check(&e.cookie, T0 + 20_003).is_some());
        l.sweep(T0 + 30_000);
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn the_cookie_is_found_among_others_and_never_shown() {
        assert_eq!(cookie_value("a=1; tonewall_desk=abc; b=2"), Some("abc"));
        assert_eq!(cookie_value("tonewall_desk="), None);
        assert_eq!(cookie_value("tonewall_desk_other=x"), None);
        let mut l = small();
        let o = l.open("7001", T0);
        let dbg = format!("{l:?}");
        assert!(!dbg.contains(o.cookie.as_str()), "{dbg}");
        assert!(!dbg.contains(o.csrf.as_str()), "{dbg}");
    }
}
