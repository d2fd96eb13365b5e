//! An Apache Kafka broker of a test's own, started through `scripts/broker.sh` with its
//! own directory and ports, so that crashing or reconfiguring it does not touch the
//! broker the rest of the suite shares. The log stays on disk in the directory: a start
//! after [`Broker::kill`] comes back to the same data.

use std::path::PathBuf;
use std::process::Command;

/// A free loopback port (bound and released; good enough for a test's own servers).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// What a broker of a test's own listens on.
#[derive(Debug, Default, Clone)]
pub struct BrokerOptions {
    /// Add a SASL_SSL listener (SCRAM-SHA-512, a certificate generated at start).
    pub sasl_ssl: bool,
    /// SCRAM-SHA-512 users `(name, password)`, written when the storage is formatted.
    pub scram_users: Vec<(String, String)>,
}

pub struct Broker {
    pub dir: PathBuf,
    pub port: u16,
    controller_port: u16,
    pub sasl_port: Option<u16>,
    options: BrokerOptions,
    running: bool,
}

impl Broker {
    /// Format and start a broker in a fresh directory; fails the test if it does not
    /// become ready (a metadata request answered).
    pub fn start(options: BrokerOptions) -> Broker {
        let mut b = Broker {
            dir: super::scratch_dir().join("broker"),
            port: free_port(),
            controller_port: free_port(),
            sasl_port: options.sasl_ssl.then(free_port),
            options,
            running: false,
        };
        b.run("start");
        b.running = true;
        b
    }

    /// The PLAINTEXT bootstrap address.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The SASL_SSL bootstrap address.
    pub fn sasl_bootstrap(&self) -> String {
        format!(
            "127.0.0.1:{}",
            self.sasl_port.expect("started with sasl_ssl")
        )
    }

    /// The certificate clients of the SASL_SSL listener trust.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    /// SIGKILL: no shutdown, no flush beyond what the OS already has.
    pub fn kill(&mut self) {
        self.run("kill");
        self.running = false;
    }

    /// Start again on the same directory (the same log, the same cluster id).
    pub fn restart(&mut self) {
        self.run("start");
        self.running = true;
    }

    pub fn stop(&mut self) {
        if self.running {
            self.run("stop");
            self.running = false;
        }
    }

    fn run(&self, verb: &str) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/broker.sh");
        let users: Vec<String> = self
            .options
            .scram_users
            .iter()
            .map(|(n, p)| format!("{n}:{p}"))
            .collect();
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .arg(verb)
            .env("BROKER_DIR", &self.dir)
            .env("BROKER_PORT", self.port.to_string())
            .env("BROKER_CONTROLLER_PORT", self.controller_port.to_string())
            .env("BROKER_SCRAM_USERS", users.join(" "))
            .env_remove("BROKER_SASL_PORT");
        if let Some(p) = self.sasl_port {
            cmd.env("BROKER_SASL_PORT", p.to_string());
        }
        let out = cmd.output().expect("running scripts/broker.sh");
        assert!(
            out.status.success(),
            "scripts/broker.sh {verb} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.running {
            // Best effort: a panic here would hide the test's own failure.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.stop()));
        }
    }
}
