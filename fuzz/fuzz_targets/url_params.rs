//! A REST URL's key and query string are untrusted: the strict decoders either decode or refuse with
//! an error, never panic; what they accept round-trips (a decoded key, escaped again, decodes to
//! itself), and a parsed query holds only the names its route allows.
#![no_main]

use cairn_server::params::{Params, entry_key, parse_number, percent_decode};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

const ALLOWED: &[&str] = &["timestamp", "consistency", "after", "limit", "start", "end", "if_timestamp"];

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if let Ok(key) = entry_key(text) {
        assert!(!key.is_empty());
        let escaped: String = percent_encoding::percent_encode(&key, NON_ALPHANUMERIC).to_string();
        assert_eq!(entry_key(&escaped).unwrap(), key, "{text:?}");
    }
    if let Ok(decoded) = percent_decode(text, true) {
        // A query value decodes to the same bytes after escaping them again.
        let again = utf8_percent_encode(&String::from_utf8_lossy(&decoded), NON_ALPHANUMERIC).to_string();
        if std::str::from_utf8(&decoded).is_ok() {
            assert_eq!(percent_decode(&again, true).unwrap(), decoded, "{text:?}");
        }
    }
    if let Ok(params) = Params::parse(Some(text), ALLOWED) {
        for name in ALLOWED {
            let _ = params.text(name);
            let _ = params.number(name, u64::MAX);
            let _ = params.flag(name);
        }
    }
    let _ = Params::parse(Some(text), &[]);
    if let Ok(n) = parse_number("n", text, 1000) {
        assert!(n <= 1000 && text.bytes().all(|b| b.is_ascii_digit()), "{text:?}");
        assert_eq!(text.parse::<u64>().ok(), Some(n));
    }
});
