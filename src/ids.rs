//! Identifiers shared by the layers: defined once, below all of them.

use std::fmt;
use std::str::FromStr;

/// One call through tonewall, from the trunk's INVITE to the last BYE: the B2BUA's key, the
/// media relay's label, the control API's `call_id` and what a payment session is bound to.
/// Drawn from the B2BUA's CSPRNG, so it is no handle a stranger could guess.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A `call_id` that is no decimal number names no call tonewall could have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a call id is a decimal number")]
pub struct NotACallId;

impl FromStr for CallId {
    type Err = NotACallId;

    fn from_str(s: &str) -> Result<CallId, NotACallId> {
        // u64's parser takes a leading '+'; one call must have one spelling.
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NotACallId);
        }
        s.parse().map(CallId).map_err(|_| NotACallId)
    }
}

impl serde::Serialize for CallId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The API has always shown call ids as strings; JSON numbers lose precision past 2^53.
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling_per_call() {
        assert_eq!("41".parse::<CallId>(), Ok(CallId(41)));
        assert_eq!(CallId(41).to_string(), "41");
        for bad in ["", "+41", "c9", "4 1", "-1", "18446744073709551616"] {
            assert_eq!(bad.parse::<CallId>(), Err(NotACallId), "{bad}");
        }
    }
}
