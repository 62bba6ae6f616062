//! Magnet links (BEP 9): `magnet:?xt=urn:btih:<hash>&dn=<name>&x.pe=<ip:port>`.
//! Pure parsing and printing.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::metainfo::InfoHash;

/// A parsed magnet link. Unknown keys and trackers (`tr`) are tolerated and
/// dropped: p2pfile never contacts a tracker.
///
/// ```
/// use p2pfile_engine::magnet::Magnet;
///
/// let text = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567\
///             &dn=release%201.4&x.pe=10.0.0.5:42081&tr=udp%3A%2F%2Fignored";
/// let m: Magnet = text.parse().unwrap();
/// assert_eq!(m.name.as_deref(), Some("release 1.4"));
/// assert_eq!(m.peers, vec!["10.0.0.5:42081".parse().unwrap()]);
/// assert_eq!(
///     m.to_string(),
///     "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567\
///      &dn=release%201.4&x.pe=10.0.0.5:42081"
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info-hash from `xt=urn:btih:`.
    pub info_hash: InfoHash,
    /// Display name from `dn`, percent-decoded.
    pub name: Option<String>,
    /// Peer hints from every `x.pe`.
    pub peers: Vec<SocketAddr>,
}

/// Why a magnet link was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MagnetError {
    /// Does not start with `magnet:?`.
    #[error("not a magnet link (it must start with \"magnet:?\")")]
    NotMagnet,
    /// No `xt=urn:btih:` parameter.
    #[error("magnet has no \"xt=urn:btih:<info-hash>\"")]
    NoInfoHash,
    /// The hash is malformed.
    #[error("magnet info-hash {0:?} is not 40 hex or 32 base32 characters")]
    BadInfoHash(String),
    /// An `x.pe` that is not `ip:port`.
    #[error("magnet peer x.pe={0:?} is not ip:port")]
    BadPeer(String),
    /// Invalid percent-encoding or UTF-8.
    #[error("magnet parameter {0:?} is not valid percent-encoded UTF-8")]
    BadEncoding(String),
}

impl FromStr for Magnet {
    type Err = MagnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let query = s.strip_prefix("magnet:?").ok_or(MagnetError::NotMagnet)?;
        let mut info_hash = None;
        let mut name = None;
        let mut peers = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value =
                percent_decode(raw).ok_or_else(|| MagnetError::BadEncoding(pair.to_string()))?;
            match key {
                "xt" => {
                    if let Some(h) = value.strip_prefix("urn:btih:") {
                        let parsed = h
                            .parse::<InfoHash>()
                            .map_err(|_| MagnetError::BadInfoHash(h.to_string()))?;
                        info_hash = Some(parsed);
                    }
                }
                "dn" => name = Some(value),
                "x.pe" => {
                    let addr = value
                        .parse::<SocketAddr>()
                        .ok()
                        .filter(|a| a.port() != 0)
                        .ok_or(MagnetError::BadPeer(value))?;
                    if !peers.contains(&addr) {
                        peers.push(addr);
                    }
                }
                _ => {}
            }
        }
        Ok(Magnet {
            info_hash: info_hash.ok_or(MagnetError::NoInfoHash)?,
            name,
            peers,
        })
    }
}

impl fmt::Display for Magnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "magnet:?xt=urn:btih:{}", self.info_hash)?;
        if let Some(name) = &self.name {
            write!(f, "&dn={}", percent_encode(name))?;
        }
        for p in &self.peers {
            write!(f, "&x.pe={p}")?;
        }
        Ok(())
    }
}

/// Encodes everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes and `+` (as a space, as form encoding does).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                // Digit by digit: `u8::from_str_radix` also reads a sign,
                // so "%+0" passed as an escape.
                let digit = |at: usize| char::from(*bytes.get(at)?).to_digit(16);
                out.push((digit(i + 1)? << 4 | digit(i + 2)?) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn round_trip() {
        let m = Magnet {
            info_hash: HASH.parse().unwrap(),
            name: Some("my file (1).bin".into()),
            peers: vec![
                "127.0.0.2:42070".parse().unwrap(),
                "[::1]:7".parse().unwrap(),
            ],
        };
        let s = m.to_string();
        assert_eq!(
            s,
            format!(
                "magnet:?xt=urn:btih:{HASH}&dn=my%20file%20%281%29.bin&x.pe=127.0.0.2:42070&x.pe=[::1]:7"
            )
        );
        assert_eq!(s.parse::<Magnet>().unwrap(), m);
    }

    #[test]
    fn tolerates_trackers_unknown_keys_and_base32() {
        let m: Magnet =
            "magnet:?xt=urn:btih:VOV2XK5LVOV2XK5LVOV2XK5LVOV2XK5L&tr=udp%3A%2F%2Fx&foo=bar&dn=a+b"
                .parse()
                .unwrap();
        assert_eq!(m.info_hash, InfoHash([0xab; 20]));
        assert_eq!(m.name.as_deref(), Some("a b"));
        assert!(m.peers.is_empty());
    }

    #[test]
    fn errors() {
        assert_eq!("http://x".parse::<Magnet>(), Err(MagnetError::NotMagnet));
        assert_eq!(
            "magnet:?dn=x".parse::<Magnet>(),
            Err(MagnetError::NoInfoHash)
        );
        assert!(matches!(
            "magnet:?xt=urn:btih:abc".parse::<Magnet>(),
            Err(MagnetError::BadInfoHash(_))
        ));
        assert!(matches!(
            format!("magnet:?xt=urn:btih:{HASH}&x.pe=nohost").parse::<Magnet>(),
            Err(MagnetError::BadPeer(_))
        ));
        assert!(matches!(
            format!("magnet:?xt=urn:btih:{HASH}&dn=%zz").parse::<Magnet>(),
            Err(MagnetError::BadEncoding(_))
        ));
    }

    /// Found by `percent_escapes_are_two_hex_digits`.
    #[test]
    fn a_sign_is_not_a_hex_digit() {
        assert!(matches!(
            format!("magnet:?xt=urn:btih:{HASH}&dn=%+0").parse::<Magnet>(),
            Err(MagnetError::BadEncoding(_))
        ));
        assert_eq!(percent_decode("%41%2b"), Some("A+".to_string()));
    }

    #[test]
    fn duplicate_peers_are_kept_once() {
        let m: Magnet = format!("magnet:?xt=urn:btih:{HASH}&x.pe=127.0.0.2:1&x.pe=127.0.0.2:1")
            .parse()
            .unwrap();
        assert_eq!(m.peers.len(), 1);
    }

    mod properties {
        use super::*;
        use crate::arb;
        use proptest::prelude::*;

        fn magnet() -> impl Strategy<Value = Magnet> {
            (
                prop::array::uniform20(any::<u8>()),
                proptest::option::of("\\PC{0,24}"),
                prop::collection::vec(arb::socket_addr(), 0..4),
            )
                .prop_map(|(hash, name, mut peers)| {
                    let mut seen = Vec::new();
                    peers.retain(|p| {
                        let new = !seen.contains(p);
                        seen.push(*p);
                        new
                    });
                    Magnet {
                        info_hash: InfoHash(hash),
                        name,
                        peers,
                    }
                })
        }

        /// Hex digits, the signs Rust's integer parser reads, anything.
        fn escape_char() -> impl Strategy<Value = char> {
            prop_oneof![
                prop::sample::select(b"0123456789abcdefABCDEF+-".to_vec()).prop_map(char::from),
                any::<char>(),
            ]
        }

        proptest! {
            #![proptest_config(arb::config(1024))]

            #[test]
            fn every_magnet_round_trips(m in magnet()) {
                prop_assert_eq!(m.to_string().parse::<Magnet>(), Ok(m));
            }

            #[test]
            fn arbitrary_text_parses_or_errors(
                text in prop_oneof!["\\PC{0,80}", "magnet:\\?[a-z.=&%:0-9A-F+\\[\\]]{0,80}"],
            ) {
                if let Ok(m) = text.parse::<Magnet>() {
                    prop_assert_eq!(m.to_string().parse::<Magnet>(), Ok(m));
                }
            }

            #[test]
            fn edited_magnets_parse_or_error(m in magnet(), edits in arb::edits()) {
                let edited = arb::apply(m.to_string().as_bytes(), &edits);
                if let Ok(text) = String::from_utf8(edited) {
                    if let Ok(m) = text.parse::<Magnet>() {
                        prop_assert_eq!(m.to_string().parse::<Magnet>(), Ok(m));
                    }
                }
            }

            /// `%` must be followed by two hex digits, nothing else.
            #[test]
            fn percent_escapes_are_two_hex_digits(a in escape_char(), b in escape_char()) {
                let hex = a.is_ascii_hexdigit() && b.is_ascii_hexdigit();
                let decoded = percent_decode(&format!("%{a}{b}"));
                prop_assert_eq!(decoded.is_some(), hex && u8::from_str_radix(&format!("{a}{b}"), 16).is_ok_and(|n| n < 0x80));
            }
        }
    }
}
