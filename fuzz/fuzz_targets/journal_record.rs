//! Feed arbitrary bytes to the journal record decoder, record after record, as recovery and
//! the ABA do with bytes from disk or the network. It must never panic, and every record it
//! accepts must re-encode to exactly the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_journal::{decode, encode, RECORD_HEADER_SIZE_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((record, used))) = decode(rest) {
        assert!(used >= RECORD_HEADER_SIZE_BYTES);
        assert!(used <= rest.len());
        assert_eq!(record.header.validate(record.payload), Ok(()));
        let mut again = Vec::new();
        encode(&record.header, record.payload, &mut again);
        assert_eq!(&again[..], &rest[..used]);
        rest = &rest[used..];
    }
});
