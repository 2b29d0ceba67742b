//! Fuzzes the PROXY protocol decoder (`tcplb::proxy_protocol::decode`), which reads the
//! first bytes of every client with `--accept-proxy`: no input may panic, loop or make it
//! look past 536 bytes; what a prefix decides stays decided as bytes arrive; and a header
//! it accepts, written again by the encoder, reads back the same.
//!
//! cargo +nightly fuzz run proxy_header
#![no_main]

use libfuzzer_sys::fuzz_target;
use tcplb::proxy_protocol::{Decoded, MAX_ENCODED, MAX_HEADER, Version, decode, encode};

fuzz_target!(|data: &[u8]| {
    let whole = decode(data);
    match whole {
        Ok(Decoded::Complete(h)) => {
            assert!(h.len <= data.len() && h.len <= MAX_HEADER);
            if let Some((source, destination)) = h.addresses {
                for version in [Version::V1, Version::V2] {
                    let mut out = [0u8; MAX_ENCODED];
                    let len = encode(version, source, destination, &mut out);
                    let Ok(Decoded::Complete(again)) = decode(&out[..len]) else {
                        panic!("an encoded header does not decode");
                    };
                    assert_eq!(again.len, len);
                    let (s, d) = again.addresses.expect("addresses");
                    assert_eq!(s.port(), source.port());
                    assert_eq!(d.port(), destination.port());
                    assert_eq!(s.ip().to_canonical(), source.ip().to_canonical());
                    assert_eq!(d.ip().to_canonical(), destination.ip().to_canonical());
                }
            }
        }
        Ok(Decoded::Incomplete) => assert!(data.len() < MAX_HEADER),
        Err(_) => {}
    }
    // Every prefix: undecided, or decided as the whole is.
    for cut in 0..data.len().min(MAX_HEADER + 1) {
        match decode(&data[..cut]) {
            Ok(Decoded::Incomplete) => {}
            decided => assert_eq!(decided, whole, "the first {cut} bytes decide otherwise"),
        }
    }
});
