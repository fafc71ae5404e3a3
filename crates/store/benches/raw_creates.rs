//! Raw create throughput of each backend, 1 and 16 clients.
//!
//! `cargo bench -p tug-store --bench raw_creates [-- WRITES]` (default 4000 writes per run).
//! The in-memory store is the ceiling of what the trait machinery allows; SQLite's figures
//! include an fsync per committed group, so they depend on the disk.

use std::sync::Arc;

use tug_store::Store;
use tug_store::bench::{Workload, bench_raw_creates};
use tug_store::memory::MemoryStore;
use tug_store::sqlite::SqliteStore;

fn main() {
    let writes: usize = std::env::args().skip(1).find_map(|arg| arg.parse().ok()).unwrap_or(4000);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        for clients in [1, 16] {
            let memory: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let report = bench_raw_creates(memory, clients, writes, &Workload::default()).await;
            println!("memory  {report}");

            let dir = tempfile::tempdir().expect("temporary directory");
            let sqlite = SqliteStore::open(&dir.path().join("state.db")).expect("open sqlite");
            let report = bench_raw_creates(Arc::new(sqlite), clients, writes, &Workload::default()).await;
            println!("sqlite  {report}");
        }
    });
}
