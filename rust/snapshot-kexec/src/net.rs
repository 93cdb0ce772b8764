//! The network the ramdisk reproduces: IPv4 addresses, routes and MTU of the
//! interfaces that carry routes on the running system.
//!
//! Read on the running system ([`Network::current`]) and applied in the
//! ramdisk ([`Network::apply`]) with the classic `ioctl`s, so no tool and no
//! netlink library is needed. Interfaces are matched by MAC address: the
//! ramdisk has no udev, so `enp0s2` there is `eth0`.

use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One interface to bring up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name on the running system (for the log).
    pub name: String,
    /// Its MAC address (`52:54:00:12:34:56`), how the ramdisk finds it.
    pub mac: String,
    /// Its MTU.
    pub mtu: u32,
    /// IPv4 addresses with their prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
}

/// One IPv4 route (from `/proc/net/route`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Name of the interface on the running system.
    pub interface: String,
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Prefix length of the destination.
    pub prefix: u8,
    /// Next hop, if not directly connected.
    pub gateway: Option<Ipv4Addr>,
    /// Route metric.
    pub metric: u32,
}

/// What the ramdisk sets up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Interfaces, each with its addresses.
    pub interfaces: Vec<Interface>,
    /// Routes, in the order they are added (directly connected first).
    pub routes: Vec<Route>,
}

/// Parses `/proc/net/route` (hex, host byte order of the kernel: little
/// endian on x86) into routes, leaving out `lo`.
pub fn parse_routes(text: &str) -> Vec<Route> {
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let mut routes: Vec<Route> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || f[0] == "lo" {
                return None;
            }
            let flags = hex(f[3])?;
            // RTF_UP, and no host/reject routes we cannot reproduce as given.
            if flags & 1 == 0 {
                return None;
            }
            let ip = |v: u32| Ipv4Addr::from(v.swap_bytes());
            let gateway = ip(hex(f[2])?);
            Some(Route {
                interface: f[0].to_owned(),
                destination: ip(hex(f[1])?),
                prefix: ip(hex(f[7])?).to_bits().count_ones() as u8,
                gateway: (flags & 2 != 0 && !gateway.is_unspecified()).then_some(gateway),
                metric: f[6].parse().ok()?,
            })
        })
        .collect();
    // Directly connected routes first: a gateway must be reachable when its route is added.
    routes.sort_by_key(|r| r.gateway.is_some());
    routes
}

impl Network {
    /// The running system's interfaces that carry IPv4 routes, with their
    /// addresses, MTU and MAC, and those routes.
    pub fn current() -> io::Result<Network> {
        let routes = parse_routes(&std::fs::read_to_string("/proc/net/route")?);
        let mut names: Vec<String> = routes.iter().map(|r| r.interface.clone()).collect();
        names.sort();
        names.dedup();
        let addresses = ipv4_addresses()?;
        let mut interfaces = Vec::new();
        for name in names {
            let sys = Path::new("/sys/class/net").join(&name);
            let read =
                |file: &str| std::fs::read_to_string(sys.join(file)).map(|t| t.trim().to_owned());
            interfaces.push(Interface {
                mac: read("address")?,
                mtu: read("mtu")?.parse().unwrap_or(1500),
                addresses: addresses
                    .iter()
                    .filter(|(iface, _, _)| *iface == name)
                    .map(|(_, addr, prefix)| (*addr, *prefix))
                    .collect(),
                name,
            });
        }
        Ok(Network { interfaces, routes })
    }

    /// Sets the network up in the ramdisk: `lo`, then each interface found by
    /// its MAC (waiting up to `wait` for its driver and carrier), its MTU and
    /// addresses, then the routes. Returns one line per step for the console;
    /// an interface that never appears is an error.
    pub fn apply(&self, wait: Duration) -> io::Result<Vec<String>> {
        let mut said = Vec::new();
        let sock = Socket::new()?;
        sock.set_up("lo")?;
        sock.set_address("lo", Ipv4Addr::LOCALHOST, 8)?;
        let deadline = Instant::now() + wait;
        let mut renamed = std::collections::BTreeMap::new();
        for iface in &self.interfaces {
            let here = loop {
                if let Some(name) = find_by_mac(&iface.mac) {
                    break name;
                }
                if Instant::now() >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!(
                            "no interface with MAC {} (was {}) appeared within {} s",
                            iface.mac,
                            iface.name,
                            wait.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            };
            sock.set_mtu(&here, iface.mtu)?;
            sock.set_up(&here)?;
            for (addr, prefix) in &iface.addresses {
                sock.set_address(&here, *addr, *prefix)?;
            }
            let carrier = Path::new("/sys/class/net").join(&here).join("carrier");
            while !std::fs::read_to_string(&carrier).is_ok_and(|t| t.trim() == "1")
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            said.push(format!(
                "interface {here} (was {}, {}) up, mtu {}, {}",
                iface.name,
                iface.mac,
                iface.mtu,
                iface
                    .addresses
                    .iter()
                    .map(|(a, p)| format!("{a}/{p}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            renamed.insert(iface.name.clone(), here);
        }
        for route in &self.routes {
            let Some(dev) = renamed.get(&route.interface) else {
                continue;
            };
            match sock.add_route(dev, route) {
                Ok(()) => {}
                // The kernel adds the connected route of an address itself.
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => continue,
                Err(err) => {
                    return Err(io::Error::new(
                        err.kind(),
                        format!(
                            "adding route {}/{} via {:?} dev {dev}: {err}",
                            route.destination, route.prefix, route.gateway
                        ),
                    ));
                }
            }
            said.push(format!(
                "route {}/{}{} dev {dev}",
                route.destination,
                route.prefix,
                route
                    .gateway
                    .map(|g| format!(" via {g}"))
                    .unwrap_or_default()
            ));
        }
        Ok(said)
    }
}

/// `(interface, address, prefix)` of every IPv4 address (`getifaddrs`).
fn ipv4_addresses() -> io::Result<Vec<(String, Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills head with a list freed by freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: cur is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr of at least its family's size.
        if unsafe { (*ifa.ifa_addr).sa_family } as i32 != libc::AF_INET {
            continue;
        }
        // SAFETY: both are sockaddr_in for AF_INET; the name is NUL-terminated.
        let (addr, mask, name) = unsafe {
            (
                *(ifa.ifa_addr as *const libc::sockaddr_in),
                *(ifa.ifa_netmask as *const libc::sockaddr_in),
                CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned(),
            )
        };
        out.push((
            name,
            Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            u32::from_be(mask.sin_addr.s_addr).count_ones() as u8,
        ));
    }
    // SAFETY: head came from getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The interface with MAC `mac` in the ramdisk, if its driver has made it.
fn find_by_mac(mac: &str) -> Option<String> {
    std::fs::read_dir("/sys/class/net")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let address = std::fs::read_to_string(entry.path().join("address")).ok()?;
            address
                .trim()
                .eq_ignore_ascii_case(mac)
                .then(|| entry.file_name().to_string_lossy().into_owned())
        })
}

/// `struct ifreq` with the union as a sockaddr or an int.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

#[repr(C)]
union IfReqData {
    addr: libc::sockaddr_in,
    int: libc::c_int,
    flags: libc::c_short,
    _pad: [u8; 24],
}

/// `struct rtentry` of `<net/route.h>` (not in the libc crate for glibc).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr_in,
    rt_gateway: libc::sockaddr_in,
    rt_genmask: libc::sockaddr_in,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr(addr: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(addr).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// An `AF_INET` datagram socket for the configuration `ioctl`s.
struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours.
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn new() -> io::Result<Socket> {
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Socket(fd))
    }

    fn ioctl<T>(&self, request: libc::c_ulong, arg: &mut T, what: &str) -> io::Result<()> {
        // SAFETY: arg is the structure this request expects.
        if unsafe { libc::ioctl(self.0, request, arg as *mut T) } != 0 {
            let err = io::Error::last_os_error();
            return Err(io::Error::new(err.kind(), format!("{what}: {err}")));
        }
        Ok(())
    }

    fn req(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: IfReqData { _pad: [0; 24] },
        };
        for (dst, src) in req
            .name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        req
    }

    fn set_up(&self, name: &str) -> io::Result<()> {
        let mut req = Self::req(name);
        self.ioctl(
            libc::SIOCGIFFLAGS,
            &mut req,
            &format!("reading flags of {name}"),
        )?;
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        let flags = unsafe { req.data.flags };
        req.data.flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        self.ioctl(libc::SIOCSIFFLAGS, &mut req, &format!("bringing {name} up"))
    }

    fn set_mtu(&self, name: &str, mtu: u32) -> io::Result<()> {
        let mut req = Self::req(name);
        req.data.int = mtu as libc::c_int;
        self.ioctl(
            libc::SIOCSIFMTU,
            &mut req,
            &format!("setting mtu {mtu} on {name}"),
        )
    }

    fn set_address(&self, name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let mut req = Self::req(name);
        req.data.addr = sockaddr(addr);
        self.ioctl(
            libc::SIOCSIFADDR,
            &mut req,
            &format!("setting {addr} on {name}"),
        )?;
        let mut req = Self::req(name);
        req.data.addr = sockaddr(mask(prefix));
        self.ioctl(
            libc::SIOCSIFNETMASK,
            &mut req,
            &format!("setting /{prefix} on {name}"),
        )
    }

    fn add_route(&self, dev: &str, route: &Route) -> io::Result<()> {
        let mut name: Vec<libc::c_char> = dev.bytes().map(|b| b as libc::c_char).collect();
        name.push(0);
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(route.destination),
            rt_gateway: sockaddr(route.gateway.unwrap_or(Ipv4Addr::UNSPECIFIED)),
            rt_genmask: sockaddr(mask(route.prefix)),
            // RTF_UP, RTF_GATEWAY.
            rt_flags: 1 | if route.gateway.is_some() { 2 } else { 0 },
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            // The ioctl counts metrics from 1 (0 means "unset"): `route` adds one too.
            rt_metric: (route.metric + 1).min(i16::MAX as u32) as libc::c_short,
            rt_dev: name.as_mut_ptr(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        self.ioctl(libc::SIOCADDRT, &mut rt, "adding a route")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_connected_first() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
enp0s2\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
enp0s2\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n";
        let routes = parse_routes(text);
        assert_eq!(
            routes,
            vec![
                Route {
                    interface: "enp0s2".into(),
                    destination: Ipv4Addr::new(10, 0, 2, 0),
                    prefix: 24,
                    gateway: None,
                    metric: 0
                },
                Route {
                    interface: "enp0s2".into(),
                    destination: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
                    metric: 0
                },
            ]
        );
        assert_eq!(mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(mask(0), Ipv4Addr::UNSPECIFIED);
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }
}
