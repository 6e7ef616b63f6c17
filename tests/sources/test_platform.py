"""The platform image map: Azure URNs to Debian-family releases, extendable by the user."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import Config
from kiln.errors import InvalidInput
from kiln.sources import source_os_type
from kiln.sources.platform import recipe_for
from kiln.template.model import PlatformImageSource

MIRROR = "http://mirror.test/debian"


def src(publisher: str, offer: str, sku: str, version: str = "latest") -> PlatformImageSource:
    return PlatformImageSource(publisher=publisher, offer=offer, sku=sku, version=version)


@pytest.mark.parametrize(("offer", "sku", "suite"), [
    ("debian-11", "11", "bullseye"), ("debian-11", "11-gen2", "bullseye"),
    ("debian-12", "12", "bookworm"), ("DEBIAN-12", "12-Gen2", "bookworm"),
    ("debian-13", "13", "trixie"), ("debian-13", "13-gen2", "trixie"),
])
def test_debian_urns(tmp_path: Path, offer: str, sku: str, suite: str) -> None:
    r = recipe_for(src("debian", offer, sku), Config(home=tmp_path, debian_mirror=MIRROR + "/"))
    assert (r.distro, r.suite, r.mirror) == ("debian", suite, MIRROR)
    assert r.packages[0] == "linux-image-amd64"  # the generic flavour: the cloud one has no ahci (q35 CD-ROMs)
    for p in ("systemd", "systemd-sysv", "udev", "dbus", "sudo", "openssh-server", "ca-certificates", "curl",
              "initramfs-tools", "iproute2", "cloud-init", "cloud-guest-utils"):
        assert p in r.packages
    assert ("systemd-resolved" in r.packages) == (suite != "bullseye")
    assert ("systemd-boot" in r.packages) == (suite != "bullseye")  # bullseye has no systemd-boot package


@pytest.mark.parametrize(("offer", "sku", "suite"), [
    ("UbuntuServer", "18.04-LTS", "bionic"), ("0001-com-ubuntu-server-focal", "20_04-lts-gen2", "focal"),
    ("0001-com-ubuntu-server-jammy", "22_04-lts", "jammy"), ("ubuntu-24_04-lts", "server", "noble"),
])
def test_ubuntu_needs_a_configured_mirror(tmp_path: Path, offer: str, sku: str, suite: str) -> None:
    with pytest.raises(InvalidInput) as e:
        recipe_for(src("Canonical", offer, sku), Config(home=tmp_path, debian_mirror=MIRROR))
    assert "no Ubuntu mirror configured" in e.value.message
    assert "[mirrors] ubuntu" in e.value.hint and e.value.path == ".properties.source"
    r = recipe_for(src("Canonical", offer, sku), Config(home=tmp_path, ubuntu_mirror="http://mirror.test/ubuntu"))
    assert (r.distro, r.suite, r.mirror_kind) == ("ubuntu", suite, "ubuntu")


def test_unknown_urn_says_how_to_map_it(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput) as e:
        recipe_for(src("SUSE", "sles-15-sp5", "gen2"), Config(home=tmp_path, debian_mirror=MIRROR))
    assert "SUSE:sles-15-sp5:gen2:latest" in e.value.message
    assert str(tmp_path / "platform-images.toml") in e.value.hint and "Debian:debian-12" in e.value.hint


def test_user_file_adds_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "platform-images.toml").write_text("""
[distros.debian]
kernel = "linux-image-amd64"

[[images]]
publisher = "Canonical"
offer = "UbuntuServer"
skus = ["18.04-LTS"]
distro = "debian"
suite = "bookworm"

[[images]]
publisher = "Contoso"
offer = "golden"
skus = ["1"]
distro = "debian"
suite = "trixie"
""")
    config = Config(home=tmp_path, debian_mirror=MIRROR)
    ubuntu = recipe_for(src("Canonical", "UbuntuServer", "18.04-LTS"), config)
    assert (ubuntu.distro, ubuntu.suite, ubuntu.packages[0]) == ("debian", "bookworm", "linux-image-amd64")
    assert "openssh-server" in ubuntu.packages  # the rest of the shipped table is kept
    assert recipe_for(src("contoso", "GOLDEN", "1"), config).suite == "trixie"
    assert recipe_for(src("Debian", "debian-11", "11"), config).suite == "bullseye"  # shipped entries remain


def test_broken_user_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "platform-images.toml").write_text("[[images]]\npublisher = 'x'\n")
    with pytest.raises(InvalidInput) as e:
        recipe_for(src("Debian", "debian-12", "12"), Config(home=tmp_path, debian_mirror=MIRROR))
    assert e.value.file == str(tmp_path / "platform-images.toml") and "skus" in e.value.message
    (tmp_path / "platform-images.toml").write_text("[[images]\n")
    with pytest.raises(InvalidInput, match="not valid TOML"):
        recipe_for(src("Debian", "debian-12", "12"), Config(home=tmp_path, debian_mirror=MIRROR))


def test_source_os_type_fails_fast(tmp_path: Path) -> None:
    config = Config(home=tmp_path, debian_mirror=MIRROR)
    assert source_os_type(src("MicrosoftWindowsServer", "WindowsServer", "2022-datacenter"), config) == "Windows"
    assert source_os_type(src("Debian", "debian-12", "12"), config) == "Linux"
    with pytest.raises(InvalidInput, match="no Ubuntu mirror"):
        source_os_type(src("Canonical", "UbuntuServer", "18.04-LTS"), config)
