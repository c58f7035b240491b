//! The blind index for lookups by value: `tag = HMAC-SHA256(lookup key, "privault/lookup/v1" ‖
//! field ‖ normalized value)`, so that a service can find a subject by e.g. email while no file on
//! disk holds the value or anything testable against it without the key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Key256;
use super::aead::aad;
use crate::domain::FieldName;

const LOOKUP_LABEL: &str = "privault/lookup/v1";

/// Length of a lookup tag.
pub const TAG_LEN: usize = 32;

/// The keyed hash behind the blind index. A separate key from the subject index key, so that the
/// two indexes cannot be joined.
pub struct LookupKey {
    mac: Hmac<Sha256>,
}

impl LookupKey {
    /// A blind index keyed by `key`.
    pub fn new(key: &Key256) -> Self {
        Self {
            mac: <Hmac<Sha256> as Mac>::new_from_slice(key.expose())
                .unwrap_or_else(|_| super::root::unreachable_hmac()),
        }
    }

    /// The tag of `normalized` as a value of `field`.
    pub fn tag(&self, field: &FieldName, normalized: &str) -> [u8; TAG_LEN] {
        let mut mac = self.mac.clone();
        // Length-prefixed parts: ("ab", "c") and ("a", "bc") give different tags.
        mac.update(&aad(
            LOOKUP_LABEL,
            &[field.as_str().as_bytes(), normalized.as_bytes()],
        ));
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_binds_key_field_and_value() {
        let a = LookupKey::new(&Key256::from_slice(&[1; 32]).unwrap());
        let b = LookupKey::new(&Key256::from_slice(&[2; 32]).unwrap());
        let email = FieldName::new("email").unwrap();
        let phone = FieldName::new("phone").unwrap();
        assert_eq!(a.tag(&email, "x@y"), a.tag(&email, "x@y"));
        assert_ne!(a.tag(&email, "x@y"), b.tag(&email, "x@y"));
        assert_ne!(a.tag(&email, "x@y"), a.tag(&phone, "x@y"));
        assert_ne!(a.tag(&email, "x@y"), a.tag(&email, "x@z"));
    }
}
