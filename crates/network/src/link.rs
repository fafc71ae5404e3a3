//! The netlink operations the pod network needs (what `ip link`, `ip addr` and `ip route` do),
//! each idempotent so that a retry after a partial failure converges.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

/// `EEXIST`, `ENODEV` and `ENOENT` as netlink reports them.
const EEXIST: i32 = 17;
const ENODEV: i32 = 19;
const ESRCH: i32 = 3;
const EADDRNOTAVAIL: i32 = 99;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{operation} {name}: {source}")]
    Netlink { operation: &'static str, name: String, source: rtnetlink::Error },
    #[error("no network interface named {0}")]
    NotFound(String),
}

fn failed(operation: &'static str, name: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> LinkError {
    let name = name.into();
    move |source| LinkError::Netlink { operation, name, source }
}

/// The errno of a netlink error reply, positive (`EEXIST` is 17).
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => message.code.map(|c| -c.get()),
        _ => None,
    }
}

/// The link named `name`, if there is one.
pub async fn get(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, LinkError> {
    match handle.link().get().match_name(name.to_owned()).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(None),
        Err(e) => Err(failed("looking up", name)(e)),
    }
}

/// The index of the link named `name`, if there is one.
pub async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, LinkError> {
    Ok(get(handle, name).await?.map(|l| l.header.index))
}

/// The MTU a link reports.
pub fn mtu(link: &LinkMessage) -> Option<u32> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Mtu(m) => Some(*m),
        _ => None,
    })
}

/// The name of a link.
pub fn name(link: &LinkMessage) -> Option<&str> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

/// Every link whose controller (bridge) is `bridge_index`.
pub async fn ports_of(handle: &Handle, bridge_index: u32) -> Result<Vec<LinkMessage>, LinkError> {
    let links: Vec<LinkMessage> =
        handle.link().get().execute().try_collect().await.map_err(failed("listing", "links"))?;
    Ok(links
        .into_iter()
        .filter(|l| l.attributes.iter().any(|a| matches!(a, LinkAttribute::Controller(i) if *i == bridge_index)))
        .collect())
}

/// Creates the bridge `name` unless it exists, and brings it up. Returns its index.
pub async fn ensure_bridge(handle: &Handle, name: &str, mtu: u32) -> Result<u32, LinkError> {
    if get(handle, name).await?.is_none() {
        match handle.link().add(LinkBridge::new(name).mtu(mtu).up().build()).execute().await {
            Ok(()) => {}
            Err(e) if errno(&e) == Some(EEXIST) => {}
            Err(e) => return Err(failed("creating the bridge", name)(e)),
        }
    }
    let index = index_of(handle, name).await?.ok_or_else(|| LinkError::NotFound(name.to_owned()))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(failed("bringing up", name))?;
    Ok(index)
}

/// The IPv4 addresses (with prefix length) on link `index`.
pub async fn addresses(handle: &Handle, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, LinkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing addresses of link", index.to_string()))?;
    Ok(messages
        .iter()
        .filter(|m| m.header.index == index)
        .flat_map(|m| {
            m.attributes.iter().filter_map(move |a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, m.header.prefix_len)),
                _ => None,
            })
        })
        .collect())
}

/// Removes `address/prefix` from link `index`; nothing to do when it is not there.
pub async fn remove_address(handle: &Handle, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(failed("listing addresses of link", index.to_string()))?;
    for message in messages.into_iter().filter(|m| m.header.index == index && m.header.prefix_len == prefix) {
        let matches =
            message.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address));
        if matches {
            match handle.address().del(message).execute().await {
                Ok(()) => {}
                Err(e) if matches!(errno(&e), Some(EADDRNOTAVAIL) | Some(ENODEV)) => {}
                Err(e) => return Err(failed("removing an address from", format!("{address}/{prefix}"))(e)),
            }
        }
    }
    Ok(())
}

/// Adds `address/prefix` to link `index` unless it is there already.
pub async fn ensure_address(handle: &Handle, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
    match handle.address().add(index, IpAddr::V4(address), prefix).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(failed("adding an address to", format!("{address}/{prefix}"))(e)),
    }
}

/// Creates a veth pair `host`/`peer` with `host` enslaved to `bridge_index` and up. A pair
/// left from an earlier attempt is replaced.
pub async fn create_veth(
    handle: &Handle,
    host: &str,
    peer: &str,
    mtu: u32,
    bridge_index: u32,
) -> Result<(), LinkError> {
    delete(handle, host).await?;
    delete(handle, peer).await?;
    handle
        .link()
        .add(LinkVeth::new(host, peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(failed("creating the veth pair", host))?;
    // The builder's MTU is the host end's; the pod's end gets the same.
    handle
        .link()
        .set(LinkUnspec::new_with_name(peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(failed("setting the MTU of", peer))?;
    let index = index_of(handle, host).await?.ok_or_else(|| LinkError::NotFound(host.to_owned()))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).controller(bridge_index).up().build())
        .execute()
        .await
        .map_err(failed("attaching to the bridge", host))?;
    // Hairpin: a pod reaching its own hostPort gets the DNATed packet back out of the port it
    // came in by (the CNI bridge plugin's hairpinMode, on in k3s' configuration).
    handle
        .link()
        .set_port(LinkBridgePort::new(index).hairpin(true).build())
        .execute()
        .await
        .map_err(failed("turning on hairpin mode of", host))?;
    Ok(())
}

/// Moves link `name` into the network namespace open as `netns_fd`.
pub async fn move_to_netns(handle: &Handle, name: &str, netns_fd: RawFd) -> Result<(), LinkError> {
    let index = index_of(handle, name).await?.ok_or_else(|| LinkError::NotFound(name.to_owned()))?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).setns_by_fd(netns_fd).build())
        .execute()
        .await
        .map_err(failed("moving into the pod's namespace", name))
}

/// Deletes link `name`; false when there was none.
pub async fn delete(handle: &Handle, name: &str) -> Result<bool, LinkError> {
    let Some(index) = index_of(handle, name).await? else { return Ok(false) };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if errno(&e) == Some(ENODEV) => Ok(false),
        Err(e) => Err(failed("deleting", name)(e)),
    }
}

/// Inside a pod's namespace: renames `from` to `to`, gives it `address/prefix`, brings it and
/// the loopback up and routes everything through `gateway` (CNI bridge plugin's layout).
pub async fn configure_pod_interface(
    handle: &Handle,
    from: &str,
    to: &str,
    address: Ipv4Addr,
    prefix: u8,
    gateway: Ipv4Addr,
) -> Result<(), LinkError> {
    if let Some(lo) = index_of(handle, "lo").await? {
        handle
            .link()
            .set(LinkUnspec::new_with_index(lo).up().build())
            .execute()
            .await
            .map_err(failed("bringing up", "lo"))?;
    }
    let index = match index_of(handle, from).await? {
        Some(index) => {
            handle
                .link()
                .set(LinkUnspec::new_with_index(index).name(to.to_owned()).build())
                .execute()
                .await
                .map_err(failed("renaming", from))?;
            index
        }
        None => index_of(handle, to).await?.ok_or_else(|| LinkError::NotFound(from.to_owned()))?,
    };
    ensure_address(handle, index, address, prefix).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(failed("bringing up", to))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(index).build();
    match handle.route().add(default).execute().await {
        Ok(()) => Ok(()),
        Err(e) if errno(&e) == Some(EEXIST) => Ok(()),
        Err(e) => Err(failed("adding the default route via", gateway.to_string())(e)),
    }
}

/// The MTU used when the node's own link cannot be found, or is the loopback.
const DEFAULT_MTU: u32 = 1500;

/// The pods' MTU on a node whose address is `node_ip`: that link's, less what the overlay
/// adds to every packet.
pub async fn pod_mtu(handle: &Handle, node_ip: Ipv4Addr, overlay_overhead: u32) -> Result<u32, LinkError> {
    let base = match mtu_of_link_with(handle, node_ip).await? {
        Some(mtu) if !node_ip.is_loopback() => mtu,
        _ => DEFAULT_MTU,
    };
    Ok(base.saturating_sub(overlay_overhead))
}

/// The MTU of the link holding `address`, if any link does.
pub async fn mtu_of_link_with(handle: &Handle, address: Ipv4Addr) -> Result<Option<u32>, LinkError> {
    match index_of_link_with(handle, address).await? {
        Some(index) => mtu_by_index(handle, index).await,
        None => Ok(None),
    }
}

/// The index of the link holding `address`, if any link does.
pub async fn index_of_link_with(handle: &Handle, address: Ipv4Addr) -> Result<Option<u32>, LinkError> {
    let messages: Vec<_> =
        handle.address().get().execute().try_collect().await.map_err(failed("listing", "addresses"))?;
    Ok(messages
        .iter()
        .find(|m| m.attributes.iter().any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if *ip == address)))
        .map(|m| m.header.index))
}

/// The MTU of link `index`.
pub async fn mtu_by_index(handle: &Handle, index: u32) -> Result<Option<u32>, LinkError> {
    let link = match handle.link().get().match_index(index).execute().try_next().await {
        Ok(link) => link,
        Err(e) if matches!(errno(&e), Some(ENODEV) | Some(ESRCH)) => None,
        Err(e) => return Err(failed("looking up link", index.to_string())(e)),
    };
    Ok(link.as_ref().and_then(mtu))
}
