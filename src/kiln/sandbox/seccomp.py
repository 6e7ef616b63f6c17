"""The seccomp filter every command in an IsolatedRoot runs under, compiled by libseccomp.

The capabilities the sandbox drops already forbid most of these calls; the filter is the second
wall, and it also covers calls that need no capability at all (unshare of a user namespace,
keyctl, bpf of unprivileged programs). Refused calls fail with EPERM (what a program sees when
it lacks a capability, so package scripts that probe for them degrade as they do in containers);
clone3 fails with ENOSYS so that libc falls back to clone, whose flags the filter can inspect.
System calls of another architecture (32-bit x86 from a 64-bit root) are killed: libseccomp's
default for a foreign architecture.
"""

from __future__ import annotations

import errno
import os
import tempfile

import pyseccomp as seccomp

# Grouped by what they would let a template do to the host.
REFUSED = (
    # mounting, remounting, moving mounts: a way back to the host's files, or over the image's own
    "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr",
    # new namespaces or joining others (a user namespace brings every capability back)
    "unshare", "setns",
    # kernel code and the machine itself
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "reboot",
    "bpf", "perf_event_open", "swapon", "swapoff", "syslog", "acct", "iopl", "ioperm",
    # the kernel keyring is not namespaced
    "keyctl", "add_key", "request_key",
    # file handles bypass the mount namespace (the "shocker" escape); userfaultfd is a kernel-exploit aid
    "open_by_handle_at", "name_to_handle_at", "userfaultfd",
)

NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080,
}


def build_filter() -> seccomp.SyscallFilter:
    flt = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    refuse = seccomp.ERRNO(errno.EPERM)
    for name in REFUSED:
        flt.add_rule(refuse, name)
    for flag in NAMESPACE_FLAGS.values():  # clone(flags, ...) creating any namespace
        flt.add_rule(refuse, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    flt.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # its flags sit in memory a filter cannot read
    return flt


def bpf_memfd() -> int:
    """A memfd holding the compiled BPF program; the launcher opens it as /proc/<kiln>/fd/<fd>."""
    fd = os.memfd_create("kiln-seccomp")  # close-on-exec: no child inherits it by accident
    with tempfile.TemporaryFile() as tmp:
        build_filter().export_bpf(tmp)
        tmp.seek(0)
        os.write(fd, tmp.read())
    return fd
