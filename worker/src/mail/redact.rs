//! Masking what an SMTP server's reply may echo (the recipient's address, pieces of the
//! message) before the reply reaches a log line, a span or a dead letter.
//!
//! Servers echo the recipient in their own spelling (another case, angle brackets, quotes, the
//! punycode form of an IDN domain), so matching the stored address is not enough: every token
//! around an at sign is masked, whatever it looks like. Content filters quote the message
//! itself (a link they refuse, with its secret code): every long run of letters and digits
//! (base64's alphabet) the message holds is masked wherever the reply quotes part of it.

use std::collections::HashSet;

/// How many letters and digits in a row of a long run of the message mark a reply's run as
/// quoted from it: a run cut by the server (a line break, a quoted-printable soft break) keeps
/// at most one less of it in clear.
const ECHO_WINDOW: usize = 6;

/// The shortest run of letters and digits of the message looked for in replies: secret codes
/// and tokens (32 characters and more), not words.
const LONG_RUN: usize = 16;

const _: () = assert!(simplebank_core::secret::SECRET_CODE_LEN >= LONG_RUN);

/// `reply` with every run of ASCII letters and digits that holds [`ECHO_WINDOW`] characters in
/// a row of a long run of `sent` (the message's parts, and the message as sent, whose
/// quoted-printable or base64 lines a server may quote) replaced by `***`. Case is ignored: a
/// server may print a link in capitals.
pub fn mask_echoes(reply: &str, sent: &[&str]) -> String {
    let windows: HashSet<[u8; ECHO_WINDOW]> = sent
        .iter()
        .flat_map(|part| base64_runs(part))
        .filter(|run| run.len() >= LONG_RUN)
        .flat_map(|run| run.as_bytes().windows(ECHO_WINDOW).map(folded))
        .collect();
    let mut out = String::with_capacity(reply.len());
    let mut copied = 0;
    for run in base64_runs(reply) {
        let echoed = run
            .as_bytes()
            .windows(ECHO_WINDOW)
            .any(|window| windows.contains(&folded(window)));
        if echoed {
            let start = run.as_ptr() as usize - reply.as_ptr() as usize;
            out.push_str(&reply[copied..start]);
            out.push_str("***");
            copied = start + run.len();
        }
    }
    out.push_str(&reply[copied..]);
    out
}

/// `window` in lower case.
fn folded(window: &[u8]) -> [u8; ECHO_WINDOW] {
    let mut out = [0; ECHO_WINDOW];
    for (folded, byte) in out.iter_mut().zip(window) {
        *folded = byte.to_ascii_lowercase();
    }
    out
}

/// The maximal runs of base64's alphabet (ASCII letters, digits, `+` and `/`) in `text`: a
/// base64 line quoted from the message is one run, not pieces too short to match.
fn base64_runs(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '/'))
        .filter(|run| !run.is_empty())
}

/// `text` with every email-like token masked: its local part becomes `x***` (`x` its first
/// character when that is an ASCII letter or digit, else `*`) and its domain is kept, lower-cased
/// (`<Bob.Smith@Example.COM>` becomes `<b***@example.com>`). A quoted local part may hold
/// spaces and is masked whole. Full-width at signs, and `%40` (an at sign in a URL: a block
/// page's link may carry the recipient), count as at signs.
pub fn mask_addresses(text: &str) -> String {
    let chars: Vec<char> = text.replace("%40", "@").chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let Some(at) = chars[i..].iter().position(|c| is_at(*c)).map(|p| p + i) else {
            out.extend(&chars[i..]);
            break;
        };
        let start = local_start(&chars, i, at);
        let end = domain_end(&chars, at);
        out.extend(&chars[i..start]);
        let first = chars[start..at]
            .iter()
            .find(|c| !matches!(c, '"' | '\''))
            .filter(|c| c.is_ascii_alphanumeric())
            .map_or('*', |c| c.to_ascii_lowercase());
        out.push(first);
        out.push_str("***@");
        out.extend(chars[at + 1..end].iter().flat_map(|c| c.to_lowercase()));
        i = end;
    }
    out
}

fn is_at(c: char) -> bool {
    matches!(c, '@' | '\u{FF20}' | '\u{FE6B}')
}

/// Characters that end a token on either side: whitespace and the delimiters servers put
/// around addresses. Not `=`, which a local part may hold (`a=b@x`): `to=bob@x` is masked
/// whole, `to=` with it, rather than leave what comes before an `=` in the address.
fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, '<' | '>' | '(' | ')' | '[' | ']' | ',' | ';' | ':')
}

/// Where the local part before `at` starts (not before `floor`). A local part that ends in a
/// quote (double or single) runs back to its opening quote, spaces included, and on to the
/// start of the token that quote is in (`bo'b'@x` is masked whole).
fn local_start(chars: &[char], floor: usize, at: usize) -> usize {
    let mut start = at;
    if at > floor
        && let quote @ ('"' | '\'') = chars[at - 1]
        && let Some(open) = chars[floor..at - 1].iter().rposition(|c| *c == quote)
    {
        start = floor + open;
    }
    while start > floor && !is_delimiter(chars[start - 1]) && !is_at(chars[start - 1]) {
        start -= 1;
    }
    // A single quote opening the token quotes it when a quote ends the domain (`'bob@x'`);
    // otherwise it belongs to the address (`'bob@x` is masked whole).
    if start < at && chars[start] == '\'' && chars.get(domain_end(chars, at)) == Some(&'\'') {
        start += 1;
    }
    start
}

/// Where the domain after `at` ends: at a delimiter, a quote, or trailing sentence punctuation.
fn domain_end(chars: &[char], at: usize) -> usize {
    let mut end = at + 1;
    while end < chars.len()
        && !is_delimiter(chars[end])
        && !is_at(chars[end])
        && !matches!(chars[end], '"' | '\'')
    {
        end += 1;
    }
    while end > at + 1 && matches!(chars[end - 1], '.' | '!' | '?') {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::{mask_addresses, mask_echoes};

    const CODE: &str = "K3PvOKSFq9ZtW2mLx7RbY4nHc8JdA1eG";

    #[test]
    fn a_quoted_link_leaves_no_piece_of_its_code() {
        let text = format!(
            "Verify your address: https://bank.example/verify?email_id=42&secret_code={CODE}"
        );
        let html =
            format!("<a href=\"https://bank.example/verify?email_id=42&amp;secret_code={CODE}\">");
        let sent = [text.as_str(), html.as_str()];
        for (reply, masked) in [
            (
                format!("554 5.7.1 Rejected: URL <https://bank.example/verify?email_id=42&secret_code={CODE}> listed"),
                "554 5.7.1 Rejected: URL <https://bank.example/verify?email_id=42&secret_code=***> listed".to_owned(),
            ),
            // As sent, quoted-printable: `=3D` before the code, a soft break inside it.
            (
                format!("451 4.7.1 deferred: secret_code=3D{}=\r\n{}", &CODE[..20], &CODE[20..]),
                "451 4.7.1 deferred: secret_code=***=\r\n***".to_owned(),
            ),
            // Cut in the middle by a line break (lettre joins a multi-line reply's lines).
            (
                format!("550 URL ...code={} {}", &CODE[..9], &CODE[9..]),
                "550 URL ...code=*** ***".to_owned(),
            ),
            // The tail a server cut a code down to.
            (format!("554 {}...", &CODE[..7]), "554 ***...".to_owned()),
            // Printed in capitals, or in lower case.
            (
                format!("554 {} {}", CODE.to_ascii_uppercase(), CODE.to_ascii_lowercase()),
                "554 *** ***".to_owned(),
            ),
            // Nothing of the message: the reply is kept whole.
            (
                "550 5.1.1 No such user here; see https://postmaster.example/faq".to_owned(),
                "550 5.1.1 No such user here; see https://postmaster.example/faq".to_owned(),
            ),
        ] {
            assert_eq!(mask_echoes(&reply, &sent), masked, "{reply:?}");
        }
        // A piece shorter than the window stays: at most five characters of 32.
        let piece = format!("x {} y", &CODE[..5]);
        assert_eq!(mask_echoes(&piece, &sent), piece);
        // Words of the message are not what is looked for.
        assert_eq!(
            mask_echoes("Verify your address", &sent),
            "Verify your address"
        );
        assert_eq!(mask_echoes("", &sent), "");
        assert_eq!(mask_echoes("ünïcode ok", &[]), "ünïcode ok");
    }

    #[test]
    fn masks_every_spelling_of_an_address() {
        for (text, masked) in [
            (
                "550 5.1.1 <reject@example.com>: No such user",
                "550 5.1.1 <r***@example.com>: No such user",
            ),
            (
                "550 5.1.1 <REJECT@EXAMPLE.COM>: No such user",
                "550 5.1.1 <r***@example.com>: No such user",
            ),
            ("user Reject@Example.com.", "user r***@example.com."),
            ("\"reject\"@example.com", "r***@example.com"),
            (
                "mailbox \"john smith\"@example.com unknown",
                "mailbox j***@example.com unknown",
            ),
            ("'reject@example.com'", "'r***@example.com'"),
            // A local part that starts with a quote: masked with it, the quote not left in clear.
            ("<'reject@example.com>", "<r***@example.com>"),
            ("550 'reject@example.com: no", "550 r***@example.com: no"),
            (
                "mailbox 'john smith'@example.com unknown",
                "mailbox j***@example.com unknown",
            ),
            // A quote inside the token: the whole token is masked.
            ("550 bo'b'@example.com", "550 b***@example.com"),
            ("550 to=\"john smith\"@example.com", "550 t***@example.com"),
            (
                "to=<reject@xn--bcher-kva.example>",
                "to=<r***@xn--bcher-kva.example>",
            ),
            ("reject@bücher.example", "r***@bücher.example"),
            // `=` belongs to the local part: nothing before it is left in clear.
            (
                "550 5.1.1 <john.smith.reject=x@example.com>: user unknown",
                "550 5.1.1 <j***@example.com>: user unknown",
            ),
            ("to=reject@example.com", "t***@example.com"),
            ("reject＠example.com", "r***@example.com"),
            // In a URL's query: the token runs back to the scheme's colon (`/`, `?` and `=`
            // may be in a local part), so the URL's path goes with it.
            (
                "554 see https://support.example/block?to=nine.user%40real9.example.org&u=1",
                "554 see https:****@real9.example.org&u=1",
            ),
            ("_x@example.com", "****@example.com"),
            ("a@b@c", "a***@b****@c"),
            ("@", "****@"),
            ("no address here", "no address here"),
            ("", ""),
        ] {
            assert_eq!(mask_addresses(text), masked, "{text:?}");
        }
    }

    #[test]
    fn leaves_no_local_part_behind() {
        let text =
            "RCPT <Alice.Liddell+tag@Example.COM> refused; also alice.liddell+tag@example.com";
        let masked = mask_addresses(text);
        assert!(!masked.to_lowercase().contains("liddell"), "{masked}");
        assert_eq!(masked.matches("a***@example.com").count(), 2, "{masked}");
    }
}
