//! A PostgreSQL server of a test's own, and its standbys.

use std::path::PathBuf;
use std::process::Command;

use rand::Rng;

/// Why a private server could not be made or controlled.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No PostgreSQL server binaries under `/usr/lib/postgresql`.
    #[error("no PostgreSQL server binaries under /usr/lib/postgresql: run `scripts/services up`")]
    NoBinaries,
    /// A command could not be run.
    #[error("`{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status})")]
    Failed {
        /// The command.
        command: String,
        /// How it ended.
        status: std::process::ExitStatus,
    },
}

/// A PostgreSQL server in a directory of its own (removed on drop, the server stopped first),
/// listening on loopback, with `wal_level = logical`, trust authentication and the superuser
/// `herald`.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    /// A new cluster (`initdb`), started.
    pub fn start() -> Result<Self, ServerError> {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|_| ServerError::NoBinaries)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
            .max()
            .ok_or(ServerError::NoBinaries)?;
        let pg = Self::in_new_dir("herald-pg", PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")))?;
        pg.as_postgres(&format!(
            "{}/initdb -D {}/data -A trust -U herald >/dev/null",
            pg.bin.display(),
            pg.dir.display()
        ))?;
        pg.control("start")?;
        Ok(pg)
    }

    /// An asynchronous streaming standby of `primary`, made by `pg_basebackup -R` and started:
    /// read-only, in recovery, until [`PrivatePostgres::control`]`("promote")`. It has no
    /// replication slot (`pg_basebackup` copies none).
    pub fn standby_of(primary: &PrivatePostgres) -> Result<Self, ServerError> {
        let pg = Self::in_new_dir("herald-pg-standby", primary.bin.clone())?;
        pg.as_postgres(&format!(
            "{}/pg_basebackup -h 127.0.0.1 -p {} -U herald -D {}/data -R -X stream >/dev/null",
            pg.bin.display(),
            primary.port,
            pg.dir.display()
        ))?;
        pg.control("start")?;
        Ok(pg)
    }

    /// A streaming standby of `primary` made from a file copy of its data directory, taken
    /// while it is stopped for a moment: unlike `pg_basebackup`, the copy keeps the replication
    /// slots, as a PostgreSQL 17 failover slot would be kept on a standby (at the state it had
    /// when copied, which is never ahead of its reader). Read-only until promoted.
    pub fn copy_of(primary: &PrivatePostgres) -> Result<Self, ServerError> {
        let pg = Self::in_new_dir("herald-pg-copy", primary.bin.clone())?;
        primary.control("stop")?;
        let copied = pg.as_postgres(&format!("cp -a {}/data {}/data", primary.dir.display(), pg.dir.display()));
        primary.control("start")?;
        copied?;
        pg.as_postgres(&format!(
            "touch {dir}/data/standby.signal && echo \"primary_conninfo = 'host=127.0.0.1 port={} user=herald'\" >> {dir}/data/postgresql.auto.conf",
            primary.port,
            dir = pg.dir.display()
        ))?;
        pg.control("start")?;
        Ok(pg)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its URL, as the superuser `herald`, database `postgres`.
    pub fn url(&self) -> String {
        format!("postgres://herald@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl <action>`: `start`, `stop`, `stop -m immediate` (a crash), `promote`.
    pub fn control(&self, action: &str) -> Result<(), ServerError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=4",
            self.port,
            self.dir.display()
        );
        self.as_postgres(&format!(
            "{}/pg_ctl -D {dir}/data -l {dir}/log -m fast -w -o '{options}' {action} >/dev/null",
            self.bin.display(),
            dir = self.dir.display()
        ))
    }

    /// An empty directory of its own, owned by `postgres`, and a random port.
    fn in_new_dir(prefix: &str, bin: PathBuf) -> Result<Self, ServerError> {
        let suffix: u64 = rand::rng().random();
        let dir = std::env::temp_dir().join(format!("{prefix}-{suffix:x}"));
        std::fs::create_dir_all(&dir)
            .map_err(|source| ServerError::Spawn { command: format!("mkdir {}", dir.display()), source })?;
        let port = rand::rng().random_range(20_000..30_000);
        let pg = Self { dir, port, bin };
        run(Command::new("chown").arg("postgres").arg(&pg.dir), &format!("chown postgres {}", pg.dir.display()))?;
        Ok(pg)
    }

    fn as_postgres(&self, command: &str) -> Result<(), ServerError> {
        run(Command::new("su").args(["postgres", "-c", command]), command)
    }
}

fn run(command: &mut Command, text: &str) -> Result<(), ServerError> {
    let status = command.status().map_err(|source| ServerError::Spawn { command: text.to_owned(), source })?;
    if status.success() {
        Ok(())
    } else {
        Err(ServerError::Failed { command: text.to_owned(), status })
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = Command::new("su")
            .args([
                "postgres",
                "-c",
                &format!("{}/pg_ctl -D {}/data -m immediate stop", self.bin.display(), self.dir.display()),
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
