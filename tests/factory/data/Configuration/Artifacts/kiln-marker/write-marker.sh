#!/bin/bash
# A DevTest Labs-style Linux artifact: runs in its own folder with its files beside it.
set -euo pipefail
mode="$1"; marker="$2"
test -f ./Artifactfile.json && { echo "the definition should not be copied" >&2; exit 1; }
mkdir -p /etc/kiln
case "$mode" in
  file) echo "$marker" > /etc/kiln/artifact ;;
  motd) echo "$marker" >> /etc/motd; echo "$marker" > /etc/kiln/artifact ;;
esac
