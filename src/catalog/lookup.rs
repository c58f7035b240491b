//! How a lookup field's value is normalized before it is blind-indexed, so that a lookup finds the
//! subject whatever the caller's spelling: emails ignore case and surrounding space, phone numbers
//! keep only a leading `+` and the digits, every other value ignores surrounding space.

use zeroize::Zeroizing;

use super::{FieldSpec, MaskRule};

impl FieldSpec {
    /// The form of `value` that the blind index hashes.
    pub fn normalize_for_lookup(&self, value: &str) -> Zeroizing<String> {
        let trimmed = value.trim();
        Zeroizing::new(match self.mask {
            MaskRule::Email => trimmed.to_lowercase(),
            MaskRule::Phone => trimmed
                .char_indices()
                .filter(|&(i, c)| c.is_ascii_digit() || (i == 0 && c == '+'))
                .map(|(_, c)| c)
                .collect(),
            MaskRule::Last4 | MaskRule::Redact => trimmed.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::KeyClass;

    fn spec(mask: MaskRule) -> FieldSpec {
        FieldSpec {
            category: "contact".into(),
            mask,
            retention_ms: None,
            key_class: KeyClass::default_class(),
            lookup: true,
            views: Default::default(),
            policy_attribute: None,
        }
    }

    #[test]
    fn spellings_of_one_value_normalize_alike() {
        let email = spec(MaskRule::Email);
        assert_eq!(
            *email.normalize_for_lookup(" Ada@Example.COM "),
            *email.normalize_for_lookup("ada@example.com")
        );
        let phone = spec(MaskRule::Phone);
        assert_eq!(
            *phone.normalize_for_lookup("+1 (555) 123-4567"),
            "+15551234567"
        );
        assert_eq!(*spec(MaskRule::Redact).normalize_for_lookup(" Ada "), "Ada");
    }
}
