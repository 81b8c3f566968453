//! Feeds arbitrary bytes to the handshake decoders: first the client flags, then options until
//! more input is needed or the stream is rejected, as the datatap's handshake loop does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_nbd_proto::{decode_client_flags, decode_option};

fuzz_target!(|data: &[u8]| {
    let mut buffer = data;
    if let Ok(Some((_, consumed))) = decode_client_flags(buffer) {
        assert!(consumed <= buffer.len());
    }
    while let Ok(Some((request, consumed))) = decode_option(buffer) {
        assert!(consumed > 0 && consumed <= buffer.len());
        let _ = request.option();
        buffer = &buffer[consumed..];
    }
});
