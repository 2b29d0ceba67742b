//! The TLS ClientHello, read for routing and never consumed: the first message a TLS
//! client sends, parsed just far enough to learn the server name it asks for (SNI, RFC 6066
//! section 3) and the application protocols it offers (ALPN, RFC 7301). Pure code, no I/O:
//! [`parse`] is handed what the client has sent so far (tcplb peeks at it, the bytes stay
//! in the kernel for the backend) and says whether it holds a whole ClientHello, cannot be
//! one, or how many bytes there must be before asking again.
//!
//! What it reads (RFC 8446 sections 4.1.2 and 5.1; TLS 1.0 to 1.3 share it):
//!
//! ```text
//!  record:     type 22 (handshake) | version 3.x (2) | length (2, 1..=16384) | fragment
//!  handshake:  type 1 (client_hello) | length (3) | body, in one record's fragment or
//!              spread over several records' (a big hello may be, one byte each if the
//!              client likes; the pieces are gathered into the caller's scratch)
//!  body:       version (2) | random (32) | session id <0..32> | cipher suites <2..2^16-2>
//!              | compression methods <1..2^8-1> | extensions <0..2^16-1> (may be absent)
//!  server_name (0):  list <1..2^16-1> of exactly one host_name (type 0) <1..255>
//!  ALPN (16):        list <2..2^16-1> of protocol names <1..255>
//! ```
//!
//! A host name must be visible ASCII (RFC 6066 wants A-labels: it is then safe in a log
//! line as it stands); more than one name, a name of another type, or either extension
//! twice is malformed (OpenSSL refuses the same). The hello is looked at only up to the
//! caller's `cap` bytes on the wire; what lies past it is never read. Nothing allocates.
//!
//! The byte counts [`Parsed::Incomplete`] gives are lower bounds on the bytes before a
//! ClientHello can be complete, tight for the usual one-record hello: the caller need not
//! look again before that many have arrived, so a client that sends its hello a byte at a
//! time costs a few parses, not one per byte. (A hello spread over many small records
//! raises the bound record by record: each parse then finds at least a fixed share of what
//! is still missing, so parses stay few.) A verdict that the bytes are *not* a hello may
//! come sooner; one that they are never does.

/// What a client's first bytes cannot be routed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The first bytes are not a TLS handshake record (another protocol, or SSL 2).
    NotTls,
    /// The ClientHello does not fit in `cap` bytes.
    TooBig,
    /// TLS records, but not a well-formed ClientHello in them.
    Malformed,
}

/// What the bytes so far make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// Not a whole ClientHello yet, and none can be before there are `needed` bytes in all
    /// (more than were given, at most `cap`).
    Incomplete {
        needed: usize,
    },
    Hello(Hello<'a>),
    Failed(Failure),
}

/// A complete ClientHello's routing fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The host name asked for, as sent (1 to 255 bytes of visible ASCII).
    pub server_name: Option<&'a [u8]>,
    /// The ALPN protocol name list, checked (empty: no ALPN extension).
    alpn: &'a [u8],
}

impl<'a> Hello<'a> {
    /// The application protocols offered, in the client's order.
    pub fn protocols(&self) -> Protocols<'a> {
        Protocols { rest: self.alpn }
    }
}

/// The protocol names of an ALPN list.
#[derive(Clone, Debug)]
pub struct Protocols<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Protocols<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let mut r = Reader(self.rest);
        let name = r.vec8()?;
        self.rest = r.0;
        Some(name)
    }
}

/// The longest host name (RFC 6066: a `HostName` is a DNS name, 255 bytes at most).
pub const MAX_NAME: usize = 255;
/// Default for how many bytes a ClientHello may take on the wire (`max-hello`).
pub const DEFAULT_CAP: usize = 16 * 1024;

const RECORD_HEADER: usize = 5;
const HANDSHAKE_HEADER: usize = 4;
const CONTENT_HANDSHAKE: u8 = 22;
const CLIENT_HELLO: u8 = 1;
/// The largest plaintext fragment a record may carry.
const MAX_FRAGMENT: usize = 1 << 14;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const HOST_NAME: u8 = 0;

/// Parses the first bytes a client sent, looking at no more than `cap` of them. `scratch`
/// gathers a hello spread over several records and must hold `cap` bytes (a hello that
/// does not fit in it is [`Failure::TooBig`]); a hello in one record is read where it lies.
pub fn parse<'a>(input: &'a [u8], cap: usize, scratch: &'a mut [u8]) -> Parsed<'a> {
    let input = &input[..input.len().min(cap)];
    if cap < RECORD_HEADER + HANDSHAKE_HEADER {
        return Parsed::Failed(Failure::TooBig); // no hello fits, whatever the bytes
    }
    match input {
        [] => return incomplete(1, cap),
        [kind, ..] if *kind != CONTENT_HANDSHAKE => return Parsed::Failed(Failure::NotTls),
        [_, major, ..] if *major != 3 => return Parsed::Failed(Failure::NotTls),
        _ => {}
    }
    let mut record = 0; // where the current record starts
    let mut header = [0u8; HANDSHAKE_HEADER];
    let mut have = 0; // bytes of the handshake message seen, its header included
    let mut total: Option<usize> = None; // the message's length, once its header is seen
    let mut first = 0..0; // where the message's bytes lie in the first record
    let mut gathered = false; // whether `scratch` holds them (the message spans records)
    loop {
        // Another record must come, with at least `want` bytes of the message: if that
        // passes the cap, no byte of it need be looked at (nor can change the verdict).
        let want = total.unwrap_or(HANDSHAKE_HEADER) - have;
        if record + RECORD_HEADER + want > cap {
            return Parsed::Failed(Failure::TooBig);
        }
        if input.len() < record + RECORD_HEADER {
            // A later record's header, in part: its first two bytes can already be wrong.
            let bad = |at: usize, want: u8| input.get(at).is_some_and(|&b| b != want);
            if record > 0 && (bad(record, CONTENT_HANDSHAKE) || bad(record + 1, 3)) {
                return Parsed::Failed(Failure::Malformed);
            }
            return incomplete(record + RECORD_HEADER + want, cap);
        }
        if input[record] != CONTENT_HANDSHAKE || input[record + 1] != 3 {
            return Parsed::Failed(Failure::Malformed);
        }
        let length = usize::from(u16::from_be_bytes([input[record + 3], input[record + 4]]));
        if length == 0 || length > MAX_FRAGMENT {
            return Parsed::Failed(Failure::Malformed);
        }
        let start = record + RECORD_HEADER;
        let end = start + length;
        let arrived = &input[start..end.min(input.len())];
        let mut used = 0;
        loop {
            let n = (total.unwrap_or(HANDSHAKE_HEADER) - have).min(arrived.len() - used);
            if n == 0 {
                break;
            }
            let piece = &arrived[used..used + n];
            if have < HANDSHAKE_HEADER {
                header[have..have + n].copy_from_slice(piece);
                if header[0] != CLIENT_HELLO {
                    return Parsed::Failed(Failure::Malformed);
                }
            }
            if record == 0 {
                first = start..start + used + n;
            } else {
                if !gathered {
                    if first.len() > scratch.len() {
                        return Parsed::Failed(Failure::TooBig);
                    }
                    scratch[..first.len()].copy_from_slice(&input[first.clone()]);
                    gathered = true;
                }
                let Some(into) = scratch.get_mut(have..have + n) else {
                    return Parsed::Failed(Failure::TooBig);
                };
                into.copy_from_slice(piece);
            }
            have += n;
            used += n;
            if total.is_none() && have == HANDSHAKE_HEADER {
                let body = u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize;
                let whole = HANDSHAKE_HEADER + body;
                if whole > scratch.len() {
                    return Parsed::Failed(Failure::TooBig);
                }
                total = Some(whole);
            }
        }
        if total == Some(have) {
            let message = if gathered {
                &scratch[..have]
            } else {
                &input[first]
            };
            return match client_hello(&message[HANDSHAKE_HEADER..]) {
                Some(hello) => Parsed::Hello(hello),
                None => Parsed::Failed(Failure::Malformed),
            };
        }
        if arrived.len() < length {
            let want = total.unwrap_or(HANDSHAKE_HEADER) - have;
            let left = length - arrived.len();
            let needed = if want <= left {
                input.len() + want
            } else {
                end + RECORD_HEADER + (want - left)
            };
            if needed > cap && have == 0 && input.len() < cap {
                // Too big, unless the message's first byte, yet to come within the cap,
                // says it is no ClientHello at all: that verdict must not depend on how
                // many bytes had come when the parser was asked.
                return Parsed::Incomplete {
                    needed: input.len() + 1,
                };
            }
            return incomplete(needed, cap);
        }
        record = end;
    }
}

/// Waiting for `needed` bytes, or too big if they would pass the cap.
fn incomplete(needed: usize, cap: usize) -> Parsed<'static> {
    if needed > cap {
        Parsed::Failed(Failure::TooBig)
    } else {
        Parsed::Incomplete { needed }
    }
}

/// The body of a ClientHello (after its 4-byte header), exactly; `None` if malformed.
fn client_hello(body: &[u8]) -> Option<Hello<'_>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy version, random
    if r.vec8()?.len() > 32 {
        return None; // session id
    }
    let suites = r.vec16()?;
    if suites.len() < 2 || suites.len() % 2 != 0 {
        return None;
    }
    if r.vec8()?.is_empty() {
        return None; // compression methods
    }
    let mut hello = Hello {
        server_name: None,
        alpn: &[],
    };
    if r.0.is_empty() {
        return Some(hello); // no extensions at all (TLS 1.0 allows it)
    }
    let mut extensions = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return None;
    }
    let (mut named, mut offered) = (false, false);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        match kind {
            EXT_SERVER_NAME if !named => {
                named = true;
                hello.server_name = Some(server_name(data)?);
            }
            EXT_ALPN if !offered => {
                offered = true;
                hello.alpn = alpn(data)?;
            }
            EXT_SERVER_NAME | EXT_ALPN => return None, // twice
            _ => {}
        }
    }
    Some(hello)
}

/// A server_name extension's one host name.
fn server_name(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    if !r.0.is_empty() || list.u8()? != HOST_NAME {
        return None;
    }
    let name = list.vec16()?;
    let visible = name.iter().all(|b| (0x21..=0x7e).contains(b));
    (list.0.is_empty() && !name.is_empty() && name.len() <= MAX_NAME && visible).then_some(name)
}

/// An ALPN extension's protocol name list, checked: at least one name, none empty.
fn alpn(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader(data);
    let list = r.vec16()?;
    if !r.0.is_empty() || list.is_empty() {
        return None;
    }
    let mut names = Reader(list);
    while !names.0.is_empty() {
        if names.vec8()?.is_empty() {
            return None;
        }
    }
    Some(list)
}

/// Big-endian fields off the front of a slice; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

/// ClientHellos made to order, for tests here and elsewhere in the crate.
#[cfg(test)]
pub mod testing {
    /// A ClientHello handshake message (header included) naming `server_name` and offering
    /// `alpn`, with `padding` bytes of a padding extension (RFC 7685) after them, as
    /// post-quantum key shares make hellos big.
    pub fn message(server_name: Option<&[u8]>, alpn: &[&[u8]], padding: usize) -> Vec<u8> {
        let mut extensions = Vec::new();
        // supported_versions (43): TLS 1.3 and 1.2, as a real hello has it
        extensions.extend([0, 43, 0, 5, 4, 3, 4, 3, 3]);
        if let Some(name) = server_name {
            let n = name.len() as u16;
            extensions.extend([0, 0]);
            extensions.extend((n + 5).to_be_bytes());
            extensions.extend((n + 3).to_be_bytes());
            extensions.push(0);
            extensions.extend(n.to_be_bytes());
            extensions.extend(name);
        }
        if !alpn.is_empty() {
            let list: Vec<u8> = alpn
                .iter()
                .flat_map(|p| std::iter::once(p.len() as u8).chain(p.iter().copied()))
                .collect();
            extensions.extend([0, 16]);
            extensions.extend((list.len() as u16 + 2).to_be_bytes());
            extensions.extend((list.len() as u16).to_be_bytes());
            extensions.extend(list);
        }
        if padding > 0 {
            extensions.extend([0, 21]);
            extensions.extend((padding as u16).to_be_bytes());
            extensions.extend(std::iter::repeat_n(0, padding));
        }
        let mut body = vec![3, 3];
        body.extend([7u8; 32]); // random
        body.push(32);
        body.extend([9u8; 32]); // session id
        body.extend([0, 4, 0x13, 0x01, 0x13, 0x02]); // two cipher suites
        body.extend([1, 0]); // null compression
        body.extend((extensions.len() as u16).to_be_bytes());
        body.extend(extensions);
        let mut message = vec![1];
        message.extend(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend(body);
        message
    }

    /// `message` framed in handshake records, a new record at each of `cuts` (offsets into
    /// the message, ascending; records larger than 16 KiB are split further).
    pub fn records(message: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&message.len())) {
            let to = to.clamp(from, message.len());
            for piece in message[from..to].chunks(1 << 14) {
                wire.extend([22, 3, 1]);
                wire.extend((piece.len() as u16).to_be_bytes());
                wire.extend(piece);
            }
            from = to;
        }
        wire
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{message, records};
    use super::*;

    /// A hello Python's `ssl` module (OpenSSL 3.0) sent: server_hostname `API.Example.com`,
    /// ALPN `h2`, `http/1.1`, padded to 512 bytes by OpenSSL.
    const PYTHON_HELLO: &[u8] = include_bytes!("../tests/data/client_hello_python.bin");

    /// The name and protocols of a hello, or what `parse` said instead.
    type Verdict = Result<(Option<Vec<u8>>, Vec<Vec<u8>>), Parsed<'static>>;

    fn parse_all(input: &[u8], cap: usize) -> Verdict {
        let mut scratch = vec![0u8; cap];
        match parse(input, cap, &mut scratch) {
            Parsed::Hello(h) => Ok((
                h.server_name.map(<[u8]>::to_vec),
                h.protocols().map(<[u8]>::to_vec).collect(),
            )),
            Parsed::Incomplete { needed } => Err(Parsed::Incomplete { needed }),
            Parsed::Failed(f) => Err(Parsed::Failed(f)),
        }
    }

    #[test]
    fn a_real_hello_gives_its_name_and_protocols() {
        let (name, alpn) = parse_all(PYTHON_HELLO, DEFAULT_CAP).expect("a hello");
        assert_eq!(name.as_deref(), Some(&b"API.Example.com"[..]));
        assert_eq!(alpn, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        // Bytes after it (the client's next records) change nothing.
        let mut more = PYTHON_HELLO.to_vec();
        more.extend([23, 3, 3, 0, 1, 0]);
        assert_eq!(
            parse_all(&more, DEFAULT_CAP),
            parse_all(PYTHON_HELLO, DEFAULT_CAP)
        );
    }

    #[test]
    fn a_real_hello_cut_short_asks_for_its_length_at_most() {
        let mut scratch = vec![0u8; DEFAULT_CAP];
        let mut parses = 0;
        let mut at = 0;
        // As the worker does: look again only once `needed` bytes are there.
        loop {
            parses += 1;
            match parse(&PYTHON_HELLO[..at], DEFAULT_CAP, &mut scratch) {
                Parsed::Incomplete { needed } => {
                    assert!(
                        needed > at && needed <= PYTHON_HELLO.len(),
                        "{at}: {needed}"
                    );
                    at = needed;
                }
                Parsed::Hello(_) => break,
                other => panic!("{at}: {other:?}"),
            }
        }
        assert_eq!(at, PYTHON_HELLO.len());
        assert!(parses <= 5, "{parses} parses for a one-record hello");
    }

    #[test]
    fn a_hello_in_one_byte_records_takes_few_parses() {
        // 2 KiB of message, one byte a record: 12 KiB on the wire. Each parse that `needed`
        // allows finds a sixth of what is missing, so the parses grow with the log of it.
        let m = message(Some(b"slow.example.com"), &[b"h2"], 1800);
        let wire = records(&m, &(1..m.len()).collect::<Vec<_>>());
        let mut scratch = vec![0u8; DEFAULT_CAP];
        let (mut at, mut parses) = (0, 0);
        loop {
            parses += 1;
            match parse(&wire[..at], DEFAULT_CAP, &mut scratch) {
                Parsed::Incomplete { needed } => at = needed,
                Parsed::Hello(h) => {
                    assert_eq!(h.server_name, Some(&b"slow.example.com"[..]));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(at, wire.len());
        assert!(parses < 64, "{parses} parses");
    }

    #[test]
    fn hellos_without_name_or_protocols() {
        let wire = records(&message(None, &[], 0), &[]);
        assert_eq!(parse_all(&wire, DEFAULT_CAP), Ok((None, vec![])));
        // No extensions at all.
        let mut bare = message(None, &[], 0);
        let extensions = bare.len() - 2 - 9;
        bare.truncate(bare.len() - 2 - 9);
        let body = (bare.len() - 4) as u32;
        bare[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
        assert_eq!(extensions, bare.len());
        assert_eq!(
            parse_all(&records(&bare, &[]), DEFAULT_CAP),
            Ok((None, vec![]))
        );
    }

    #[test]
    fn other_protocols_are_not_tls_at_their_first_byte() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"\x80\x2e\x01\x03\x01",
            b"SSH-2.0-x",
            b"\x16\x02",
        ] {
            assert_eq!(
                parse_all(input, DEFAULT_CAP),
                Err(Parsed::Failed(Failure::NotTls)),
                "{input:?}"
            );
        }
        assert_eq!(
            parse_all(b"", DEFAULT_CAP),
            Err(Parsed::Incomplete { needed: 1 })
        );
    }

    #[test]
    fn a_hello_over_records_is_gathered() {
        let m = message(Some(b"grpc.example.com"), &[b"h2"], 3000);
        let one = parse_all(&records(&m, &[]), DEFAULT_CAP);
        assert_eq!(
            one.as_ref().map(|(n, _)| n.clone()),
            Ok(Some(b"grpc.example.com".to_vec()))
        );
        for cuts in [
            vec![1],
            vec![2, 3],
            vec![4],
            vec![50, 51, 52],
            (1..m.len()).collect(),
        ] {
            assert_eq!(parse_all(&records(&m, &cuts), 64 * 1024), one, "{cuts:?}");
        }
    }

    #[test]
    fn too_big_is_known_from_the_length_before_the_bytes() {
        let m = message(Some(b"big.example.com"), &[], 20_000);
        let wire = records(&m, &[]);
        // The handshake header alone says it will not fit in 16 KiB.
        assert_eq!(
            parse_all(&wire[..9], DEFAULT_CAP),
            Err(Parsed::Failed(Failure::TooBig))
        );
        assert_eq!(
            parse_all(&wire, 64 * 1024).map(|(n, _)| n),
            Ok(Some(b"big.example.com".to_vec()))
        );
        // A cap smaller than a one-record hello: too big before its record is whole.
        let small = records(&message(Some(b"a.example.com"), &[], 0), &[]);
        assert_eq!(
            parse_all(&small, small.len() - 1),
            Err(Parsed::Failed(Failure::TooBig))
        );
    }

    #[test]
    fn a_verdict_does_not_depend_on_how_many_bytes_had_come() {
        // (Found by the fuzzer.) Under a 9-byte cap, a record of 3 bytes cannot hold a
        // hello's 4-byte header, and more records would pass the cap: too big, unless its
        // first byte is not client_hello's, which no earlier look may rule out.
        let cases: [(&[u8], Parsed); 3] = [
            (&[22, 3, 1, 0, 3], Parsed::Incomplete { needed: 6 }),
            (&[22, 3, 1, 0, 3, 28], Parsed::Failed(Failure::Malformed)),
            (&[22, 3, 1, 0, 3, 1], Parsed::Failed(Failure::TooBig)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input, 9, &mut [0u8; 9]), want, "{input:?}");
        }
        // A cap below a record and a handshake header fits no hello at all.
        assert_eq!(
            parse(b"", 8, &mut [0u8; 8]),
            Parsed::Failed(Failure::TooBig)
        );
        assert_eq!(
            parse(b"GET", 8, &mut [0u8; 8]),
            Parsed::Failed(Failure::TooBig)
        );
    }

    #[test]
    fn malformed_hellos() {
        let good = message(Some(b"x.example.com"), &[b"h2"], 0);
        let name_at = good
            .windows(13)
            .position(|w| w == b"x.example.com")
            .expect("name");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("a record of length 0", vec![22, 3, 1, 0, 0]),
            ("a record over 16 KiB", vec![22, 3, 1, 0x40, 1]),
            ("not a client_hello", records(&[2, 0, 0, 1, 0], &[])),
            ("an alert between pieces", {
                let mut w = records(&good[..10], &[]);
                w.extend([21, 3, 3, 0, 2, 2, 40]);
                w
            }),
            ("a name with a space", {
                let mut m = good.clone();
                m[name_at + 1] = b' ';
                records(&m, &[])
            }),
            ("a body shorter than its fields", {
                let mut m = message(None, &[], 0);
                m.truncate(40);
                m[1..4].copy_from_slice(&36u32.to_be_bytes()[1..]);
                records(&m, &[])
            }),
            ("two server_name extensions", {
                let mut m = message(Some(b"a.b"), &[], 0);
                let ext = [0u8, 0, 0, 8, 0, 6, 0, 0, 3, b'a', b'.', b'b'];
                m.extend(ext);
                let ext_len_at = 4 + 2 + 32 + 1 + 32 + 6 + 2;
                let n = u16::from_be_bytes([m[ext_len_at], m[ext_len_at + 1]]) + 12;
                m[ext_len_at..ext_len_at + 2].copy_from_slice(&n.to_be_bytes());
                let body = (m.len() - 4) as u32;
                m[1..4].copy_from_slice(&body.to_be_bytes()[1..]);
                records(&m, &[])
            }),
        ];
        for (what, wire) in cases {
            assert_eq!(
                parse_all(&wire, DEFAULT_CAP),
                Err(Parsed::Failed(Failure::Malformed)),
                "{what}"
            );
        }
    }

    #[test]
    fn nothing_past_the_cap_is_read() {
        let wire = records(&message(Some(b"a.example.com"), &[], 100), &[]);
        let cap = wire.len();
        let mut longer = wire.clone();
        longer.extend([0xff; 100]);
        assert_eq!(parse_all(&longer, cap), parse_all(&wire, cap));
        // A scratch smaller than a spread-out message: too big, not a panic.
        let spread = records(&message(Some(b"a.example.com"), &[], 100), &[7]);
        let mut small = [0u8; 64];
        assert_eq!(
            parse(&spread, DEFAULT_CAP, &mut small),
            Parsed::Failed(Failure::TooBig)
        );
    }

    mod properties {
        use super::super::testing::{message, records};
        use super::super::*;
        use super::parse_all;
        use proptest::prelude::*;

        /// A host name of 1 to 64 labels' worth of visible ASCII.
        fn name() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(0x21u8..0x7f, 1..=MAX_NAME)
        }

        fn protocols() -> impl Strategy<Value = Vec<Vec<u8>>> {
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 0..12)
        }

        /// A valid hello, and where to cut it into records.
        fn hello() -> impl Strategy<Value = (Vec<u8>, Option<Vec<u8>>, Vec<Vec<u8>>)> {
            (proptest::option::of(name()), protocols(), 0usize..4000).prop_map(
                |(name, alpn, padding)| {
                    let refs: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
                    (message(name.as_deref(), &refs, padding), name, alpn)
                },
            )
        }

        const CAP: usize = 64 * 1024;

        proptest! {
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::with_cases(1000)
            })]

            /// However the hello is cut into records and whatever follows it, the same
            /// name and protocols come out.
            #[test]
            fn any_framing_gives_the_same_hello(
                (m, name, alpn) in hello(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
                after in proptest::collection::vec(any::<u8>(), 0..20),
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(m.len())).collect();
                cuts.sort_unstable();
                let mut wire = records(&m, &cuts);
                wire.extend(after);
                prop_assert_eq!(parse_all(&wire, CAP), Ok((name, alpn)));
            }

            /// However the wire bytes arrive, the parses that `needed` asks for find the
            /// hello, each one only when its bytes are there, and never before its end;
            /// and they stay few (each at least halves the distance or ends a record).
            #[test]
            fn any_split_of_the_bytes_routes_the_same(
                (m, name, alpn) in hello(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            ) {
                let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(m.len())).collect();
                cuts.sort_unstable();
                let wire = records(&m, &cuts);
                let mut scratch = vec![0u8; CAP];
                for arrived in 0..wire.len() {
                    match parse(&wire[..arrived], CAP, &mut scratch) {
                        Parsed::Incomplete { needed } => {
                            prop_assert!(needed > arrived && needed <= wire.len());
                        }
                        other => prop_assert!(false, "{} of {} bytes: {:?}", arrived, wire.len(), other),
                    }
                }
                let mut at = 0;
                let mut parses = 0;
                loop {
                    parses += 1;
                    match parse(&wire[..at], CAP, &mut scratch) {
                        Parsed::Incomplete { needed } => at = needed,
                        _ => break,
                    }
                }
                prop_assert_eq!(at, wire.len());
                prop_assert!(parses <= 8 + 3 * cuts.len(), "{} parses", parses);
                prop_assert_eq!(parse_all(&wire, CAP), Ok((name, alpn)));
            }

            /// No input panics; nothing past the cap is looked at; a verdict, once given,
            /// stays as more bytes arrive; incomplete always asks for more than it has.
            #[test]
            fn any_input_is_safe_and_verdicts_are_final(
                start in prop_oneof![
                    Just(vec![22u8, 3, 1]),
                    Just(vec![22u8, 3, 3, 0, 40, 1, 0, 0]),
                    // Records too short for a handshake header.
                    Just(vec![22u8, 3, 1, 0, 3]),
                    Just(vec![22u8, 3, 1, 0, 1, 1, 22, 3, 1, 0, 2]),
                    Just(Vec::new()),
                ],
                rest in proptest::collection::vec(any::<u8>(), 0..600),
                // Small caps and short cuts often: verdicts near the cap and the start.
                cap in prop_oneof![1usize..32, 1usize..700],
                cut in prop_oneof![0usize..16, 0usize..700],
            ) {
                let mut input = start;
                input.extend(rest);
                let cut = cut.min(input.len());
                let whole = parse_all(&input, cap);
                let mut past = input.clone();
                past.extend([0xa5; 64]);
                prop_assert_eq!(parse_all(&past[..past.len().min(cap)], cap), parse_all(&past, cap));
                let mut scratch = vec![0u8; cap];
                match parse(&input[..cut], cap, &mut scratch) {
                    Parsed::Incomplete { needed } => {
                        prop_assert!(needed > cut.min(cap) && needed <= cap);
                    }
                    _ => prop_assert_eq!(parse_all(&input[..cut], cap), whole),
                }
            }
        }
    }
}
