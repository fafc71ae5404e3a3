//! The dev cluster's "hosts": a network namespace per node, pinned by a bind mount, joined to
//! a bridge in the machine's own namespace by a veth pair, and processes started inside it.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, anyhow};
use futures::TryStreamExt;
use rustix::thread::{LinkNameSpaceType, UnshareFlags, move_into_link_name_space};
use sha2::Digest;
use tug_network::link;

/// The MTU of the dev network's links: a normal Ethernet's, the overlay subtracts its own.
const MTU: u32 = 1500;

/// The names of the links a cluster directory owns, derived from its canonical path so that
/// two clusters on one machine do not collide and `down` finds them without any state.
#[derive(Debug, Clone)]
pub struct LinkNames {
    tag: String,
}

impl LinkNames {
    pub fn for_dir(canonical_dir: &Path) -> Self {
        let digest = sha2::Sha256::digest(canonical_dir.as_os_str().as_encoded_bytes());
        LinkNames { tag: hex::encode(digest)[..6].to_owned() }
    }

    /// The bridge in the machine's namespace (12 characters, within IFNAMSIZ).
    pub fn bridge(&self) -> String {
        format!("tugdev{}", self.tag)
    }

    /// The host end of node `i`'s veth pair.
    pub fn host_veth(&self, i: u32) -> String {
        format!("tdv{}{i}", self.tag)
    }

    /// The node end of node `i`'s veth pair before it moves into the node's namespace.
    pub fn peer_veth(&self, i: u32) -> String {
        format!("tdp{}{i}", self.tag)
    }

    /// Whether `name` is one of this cluster's veths.
    fn owns_veth(&self, name: &str) -> bool {
        name.strip_prefix("tdv").or_else(|| name.strip_prefix("tdp")).is_some_and(|rest| rest.starts_with(&self.tag))
    }
}

/// Creates a new network namespace and pins it by bind-mounting it onto `pin` (created empty).
pub fn create_netns(pin: &Path) -> anyhow::Result<()> {
    File::create(pin).with_context(|| format!("creating {}", pin.display()))?;
    let target = pin.to_path_buf();
    // A thread of our own leaves the namespace it made when it ends; the bind mount keeps the
    // namespace alive after that.
    std::thread::Builder::new()
        .name("dev-netns".into())
        .spawn(move || -> anyhow::Result<()> {
            unshare_network()?;
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)
                .with_context(|| format!("bind-mounting the new network namespace onto {}", target.display()))
        })
        .context("starting the namespace thread")?
        .join()
        .map_err(|_| anyhow!("the namespace thread panicked"))?
}

#[allow(unsafe_code)]
fn unshare_network() -> anyhow::Result<()> {
    // SAFETY: called on a thread spawned only for this (create_netns), which does nothing but
    // bind-mount its namespace and end; no other code observes its namespace change.
    unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }.context("unsharing the network namespace")
}

/// A netlink handle on the machine's own namespace, its connection driven on the runtime.
fn host_handle() -> anyhow::Result<rtnetlink::Handle> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    tokio::spawn(connection);
    Ok(handle)
}

/// Creates the bridge (up, with `gateway/prefix`) in the machine's namespace. Returns its index.
pub async fn create_bridge(names: &LinkNames, gateway: Ipv4Addr, prefix: u8) -> anyhow::Result<u32> {
    let handle = host_handle()?;
    let bridge = names.bridge();
    let index =
        link::ensure_bridge(&handle, &bridge, MTU).await.with_context(|| format!("creating bridge {bridge}"))?;
    link::ensure_address(&handle, index, gateway, prefix).await.with_context(|| format!("addressing {bridge}"))?;
    Ok(index)
}

/// Connects node `i`'s namespace at `netns` to the bridge: a veth pair, the node's end named
/// eth0 with `address/prefix`, a default route via `gateway`, loopback up.
pub async fn attach_node(
    names: &LinkNames,
    bridge_index: u32,
    i: u32,
    netns: &Path,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> anyhow::Result<()> {
    let handle = host_handle()?;
    let (host, peer) = (names.host_veth(i), names.peer_veth(i));
    link::create_veth(&handle, &host, &peer, MTU, bridge_index)
        .await
        .with_context(|| format!("creating veth {host}"))?;
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    link::move_to_netns(&handle, &peer, ns.as_raw_fd()).await.with_context(|| format!("moving {peer}"))?;
    tug_network::netns::run_in(netns, move |handle| async move {
        link::configure_pod_interface(&handle, &peer, "eth0", address, prefix, gateway).await
    })
    .await
    .with_context(|| format!("entering {}", netns.display()))?
    .with_context(|| format!("configuring eth0 in {}", netns.display()))
}

/// Deletes the bridge and every veth of this cluster left in the machine's namespace.
pub async fn delete_links(names: &LinkNames) -> anyhow::Result<()> {
    let handle = host_handle()?;
    let links: Vec<_> = handle.link().get().execute().try_collect().await.context("listing links")?;
    for message in &links {
        if let Some(name) = link::name(message).filter(|n| names.owns_veth(n)) {
            link::delete(&handle, name).await.with_context(|| format!("deleting {name}"))?;
        }
    }
    let bridge = names.bridge();
    link::delete(&handle, &bridge).await.with_context(|| format!("deleting {bridge}"))?;
    Ok(())
}

/// Starts `command` inside the network namespace pinned at `netns`, in a process group of its
/// own (so it outlives us and can be signalled as a whole), stdin from /dev/null and output
/// appended to `log`.
pub fn spawn_in(netns: &Path, mut command: Command, log: &Path) -> anyhow::Result<Child> {
    let out =
        File::options().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone().with_context(|| format!("opening {}", log.display()))?;
    command.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
    let netns: PathBuf = netns.to_path_buf();
    // setns moves only the calling thread and children inherit its namespace, so the spawn
    // happens on a thread of ours that entered the node's namespace (no pre_exec needed).
    std::thread::Builder::new()
        .name("dev-spawn".into())
        .spawn(move || -> anyhow::Result<Child> {
            let ns = File::open(&netns).with_context(|| format!("opening {}", netns.display()))?;
            move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))
                .with_context(|| format!("entering {}", netns.display()))?;
            command.spawn().with_context(|| format!("starting {:?}", command.get_program()))
        })
        .context("starting the spawn thread")?
        .join()
        .map_err(|_| anyhow!("the spawn thread panicked"))?
}
