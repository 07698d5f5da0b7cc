//! The hosts of a [`Rig`] and the processes spawned in them.

use super::{CMD_TIMEOUT, HOST_IFACE, NETNS_DIR, Rig, pids_in};
use crate::{CmdOutput, KillOnDrop, run_with_timeout};
use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// One host of a [`Rig`]: a network namespace with `lo` and `eth0`.
#[derive(Debug, Clone, Copy)]
pub struct Host<'r> {
    pub(super) rig: &'r Rig,
    pub(super) i: usize,
}

impl<'r> Host<'r> {
    /// The host's index in the rig.
    pub fn index(&self) -> usize {
        self.i
    }

    /// The namespace name, `<prefix>-h<i>`.
    pub fn name(&self) -> &'r str {
        &self.rig.hosts[self.i]
    }

    /// The host's address on the LAN, `10.A.B.<i+1>`.
    pub fn addr(&self) -> Ipv4Addr {
        self.rig.addr(self.i)
    }

    /// The host's interface to the switch (`eth0`).
    pub fn iface(&self) -> &'static str {
        HOST_IFACE
    }

    /// `ip netns exec <ns> <program>`: add arguments, environment, directory as usual.
    /// `ip netns exec` execs the program, so the child's pid is the program's.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name()]).arg(program);
        cmd
    }

    /// A copy of `cmd` (program, arguments, environment changes, directory) that runs
    /// inside this host, e.g. for [`crate::ConfigDir::command`]. Pass a plain command,
    /// not one from [`Host::cmd`].
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut c = self.cmd(cmd.get_program());
        c.args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            c.current_dir(d);
        }
        c
    }

    /// Runs `program args...` in this host to completion, killed at `timeout`.
    pub fn run<I, S>(&self, program: impl AsRef<OsStr>, args: I, timeout: Duration) -> CmdOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_with_timeout(self.cmd(program).args(args), timeout)
    }

    /// Starts `program args...` in this host in the background (stdin closed, stdout and
    /// stderr to a log file); killed when the returned [`Spawned`] drops.
    pub fn spawn<I, S>(&self, program: impl AsRef<OsStr>, args: I) -> io::Result<Spawned>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd(program);
        cmd.args(args);
        self.start(cmd)
    }

    /// Waits (up to `timeout`) until something in this host accepts TCP on `ip:port`.
    pub fn wait_for_tcp(&self, ip: &str, port: u16, timeout: Duration) -> bool {
        let code = format!(
            "import socket, sys, time\n\
             deadline = time.time() + {secs}\n\
             while time.time() < deadline:\n\
             \x20   try:\n\
             \x20       socket.create_connection(('{ip}', {port}), timeout=0.5).close()\n\
             \x20       sys.exit(0)\n\
             \x20   except OSError:\n\
             \x20       time.sleep(0.05)\n\
             sys.exit(1)\n",
            secs = timeout.as_secs_f64()
        );
        self.run(crate::python(), ["-c", code.as_str()], timeout + Duration::from_secs(10)).success()
    }

    /// Like [`Host::spawn`] for a prepared plain command (see [`Host::wrap`]).
    pub fn spawn_command(&self, cmd: &Command) -> io::Result<Spawned> {
        self.start(self.wrap(cmd))
    }

    fn start(&self, mut cmd: Command) -> io::Result<Spawned> {
        let seq = self.rig.spawned.fetch_add(1, Ordering::Relaxed);
        // Program is the 4th word: ip netns exec <ns> <program>.
        let program = cmd.get_args().nth(3).and_then(|p| Path::new(p).file_name()).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let log = self.rig.dir.path().join(format!("h{}-{seq}-{program}.log", self.i));
        let file = std::fs::File::create(&log)?;
        let command = crate::describe_command(&cmd);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start `{command}`: {e}")))?;
        let mut spawned = Spawned { child: KillOnDrop(child), log, command: command.clone(), host: self.name().to_string() };
        // Return only once the child has joined the namespace (or exited), so that a
        // process spawned just before the rig drops is still found and killed.
        let ns = std::fs::metadata(Path::new(NETNS_DIR).join(self.name()))?.ino();
        let deadline = Instant::now() + CMD_TIMEOUT;
        loop {
            let inside = std::fs::metadata(format!("/proc/{}/ns/net", spawned.pid())).is_ok_and(|m| m.ino() == ns);
            if inside || spawned.try_wait().is_some() {
                return Ok(spawned);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!("`{command}` did not enter {} within {CMD_TIMEOUT:?}", self.name())));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Pids of the processes running in this host's namespace.
    pub fn pids(&self) -> Vec<u32> {
        pids_in(&[self.name().to_string()])
    }
}

/// A background process in a host; SIGKILLed and reaped on drop.
#[derive(Debug)]
pub struct Spawned {
    child: KillOnDrop,
    log: PathBuf,
    command: String,
    host: String,
}

impl Spawned {
    /// The process id (of the program itself: `ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The namespace it runs in.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The command line, for messages.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// The file collecting its stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// What it wrote to stdout and stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`, up to `timeout`; false when it does not, or
    /// when the process exits first without writing it.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return true;
            }
            if self.try_wait().is_some() {
                return self.log_text().contains(needle);
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The exit status if it has exited (`None` while it runs).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.0.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for it to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The command, exit state and log, for assertion messages.
    pub fn describe(&mut self) -> String {
        let state = match self.try_wait() {
            Some(s) => format!("exited: {s}"),
            None => "running".to_string(),
        };
        format!("command: {}\nhost: {}\n{state}\n--- log ---\n{}", self.command, self.host, self.log_text())
    }
}
