//! Session state machines: handshake checks, resume position, continuity, flow control.

use redoubt_journal::{GroupId, OwnedRecord, RecordHeader, RecordKind};
use redoubt_wire::*;

const GROUP: GroupId = GroupId([0x42; 16]);

fn sender_config() -> SenderConfig {
    SenderConfig {
        group_id: GROUP,
        group_name: "payroll".into(),
        config_version: 3,
        sender_name: "prod-a".into(),
        target_name: "dr-1".into(),
        in_flight_bytes_max: 1000,
    }
}

fn receiver_config() -> ReceiverConfig {
    ReceiverConfig {
        group_id: GROUP,
        group_name: "payroll".into(),
        server_name: "dr-1".into(),
        config_version: 3,
    }
}

fn journal(first_seq: u64, last_seq: u64) -> JournalPosition {
    JournalPosition {
        first_seq,
        last_seq,
    }
}

fn batch(first_seq: u64, count: u64) -> RecordsBatch {
    // Each record is 64 + 36 = 100 bytes.
    let mut builder = RecordsBatchBuilder::new(BATCH_BYTES_MAX);
    for seq in first_seq..first_seq + count {
        let record = OwnedRecord {
            header: RecordHeader {
                kind: RecordKind::Write,
                lv_id: 1,
                offset_bytes: 0,
                length_bytes: 36,
                seq,
                timestamp_ns: seq,
            },
            payload: vec![7; 36],
        };
        assert_eq!(builder.push_owned(&record).unwrap(), BatchPush::Added);
    }
    builder.finish(None).unwrap()
}

fn refused(reply: HelloReply) -> RefuseCode {
    match reply {
        HelloReply::Refuse(refuse) => refuse.code,
        HelloReply::Welcome(welcome) => panic!("expected a refusal, got {welcome:?}"),
    }
}

/// Handshake through the codec; returns both sessions streaming.
fn connected(aba_durable: u64, prod: JournalPosition) -> (SenderSession, ReceiverSession, u64) {
    let mut lca = SenderSession::new(sender_config());
    let mut aba = ReceiverSession::new(receiver_config(), aba_durable, aba_durable, false).unwrap();
    let mut wire = Vec::new();
    let mut lca_out = FrameSequencer::new();
    lca_out
        .encode(&Frame::Hello(lca.hello(prod).unwrap()), &mut wire)
        .unwrap();
    let (frame, _) = FrameReceiver::new().decode(&wire).unwrap().unwrap();
    let Frame::Hello(hello) = frame else {
        panic!("not a hello")
    };
    let HelloReply::Welcome(welcome) = aba.on_hello(&hello).unwrap() else {
        panic!("refused")
    };
    let Start::FromSeq(from) = lca.on_welcome(&welcome, prod).unwrap() else {
        panic!("full resync")
    };
    assert_eq!(lca.version(), aba.version());
    (lca, aba, from)
}

#[test]
fn resume_continues_after_the_receivers_durable_seq() {
    let (lca, aba, from) = connected(41, journal(10, 99));
    assert_eq!(from, 42);
    assert_eq!(lca.next_seq(), 42);
    assert_eq!(aba.received_seq(), 41);
    // A brand-new replica against a journal that still holds seq 1 starts at 1, not 0.
    let (_, _, from) = connected(0, journal(1, 5));
    assert_eq!(from, 1);
    // A caught-up replica against an empty tail starts at the next seq to be written.
    let (_, _, from) = connected(99, journal(10, 99));
    assert_eq!(from, 100);
}

#[test]
fn receiver_refuses_bad_hellos() {
    let lca = SenderSession::new(sender_config());
    let good = lca.hello(journal(10, 99)).unwrap();
    let answer = |hello: &Hello, durable: u64| {
        let mut aba = ReceiverSession::new(receiver_config(), durable, 0, false).unwrap();
        aba.on_hello(hello).unwrap()
    };
    assert!(matches!(answer(&good, 50), HelloReply::Welcome(_)));
    let cases = [
        (
            Hello {
                group_id: GroupId([1; 16]),
                ..good.clone()
            },
            50,
            RefuseCode::WrongGroup,
        ),
        (
            Hello {
                group_name: "billing".into(),
                ..good.clone()
            },
            50,
            RefuseCode::WrongGroup,
        ),
        (
            Hello {
                target_name: "dr-2".into(),
                ..good.clone()
            },
            50,
            RefuseCode::WrongTarget,
        ),
        (
            Hello {
                config_version: 4,
                ..good.clone()
            },
            50,
            RefuseCode::ConfigVersionMismatch,
        ),
        (
            Hello {
                version_min: 2,
                version_max: 5,
                ..good.clone()
            },
            50,
            RefuseCode::VersionUnsupported,
        ),
        // Needs seq 9 but the journal starts at 10.
        (good.clone(), 8, RefuseCode::ResumeNotAvailable),
        // Holds seq 100 but production's journal ends at 99.
        (good.clone(), 100, RefuseCode::ReplicaAhead),
    ];
    for (hello, durable, code) in cases {
        assert_eq!(refused(answer(&hello, durable)), code, "{hello:?}");
    }
    assert!(RefuseCode::ResumeNotAvailable.needs_resync());
    assert!(!RefuseCode::WrongTarget.needs_resync());
}

#[test]
fn full_resync_flag_reaches_the_sender() {
    let mut lca = SenderSession::new(sender_config());
    let mut aba = ReceiverSession::new(receiver_config(), 0, 0, true).unwrap();
    let hello = lca.hello(journal(500, 900)).unwrap();
    let HelloReply::Welcome(welcome) = aba.on_hello(&hello).unwrap() else {
        panic!("refused")
    };
    assert!(welcome.needs_full_resync());
    assert_eq!(
        lca.on_welcome(&welcome, journal(500, 900)).unwrap(),
        Start::FullResync
    );
    assert!(!lca.can_send(1));
    assert!(matches!(
        aba.on_records(&batch(500, 1)),
        Err(WireError::UnexpectedFrame { .. })
    ));
}

#[test]
fn sender_checks_the_welcome() {
    let welcome = Welcome {
        version: 1,
        resume_after_seq: 5,
        config_version: 3,
        flags: 0,
    };
    // Resume position pruned from the journal since the Hello.
    let mut lca = SenderSession::new(sender_config());
    assert!(matches!(
        lca.on_welcome(&welcome, journal(7, 20)),
        Err(WireError::Session { .. })
    ));
    // Config version changed.
    let mut lca = SenderSession::new(sender_config());
    assert!(matches!(
        lca.on_welcome(
            &Welcome {
                config_version: 2,
                ..welcome
            },
            journal(1, 20)
        ),
        Err(WireError::Session { .. })
    ));
    // A second Welcome is a protocol error.
    let mut lca = SenderSession::new(sender_config());
    assert_eq!(
        lca.on_welcome(&welcome, journal(1, 20)),
        Ok(Start::FromSeq(6))
    );
    assert!(matches!(
        lca.on_welcome(&welcome, journal(1, 20)),
        Err(WireError::UnexpectedFrame { .. })
    ));
}

#[test]
fn batches_must_continue_exactly() {
    let (mut lca, mut aba, from) = connected(41, journal(10, 99));
    assert_eq!(from, 42);
    // The sender refuses to skip or repeat.
    assert!(lca.on_batch_sent(&batch(43, 2)).is_err());
    assert!(lca.on_batch_sent(&batch(41, 2)).is_err());
    let first = batch(42, 3);
    lca.on_batch_sent(&first).unwrap();
    assert_eq!(lca.next_seq(), 45);
    // The receiver too.
    assert_eq!(
        aba.on_records(&batch(43, 1)),
        Err(WireError::Session {
            reason: "batch does not continue after the last seq received",
            expected: 42,
            found: 43
        })
    );
    aba.on_records(&first).unwrap();
    assert_eq!(aba.received_seq(), 44);
    assert!(
        aba.on_records(&first).is_err(),
        "a replayed batch is refused"
    );
}

#[test]
fn in_flight_cap_and_acks() {
    let (mut lca, mut aba, _) = connected(0, journal(1, 100));
    // Cap is 1000 bytes; each batch of 4 records is 400 bytes.
    assert!(lca.can_send(5000), "one batch may always be in flight");
    for first in [1, 5] {
        let sent = batch(first, 4);
        lca.on_batch_sent(&sent).unwrap();
        aba.on_records(&sent).unwrap();
    }
    assert_eq!(lca.in_flight_bytes(), 800);
    assert!(!lca.can_send(400));
    assert!(lca.on_batch_sent(&batch(9, 4)).is_err());
    // The ABA makes seq 1..=6 durable and applies through 3.
    assert!(
        aba.on_durable(9).is_err(),
        "cannot be durable past received"
    );
    aba.on_durable(6).unwrap();
    assert!(aba.on_applied(7).is_err(), "cannot apply past durable");
    aba.on_applied(3).unwrap();
    let ack = aba.ack(300);
    assert_eq!(
        ack,
        Ack {
            durable_seq: 6,
            applied_seq: 3,
            backlog_bytes: 300
        }
    );
    assert_eq!(lca.on_ack(&ack).unwrap(), 6);
    // Only the first batch (through seq 4) is fully durable.
    assert_eq!(lca.in_flight_bytes(), 400);
    assert!(lca.can_send(400));
    let backlog = lca.backlog(100);
    assert_eq!(
        backlog,
        Backlog {
            records_not_durable: 94,
            records_unsent: 92,
            in_flight_bytes: 400,
            in_flight_batches: 1,
            target_backlog_bytes: 300,
        }
    );
    // A heartbeat's durable seq advances too; regressions and overreach are errors.
    assert_eq!(
        lca.on_heartbeat(&Heartbeat {
            now_ns: 1,
            durable_seq: 8
        })
        .unwrap(),
        8
    );
    assert_eq!(lca.in_flight_bytes(), 0);
    assert!(lca
        .on_ack(&Ack {
            durable_seq: 7,
            applied_seq: 3,
            backlog_bytes: 0
        })
        .is_err());
    let mut lca2 = lca.clone();
    assert!(lca2
        .on_ack(&Ack {
            durable_seq: 9,
            applied_seq: 3,
            backlog_bytes: 0
        })
        .is_err());
    assert!(lca
        .on_ack(&Ack {
            durable_seq: 8,
            applied_seq: 2,
            backlog_bytes: 0
        })
        .is_err());
    assert_eq!(lca.durable_seq(), 8);
}

#[test]
fn receiver_rejects_inconsistent_start_state_and_second_hello() {
    assert!(ReceiverSession::new(receiver_config(), 5, 6, false).is_err());
    let (_, mut aba, _) = connected(0, journal(1, 10));
    let hello = SenderSession::new(sender_config())
        .hello(journal(1, 10))
        .unwrap();
    assert!(matches!(
        aba.on_hello(&hello),
        Err(WireError::UnexpectedFrame { .. })
    ));
}
