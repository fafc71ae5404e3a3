//! The datastore a server runs on, and its backups: `--datastore-endpoint` and friends,
//! `tug datastore snapshot save FILE` and `tug server --cluster-reset
//! --cluster-reset-restore-path FILE` (k3s' shapes). The snapshot format is described in
//! [`tug_store::snapshot`]: one Tugboat SQLite file, whatever the backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use tug_store::Store;
use tug_store::etcd::{EtcdConfig, EtcdStore};
use tug_store::sqlite::SqliteStore;

/// Where the cluster's state is kept (k3s' flag names).
#[derive(Args, Debug, Clone)]
pub struct DatastoreArgs {
    /// Datastore: `sqlite` (the default, DATA_DIR/db/state.db), an etcd v3 cluster as
    /// `http(s)://host:port[,...]` (keys under /registry, as upstream), or `memory` (nothing
    /// persists; for tests).
    #[arg(long, default_value = "sqlite", env = "TUG_DATASTORE_ENDPOINT")]
    pub datastore_endpoint: String,

    /// CA bundle that verifies the etcd members' serving certificates.
    #[arg(long, env = "TUG_DATASTORE_CAFILE")]
    pub datastore_cafile: Option<PathBuf>,

    /// Client certificate presented to etcd.
    #[arg(long, env = "TUG_DATASTORE_CERTFILE")]
    pub datastore_certfile: Option<PathBuf>,

    /// Private key of the client certificate presented to etcd.
    #[arg(long, env = "TUG_DATASTORE_KEYFILE")]
    pub datastore_keyfile: Option<PathBuf>,
}

impl DatastoreArgs {
    /// Whether other servers may use the same datastore (etcd), rather than one server alone.
    pub fn is_shared(&self) -> bool {
        !matches!(self.datastore_endpoint.as_str(), "sqlite" | "" | "memory")
    }

    fn etcd_config(&self) -> anyhow::Result<EtcdConfig> {
        Ok(EtcdConfig {
            endpoints: EtcdConfig::parse_endpoints(&self.datastore_endpoint)
                .map_err(|e| anyhow::anyhow!("--datastore-endpoint: {e}"))?,
            ca_file: self.datastore_cafile.clone(),
            cert_file: self.datastore_certfile.clone(),
            key_file: self.datastore_keyfile.clone(),
        })
    }

    /// Opens the datastore (for SQLite, the file under `data_dir`).
    pub async fn open(&self, data_dir: &Path) -> anyhow::Result<Arc<dyn Store>> {
        match self.datastore_endpoint.as_str() {
            "sqlite" | "" => {
                let path = sqlite_path(data_dir);
                let dir = path.parent().expect("the store file is in a directory").to_path_buf();
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
                    .await
                    .context("opening the datastore")?
                    .context("opening the sqlite datastore")?;
                Ok(Arc::new(store))
            }
            "memory" => Ok(Arc::new(tug_store::memory::MemoryStore::new())),
            endpoints if endpoints.starts_with("http://") || endpoints.starts_with("https://") => {
                let store = EtcdStore::connect(&self.etcd_config()?)
                    .await
                    .with_context(|| format!("connecting to etcd at {endpoints}"))?;
                Ok(Arc::new(store))
            }
            other => {
                bail!("unsupported --datastore-endpoint {other:?}: use sqlite, memory or http(s)://host:port of etcd")
            }
        }
    }
}

/// The embedded store's file.
pub fn sqlite_path(data_dir: &Path) -> PathBuf {
    data_dir.join("db").join("state.db")
}

/// `tug datastore ...`
#[derive(Args, Debug)]
pub struct DatastoreCommandArgs {
    #[command(subcommand)]
    pub command: DatastoreCommand,
}

#[derive(Subcommand, Debug)]
pub enum DatastoreCommand {
    /// Snapshots of the whole datastore.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Write a snapshot of the datastore to FILE (a Tugboat SQLite store file, whatever the
    /// backend), while the servers keep running. Restore it with `tug server --cluster-reset
    /// --cluster-reset-restore-path FILE`.
    Save {
        /// Where to write the snapshot; must not exist.
        file: PathBuf,
        /// The server's data directory (for the embedded SQLite store).
        #[arg(long, short = 'd', default_value = "/var/lib/tugboat", env = "TUG_DATA_DIR")]
        data_dir: PathBuf,
        #[command(flatten)]
        datastore: DatastoreArgs,
    },
}

pub async fn run(args: DatastoreCommandArgs) -> anyhow::Result<()> {
    match args.command {
        DatastoreCommand::Snapshot(SnapshotCommand::Save { file, data_dir, datastore }) => {
            save(&file, &data_dir, &datastore).await
        }
    }
}

async fn save(file: &Path, data_dir: &Path, datastore: &DatastoreArgs) -> anyhow::Result<()> {
    if file.exists() {
        bail!("{} already exists: snapshots never overwrite", file.display());
    }
    match datastore.datastore_endpoint.as_str() {
        "sqlite" | "" => {
            let db = sqlite_path(data_dir);
            if !db.exists() {
                bail!("no datastore at {} (is --data-dir right?)", db.display());
            }
            let dest = file.to_path_buf();
            tokio::task::spawn_blocking(move || tug_store::snapshot::save_sqlite(&db, &dest))
                .await?
                .context("writing the snapshot")?;
            println!("snapshot saved: {}", file.display());
        }
        "memory" => bail!("a memory datastore lives inside its server and cannot be saved from outside"),
        _ => {
            let source = datastore.open(data_dir).await?;
            let dest = file.to_path_buf();
            let target = tokio::task::spawn_blocking(move || SqliteStore::open(&dest)).await??;
            let copied = tug_store::snapshot::replace_contents(source.as_ref(), &target)
                .await
                .context("copying the datastore into the snapshot")?;
            drop(target);
            println!("snapshot saved: {} ({} keys at etcd revision {})", file.display(), copied.keys, copied.revision);
        }
    }
    Ok(())
}

/// `tug server --cluster-reset --cluster-reset-restore-path FILE`: replaces the datastore's
/// contents with the snapshot's. Run it with every server of the cluster stopped; then start
/// the servers again without the flags (k3s' procedure).
pub async fn restore(snapshot: &Path, data_dir: &Path, datastore: &DatastoreArgs) -> anyhow::Result<()> {
    // Check the snapshot by opening a copy: opening writes (WAL files), and a damaged file must
    // be refused before anything is replaced.
    let staging = data_dir.join("db").join(format!("restore-{}.db", std::process::id()));
    std::fs::create_dir_all(data_dir.join("db"))?;
    std::fs::copy(snapshot, &staging).with_context(|| format!("reading the snapshot {}", snapshot.display()))?;
    let staged = staging.clone();
    let verified = tokio::task::spawn_blocking(move || SqliteStore::open(&staged))
        .await?
        .with_context(|| format!("{} is not a usable Tugboat snapshot", snapshot.display()));
    let verified = match verified {
        Ok(store) => store,
        Err(e) => {
            let _ = std::fs::remove_file(&staging);
            return Err(e);
        }
    };
    match datastore.datastore_endpoint.as_str() {
        "sqlite" | "" => {
            // Closing checkpoints the WAL into the file itself, which then stands alone.
            drop(verified);
            let db = sqlite_path(data_dir);
            let aside =
                data_dir.join("db").join(format!("state.db.before-reset-{}", jiff::Timestamp::now().as_second()));
            if db.exists() {
                std::fs::rename(&db, &aside).with_context(|| format!("moving {} aside", db.display()))?;
                for suffix in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
                }
                println!("the previous datastore is kept at {}", aside.display());
            }
            std::fs::rename(&staging, &db).with_context(|| format!("installing the snapshot as {}", db.display()))?;
        }
        "memory" => bail!("--cluster-reset needs a datastore that outlives the server"),
        _ => {
            let target = datastore.open(data_dir).await?;
            let copied = tug_store::snapshot::replace_contents(&verified, target.as_ref())
                .await
                .context("writing the snapshot into etcd")?;
            drop(verified);
            let _ = std::fs::remove_file(&staging);
            println!(
                "wrote {} keys into etcd and deleted {} keys the snapshot did not have",
                copied.keys, copied.deleted
            );
        }
    }
    println!("datastore restored from {}: start the server again without --cluster-reset", snapshot.display());
    Ok(())
}
