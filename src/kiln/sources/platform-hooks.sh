#!/bin/sh
# mmdebstrap hooks for kiln's platform bootstrap, run on the host. What they buy is speed; the
# resulting root is the same as a plain bootstrap's.
#   $1: stage (setup | essential | customize), $2: the new root, $3: the .deb cache folder,
#   $4 (customize): packages to install while the initramfs is built (comma-separated, may be empty)
set -eu
STAGE=$1 R=$2 DEBS=$3 LATER=${4:-}

# What goes into an initramfs besides the kernel and its modules (which come with the kernel
# package, installed before): initramfs-tools' hooks, scripts and configuration.
initramfs_inputs() {
  find "$R/usr/share/initramfs-tools" "$R/etc/initramfs-tools" \
    -printf '%p %s %T@\n' 2>/dev/null | sort | md5sum
}

case $STAGE in
setup)
  # The docs/man/locale excludes go in their own dpkg.cfg.d file, not through --dpkgopt: with
  # path-excludes in 99mmdebstrap, mmdebstrap pipes every essential package through mmtarfilter
  # (a Python filter) while extracting, which costs 10-40 s here. dpkg applies this file from the
  # first `dpkg --install` on; what the plain extraction put there is removed by the essential hook.
  mkdir -p "$R/etc/dpkg/dpkg.cfg.d" "$R/var/cache/apt/archives"
  cat > "$R/etc/dpkg/dpkg.cfg.d/50kiln-nodoc" <<'CFG'
# kiln: docs, man pages and translations are not installed (licences stay)
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
CFG
  # Seed apt's archive with the cached packages (apt re-downloads any whose checksum differs).
  if [ -d "$DEBS" ]; then
    find "$DEBS" -maxdepth 1 -name '*.deb' -exec cp -l -t "$R/var/cache/apt/archives/" {} + 2>/dev/null \
      || find "$DEBS" -maxdepth 1 -name '*.deb' -exec cp -t "$R/var/cache/apt/archives/" {} +
  fi
  ;;
essential)
  # What the extraction wrote before dpkg knew the excludes (dpkg did not record these files).
  rm -rf "$R/usr/share/man/"* "$R/usr/share/info/"*
  find "$R/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  # Every package with an initramfs hook (kernel, udev, kmod, zstd, ...) would rebuild the
  # initramfs (two full builds of ~10 s each); divert update-initramfs to a no-op until the
  # customize hook builds it once.
  chroot "$R" dpkg-divert --quiet --local --rename --divert /usr/sbin/update-initramfs.kiln-real \
    --add /usr/sbin/update-initramfs
  printf '#!/bin/sh\n# kiln: the initramfs is built once at the end of the bootstrap\nexit 0\n' > "$R/usr/sbin/update-initramfs"
  chmod 755 "$R/usr/sbin/update-initramfs"
  ;;
customize)
  # The initramfs is built while the packages that have nothing to do with it (ssh, sudo, curl,
  # ...) are installed: two processes for two cores instead of one after the other. The no-op
  # update-initramfs stays in place meanwhile, so those packages' triggers do not start a second
  # build; if they did change what goes into an initramfs after all, it is built again.
  real=/usr/sbin/update-initramfs.kiln-real
  pid=
  if [ -x "$R$real" ] && ls "$R"/boot/vmlinuz-* >/dev/null 2>&1; then
    before=$(initramfs_inputs)
    chroot "$R" "$real" -c -k all &
    pid=$!
  fi
  status=0
  if [ -n "$LATER" ]; then
    chroot "$R" env DEBIAN_FRONTEND=noninteractive apt-get install --yes --no-install-recommends \
      $(echo "$LATER" | tr ',' ' ') || status=$?
  fi
  if [ -n "$pid" ]; then
    wait "$pid" || status=$?
    if [ "$status" -eq 0 ] && [ "$(initramfs_inputs)" != "$before" ]; then
      chroot "$R" "$real" -u -k all || status=$?
    fi
  fi
  rm -f "$R/usr/sbin/update-initramfs"
  chroot "$R" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
  exit "$status"
  ;;
*)
  echo "platform-hooks.sh: unknown stage $STAGE" >&2
  exit 2
  ;;
esac
