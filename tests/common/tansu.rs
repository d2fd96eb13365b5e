//! A Tansu broker of a test's own, with SQLite storage in the test's directory (data
//! survives a restart, and a second broker on the same file sees the first one's users
//! and topics). Needs `tansu` on PATH: the real-broker pass of `.ci/run` installs it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Tansu {
    child: Option<Child>,
    pub port: u16,
    /// The address clients are told to use (a proxy in front, or the broker itself).
    advertised: u16,
    authentication: bool,
    db: PathBuf,
    pub log: PathBuf,
}

/// A free loopback port (bound and released; good enough for a test's own servers).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Tansu {
    /// A broker on `port` without authentication.
    pub fn start(port: u16, dir: &Path) -> Tansu {
        Self::start_with(port, port, false, dir)
    }

    /// A broker on `port` that advertises `advertised`, requiring SASL when
    /// `authentication`.
    pub fn start_with(port: u16, advertised: u16, authentication: bool, dir: &Path) -> Tansu {
        let mut t = Tansu {
            child: None,
            port,
            advertised,
            authentication,
            db: dir.join("tansu.db"),
            log: dir.join(format!("tansu-{port}.log")),
        };
        t.spawn();
        t
    }

    pub fn spawn(&mut self) {
        let listen = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut cmd = Command::new("tansu");
        cmd.args([
            "broker",
            "--listener-url",
            &listen,
            "--advertised-listener-url",
            &advertised,
        ])
        // Tansu reads the SQLite path relative to its working directory.
        .args(["--storage-engine", "sqlite://tansu.db"]);
        if self.authentication {
            cmd.arg("--authentication");
        }
        let child = cmd
            .current_dir(self.db.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu on PATH (the real-broker pass installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `tansu user create NAME PASSWORD` (SCRAM-SHA-512) against this broker.
    pub fn create_user(&self, name: &str, password: &str) {
        let out = Command::new("tansu")
            .args(["user", "create", name, password, "--mechanism", "scram512"])
            .args(["--broker", &format!("tcp://127.0.0.1:{}", self.port)])
            .output()
            .expect("running tansu user create");
        assert!(
            out.status.success(),
            "tansu user create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}
