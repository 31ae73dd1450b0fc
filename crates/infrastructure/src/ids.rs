//! [`RandomIdGenerator`]: UUID v4 ids and 256-bit random tokens from the
//! operating system's generator.

use hodei_application::id_generator::IdGenerator;
use hodei_application::orchestrator::OneTimeToken;
use hodei_domain::{JobId, WorkerId};

/// Bytes of randomness in a one-time token (shown as twice as many hex
/// digits).
pub const TOKEN_BYTES: usize = 32;

/// Makes ids from random UUIDs (v4) and tokens from [`TOKEN_BYTES`] random
/// bytes in lower-case hex.
///
/// # Panics
/// Every method panics if the operating system's random number generator
/// fails, as `uuid` does: no id or secret can be made safely then.
#[derive(Debug, Clone, Copy, Default)]
pub struct RandomIdGenerator;

impl RandomIdGenerator {
    /// The generator.
    pub fn new() -> Self {
        RandomIdGenerator
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl IdGenerator for RandomIdGenerator {
    fn new_job_id(&self) -> JobId {
        JobId::new(uuid()).expect("a UUID is a valid job id")
    }

    fn new_worker_id(&self) -> WorkerId {
        WorkerId::new(uuid()).expect("a UUID is a valid worker id")
    }

    fn new_token(&self) -> OneTimeToken {
        let mut bytes = [0u8; TOKEN_BYTES];
        if let Err(e) = getrandom::fill(&mut bytes) {
            panic!("the operating system's random number generator failed: {e}");
        }
        let mut hex = String::with_capacity(TOKEN_BYTES * 2);
        for b in bytes {
            hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            hex.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
        }
        OneTimeToken::new(hex)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_uuids_and_unique() {
        let ids = RandomIdGenerator::new();
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let id = ids.new_worker_id();
            assert!(uuid::Uuid::parse_str(id.as_str()).is_ok(), "{id}");
            assert!(seen.insert(id.into_string()));
        }
        assert_eq!(ids.new_job_id().as_str().len(), 36);
    }

    #[test]
    fn tokens_are_64_hex_digits_and_unique() {
        let ids = RandomIdGenerator::new();
        let a = ids.new_token();
        let b = ids.new_token();
        assert_eq!(a.expose().len(), 64);
        assert!(
            a.expose()
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "****");
    }
}
