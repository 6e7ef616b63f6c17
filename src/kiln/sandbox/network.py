"""The sandbox's network: its own namespace, connected to the outside through pasta (passt).

pasta creates the network namespace, gives it a copy of the host's IPv4 address and default
route, and carries its TCP/UDP/ICMP flows out through ordinary sockets of the host: apt, curl and
DNS work, and nothing in the namespace can reach a host socket directly. What pasta would
otherwise let through to the host itself is shut:
- `--no-map-gw`: by default pasta maps the gateway's address onto the host's loopback;
- `-T none -U none`: by default pasta forwards connections to the namespace's 127.0.0.1 ports
  that are bound on the host to the host's loopback; `-t none -u none`: nothing comes in;
- the host's own addresses: before the capabilities are dropped, the launcher adds `prohibit`
  routes inside the namespace for every address the host has (and for link-local space, where
  cloud metadata services live), so a connection to them fails with EACCES instead of being
  carried to the host; likewise the gateway's address. The host's primary address, copied into the namespace, is local there:
  connecting to it reaches the namespace itself;
- IPv4 only (`-4`, IPv6 disabled inside): no IPv6 link-local path to the host to reason about.

pasta runs as root here (`--runas 0`): the version in Debian 12 drops to `nobody` before it
creates the namespace, which fails for root-owned namespaces. It keeps only CAP_NET_BIND_SERVICE
and CAP_SYS_ADMIN after set-up, under its own seccomp filter, in its own mount namespace.
"""

from __future__ import annotations

import ipaddress
import json

from kiln.run import run

PASTA_OPTIONS = (
    "--runas", "0", "--netns-only", "--config-net", "-4", "-q", "-f",
    "-t", "none", "-u", "none", "-T", "none", "-U", "none",
    "--no-map-gw", "-l", "/dev/null",
)
ALWAYS_PROHIBITED = ("169.254.0.0/16",)  # link-local: metadata services, the host's own link addresses


def pasta_argv() -> list[str]:
    return ["pasta", *PASTA_OPTIONS, "--"]


def prohibited_routes() -> list[str]:
    """Destinations the namespace must not reach: the host's IPv4 addresses and its gateway."""
    out = run(["ip", "-j", "-4", "addr", "show"], capture=True).stdout
    found = []
    for link in json.loads(out or "[]"):
        for info in link.get("addr_info", []):
            address = ipaddress.ip_address(info.get("local", "0.0.0.0"))
            if address.version == 4 and not address.is_loopback and not address.is_unspecified:
                found.append(f"{address}/32")
    # The gateway too: pasta maps it to the host unless --no-map-gw, and no step has business with
    # the router itself. Routed traffic is unaffected (the default route's next hop is a neighbour).
    routes = json.loads(run(["ip", "-j", "-4", "route", "show", "default"], capture=True).stdout or "[]")
    found += [f"{r['gateway']}/32" for r in routes if r.get("gateway")]
    return sorted(set(found)) + list(ALWAYS_PROHIBITED)


# A VM's QEMU in a network namespace of its own (kiln.sandbox.vm): QEMU's user-mode network
# (slirp) maps the guest's gateway 10.0.2.2 onto the loopback of the namespace QEMU runs in, so
# in the host's namespace a guest could reach every service on the host's 127.0.0.1. In a pasta
# namespace with the host's addresses prohibited, 10.0.2.2 is the namespace's own empty loopback
# and the guest reaches only the outside world. The one way in is the forwarded SSH port: pasta
# listens on the host's 127.0.0.1:PORT and carries it to the namespace's 127.0.0.1:PORT, where
# QEMU's hostfwd listens.
_VM_INNER = r"""
set -eu
ROUTES=$1
shift
for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
  if [ -e "$f" ]; then echo 1 > "$f"; fi
done
for r in $ROUTES; do ip route add prohibit "$r"; done
exec "$@"
"""


def own_network(argv: list[str], *, forward_port: int | None = None) -> list[str]:
    """`argv` (a confined QEMU) run in a new pasta network namespace that cannot reach the host,
    with 127.0.0.1:`forward_port` on the host carried to the same port inside."""
    options = list(PASTA_OPTIONS)
    if forward_port:
        at = options.index("-t")
        options[at + 1] = f"127.0.0.1/{forward_port}"
    return ["pasta", *options, "--", "/bin/sh", "-c", _VM_INNER, "kiln-vm-net", " ".join(prohibited_routes()), *argv]
