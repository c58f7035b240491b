//! A real PostgreSQL server for the tests: `initdb` on a temp directory, `postgres` on a free
//! loopback port, one database per test vault. Started once per test process (as the `postgres`
//! user when the tests run as root, which PostgreSQL refuses), and stopped with it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

/// Whether the suite runs on PostgreSQL (`PRIVAULT_TEST_STORE=postgres`).
pub fn enabled() -> bool {
    std::env::var("PRIVAULT_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The directory of PostgreSQL's server programs: `PRIVAULT_PG_BIN`, or the newest of Debian's.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PRIVAULT_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed (scripts/install-deps installs it)")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no PostgreSQL under /usr/lib/postgresql")
        .1
}

/// A running server.
pub struct Cluster {
    pub port: u16,
    pub dir: PathBuf,
    bin: PathBuf,
}

/// The user PostgreSQL runs as: the `postgres` user under root, otherwise ourselves.
fn as_server_user(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if rustix::process::geteuid().is_root() {
        let (uid, gid) = postgres_ids();
        command.uid(uid).gid(gid);
    }
    command
}

fn postgres_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("no postgres user (installed with Debian's postgresql package)");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// A cluster yet to be made: its directory (the server user's) and a free port.
    fn unstarted(prefix: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .unwrap()
            .keep();
        if rustix::process::geteuid().is_root() {
            let (uid, gid) = postgres_ids();
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
        }
        Cluster {
            port: free_port(),
            dir,
            bin: bin_dir(),
        }
    }

    /// A fresh cluster on a free port, owned by `postgres` under root.
    pub fn start(settings: &[&str]) -> Cluster {
        let cluster = Cluster::unstarted("privault-pg-");
        let out = as_server_user(&mut Command::new(cluster.bin.join("initdb")))
            .args(["-D"])
            .arg(cluster.data())
            .args(["-U", "privault", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.run(settings);
        spawn_watchdog(&cluster.bin, &cluster.data(), &cluster.dir);
        cluster
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts (or restarts) the server on its port with `settings` (`name=value`).
    pub fn run(&self, settings: &[&str]) {
        let mut command = Command::new(self.bin.join("pg_ctl"));
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=400",
            self.port,
            self.dir.display()
        );
        for s in settings {
            options.push_str(&format!(" -c {s}"));
        }
        let out = as_server_user(&mut command)
            .arg("-D")
            .arg(self.data())
            .args(["-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {} {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
        );
    }

    /// Stops the server: `immediate` kills it as a crash would (no checkpoint).
    pub fn stop(&self, immediate: bool) {
        let _ = as_server_user(&mut Command::new(self.bin.join("pg_ctl")))
            .arg("-D")
            .arg(self.data())
            .args([
                "-m",
                if immediate { "immediate" } else { "fast" },
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// A streaming standby of `primary` (pg_basebackup -R), started on a port of its own with
    /// `settings`.
    pub fn standby_of(primary: &Cluster, settings: &[&str]) -> Cluster {
        let cluster = Cluster::unstarted("privault-pg-standby-");
        let out = as_server_user(&mut Command::new(cluster.bin.join("pg_basebackup")))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "privault",
            ])
            .arg("-D")
            .arg(cluster.data())
            .args(["-R", "-X", "stream", "--no-sync"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.run(settings);
        spawn_watchdog(&cluster.bin, &cluster.data(), &cluster.dir);
        cluster
    }

    /// Promotes a standby to primary, waiting until it accepts writes.
    pub fn promote(&self) {
        let out = as_server_user(&mut Command::new(self.bin.join("pg_ctl")))
            .arg("-D")
            .arg(self.data())
            .args(["-w", "promote"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl promote: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `sql` in database `db` with psql, returning its output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "privault",
            ])
            .args(["-d", db, "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database; its URL.
    pub fn new_database(&self) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgresql://privault@127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster this test process shares (statics are not dropped: [`stop_shared`] is called
/// when the process exits).
pub fn shared() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start(&[]))
}

/// A server outlives the test process unless told otherwise: this starts a shell that waits for
/// its stdin to close (the process exiting, however it ends) and then stops the server and
/// removes its directory.
fn spawn_watchdog(bin: &Path, data: &Path, dir: &Path) {
    let script = format!(
        "cat >/dev/null; {} {} -D {} -m immediate stop >/dev/null 2>&1; rm -rf {}",
        if rustix::process::geteuid().is_root() {
            "runuser -u postgres --"
        } else {
            ""
        },
        bin.join("pg_ctl").display(),
        data.display(),
        dir.display()
    );
    let child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The pipe's write end stays open in this process until it exits.
    std::mem::forget(child);
}
