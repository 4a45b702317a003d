//! Email addresses: a bare addr-spec (`name@example.com`) in one canonical form, so one
//! mailbox is one account and nothing but an address can reach a mail header.
//!
//! - Local part: ASCII dot-atom only (RFC 5322 atext and single inner dots), kept as given.
//!   No display name, comment, quoted string or whitespace; no non-ASCII letters, so a
//!   look-alike (a Cyrillic "а" for "a") cannot make a second account for one person's name.
//! - Domain: a DNS name of at least two labels, IDN domains in their ASCII (punycode) form,
//!   lower-cased. No address literals (`[127.0.0.1]`) and no dotless or numeric names (a last
//!   label of digits or `0x` hex: `127.0x1` is an IPv4 address to resolvers).
//! - Length: at most 64 octets before the @, 253 after it, 254 in all (RFC 5321).
//!
//! Uniqueness is case-insensitive on the whole address: the database has a unique index on
//! `lower(email COLLATE "C")` (see the migrations).

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

use super::{FieldViolation, check_text};

const FIELD: &str = "email";
const MAX_LEN: usize = 254;
const MAX_LOCAL_LEN: usize = 64;
const MAX_DOMAIN_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A bare address in canonical form: the local part as given, the domain in lower-case ASCII.
#[derive(Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Checks `value` against the rules above and returns it in canonical form.
    ///
    /// ```
    /// use simplebank_core::domain::Email;
    ///
    /// let email = Email::parse("Alice.Liddell@Example.COM").expect("a valid address");
    /// assert_eq!(email.as_str(), "Alice.Liddell@example.com");
    /// assert!(Email::parse("Alice <alice@example.com>").is_err());
    /// ```
    pub fn parse(value: &str) -> Result<Self, FieldViolation> {
        check_text(FIELD, value, 3, MAX_LEN)?;
        let Some((local, domain)) = value.split_once('@') else {
            return Err(invalid("must be an address such as name@example.com"));
        };
        check_local_part(local)?;
        let domain = canonical_domain(domain)?;
        let address = format!("{local}@{domain}");
        if address.len() > MAX_LEN {
            return Err(invalid(format!(
                "must be at most {MAX_LEN} characters with its domain in ASCII form"
            )));
        }
        Ok(Self(address))
    }

    /// The canonical address: what is stored, compared and mailed to.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The address with the local part hidden (`a***@example.com`), safe for logs.
    pub fn masked(&self) -> String {
        mask(&self.0)
    }
}

fn invalid(description: impl Into<String>) -> FieldViolation {
    FieldViolation::new(FIELD, description)
}

/// RFC 5322 `atext`: what a dot-atom may contain besides its dots.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

fn check_local_part(local: &str) -> Result<(), FieldViolation> {
    if local.is_empty() {
        return Err(invalid("must have a name before the @"));
    }
    if !local.chars().all(|c| c == '.' || is_atext(c)) {
        return Err(invalid(
            "must be a bare address: before the @ only ASCII letters, digits, dots and \
             !#$%&'*+-/=?^_`{|}~ (no display name, quotes, comments, spaces or non-ASCII letters)",
        ));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(invalid(
            "must not start or end the part before the @ with a dot, nor have two dots in a row",
        ));
    }
    if local.len() > MAX_LOCAL_LEN {
        return Err(invalid(format!(
            "must have at most {MAX_LOCAL_LEN} characters before the @"
        )));
    }
    Ok(())
}

/// The domain in lower-case ASCII, IDN labels in punycode (UTS 46 ToASCII, STD3 rules), checked
/// against the DNS limits with a message for each.
fn canonical_domain(domain: &str) -> Result<String, FieldViolation> {
    if domain.starts_with('[') {
        return Err(invalid(
            "must have a domain name after the @, not an address literal",
        ));
    }
    if domain.is_empty() {
        return Err(invalid("must have a domain after the @"));
    }
    let ascii = Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::Ignore,
        )
        .map_err(|_| {
            invalid(
                "must have a valid domain name after the @ (letters, digits and hyphens in \
                 labels separated by dots)",
            )
        })?;
    let labels: Vec<&str> = ascii.split('.').collect();
    if labels.iter().any(|label| label.is_empty()) {
        return Err(invalid(
            "must not have an empty label in its domain (a dot at either end or two in a row)",
        ));
    }
    if labels.iter().any(|label| label.len() > MAX_LABEL_LEN) {
        return Err(invalid(format!(
            "must not have a domain label longer than {MAX_LABEL_LEN} characters"
        )));
    }
    if ascii.len() > MAX_DOMAIN_LEN {
        return Err(invalid(format!(
            "must have a domain of at most {MAX_DOMAIN_LEN} characters in ASCII form"
        )));
    }
    if labels.len() < 2 {
        return Err(invalid(
            "must have a domain with a dot in it (such as example.com)",
        ));
    }
    // A host whose last label is a number (decimal, octal, or `0x` hex) is an IPv4 address to
    // resolvers and WHATWG URLs: `127.0x1` is 127.0.0.1, `1.0x7f` is 1.0.0.127.
    if labels.last().is_some_and(|tld| {
        tld.bytes().all(|b| b.is_ascii_digit())
            || tld
                .strip_prefix("0x")
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
    }) {
        return Err(invalid(
            "must have a domain name after the @, not an IP address",
        ));
    }
    Ok(ascii.into_owned())
}

/// Masks the local part of an address for logs: `alice@example.com` -> `a***@example.com`.
pub fn mask(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}***@{domain}")
        }
        None => "***".into(),
    }
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Email({})", self.masked())
    }
}

#[cfg(test)]
mod tests {
    use super::Email;

    fn canonical(value: &str) -> String {
        Email::parse(value)
            .unwrap_or_else(|err| panic!("{value:?} refused: {}", err.description))
            .as_str()
            .to_owned()
    }

    fn refused(value: &str) -> String {
        match Email::parse(value) {
            Ok(email) => panic!("{value:?} accepted as {:?}", email.as_str()),
            Err(err) => {
                assert_eq!(err.field, "email");
                err.description
            }
        }
    }

    #[test]
    fn accepts_dot_atoms_and_keeps_the_local_part_as_given() {
        for good in [
            "a@b.co",
            "alice@example.com",
            "Alice.O'Neil+tag@example.com",
            "!#$%&'*+-/=?^_`{|}~@example.com",
            "x@a-b.example.co.uk",
            "x@123.example",
        ] {
            assert_eq!(canonical(good), good);
        }
    }

    #[test]
    fn the_domain_is_lower_cased_and_idn_domains_are_in_ascii_form() {
        assert_eq!(canonical("Dup@EXAMPLE.Com"), "Dup@example.com");
        assert_eq!(
            canonical("user@BÜcher.example"),
            "user@xn--bcher-kva.example"
        );
        assert_eq!(
            canonical("user@bücher.example"),
            "user@xn--bcher-kva.example"
        );
        assert_eq!(
            canonical("user@XN--BCHER-KVA.example"),
            "user@xn--bcher-kva.example"
        );
        // Full-width letters and the ideographic full stop are the same name under UTS 46.
        assert_eq!(canonical("user@ｅｘａｍｐｌｅ。com"), "user@example.com");
    }

    #[test]
    fn only_a_bare_address() {
        for bad in [
            "Other <dup@example.com>",
            "<dup@example.com>",
            "dup@example.com (comment)",
            "(comment)dup@example.com",
            "\"dup\"@example.com",
            "\"a b\"@example.com",
            " dup@example.com",
            "dup@example.com ",
            "a b@example.com",
            "x\r\nBcc: attacker@evil.example\r\nSubject: Pwned\r\nX-A: y <v@example.com>",
            "dup@example.com\r\n\r\nbody",
            "dup@example.com,other@example.com",
            "plainaddress",
            "@example.com",
            "a@",
            "x@y@example.com",
            "dup\u{FF20}example.com",
        ] {
            refused(bad);
        }
        // Huge input is refused on its length before any parsing.
        let huge = format!("{}@example.com", "a".repeat(5_000_000));
        assert!(refused(&huge).contains("254"));
    }

    #[test]
    fn the_local_part_is_ascii_with_dots_inside_only() {
        assert!(refused("\u{430}lice@example.com").contains("non-ASCII"));
        assert!(refused("ålice@example.com").contains("non-ASCII"));
        for bad in [".x@example.com", "x.@example.com", "x..y@example.com"] {
            assert!(refused(bad).contains("dot"), "{bad:?}");
        }
        assert!(Email::parse(&format!("{}@example.com", "l".repeat(64))).is_ok());
        assert!(refused(&format!("{}@example.com", "l".repeat(65))).contains("64"));
    }

    #[test]
    fn domains_must_be_dns_names() {
        for literal in ["x@[127.0.0.1]", "x@[IPv6:::1]"] {
            assert!(refused(literal).contains("address literal"), "{literal}");
        }
        // Every form a resolver reads as IPv4: decimal, octal, hex (an outside attack's).
        for ip in [
            "x@127.0.0.1",
            "x@127.0x1",
            "x@0x7f.0x1",
            "x@1.0x7f",
            "x@1.0X7F",
            "x@example.0x",
            "x@1.0177",
        ] {
            assert!(refused(ip).contains("IP address"), "{ip}");
        }
        // A number elsewhere, or a last label that only starts like one, is a name.
        for name in ["x@0x7f.example.com", "x@1.0xg", "x@127.0.0.example"] {
            assert!(Email::parse(name).is_ok(), "{name}");
        }
        assert!(refused("x@localhost").contains("with a dot"));
        for bad in ["x@example..com", "x@.example.com", "x@example.com."] {
            assert!(refused(bad).contains("empty label"), "{bad}");
        }
        for bad in [
            "x@-example.com",
            "x@example-.com",
            "x@exa_mple.com",
            "x@exa mple.com",
        ] {
            assert!(refused(bad).contains("valid domain"), "{bad}");
        }
        let label63 = "a".repeat(63);
        assert!(Email::parse(&format!("x@{label63}.com")).is_ok());
        assert!(refused(&format!("x@{label63}a.com")).contains("63"));
        // 16 characters, 53 octets in ASCII form: five of them make a domain of 277 octets.
        let domain = format!("{}example", format!("{CJK_LABEL}.").repeat(5));
        assert!(refused(&format!("x@{domain}")).contains("253"));
    }

    /// A label short in characters and long in punycode (`xn--` + 49).
    const CJK_LABEL: &str = "日本語漢字東京大阪京都山田太郎花子";

    #[test]
    fn at_most_254_octets_in_all_counting_the_ascii_form() {
        let label63 = "a".repeat(63);
        let domain = format!("{label63}.{label63}.{}", "b".repeat(61)); // 189 octets
        let local = "l".repeat(64);
        assert!(Email::parse(&format!("{local}@{domain}")).is_ok()); // 254
        let too_long = format!("{local}@{domain}b"); // 255
        assert!(refused(&too_long).contains("254"));
        // 140 characters as typed, 288 octets stored (a domain of 223): the limit is on the
        // stored form.
        let idn = format!("{local}@{}example", format!("{CJK_LABEL}.").repeat(4));
        assert!(refused(&idn).contains("254"));
    }

    #[test]
    fn debug_is_masked() {
        let email = Email::parse("alice@example.com").unwrap();
        assert_eq!(format!("{email:?}"), "Email(a***@example.com)");
    }
}
