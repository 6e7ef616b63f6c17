#!/bin/sh
# mmdebstrap customize hook, run on the host: turn a fresh bootstrap into what a platform image
# has: a hostname, DHCP on every ethernet interface with systemd-networkd, DNS through
# systemd-resolved where it exists, no root password, cloud-init set up for the datasources a VM
# meets here and on Azure. $1: the new root, $2: its hostname.
set -eu
R=$1 HOST=$2

echo "$HOST" > "$R/etc/hostname"
cat > "$R/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$HOST
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
HOSTS

mkdir -p "$R/etc/systemd/network"
cat > "$R/etc/systemd/network/80-kiln-dhcp.network" <<NET
[Match]
Name=en* eth*

[Network]
DHCP=yes
NET
chroot "$R" systemctl enable systemd-networkd.service
if [ -e "$R/lib/systemd/system/systemd-resolved.service" ] || [ -e "$R/usr/lib/systemd/system/systemd-resolved.service" ]; then
  chroot "$R" systemctl enable systemd-resolved.service
  ln -sfn ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"
fi

# Like Azure's images: nobody logs in as root with a password.
chroot "$R" usermod -p '*' root

# cloud-init: the datasources of a VM made here (NoCloud: a `cidata` disk or CD-ROM), on
# OpenStack-style hosts (ConfigDrive) and on Azure; None last, so a VM without any of them boots
# at once (ds-identify finds nothing and leaves cloud-init off, without probing a metadata
# service). The network stays as the image configured it (networkd, DHCP on every ethernet
# interface), on every platform. The locale stays C.UTF-8: the default (en_US.UTF-8) would run
# locale-gen at first boot.
if [ -d "$R/etc/cloud/cloud.cfg.d" ]; then
  cat > "$R/etc/cloud/cloud.cfg.d/90-kiln.cfg" <<'CFG'
# kiln platform image defaults (the host's image config, not a seed: a seed's user-data overrides them)
datasource_list: [NoCloud, ConfigDrive, Azure, None]
network:
  config: disabled
locale: C.UTF-8
CFG
fi

# force-unsafe-io speeds up the bootstrap only; the image keeps the path excludes.
if [ -f "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap" ]; then
  sed -i '/^force-unsafe-io$/d' "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
fi
