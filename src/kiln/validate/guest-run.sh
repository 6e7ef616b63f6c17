#!/bin/sh
# Runs one in-VM validation in a guest kiln logged in to over SSH (as root, through sudo), the way
# kiln-guest-check runs it from the check disk: the script comes base64-encoded on stdin, runs with
# the interpreter of its #! line (else bash), in /root, with no terminal and stdin from /dev/null;
# its output follows, then an end marker with the per-boot nonce ($1) and its exit code, so that
# an exit code of 255 is told apart from ssh itself failing.
set -u
nonce=$1
work=$(mktemp -d /run/kiln-check.XXXXXX) || exit 1
base64 -d >"$work/script" || exit 1
chmod 700 "$work/script"
first=$(head -n 1 "$work/script" | tr -d '\r')
case "$first" in
    '#!'*) set -- ${first#??} ;;
    *) set -- "$(command -v bash || echo sh)" ;;  # AIB runs Shell validations with bash
esac
(cd /root 2>/dev/null || cd /; exec "$@" "$work/script") >"$work/out" 2>&1 </dev/null
rc=$?
tail -c 65536 "$work/out"
[ -n "$(tail -c 1 "$work/out")" ] && echo
rm -rf "$work"
echo "KILN-END $nonce $rc"
