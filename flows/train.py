"""Flow `train_refdsr`: train the reference branch, locally or data-parallel on Ray Train.

engine="local": one process (CPU or one GPU). engine="ray": Ray Train's TorchTrainer runs `workers`
copies (one per GPU with use_gpu); each worker draws its own samples (rank-seeded) and the gradients
of the trainable parameters are averaged across workers after each backward pass (one all-reduce, see
_ray_worker_loop for why not DistributedDataParallel); rank 0 writes the checkpoints. Both resume from
<out>/checkpoints/latest.json.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict

from prefect import get_run_logger

from flows._setup import flow, flow_setup
from flows._summary import publish_summary
from rasr import storage
from rasr.research.train import TrainConfig, Trainer, latest_checkpoint
from tasks.cluster import TrainScaling
from tasks.runtime import init_ray


def _ray_worker_loop(config: dict) -> None:
    """Runs in each Ray Train worker: rank-sharded batches, gradients averaged across workers.

    Only the branch (~11M parameters) and the discriminator heads train, so one coalesced all-reduce
    per step after backward costs little; the model is not wrapped in DDP, which keeps checkpoints
    and the frozen parts free of wrapper names and avoids rank-0-only collectives around saving."""
    import ray.train
    import torch
    import torch.distributed as dist

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    t = Trainer(TrainConfig(**config), device=str(ray.train.torch.get_device()), rank=rank, world=world)
    t.resume()
    with torch.no_grad():  # same starting weights everywhere (seeded init or checkpoint; make sure)
        for p in t.params + t.loss.discriminator_parameters():
            dist.broadcast(p.data, src=0)

    def average(params):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for all of them
            dist.all_reduce(flat)
            flat /= world
            for g, synced in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(synced.view_as(g))

    t.sync_grads = average
    t.run(on_step=lambda step, parts: ray.train.report({"step": step, **parts}))


def ray_train_dir(out: str) -> str | None:
    """Where Ray Train keeps its run state: RASR_RAY_TRAIN_DIR, else beside a local OUT's checkpoints
    (never the working directory), else Ray's default (~/ray_results) for an s3:// OUT."""
    if os.environ.get("RASR_RAY_TRAIN_DIR"):
        return os.environ["RASR_RAY_TRAIN_DIR"]
    return None if storage.is_remote(out) else os.path.join(os.path.abspath(out), ".ray-train")


@flow(name="train-refdsr")
def train_refdsr(config: TrainConfig, scaling: TrainScaling | None = None) -> dict:
    """Train RefDSR's reference branch on config.dataset; checkpoints (resumable) under config.out."""
    cfg, where = config, scaling or TrainScaling()
    flow_setup(cfg, where)
    log = get_run_logger()
    t0 = time.perf_counter()
    if not cfg.dataset or not cfg.out:
        raise ValueError("the training config needs `dataset` (made by `rasr dataset build`) and `out`")
    out, steps, engine = cfg.out, cfg.steps, where.engine
    before = latest_checkpoint(out)
    if before and before["step"] >= steps:
        log.info(f"already trained to step {before['step']}: nothing to do")
        return {"out": storage.redact(out), "step": before["step"], "branch": before["branch"], "resumed_from": before["step"],
                "history": [], "losses": None}
    if engine == "local":
        t = Trainer(cfg, device=where.device)
        t.resume()
        start = t.step
        history = t.run()
        losses = t.loss.config()
    elif engine == "ray":
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        init_ray(where.ray_address)
        resources = {"CPU": where.cpus_per_worker, **({"GPU": 1} if where.use_gpu else {})}
        trainer = TorchTrainer(_ray_worker_loop, train_loop_config=asdict(cfg),
                               scaling_config=ScalingConfig(num_workers=where.workers, use_gpu=where.use_gpu,
                                                            resources_per_worker=resources),
                               run_config=RunConfig(name=f"rasr-train-{os.getpid()}", storage_path=ray_train_dir(out)))
        trainer.fit()
        start = before["step"] if before else 0
        state = storage.read_json(storage.join(latest_checkpoint(out)["dir"], "state.json"))
        history, losses = state["history"][start:], state["losses"]
    else:
        raise ValueError(f"unknown engine {engine!r}: choose local or ray")
    rec = latest_checkpoint(out)
    summary = {"out": storage.redact(out), "engine": engine, "workers": where.workers, "resumed_from": start,
               "step": rec["step"], "branch": storage.redact(rec["branch"]),
               "final_loss": history[-1]["total"] if history else None,
               "seconds": round(time.perf_counter() - t0, 2)}
    publish_summary("train-summary", {**summary, **{f"loss_{k}": v for k, v in (losses or {}).get("status", {}).items()}},
                    title=f"Training to step {rec['step']}")
    return {**summary, "branch": rec["branch"], "history": history, "losses": losses}
