#!/bin/sh
# mmdebstrap hooks for kiln's platform bootstrap, run on the host. What they buy is speed; the
# resulting root is the same as a plain bootstrap's.
#   $1: stage (setup | essential | customize), $2: the new root, $3: the .deb cache folder
set -eu
STAGE=$1 R=$2 DEBS=$3

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
  rm -f "$R/usr/sbin/update-initramfs"
  chroot "$R" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
  if [ -x "$R/usr/sbin/update-initramfs" ] && ls "$R"/boot/vmlinuz-* >/dev/null 2>&1; then
    chroot "$R" update-initramfs -c -k all
  fi
  ;;
*)
  echo "platform-hooks.sh: unknown stage $STAGE" >&2
  exit 2
  ;;
esac
