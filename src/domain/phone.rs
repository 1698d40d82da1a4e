//! E.164 phone numbers, the only form Google and Twilio both accept.

use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Phone(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("must be an E.164 number: '+' then 8 to 15 digits, the first not 0 (e.g. +14155550123)")]
pub struct InvalidPhone;

impl Phone {
    pub fn parse(s: &str) -> Result<Phone, InvalidPhone> {
        let digits = s.strip_prefix('+').ok_or(InvalidPhone)?;
        let ok = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if ok {
            Ok(Phone(s.to_owned()))
        } else {
            Err(InvalidPhone)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form logs show at info level and above: enough to tell numbers of a
    /// support case apart, not enough to identify a person.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

/// Masks any phone-like string, keeping the country prefix and the last two digits.
pub fn mask(s: &str) -> String {
    let n = s.chars().count();
    if n <= 5 {
        return "*".repeat(n);
    }
    s.chars()
        .enumerate()
        .map(|(i, c)| if i < 3 || i >= n - 2 { c } else { '*' })
        .collect()
}

// Debug masks too, so a phone inside a logged struct does not leak.
impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_e164() {
        for ok in [
            "+14155550123",
            "+447911123456",
            "+12345678",
            "+123456789012345",
        ] {
            assert!(Phone::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            "+",
            "14155550123",
            "+0123456789",
            "+1415555012a",
            "+1 415 555 0123",
            "+1234567",
            "+1234567890123456",
            "++14155550123",
            "+١٢٣٤٥٦٧٨٩",
            "+14155550123\n",
        ] {
            assert_eq!(Phone::parse(bad), Err(InvalidPhone), "{bad:?}");
        }
    }

    #[test]
    fn masks_the_middle() {
        let p = Phone::parse("+14155550123").unwrap();
        assert_eq!(p.masked(), "+14*******23");
        assert_eq!(format!("{p:?}"), "Phone(+14*******23)");
    }
}
