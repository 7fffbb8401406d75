//! What frames a message as it crosses the proxy: the request target sent
//! to Livy (RFC 9112 §3.2) and `Content-Length` in both directions
//! (RFC 9110 §8.6).
//!
//! A length two parties read differently is how requests are smuggled and
//! responses split, so a `Content-Length` is forwarded only as one bare
//! number: a list of one repeated value (`5, 5`, or the same field twice)
//! is repaired to that value, anything else is refused. Pure functions, so
//! the client side (`mod.rs`) and the Livy side (`upstream::conn`) apply
//! the same rule.

use http::Uri;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{InvalidUri, PathAndQuery};

/// Why a `Content-Length` cannot be forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentLengthError {
    /// A value (or a list element) that is not 1*DIGIT: empty, signed,
    /// with letters or inner spaces.
    #[error("Content-Length {0:?} is not a decimal number")]
    NotANumber(String),
    /// More digits than a 64-bit length holds.
    #[error("Content-Length {0:?} is too large")]
    TooLarge(String),
    /// Two different lengths for one message.
    #[error("conflicting Content-Length values {0} and {1}")]
    Conflicting(u64, u64),
}

/// The message's length by its `Content-Length` fields (every field, every
/// comma-separated element, all equal), or `None` without any.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ContentLengthError> {
    read_content_length(headers).map(|(length, _)| length)
}

/// [`content_length`], and whether the fields say it canonically: one
/// field holding the bare number. One lookup of the fields.
fn read_content_length(headers: &HeaderMap) -> Result<(Option<u64>, bool), ContentLengthError> {
    let mut length = None;
    let mut fields = 0;
    let mut bare = true;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        fields += 1;
        bare &= value.as_bytes().iter().all(u8::is_ascii_digit);
        for element in value.as_bytes().split(|&b| b == b',') {
            let n = digits(trim_ows(element))?;
            match length {
                Some(l) if l != n => return Err(ContentLengthError::Conflicting(l, n)),
                _ => length = Some(n),
            }
        }
    }
    Ok((length, fields == 1 && bare))
}

/// As [`content_length`], and leaves the headers with a single field
/// holding the bare number when the message said it as a list or in
/// several fields. The usual single well-formed field is left untouched
/// (no allocation).
pub fn normalize_content_length(
    headers: &mut HeaderMap,
) -> Result<Option<u64>, ContentLengthError> {
    let (length, canonical) = read_content_length(headers)?;
    if let Some(n) = length
        && !canonical
    {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    Ok(length)
}

/// Optional whitespace (RFC 9110 §5.6.3) around a list element.
fn trim_ows(bytes: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !ows(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// 1*DIGIT as a number: no sign, no spaces, not empty (Rust's `u64`
/// parser would take a leading `+`).
fn digits(bytes: &[u8]) -> Result<u64, ContentLengthError> {
    let text = || String::from_utf8_lossy(bytes).into_owned();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return Err(ContentLengthError::NotANumber(text()));
    }
    bytes
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| ContentLengthError::TooLarge(text()))
}

/// The request target to send to Livy: origin form (RFC 9112 §3.2.1), so
/// an absolute-form target with an empty path (`http://livy:8998?q=1`)
/// becomes `/?q=1`, not `?q=1`, which a server refuses. The asterisk form
/// of `OPTIONS *` is kept as it is.
pub fn origin_form(uri: &Uri) -> Result<PathAndQuery, InvalidUri> {
    match uri.path_and_query() {
        None => Ok(PathAndQuery::from_static("/")),
        // `as_str` is already `/` for an empty path without a query.
        Some(pq) if pq.as_str().starts_with('/') || pq.as_str() == "*" => Ok(pq.clone()),
        Some(pq) => PathAndQuery::try_from(format!("/{}", pq.as_str())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            // Not `from_static`, which takes visible ASCII only.
            h.append(
                header::CONTENT_LENGTH,
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        h
    }

    fn normalized(values: &[&'static str]) -> Result<(Option<u64>, Vec<String>), String> {
        let mut h = fields(values);
        let n = normalize_content_length(&mut h).map_err(|e| e.to_string())?;
        let left = h
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        Ok((n, left))
    }

    #[test]
    fn a_single_number_is_kept_as_sent() {
        assert_eq!(normalized(&["5"]), Ok((Some(5), vec!["5".into()])));
        assert_eq!(normalized(&["0"]), Ok((Some(0), vec!["0".into()])));
        assert_eq!(
            normalized(&["007"]),
            Ok((Some(7), vec!["007".into()])),
            "1*DIGIT allows leading zeros"
        );
        assert_eq!(normalized(&[]), Ok((None, vec![])));
    }

    #[test]
    fn repeated_identical_values_become_one_bare_number() {
        for list in [&["5, 5"][..], &["5", "5"], &["5,5", " 5\t"], &[" 5 "]] {
            assert_eq!(
                normalized(list),
                Ok((Some(5), vec!["5".into()])),
                "{list:?}"
            );
        }
    }

    #[test]
    fn anything_else_is_refused() {
        let err = |values: &[&'static str]| content_length(&fields(values)).unwrap_err();
        for bad in [
            "+5", "-1", "", " ", "5a", "0x5", "5 5", "5,", ",5", "5,,5", "٥",
        ] {
            assert!(
                matches!(err(&[bad]), ContentLengthError::NotANumber(_)),
                "{bad:?}"
            );
        }
        assert_eq!(err(&["5, 6"]), ContentLengthError::Conflicting(5, 6));
        assert_eq!(err(&["5", "6"]), ContentLengthError::Conflicting(5, 6));
        assert!(matches!(
            err(&["5", "+5"]),
            ContentLengthError::NotANumber(_)
        ));
        assert!(matches!(
            err(&["18446744073709551616"]),
            ContentLengthError::TooLarge(_)
        ));
        assert_eq!(
            content_length(&fields(&["18446744073709551615"])),
            Ok(Some(u64::MAX))
        );
    }

    #[test]
    fn the_target_is_always_origin_form() {
        let target = |s: &str| origin_form(&s.parse().unwrap()).unwrap().to_string();
        assert_eq!(target("http://livy:8998?q=1"), "/?q=1");
        assert_eq!(target("http://livy:8998"), "/");
        assert_eq!(target("http://livy:8998/"), "/");
        assert_eq!(
            target("http://livy:8998/sessions?from=0"),
            "/sessions?from=0"
        );
        assert_eq!(target("/sessions/1"), "/sessions/1");
        assert_eq!(target("livy:8998"), "/");
        assert_eq!(target("*"), "*");
    }
}
