//! Fuzzes the ClientHello parser (`tcplb::tls_hello::parse`), which reads the first bytes
//! of every client of a service with `routes`: no input may panic or make it look past its
//! cap; incomplete always asks for more than it has and no more than the cap; a verdict
//! given for a prefix stays as bytes arrive; and a handshake message gives the same verdict
//! however it is cut into TLS records.
//!
//! cargo +nightly fuzz run client_hello
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcplb::tls_hello::{Parsed, parse};

/// What a parse said, owned, so two parses can be compared.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Incomplete(usize),
    Hello(Option<Vec<u8>>, Vec<Vec<u8>>),
    Failed(tcplb::tls_hello::Failure),
}

fn verdict(input: &[u8], cap: usize) -> Verdict {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with_borrow_mut(|scratch| {
        // Dirty from the last input: the parser must not care what the scratch holds.
        scratch.resize(cap.max(scratch.len()), 0xa5);
        parsed(parse(input, cap, &mut scratch[..cap]), input.len(), cap)
    })
}

/// What `parse` said of `len` bytes under `cap`, owned (and checked: incomplete asks for
/// more than it had, and no more than the cap).
fn parsed(parsed: Parsed, len: usize, cap: usize) -> Verdict {
    match parsed {
        Parsed::Incomplete { needed } => {
            assert!(needed > len.min(cap) && needed <= cap, "{needed}");
            Verdict::Incomplete(needed)
        }
        Parsed::Hello(h) => Verdict::Hello(
            h.server_name.map(<[u8]>::to_vec),
            h.protocols().map(<[u8]>::to_vec).collect(),
        ),
        Parsed::Failed(f) => Verdict::Failed(f),
    }
}

/// `message` in handshake records, cut where `cuts` says (each byte a piece's length).
fn records(message: &[u8], cuts: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = message;
    let mut sizes = cuts.iter().map(|&c| usize::from(c).max(1));
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len()).min(1 << 14);
        wire.extend([22, 3, 1]);
        wire.extend((n as u16).to_be_bytes());
        wire.extend(&rest[..n]);
        rest = &rest[n..];
    }
    wire
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        // Raw bytes as a client might send them, under a cap from 1 byte up.
        let cap = 1 + usize::from(mode >> 1) * 37;
        let whole = verdict(data, cap);
        let mut past = data.to_vec();
        past.extend([0xa5; 64]);
        assert_eq!(
            verdict(&past[..past.len().min(cap)], cap),
            verdict(&past, cap),
            "bytes past the cap changed the verdict"
        );
        for cut in 0..data.len().min(cap + 1) {
            match verdict(&data[..cut], cap) {
                Verdict::Incomplete(_) => {}
                decided => assert_eq!(decided, whole, "the first {cut} bytes decide otherwise"),
            }
        }
    } else {
        // A handshake message: in one record, and cut into records as the fuzzer likes.
        let cut_count = usize::from(mode >> 1).min(data.len());
        let (cuts, message) = data.split_at(cut_count);
        let cap = 64 * 1024;
        let one = verdict(&records(message, &[]), cap);
        let many = verdict(&records(message, cuts), cap);
        match (&one, &many) {
            (Verdict::Incomplete(_), Verdict::Incomplete(_)) => {}
            _ => assert_eq!(one, many, "the framing changed the verdict"),
        }
    }
});
