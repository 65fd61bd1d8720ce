//! Fuzzes the ClientHello reader: arbitrary bytes never panic, and the
//! result does not depend on how the bytes are split into pushes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::client_hello::{ClientHelloReader, HelloError, HelloProgress};

/// Large enough that the byte bound never triggers on fuzzer inputs, so the
/// split-invariance below is exact.
const MAX: usize = 1 << 20;

fn feed(data: &[u8], chunk: usize) -> (Result<HelloProgress, HelloError>, Vec<u8>) {
    let mut reader = ClientHelloReader::new(MAX);
    let mut last = Ok(HelloProgress::NeedMore);
    for piece in data.chunks(chunk.max(1)) {
        last = reader.push(piece);
        match &last {
            Ok(HelloProgress::Complete(_)) | Err(_) => break,
            Ok(HelloProgress::NeedMore) => {}
        }
    }
    (last, reader.into_raw())
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    if data.len() >= MAX {
        return;
    }
    let (whole, _) = feed(data, data.len());
    let (pieces, raw) = feed(data, usize::from(split % 17) + 1);
    // Completion can happen mid-chunk; then the whole-input run also kept
    // the trailing bytes. Errors and facts must agree.
    match (&whole, &pieces) {
        (Ok(HelloProgress::Complete(a)), Ok(HelloProgress::Complete(b))) => {
            assert_eq!(a, b);
            assert!(a.hello_len <= data.len());
            assert!(raw.len() >= a.hello_len);
            for name in &a.server_names {
                assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (Ok(HelloProgress::NeedMore), Ok(HelloProgress::NeedMore)) => {}
        (a, b) => panic!("split changed the result: {a:?} vs {b:?}"),
    }
});
