//! The string formats the module asserts ([`Format`]), decided as the jsonschema crate 0.61
//! decides them: the date, time, duration, URI and JSON-pointer grammars below follow its
//! `keywords/format.rs` and `keywords/rfc3986.rs` (MIT, Dmitry Dygalo), e-mail addresses are
//! parsed by the same `email_address` crate. One difference, by design: a Punycode (`xn--`)
//! hostname label must decode, but its characters are not checked against IDNA's Unicode
//! tables (the module carries none).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use email_address::EmailAddress;

use crate::program::Format;

/// Whether `s` is a valid `format`.
pub fn is_valid(format: Format, s: &str) -> bool {
    match format {
        Format::Date => is_date(s),
        Format::DateTime => is_date_time(s),
        Format::Time => is_time(s),
        Format::Duration => is_duration(s),
        Format::Email => is_email(s),
        Format::Hostname => is_hostname(s),
        Format::Ipv4 => Ipv4Addr::from_str(s).is_ok(),
        Format::Ipv6 => Ipv6Addr::from_str(s).is_ok(),
        Format::Uri => rfc3986(s, true),
        Format::UriReference => rfc3986(s, false),
        Format::Uuid => is_uuid(s),
        Format::JsonPointer => is_json_pointer(s),
    }
}

fn digits<const N: usize>(bytes: &[u8]) -> Option<u16> {
    let b = bytes.get(..N)?;
    b.iter().try_fold(0u16, |acc, d| d.is_ascii_digit().then(|| acc * 10 + u16::from(d - b'0')))
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let (Some(year), Some(month), Some(day)) = (digits::<4>(b), digits::<2>(&b[5..]), digits::<2>(&b[8..])) else { return false };
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let last = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    (1..=last).contains(&day)
}

fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 9 || b[2] != b':' || b[5] != b':' {
        return false;
    }
    let (Some(hour), Some(minute), Some(second)) = (digits::<2>(b), digits::<2>(&b[3..]), digits::<2>(&b[6..])) else { return false };
    if hour > 23 || minute > 59 || second > 60 {
        return false;
    }
    let mut i = 8;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    let Some(&sign) = b.get(i) else { return false };
    match sign {
        b'Z' | b'z' => i == b.len() - 1 && (second != 60 || (hour == 23 && minute == 59)),
        b'+' | b'-' => {
            if b.len() - i != 6 || b[i + 3] != b':' {
                return false;
            }
            let (Some(oh), Some(om)) = (digits::<2>(&b[i + 1..]), digits::<2>(&b[i + 4..])) else { return false };
            if oh > 23 || om > 59 {
                return false;
            }
            if second != 60 {
                return true;
            }
            // A leap second is 23:59:60 in UTC.
            let offset = i32::from(oh) * 60 + i32::from(om);
            let local = i32::from(hour) * 60 + i32::from(minute);
            let utc = if sign == b'+' { local - offset } else { local + offset };
            utc.rem_euclid(24 * 60) == 23 * 60 + 59
        }
        _ => false,
    }
}

fn is_date_time(s: &str) -> bool {
    let Some(t) = s.bytes().position(|b| b == b'T' || b == b't') else { return false };
    is_date(&s[..t]) && is_time(&s[t + 1..])
}

fn is_duration(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 2 || b[0] != b'P' {
        return false;
    }
    let (mut i, mut has_component, mut has_time, mut has_weeks, mut has_time_component) = (1, false, false, false, false);
    let (mut last_date, mut last_time, mut seen) = (0usize, 0usize, 0u8);
    while i < b.len() {
        if b[i] == b'T' {
            if has_time || has_weeks {
                return false;
            }
            has_time = true;
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i == b.len() {
            return false;
        }
        let unit = b[i];
        if !has_time {
            let Some(idx) = b"YMWD".iter().position(|u| *u == unit) else { return false };
            if unit == b'W' {
                if has_component {
                    return false;
                }
                has_weeks = true;
            } else if has_weeks {
                return false;
            }
            if idx < last_date || seen & (1 << idx) != 0 {
                return false;
            }
            seen |= 1 << idx;
            last_date = idx;
        } else {
            let Some(idx) = b"HMS".iter().position(|u| *u == unit) else { return false };
            if idx < last_time || seen & (1 << (idx + 4)) != 0 {
                return false;
            }
            seen |= 1 << (idx + 4);
            last_time = idx;
            has_time_component = true;
        }
        has_component = true;
        i += 1;
    }
    if !has_component || (has_time && !has_time_component) {
        return false;
    }
    let has = |bit: u8| seen & (1 << bit) != 0;
    // RFC 3339 Appendix A: years and days need the months between, hours and seconds the minutes.
    let day_without_month = has(0) && has(3) && !has(1);
    let second_without_minute = has(4) && has(6) && !has(5);
    !day_without_month && !second_without_minute
}

fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36 && b.iter().enumerate().all(|(i, c)| if matches!(i, 8 | 13 | 18 | 23) { *c == b'-' } else { c.is_ascii_hexdigit() })
}

fn is_json_pointer(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('/') else { return s.is_empty() };
    let mut escaped = false;
    for c in rest.chars() {
        match c {
            '/' if !escaped => {}
            '~' if !escaped => escaped = true,
            '0' | '1' if escaped => escaped = false,
            '\x00'..='\x2E' | '\x30'..='\x7D' | '\x7F'..='\u{10FFFF}' if !escaped => {}
            _ => return false,
        }
    }
    !escaped
}

fn is_email(s: &str) -> bool {
    // `email_address` refuses an empty quoted local part, which RFC 5321 allows.
    if let Some(domain) = s.strip_prefix("\"\"@") {
        return is_email(&format!("\"a\"@{domain}"));
    }
    let Ok(parsed) = EmailAddress::from_str(s) else { return false };
    if !parsed.local_part().is_ascii() {
        return false;
    }
    let domain = parsed.domain();
    match domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        Some(literal) => match literal.get(..5).filter(|t| t.eq_ignore_ascii_case("IPv6:")) {
            Some(_) => literal[5..].parse::<Ipv6Addr>().is_ok(),
            None => literal.parse::<Ipv4Addr>().is_ok(),
        },
        None => is_hostname(domain),
    }
}

fn is_label(label: &[u8]) -> bool {
    !label.is_empty() && label.len() <= 63 && label[0] != b'-' && label[label.len() - 1] != b'-'
}

fn is_hostname(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 253 || b[b.len() - 1] == b'.' {
        return false;
    }
    b.split(|c| *c == b'.').all(|label| {
        if !is_label(label) || !label.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
            return false;
        }
        let punycode = label.len() >= 4 && label[..4].eq_ignore_ascii_case(b"xn--") && label[..2] == *b"xn";
        if label.len() >= 4 && label[2] == b'-' && label[3] == b'-' && !punycode {
            return false;
        }
        !punycode || std::str::from_utf8(&label[4..]).ok().and_then(decode_punycode).is_some()
    })
}

/// RFC 3492 decoding of an A-label's payload; `None` when it does not decode.
fn decode_punycode(input: &str) -> Option<String> {
    const BASE: u32 = 36;
    let bytes = input.as_bytes();
    let (basic, encoded) = match bytes.iter().rposition(|&b| b == b'-') {
        Some(p) if p > 0 => (&bytes[..p], &bytes[p + 1..]),
        _ => (&bytes[..0], bytes),
    };
    let mut output: Vec<char> = basic.iter().map(|&b| char::from(b)).collect();
    let (mut code_point, mut index, mut bias, mut position) = (128u32, 0u32, 72u32, 0usize);
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(u32::from(b - b'0') + 26),
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'a'..=b'z' => Some(u32::from(b - b'a')),
        _ => None,
    };
    while position < encoded.len() {
        let previous = index;
        let (mut weight, mut k) = (1u32, BASE);
        loop {
            let d = digit(*encoded.get(position)?)?;
            position += 1;
            index = index.checked_add(d.checked_mul(weight)?)?;
            let threshold = if k <= bias { 1 } else if k >= bias + 26 { 26 } else { k - bias };
            if d < threshold {
                break;
            }
            weight = weight.checked_mul(BASE - threshold)?;
            k += BASE;
        }
        let count = u32::try_from(output.len()).ok()? + 1;
        let mut delta = (index - previous) / if previous == 0 { 700 } else { 2 };
        delta += delta / count;
        let mut k = 0;
        while delta > ((BASE - 1) * 26) / 2 {
            delta /= BASE - 1;
            k += BASE;
        }
        bias = k + (BASE * delta) / (delta + 38);
        code_point = code_point.checked_add(index / count)?;
        index %= count;
        output.insert(index as usize, char::from_u32(code_point)?);
        index += 1;
    }
    Some(output.into_iter().collect())
}

const REG_NAME: u8 = 1;
const COLON: u8 = 2;
const AT: u8 = 4;
const SLASH: u8 = 8;
const QUESTION: u8 = 16;
const PERCENT: u8 = 32;
const PATH: u8 = REG_NAME | COLON | AT | SLASH;
const QUERY: u8 = PATH | QUESTION;
const AUTHORITY: u8 = REG_NAME | COLON | AT;

fn class(b: u8) -> u8 {
    match b {
        b if b.is_ascii_alphanumeric() => REG_NAME,
        b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'=' => REG_NAME,
        b':' => COLON,
        b'@' => AT,
        b'/' => SLASH,
        b'?' => QUESTION,
        b'%' => PERCENT,
        _ => 0,
    }
}

/// RFC 3986: a URI (`absolute`) or a URI reference. Bracketed IP literals in the authority are
/// checked as IPv6 (or `v<hex>.` future) addresses.
fn rfc3986(text: &str, absolute: bool) -> bool {
    let bytes = text.as_bytes();
    let scheme = bytes.first().filter(|b| b.is_ascii_alphabetic()).and_then(|_| {
        let length = bytes.iter().position(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')))?;
        (bytes[length] == b':').then_some(length)
    });
    if absolute && scheme.is_none() {
        return false;
    }
    let mut at = scheme.map_or(0, |length| length + 1);
    if bytes[at..].starts_with(b"//") {
        let start = at + 2;
        let Some(mut end) = scan(bytes, start, AUTHORITY) else { return false };
        if bytes.get(end) == Some(&b'[') {
            // userinfo@[literal]:port
            let Some(close) = bytes[end..].iter().position(|b| *b == b']').map(|p| end + p) else { return false };
            if !ip_literal(&text[end + 1..close]) || !bytes[start..end].iter().all(|b| class(*b) & (REG_NAME | COLON | PERCENT) != 0 || *b == b'@') {
                return false;
            }
            if !(end == start || bytes[end - 1] == b'@') {
                return false;
            }
            end = close + 1;
            if bytes.get(end) == Some(&b':') {
                end += 1;
                while bytes.get(end).is_some_and(u8::is_ascii_digit) {
                    end += 1;
                }
            }
        } else if !authority(&bytes[start..end]) {
            return false;
        }
        at = end;
    } else if scheme.is_none() && bytes[at..].iter().find(|&&b| matches!(b, b':' | b'/' | b'?' | b'#')) == Some(&b':') {
        return false;
    }
    let Some(end) = scan(bytes, at, PATH) else { return false };
    at = end;
    if bytes.get(at) == Some(&b'?') {
        let Some(end) = scan(bytes, at + 1, QUERY) else { return false };
        at = end;
    }
    if bytes.get(at) == Some(&b'#') {
        let Some(end) = scan(bytes, at + 1, QUERY) else { return false };
        at = end;
    }
    at == bytes.len()
}

fn ip_literal(inner: &str) -> bool {
    if let Some(future) = inner.strip_prefix(['v', 'V']) {
        let Some((hex, rest)) = future.split_once('.') else { return false };
        return !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) && !rest.is_empty() && rest.bytes().all(|b| class(b) & (REG_NAME | COLON) != 0);
    }
    inner.parse::<Ipv6Addr>().is_ok()
}

fn scan(bytes: &[u8], mut at: usize, wanted: u8) -> Option<usize> {
    while let Some(&b) = bytes.get(at) {
        let found = class(b);
        if found & wanted != 0 {
            at += 1;
        } else if found == PERCENT {
            if !bytes.get(at + 1..at + 3)?.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            at += 3;
        } else {
            break;
        }
    }
    Some(at)
}

fn authority(bytes: &[u8]) -> bool {
    let host_port = bytes.iter().position(|&b| b == b'@').map_or(bytes, |at| &bytes[at + 1..]);
    let host_end = host_port.iter().position(|&b| class(b) & (COLON | AT) != 0).unwrap_or(host_port.len());
    match host_port.get(host_end) {
        None => true,
        Some(b':') => host_port[host_end + 1..].iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_the_reference_decides_them() {
        // (format, text, valid)
        let rows: &[(Format, &str, bool)] = &[
            (Format::Date, "2024-02-29", true),
            (Format::Date, "2023-02-29", false),
            (Format::DateTime, "2023-02-28T12:00:00Z", true),
            (Format::DateTime, "2023-02-29T12:00:00Z", false),
            (Format::DateTime, "1998-12-31T23:59:60Z", true),
            (Format::DateTime, "1998-12-31T15:59:60-08:00", true),
            (Format::DateTime, "1998-12-31T22:59:60Z", false),
            (Format::Time, "12:00:00.5+01:00", true),
            (Format::Time, "12:00:00.+01:00", false),
            (Format::Duration, "P1Y2M3DT4H5M6S", true),
            (Format::Duration, "P1YT", false),
            (Format::Duration, "P1Y3D", false),
            (Format::Uuid, "123e4567-e89b-12d3-a456-426614174000", true),
            (Format::Uuid, "123e4567e89b12d3a456426614174000", false),
            (Format::Email, "a@b.c", true),
            (Format::Email, "nobody", false),
            (Format::Email, "a@[IPv6:::1]", true),
            (Format::Hostname, "a-b.example", true),
            (Format::Hostname, "-a.example", false),
            (Format::Hostname, "ab--c.example", false),
            (Format::Ipv4, "10.0.0.256", false),
            (Format::Ipv6, "::g", false),
            (Format::Uri, "https://example.com/a?b#c", true),
            (Format::Uri, "not a uri", false),
            (Format::Uri, "http://[::1]:8080/x", true),
            (Format::Uri, "http://[::g]/x", false),
            (Format::UriReference, "/relative/path", true),
            (Format::UriReference, "a:b:c", true),
            (Format::JsonPointer, "/a~1b/~0", true),
            (Format::JsonPointer, "/a~2", false),
        ];
        for (format, text, valid) in rows {
            assert_eq!(is_valid(*format, text), *valid, "{format:?} {text:?}");
        }
    }
}
