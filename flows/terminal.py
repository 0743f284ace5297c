"""The sweep's progress bar on a terminal, and the log lines printed while it is shown.

The bar is drawn on stderr by rich, which redraws its line in place. Prefect's console handler
keeps the stderr it found when logging was configured (at ``import prefect``), so its lines
used to land in the middle of the bar's line (``2/3 0:00:1518:17:52.389 | INFO …``). While the
bar is shown, every log handler that writes to this process's stderr or stdout writes through
the bar's console instead: each line is printed above the bar, which is redrawn below it.
Which records reach the terminal at all is the caller's choice: ``embedsweep run`` keeps the
console at WARNING while a bar is shown (``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
from collections.abc import Iterator
from typing import IO, cast

from prefect.logging.handlers import PrefectConsoleHandler
from rich.console import Console
from rich.file_proxy import FileProxy
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

__all__ = ["sweep_bar"]


def _handlers() -> list[logging.Handler]:
    """Every handler of every logger configured so far (each once)."""
    loggers = [logging.getLogger()]
    loggers += [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    found: dict[int, logging.Handler] = {}
    for logger in loggers:
        for handler in logger.handlers:
            found.setdefault(id(handler), handler)
    return list(found.values())


class _Above(io.TextIOBase):
    """A stream that writes to rich's proxy of stderr or stdout, which prints each line above
    the live bar. A rich Console given the proxy itself sees through it (``rich_proxied_file``)
    and writes to the real stream, into the bar's line; it cannot see through this."""

    def __init__(self, proxy: FileProxy) -> None:
        super().__init__()
        self._proxy = proxy

    def write(self, text: str) -> int:
        self._proxy.write(text)
        return len(text)

    def flush(self) -> None:
        self._proxy.flush()

    def isatty(self) -> bool:
        return self._proxy.isatty()

    def fileno(self) -> int:
        return self._proxy.fileno()


@contextlib.contextmanager
def _logs_above_bar() -> Iterator[None]:
    """Point the handlers that write to the real stdout / stderr at rich's proxies of them
    (installed by a live bar); restore them on the way out."""
    proxies: dict[int, FileProxy] = {}
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, FileProxy):
            proxies[id(stream.rich_proxied_file)] = stream
    consoles: list[tuple[Console, IO[str]]] = []
    streams: list[tuple[logging.StreamHandler[IO[str]], IO[str]]] = []
    for handler in _handlers():
        if isinstance(handler, PrefectConsoleHandler):
            # It prints through a rich Console of its own, made with the real stderr.
            real = handler.console.file
            proxy = proxies.get(id(real))
            if proxy is not None:
                handler.console.file = cast(IO[str], _Above(proxy))
                consoles.append((handler.console, real))
        if isinstance(handler, logging.StreamHandler):
            proxy = proxies.get(id(handler.stream))
            if proxy is not None:
                streams.append((handler, handler.stream))
                handler.setStream(proxy)
    try:
        yield
    finally:
        for console, real in consoles:
            console.file = real
        for stream_handler, real in streams:
            stream_handler.setStream(real)


@contextlib.contextmanager
def sweep_bar(show: bool) -> Iterator[Progress]:
    """A progress bar on stderr, shown only when SHOW; log lines go above it while it is."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show,
    )
    with bar:
        if not show:
            yield bar
            return
        with _logs_above_bar():
            yield bar
