//! A Postgres server of a test's own, for tests that stop or restart it.

use std::path::PathBuf;
use std::process::Command;

use rand::Rng;

use super::unique;

/// A Postgres server of the test's own, so stopping it disturbs no other test.
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
}

impl PrivatePostgres {
    pub fn start() -> Self {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries: run `scripts/services up`")
            .filter_map(|e| e.ok()?.file_name().into_string().ok()?.parse::<u32>().ok())
            .max()
            .unwrap();
        let bin = PathBuf::from(format!("/usr/lib/postgresql/{version}/bin"));
        let dir = std::env::temp_dir().join(unique("herald-pg"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = rand::rng().random_range(20_000..30_000);
        let pg = Self { dir, port, bin };
        pg.as_postgres(&format!("chown postgres {}", pg.dir.display()), true);
        pg.as_postgres(
            &format!("{}/initdb -D {}/data -A trust -U herald >/dev/null", pg.bin.display(), pg.dir.display()),
            false,
        );
        pg.control("start");
        pg
    }

    /// An asynchronous streaming standby of `primary`, made by `pg_basebackup -R` and started:
    /// read-only, in recovery, until [`PrivatePostgres::control`]`("promote")`.
    pub fn standby_of(primary: &PrivatePostgres) -> Self {
        let dir = std::env::temp_dir().join(unique("herald-pg-standby"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = rand::rng().random_range(20_000..30_000);
        let pg = Self { dir, port, bin: primary.bin.clone() };
        pg.as_postgres(&format!("chown postgres {}", pg.dir.display()), true);
        pg.as_postgres(
            &format!(
                "{}/pg_basebackup -h 127.0.0.1 -p {} -U herald -D {}/data -R -X stream >/dev/null",
                pg.bin.display(),
                primary.port,
                pg.dir.display()
            ),
            false,
        );
        pg.control("start");
        pg
    }

    /// A streaming standby of `primary` made from a file copy of its data directory, taken
    /// while it is stopped for a moment: unlike `pg_basebackup`, the copy keeps the replication
    /// slots, as a PostgreSQL 17 failover slot would be kept on a standby (at the state it had
    /// when copied, which is never ahead of its reader). Read-only until promoted.
    pub fn copy_of(primary: &PrivatePostgres) -> Self {
        let dir = std::env::temp_dir().join(unique("herald-pg-copy"));
        std::fs::create_dir_all(&dir).unwrap();
        let port = rand::rng().random_range(20_000..30_000);
        let pg = Self { dir, port, bin: primary.bin.clone() };
        pg.as_postgres(&format!("chown postgres {}", pg.dir.display()), true);
        primary.control("stop");
        pg.as_postgres(&format!("cp -a {}/data {}/data", primary.dir.display(), pg.dir.display()), false);
        primary.control("start");
        pg.as_postgres(
            &format!(
                "touch {dir}/data/standby.signal && echo \"primary_conninfo = 'host=127.0.0.1 port={} user=herald'\" >> {dir}/data/postgresql.auto.conf",
                primary.port,
                dir = pg.dir.display()
            ),
            false,
        );
        pg.control("start");
        pg
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("postgres://herald@127.0.0.1:{}/postgres", self.port)
    }

    pub fn control(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c wal_level=logical -c max_replication_slots=4",
            self.port,
            self.dir.display()
        );
        self.as_postgres(
            &format!(
                "{}/pg_ctl -D {dir}/data -l {dir}/log -m fast -w -o '{options}' {action} >/dev/null",
                self.bin.display(),
                dir = self.dir.display()
            ),
            false,
        );
    }

    fn as_postgres(&self, command: &str, as_root: bool) {
        let status = if as_root {
            Command::new("sh").args(["-c", command]).status()
        } else {
            Command::new("su").args(["postgres", "-c", command]).status()
        }
        .unwrap();
        assert!(status.success(), "`{command}` failed");
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
