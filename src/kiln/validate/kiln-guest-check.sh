#!/bin/sh
# kiln guest check: shipped in every kiln image (as waagent is in every Azure image) and inert.
#
# It does something only when the kiln check disk (a virtio disk with serial "kiln-check") is
# attached, which kiln's boot test does for one boot of a throwaway overlay and nothing else does.
# The disk is a tar holding a per-boot nonce and the validation scripts. Once the boot has finished
# the hook prints a readiness marker with the nonce to the serial console, runs the scripts one by
# one (each one's output and exit code between markers), and powers the machine off.
set -u
dev=/dev/disk/by-id/virtio-kiln-check
[ -b "$dev" ] || exit 0
work=$(mktemp -d /run/kiln-check.XXXXXX) || exit 1
tar -xf "$dev" -C "$work" 2>/dev/null && [ -s "$work/nonce" ] || exit 0
nonce=$(cat "$work/nonce")
console=/dev/ttyS0
shell=$(command -v bash || echo sh)  # AIB runs Shell validations with bash
say() { printf '%s\n' "$*" >"$console"; }

# Wait for the boot to finish (every start job done: the serial getty has printed its prompt),
# and keep kernel messages from interleaving with the results on the console.
state=$(systemctl is-system-running --wait 2>/dev/null)
for _ in 1 2 3 4 5 6 7 8 9 10; do
    systemctl -q is-active serial-getty@ttyS0.service && break
    sleep 1
done
sleep 1
dmesg -n 1 2>/dev/null || true
# The getty's "login: " prompt ends without a newline: start the marker on a line of its own.
say ""
say "KILN-READY $nonce state=${state:-unknown}"
if [ "$state" != running ]; then
    systemctl --no-pager --no-legend --failed 2>/dev/null | sed 's/^/KILN-FAILED-UNIT /' >"$console"
fi

for script in "$work"/scripts/*; do
    [ -f "$script" ] || continue
    idx=${script##*/}
    say "KILN-BEGIN $nonce $idx"
    # /run is mounted noexec (initramfs-tools does so): start the interpreter ourselves, taking it
    # from the #! line as the kernel would, else bash.
    first=$(head -n 1 "$script" | tr -d '\r')
    case "$first" in
        '#!'*) set -- ${first#??} ;;
        *) set -- "$shell" ;;
    esac
    # Output goes to a file, not the tty: a script that sees a terminal may start a pager and hang.
    (cd /root 2>/dev/null || cd /; exec "$@" "$script") >"$work/out" 2>&1 </dev/null
    rc=$?
    tail -c 65536 "$work/out" >"$console"
    # The end marker must start a line of its own, whether or not the output ended with a newline.
    [ -n "$(tail -c 1 "$work/out")" ] && say ""
    say "KILN-END $nonce $idx $rc"
done
say "KILN-DONE $nonce"
systemctl poweroff --no-block
