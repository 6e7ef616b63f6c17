"""The warm .deb cache and the package split of the platform bootstrap (no bootstrap needed)."""

from __future__ import annotations

from pathlib import Path

from kiln.sources.bootstrap import keep_debs, split_packages


def test_keep_debs_moves_what_was_used_and_drops_older_versions(tmp_path: Path) -> None:
    root, debs = tmp_path / "root", tmp_path / "debs"
    archives = root / "var/cache/apt/archives"
    (archives / "partial").mkdir(parents=True)
    (archives / "partial" / "half.deb").write_bytes(b"x")
    (root / "var/cache/apt/pkgcache.bin").write_bytes(b"x")
    for name in ("curl_7.88.1-10+deb12u14_amd64.deb", "sudo_1.9.13p3-1+deb12u2_amd64.deb"):
        (archives / name).write_bytes(name.encode())
    debs.mkdir()
    (debs / "curl_7.88.1-10+deb12u12_amd64.deb").write_bytes(b"old")  # an older curl: dropped
    (debs / "jq_1.6-2.1_amd64.deb").write_bytes(b"jq")  # another package set's: kept
    (debs / "sudo_1.9.13p3-1+deb12u2_amd64.deb").write_bytes(b"same")  # already cached: kept as is
    keep_debs(root, debs)
    assert sorted(p.name for p in debs.iterdir()) == [
        "curl_7.88.1-10+deb12u14_amd64.deb", "jq_1.6-2.1_amd64.deb", "sudo_1.9.13p3-1+deb12u2_amd64.deb"]
    assert (debs / "curl_7.88.1-10+deb12u14_amd64.deb").read_bytes() == b"curl_7.88.1-10+deb12u14_amd64.deb"
    assert list(archives.glob("*.deb")) == [] and list((archives / "partial").iterdir()) == []
    assert not (root / "var/cache/apt/pkgcache.bin").exists()  # as `apt-get clean` leaves it


def test_initramfs_packages_are_installed_first() -> None:
    first, later = split_packages(("linux-image-cloud-amd64", "systemd", "sudo", "openssh-server", "initramfs-tools",
                                   "udev", "curl", "kmod", "zstd"))
    assert first == ["linux-image-cloud-amd64", "systemd", "initramfs-tools", "udev", "kmod", "zstd"]
    assert later == ["sudo", "openssh-server", "curl"]
