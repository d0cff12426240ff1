//! A private `redis-server` per test: a free loopback port, a temporary directory, no
//! persistence (or, with [`RedisServer::start_with_aof`], an append-only file synced on
//! every write); stopped (kill + wait) on drop. Fault tests can `kill_hard` it (SIGKILL)
//! and `restart` it on the same port.
//!
//! Without the `redis-server` binary the tests say so loudly on stderr and return early
//! (`SKIPPED: …`), unless `CI` or `STACKQUERY_REQUIRE_REDIS` is set, where a missing
//! binary fails the test: CI installs it, so there a skip would hide a broken setup.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary the harness runs (override with `REDIS_SERVER_BIN`).
fn binary() -> PathBuf {
    std::env::var_os("REDIS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"))
}

fn binary_available() -> bool {
    Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn skipping_is_allowed() -> bool {
    let set = |name| std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
    !(set("CI") || set("STACKQUERY_REQUIRE_REDIS"))
}

/// A running `redis-server` of this test's own.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Append-only file on (`appendfsync always`): a restart keeps the data.
    aof: bool,
}

impl RedisServer {
    /// Starts a server for the test `test`, or — when `redis-server` is not installed —
    /// prints `SKIPPED: …` to stderr and returns `None` (the test then returns early).
    ///
    /// # Panics
    ///
    /// When the binary is missing and `CI`/`STACKQUERY_REQUIRE_REDIS` is set, or when the
    /// server does not answer `PING` within 10 s.
    pub fn start(test: &str) -> Option<RedisServer> {
        Self::start_inner(test, false)
    }

    /// As [`start`](Self::start), with the append-only file on and synced on every write
    /// (`--appendonly yes --appendfsync always`): a server killed with
    /// [`kill_hard`](Self::kill_hard) comes back from [`restart`](Self::restart) with every
    /// write it acknowledged.
    pub fn start_with_aof(test: &str) -> Option<RedisServer> {
        Self::start_inner(test, true)
    }

    fn start_inner(test: &str, aof: bool) -> Option<RedisServer> {
        if !binary_available() {
            assert!(
                skipping_is_allowed(),
                "redis-server is not installed, and CI/STACKQUERY_REQUIRE_REDIS forbids skipping {test}"
            );
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, and this line must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: redis-server not installed — test `{test}` did not run \
                 (apt-get install -y redis-server, or set REDIS_SERVER_BIN)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            aof,
        };
        server.spawn();
        Some(server)
    }

    /// The url clients connect to: `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback port it listens on (the same after a restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server with SIGKILL (no shutdown, no goodbye to clients) and reaps it.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL on Unix
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (killing it first if it runs), and waits
    /// until it answers `PING`. Its data is gone, unless it was started
    /// [with the append-only file](Self::start_with_aof).
    pub fn restart(&mut self) {
        self.kill_hard();
        self.spawn();
    }

    /// Sends one command in the inline protocol and returns the raw reply (for checks that
    /// must not go through the client under test).
    pub fn raw_command(&self, command: &str) -> std::io::Result<String> {
        raw_command(self.port, command)
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log"))
            .expect("a log file for redis-server");
        let err_log = log.try_clone().expect("a log file for redis-server");
        // A port released by a killed server can take a moment to be bindable again.
        let deadline = Instant::now() + Duration::from_secs(10);
        let child = Command::new(binary())
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(if self.aof {
                ["--appendonly", "yes", "--appendfsync", "always"].as_slice()
            } else {
                ["--appendonly", "no"].as_slice()
            })
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "yes"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        loop {
            if let Ok(reply) = raw_command(self.port, "PING") {
                if reply.starts_with("+PONG") {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "redis-server exited ({status}) on port {}:\n{}",
                        self.port,
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING within 10 s:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

/// A port that was free on the loopback interface a moment ago.
fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
    listener.local_addr().expect("a local address").port()
}

fn raw_command(port: u16, command: &str) -> std::io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(format!("{command}\r\n").as_bytes())?;
    let mut buf = [0_u8; 512];
    let n = stream.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}
