//! `tug images ...`: the node agent's image store from the command line (as `crictl images`,
//! `crictl pull`, `crictl rmi` and `ctr images import` are for containerd).

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use tug_runtime::ImageService as _;
use tug_runtime::image::{
    BuiltinImageService, Credentials, DockerConfig, ImageRecord, ImageStore, PullOptions, Puller, import_path,
    normalized_name, parse_reference,
};

#[derive(Args, Debug)]
pub struct ImagesArgs {
    /// The node's data directory; images live under DATA_DIR/agent/images.
    #[arg(long, short = 'd', default_value = "/var/lib/tugboat", env = "TUG_DATA_DIR", global = true)]
    data_dir: PathBuf,

    #[command(subcommand)]
    command: ImagesCommand,
}

#[derive(Subcommand, Debug)]
enum ImagesCommand {
    /// List the images in the store.
    Ls {
        /// Print only image names.
        #[arg(short, long)]
        quiet: bool,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Pull an image from a registry (HTTPS; plain HTTP for registries on loopback addresses).
    Pull {
        /// Image reference, e.g. busybox, 127.0.0.1:5000/tugboat.test/busybox:1, REPO@sha256:...
        reference: String,
        /// Registry username (basic auth, or exchanged for a token when the registry asks).
        #[arg(long, requires = "password_input")]
        username: Option<String>,
        /// Registry password.
        #[arg(long, group = "password_input", requires = "username")]
        password: Option<String>,
        /// Read the registry password from standard input.
        #[arg(long, group = "password_input", requires = "username")]
        password_stdin: bool,
        /// A .dockerconfigjson (or .dockercfg) file to take credentials from, as from an
        /// imagePullSecret.
        #[arg(long, conflicts_with = "username")]
        docker_config: Option<PathBuf>,
        /// Extra CA certificate (PEM) to trust for the registry's HTTPS. Repeatable.
        #[arg(long)]
        ca_file: Vec<PathBuf>,
    },
    /// Remove images by name (or image ID), then garbage-collect unreferenced content.
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Import images from an OCI image layout (directory or tar) or a `docker save` archive.
    Import {
        file: PathBuf,
        /// Name to record the image under, overriding the names the archive carries.
        #[arg(long)]
        name: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub async fn run(args: ImagesArgs) -> anyhow::Result<()> {
    let store = ImageStore::open_in_data_dir(&args.data_dir)
        .with_context(|| format!("opening the image store in {}", args.data_dir.display()))?;
    match args.command {
        ImagesCommand::Ls { quiet, output } => list(&store, quiet, output),
        ImagesCommand::Pull { reference, username, password, password_stdin, docker_config, ca_file } => {
            let mut candidates = Vec::new();
            if let Some(username) = username {
                let password = match (password, password_stdin) {
                    (Some(password), _) => password,
                    (None, _) => {
                        let mut password = String::new();
                        std::io::stdin().read_to_string(&mut password).context("reading the password from stdin")?;
                        password.trim_end_matches(['\r', '\n']).to_owned()
                    }
                };
                candidates.push(Credentials::basic(username, password));
            }
            if let Some(path) = docker_config {
                let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
                let config = DockerConfig::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
                candidates.extend(config.lookup(&parse_reference(&reference)?));
            }
            let mut options = PullOptions::default();
            for path in ca_file {
                options.extra_ca_pem.push(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
            }
            let puller = Puller::new(store.clone(), options);
            pull(BuiltinImageService::new(store, puller), &reference, candidates).await
        }
        ImagesCommand::Rm { references } => {
            tokio::task::spawn_blocking(move || remove(&store, &references)).await.context("image removal task")?
        }
        ImagesCommand::Import { file, name } => {
            let imported = tokio::task::spawn_blocking(move || import_path(&store, &file, name.as_deref()))
                .await
                .context("import task")?
                .context("importing")?;
            for (name, record) in imported {
                println!("imported {name} (image id {})", record.config);
            }
            Ok(())
        }
    }
}

/// Pulls through the runtime's image service, which tries each set of credentials in turn as
/// the kubelet does with a pod's pull secrets (anonymously when there are none).
async fn pull(service: BuiltinImageService, reference: &str, candidates: Vec<Credentials>) -> anyhow::Result<()> {
    let image = service.pull_image(reference, &candidates).await?;
    let name = normalized_name(&parse_reference(reference)?);
    println!("pulled {name}, image id {}", image.id);
    Ok(())
}

fn remove(store: &ImageStore, references: &[String]) -> anyhow::Result<()> {
    let images = store.list()?;
    let mut missing = Vec::new();
    for wanted in references {
        let by_name = parse_reference(wanted).ok().map(|r| normalized_name(&r));
        let id = wanted.strip_prefix("sha256:").unwrap_or(wanted);
        let matches: Vec<&String> = images
            .iter()
            .filter(|(name, record)| {
                Some(name) == by_name.as_ref()
                    || (id.len() >= 12
                        && id.bytes().all(|b| b.is_ascii_hexdigit())
                        && record.config.hex().starts_with(id))
            })
            .map(|(name, _)| name)
            .collect();
        if matches.is_empty() {
            missing.push(wanted.clone());
        }
        for name in matches {
            store.remove(name)?;
            println!("deleted {name}");
        }
    }
    let report = store.gc().context("garbage-collecting the image store")?;
    tracing::debug!(blobs = report.blobs_removed, layers = report.layers_removed, "gc after rm");
    if !missing.is_empty() {
        bail!("no such image: {}", missing.join(", "));
    }
    Ok(())
}

fn list(store: &ImageStore, quiet: bool, output: Output) -> anyhow::Result<()> {
    let images = store.list()?;
    if quiet {
        for (name, _) in &images {
            println!("{name}");
        }
        return Ok(());
    }
    match output {
        Output::Json => {
            let items: Vec<serde_json::Value> = images.iter().map(|(name, record)| image_json(name, record)).collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "images": items }))?);
        }
        Output::Table => {
            let rows: Vec<[String; 5]> = images
                .iter()
                .map(|(name, record)| {
                    let (repo, tag) = split_name(name);
                    [
                        repo.to_owned(),
                        tag.to_owned(),
                        record.repo_digest.hex()[..13].to_owned(),
                        record.config.hex()[..13].to_owned(),
                        human_size(record.size),
                    ]
                })
                .collect();
            let header = ["IMAGE", "TAG", "DIGEST", "IMAGE ID", "SIZE"].map(str::to_owned);
            let mut widths = header.clone().map(|h| h.len());
            for row in &rows {
                for (width, cell) in widths.iter_mut().zip(row) {
                    *width = (*width).max(cell.len());
                }
            }
            for row in std::iter::once(&header).chain(&rows) {
                let cells: Vec<String> = row.iter().zip(widths).map(|(c, w)| format!("{c:<w$}")).collect();
                println!("{}", cells.join("   ").trim_end());
            }
        }
    }
    Ok(())
}

fn image_json(name: &str, record: &ImageRecord) -> serde_json::Value {
    let (repo, _) = split_name(name);
    serde_json::json!({
        "name": name,
        "id": record.config,
        "manifest": record.manifest,
        "repoDigest": format!("{repo}@{}", record.repo_digest),
        "size": record.size,
        "layers": record.layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
    })
}

/// `repo:tag` -> (repo, tag); `repo@digest` -> (repo, "<none>"), as crictl shows untagged images.
fn split_name(name: &str) -> (&str, &str) {
    if let Some((repo, _)) = name.split_once('@') {
        return (repo, "<none>");
    }
    match name.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (name, "<none>"),
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes}B") } else { format!("{value:.3}{}", UNITS[unit]) }
}
