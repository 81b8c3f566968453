//! Feed arbitrary bytes to the replication protocol decoder frame after frame, as the LCA
//! and the ABA do with bytes from the network. It must never panic; every frame it accepts
//! must carry the next frame seq and re-encode to a frame that decodes to the same value;
//! leftover bytes at the end are a truncated frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redoubt_wire::{decode_frame, encode_frame, FrameReceiver, FRAME_HEADER_SIZE_BYTES};

fuzz_target!(|data: &[u8]| {
    let mut receiver = FrameReceiver::new();
    let mut rest = data;
    loop {
        let expected_seq = receiver.expected_seq();
        match receiver.decode(rest) {
            Ok(Some((frame, used))) => {
                assert!(used >= FRAME_HEADER_SIZE_BYTES && used <= rest.len());
                let Ok(Some((header, again, again_used))) = decode_frame(rest) else {
                    panic!("receiver accepted a frame the decoder rejects");
                };
                assert_eq!(header.frame_seq, expected_seq);
                assert_eq!(again_used, used);
                assert_eq!(again, frame);
                let mut reencoded = Vec::new();
                assert!(
                    encode_frame(&frame, header.version, header.frame_seq, &mut reencoded).is_ok()
                );
                let back = decode_frame(&reencoded).ok().flatten().map(|(_, f, _)| f);
                assert_eq!(back.as_ref(), Some(&frame));
                rest = &rest[used..];
            }
            Ok(None) => {
                assert_eq!(receiver.at_eof(rest).is_err(), !rest.is_empty());
                break;
            }
            Err(_) => break,
        }
    }
});
