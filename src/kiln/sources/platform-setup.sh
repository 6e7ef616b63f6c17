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
# interface), on every platform. What else is here cuts first-boot time (docs/benchmarks.md,
# "First boot under TCG"): no RSA host key (its prime search was most of cloud-init's network
# stage, which ssh.service waits for; ed25519 and ECDSA serve every OpenSSH client since 2014, and
# a user-data `ssh_genkeytypes` brings RSA back); the C.UTF-8 locale recorded, so cloud-init's
# locale module neither runs locale-gen nor update-locale; grub-dpkg off when there is no GRUB.
if [ -d "$R/etc/cloud/cloud.cfg.d" ]; then
  cat > "$R/etc/cloud/cloud.cfg.d/90-kiln.cfg" <<'CFG'
# kiln platform image defaults (a seed's user-data overrides them)
datasource_list: [NoCloud, ConfigDrive, Azure, None]
network:
  config: disabled
locale: C.UTF-8
ssh_genkeytypes: [ed25519, ecdsa]
CFG
  if [ ! -e "$R/usr/sbin/grub-install" ]; then
    printf 'grub_dpkg:\n  enabled: false\n' >> "$R/etc/cloud/cloud.cfg.d/90-kiln.cfg"
  fi
fi
if [ -d "$R/etc/default" ] && ! grep -qs '^LANG=' "$R/etc/default/locale"; then
  echo "LANG=C.UTF-8" >> "$R/etc/default/locale"
fi

# No password logins over SSH unless provisioning asks for them (cloud-init's ssh_pwauth, Azure's
# disablePasswordAuthentication=false), written where cloud-init 22.4 keeps that setting when
# sshd_config includes sshd_config.d (Debian 12's does): a seed's `ssh_pwauth: false` then
# changes nothing, and cloud-init does not restart sshd in the middle of the first boot.
if [ -d "$R/etc/cloud" ] && [ -d "$R/etc/ssh/sshd_config.d" ]; then
  printf 'PasswordAuthentication no\n' > "$R/etc/ssh/sshd_config.d/50-cloud-init.conf"
  chmod 600 "$R/etc/ssh/sshd_config.d/50-cloud-init.conf"
fi

# e2scrub_reap removes stale ext4 metadata-check snapshots, which exist only on LVM: 4.6 s of a
# TCG first boot for nothing on kiln's disks.
if [ -e "$R/lib/systemd/system/e2scrub_reap.service" ] || [ -e "$R/usr/lib/systemd/system/e2scrub_reap.service" ]; then
  chroot "$R" systemctl disable e2scrub_reap.service
fi

# force-unsafe-io speeds up the bootstrap only; the image keeps the path excludes.
if [ -f "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap" ]; then
  sed -i '/^force-unsafe-io$/d' "$R/etc/dpkg/dpkg.cfg.d/99mmdebstrap"
fi
