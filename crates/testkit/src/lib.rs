//! Test support shared by the integration tests: a small blocking NBD client (also able to
//! send hostile bytes), a handle on a `redoubt datatap` process that can be killed with
//! SIGKILL and restarted, and a runner for peers' commands (qemu-io, nbdinfo, nbdcopy, fio).
//!
//! Tools are never optional: a missing peer fails the test with the command that was tried.

pub mod datatap;
pub mod nbd_client;
pub mod netns;
pub mod peers;

pub use datatap::DatatapProcess;
pub use nbd_client::NbdClient;
pub use netns::{Netem, Spawned, TestBed};
pub use peers::{run, run_ok};
