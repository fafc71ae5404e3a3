//! The host-local store on a temp directory.

use std::collections::HashSet;

use super::*;

fn net(text: &str) -> Ipv4Net {
    text.parse().unwrap()
}

fn ip(text: &str) -> Ipv4Addr {
    text.parse().unwrap()
}

#[test]
fn store_directory_is_named_after_the_subnet_and_gateway_is_its_first_host() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/24")).unwrap();
    assert!(root.path().join("10.42.0.0-24").is_dir());
    assert_eq!(ipam.subnet(), net("10.42.0.0/24"));
    assert_eq!(ipam.gateway(), ip("10.42.0.1"));
}

#[test]
fn a_subnet_given_by_a_host_address_means_its_network() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.3.77/24")).unwrap();
    assert_eq!(ipam.subnet(), net("10.42.3.0/24"));
    assert_eq!(ipam.gateway(), ip("10.42.3.1"));
    assert!(root.path().join("10.42.3.0-24").is_dir());
}

#[test]
fn first_address_follows_the_gateway_and_the_file_names_its_owner() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/24")).unwrap();
    assert_eq!(ipam.allocate("sandbox-a").unwrap(), ip("10.42.0.2"));
    let content = std::fs::read_to_string(root.path().join("10.42.0.0-24/10.42.0.2")).unwrap();
    assert_eq!(content, "sandbox-a");
    let last = std::fs::read_to_string(root.path().join("10.42.0.0-24/last_reserved_ip.0")).unwrap();
    assert_eq!(last.trim(), "10.42.0.2");
}

#[test]
fn allocating_twice_for_one_owner_returns_the_same_address() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/24")).unwrap();
    let first = ipam.allocate("sandbox-a").unwrap();
    let other = ipam.allocate("sandbox-b").unwrap();
    assert_eq!(ipam.allocate("sandbox-a").unwrap(), first);
    assert_ne!(first, other);
    assert_eq!(ipam.allocations().unwrap().len(), 2);
}

#[test]
fn a_slash_29_gives_five_addresses_then_reports_exhaustion() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/29")).unwrap();
    let addresses: Vec<Ipv4Addr> = (0..5).map(|n| ipam.allocate(&format!("sandbox-{n}")).unwrap()).collect();
    let expected: Vec<Ipv4Addr> = (2..=6).map(|host| Ipv4Addr::new(10, 42, 0, host)).collect();
    assert_eq!(addresses, expected, "never the network .0, the gateway .1 or the broadcast .7");
    match ipam.allocate("sandbox-5") {
        Err(IpamError::Exhausted { subnet }) => assert_eq!(subnet, net("10.42.0.0/29")),
        other => panic!("expected Exhausted, got {other:?}"),
    }
    // A full subnet still answers an owner that holds an address.
    assert_eq!(ipam.allocate("sandbox-3").unwrap(), ip("10.42.0.5"));
}

#[test]
fn a_slash_30_has_one_address_and_smaller_subnets_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.4/30")).unwrap();
    assert_eq!(ipam.allocate("a").unwrap(), ip("10.42.0.6"));
    assert!(matches!(ipam.allocate("b"), Err(IpamError::Exhausted { .. })));
    for small in ["10.42.0.0/31", "10.42.0.0/32"] {
        assert!(matches!(HostLocalIpam::open(root.path(), net(small)), Err(IpamError::SubnetTooSmall { .. })));
    }
}

#[test]
fn a_released_address_is_not_handed_out_again_at_once() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/29")).unwrap();
    let a = ipam.allocate("a").unwrap();
    let b = ipam.allocate("b").unwrap();
    assert_eq!(ipam.release("a").unwrap(), Some(a));
    assert_eq!(ipam.allocate("c").unwrap(), ip("10.42.0.4"), "after b, not a's freed .2");
    assert_ne!(b, a);
    // The round robin wraps past the broadcast back to the start of the range.
    assert_eq!(ipam.allocate("d").unwrap(), ip("10.42.0.5"));
    assert_eq!(ipam.allocate("e").unwrap(), ip("10.42.0.6"));
    assert_eq!(ipam.allocate("f").unwrap(), ip("10.42.0.2"));
    assert!(matches!(ipam.allocate("g"), Err(IpamError::Exhausted { .. })));
}

#[test]
fn release_frees_the_address_and_an_unknown_owner_has_nothing_to_free() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/24")).unwrap();
    let a = ipam.allocate("a").unwrap();
    assert_eq!(ipam.release("nobody").unwrap(), None);
    assert_eq!(ipam.allocations().unwrap(), vec![(a, "a".to_string())]);
    assert_eq!(ipam.release("a").unwrap(), Some(a));
    assert_eq!(ipam.release("a").unwrap(), None);
    assert!(ipam.allocations().unwrap().is_empty());
    assert!(!root.path().join("10.42.0.0-24").join(a.to_string()).exists());
}

#[test]
fn allocations_survive_reopening_the_store() {
    let root = tempfile::tempdir().unwrap();
    let subnet = net("10.42.1.0/24");
    let (a, b) = {
        let ipam = HostLocalIpam::open(root.path(), subnet).unwrap();
        let a = ipam.allocate("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        ipam.release("a").unwrap();
        (a, b)
    };
    let ipam = HostLocalIpam::open(root.path(), subnet).unwrap();
    assert_eq!(ipam.allocations().unwrap(), vec![(b, "b".to_string())]);
    assert_eq!(ipam.allocate("b").unwrap(), b, "the owner keeps its address across a restart");
    let c = ipam.allocate("c").unwrap();
    assert_eq!(c, ip("10.42.1.4"), "the round robin position survives too");
    assert_ne!(c, a);
}

#[test]
fn files_written_by_host_local_are_read_with_their_owner() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/24")).unwrap();
    std::fs::write(root.path().join("10.42.0.0-24/10.42.0.9"), "sandbox-x\r\neth0").unwrap();
    assert_eq!(ipam.allocations().unwrap(), vec![(ip("10.42.0.9"), "sandbox-x".to_string())]);
    assert_eq!(ipam.allocate("sandbox-x").unwrap(), ip("10.42.0.9"));
    assert_eq!(ipam.release("sandbox-x").unwrap(), Some(ip("10.42.0.9")));
}

#[test]
fn allocations_are_sorted_by_address() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/24")).unwrap();
    for owner in ["a", "b", "c"] {
        ipam.allocate(owner).unwrap();
    }
    ipam.release("a").unwrap();
    ipam.allocate("d").unwrap();
    ipam.allocate("a").unwrap();
    let addresses: Vec<Ipv4Addr> = ipam.allocations().unwrap().into_iter().map(|(address, _)| address).collect();
    let mut sorted = addresses.clone();
    sorted.sort();
    assert_eq!(addresses, sorted);
    assert_eq!(addresses.len(), 4);
    // "10.42.0.10" sorts after "10.42.0.9" as an address, not as text.
    for n in 0..8 {
        ipam.allocate(&format!("more-{n}")).unwrap();
    }
    let addresses: Vec<Ipv4Addr> = ipam.allocations().unwrap().into_iter().map(|(address, _)| address).collect();
    assert!(addresses.windows(2).all(|pair| pair[0] < pair[1]), "{addresses:?}");
}

#[test]
fn eight_threads_allocating_at_once_get_distinct_addresses() {
    let root = tempfile::tempdir().unwrap();
    let ipam = HostLocalIpam::open(root.path(), net("10.42.0.0/24")).unwrap();
    let addresses: Vec<Ipv4Addr> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let ipam = &ipam;
                scope.spawn(move || (0..4).map(|k| ipam.allocate(&format!("t{n}-{k}")).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect()
    });
    let distinct: HashSet<_> = addresses.iter().collect();
    assert_eq!(distinct.len(), 32, "{addresses:?}");
    assert_eq!(ipam.allocations().unwrap().len(), 32);
}

#[test]
fn two_stores_on_one_directory_never_hand_out_one_address_twice() {
    // Two opens of the same directory stand for two processes (a restarted agent beside an old
    // one): only the directory's lock and O_EXCL files keep them apart.
    let root = tempfile::tempdir().unwrap();
    let stores = [
        HostLocalIpam::open(root.path(), net("10.42.0.0/26")).unwrap(),
        HostLocalIpam::open(root.path(), net("10.42.0.0/26")).unwrap(),
    ];
    let addresses: Vec<Ipv4Addr> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|n| {
                let store = &stores[n % 2];
                scope.spawn(move || (0..6).map(|k| store.allocate(&format!("p{n}-{k}")).unwrap()).collect::<Vec<_>>())
            })
            .collect();
        handles.into_iter().flat_map(|handle| handle.join().unwrap()).collect()
    });
    let distinct: HashSet<_> = addresses.iter().collect();
    assert_eq!(distinct.len(), 48, "{addresses:?}");
}
