//! The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy's specification
//! ("The PROXY protocol", haproxy.org/download/2.6/doc/proxy-protocol.txt) defines them:
//! the header a proxy sends before any byte of the connection, so the server behind it
//! learns the client's address. Pure code: [`decode`] reads a header from the first bytes
//! of a connection (`--accept-proxy`), [`encode`] writes one (a backend's `send-proxy`,
//! `send-proxy-v2`). Neither allocates; the decoder looks at no more than [`MAX_HEADER`]
//! bytes and never loops over more than it is given.
//!
//! Version 1 (spec section 2.1): one line of at most 107 bytes,
//! `PROXY TCP4|TCP6 SRC DST SRCPORT DSTPORT\r\n`, or `PROXY UNKNOWN ...\r\n` (the sender does
//! not know: the receiver uses the connection's own addresses). Single spaces; addresses in
//! their usual text form; ports decimal 0 to 65535.
//!
//! Version 2 (section 2.2): the 12-byte signature `\r\n\r\n\0\r\nQUIT\n`, a version and
//! command byte (`0x20` LOCAL, `0x21` PROXY), a family and transport byte (`0x11` TCP over
//! IPv4, `0x21` TCP over IPv6, others carry no address we use), a 16-bit big-endian length
//! of what follows: the addresses (IPv4: 4 + 4 + 2 + 2 bytes; IPv6: 16 + 16 + 2 + 2) and any
//! TLVs, which are skipped. LOCAL (a health check from the proxy itself) and families
//! without a TCP address are accepted, and the connection's own addresses used.

use std::fmt;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version-2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest version-1 line, CRLF included (spec 2.1).
pub const V1_MAX: usize = 107;
/// The longest header accepted: version 2's 16 fixed bytes and up to 520 of addresses and
/// TLVs (the 216 of a UNIX address pair leave 304 for TLVs). Past it: `Oversized`.
pub const MAX_HEADER: usize = 536;
/// Room for any header [`encode`] writes (a version-1 TCP6 line is the longest).
pub const MAX_ENCODED: usize = V1_MAX;

/// Which version of the protocol a backend is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// Text (`send-proxy`).
    V1,
    /// Binary (`send-proxy-v2`).
    V2,
}

impl Version {
    /// The backend option that asks for it.
    pub fn option(self) -> &'static str {
        match self {
            Version::V1 => "send-proxy",
            Version::V2 => "send-proxy-v2",
        }
    }
}

/// A complete header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Its length in bytes: exactly what to consume from the connection.
    pub len: usize,
    /// The client's (source) and the proxy's (destination) addresses; `None` when the
    /// header carries none (v1 `UNKNOWN`, a v2 `LOCAL` command or another family): then
    /// the connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A valid beginning of a header: wait for more bytes.
    Incomplete,
    Complete(Header),
}

/// Why a connection's first bytes are not an acceptable header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// They are not a PROXY header at all (another protocol's bytes).
    Missing,
    /// A header, but not a valid one.
    Malformed,
    /// Longer than [`MAX_HEADER`] (or a version-1 line longer than 107 bytes).
    Oversized,
}

impl HeaderError {
    pub fn as_str(self) -> &'static str {
        match self {
            HeaderError::Missing => "missing",
            HeaderError::Malformed => "malformed",
            HeaderError::Oversized => "oversized",
        }
    }
}

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeaderError::Missing => "no PROXY protocol header",
            HeaderError::Malformed => "a malformed PROXY protocol header",
            HeaderError::Oversized => "a PROXY protocol header too long",
        })
    }
}

/// Reads a header from the first bytes of a connection (as many as have arrived; more
/// than a header is fine: only `len` of them are the header). Looks at no more than
/// [`MAX_HEADER`] bytes.
pub fn decode(bytes: &[u8]) -> Result<Decoded, HeaderError> {
    let bytes = &bytes[..bytes.len().min(MAX_HEADER)];
    if bytes.first() == Some(&V2_SIGNATURE[0]) {
        decode_v2(bytes)
    } else {
        decode_v1(bytes)
    }
}

fn decode_v2(bytes: &[u8]) -> Result<Decoded, HeaderError> {
    let known = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..known] != V2_SIGNATURE[..known] {
        return Err(HeaderError::Missing);
    }
    if bytes.len() < 16 {
        return Ok(Decoded::Incomplete);
    }
    let (version_command, family) = (bytes[12], bytes[13]);
    let body = usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
    // Version 2; command LOCAL or PROXY; family UNSPEC, INET, INET6 or UNIX; transport
    // UNSPEC, STREAM or DGRAM. Anything else "must" be dropped (spec 2.2).
    if version_command >> 4 != 2
        || version_command & 0x0f > 1
        || family >> 4 > 3
        || family & 0x0f > 2
    {
        return Err(HeaderError::Malformed);
    }
    let len = 16 + body;
    if len > MAX_HEADER {
        return Err(HeaderError::Oversized);
    }
    let needed = match family {
        0x11 => 12,
        0x21 => 36,
        _ => 0,
    };
    if body < needed {
        return Err(HeaderError::Malformed);
    }
    if bytes.len() < len {
        return Ok(Decoded::Incomplete);
    }
    let a = &bytes[16..len];
    let port = |at: usize| u16::from_be_bytes([a[at], a[at + 1]]);
    let addresses = match (version_command & 0x0f, family) {
        (1, 0x11) => {
            let ip = |at: usize| IpAddr::from([a[at], a[at + 1], a[at + 2], a[at + 3]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        (1, 0x21) => {
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[at..at + 16]);
                IpAddr::from(octets)
            };
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        _ => None,
    };
    Ok(Decoded::Complete(Header { len, addresses }))
}

fn decode_v1(bytes: &[u8]) -> Result<Decoded, HeaderError> {
    const PREFIX: &[u8] = b"PROXY ";
    let known = bytes.len().min(PREFIX.len());
    if bytes[..known] != PREFIX[..known] {
        return Err(HeaderError::Missing);
    }
    let window = &bytes[..bytes.len().min(V1_MAX)];
    let Some(end) = window.iter().position(|&b| b == b'\n') else {
        if let Some(bad) = window.iter().position(|&b| !(0x20..0x7f).contains(&b)) {
            // Only a CR may end the line, and only as the last byte so far.
            if window[bad] != b'\r' || bad + 1 != window.len() {
                return Err(HeaderError::Malformed);
            }
        }
        return if bytes.len() >= V1_MAX {
            Err(HeaderError::Oversized)
        } else {
            Ok(Decoded::Incomplete)
        };
    };
    if end == 0 || window[end - 1] != b'\r' {
        return Err(HeaderError::Malformed);
    }
    let line =
        std::str::from_utf8(&window[PREFIX.len()..end - 1]).map_err(|_| HeaderError::Malformed)?;
    if line.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
        return Err(HeaderError::Malformed);
    }
    let len = end + 1;
    let mut fields = line.split(' ');
    let addresses = match fields.next() {
        Some("UNKNOWN") => None,
        Some(protocol @ ("TCP4" | "TCP6")) => {
            let mut next = || fields.next().ok_or(HeaderError::Malformed);
            let (src, dst, src_port, dst_port) = (next()?, next()?, next()?, next()?);
            if fields.next().is_some() {
                return Err(HeaderError::Malformed);
            }
            let ip = |text: &str| -> Result<IpAddr, HeaderError> {
                if protocol == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                }
                .map_err(|_| HeaderError::Malformed)
            };
            Some((
                SocketAddr::new(ip(src)?, v1_port(src_port)?),
                SocketAddr::new(ip(dst)?, v1_port(dst_port)?),
            ))
        }
        _ => return Err(HeaderError::Malformed),
    };
    Ok(Decoded::Complete(Header { len, addresses }))
}

/// A version-1 port: 1 to 5 decimal digits, no sign, no leading zero, at most 65535.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let digits = !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit());
    if !digits || (text.len() > 1 && text.starts_with('0')) {
        return Err(HeaderError::Malformed);
    }
    text.parse().map_err(|_| HeaderError::Malformed)
}

/// Writes the header that tells a server about a connection from `source` to
/// `destination` into `out`; returns its length. Both addresses are sent in one family:
/// IPv4 when both are IPv4 (or IPv4-mapped IPv6), else IPv6 (an IPv4 address mapped).
pub fn encode(
    version: Version,
    source: SocketAddr,
    destination: SocketAddr,
    out: &mut [u8; MAX_ENCODED],
) -> usize {
    let (src, dst) = (source.ip().to_canonical(), destination.ip().to_canonical());
    let (src, dst) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (IpAddr::V4(s), IpAddr::V4(d)),
        _ => (IpAddr::V6(to_v6(src)), IpAddr::V6(to_v6(dst))),
    };
    let (src_port, dst_port) = (source.port(), destination.port());
    match version {
        Version::V1 => {
            let protocol = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            let mut cursor: &mut [u8] = &mut out[..];
            // At most 5 + 1 + 4 + 1 + 39 + 1 + 39 + 1 + 5 + 1 + 5 + 2 = 104 bytes: it fits.
            let _ = write!(
                cursor,
                "PROXY {protocol} {src} {dst} {src_port} {dst_port}\r\n"
            );
            let left = cursor.len();
            MAX_ENCODED - left
        }
        Version::V2 => {
            out[..12].copy_from_slice(&V2_SIGNATURE);
            out[12] = 0x21;
            let body = match (src, dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    out[13] = 0x11;
                    out[16..20].copy_from_slice(&s.octets());
                    out[20..24].copy_from_slice(&d.octets());
                    out[24..26].copy_from_slice(&src_port.to_be_bytes());
                    out[26..28].copy_from_slice(&dst_port.to_be_bytes());
                    12
                }
                _ => {
                    out[13] = 0x21;
                    out[16..32].copy_from_slice(&to_v6(src).octets());
                    out[32..48].copy_from_slice(&to_v6(dst).octets());
                    out[48..50].copy_from_slice(&src_port.to_be_bytes());
                    out[50..52].copy_from_slice(&dst_port.to_be_bytes());
                    36
                }
            };
            out[14..16].copy_from_slice(&(body as u16).to_be_bytes());
            16 + body
        }
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    fn complete(bytes: &[u8]) -> Header {
        match decode(bytes) {
            Ok(Decoded::Complete(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }

    #[test]
    fn version_1_lines() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n";
        let h = complete(line);
        assert_eq!(h.len, 47);
        assert_eq!(
            h.addresses,
            Some((addr("192.168.0.1:56324"), addr("192.168.0.11:443")))
        );
        let h = complete(b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n");
        assert_eq!(
            h.addresses,
            Some((addr("[2001:db8::1]:65535"), addr("[::1]:0")))
        );
        let h = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.addresses, None);
        assert_eq!(complete(b"PROXY UNKNOWN\r\n").len, 15);
    }

    #[test]
    fn version_1_in_pieces_waits_for_the_end_of_the_line() {
        let line = b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\r\n";
        for cut in 0..line.len() {
            assert_eq!(decode(&line[..cut]), Ok(Decoded::Incomplete), "{cut} bytes");
        }
        assert_eq!(complete(line).len, line.len());
    }

    #[test]
    fn version_1_errors() {
        let bad: &[&[u8]] = &[
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000 3000\r\n",
            b"PROXY TCP4 10.0.0.1  10.0.0.2 1000 2000\r\n",
            b"PROXY TCP4 ::1 ::1 1000 2000\r\n",
            b"PROXY TCP6 10.0.0.1 10.0.0.2 1000 2000\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 65536\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 01000 2000\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 +1000 2000\r\n",
            b"PROXY TCP4 10.0.0.256 10.0.0.2 1000 2000\r\n",
            b"PROXY TCP5 10.0.0.1 10.0.0.2 1000 2000\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 2000\r\r\n",
            b"PROXY TCP4 10.0.0.1\t10.0.0.2 1000 2000\r\n",
            b"PROXY \x00",
            b"PROXY TCP4\r ",
        ];
        for line in bad {
            assert_eq!(
                decode(line),
                Err(HeaderError::Malformed),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
        assert_eq!(decode(b"GET / HTTP/1.1\r\n"), Err(HeaderError::Missing));
        assert_eq!(decode(b"PROXX"), Err(HeaderError::Missing));
        assert_eq!(decode(b"proxy "), Err(HeaderError::Missing));
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(V1_MAX, b'x');
        assert_eq!(decode(&long), Err(HeaderError::Oversized));
        long.truncate(V1_MAX - 2);
        long.extend_from_slice(b"\r\n");
        assert_eq!(
            complete(&long).len,
            V1_MAX,
            "107 bytes is the longest allowed"
        );
    }

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn version_2_headers() {
        let ipv4 = [10, 0, 0, 1, 10, 0, 0, 2, 0x1f, 0x90, 0x01, 0xbb];
        let h = complete(&v2(1, 0x11, &ipv4));
        assert_eq!(h.len, 28);
        assert_eq!(
            h.addresses,
            Some((addr("10.0.0.1:8080"), addr("10.0.0.2:443")))
        );
        // TLVs after the addresses are skipped; the payload after the header is not read.
        let mut with_tlv = ipv4.to_vec();
        with_tlv.extend_from_slice(&[0x04, 0x00, 0x02, 0xab, 0xcd]);
        let mut bytes = v2(1, 0x11, &with_tlv);
        bytes.extend_from_slice(b"payload");
        assert_eq!(complete(&bytes).len, 33);
        let mut ipv6 = [0u8; 36];
        ipv6[15] = 1;
        ipv6[31] = 2;
        ipv6[32..36].copy_from_slice(&[0, 80, 0, 81]);
        assert_eq!(
            complete(&v2(1, 0x21, &ipv6)).addresses,
            Some((addr("[::1]:80"), addr("[::2]:81")))
        );
        // LOCAL, with or without addresses; UNSPEC; UNIX: the connection's own addresses.
        assert_eq!(complete(&v2(0, 0x00, &[])).addresses, None);
        assert_eq!(complete(&v2(0, 0x11, &ipv4)).addresses, None);
        assert_eq!(complete(&v2(1, 0x00, &[])).addresses, None);
        assert_eq!(complete(&v2(1, 0x31, &[0; 216])).addresses, None);
    }

    #[test]
    fn version_2_errors() {
        let ipv4 = [10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2];
        let whole = v2(1, 0x11, &ipv4);
        for cut in 0..whole.len() {
            assert_eq!(
                decode(&whole[..cut]),
                Ok(Decoded::Incomplete),
                "{cut} bytes"
            );
        }
        let mut bad_version = whole.clone();
        bad_version[12] = 0x11;
        assert_eq!(decode(&bad_version), Err(HeaderError::Malformed));
        let mut bad_command = whole.clone();
        bad_command[12] = 0x22;
        assert_eq!(decode(&bad_command), Err(HeaderError::Malformed));
        assert_eq!(
            decode(&v2(1, 0x11, &ipv4[..11])),
            Err(HeaderError::Malformed),
            "too short for its family"
        );
        assert_eq!(decode(&v2(1, 0x21, &[0; 12])), Err(HeaderError::Malformed));
        assert_eq!(decode(&v2(1, 0x41, &[0; 12])), Err(HeaderError::Malformed));
        assert_eq!(decode(&v2(1, 0x13, &[0; 12])), Err(HeaderError::Malformed));
        let mut huge = whole[..14].to_vec();
        huge.extend_from_slice(&((MAX_HEADER - 15) as u16).to_be_bytes());
        assert_eq!(decode(&huge), Err(HeaderError::Oversized));
        let fits = v2(1, 0x11, &[0; MAX_HEADER - 16]);
        assert_eq!(complete(&fits).len, MAX_HEADER);
        let mut not_quite = V2_SIGNATURE.to_vec();
        not_quite[11] = b'X';
        assert_eq!(decode(&not_quite), Err(HeaderError::Missing));
        assert_eq!(decode(b"\r\n\r\nHELLO"), Err(HeaderError::Missing));
    }

    #[test]
    fn encoded_headers_decode_to_what_was_encoded() {
        let cases = [
            ("127.1.2.3:40000", "127.0.0.1:8080"),
            ("[2001:db8::7]:1", "[::1]:65535"),
            ("[::ffff:10.0.0.1]:5", "[::ffff:10.0.0.2]:6"),
        ];
        for (src, dst) in cases {
            for version in [Version::V1, Version::V2] {
                let mut out = [0u8; MAX_ENCODED];
                let len = encode(version, addr(src), addr(dst), &mut out);
                let h = complete(&out[..len]);
                assert_eq!(h.len, len);
                let (s, d) = h.addresses.expect("addresses");
                assert_eq!(
                    (s.ip(), s.port(), d.ip(), d.port()),
                    (
                        addr(src).ip().to_canonical(),
                        addr(src).port(),
                        addr(dst).ip().to_canonical(),
                        addr(dst).port()
                    )
                );
            }
        }
        let mut out = [0u8; MAX_ENCODED];
        let len = encode(
            Version::V1,
            addr("192.168.0.1:56324"),
            addr("192.168.0.11:443"),
            &mut out,
        );
        assert_eq!(
            &out[..len],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        );
        // The longest line there is fits.
        let far = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe]:65535";
        let len = encode(Version::V1, addr(far), addr(far), &mut out);
        assert_eq!(complete(&out[..len]).len, len);
        assert_eq!(len, 104);
        // Mixed families: both sent as IPv6.
        let len = encode(Version::V2, addr("10.0.0.1:1"), addr("[::1]:2"), &mut out);
        assert_eq!(out[13], 0x21);
        assert_eq!(
            complete(&out[..len]).addresses,
            Some((addr("[::ffff:10.0.0.1]:1"), addr("[::1]:2")))
        );
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        /// Bytes that look like the start of a header more often than uniform bytes would.
        fn header_like() -> impl Strategy<Value = Vec<u8>> {
            let start = prop_oneof![
                Just(b"PROXY ".to_vec()),
                Just(b"PROXY TCP4 ".to_vec()),
                Just(b"PROXY TCP6 ".to_vec()),
                Just(b"PROXY UNKNOWN".to_vec()),
                Just(V2_SIGNATURE.to_vec()),
                Just(Vec::new()),
            ];
            let rest = prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..700),
                // Long printable lines, without and with a CRLF here and there.
                proptest::collection::vec(0x20u8..0x7f, 0..700),
                proptest::collection::vec(
                    prop_oneof![8 => 0x20u8..0x7f, 1 => Just(b'\r'), 1 => Just(b'\n')],
                    0..700
                ),
            ];
            (start, rest).prop_map(|(mut s, rest)| {
                s.extend(rest);
                s
            })
        }

        fn socket_addr() -> impl Strategy<Value = SocketAddr> {
            prop_oneof![
                (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
                (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                // A failure is printed with its minimal input; no file is left behind.
                failure_persistence: None,
                ..ProptestConfig::with_cases(4000)
            })]

            /// No input panics; a header is never longer than the input or the limit; an
            /// input is only ever incomplete while shorter than the limit (no header waits
            /// for more than MAX_HEADER bytes).
            #[test]
            fn any_input_is_decided_within_the_limit(bytes in header_like()) {
                match decode(&bytes) {
                    Ok(Decoded::Complete(h)) => {
                        prop_assert!(h.len <= bytes.len() && h.len <= MAX_HEADER);
                    }
                    Ok(Decoded::Incomplete) => prop_assert!(bytes.len() < MAX_HEADER),
                    Err(_) => {}
                }
            }

            /// What a prefix decides stays decided as more bytes arrive: an error stays an
            /// error, a complete header the same header. (tcplb peeks again at every new
            /// piece: a verdict must not depend on how the bytes were cut.)
            #[test]
            fn verdicts_are_final(bytes in header_like(), cut in 0usize..800) {
                let cut = cut.min(bytes.len());
                match decode(&bytes[..cut]) {
                    Ok(Decoded::Incomplete) => {}
                    Err(e) => prop_assert_eq!(decode(&bytes), Err(e)),
                    complete => prop_assert_eq!(decode(&bytes), complete),
                }
            }

            /// Every header written decodes to the addresses written (in one family), at
            /// exactly its length, whatever follows it, and is incomplete before its end.
            #[test]
            fn encoded_headers_round_trip(
                v2 in any::<bool>(),
                source in socket_addr(),
                destination in socket_addr(),
                payload in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let version = if v2 { Version::V2 } else { Version::V1 };
                let mut out = [0u8; MAX_ENCODED];
                let len = encode(version, source, destination, &mut out);
                let mut stream = out[..len].to_vec();
                stream.extend(&payload);
                let Ok(Decoded::Complete(h)) = decode(&stream) else {
                    return Err(TestCaseError::fail(format!("{:?}", decode(&stream))));
                };
                prop_assert_eq!(h.len, len);
                let (s, d) = h.addresses.expect("addresses");
                let same = |a: SocketAddr, b: SocketAddr| {
                    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
                };
                prop_assert!(same(s, source) && same(d, destination));
                for cut in 0..len {
                    prop_assert_eq!(decode(&stream[..cut]), Ok(Decoded::Incomplete));
                }
            }
        }
    }
}
