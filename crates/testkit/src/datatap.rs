//! A `redoubt datatap` process under test.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct DatatapProcess {
    binary: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// Export name → NBD URI, from the `ready` lines of the current run.
    pub uris: Vec<(String, String)>,
}

impl DatatapProcess {
    /// Starts `redoubt datatap --dir DIR --listen 127.0.0.1:0 --volume …` plus `extra` and
    /// waits for its `ready` lines.
    pub fn start(binary: &Path, dir: &Path, volumes: &[&str], extra: &[&str]) -> DatatapProcess {
        let mut args = vec![
            "datatap".to_string(),
            "--dir".into(),
            dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        for volume in volumes {
            args.push("--volume".into());
            args.push(volume.to_string());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut process = DatatapProcess {
            binary: binary.to_path_buf(),
            args,
            child: None,
            uris: Vec::new(),
        };
        process.spawn(volumes.len());
        process
    }

    fn spawn(&mut self, export_count: usize) {
        let mut child = Command::new(&self.binary)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", self.binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        self.uris.clear();
        while self.uris.len() < export_count {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(uri) = line.strip_prefix("ready ") {
                        let name = uri.rsplit('/').next().unwrap_or_default().to_string();
                        self.uris.push((name, uri.to_string()));
                    }
                }
                _ => {
                    let status = child.wait();
                    panic!("datatap exited before it was ready: {status:?}");
                }
            }
        }
        self.child = Some(child);
    }

    /// The URI of export `name`.
    pub fn uri(&self, name: &str) -> String {
        self.uris
            .iter()
            .find(|(export, _)| export == name)
            .map(|(_, uri)| uri.clone())
            .unwrap_or_else(|| panic!("no export {name}: {:?}", self.uris))
    }

    /// `host:port` of the NBD listener.
    pub fn address(&self) -> String {
        let uri = &self.uris[0].1;
        let rest = uri.strip_prefix("nbd://").expect("tcp uri");
        rest.split('/').next().unwrap_or_default().to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait: the orderly shutdown.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        child.wait().expect("wait for datatap")
    }

    /// Starts the same command again (a new port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop or kill first");
        let count = self.args.iter().filter(|a| *a == "--volume").count();
        self.spawn(count);
    }
}

impl Drop for DatatapProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
