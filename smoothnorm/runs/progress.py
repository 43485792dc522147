"""Progress of a sweep: runs done / running / queued and, per running run, step, loss, steps/s and ETA.

`execute_run` reports progress as small event dicts (one schema for every executor; Dask workers forward them to
the client). `ProgressDisplay` turns them into a live table on a terminal (rich) and into plain lines otherwise
(CI, log files), where a running run prints at most one step line every `every` seconds.

Events: {"kind": ..., "run": run_id, ...} with kind
- "plan": {"runs": [run_id, ...]}, sent by the executor before any run starts;
- "skip": {"status"}: the run is already finished;
- "wait": {"owner": lease record}: a live process elsewhere holds the run's lease; this one waits;
- "start": {"step", "steps", "resumed", "took_over" (stale lease record or None), "host", "pid"};
- "step": {"step", "steps", "loss", "rate" (steps/s, None until the second step), "eta" (s or None)};
- "finish": {"status", "step", "steps", "elapsed"};
- "fail": {"error"}; "retry": {"error"} (the run goes back to the queue, e.g. after its worker died).
Rates and ETAs leave out the first step of each process, which includes Numba's compilation.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

EVENT_KINDS = ("plan", "skip", "wait", "start", "step", "finish", "fail", "retry")


def _seconds(value: float | None) -> str:
    if value is None:
        return "?"
    value = int(round(value))
    if value < 120:
        return f"{value}s"
    if value < 7200:
        return f"{value // 60}m{value % 60:02d}s"
    return f"{value // 3600}h{value % 3600 // 60:02d}m"


def _rate(value: float | None) -> str:
    if value is None:
        return "? steps/s"
    return f"{value:.3g} steps/s" if value < 100 else f"{value:.0f} steps/s"


def describe(event: dict) -> str:
    """One plain line for an event (the line printed when output is not a terminal)."""
    kind, run = event["kind"], event.get("run", "")
    if kind == "plan":
        return f"{len(event['runs'])} runs to do"
    if kind == "skip":
        return f"{run}: already {event['status']}, skipped"
    if kind == "wait":
        owner = event["owner"]
        return f"{run}: being trained by pid {owner['pid']} on {owner['host']}; waiting for it"
    if kind == "start":
        where = f" on {event['host']} (pid {event['pid']})" if event.get("host") else ""
        took = event.get("took_over")
        took = f", took over the stale lease of pid {took['pid']} on {took['host']}" if took else ""
        if event.get("resumed"):
            return f"{run}: resuming at step {event['step']}/{event['steps']}{where}{took}"
        return f"{run}: starting ({event['steps']} steps){where}{took}"
    if kind == "step":
        loss = event.get("loss")
        loss = "nan" if loss is None else f"{loss:.4g}"
        return (f"{run}: step {event['step']}/{event['steps']} loss {loss} "
                f"({_rate(event.get('rate'))}, ETA {_seconds(event.get('eta'))})")
    if kind == "finish":
        return f"{run}: {event['status']} in {event['elapsed']:.1f}s"
    if kind == "fail":
        return f"{run}: failed: {event['error']}"
    if kind == "retry":
        return f"{run}: back in the queue ({event['error']})"
    return f"{run}: {kind}"


class ProgressDisplay:
    """Callable that receives progress events and shows them: a rich live table when `stream` is a terminal
    (and rich is installed), else plain lines. Use as a context manager around the executor.

    stream: where to write (default sys.stderr); live: force (True) or forbid (False) the live table;
    every: seconds between two plain step lines of one run.
    """

    def __init__(self, stream: TextIO | None = None, *, live: bool | None = None, every: float = 10.0):
        self.stream = stream or sys.stderr
        if live is None:
            live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every
        self.planned: list[str] = []
        self.done: dict[str, str] = {}  # run -> finished | diverged | skipped | failed
        self.running: dict[str, dict] = {}  # run -> last start/step event
        self.waiting: dict[str, dict] = {}  # run -> wait event
        self._printed: dict[str, float] = {}
        self._lock = threading.Lock()
        self._live = None
        if live:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:
                live = False
            else:
                self._console = Console(file=self.stream)
                self._live = Live(get_renderable=self._table, console=self._console, refresh_per_second=4,
                                  transient=True)
        self.live = bool(live)

    # -- state -----------------------------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Runs done, running (here or elsewhere) and queued."""
        known = set(self.planned) | set(self.done) | set(self.running) | set(self.waiting)
        running = len(set(self.running) | set(self.waiting))
        return {"done": len(self.done), "running": running, "queued": len(known) - len(self.done) - running}

    def summary(self) -> str:
        c = self.counts()
        failed = sum(1 for s in self.done.values() if s == "failed")
        extra = f", {failed} failed" if failed else ""
        return f"runs: {c['done']} done, {c['running']} running, {c['queued']} queued{extra}"

    def __call__(self, event: dict) -> None:
        with self._lock:
            if event["kind"] == "wait" and event.get("run") in self.waiting:
                seen = self.waiting[event["run"]]["owner"]
                if (seen["host"], seen["pid"]) == (event["owner"]["host"], event["owner"]["pid"]):
                    return  # told already (the executor and the run both report the same wait)
            if event["kind"] in ("start", "step") and event.get("run") in self.done:
                return  # a late event of a run that is done (Dask forwards events asynchronously)
            self._update(event)
            self._show(event)

    def _update(self, event: dict) -> None:
        kind, run = event["kind"], event.get("run")
        if kind == "plan":
            self.planned = list(event["runs"])
        elif kind in ("skip", "finish", "fail"):
            self.running.pop(run, None)
            self.waiting.pop(run, None)
            self.done[run] = {"skip": "skipped", "fail": "failed"}.get(kind, event.get("status", kind))
        elif kind in ("start", "step"):
            self.waiting.pop(run, None)
            self.running[run] = {**self.running.get(run, {}), **event}
        elif kind == "wait":
            self.waiting[run] = event
        elif kind == "retry":
            self.running.pop(run, None)
            self.waiting.pop(run, None)

    # -- output ----------------------------------------------------------------------------------------------------
    def _show(self, event: dict) -> None:
        kind, run = event["kind"], event.get("run")
        if self._live is not None:
            if kind not in ("step", "plan"):
                self._console.print(describe(event), highlight=False, markup=False)
            return
        if kind == "step":
            now = time.monotonic()
            last = event["step"] >= event["steps"]
            if not last and now - self._printed.get(run, -1e9) < self.every:
                return
            self._printed[run] = now
        line = describe(event)
        if kind in ("skip", "finish", "fail", "retry"):
            line += f"  [{self.summary()}]"
        print(line, file=self.stream, flush=True)

    def _table(self):
        from rich.table import Table

        with self._lock:
            table = Table(title=self.summary(), title_justify="left", expand=False)
            for name in ("run", "where", "step", "loss", "steps/s", "ETA"):
                table.add_column(name, justify="left" if name in ("run", "where") else "right")
            for run, ev in self.running.items():
                loss = ev.get("loss")
                where = f"{ev['host']}:{ev['pid']}" if ev.get("host") else ""
                table.add_row(run, where, f"{ev.get('step', 0)}/{ev.get('steps', '?')}",
                              "" if loss is None else f"{loss:.4g}",
                              "?" if ev.get("rate") is None else f"{ev['rate']:.3g}", _seconds(ev.get("eta")))
            for run, ev in self.waiting.items():
                owner = ev["owner"]
                table.add_row(run, f"{owner['host']}:{owner['pid']}", "elsewhere", "", "", "")
            return table

    def __enter__(self) -> ProgressDisplay:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.stop()
            self._console.print(self.summary(), highlight=False, markup=False)
