"""Ray actors that hold a loaded model, and a small pool that spreads batches over them.

An actor loads its encoder/generator once and then serves many batches; the Prefect task of a
shard sends it lists of input URIs and gets manifest rows back (images never cross processes).
GPU needs are plain Ray resources (`num_gpus`, custom resources), so the same code schedules on a
laptop (0 GPUs) and on a cluster's GPU worker group.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import socket
from collections import Counter
from dataclasses import dataclass, field

from tasks.cluster import Cluster
from tasks.runtime import init_ray, ray


@dataclass
class PoolSpec:
    """How many actors and what each one asks of the cluster."""

    workers: int | None = None         # default: one per GPU in the cluster, else 1
    gpus_per_worker: float | None = None  # default: 1 when the cluster has GPUs, else 0
    cpus_per_worker: float | None = None  # default: the CPUs divided among workers (at most 4)
    resources: dict = field(default_factory=dict)  # custom resources, e.g. {"gpu_worker": 1}
    spread: bool = True                # place actors on different nodes when possible

    def resolve(self, cluster: dict, node_cpus: list[float] | None = None) -> "PoolSpec":
        """Fill in the defaults: RASR_WORKERS / RASR_GPUS_PER_WORKER / RASR_CPUS_PER_WORKER from the
        environment (set them on autoscaling clusters that start with no GPU node), else from the
        cluster's GPUs and its nodes' CPU counts."""
        env = os.environ
        gpus = float(cluster.get("GPU", 0))
        gpw = self.gpus_per_worker
        if gpw is None:
            gpw = float(env["RASR_GPUS_PER_WORKER"]) if env.get("RASR_GPUS_PER_WORKER") else (1.0 if gpus >= 1 else 0.0)
        workers = self.workers or (int(env["RASR_WORKERS"]) if env.get("RASR_WORKERS") else 0)
        workers = workers or (int(gpus // gpw) if gpw else 1) or 1
        cpw = self.cpus_per_worker
        if cpw is None and env.get("RASR_CPUS_PER_WORKER"):
            cpw = float(env["RASR_CPUS_PER_WORKER"])
        if cpw is None:  # an actor must fit on one node: share the smallest node among its actors
            nodes = [c for c in (node_cpus or [float(cluster.get("CPU", 1))]) if c > 0] or [1.0]
            per_node = -(-workers // len(nodes))
            # leave half a CPU per node for the shard tasks' reads/writes and Ray's own processes
            cpw = max(0.5, min(4.0, (min(nodes) - 0.5) / per_node))
        return PoolSpec(workers, gpw, cpw, dict(self.resources), self.spread)


def node_cpus() -> list[float]:
    """CPU count of every alive node of the connected cluster."""
    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def check_resources(spec: PoolSpec, cluster: dict, address: str | None) -> None:
    """On a fixed local Ray, asking for what no node has would wait forever: fail now instead."""
    if address or os.environ.get("RAY_ADDRESS"):
        return  # an autoscaling cluster may still add the nodes (ready() times out with the details)
    if spec.gpus_per_worker and spec.gpus_per_worker * spec.workers > cluster.get("GPU", 0):
        raise ValueError(f"{spec.workers} workers x {spec.gpus_per_worker} GPUs asked, but this machine has "
                         f"{cluster.get('GPU', 0):.0f} GPUs: pass --gpus-per-worker 0 or fewer --workers")
    for name, amount in spec.resources.items():
        if amount * spec.workers > cluster.get(name, 0):
            raise ValueError(f"{spec.workers} workers x {amount} {name!r} asked, but this Ray has "
                             f"{cluster.get(name, 0):g}: start Ray with that resource or drop --worker-resources")


def _threads(cpus: float) -> None:
    import torch

    torch.set_num_threads(max(1, int(round(cpus))))


class _Located:
    """What every model actor answers: where it runs (also proves its constructor finished)."""

    def where(self) -> dict:
        return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(), "pid": os.getpid()}


# Two calls at once: while one call's last outputs are encoded and written, the next call's first
# inputs are already being read, so the model does not idle between calls (the worker's locks keep
# one batch at a time on the encoder and on the generator).
# A call whose actor dies is not retried by Ray on the same actor: run_shard sends it to the next
# actor and records the retry (max_task_retries=0); a dead actor is restarted for later calls.
@ray.remote(max_restarts=3, max_task_retries=0, max_concurrency=2)
class EnhanceActor(_Located):
    """Holds an EnhanceWorker (encoder + gallery + generator) and its reader/writer threads."""

    def __init__(self, cfg: dict, cpus: float):
        _threads(cpus)
        from rasr.restoration.worker import EnhanceWorker
        from rasr.restoration.enhance_run import EnhanceConfig

        self.worker = EnhanceWorker(EnhanceConfig(**cfg), io_threads=max(2, min(16, int(round(2 * cpus)))))

    def process(self, items: list[dict], out: str, shard_id: str, run_id: str) -> dict[str, list[dict]]:
        from rasr.catalog import Item

        return {"manifest": self.worker.process([Item(**i) for i in items], out, shard_id, run_id)}


@ray.remote(max_restarts=3, max_task_retries=0)
class EvalActor(_Located):
    """Holds an EvalWorker (every method's generator, encoders, gallery, metrics)."""

    def __init__(self, cfg: dict, cpus: float):
        _threads(cpus)
        from rasr.research.evaluation import EvalConfig, EvalWorker

        self.worker = EvalWorker(EvalConfig(**cfg))

    def process(self, items: list[dict], out: str, shard_id: str, run_id: str) -> dict[str, list[dict]]:
        from rasr.catalog import Item

        return self.worker.process([Item(**i) for i in items], out, shard_id, run_id)


@ray.remote(max_restarts=1, max_task_retries=1)
class EmbedActor(_Located):
    """Holds an encoder for gallery indexing."""

    def __init__(self, encoder: str, weights: str | None, max_pixels: int, cpus: float, batch_size: int = 32,
                 preprocessing: str = "crop", views: str = "clean", min_side: int = 0):
        _threads(cpus)
        from rasr.retrieval.encoders import load_encoder
        from rasr.retrieval.embedding import Embedder

        self.embedder = Embedder(load_encoder(encoder, weights=weights, batch_size=batch_size), max_pixels,
                                 preprocessing, views, min_side)

    def info(self) -> dict:
        enc = self.embedder.encoder
        return {"id": enc.id, "dim": enc.dim, "weights_id": enc.weights_id}

    def embed(self, items: list[dict]) -> tuple[list[dict], list[dict]]:
        from rasr.catalog import Item

        rows, errors = self.embedder.embed([Item(**i) for i in items])
        for r in rows:
            r["vector"] = r["vector"].tolist()
        return rows, errors


@ray.remote(max_restarts=3, max_task_retries=1)
class SearchActor(_Located):
    """Holds a Searcher (encoder + gallery) for batch retrieval."""

    def __init__(self, db: str, table: str | None, encoder_weights: str | None, cpus: float):
        _threads(cpus)
        from rasr.retrieval.search import Searcher

        self.searcher = Searcher(db, table, encoder_weights)

    def search(self, items: list[dict], k: int, category: str | None) -> list[dict]:
        from rasr.catalog import Item

        return self.searcher.search([Item(**i) for i in items], k, category)


@ray.remote(max_restarts=3, max_task_retries=1)
class DatasetActor(_Located):
    """Holds the reference DB's encoder and gallery; makes the samples of one category at a time."""

    def __init__(self, db: str, table: str, cpus: float):
        _threads(cpus)
        from rasr.retrieval.search import Retriever

        self.retriever = Retriever(db, table)

    def samples(self, splits: dict, cfg: dict, out: str) -> tuple[list[dict], list[dict]]:
        from rasr.catalog import Item
        from rasr.research.dataset import DatasetConfig, samples

        splits = {c: {k: [Item(**i) for i in v] for k, v in sp.items()} for c, sp in splits.items()}
        return samples(splits, DatasetConfig(**cfg), out, self.retriever.retrieve)


def root_cause(e: BaseException) -> str:
    """The original exception's last line from a Ray error (whose text holds remote tracebacks)."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and cause is not e and not isinstance(cause, ray.exceptions.RayError):
        return f"{cause.__class__.__name__}: {cause}"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception|NotFound|Timeout)\b", ln):
            return ln
    return lines[-1] if lines else e.__class__.__name__


class WorkerLost(RuntimeError):
    """A call whose actor died on every try (ActorPool.as_completed)."""

    def __init__(self, index: int, attempts: int, cause: BaseException):
        super().__init__(f"call {index} lost its worker {attempts} times: {root_cause(cause)}")
        self.index, self.attempts, self.cause = index, attempts, cause


class ActorPool:
    """A fixed set of actors; `next()` hands them out round-robin (Ray queues calls per actor)."""

    def __init__(self, actor_cls, spec: PoolSpec, *args, **kwargs):
        self.spec = spec
        options = {"num_cpus": spec.cpus_per_worker, "num_gpus": spec.gpus_per_worker,
                   "resources": spec.resources or None}
        if spec.spread:
            options["scheduling_strategy"] = "SPREAD"
        self.actors = [actor_cls.options(**options).remote(*args, cpus=spec.cpus_per_worker, **kwargs)
                       for _ in range(spec.workers)]
        self.placement: list[dict] = []  # filled by actor_pool(): where each actor runs
        self._cycle = itertools.cycle(self.actors)
        self._lost: set[int] = set()  # actors whose calls failed because they died (their node may be gone)

    def next(self):
        """The next actor, skipping those that died (a lost node's actor may never come back)."""
        for _ in range(len(self.actors)):
            actor = next(self._cycle)
            if id(actor) not in self._lost:
                return actor
        return next(self._cycle)  # all lost: let Ray restart one or say why

    def as_completed(self, method: str, calls: list[tuple], retries: int = 0):
        """The one way calls go to the actors: `method` once per argument tuple, round-robin, yielding
        (i, result, times retried) as each call finishes. A call whose actor died is sent to the next actor up
        to `retries` times (the dead one gets no more calls), then raises WorkerLost; a call that raised
        raises its Ray error."""
        actor_of: dict = {}
        pending: dict = {}
        tries: Counter = Counter()

        def submit(i: int) -> None:
            actor = self.next()
            ref = getattr(actor, method).remote(*calls[i])
            actor_of[ref], pending[ref] = actor, i

        for i in range(len(calls)):
            submit(i)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            ref = ready[0]
            i, actor = pending.pop(ref), actor_of.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:  # the worker died mid-call: its outputs are not trusted
                if not retries:
                    raise
                if tries[i] >= retries:
                    raise WorkerLost(i, tries[i] + 1, e) from None
                tries[i] += 1
                self.lost(actor)
                submit(i)
                continue
            yield i, result, tries[i]

    def map_calls(self, method: str, calls: list[tuple], done=None) -> list:
        """Call the actors' `method` once per argument tuple; results in call order. done(i, result) runs as
        each call finishes (progress). A failed call raises its error."""
        results: list = [None] * len(calls)
        for i, result, _ in self.as_completed(method, calls):
            results[i] = result
            if done:
                done(i, result)
        return results

    def lost(self, actor) -> None:
        """Send no more calls to `actor` (it died mid-call)."""
        self._lost.add(id(actor))

    def ready(self, timeout: float | None = None) -> list[dict]:
        """Wait until every actor has loaded its model; returns where each one runs.

        Fails with a clear message when the cluster cannot place them in time (RASR_WORKER_START_TIMEOUT,
        default 600 s: autoscalers need minutes to add GPU nodes)."""
        timeout = timeout or float(os.environ.get("RASR_WORKER_START_TIMEOUT", 600))
        refs = [a.where.remote() for a in self.actors]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            raise RuntimeError(
                f"{len(pending)} of {len(refs)} workers did not start within {timeout:.0f} s: the cluster may lack "
                f"the resources asked per worker (GPUs={self.spec.gpus_per_worker}, CPUs={self.spec.cpus_per_worker}, "
                f"custom={self.spec.resources}); available: {ray.available_resources()}")
        try:
            return ray.get(done)
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"a worker failed to start: {root_cause(e)}") from None

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a)


@contextlib.contextmanager
def actor_pool(actor_cls, *args, cluster: Cluster | None = None, **kwargs):
    """Connect to (or start) Ray, size the pool for the cluster, start the actors and wait until their
    models are loaded (`pool.placement` says where each runs); the actors are stopped on exit."""
    where = cluster or Cluster()
    found = init_ray(where.ray_address)
    spec = PoolSpec(where.workers, where.gpus_per_worker, None, dict(where.worker_resources or {})).resolve(
        found, node_cpus())
    check_resources(spec, found, where.ray_address)
    pool = ActorPool(actor_cls, spec, *args, **kwargs)
    try:
        pool.placement = pool.ready()
        yield pool
    finally:
        pool.shutdown()
