"""Where results go: stdout (classic-tool text or JSON lines), a results
file, and a progress bar on stderr.

Why results are printed as they arrive (not sorted at the end): a run over
many VPs can take minutes, and the JSON lines feed pipelines that start
working on the first one, as with ``scamper -O json``. The progress bar is
drawn only when stderr is a terminal, so pipes, files and tests get exactly
the results and nothing else.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["Output"]


class Output:
    """Print results and write them to ``path``; count progress over ``total`` runs."""

    def __init__(self, prog: str, *, as_json: bool, path: str | None, total: int,
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.prog = prog
        self.as_json = as_json
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self.total = total
        self.blocks = 0
        self.file: Any = None
        self.file_failed = False
        self._progress: Any = None
        self._bar: Any = None
        if path:
            from marionet.results import File

            try:
                self.file = File(path, "w")
            except (OSError, ValueError) as exc:
                from .common import CliError

                raise CliError(f"cannot write {path}: {exc}") from None

    # ------------------------------------------------------------ life
    def __enter__(self) -> "Output":
        if self.total > 1 and getattr(self.stderr, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn(f"[bold]{self.prog}[/bold]"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=Console(file=self.stderr), transient=True,
                                      redirect_stdout=False, redirect_stderr=False)
            self._progress.start()
            self._bar = self._progress.add_task(self.prog, total=self.total)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.file is not None:
            try:
                self.file.close()
            except (OSError, ValueError) as e:
                self.error(f"closing {self.file.filename}: {e}")
                self.file_failed = True
            self.file = None

    # --------------------------------------------------------- results
    def result(self, r: Any) -> None:
        """Print one result (and write it to the file); advance the bar."""
        self._print(self._render(r))
        if self.file is not None and not self.file_failed:
            try:
                self.file.write(r)
            except Exception as e:  # noqa: BLE001 - a result the format cannot hold must not stop the run
                self.error(f"cannot write a {type(r).__name__} to {self.file.filename}: {e}")
                self.file_failed = True
        self.advance()

    def error(self, message: str) -> None:
        """A measurement that failed: one line on stderr (the bar advances
        for failures too, see ``advance``)."""
        line = f"{self.prog}: {message}"
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.stderr, flush=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._progress.advance(self._bar)

    def _render(self, r: Any) -> str:
        from marionet.results import dumps, to_json

        if self.as_json or not hasattr(r, "to_text"):
            return dumps(to_json(r))
        text = r.to_text()
        if type(r).__name__ == "Http" and self.total > 1:
            # curl -i prints no header of its own: name the VP the way curl -v names things
            text = f"* vp {r.vp or 'native'}: {r.url}\n{text}"
        return "\n" + text if self.blocks else text  # one blank line between blocks

    def _print(self, text: str) -> None:
        self.blocks += 1
        if self._progress is not None and getattr(self.stdout, "isatty", lambda: False)():
            # stdout and the bar share a terminal: print above the bar, as rich's own redirection would
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stdout, flush=True)
