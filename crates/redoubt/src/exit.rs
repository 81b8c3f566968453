//! Exit codes are a contract with users' scripts (`shared/spec/cli.md`).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCodeKind {
    /// The operation failed.
    Failed = 1,
    /// Usage error or invalid input (clap uses 2 for usage errors too).
    Invalid = 2,
    /// Refused: an initialization already running, a missing confirmation.
    #[allow(dead_code)]
    Refused = 3,
    /// The console or agent cannot be reached.
    #[allow(dead_code)]
    Unreachable = 4,
}

/// An error that ends the command: what to print (once, in `main`) and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCodeKind,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCodeKind, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// The details were already printed; only the exit code remains to give.
    pub fn silent(code: ExitCodeKind) -> Self {
        Failure {
            code,
            message: String::new(),
        }
    }
}
