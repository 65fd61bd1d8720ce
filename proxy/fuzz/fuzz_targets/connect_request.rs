//! Fuzzes the request-head scanner and parser: arbitrary bytes never panic,
//! scanning byte by byte finds the same end as scanning at once, and a
//! parsed authority prints back to text that parses to the same authority.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::request::{HeadScanner, RequestLimits, parse_authority, parse_head};

fuzz_target!(|data: &[u8]| {
    let limits = RequestLimits {
        max_line_bytes: 512,
        max_head_bytes: 2048,
        max_headers: 16,
    };
    let whole = HeadScanner::new(limits).scan(data);
    let mut scanner = HeadScanner::new(limits);
    let mut stepped = Ok(None);
    for end in 1..=data.len() {
        stepped = scanner.scan(&data[..end]);
        if !matches!(stepped, Ok(None)) {
            break;
        }
    }
    if !data.is_empty() {
        assert_eq!(whole, stepped);
    }
    if let Ok(Some(len)) = whole {
        assert!(len <= data.len() && len <= limits.max_head_bytes);
        if let Ok(request) = parse_head(&data[..len]) {
            let authority = request.target.authority();
            assert_ne!(authority.port, 0);
            let again = parse_authority(authority.to_string().as_bytes(), None)
                .expect("a parsed authority prints to parseable text");
            assert_eq!(&again, authority);
        }
    }
});
