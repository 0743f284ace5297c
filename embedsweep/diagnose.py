"""The failure classifier: server.log text and HTTP error bodies → a stable failure code
(ARCHITECTURE.md) plus the one line that decided it.

Rules are a plain ordered table (:data:`RULES`) of ``(cause, regex, transient)`` built from the
failure texts of vLLM (0.33 and older releases), SGLang 0.5.x, Infinity 0.0.78, transformers /
huggingface_hub and uvicorn (research/ENGINES.md). Infinity dies at start-up through
sentence-transformers, transformers, huggingface_hub and uvicorn, so their rules cover it (its
real logs are in tests/fixtures/logs, ``*__infinity078_*``). How a log is read:

1. **Root cause first.** Lines are scanned top to bottom and the first line that a server-level
   rule matches decides; within that one line the earliest rule in the table (the most specific)
   wins. An engine that dies prints its cause first and its consequences after it (a CUDA OOM, then
   ``Engine core initialization failed``; a ``GatedRepoError``, then the ``OSError`` wrapping it),
   so the earliest known cause is the real one. Frame and source lines inside a traceback are not
   read (they quote ``raise ValueError("No available memory ...`` before anything was raised).
2. **A custom architecture on vLLM's Transformers fallback next.** vLLM serves an architecture it
   has no implementation of (NV-Embed-v2's ``NVEmbedModel`` with its own code) through its
   Transformers backend, and warns so (``TransformersMultiModalEmbeddingModel has no vLLM
   implementation, falling back to Transformers implementation``). A server that then crashes
   before it ever said it was serving died because that backend could not take the model: the
   cause is ``unsupported_architecture`` and the warning is the evidence. A server that served and
   crashed later is read by the next step instead.
3. **Generic crashes next.** Lines that only say that something died (``Engine core
   initialization failed``, SGLang's ``Initialization failed.``, a Python traceback) are not in
   :data:`RULES`; they are looked at only when no server-level rule matched anywhere. The cause is
   then ``server_crashed`` and the evidence is the last exception line of a traceback that is not
   itself one of those wrappers (vLLM's API server re-raises ``RuntimeError: Engine core
   initialization failed. See root cause above`` after the engine core's own traceback; the line
   above is the useful one). Without such a line, the first wrapper line is the evidence.
4. **Request-level causes last** (:data:`REQUEST_CAUSES`: ``context_overflow``). A rejected request
   leaves the server running and is logged with its own traceback by vLLM; it explains a run whose
   server never died, but a server that later crashed failed for the later reason.
5. Nothing matched: ``unknown`` with no evidence.

The evidence is the deciding line as the engine wrote it (stripped, colour codes removed, cut to
:data:`MAX_EVIDENCE_CHARS`); nothing is added to it. Redacting secrets the engine itself printed is
the caller's job (the server supervisor knows them).

Codes used are all from ARCHITECTURE.md. SGLang's "does not appear to be an embedding model ...
Please add --is-embedding" maps to ``unsupported_architecture``: the engine will not serve that
model as an embedding model, which is what that code means to a sweep. An HTTP 401/403 maps to
``unknown`` (a wrong API key is a harness bug, not a property of the model or engine).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LOG_TAIL_BYTES",
    "MAX_EVIDENCE_CHARS",
    "REQUEST_CAUSES",
    "RULES",
    "Diagnosis",
    "Rule",
    "diagnose_error_body",
    "diagnose_log",
    "diagnose_text",
    "says_engine_dead",
]

# A crashed engine writes its cause in the last few hundred lines; 256 KiB holds thousands of them
# without reading a multi-GB log of a server that ran for hours.
LOG_TAIL_BYTES = 256 * 1024
# vLLM's unsupported-architecture line lists all ~400 supported names; the head says enough.
MAX_EVIDENCE_CHARS = 500


@dataclass(frozen=True)
class Diagnosis:
    """A failure code from ARCHITECTURE.md, the line that decided it, and whether retrying the same
    cell can succeed (the retry policy in ``tasks/`` reads ``transient``)."""

    cause: str
    evidence: str | None
    transient: bool


@dataclass(frozen=True)
class Rule:
    """One row of the table: a line matching ``pattern`` means ``cause``."""

    cause: str
    pattern: re.Pattern[str]
    transient: bool = False


def _rule(cause: str, pattern: str, *, transient: bool = False) -> Rule:
    return Rule(cause, re.compile(pattern), transient)


# Most specific first: a line is tested against the rows in order and the first match wins.
RULES: tuple[Rule, ...] = (
    # --- preflight-class causes: the model cannot be served as configured, retrying never helps.
    # Hub errors come first: a gated or missing repo is why the config / architecture check after it
    # failed. "gated repo" alone would also match the not-found hint "If you are trying to access a
    # private or gated repo", so only the gated error's own sentences are used.
    # The exception class names (GatedRepoError, RepositoryNotFoundError) are not rules: their line
    # holds only a request id, and the sentence after it is the evidence worth showing.
    _rule("gated_model", r"Cannot access gated repo|You are trying to access a gated repo"),
    _rule(
        "model_not_found",
        r"Repository Not Found for url"
        r"|is not a local folder and is not a valid model identifier"
        # vLLM's own check of a model argument that is neither a folder nor a hub id.
        r"|Invalid repository ID or local directory specified"
        # huggingface_hub given a path that is no folder (Infinity 0.0.78 passes a missing
        # model folder on to hf_hub_download as a repo id).
        r"|Repo id must be in the form 'repo_name' or 'namespace/repo_name'"
        # huggingface_hub's LocalEntryNotFoundError: not in the local cache and the hub not
        # reachable (HF_HUB_OFFLINE, no network). Not transient: a retry finds the same cache.
        r"|(?i:cannot find the requested files in the (?:local|disk) cache)",
    ),
    # Missing or corrupt weights: transformers' "Error no file named model.safetensors, or
    # pytorch_model.bin, found in directory", safetensors' header check (vLLM and SGLang load
    # with it too), torch's unpickler on a truncated .bin.
    _rule(
        "invalid_model_files",
        r"does not appear to have a file named"
        r"|Error no file named .* found in directory"
        r"|SafetensorError: Error while deserializing header"
        r"|safetensors_rust\.SafetensorError"
        r"|Unable to load weights from pytorch checkpoint"
        r"|PytorchStreamReader failed reading zip archive"
        # A model folder without config.json (Infinity 0.0.78 opens it first).
        r"|No such file or directory: '[^']*/config\.json'",
    ),
    # transformers: "contains custom code which must be executed ... trust_remote_code=True";
    # older releases: "requires you to execute the configuration file in that repo". The bare word
    # trust_remote_code is not used: vLLM and SGLang print it in every argument dump.
    _rule(
        "trust_remote_code_required",
        r"contains custom code which must be executed"
        r"|requires you to execute the (?:configuration|modeling) file in that repo",
    ),
    # vLLM and SGLang share "Model architectures [...] are not supported for now"; vLLM adds
    # "failed to be inspected", "was supported in vLLM until vX" and the out-of-tree plugin hint.
    _rule(
        "unsupported_architecture",
        r"Model architectures? \[?.*?(?:are not supported for now|failed to be inspected"
        r"|was supported in vLLM until|install the plugin)"
        # vLLM's Transformers-backend fallback refusing a custom architecture.
        r"|has no vLLM implementation and the Transformers implementation is not compatible"
        # SGLang without --is-embedding, or a model it does not know as an embedding model.
        r"|does not appear to be an embedding model by default",
    ),
    # vLLM: "User-specified max_model_len (X) is greater than the derived max_model_len";
    # SGLang: the same sentence with context_length.
    _rule(
        "exceeds_context",
        r"User-specified (?:max_model_len|context_length) \(\d+\) is greater than the derived",
    ),
    # --- run-time causes.
    # Another process took the port between free_port() and the bind: a retry picks a new port.
    _rule(
        "port_in_use",
        r"(?i)address already in use|\[Errno (?:98|48)\]"
        r"|only one usage of each socket address|port \d+ is (?:already )?in use",
        transient=True,
    ),
    # "Free memory on device ... is less than desired GPU memory utilization" means another process
    # holds the GPU's memory at start-up; it may have finished by the retry.
    _rule(
        "out_of_memory",
        r"Free memory on device .* is less than desired GPU memory utilization"
        # vLLM's CPU backend: the NUMA node has less free memory than it wants to reserve.
        r"|Available memory on node \d+ .* is less than desired CPU memory utilization",
        transient=True,
    ),
    # The model does not fit with these settings: the same cell fails the same way again.
    _rule(
        "out_of_memory",
        r"CUDA out of memory|OutOfMemoryError"
        r"|No available memory for the cache blocks"
        r"|is larger than the available KV cache memory"
        r"|Not enough memory\. Please try to increase --mem-fraction-static",
    ),
    # vLLM's tails differ by release: 0.33 "your prompt contains [at least] M input tokens",
    # ~0.15 "your request has M input tokens", <=0.10 "you requested M tokens in the input for
    # embedding generation"; the head is the same, so the head is the rule.
    _rule(
        "context_overflow",
        r"This model's maximum context length is \d+ tokens"
        # vLLM V1 input validation of a prompt given as token ids.
        r"|The decoder prompt \(length \d+\) is longer than the maximum model length"
        r"|The input \(\d+ tokens\) is longer than the model's context length",
    ),
    # vLLM's engine core saw one of its worker processes die (killed, segfault): the server goes
    # down after it. The line names the worker and its exit code.
    _rule("server_crashed", r"Worker proc \S+ died unexpectedly"),
    # The engine's executable is missing from the pool's environment.
    _rule(
        "engine_not_installed",
        r"No module named '?(?:vllm|sglang)\b"
        r"|No such file or directory: '[^']*\b(?:vllm|sglang)'"
        r"|: command not found"
        r"|^(?:/bin/)?sh: \d+: \S+: not found",
    ),
)

# Causes that reject one request and leave the server up (see the module docstring, step 3).
REQUEST_CAUSES = frozenset({"context_overflow"})
_SERVER_RULES = tuple(rule for rule in RULES if rule.cause not in REQUEST_CAUSES)
_REQUEST_RULES = tuple(rule for rule in RULES if rule.cause in REQUEST_CAUSES)

# Lines that say the server died without saying why: used only when no server-level rule matched
# (module docstring, step 2). SGLang: "Initialization failed. Please see the error messages above."
_CRASH_WRAPPER = re.compile(
    r"Engine core initialization failed|EngineCore failed to start|Initialization failed\."
    r"|Rank \d+ scheduler is dead"
)
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):")
# vLLM's warning that it runs an architecture through its Transformers backend (step 2), and the
# lines that say a server came up (after which a crash is not a start-up failure).
_TRANSFORMERS_FALLBACK = re.compile(
    r"has no vLLM implementation, falling back to Transformers implementation"
)
_SERVING = re.compile(
    r"Starting vLLM server on|Application startup complete|Uvicorn running on"
    r"|The server is fired up and ready to roll"
)
# Prefixes the engines put before every line of a message, tracebacks included:
# vLLM "(EngineCore_DP0 pid=7) ERROR 11-26 10:00:01 [core.py:708] ",
# SGLang "[2026-11-26 10:00:01 TP0] ".
_LOG_PREFIX = re.compile(
    r"^(?:\([\w-]+ pid=\d+\)\s)?"
    r"(?:(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)? \[[^\]]*\] ?)?"
    r"(?:\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?(?: [^\]]*)?\] ?)?"
)
# "SomeError: message", "pkg.mod.SomeError", "KeyError: 'x'": what ends a Python traceback.
# A module-qualified class (triton.runtime.errors.OutOfResources) ends one too; a bare "INFO:" of
# an interleaved uvicorn line does not.
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)|(?:[a-z_]\w*\.)+[A-Z]\w*)\b(?::|$)"
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# The supervisor's own first line (engines/process.py) holds the command line, whose flags such as
# --trust-remote-code or --mem-fraction-static must not be read as engine output.
_OWN_HEADER = "# embedsweep:"
_UNKNOWN = Diagnosis("unknown", None, False)


def _evidence(line: str) -> str:
    text = line.strip()
    if len(text) > MAX_EVIDENCE_CHARS:
        return text[:MAX_EVIDENCE_CHARS] + " …"
    return text


def _match(
    lines: list[str], rules: tuple[Rule, ...], skip: frozenset[int] = frozenset()
) -> Diagnosis | None:
    for index, line in enumerate(lines):
        if index in skip:
            continue
        for rule in rules:
            if rule.pattern.search(line):
                return Diagnosis(rule.cause, _evidence(line), rule.transient)
    return None


def _tracebacks(lines: list[str]) -> tuple[frozenset[int], list[str]]:
    """(indices of traceback frame and source lines, the exception line ending each traceback).

    Frame lines quote the engine's source, e.g. ``raise ValueError("No available memory for the
    cache blocks. "``: they would match a rule although nothing was raised yet, and the line worth
    showing is the exception line below them.
    """
    frames: set[int] = set()
    endings: list[str] = []
    inside = False
    for index, line in enumerate(lines):
        if _TRACEBACK.search(line):
            inside = True
            continue
        if not inside:
            continue
        body = _LOG_PREFIX.sub("", line, count=1)
        # Frames and source lines are indented. A line at the margin that is no exception (another
        # process's output interleaved with the traceback) is read as an ordinary line.
        if body[:1].isspace() or not body.strip():
            frames.add(index)
            continue
        if _EXCEPTION_LINE.match(body):
            endings.append(line)
            inside = False
    return frozenset(frames), endings


def _crash(lines: list[str], frames: frozenset[int], endings: list[str]) -> Diagnosis | None:
    for line in reversed(endings):
        # A request-level exception (a rejected prompt) is no crash; step 3 reads it.
        if _CRASH_WRAPPER.search(line) or _match([line], _REQUEST_RULES):
            continue
        return Diagnosis("server_crashed", _evidence(line), False)
    for index, line in enumerate(lines):
        if index not in frames and _CRASH_WRAPPER.search(line):
            return Diagnosis("server_crashed", _evidence(line), False)
    return None


def _fallback_died(
    lines: list[str], frames: frozenset[int], endings: list[str]
) -> Diagnosis | None:
    """Step 2 of the module docstring."""
    fallback = next(
        (
            i
            for i, line in enumerate(lines)
            if i not in frames and _TRANSFORMERS_FALLBACK.search(line)
        ),
        None,
    )
    if fallback is None or any(_SERVING.search(line) for line in lines[fallback:]):
        return None
    if _crash(lines, frames, endings) is None:
        return None
    return Diagnosis("unsupported_architecture", _evidence(lines[fallback]), False)


def _lines(text: str) -> list[str]:
    text = _ANSI.sub("", text)
    return [line for line in text.splitlines() if not line.startswith(_OWN_HEADER)]


def diagnose_text(text: str) -> Diagnosis:
    """Classify server output: the first server-level cause, else a custom architecture that
    vLLM's Transformers fallback could not start, else a crash, else the first request-level
    cause, else unknown (module docstring)."""
    lines = _lines(text)
    frames, endings = _tracebacks(lines)
    return (
        _match(lines, _SERVER_RULES, frames)
        or _fallback_died(lines, frames, endings)
        or _crash(lines, frames, endings)
        or _match(lines, _REQUEST_RULES, frames)
        or _UNKNOWN
    )


def diagnose_log(path: Path, *, tail_bytes: int = LOG_TAIL_BYTES) -> Diagnosis:
    """Classify the last ``tail_bytes`` of a server.log; undecodable bytes become U+FFFD.

    Raises ``OSError`` when the file cannot be read: a missing log is the caller's problem to
    report, not a property of the engine.
    """
    with path.open("rb") as fh:
        size = fh.seek(0, 2)
        start = max(0, size - tail_bytes)
        fh.seek(start)
        data = fh.read()
    text = data.decode("utf-8", errors="replace")
    if start > 0:
        # The cut lands mid-line; half a line could match a rule it would not match whole.
        text = text.partition("\n")[2]
    return diagnose_text(text)


def _error_message(body: str) -> str:
    """The human message of an OpenAI-style error body: vLLM ``{"error": {"message"}}`` (newer)
    or ``{"message"}`` (older, and SGLang), starlette ``{"detail"}``, ``{"error": "..."}``;
    the raw body when it is not JSON."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"]).strip()
        for key in ("message", "detail", "error"):
            value = data.get(key)
            if isinstance(value, str):
                return value.strip()
    return body.strip()


# An API server answering for an engine that is gone: vLLM V1 "EngineCore encountered an issue.
# See stack trace (above) for the root cause." (EngineDeadError); older: "Engine loop is not
# running".
_ENGINE_DEAD = re.compile(
    r"EngineCore encountered an issue|EngineDeadError|Engine loop is not running|engine is dead"
)


def says_engine_dead(body: str) -> bool:
    """Whether an error answer says the engine behind the API server is dead (vLLM's
    ``EngineDeadError``), whatever its status."""
    return bool(_ENGINE_DEAD.search(_error_message(body)))


def diagnose_error_body(status: int, body: str) -> Diagnosis:
    """Classify an HTTP error response of an embeddings endpoint.

    The message is matched against :data:`RULES` first (a 400 with vLLM's or SGLang's context
    message → ``context_overflow``, a 500 carrying a CUDA OOM → ``out_of_memory``); then the status:
    a message saying the engine behind the API server is dead (vLLM's ``EngineDeadError``) →
    ``server_crashed``; then the status: 404 naming a model → ``model_not_found``, 502/503 →
    ``server_crashed`` (the engine behind the API server is gone), anything else (401/403
    included) → ``unknown``.
    """
    message = _error_message(body)
    lines = _lines(message)
    # One response has one message: every rule applies, request-level ones included.
    found = _match(lines, RULES)
    if found is not None:
        return found
    first = next((line for line in lines if line.strip()), None)
    evidence = _evidence(first) if first is not None else None
    if _ENGINE_DEAD.search(message):
        return Diagnosis("server_crashed", evidence, False)
    # vLLM: 404 "The model `x` does not exist."; a 404 without "model" is a wrong URL path.
    if status == 404 and re.search(r"(?i)\bmodel\b", message):
        return Diagnosis("model_not_found", evidence, False)
    if status in (502, 503):
        return Diagnosis("server_crashed", evidence, False)
    return Diagnosis("unknown", evidence, False)
