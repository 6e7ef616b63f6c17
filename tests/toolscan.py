"""Find every program kiln's source executes: the evidence behind tests/test_tools.py.

Python modules are read with `ast`. A call is a command when it is one of kiln's runners
(`run`, `run_streamed`, `spawn`), a `subprocess` function or an `os.exec*`, or a function of the
same module that passes one of its parameters on to a runner (`_run_logged(cmd)`). Its argv is
followed through list displays, `*spliced` lists, local and module-level names (`QEMU =
"qemu-system-x86_64"`), comprehensions and same-module helpers that return a list
(`self._qemu_argv()`). A method call `something.run([...])` with a literal argv is the sandbox
running a command inside an image root: its programs are `guest` programs.

From an argv the programs are argv[0] and what wrappers start: `setpriv ... -- unshare ... --
mmdebstrap` gives all three, `chroot ROOT CMD` gives CMD as a guest program, `sh -c SCRIPT`
(SCRIPT a constant) gives the commands of the script. Shell scripts (the shipped `*.sh` files and
those `-c` scripts) are read by a small tokenizer that knows quoting, `$(...)`, here-documents,
`case` patterns, functions, builtins and `find -exec`.

A call whose argv[0] cannot be followed is reported as unresolved (the test fails on it): the
scanner must never pass a program it could not see. A call whose argv[0] comes from tools.toml
itself (kiln doctor) carries the comment `# tools: argv[0] from tools.toml` on its line.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TABLE_MARK = "# tools: argv[0] from tools.toml"
RUNNERS = {"run", "run_streamed", "spawn"}
SUBPROCESS = {"run", "Popen", "call", "check_call", "check_output"}
# Shipped shell scripts that run inside a booted guest, not on the host (they are installed into
# every image). Any other *.sh under src/ is taken to run on the host.
GUEST_SCRIPTS = {"kiln/validate/kiln-guest-check.sh", "kiln/validate/guest-run.sh"}

DYN = None  # an argv item that is not a constant

# Options that take a separate value, for the wrappers whose command follows their options.
_WRAPPER_OPTS: dict[str, set[str]] = {
    "setpriv": {"--pdeathsig", "--reuid", "--regid", "--groups", "--inh-caps", "--ambient-caps", "--bounding-set",
                "--securebits", "--selinux-label", "--apparmor-profile", "--landlock-access", "--landlock-rule"},
    "unshare": {"--propagation", "--setgroups", "--map-user", "--map-group", "--map-users", "--map-groups",
                "-S", "--setuid", "-G", "--setgid", "-R", "--root", "-w", "--wd", "--monotonic", "--boottime"},
    "env": {"-C", "--chdir", "-u", "--unset", "-S", "--split-string"},
    "nice": {"-n", "--adjustment"},
    "ionice": {"-c", "--class", "-n", "--classdata"},
    "timeout": {"-s", "--signal", "-k", "--kill-after"},
    "chroot": {"--userspec", "--groups"},
    "xargs": {"-I", "-n", "-P", "-d", "-E", "-L", "-s", "-a"},
    "pasta": {"-t", "-u", "-T", "-U", "-a", "-n", "-g", "-m", "-D", "-S", "-p", "-P", "-i", "-o", "--netns",
              "--userns", "--runas", "-l", "--ns-ifname", "--pid", "--log-file", "--fd"},
    "bwrap": {"--args", "--userns", "--userns2", "--pidns", "--uid", "--gid", "--hostname", "--chdir",
              "--unsetenv", "--lock-file", "--sync-fd", "--remount-ro", "--proc", "--dev", "--tmpfs", "--mqueue",
              "--dir", "--seccomp", "--add-seccomp-fd", "--block-fd", "--userns-block-fd", "--info-fd",
              "--json-status-fd", "--cap-add", "--cap-drop", "--perms", "--size", "--exec-label", "--file-label",
              "--argv0"},
}
# bwrap options with two values (SRC DEST, VAR VALUE, FD DEST, ...).
_BWRAP_TWO = {"--bind", "--bind-try", "--dev-bind", "--dev-bind-try", "--ro-bind", "--ro-bind-try", "--symlink",
              "--setenv", "--file", "--bind-data", "--ro-bind-data", "--chmod", "--overlay-src"}
# Wrappers with positional arguments before the command: chroot ROOT CMD, timeout DURATION CMD.
_POSITIONAL_BEFORE_CMD = {"chroot": 1, "timeout": 1}
SHELLS = {"sh", "bash", "dash"}
# dash's builtins (and POSIX reserved words handled apart): no program behind them.
SHELL_BUILTINS = {":", ".", "[", "alias", "bg", "break", "cd", "continue", "echo", "eval", "exit", "export",
                  "false", "fg", "getopts", "hash", "jobs", "kill", "local", "printf", "pwd", "read", "readonly",
                  "return", "set", "shift", "test", "times", "trap", "true", "type", "ulimit", "umask", "unalias",
                  "unset", "wait", "source"}
_RESERVED = {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}"}
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


@dataclass
class Found:
    """What a scan saw: programs by (name, where) with the places that run them, and call sites
    whose argv[0] could not be followed."""

    programs: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)

    def add(self, program: str, where: str, at: str) -> None:
        self.programs.setdefault((program, where), set()).add(at)


# ------------------------------------------------------------------ argv -> programs


def programs_of(items: list[str | None], where: str, at: str, found: Found) -> None:
    """Record the programs an argv starts (argv[0], then what wrappers and `sh -c` run)."""
    if not items:
        return
    head = items[0]
    if head is DYN:
        found.unresolved.append(f"{at}: argv[0] is not a constant")
        return
    name = head.rsplit("/", 1)[-1]
    if name in ("exec", "command"):
        rest = items[1:]
        if not rest or rest[0] is DYN:
            return  # exec "$@": a command the script was handed
        if name == "command" and rest[0].startswith("-"):
            return  # command -v NAME: a lookup, not a run
        programs_of(rest, where, at, found)
        return
    if name in SHELL_BUILTINS:
        return
    found.add(name, where, at)
    if name in SHELLS:
        flags = items[1] if len(items) > 1 else None
        if isinstance(flags, str) and flags.startswith("-") and "c" in flags and len(items) > 2:
            if isinstance(items[2], str):
                shell_programs(items[2], where, at, found)
            else:
                found.unresolved.append(f"{at}: {name} -c with a script that is not a constant")
        return
    if name == "find":
        for i, item in enumerate(items):
            if item in ("-exec", "-execdir", "-ok", "-okdir") and i + 1 < len(items):
                programs_of(items[i + 1:], where, at, found)
        return
    if name not in _WRAPPER_OPTS:
        return
    with_value = _WRAPPER_OPTS[name]
    positional = _POSITIONAL_BEFORE_CMD.get(name, 0)
    i = 1
    while i < len(items):
        item = items[i]
        if positional and (item is DYN or not item.startswith("-")):
            positional -= 1  # chroot's root, timeout's duration
            i += 1
            continue
        if item is DYN:
            return  # the wrapped command is not a constant: the caller's argv (checked where it is built)
        if item == "--":
            i += 1
            break
        if item.startswith("-"):
            two = name == "bwrap" and item in _BWRAP_TWO
            i += 3 if two else 2 if ("=" not in item and item in with_value) else 1
            continue
        if name == "env" and "=" in item:
            i += 1
            continue
        break
    if i < len(items) and items[i] is not DYN:  # DYN: the caller's argv, checked where it is built
        programs_of(items[i:], "guest" if name == "chroot" else where, at, found)


# ------------------------------------------------------------------ shell scripts

_OPS = ("<<-", "&&", "||", ";;", "<<", ">>", ">&", "<&", ">|", "&", "|", ";", "(", ")", "<", ">", "\n")
_REDIRECTS = {"<", ">", ">>", ">&", "<&", ">|"}
_WORD_END = set(" \t\n;&|()<>")


class _Shell:
    """A tokenizer for the POSIX shell that kiln's scripts are written in: enough to find commands."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.commands: list[list[str | None]] = []  # every simple command, from every nesting level
        self.functions: set[str] = set()

    def parse(self, i: int = 0, in_subst: bool = False) -> int:
        """Tokenize from `i` (to the `)` closing a `$(` when `in_subst`) and collect the commands."""
        s, n = self.s, len(self.s)
        tokens: list[tuple[str, str | None, str]] = []  # (kind, value, raw): op, or a word (None if dynamic)
        heredocs: list[tuple[str, bool]] = []
        depth = 0
        while i < n:
            c = s[i]
            if c == "\n":
                tokens.append(("op", "\n", "\n"))
                i += 1
                for delim, strip in heredocs:
                    while i < n:
                        end = s.find("\n", i)
                        line = s[i:end if end >= 0 else n]
                        i = end + 1 if end >= 0 else n
                        if (line.lstrip("\t") if strip else line) == delim:
                            break
                heredocs = []
                continue
            if c in " \t":
                i += 1
                continue
            if c == "\\" and s.startswith("\n", i + 1):
                i += 2
                continue
            if c == "#":
                end = s.find("\n", i)
                i = end if end >= 0 else n
                continue
            op = next((o for o in _OPS if s.startswith(o, i)), None)
            if op is not None:
                i += len(op)
                if op == "(":
                    depth += 1
                elif op == ")":
                    if in_subst and depth == 0:
                        self._commands(tokens)
                        return i
                    depth -= 1
                if op in ("<<", "<<-"):
                    while i < n and s[i] in " \t":
                        i += 1
                    start = i
                    i, _ = self._word(i)
                    heredocs.append((re.sub(r"[\"'\\]", "", s[start:i]), op == "<<-"))
                    continue
                tokens.append(("op", op, op))
                continue
            start = i
            i, word = self._word(i)
            tokens.append(("word", word, s[start:i]))
        self._commands(tokens)
        return i

    def _word(self, i: int) -> tuple[int, str | None]:
        """One word from `i`: its unquoted text, or None if it has an expansion in it."""
        s, n = self.s, len(self.s)
        out: list[str] = []
        dynamic = False
        while i < n and s[i] not in _WORD_END:
            c = s[i]
            if c == "'":
                end = s.index("'", i + 1)
                out.append(s[i + 1:end])
                i = end + 1
            elif c == '"':
                i += 1
                while i < n and s[i] != '"':
                    if s[i] == "\\":
                        out.append(s[i + 1:i + 2])
                        i += 2
                    elif s[i] == "$":
                        i, _ = self._dollar(i)
                        dynamic = True
                    elif s[i] == "`":
                        i = self._backtick(i)
                        dynamic = True
                    else:
                        out.append(s[i])
                        i += 1
                i += 1
            elif c == "\\":
                out.append(s[i + 1:i + 2])
                i += 2
            elif c == "$":
                i, _ = self._dollar(i)
                dynamic = True
            elif c == "`":
                i = self._backtick(i)
                dynamic = True
            else:
                out.append(c)
                i += 1
        return i, None if dynamic else "".join(out)

    def _dollar(self, i: int) -> tuple[int, None]:
        s = self.s
        if s.startswith("$((", i):
            end = s.index("))", i)
            return end + 2, None
        if s.startswith("$(", i):
            return self.parse(i + 2, in_subst=True), None
        if s.startswith("${", i):
            depth, j = 0, i + 1
            while j < len(s):
                if s[j] == "{":
                    depth += 1
                elif s[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return j + 1, None
                j += 1
            return j, None
        j = i + 1
        if j < len(s) and (s[j].isalnum() or s[j] == "_"):
            while j < len(s) and (s[j].isalnum() or s[j] == "_"):
                j += 1
        else:
            j += 1  # $@ $? $1 $$ ...
        return j, None

    def _backtick(self, i: int) -> int:
        end = self.s.index("`", i + 1)
        inner = _Shell(self.s[i + 1:end])
        inner.parse()
        self.commands += inner.commands
        self.functions |= inner.functions
        return end + 1

    def _commands(self, tokens: list[tuple[str, str | None, str]]) -> None:
        cmd_pos, skip_next, current = True, False, None
        cases, pattern, header = 0, False, ""  # header: "case" or "for" while reading one
        k = 0
        while k < len(tokens):
            kind, value, raw = tokens[k]
            k += 1
            if kind == "op":
                if value in _REDIRECTS:
                    skip_next = True
                elif value == ";;":
                    pattern = cases > 0
                elif value == ")" and pattern:
                    pattern, cmd_pos = False, True
                elif not pattern and not header:
                    cmd_pos = value != ")"
                continue
            if skip_next:
                skip_next = False
                continue
            if header == "case":
                if value == "in":
                    header, cases, pattern = "", cases + 1, True
                continue
            if header == "for":
                if value == "do":
                    header, cmd_pos = "", True
                continue
            if pattern:
                if value == "esac":
                    cases, pattern = cases - 1, False
                continue
            if not cmd_pos:
                if current is not None:
                    current.append(value)
                continue
            if value in _RESERVED:
                continue
            if value == "esac":
                cases -= 1
                continue
            if value in ("case", "for"):
                header = value
                continue
            if _ASSIGNMENT.match(raw):
                continue
            if [t[0:2] for t in tokens[k:k + 2]] == [("op", "("), ("op", ")")] and value is not None:
                self.functions.add(value)
                k += 2
                continue
            current = [value]
            self.commands.append(current)
            cmd_pos = False


def shell_programs(text: str, where: str, at: str, found: Found) -> None:
    sh = _Shell(text)
    sh.parse()
    for words in sh.commands:
        if words and words[0] in sh.functions:
            continue
        if words and words[0] is DYN:
            continue  # "$real" -k all, exec "$@": a program the script was handed, not a name
        programs_of(words, where, at, found)


# ------------------------------------------------------------------ Python sources


@dataclass
class _Module:
    path: str
    tree: ast.Module
    lines: list[str]
    assigns: dict[str, list[ast.expr]]  # module level
    functions: dict[str, ast.FunctionDef]  # module functions and methods, by name
    parents: dict[ast.AST, ast.FunctionDef]  # the innermost function around a node
    imports: dict[str, Path]  # name -> the kiln module it comes from (`from kiln.x import name`)

    def scope_of(self, node: ast.AST) -> ast.FunctionDef | None:
        return self.parents.get(node)


def _load(path: Path, rel: str) -> _Module:
    text = path.read_text()
    tree = ast.parse(text, filename=rel)
    assigns: dict[str, list[ast.expr]] = {}
    for stmt in tree.body:
        for name, value in _assignments(stmt):
            assigns.setdefault(name, []).append(value)
    functions: dict[str, ast.FunctionDef] = {}
    parents: dict[ast.AST, ast.FunctionDef] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions.setdefault(node.name, node)  # type: ignore[arg-type]
    # The innermost function around each node.
    def visit(node: ast.AST, fn: ast.FunctionDef | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else fn
            if inner is not None:
                parents[child] = inner  # type: ignore[assignment]
            visit(child, inner)  # type: ignore[arg-type]
    visit(tree, None)
    src = Path(str(path)[: -len(rel)]) if str(path).endswith(rel) else path.parent
    imports: dict[str, Path] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kiln" and not node.level:
            source = src / (node.module.replace(".", "/") + ".py")
            if source.is_file():
                for alias in node.names:
                    imports[alias.asname or alias.name] = source
    return _Module(rel, tree, text.splitlines(), assigns, functions, parents, imports)


@functools.cache
def _load_imported(path: Path) -> _Module:
    rel = str(path)[str(path).rindex("/kiln/") + 1:]
    return _load(path, rel)


def _assignments(stmt: ast.stmt) -> Iterator[tuple[str, ast.expr]]:
    if isinstance(stmt, ast.Assign):
        for target in stmt.targets:
            if isinstance(target, ast.Name):
                yield target.id, stmt.value
    elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
        yield stmt.target.id, stmt.value


def _local_assigns(fn: ast.FunctionDef) -> dict[str, list[ast.expr]]:
    out: dict[str, list[ast.expr]] = {}
    for node in ast.walk(fn):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            for name, value in _assignments(node):
                out.setdefault(name, []).append(value)
    return out


def _params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]


class _Param(Exception):
    """The argv is a parameter of the enclosing function: that function forwards a command."""

    def __init__(self, fn: ast.FunctionDef, name: str) -> None:
        self.fn, self.name = fn, name


class _Unresolved(Exception):
    pass


class _Resolver:
    def __init__(self, module: _Module) -> None:
        self.m = module
        self.depth = 0

    def argvs(self, expr: ast.expr, fn: ast.FunctionDef | None) -> list[list[str | None]]:
        """The possible argv lists `expr` evaluates to (each item a constant or DYN)."""
        self.depth += 1
        try:
            if self.depth > 20:
                raise _Unresolved
            return self._argvs(expr, fn)
        finally:
            self.depth -= 1

    def _argvs(self, expr: ast.expr, fn: ast.FunctionDef | None) -> list[list[str | None]]:
        if isinstance(expr, ast.List | ast.Tuple):
            results: list[list[str | None]] = [[]]
            for elt in expr.elts:
                if isinstance(elt, ast.Starred):
                    try:
                        spliced = self.argvs(elt.value, fn)
                    except (_Unresolved, _Param):
                        spliced = [[DYN]]
                    results = [r + s for r in results for s in spliced]
                else:
                    value = self.scalar(elt, fn)
                    results = [r + [value] for r in results]
            return results
        if isinstance(expr, ast.Name):
            local = _local_assigns(fn).get(expr.id) if fn else None
            if local:
                return [a for value in local for a in self.argvs(value, fn)]
            if fn is not None and expr.id in _params(fn):
                raise _Param(fn, expr.id)
            if expr.id in self.m.assigns:
                return [a for value in self.m.assigns[expr.id] for a in self.argvs(value, None)]
            raise _Unresolved
        if isinstance(expr, ast.ListComp | ast.GeneratorExp) and len(expr.generators) == 1:
            return self.argvs(expr.generators[0].iter, fn)
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
            return self.argvs(expr.left, fn)
        if isinstance(expr, ast.IfExp):
            return self.argvs(expr.body, fn) + self.argvs(expr.orelse, fn)
        if isinstance(expr, ast.Call):
            func = expr.func
            if isinstance(func, ast.Name) and func.id in ("list", "tuple") and len(expr.args) == 1:
                return self.argvs(expr.args[0], fn)
            name = func.attr if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                and func.value.id == "self" else func.id if isinstance(func, ast.Name) else None
            target = self.m.functions.get(name) if name else None
            resolver = self
            if target is None and isinstance(func, ast.Name) and func.id in self.m.imports:
                # A kiln function from another module that builds (part of) an argv: follow it there.
                resolver = _Resolver(_load_imported(self.m.imports[func.id]))
                resolver.depth = self.depth
                target = resolver.m.functions.get(func.id)
            if target is not None:
                returns = [r.value for r in ast.walk(target) if isinstance(r, ast.Return) and r.value is not None]
                if returns:
                    out = []
                    for value in returns:
                        try:
                            out += resolver.argvs(value, target)
                        except _Param:
                            out.append([DYN])
                    return out
        raise _Unresolved

    def scalar(self, expr: ast.expr, fn: ast.FunctionDef | None) -> str | None:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return expr.value
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "str" and expr.args:
            return self.scalar(expr.args[0], fn)
        if isinstance(expr, ast.Name):
            local = _local_assigns(fn).get(expr.id) if fn else None
            values = local if local else None if (fn and expr.id in _params(fn)) else self.m.assigns.get(expr.id)
            if values and len(values) == 1:
                return self.scalar(values[0], fn if local else None)
        return DYN


def _is_interpreter(expr: ast.expr) -> bool:
    """sys.executable: kiln's own Python (the watchdog), not an external program."""
    return isinstance(expr, ast.Attribute) and expr.attr == "executable" and \
        isinstance(expr.value, ast.Name) and expr.value.id == "sys"


def _call_kind(call: ast.Call, wrappers: dict[str, int]) -> tuple[str, int] | None:
    """("host"|"guest", index of the argv argument) for a call that runs a command, else None."""
    func = call.func
    if isinstance(func, ast.Name):
        if func.id in RUNNERS:
            return "host", 0
        if func.id in wrappers:
            return "host", wrappers[func.id]
        return None
    if isinstance(func, ast.Attribute):
        owner = func.value.id if isinstance(func.value, ast.Name) else None
        if owner == "subprocess" and func.attr in SUBPROCESS:
            return "host", 0
        if owner == "os" and func.attr.startswith(("execv", "execl", "spawnv", "spawnl", "posix_spawn")):
            return "host", 1
        if owner == "self" and func.attr in wrappers:
            return "host", wrappers[func.attr]
        if func.attr == "run" and owner != "subprocess" and call.args and isinstance(call.args[0], ast.List | ast.Tuple):
            return "guest", 0  # IsolatedRoot.run([...]): runs inside the image root
    return None


def _argv_arg(call: ast.Call, index: int) -> ast.expr | None:
    if len(call.args) > index and not isinstance(call.args[index], ast.Starred):
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg in ("args", "cmd", "argv")), None)


def scan_python(path: Path, rel: str, found: Found) -> None:
    m = _load(path, rel)
    resolver = _Resolver(m)
    calls = [n for n in ast.walk(m.tree) if isinstance(n, ast.Call)]
    # Functions that forward a parameter to a runner become runners themselves (to a fixed point).
    wrappers: dict[str, int] = {}
    results: dict[int, tuple[ast.Call, str, list[list[str | None]]]] = {}
    for _ in range(5):
        changed = False
        for call in calls:
            kind = _call_kind(call, wrappers)
            if kind is None or id(call) in results:
                continue
            where, index = kind
            at = f"{rel}:{call.lineno}"
            if TABLE_MARK in m.lines[call.lineno - 1]:
                results[id(call)] = (call, where, [])
                continue
            arg = _argv_arg(call, index)
            if arg is None:
                results[id(call)] = (call, where, [[DYN]])
                continue
            if isinstance(arg, ast.List | ast.Tuple) and arg.elts and _is_interpreter(arg.elts[0]):
                results[id(call)] = (call, where, [])
                continue
            fn = m.scope_of(call)
            try:
                results[id(call)] = (call, where, resolver.argvs(arg, fn))
            except _Param as p:
                if p.fn.name not in wrappers:
                    wrappers[p.fn.name] = _params(p.fn).index(p.name) - (1 if _params(p.fn)[:1] == ["self"] else 0)
                    changed = True
                results[id(call)] = (call, where, [])
            except _Unresolved:
                found.unresolved.append(f"{at}: cannot follow the argv of this call")
                results[id(call)] = (call, where, [])
        if not changed:
            break
    for call, where, argvs in results.values():
        for argv in argvs:
            programs_of(argv, where, f"{rel}:{call.lineno}", found)


def scan_tree(src: Path) -> Found:
    """Every program the Python modules and shipped shell scripts under `src` execute."""
    found = Found()
    for path in sorted(src.rglob("*.py")):
        scan_python(path, str(path.relative_to(src)), found)
    for path in sorted(src.rglob("*.sh")):
        rel = str(path.relative_to(src))
        shell_programs(path.read_text(), "guest" if rel in GUEST_SCRIPTS else "host", rel, found)
    return found
