"""Generalize a customized root: kiln's `waagent -deprovision+user` and `cloud-init clean --logs
--seed --machine-id` in one.

A published image must not carry the identity of the machine it was built on, or every VM made
from it would share it. What is done, on the host, without running anything inside the root
(but `userdel`, in the isolated root, for a provisioned user):

- /etc/machine-id emptied (kept as an empty file: systemd then writes a fresh id at the next
  boot, as in Debian's cloud images); a copy in /var/lib/dbus removed; the systemd random seed
  and credential secret removed.
- SSH host keys removed; a oneshot unit (`kiln-ssh-host-keys.service`, ordered after cloud-init
  and before ssh.service, guarded by `ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key`) makes
  new ones at first boot when nothing else did (cloud-init makes them when it provisions).
- /etc/resolv.conf removed when it is a plain file (as waagent does); a symlink (resolved's
  stub) is kept.
- cloud-init's state: everything under /var/lib/cloud (instances, the instance link, semaphores,
  data, a seed: `cloud-init clean --seed`), so the next boot provisions again; waagent's state
  (/var/lib/waagent) likewise.
- Provisioned users (`+user`): the users cloud-init or waagent created in this root (a VM that is
  being captured), found in their records before those go: cloud-init's sudoers file and the
  instance's user-data, waagent's ovf-env.xml. Users with uid < 1000 are never touched.
  A kiln build provisions no user (customizers run as root in a sandbox, not over SSH as a build
  user, and the boot test's user lives on a throwaway overlay), so a built image keeps exactly
  the users its customizers added, with their passwords, as AIB's images do.
- DHCP leases, logs (files; folders stay so services can write), shell histories, apt lists and
  caches, and everything in /tmp and /var/tmp removed.
- root's password disabled (`*`), as waagent does.
- kiln's own policy-rc.d removed, should a killed run have left it.

If a customizer wrote /tmp/DeprovisioningScript.sh, it runs instead (inside the isolated root),
as Azure Image Builder does; it then owns deprovisioning, and only kiln's own traces are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from kiln.errors import BuildFailed
from kiln.events import Monitor
from kiln.sandbox.isolated import IsolatedRoot, remove_policy_rc_d, resolve_in_root

DEPROVISIONING_SCRIPT = "/tmp/DeprovisioningScript.sh"
SSH_KEYGEN_UNIT = "kiln-ssh-host-keys.service"
_SSH_KEYGEN_UNIT_TEXT = """\
[Unit]
Description=Generate SSH host keys (removed when kiln generalized this image)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
After=cloud-init.service
Before=ssh.service sshd.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target ssh.service
"""

# Folders whose contents go, folders kept.
_EMPTY_DIRS = ("tmp", "var/tmp", "var/lib/dhcp", "var/lib/dhclient", "var/cache/apt/archives/partial",
               "var/lib/cloud", "var/lib/waagent", "var/log/journal")
_FILES = ("var/lib/dbus/machine-id", "var/lib/systemd/random-seed", "var/lib/systemd/credential.secret",
          "root/.bash_history", "root/.lesshst", "root/.viminfo", "root/.python_history",
          "root/.wget-hsts", "root/.sudo_as_admin_successful")
_HISTORIES = (".bash_history", ".zsh_history", ".lesshst", ".viminfo", ".python_history", ".wget-hsts")


def generalize(root: Path, monitor: Monitor, *, timeout: float | None = None) -> None:
    """Deprovision the root tree at `root` in place (see the module docstring for what and why)."""
    root = Path(root)
    script = _host(root, DEPROVISIONING_SCRIPT)
    if script.is_file():
        monitor.log(f"running {DEPROVISIONING_SCRIPT} (written by a customizer) instead of kiln's deprovisioning",
                    name="generalize")
        with IsolatedRoot(root, monitor) as sandbox:
            done = sandbox.run(["/bin/sh", DEPROVISIONING_SCRIPT], timeout=timeout, name="generalize")
        if not done.ok:
            tail = "\n".join(done.tail.strip().splitlines()[-20:])
            raise BuildFailed(
                f"generalize: {DEPROVISIONING_SCRIPT} (written by a customizer) failed with exit code "
                f"{done.returncode}" + (f"\n{tail}" if tail else ""),
                hint="fix the script, or don't write it to use kiln's own deprovisioning",
            )
        remove_policy_rc_d(root)
        return
    remove_policy_rc_d(root)
    removed = _provisioned_users(root, monitor, timeout)
    _machine_id(root)
    _ssh_host_keys(root, monitor)
    _resolv_conf(root)
    for d in _EMPTY_DIRS:
        _empty_dir(_host(root, d))
    for f in _FILES:
        _remove_file(_entry(root, f))
    _homes(root)
    _logs(_host(root, "var/log"))
    _apt(root)
    _disable_root_password(root)
    monitor.log("generalized: machine-id emptied, SSH host keys removed (regenerated at first boot), "
                "cloud-init and waagent state, leases, logs, histories, apt lists/caches, /tmp and /var/tmp cleaned"
                + (f"; provisioned user(s) deleted: {', '.join(removed)}" if removed else ""), name="generalize")


def provisioned_users(root: Path) -> list[str]:
    """The users a provisioning agent created in this root (what `waagent -deprovision+user`
    deletes), from the agents' own records: cloud-init's sudoers rules and its instances'
    user-data, waagent's ovf-env.xml. Only regular users (uid >= 1000) that exist are named."""
    names: list[str] = []
    sudoers = _host(root, "etc/sudoers.d/90-cloud-init-users")
    if sudoers.is_file():
        names += re.findall(r"^# User rules for (\S+)", sudoers.read_text(errors="replace"), re.M)
    instances = _host(root, "var/lib/cloud/instances")
    if instances.is_dir():
        for user_data in sorted(instances.glob("*/user-data.txt")):
            names += _cloud_config_users(user_data.read_text(errors="replace"))
    ovf = _host(root, "var/lib/waagent/ovf-env.xml")
    if ovf.is_file():
        names += re.findall(r"<(?:\w+:)?UserName>([^<]+)</", ovf.read_text(errors="replace"))
    regular = {fields[0] for fields in _passwd(root) if len(fields) > 2 and fields[2].isdigit()
               and 1000 <= int(fields[2]) < 65534}
    return [n for n in dict.fromkeys(names) if n in regular]


def _cloud_config_users(text: str) -> list[str]:
    """User names in a #cloud-config `users:` list: JSON (as kiln's seeds write it) or YAML's block
    style (`- name: x` or `- x` items). Anything else names no one (kept, not guessed at)."""
    if not text.startswith("#cloud-config"):
        return []
    body = text.split("\n", 1)[1] if "\n" in text else ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        users = data.get("users") or []
        return [u["name"] if isinstance(u, dict) else u for u in users
                if isinstance(u, str) and u != "default" or isinstance(u, dict) and isinstance(u.get("name"), str)]
    found, inside = [], False
    for line in body.splitlines():
        if re.match(r"^users\s*:", line):
            inside = True
            continue
        if inside and line and not line[0].isspace() and not line.startswith("-"):
            break
        item = re.match(r"^\s*-\s+(?:name\s*:\s*)?[\"']?([a-z_][a-z0-9_.-]*)[\"']?\s*$", line) if inside else None
        if item and item.group(1) != "default":
            found.append(item.group(1))
    return found


def _passwd(root: Path) -> list[list[str]]:
    passwd = _host(root, "etc/passwd")
    return [line.split(":") for line in passwd.read_text(errors="replace").splitlines()] if passwd.is_file() else []


def _provisioned_users(root: Path, monitor: Monitor, timeout: float | None) -> list[str]:
    names = provisioned_users(root)
    if not names:
        return []
    with IsolatedRoot(root, monitor) as sandbox:
        for name in names:
            done = sandbox.run(["userdel", "--force", "--remove", name], timeout=timeout, name="generalize")
            # 12: the home or mail spool could not be removed (e.g. missing): the user is gone all the same
            if done.returncode not in (0, 12):
                raise BuildFailed(f"generalize: userdel {name} (a provisioned user) failed with exit code "
                                  f"{done.returncode}\n{done.tail.strip()[-500:]}",
                                  hint="the image's /etc/passwd or /etc/shadow may be damaged")
    sudoers = _host(root, "etc/sudoers.d/90-cloud-init-users")
    if sudoers.is_file():
        sudoers.unlink()  # cloud-init writes it for the users it provisions (gone now); it writes it anew
    return names


def _entry(root: Path, inside: str) -> Path:
    """The host path of the entry `inside` itself: its folder resolved within the root, the last
    name not followed (removing /var/lib/dbus/machine-id must not remove the /etc/machine-id it
    links to)."""
    parent, _, name = inside.rstrip("/").rpartition("/")
    return _host(root, parent or ".") / name


def _host(root: Path, inside: str) -> Path:
    """The host path of `inside` with symlinks resolved within the root (never out of it)."""
    return root / str(resolve_in_root(root, inside)).lstrip("/")


def _machine_id(root: Path) -> None:
    mid = _entry(root, "etc/machine-id")
    if mid.parent.is_dir():
        _remove_file(mid)
        mid.write_bytes(b"")
        mid.chmod(0o444)


def _ssh_host_keys(root: Path, monitor: Monitor) -> None:
    ssh = _host(root, "etc/ssh")
    if not ssh.is_dir():
        return
    for key in ssh.glob("ssh_host_*"):
        key.unlink()
    if not _host(root, "usr/sbin/sshd").exists() or not _host(root, "usr/bin/ssh-keygen").exists():
        return
    units = _host(root, "etc/systemd/system")
    units.mkdir(parents=True, exist_ok=True)
    (units / SSH_KEYGEN_UNIT).write_text(_SSH_KEYGEN_UNIT_TEXT)
    for target in ("multi-user.target.wants", "ssh.service.wants"):
        wants = units / target
        wants.mkdir(exist_ok=True)
        link = wants / SSH_KEYGEN_UNIT
        if not link.is_symlink():
            link.symlink_to(f"/etc/systemd/system/{SSH_KEYGEN_UNIT}")


def _resolv_conf(root: Path) -> None:
    resolv = root / "etc/resolv.conf"
    if resolv.is_file() and not resolv.is_symlink():
        resolv.unlink()


def _empty_dir(path: Path) -> None:
    if not path.is_dir() or path.is_symlink():
        return
    for entry in path.iterdir():
        _remove(entry)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry)
    else:
        entry.unlink(missing_ok=True)


def _remove_file(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _homes(root: Path) -> None:
    home = _host(root, "home")
    if not home.is_dir():
        return
    for user in home.iterdir():
        if user.is_dir() and not user.is_symlink():
            for name in _HISTORIES:
                p = user / name
                if p.is_file() or p.is_symlink():
                    p.unlink()


def _logs(log: Path) -> None:
    """Remove every log file; keep the folders (services expect /var/log/apt, /var/log/journal...)."""
    if not log.is_dir() or log.is_symlink():
        return
    for dirpath, _dirs, files in os.walk(log):
        for f in files:
            os.unlink(os.path.join(dirpath, f))


def _apt(root: Path) -> None:
    lists = _host(root, "var/lib/apt/lists")
    if lists.is_dir():
        for entry in lists.iterdir():
            if entry.name not in ("partial", "lock", "auxfiles"):
                _remove(entry)
    cache = _host(root, "var/cache/apt")
    if cache.is_dir():
        for entry in cache.glob("*.bin"):
            entry.unlink()
        archives = cache / "archives"
        if archives.is_dir():
            for deb in archives.glob("*.deb"):
                deb.unlink()


def _disable_root_password(root: Path) -> None:
    shadow = _host(root, "etc/shadow")
    if not shadow.is_file():
        return
    lines = shadow.read_text().splitlines(keepends=True)
    changed = False
    for i, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root" and len(fields) > 2 and fields[1] not in ("*", "!", "!*"):
            fields[1] = "*"
            lines[i] = ":".join(fields)
            changed = True
    if changed:
        st = shadow.stat()
        tmp = shadow.with_name(".shadow.kiln")
        tmp.write_text("".join(lines))
        os.chown(tmp, st.st_uid, st.st_gid)
        tmp.chmod(st.st_mode & 0o7777)
        os.replace(tmp, shadow)
