"""src/kiln/tools.toml is complete and true: every program kiln runs is in it with the package
that really provides it, and this host has every required one (scripts/setup installs them).

The evidence is a scan of the source itself (tests/toolscan.py): argv[0] of every run(),
run_streamed(), spawn() and subprocess call, what wrappers and `sh -c` scripts start, and the
commands of the shipped shell scripts. The scanner is shown to catch a program it has not seen
by planting one in a copy of the tree.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

from kiln.run import minimal_env
from kiln.tools import WHERE, Tool, ToolMissing, host_tools, package_for, table
from toolscan import Found, scan_tree

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DPKG_INFO = Path("/var/lib/dpkg/info")


def problems(found: Found, tools: tuple[Tool, ...]) -> list[str]:
    """Each program the scan found that the table lacks (for where it runs), and each call the
    scan could not follow."""
    listed = {(t.program, t.where) for t in tools}
    out = [
        f"{program} ({where}) is run at {', '.join(sorted(at))} but is not in src/kiln/tools.toml"
        + ("" if where == "host" else f' with where = "{where}"')
        for (program, where), at in sorted(found.programs.items()) if (program, where) not in listed
    ]
    return out + [f"unresolved: {u} (build argv[0] from a constant, or mark a table-driven call)" for u in found.unresolved]


def test_the_table_names_every_program_kiln_runs() -> None:
    found = scan_tree(SRC)
    # The scan sees the programs it must (a sanity floor: a scanner gone blind passes nothing).
    for program, where in [("mmdebstrap", "host"), ("qemu-system-x86_64", "host"), ("sfdisk", "host"),
                           ("mkfs.ext4", "host"), ("mount", "host"), ("chroot", "host"), ("usermod", "guest"),
                           ("systemctl", "guest"), ("env", "guest"), ("find", "host")]:
        assert (program, where) in found.programs, f"the scanner no longer sees {program} ({where})"
    assert problems(found, table()) == []


def test_a_program_the_table_lacks_is_reported(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(SRC / "kiln", src / "kiln", ignore=shutil.ignore_patterns("__pycache__"))
    assert problems(scan_tree(src), table()) == []  # the copy is as complete as the tree
    (src / "kiln" / "fakeuse.py").write_text(textwrap.dedent('''\
        import subprocess

        from kiln.run import run

        FAKE = "kiln-fake-tool"


        def _helper(cmd, monitor):
            return run(cmd, capture=True)


        def use(root, sandbox, path):
            run([FAKE, "--flag", path], capture=True)
            wrapped = ["setpriv", "--pdeathsig", "KILL", "--", "unshare", "--mount", "--", "kiln-fake-wrapped", "-x"]
            _helper(wrapped, None)
            subprocess.Popen(["/usr/bin/kiln-fake-popen"])
            run(["sh", "-c", "set -e\\nkiln-fake-in-script --x | sort\\nchroot \\"$1\\" kiln-fake-chrooted", "sh", path])
            sandbox.run(["kiln-fake-guest-tool", "-v"])
            run(root.argv_from_somewhere())
            run([root.program, "--version"])  # tools: argv[0] from tools.toml
    '''))
    (src / "kiln" / "fake-hook.sh").write_text(textwrap.dedent('''\
        #!/bin/sh
        # kiln-fake-comment is only a comment
        set -eu
        R=$1
        cat > "$R/x" <<EOF
        kiln-fake-heredoc-line
        EOF
        case "$2" in
          a) kiln-fake-in-case "$R" ;;
        esac
        out=$(kiln-fake-substituted -q) || exit 1
        find "$R" -name x -exec kiln-fake-found {} +
    '''))
    report = "\n".join(problems(scan_tree(src), table()))
    for program in ("kiln-fake-tool (host)", "kiln-fake-wrapped (host)", "kiln-fake-popen (host)",
                    "kiln-fake-in-script (host)", "kiln-fake-chrooted (guest)", "kiln-fake-guest-tool (guest)",
                    "kiln-fake-in-case (host)", "kiln-fake-substituted (host)", "kiln-fake-found (host)"):
        assert f"{program} is run at kiln/" in report, report
    assert "unresolved: kiln/fakeuse.py:19: cannot follow the argv" in report, report
    assert "fakeuse.py:20" not in report  # argv[0] taken from the table itself, and said so
    # What is not a command stays out: comments, here-document text, builtins, the interpreter.
    assert "kiln-fake-comment" not in report and "kiln-fake-heredoc-line" not in report
    assert "setpriv" not in report and "unshare" not in report and "sort" not in report


def test_the_table_is_well_formed() -> None:
    tools = table()
    keys = [(t.program, t.where) for t in tools]
    assert len(keys) == len(set(keys)), "a program is listed twice for the same place"
    for t in tools:
        assert t.program and "/" not in t.program and t.package and t.purpose and t.where in WHERE, t
    assert package_for("sfdisk") == "fdisk" and package_for("/usr/sbin/sfdisk") == "fdisk"
    assert package_for("no-such-program") is None
    err = ToolMissing("/usr/sbin/sfdisk")
    assert err.package == "fdisk" and "apt-get install fdisk" in err.render() and "kiln doctor" in err.render()
    # What other parts of kiln run for the sandbox and its network are in the table too.
    assert {"bwrap", "passt", "pasta", "slirp4netns"} <= {t.program for t in host_tools()}


def _which(program: str) -> str | None:
    return shutil.which(program, path=minimal_env()["PATH"])


def test_every_required_tool_is_installed_here() -> None:
    # Not a skip: scripts/setup installs these from the table, so one missing means setup (or the
    # table) is broken, on a developer's machine as in CI.
    missing = [t for t in table() if t.where in ("host", "test") and t.required and _which(t.program) is None]
    packages = " ".join(sorted({t.package for t in missing}))
    assert not missing, f"not installed: {', '.join(t.program for t in missing)}; run scripts/setup " \
                        f"(or apt-get install {packages})"


def _package_files(package: str) -> list[str] | None:
    for name in (f"{package}.list", f"{package}:amd64.list"):
        path = DPKG_INFO / name
        if path.is_file():
            return path.read_text().splitlines()
    return None


def test_each_package_really_provides_its_program() -> None:
    # A wrong package name would make scripts/setup install the wrong thing on a fresh machine.
    wrong = []
    for t in table():
        if t.where == "guest" or _which(t.program) is None:
            continue
        files = _package_files(t.package)
        if files is None or not any(f.endswith(("/bin/" + t.program, "/sbin/" + t.program)) for f in files):
            wrong.append(f"{t.program}: package {t.package} " + ("is not installed" if files is None else "does not ship it"))
    assert not wrong, wrong
