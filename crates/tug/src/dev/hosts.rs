//! The dev cluster's "hosts": a network namespace per node, pinned by a bind mount, joined by a
//! veth pair to a bridge, and processes started inside it.
//!
//! The bridge lives in a namespace of its own (the "switch", `DIR/switch-netns`), linked to the
//! machine's namespace by one more veth pair whose machine end carries the subnet's first
//! address. A bridge in the machine's own namespace would hand every frame crossing it to that
//! namespace's netfilter when `br_netfilter` is loaded (a machine setting we must not change),
//! where NAT rules of other software would rewrite traffic between the nodes; in the switch's
//! own namespace we turn that off, so it behaves as a plain Ethernet switch.

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

    /// The machine's end of the link to the switch, holding the subnet's first address (12
    /// characters, within IFNAMSIZ).
    pub fn bridge(&self) -> String {
        format!("tugdev{}", self.tag)
    }

    /// The switch's end of that link before it moves into the switch's namespace.
    fn uplink_peer(&self) -> String {
        format!("tdu{}", self.tag)
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
        ["tdv", "tdp", "tdu"].iter().any(|p| name.strip_prefix(p).is_some_and(|rest| rest.starts_with(&self.tag)))
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

/// The bridge's name inside the switch's namespace (private to it).
const SWITCH_BRIDGE: &str = "br0";

/// Where the switch's namespace of the cluster in `dir` is pinned.
pub fn switch_pin(dir: &Path) -> PathBuf {
    dir.join("switch-netns")
}

/// The switch nodes plug into: its pinned namespace and the bridge's index in it.
#[derive(Debug, Clone)]
pub struct Switch {
    pub pin: PathBuf,
    pub bridge_index: u32,
}

/// Creates the switch (its namespace pinned at `switch` unless it exists, the bridge in it,
/// frames kept away from netfilter) and links it to the machine's namespace, whose end gets
/// `gateway/prefix`. Idempotent.
pub async fn create_bridge(names: &LinkNames, gateway: Ipv4Addr, prefix: u8, switch: &Path) -> anyhow::Result<Switch> {
    if !is_pinned(switch) {
        create_netns(switch)?;
    }
    let bridge_index = tug_network::netns::run_in(switch, |handle| async move {
        for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"] {
            // Absent when br_netfilter is not loaded: then nothing needs turning off.
            let _ = std::fs::write(format!("/proc/sys/net/bridge/{key}"), "0");
        }
        link::ensure_bridge(&handle, SWITCH_BRIDGE, MTU).await
    })
    .await
    .context("entering the switch's namespace")?
    .context("creating the switch's bridge")?;
    let handle = host_handle()?;
    let (uplink, peer) = (names.bridge(), names.uplink_peer());
    if link::index_of(&handle, &uplink).await?.is_none() {
        handle
            .link()
            .add(rtnetlink::LinkVeth::new(&uplink, &peer).mtu(MTU).build())
            .execute()
            .await
            .with_context(|| format!("creating veth {uplink}"))?;
        let ns = File::open(switch).with_context(|| format!("opening {}", switch.display()))?;
        link::move_to_netns(&handle, &peer, ns.as_raw_fd()).await.with_context(|| format!("moving {peer}"))?;
        tug_network::netns::run_in(switch, move |handle| async move { plug(&handle, &peer, bridge_index).await })
            .await??;
    }
    let index = link::index_of(&handle, &uplink).await?.ok_or_else(|| anyhow!("{uplink} vanished"))?;
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .with_context(|| format!("bringing up {uplink}"))?;
    link::ensure_address(&handle, index, gateway, prefix).await.with_context(|| format!("addressing {uplink}"))?;
    Ok(Switch { pin: switch.to_path_buf(), bridge_index })
}

/// Whether `pin` is a mounted namespace (not just the empty file a mount point starts as).
fn is_pinned(pin: &Path) -> bool {
    let (Ok(pinned), Ok(own)) = (std::fs::metadata(pin), std::fs::metadata("/proc/self/ns/net")) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt as _;
    pinned.dev() == own.dev()
}

/// Enslaves link `name` to the bridge and brings it up.
async fn plug(handle: &rtnetlink::Handle, name: &str, bridge_index: u32) -> anyhow::Result<()> {
    let index = link::index_of(handle, name).await?.ok_or_else(|| anyhow!("no link {name}"))?;
    handle
        .link()
        .set(rtnetlink::LinkUnspec::new_with_index(index).controller(bridge_index).up().build())
        .execute()
        .await
        .with_context(|| format!("plugging {name} into the switch"))
}

/// Connects node `i`'s namespace at `netns` to the switch: a veth pair made in the switch, its
/// node end named eth0 with `address/prefix`, a default route via `gateway`, loopback up.
pub async fn attach_node(
    names: &LinkNames,
    switch: &Switch,
    i: u32,
    netns: &Path,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> anyhow::Result<()> {
    let bridge_index = switch.bridge_index;
    let (host, peer) = (names.host_veth(i), names.peer_veth(i));
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let ns_fd = ns.as_raw_fd();
    let moved = peer.clone();
    tug_network::netns::run_in(&switch.pin, move |handle| async move {
        link::create_veth(&handle, &host, &moved, MTU, bridge_index)
            .await
            .with_context(|| format!("creating veth {host}"))?;
        link::move_to_netns(&handle, &moved, ns_fd).await.with_context(|| format!("moving {moved}"))
    })
    .await
    .context("entering the switch's namespace")??;
    drop(ns);
    tug_network::netns::run_in(netns, move |handle| async move {
        link::configure_pod_interface(&handle, &peer, "eth0", address, prefix, gateway).await
    })
    .await
    .with_context(|| format!("entering {}", netns.display()))?
    .with_context(|| format!("configuring eth0 in {}", netns.display()))
}

/// Deletes this cluster's links left in the machine's namespace (the uplink, and the bridge and
/// veths of clusters made before the switch had a namespace of its own). The switch's own links
/// go with its namespace.
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
