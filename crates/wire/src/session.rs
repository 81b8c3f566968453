//! I/O-free session state machines, one per side, driven by method calls.
//!
//! ```text
//!   LCA (SenderSession)                         ABA (ReceiverSession)
//!   hello(journal) ───────── Hello ───────────▶ on_hello() ─▶ Welcome | Refuse
//!   on_welcome() ◀──────── Welcome ───────────  (resume_after_seq = its durable seq)
//!     └▶ Start::FromSeq(resume_after_seq + 1)
//!   on_batch_sent(batch) ─── Records ─────────▶ on_records(batch)  (continues exactly)
//!                                               on_durable(seq) / on_applied(seq)
//!   on_ack() ◀─────────────── Ack ────────────  ack(backlog_bytes)
//! ```

use std::collections::VecDeque;

use redoubt_journal::GroupId;

use crate::error::WireError;
use crate::frame::{
    Ack, FrameType, Heartbeat, Hello, JournalPosition, Refuse, RefuseCode, Welcome,
    PROTOCOL_VERSION_CURRENT, PROTOCOL_VERSION_MIN, WELCOME_FLAG_NEEDS_FULL_RESYNC,
};
use crate::records::RecordsBatch;

/// Default cap on bytes sent but not yet durable on the recovery server.
pub const IN_FLIGHT_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;

fn session_error(reason: &'static str, expected: u64, found: u64) -> WireError {
    WireError::Session {
        reason,
        expected,
        found,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Handshake,
    Streaming,
    NeedsResync,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::Handshake => "during the handshake",
            State::Streaming => "while streaming",
            State::NeedsResync => "while a full resync is pending",
        }
    }
}

/// What the LCA configured for one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderConfig {
    pub group_id: GroupId,
    pub group_name: String,
    pub config_version: u64,
    pub sender_name: String,
    pub target_name: String,
    /// Bytes (uncompressed) sent and not yet acknowledged durable; one batch may always be
    /// in flight even if it is larger.
    pub in_flight_bytes_max: u64,
}

/// Where the LCA starts after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Read the journal from this seq (the ABA's durable seq + 1) and ship in order.
    FromSeq(u64),
    /// The recovery server needs a full resync (super transaction) first.
    FullResync,
}

/// The LCA's view of one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// Records in the production journal not yet durable on the target.
    pub records_not_durable: u64,
    /// Records in the production journal not yet sent.
    pub records_unsent: u64,
    pub in_flight_bytes: u64,
    pub in_flight_batches: usize,
    /// The target's own backlog (received, not yet applied), from its last Ack.
    pub target_backlog_bytes: u64,
}

/// LCA side of one connection.
#[derive(Debug, Clone)]
pub struct SenderSession {
    config: SenderConfig,
    state: State,
    version: u16,
    next_seq: u64,
    durable_seq: u64,
    applied_seq: u64,
    target_backlog_bytes: u64,
    /// (last seq, bytes) of each batch sent and not yet durable, oldest first.
    in_flight: VecDeque<(u64, u64)>,
    in_flight_bytes: u64,
}

impl SenderSession {
    pub fn new(config: SenderConfig) -> SenderSession {
        SenderSession {
            config,
            state: State::Handshake,
            version: PROTOCOL_VERSION_MIN,
            next_seq: 0,
            durable_seq: 0,
            applied_seq: 0,
            target_backlog_bytes: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
        }
    }

    /// The first frame, announcing what `journal` holds.
    pub fn hello(&self, journal: JournalPosition) -> Result<Hello, WireError> {
        journal.validate()?;
        Ok(Hello {
            version_min: PROTOCOL_VERSION_MIN,
            version_max: PROTOCOL_VERSION_CURRENT,
            group_id: self.config.group_id,
            config_version: self.config.config_version,
            journal,
            group_name: self.config.group_name.clone(),
            sender_name: self.config.sender_name.clone(),
            target_name: self.config.target_name.clone(),
        })
    }

    /// Check the ABA's answer against the journal as it is now and decide where to start:
    /// never from zero, never past the ABA's durable seq + 1.
    pub fn on_welcome(
        &mut self,
        welcome: &Welcome,
        journal: JournalPosition,
    ) -> Result<Start, WireError> {
        self.expect_state(State::Handshake, FrameType::Welcome)?;
        if !(PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION_CURRENT).contains(&welcome.version) {
            return Err(WireError::UnsupportedVersion {
                version: welcome.version,
            });
        }
        if welcome.config_version != self.config.config_version {
            return Err(session_error(
                "config version mismatch",
                self.config.config_version,
                welcome.config_version,
            ));
        }
        self.version = welcome.version;
        if welcome.needs_full_resync() {
            self.state = State::NeedsResync;
            return Ok(Start::FullResync);
        }
        if !journal.can_resume_after(welcome.resume_after_seq) {
            return Err(session_error(
                "resume position is not in the journal (resync needed); first seq available",
                journal.first_seq,
                welcome.resume_after_seq.saturating_add(1),
            ));
        }
        self.state = State::Streaming;
        self.durable_seq = welcome.resume_after_seq;
        self.applied_seq = 0;
        self.next_seq = welcome.resume_after_seq + 1;
        Ok(Start::FromSeq(self.next_seq))
    }

    /// The negotiated protocol version (hand it to the sequencer and the receiver).
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The seq of the next record to read from the journal and ship.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Last seq the target acknowledged as durable (sync mode acks writes up to here).
    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    /// Whether a batch of `bytes` may be sent now without exceeding the in-flight cap.
    pub fn can_send(&self, bytes: u64) -> bool {
        self.state == State::Streaming
            && (self.in_flight.is_empty()
                || self.in_flight_bytes.saturating_add(bytes) <= self.config.in_flight_bytes_max)
    }

    /// Record that `batch` was handed to the connection. It must continue exactly at
    /// [`SenderSession::next_seq`] and fit the in-flight cap.
    pub fn on_batch_sent(&mut self, batch: &RecordsBatch) -> Result<(), WireError> {
        self.expect_state(State::Streaming, FrameType::Records)?;
        if batch.first_seq() != self.next_seq {
            return Err(session_error(
                "batch does not continue the stream",
                self.next_seq,
                batch.first_seq(),
            ));
        }
        if !self.can_send(batch.len_bytes()) {
            return Err(session_error(
                "batch exceeds in_flight_bytes_max",
                self.config.in_flight_bytes_max,
                self.in_flight_bytes.saturating_add(batch.len_bytes()),
            ));
        }
        self.in_flight
            .push_back((batch.last_seq(), batch.len_bytes()));
        self.in_flight_bytes += batch.len_bytes();
        self.next_seq = batch.last_seq().saturating_add(1);
        Ok(())
    }

    /// Apply an Ack; returns the new durable seq.
    pub fn on_ack(&mut self, ack: &Ack) -> Result<u64, WireError> {
        self.expect_state(State::Streaming, FrameType::Ack)?;
        if ack.applied_seq < self.applied_seq {
            return Err(session_error(
                "applied seq went backwards",
                self.applied_seq,
                ack.applied_seq,
            ));
        }
        self.advance_durable(ack.durable_seq)?;
        self.applied_seq = ack.applied_seq;
        self.target_backlog_bytes = ack.backlog_bytes;
        Ok(self.durable_seq)
    }

    /// A heartbeat from the ABA carries its durable seq, which may advance ours.
    pub fn on_heartbeat(&mut self, heartbeat: &Heartbeat) -> Result<u64, WireError> {
        self.expect_state(State::Streaming, FrameType::Heartbeat)?;
        self.advance_durable(heartbeat.durable_seq)?;
        Ok(self.durable_seq)
    }

    fn advance_durable(&mut self, durable_seq: u64) -> Result<(), WireError> {
        if durable_seq < self.durable_seq {
            return Err(session_error(
                "durable seq went backwards",
                self.durable_seq,
                durable_seq,
            ));
        }
        let sent_seq = self.next_seq - 1;
        if durable_seq > sent_seq {
            return Err(session_error(
                "durable seq beyond the last seq sent",
                sent_seq,
                durable_seq,
            ));
        }
        self.durable_seq = durable_seq;
        while let Some(&(last_seq, bytes)) = self.in_flight.front() {
            if last_seq > durable_seq {
                break;
            }
            self.in_flight.pop_front();
            self.in_flight_bytes -= bytes;
        }
        Ok(())
    }

    /// The backlog against the production journal whose last seq is `journal_last_seq`.
    pub fn backlog(&self, journal_last_seq: u64) -> Backlog {
        Backlog {
            records_not_durable: journal_last_seq.saturating_sub(self.durable_seq),
            records_unsent: journal_last_seq.saturating_sub(self.next_seq.saturating_sub(1)),
            in_flight_bytes: self.in_flight_bytes,
            in_flight_batches: self.in_flight.len(),
            target_backlog_bytes: self.target_backlog_bytes,
        }
    }

    fn expect_state(&self, state: State, frame_type: FrameType) -> Result<(), WireError> {
        if self.state == state {
            Ok(())
        } else {
            Err(WireError::UnexpectedFrame {
                frame_type,
                state: self.state.describe(),
            })
        }
    }
}

/// What the ABA expects of its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverConfig {
    pub group_id: GroupId,
    pub group_name: String,
    /// This recovery server's name; a Hello must be addressed to it.
    pub server_name: String,
    pub config_version: u64,
}

/// The ABA's answer to a Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloReply {
    Welcome(Welcome),
    Refuse(Refuse),
}

/// ABA side of one connection.
#[derive(Debug, Clone)]
pub struct ReceiverSession {
    config: ReceiverConfig,
    state: State,
    needs_full_resync: bool,
    version: u16,
    received_seq: u64,
    durable_seq: u64,
    applied_seq: u64,
}

impl ReceiverSession {
    /// `durable_seq` / `applied_seq`: what the ABA's journal copy and replica hold now.
    pub fn new(
        config: ReceiverConfig,
        durable_seq: u64,
        applied_seq: u64,
        needs_full_resync: bool,
    ) -> Result<ReceiverSession, WireError> {
        if applied_seq > durable_seq {
            return Err(session_error(
                "applied seq beyond durable seq",
                durable_seq,
                applied_seq,
            ));
        }
        Ok(ReceiverSession {
            config,
            state: State::Handshake,
            needs_full_resync,
            version: PROTOCOL_VERSION_MIN,
            received_seq: durable_seq,
            durable_seq,
            applied_seq,
        })
    }

    /// Validate a Hello and answer it. After a Refuse the ABA closes the connection.
    pub fn on_hello(&mut self, hello: &Hello) -> Result<HelloReply, WireError> {
        if self.state != State::Handshake {
            return Err(WireError::UnexpectedFrame {
                frame_type: FrameType::Hello,
                state: self.state.describe(),
            });
        }
        let refuse = |code, message: String| Ok(HelloReply::Refuse(Refuse { code, message }));
        let low = hello.version_min.max(PROTOCOL_VERSION_MIN);
        let high = hello.version_max.min(PROTOCOL_VERSION_CURRENT);
        if low > high {
            return refuse(
                RefuseCode::VersionUnsupported,
                format!(
                    "sender speaks {}..={}, this server {PROTOCOL_VERSION_MIN}..={PROTOCOL_VERSION_CURRENT}",
                    hello.version_min, hello.version_max
                ),
            );
        }
        if hello.group_id != self.config.group_id || hello.group_name != self.config.group_name {
            return refuse(
                RefuseCode::WrongGroup,
                format!(
                    "this server replicates group {} ({}), not {} ({})",
                    self.config.group_name, self.config.group_id, hello.group_name, hello.group_id
                ),
            );
        }
        if hello.target_name != self.config.server_name {
            return refuse(
                RefuseCode::WrongTarget,
                format!(
                    "addressed to {}, this server is {}",
                    hello.target_name, self.config.server_name
                ),
            );
        }
        if hello.config_version != self.config.config_version {
            return refuse(
                RefuseCode::ConfigVersionMismatch,
                format!(
                    "sender runs config version {}, this server {}",
                    hello.config_version, self.config.config_version
                ),
            );
        }
        let mut flags = 0;
        if self.needs_full_resync {
            flags |= WELCOME_FLAG_NEEDS_FULL_RESYNC;
        } else if self.durable_seq > hello.journal.last_seq {
            return refuse(
                RefuseCode::ReplicaAhead,
                format!(
                    "this server holds records through seq {}, the sender's journal ends at {}",
                    self.durable_seq, hello.journal.last_seq
                ),
            );
        } else if !hello.journal.can_resume_after(self.durable_seq) {
            return refuse(
                RefuseCode::ResumeNotAvailable,
                format!(
                    "this server needs seq {}, the sender's journal starts at {}",
                    self.durable_seq.saturating_add(1),
                    hello.journal.first_seq
                ),
            );
        }
        self.version = high;
        self.state = if self.needs_full_resync {
            State::NeedsResync
        } else {
            State::Streaming
        };
        Ok(HelloReply::Welcome(Welcome {
            version: high,
            resume_after_seq: self.durable_seq,
            config_version: self.config.config_version,
            flags,
        }))
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Accept a batch only if it continues exactly after the last seq received.
    pub fn on_records(&mut self, batch: &RecordsBatch) -> Result<(), WireError> {
        if self.state != State::Streaming {
            return Err(WireError::UnexpectedFrame {
                frame_type: FrameType::Records,
                state: self.state.describe(),
            });
        }
        let expected = self.received_seq.saturating_add(1);
        if batch.first_seq() != expected {
            return Err(session_error(
                "batch does not continue after the last seq received",
                expected,
                batch.first_seq(),
            ));
        }
        self.received_seq = batch.last_seq();
        Ok(())
    }

    /// The journal copy is durable through `seq` (between the old durable and received seq).
    pub fn on_durable(&mut self, seq: u64) -> Result<(), WireError> {
        if seq < self.durable_seq || seq > self.received_seq {
            return Err(session_error(
                "durable seq outside durable..=received; received",
                self.received_seq,
                seq,
            ));
        }
        self.durable_seq = seq;
        Ok(())
    }

    /// The replica holds everything through `seq` (between the old applied and durable seq).
    pub fn on_applied(&mut self, seq: u64) -> Result<(), WireError> {
        if seq < self.applied_seq || seq > self.durable_seq {
            return Err(session_error(
                "applied seq outside applied..=durable; durable",
                self.durable_seq,
                seq,
            ));
        }
        self.applied_seq = seq;
        Ok(())
    }

    pub fn ack(&self, backlog_bytes: u64) -> Ack {
        Ack {
            durable_seq: self.durable_seq,
            applied_seq: self.applied_seq,
            backlog_bytes,
        }
    }

    pub fn received_seq(&self) -> u64 {
        self.received_seq
    }

    pub fn durable_seq(&self) -> u64 {
        self.durable_seq
    }

    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }
}
