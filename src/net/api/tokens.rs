//! The API's bearer tokens: which integration presents a token and in what role. Tokens are
//! kept as SHA-256 hashes and compared in constant time; no error names a token.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do (docs/openapi.yaml, `x-roles` of each operation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agent's desktop: creates sessions and follows, binds, resets and cancels its own;
    /// never sees the retrieval token or the PIN.
    Desk,
    /// The payment integration: unlocks; takes the token and PIN (in its own create's answer
    /// or once per desk session).
    Payment,
    /// Operations: calls, the scrub switch, every session (view, cancel), metrics.
    Admin,
    /// A metrics scraper: `/metrics` only.
    Metrics,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "desk" => Some(Role::Desk),
            "payment" => Some(Role::Payment),
            "admin" => Some(Role::Admin),
            "metrics" => Some(Role::Metrics),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Desk => "desk",
            Role::Payment => "payment",
            Role::Admin => "admin",
            Role::Metrics => "metrics",
        }
    }
}

/// The integrations allowed to call the API: a name (for the audit log and session ownership),
/// a role and a bearer token. Tokens are kept as SHA-256 hashes and compared in constant time.
pub struct ApiTokens {
    entries: Vec<(String, Role, [u8; 32])>,
}

impl std::fmt::Debug for ApiTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<(&str, &str)> = self
            .entries
            .iter()
            .map(|(n, r, _)| (n.as_str(), r.as_str()))
            .collect();
        f.debug_struct("ApiTokens").field("names", &names).finish()
    }
}

/// The token list is malformed. Names the entry (by its name, or its position when it has no
/// name), never shows a token or what stands where the role should be (a token containing `:`
/// would put part of itself there).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenConfigError {
    #[error("API token entry {0} is not `name:token:role` with a non-empty name")]
    BadEntry(usize),
    #[error("API token {0}: the token must be at least 16 characters")]
    ShortToken(String),
    #[error(
        "API token {0} has no role: write it as `name:token:role` (desk, payment, admin or metrics)"
    )]
    NoRole(String),
    #[error("API token {0} has an unknown role: use desk, payment, admin or metrics")]
    UnknownRole(String),
    #[error("API token name {0} is used twice: names must be unique")]
    DuplicateName(String),
    #[error("API token {0} repeats the token of an earlier entry: each entry needs its own")]
    DuplicateToken(String),
    #[error("no API tokens configured (set {0} to comma-separated name:token:role triples)")]
    Empty(String),
}

impl ApiTokens {
    /// Parses comma-separated `name:token:role` triples (the `api.tokens_env` format). The
    /// name is up to the first `:`, the role after the last one.
    pub fn parse(s: &str) -> Result<ApiTokens, TokenConfigError> {
        let mut entries: Vec<(String, Role, [u8; 32])> = Vec::new();
        for (i, item) in s.split(',').map(str::trim).enumerate() {
            if item.is_empty() {
                continue;
            }
            let (name, rest) = item.split_once(':').ok_or(TokenConfigError::BadEntry(i))?;
            let name = name.trim();
            if name.is_empty() || name.chars().any(char::is_control) {
                return Err(TokenConfigError::BadEntry(i));
            }
            let Some((token, role)) = rest.rsplit_once(':') else {
                return Err(TokenConfigError::NoRole(name.to_string()));
            };
            let token = token.trim();
            let role =
                Role::parse(role.trim()).ok_or(TokenConfigError::UnknownRole(name.to_string()))?;
            if token.len() < 16 {
                return Err(TokenConfigError::ShortToken(name.to_string()));
            }
            if entries.iter().any(|(n, _, _)| n == name) {
                return Err(TokenConfigError::DuplicateName(name.to_string()));
            }
            let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            if entries.iter().any(|(_, _, h)| *h == hash) {
                return Err(TokenConfigError::DuplicateToken(name.to_string()));
            }
            entries.push((name.to_string(), role, hash));
        }
        Ok(ApiTokens { entries })
    }

    /// Reads the list from an environment variable; an unset or empty list is an error.
    pub fn from_env(var: &str) -> Result<ApiTokens, TokenConfigError> {
        let raw = crate::process::secret_env(var).unwrap_or_default();
        let tokens = ApiTokens::parse(&raw)?;
        if tokens.entries.is_empty() {
            return Err(TokenConfigError::Empty(var.to_string()));
        }
        Ok(tokens)
    }

    /// The integration a presented token belongs to, and its role. Every entry is compared,
    /// so the time taken does not say which one matched.
    pub fn check(&self, presented: &str) -> Option<(&str, Role)> {
        let h: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (name, role, want) in &self.entries {
            if bool::from(want.ct_eq(&h)) && found.is_none() {
                found = Some((name.as_str(), *role));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_by_name_and_role_and_reject_others() {
        let t = ApiTokens::parse(
            "desk:aaaaaaaaaaaaaaaaaaaa:desk, pay:bbbbbbbbbbbbbbbbbbbb:payment,ops:cccccccccccccccccccc:admin,prom:dd:dddddddddddddddd:metrics",
        )
        .unwrap();
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaaa"), Some(("desk", Role::Desk)));
        assert_eq!(
            t.check("bbbbbbbbbbbbbbbbbbbb"),
            Some(("pay", Role::Payment))
        );
        assert_eq!(t.check("cccccccccccccccccccc"), Some(("ops", Role::Admin)));
        // A token may hold `:`; the role is after the last one.
        assert_eq!(
            t.check("dd:dddddddddddddddd"),
            Some(("prom", Role::Metrics))
        );
        assert_eq!(t.check("aaaaaaaaaaaaaaaaaaa"), None);
        assert_eq!(t.check(""), None);
        assert!(!format!("{t:?}").contains("aaaa"));
    }

    #[test]
    fn token_errors_name_the_entry_never_the_token() {
        let secret = "s3cr3ts3cr3ts3cr3t";
        let cases = [
            (
                format!("desk1:{secret}"),
                TokenConfigError::NoRole("desk1".into()),
            ),
            (
                format!("ok:{secret}x:desk,desk2:{secret}:boss"),
                TokenConfigError::UnknownRole("desk2".into()),
            ),
            (
                "desk3:short:desk".to_string(),
                TokenConfigError::ShortToken("desk3".into()),
            ),
            (format!(":{secret}:desk"), TokenConfigError::BadEntry(0)),
            (secret.to_string(), TokenConfigError::BadEntry(0)),
            (
                format!("a:{secret}:desk,a:{secret}x:admin"),
                TokenConfigError::DuplicateName("a".into()),
            ),
            (
                format!("a:{secret}:desk,b:{secret}:admin"),
                TokenConfigError::DuplicateToken("b".into()),
            ),
        ];
        for (input, want) in cases {
            let e = ApiTokens::parse(&input).unwrap_err();
            assert_eq!(e, want, "{input}");
            let text = e.to_string();
            assert!(!text.contains("s3cr3t"), "{text}");
            assert!(!text.contains("boss"), "{text}");
        }
    }
}
