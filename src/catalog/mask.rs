//! Mask rules for MASKED reads: enough for a support agent to recognise a value, never enough to
//! reconstruct it.

/// How a field's value is masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskRule {
    /// `alice@example.com` → `a***@example.com`.
    Email,
    /// `+15551234567` → `+*********67`: a leading `+` and the last two digits.
    Phone,
    /// `4111111111111111` → `************1111`.
    Last4,
    /// Nothing of the value: `[redacted]`.
    Redact,
}

const REDACTED: &str = "[redacted]";

impl MaskRule {
    /// Parses a catalog `mask` value.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "email" => Some(Self::Email),
            "phone" => Some(Self::Phone),
            "last4" => Some(Self::Last4),
            "redact" => Some(Self::Redact),
            _ => None,
        }
    }

    /// The masked form of `value`.
    pub fn apply(self, value: &str) -> String {
        match self {
            Self::Email => match value.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && !domain.is_empty() => {
                    let first: String = local.chars().take(1).collect();
                    format!("{first}***@{domain}")
                }
                _ => REDACTED.to_owned(),
            },
            Self::Phone => {
                let digits: Vec<char> = value.chars().filter(char::is_ascii_digit).collect();
                if digits.len() < 6 {
                    return REDACTED.to_owned();
                }
                let plus = if value.trim_start().starts_with('+') {
                    "+"
                } else {
                    ""
                };
                let keep = digits.len() - 2;
                let tail: String = digits.iter().skip(keep).collect();
                format!("{plus}{}{tail}", "*".repeat(keep))
            }
            Self::Last4 => {
                let chars: Vec<char> = value.chars().collect();
                if chars.len() <= 4 {
                    return "*".repeat(chars.len());
                }
                let keep = chars.len() - 4;
                let tail: String = chars.iter().skip(keep).collect();
                format!("{}{tail}", "*".repeat(keep))
            }
            Self::Redact => REDACTED.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_only_their_hint() {
        assert_eq!(
            MaskRule::Email.apply("alice@example.com"),
            "a***@example.com"
        );
        assert_eq!(MaskRule::Email.apply("not-an-email"), "[redacted]");
        assert_eq!(MaskRule::Phone.apply("+1 555 123 4567"), "+*********67");
        assert_eq!(MaskRule::Phone.apply("12"), "[redacted]");
        assert_eq!(
            MaskRule::Last4.apply("4111111111111111"),
            "************1111"
        );
        assert_eq!(MaskRule::Last4.apply("123"), "***");
        assert_eq!(MaskRule::Redact.apply("anything"), "[redacted]");
        assert_eq!(MaskRule::Email.apply("é@x"), "é***@x");
    }
}
