//! Feeds arbitrary bytes to the transmission-phase decoders, the way the datatap read loop
//! does: decode, drop the consumed prefix, repeat until more input is needed or the stream
//! is rejected. Every accepted request is also run through `validate`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_nbd_proto::TransmissionFlags;
use redoubt_nbd_proto::{decode_request, decode_request_header, validate, validate_negotiated};

fuzz_target!(|data: &[u8]| {
    let mut buffer = data;
    while let Ok(Some((request, consumed))) = decode_request(buffer) {
        assert!(consumed > 0 && consumed <= buffer.len());
        assert_eq!(request.payload.len(), request.header.payload_length_bytes());
        // Header-first decoding must agree with whole-request decoding.
        let header = decode_request_header(buffer)
            .ok()
            .flatten()
            .map(|(header, _)| header);
        assert_eq!(header, Some(request.header));
        let _ = validate(&request.header, 1 << 30, false);
        let _ = validate(&request.header, u64::MAX, true);
        let _ = validate_negotiated(&request.header, TransmissionFlags::HAS_FLAGS);
        buffer = &buffer[consumed..];
    }
});
