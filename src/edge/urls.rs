//! URLs a user can click for a bound listener: a wildcard bind (`0.0.0.0`, `[::]`) is
//! reachable at loopback and at each of the machine's addresses, never at `0.0.0.0` itself.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The hosts (`127.0.0.1`, `[::1]`, `192.0.2.7`) at which `addr` can be reached, loopback
/// first. `interfaces` are the machine's addresses ([`machine_addresses`]).
pub fn reachable_hosts(addr: SocketAddr, interfaces: &[IpAddr]) -> Vec<String> {
    let ip = addr.ip();
    if !ip.is_unspecified() {
        return vec![host(ip)];
    }
    // [::] also takes IPv4 on Linux unless IPV6_V6ONLY is set; 0.0.0.0 is IPv4 only.
    let v6 = ip.is_ipv6();
    let mut hosts = vec![host(if v6 {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    })];
    for a in interfaces {
        let usable = !a.is_loopback()
            && !a.is_unspecified()
            && match a {
                IpAddr::V4(_) => true,
                // Link-local addresses need a zone (`%eth0`) a browser cannot take.
                IpAddr::V6(a6) => v6 && (a6.segments()[0] & 0xffc0) != 0xfe80,
            };
        if usable && !hosts.contains(&host(*a)) {
            hosts.push(host(*a));
        }
    }
    hosts
}

/// The machine's interface addresses; empty when they cannot be read.
pub fn machine_addresses() -> Vec<IpAddr> {
    if_addrs::get_if_addrs()
        .map(|ifs| ifs.into_iter().map(|i| i.ip()).collect())
        .unwrap_or_default()
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_lists_loopback_and_the_machine_never_the_wildcard() {
        let ifs: Vec<IpAddr> = ["127.0.0.1", "192.0.2.7", "::1", "2001:db8::7", "fe80::1"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let any4: SocketAddr = "0.0.0.0:6080".parse().unwrap();
        assert_eq!(reachable_hosts(any4, &ifs), ["127.0.0.1", "192.0.2.7"]);
        let any6: SocketAddr = "[::]:6080".parse().unwrap();
        assert_eq!(
            reachable_hosts(any6, &ifs),
            ["[::1]", "192.0.2.7", "[2001:db8::7]"]
        );
        let one: SocketAddr = "127.0.0.1:6080".parse().unwrap();
        assert_eq!(reachable_hosts(one, &ifs), ["127.0.0.1"]);
    }
}
