"""Ray Train: RefDSR's reference branch trained data-parallel (flows/train.py's engine="ray").

TorchTrainer runs `workers` copies (one per GPU with use_gpu); each worker draws its own samples
(rank-seeded) and the gradients of the trainable parameters are averaged across workers after each
backward pass (one all-reduce, see worker_loop for why not DistributedDataParallel); rank 0 writes the
checkpoints, which resume from <out>/checkpoints/latest.json.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from rasr import storage
from rasr.research.train import TrainConfig, Trainer, latest_checkpoint
from tasks.cluster import TrainScaling
from tasks.runtime import init_ray


def worker_loop(config: dict) -> None:
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


def fit(cfg: TrainConfig, where: TrainScaling, before: dict | None) -> tuple[int, list[dict], dict | None]:
    """Train to cfg.steps on Ray Train from the checkpoint `before` (None: from the start); returns (the step it
    resumed from, the history of the steps it ran, the losses' config)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    init_ray(where.ray_address)
    resources = {"CPU": where.cpus_per_worker, **({"GPU": 1} if where.use_gpu else {})}
    trainer = TorchTrainer(worker_loop, train_loop_config=asdict(cfg),
                           scaling_config=ScalingConfig(num_workers=where.workers, use_gpu=where.use_gpu,
                                                        resources_per_worker=resources),
                           run_config=RunConfig(name=f"rasr-train-{os.getpid()}", storage_path=ray_train_dir(cfg.out)))
    trainer.fit()
    start = before["step"] if before else 0
    state = storage.read_json(storage.join(latest_checkpoint(cfg.out)["dir"], "state.json"))
    return start, state["history"][start:], state["losses"]
