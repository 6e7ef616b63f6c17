"""SSH key pairs: an ephemeral one per boot test, or the one a person logs in with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kiln.errors import InvalidInput
from kiln.run import run

KEYGEN = "ssh-keygen"
USER_KEY_NAMES = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


@dataclass(frozen=True)
class KeyPair:
    private: Path  # None of kiln's business to read: handed to ssh -i
    public: str  # one authorized_keys line


def make_key(path: Path, comment: str = "kiln") -> KeyPair:
    """A new ed25519 key without a passphrase at `path` (and `path`.pub); mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    run([KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], capture=True)
    return KeyPair(path, path.with_name(path.name + ".pub").read_text().strip())


def read_public_key(path: Path) -> str:
    """The authorized_keys line in `path`, checked to look like an OpenSSH public key."""
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise InvalidInput(f"cannot read the SSH public key {path}: {e.strerror}",
                           hint="give a .pub file made by ssh-keygen") from None
    first = text.splitlines()[0] if text else ""
    if not first.startswith(("ssh-", "ecdsa-", "sk-")) or len(first.split()) < 2:
        raise InvalidInput(f"{path} is not an OpenSSH public key (expected 'ssh-ed25519 AAAA...')",
                           hint="give the .pub half of a key made by ssh-keygen, not the private key")
    return first


def user_public_key(home: Path) -> Path | None:
    """The person's own key (~/.ssh/id_*.pub), if they have one."""
    for name in USER_KEY_NAMES:
        if (home / ".ssh" / name).is_file():
            return home / ".ssh" / name
    return None
