"""Run a sweep: on Ray actors (one per worker, the model loaded once each) or in this process.

:func:`run_sweep` opens the store (taking a lock), checks or writes the sweep's settings, and runs
only what the store lacks: the causal trace of each fact, then each cell. Only the driver writes,
one transaction per trace or cell, so:

* a re-run of the same sweep skips everything already stored;
* a worker that dies (killed, out of memory) loses only the job it was running: the driver starts
  a new actor and the job goes back to the front of the queue; the primary key makes a second
  write of a cell impossible, so nothing is counted twice;
* Ctrl-C between or during jobs leaves a consistent store (the job in flight is simply not stored).

Ray: by default a local cluster started in-process with ``workers`` CPUs (``ray.init``); an
``address`` (``"auto"``, ``"ray://host:10001"``) joins an existing one. Key statistics are
computed once by the first worker and reach the others through Ray's object store.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from knowscope.models import Model
from knowscope.progress import progress_bar
from knowscope.sweep.cells import CellRunner
from knowscope.sweep.grid import SweepSpec, edited_layers
from knowscope.sweep.store import SweepStore

logger = logging.getLogger(__name__)

RAY_HINT = "pip install 'knowscope[ray]'"
#: environment a Ray worker needs to find the same caches and model files as the driver
_ENV_PREFIXES = ("KNOWSCOPE_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_")


@dataclass
class SweepReport:
    """What one call of :func:`run_sweep` did."""

    store: str
    n_cells: int
    n_run: int = 0
    n_skipped: int = 0
    n_traces: int = 0
    n_traces_run: int = 0
    n_errors: int = 0
    n_restarts: int = 0
    workers: int = 1
    ray: bool = False
    seconds: float = 0.0
    interrupted: bool = False
    out_of_time: bool = False  # stopped by ``max_seconds`` with jobs left (run again to continue)
    worker_names: list[str] = field(default_factory=list)

    @property
    def cells_per_second(self) -> float | None:
        return self.n_run / self.seconds if self.n_run and self.seconds > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cells_per_second": self.cells_per_second}


def import_ray(address: str | None = None) -> Any:
    """Ray, or a clear error naming the extra to install (``ray://`` addresses need the Ray client too)."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(f"Ray is not installed: {RAY_HINT} (or run a small sweep in this process with "
                           "--no-ray --workers 1)") from None
    if address is not None and str(address).startswith("ray://") and not ray_client_installed():
        raise RuntimeError(f"address {address!r} joins through the Ray client, which is not installed: "
                           "pip install 'ray[client]' (or use --address auto on a machine of the cluster)")
    return ray


def ray_client_installed() -> bool:
    """Whether ``ray://`` addresses can be joined: the Ray client needs grpcio (``ray[client]``)."""
    return importlib.util.find_spec("grpc") is not None


def run_sweep(
    spec: SweepSpec,
    store: str | os.PathLike[str],
    *,
    workers: int | None = None,
    address: str | None = None,
    use_ray: bool = True,
    model: Model | None = None,
    progress: bool = True,
    max_restarts: int | None = None,
    max_seconds: float | None = None,
    on_result: Callable[[dict[str, Any], Any], None] | None = None,
) -> SweepReport:
    """Run every trace and cell of ``spec`` that ``store`` does not hold yet; returns what was done.

    Args:
        workers: Ray actors to start (default: the machine's CPU count); ``use_ray=False`` needs 1.
        address: join this Ray cluster (``"auto"`` or ``"ray://host:port"``) instead of a local one.
        use_ray: ``False`` runs in this process (``model``, if given, is used instead of loading one).
        max_restarts: worker deaths tolerated before giving up (default ``2 × workers + 2``).
        max_seconds: start no new job after this long (the jobs running finish and are stored); a
            later call continues. For sweeps longer than a session.
        on_result: called after each stored row with ``(row, pool)`` (progress hooks, tests).
    """
    workers = int(workers) if workers is not None else ((os.cpu_count() or 1) if use_ray else 1)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not use_ray and workers != 1:
        raise ValueError("without Ray a sweep runs on one worker (--workers 1 --no-ray)")
    if not use_ray and address is not None:
        raise ValueError("--address joins a Ray cluster; it cannot be combined with --no-ray")
    if model is not None and use_ray:
        raise ValueError("a loaded model is used only in-process (use_ray=False); Ray workers load spec.model")
    if max_seconds is not None and not max_seconds >= 0:
        raise ValueError(f"max_seconds must be >= 0, got {max_seconds}")
    ray = import_ray(address) if use_ray else None
    started = time.perf_counter()
    report = SweepReport(store=str(store), n_cells=0, workers=workers, ray=use_ray)
    with SweepStore(store, writer=True) as db:
        pool = (_RayPool(ray, spec, workers, address) if use_ray else _LocalPool(spec, model, progress))
        try:
            info = pool.describe()
            n_layers = info["n_layers"]
            settings = spec.settings(info["fingerprint"], n_layers, info["resolved"])
            db.claim(settings, spec.facts)
            cells = spec.cells(n_layers)
            done = db.done_cells()
            todo = [c for c in cells if c.id not in done]
            traced = db.traced_facts()
            trace_jobs = [("trace", i) for i in range(len(spec.facts)) if i not in traced]
            report.n_cells, report.n_skipped = len(cells), len(cells) - len(todo)
            report.n_traces = len(spec.facts)
            jobs = trace_jobs + [("cell", c) for c in todo]
            logger.info("sweep %s: %d cells (%d stored), %d traces to run", store, len(cells), report.n_skipped,
                        len(trace_jobs))
            if todo:
                pool.share_stats(_stats_needs(info, spec, todo, n_layers))
            limit = max_restarts if max_restarts is not None else 2 * workers + 2
            deadline = None if max_seconds is None else started + float(max_seconds)
            _drive(pool, db, jobs, report, progress, limit, on_result, deadline)
        except KeyboardInterrupt:
            report.interrupted = True
            logger.warning("sweep interrupted: %d cells stored by this call; run it again to continue", report.n_run)
            raise
        finally:
            report.worker_names = pool.names()
            report.seconds = time.perf_counter() - started
            pool.close()
    return report


def _stats_needs(info: dict[str, Any], spec: SweepSpec, todo: list[Any],
                 n_layers: int) -> dict[tuple[int, str], list[int]]:
    """``{(stats_tokens, source): layers}`` the remaining ROME/MEMIT cells edit."""
    needs: dict[tuple[int, str], set[int]] = {}
    for cell in todo:
        hp = info["resolved"][cell.method]
        if "stats_tokens" not in hp:
            continue
        key = (int(hp["stats_tokens"]), str(hp["stats_source"]))
        needs.setdefault(key, set()).update(edited_layers(cell.method, cell.layer, spec.window, n_layers))
    return {k: sorted(v) for k, v in needs.items()}


def _drive(pool: Any, db: SweepStore, jobs: list[tuple[str, Any]], report: SweepReport, progress: bool,
           max_restarts: int, on_result: Callable[[dict[str, Any], Any], None] | None,
           deadline: float | None = None) -> None:
    queue = deque(jobs)
    bar = progress_bar(total=len(jobs), desc="sweep", unit="job", disable=not progress, smoothing=0.1)
    try:
        for event, job, payload in pool.results(queue):
            if event == "lost":
                report.n_restarts += 1
                logger.warning("worker lost while running %s (%s); retrying it on a new worker", _job_name(job),
                               payload)
                if report.n_restarts > max_restarts:
                    raise RuntimeError(f"{report.n_restarts} workers died (limit {max_restarts}); last: {payload}. "
                                       "The store keeps every finished cell; fix the cause and run again")
                continue
            bar.update(1)
            if event == "error":
                report.n_errors += 1
                db.add_error(_job_name(job), payload, None)
                logger.error("%s failed: %s", _job_name(job), payload.splitlines()[-1] if payload else payload)
                continue
            kind, what = job
            if kind == "trace":
                if db.add_trace(what, payload):
                    report.n_traces_run += 1
            elif db.add_cell(payload):
                report.n_run += 1
            else:
                logger.warning("cell %s was already stored; the second result is dropped", what.id)
            bar.set_postfix(cells=report.n_run, errors=report.n_errors, refresh=False)
            if on_result is not None:
                on_result(payload, pool)
            if deadline is not None and queue and time.perf_counter() > deadline:
                logger.warning("sweep: time is up with %d jobs left; run again to continue", len(queue))
                report.out_of_time = True
                queue.clear()  # the pool submits nothing more; the jobs in flight finish
    finally:
        bar.close()


def _job_name(job: tuple[str, Any]) -> str:
    kind, what = job
    return f"trace/f{what}" if kind == "trace" else what.id


# ------------------------------------------------------------------------------------------------
# pools: where the jobs run


class _LocalPool:
    """One :class:`CellRunner` in this process."""

    def __init__(self, spec: SweepSpec, model: Model | None, progress: bool = False) -> None:
        self.progress = progress  # a bar while the key statistics are computed (a first run: minutes)
        self.runner = CellRunner(model if model is not None else spec.model, spec.facts, spec.hparams, spec.window,
                                 spec.trace, spec.fluency, spec.device, name="local")
        self._info: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self.runner.describe()
        return self._info

    def share_stats(self, needs: dict[tuple[int, str], list[int]]) -> None:
        for (n_tokens, source), layers in needs.items():
            self.runner.prepare_stats(layers, n_tokens, source, progress=self.progress)

    def results(self, queue: deque) -> Any:
        import traceback

        while queue:
            job = queue.popleft()
            try:
                row = self.runner.run(job)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception:  # one bad cell is recorded, the sweep goes on
                self.runner.session.rollback()
                yield "error", job, traceback.format_exc()
                continue
            yield "done", job, row

    def names(self) -> list[str]:
        return [self.runner.name]

    def close(self) -> None:
        if self.runner.session.history:
            self.runner.session.rollback()


class _RayPool:
    """``workers`` Ray actors, each a :class:`CellRunner`; a dead one is replaced."""

    def __init__(self, ray: Any, spec: SweepSpec, workers: int, address: str | None) -> None:
        self.ray, self.spec, self.n = ray, spec, workers
        self.started_ray = False
        if not ray.is_initialized():
            env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                      "runtime_env": {"env_vars": env}}
            if address is None:
                ray.init(num_cpus=workers, **kwargs)
            else:
                ray.init(address=address, **kwargs)
            self.started_ray = True
        elif address is not None:
            logger.info("Ray is already initialised in this process; address %r ignored", address)
        cpus = os.cpu_count() or 1
        self.threads = max(1, cpus // workers) if address is None else None
        self._remote = ray.remote(num_cpus=1, max_restarts=0)(CellRunner)
        self.actors: list[Any] = []
        self._names: list[str] = []
        self._stats_refs: list[Any] = []
        self._spawned = 0
        try:
            for _ in range(workers):
                self.actors.append(self._spawn())
            infos = ray.get([a.describe.remote() for a in self.actors])
        except ray.exceptions.RayError as exc:
            self.close()
            cause = getattr(exc, "cause", None) or exc
            raise RuntimeError(f"a sweep worker could not start ({type(cause).__name__}: "
                               f"{str(cause).strip().splitlines()[-1] if str(cause).strip() else ''})") from None
        self._info = infos[0]
        fps = {i["fingerprint"] for i in infos}
        if fps != {self._info["fingerprint"]}:
            self.close()
            raise RuntimeError(f"the workers loaded different models (fingerprints {sorted(fps)})")

    def _spawn(self) -> Any:
        name = f"ray-{self._spawned}"
        self._spawned += 1
        self._names.append(name)
        s = self.spec
        actor = self._remote.remote(s.model, s.facts, s.hparams, s.window, s.trace, s.fluency, s.device,
                                    self.threads, name)
        for ref in self._stats_refs:
            actor.set_stats.remote(ref)
        return actor

    def describe(self) -> dict[str, Any]:
        return self._info

    def share_stats(self, needs: dict[tuple[int, str], list[int]]) -> None:
        """The first worker computes (or reads from its cache) the statistics; the others get them via the store."""
        for (n_tokens, source), layers in needs.items():
            ref = self.actors[0].prepare_stats.remote(layers, n_tokens, source)
            self._stats_refs.append(ref)
            self.ray.get([a.set_stats.remote(ref) for a in self.actors])  # never copied to the driver

    def results(self, queue: deque) -> Any:
        ray = self.ray
        lost = (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.ObjectLostError)
        inflight: dict[Any, tuple[int, tuple[str, Any]]] = {}

        def submit(i: int) -> None:
            job = queue.popleft()
            inflight[self.actors[i].run.remote(job)] = (i, job)

        for i in range(len(self.actors)):
            if queue:
                submit(i)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            ref = ready[0]
            i, job = inflight.pop(ref)
            try:
                row = ray.get(ref)
            except lost as exc:
                queue.appendleft(job)
                self.actors[i] = self._spawn()
                yield "lost", job, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            except ray.exceptions.RayTaskError as exc:
                yield "error", job, str(exc)
            else:
                yield "done", job, row
            if queue:
                submit(i)

    def names(self) -> list[str]:
        return list(self._names)

    def close(self) -> None:
        for a in self.actors:
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self.started_ray:
            self.ray.shutdown()

