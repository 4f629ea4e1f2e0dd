//! Strict decoding of what a REST URL carries: the key in an entry path and the query parameters.
//! Untrusted input, so nothing is guessed: every `%` starts exactly two hex digits, a parameter is
//! known to its route and given once, numbers are plain decimal digits. What fails says why, for a 400.

use std::collections::HashMap;

/// Why a URL part was refused (the message a 400 carries).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

fn err(message: impl Into<String>) -> ParamError {
    ParamError(message.into())
}

/// Decodes `%XX` escapes (exactly two hex digits each) into bytes; in a query string (`plus_is_space`)
/// `+` is a space, as in HTML forms. Any other byte stands for itself.
pub fn percent_decode(text: &str, plus_is_space: bool) -> Result<Vec<u8>, ParamError> {
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
            if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(err(format!(
                    "bad percent-encoding at byte {i}: '%' must be followed by two hex digits"
                )));
            }
        }
    }
    if plus_is_space && bytes.contains(&b'+') {
        // `%2B` decodes to a plus that stays one: replace the literal ones before decoding.
        let spaced = text.replace('+', "%20");
        return Ok(percent_encoding::percent_decode_str(&spaced).collect());
    }
    Ok(percent_encoding::percent_decode(bytes).collect())
}

/// A non-negative decimal number: digits only (no sign, no spaces), at most `max`.
pub fn parse_number(name: &str, text: &str, max: u64) -> Result<u64, ParamError> {
    let n = (!text.is_empty() && text.len() <= 20 && text.bytes().all(|b| b.is_ascii_digit()))
        .then(|| text.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| err(format!("{name} {text:?} is not a number")))?;
    if n > max {
        return Err(err(format!("{name} {n} is over the maximum {max}")));
    }
    Ok(n)
}

/// A query string's parameters, decoded, each known to the route and given once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    values: HashMap<String, Vec<u8>>,
}

impl Params {
    /// Parses `query` (`None`: no query string), refusing parameters not in `allowed`, repeated ones,
    /// empty names and bad escapes.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ParamError> {
        let mut values = HashMap::new();
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = String::from_utf8(percent_decode(name, true)?)
                .map_err(|_| err("a parameter name is not text"))?;
            if !allowed.contains(&name.as_str()) {
                return Err(err(if allowed.is_empty() {
                    format!("unknown parameter {name:?}: this route takes none")
                } else {
                    format!("unknown parameter {name:?} (this route takes {})", allowed.join(", "))
                }));
            }
            let value = percent_decode(value, true).map_err(|e| err(format!("parameter {name:?}: {e}")))?;
            if values.insert(name.clone(), value).is_some() {
                return Err(err(format!("parameter {name:?} is given twice")));
            }
        }
        Ok(Params { values })
    }

    /// The raw bytes of `name`, if given.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.values.get(name).map(Vec::as_slice)
    }

    /// `name` as text, if given.
    pub fn text(&self, name: &str) -> Result<Option<&str>, ParamError> {
        self.bytes(name)
            .map(|v| std::str::from_utf8(v).map_err(|_| err(format!("parameter {name:?} is not text"))))
            .transpose()
    }

    /// `name` as a number of at most `max`, if given.
    pub fn number(&self, name: &str, max: u64) -> Result<Option<u64>, ParamError> {
        self.text(name)?.map(|t| parse_number(name, t, max)).transpose()
    }

    /// `name` as a flag: absent is false; `true`, `1` or empty is true; `false` or `0` is false.
    pub fn flag(&self, name: &str) -> Result<bool, ParamError> {
        match self.text(name)? {
            None | Some("false" | "0") => Ok(false),
            Some("true" | "1" | "") => Ok(true),
            Some(other) => Err(err(format!("{name} must be true or false, not {other:?}"))),
        }
    }
}

/// The key of an entry path's remainder (after `/kv/rest/entry/`): not empty, strictly decoded.
pub fn entry_key(raw: &str) -> Result<Vec<u8>, ParamError> {
    if raw.is_empty() {
        return Err(err("the key is empty"));
    }
    let key = percent_decode(raw, false).map_err(|e| err(format!("the key: {e}")))?;
    if key.is_empty() {
        return Err(err("the key is empty"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_strict() {
        assert_eq!(percent_decode("a%00b%ff%4A", false).unwrap(), vec![b'a', 0, b'b', 0xff, b'J']);
        assert_eq!(percent_decode("a+b", false).unwrap(), b"a+b".to_vec());
        assert_eq!(percent_decode("a+b%2B", true).unwrap(), b"a b+".to_vec());
        // Regression: `%+1` decoded to 0x01 (an integer parser took the sign), `%+F` to 0x0f.
        for bad in ["%zz", "%4", "%", "a%", "%+1", "%+F", "%-1", "% 1", "%%41", "%\u{e9}a"] {
            assert!(percent_decode(bad, false).is_err(), "{bad:?}");
            assert!(entry_key(bad).is_err(), "{bad:?}");
        }
        assert!(entry_key("").is_err());
        assert_eq!(entry_key("%00").unwrap(), vec![0]);
    }

    #[test]
    fn parameters_are_known_single_and_well_formed() {
        let p = Params::parse(Some("start=a%20b&limit=5&&end=c+d"), &["start", "end", "limit"]).unwrap();
        assert_eq!(p.bytes("start"), Some(&b"a b"[..]));
        assert_eq!(p.bytes("end"), Some(&b"c d"[..]));
        assert_eq!(p.number("limit", 10).unwrap(), Some(5));
        assert!(p.number("limit", 4).is_err());
        for (query, why) in [
            ("bogus=1", "unknown parameter"),
            ("=", "unknown parameter \"\""),
            ("start=a&start=b", "twice"),
            ("start=%zz", "percent-encoding"),
            ("%zz=1", "percent-encoding"),
        ] {
            let e = Params::parse(Some(query), &["start"]).unwrap_err();
            assert!(e.0.contains(why), "{query}: {e}");
        }
        assert!(Params::parse(Some("x=1"), &[]).unwrap_err().0.contains("takes none"));
        for bad in ["+5", "-1", " 5", "5 ", "", "0x5", "1e3", "99999999999999999999999"] {
            assert!(parse_number("limit", bad, u64::MAX).is_err(), "{bad:?}");
        }
        let flags = Params::parse(Some("a&b=0&c=true&d=maybe"), &["a", "b", "c", "d"]).unwrap();
        assert!(flags.flag("a").unwrap() && !flags.flag("b").unwrap() && flags.flag("c").unwrap());
        assert!(!flags.flag("missing").unwrap());
        assert!(flags.flag("d").is_err());
    }
}
