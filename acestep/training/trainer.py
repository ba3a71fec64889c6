"""``Trainer``: one run from a dataset to an adapter in the LoRA folder.

The run's steps: check the dataset, preprocess (``cache.py``, one component on the GPU at a time),
attach the adapter (``adapter.py``), then updates until the epochs or ``max_steps`` are done,
with a checkpoint every N steps or epochs (``checkpoint.py``) and at the end. A stop request is
honoured after the update in progress: a checkpoint is written and the adapter exported from it.

Determinism: every draw of an update (crops, noise, timesteps, condition dropout, and the adapter
dropout through the global RNG) is seeded from (seed, step, micro-batch), and the epoch order from
(seed, epoch); the optimizer and schedule states are saved whole. On the CPU two runs with one
seed give the same adapter bit for bit, and a resumed run the one an uninterrupted run gives.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from acestep.checkpoints import CheckpointPaths, Components, load_components
from acestep.memory.precision import PrecisionPlan
from acestep.training import checkpoint
from acestep.training.adapter import TrainableAdapter, TrainingError
from acestep.training.batches import TrainingData, derived_seed, generator
from acestep.training.cache import Preprocessor, Stopped, cache_root
from acestep.training.dataset import Dataset, require_usable
from acestep.training.objective import Objective, flow_loss, noisy_input
from acestep.training.optimizers import build_optimizer, build_schedule
from acestep.training.places import adapter_name, run_dir, stop_file
from acestep.training.progress import MAX_LOSS_POINTS, TrainingProgress
from acestep.training.request import TrainingRequest

Report = Callable[[TrainingProgress], None]


@dataclass
class Outcome:
    progress: TrainingProgress
    adapter_paths: dict[str, Path]
    run: Path


class Trainer:
    def __init__(
        self,
        request: TrainingRequest,
        dataset: Dataset,
        paths: CheckpointPaths,
        device: torch.device,
        precision: PrecisionPlan,
        training_dir: Path,
        lora_dir: Path,
        on_progress: Report | None = None,
        should_stop: Callable[[], bool] | None = None,
        components: Components | None = None,
    ):
        require_usable(dataset)
        self.request, self.dataset, self.paths = request, dataset, paths
        self.device, self.precision = device, precision
        self.training_dir, self.lora_dir = training_dir, lora_dir
        self.name = adapter_name(request, dataset.name)
        self.run_folder = run_dir(training_dir, self.name)
        self.on_progress = on_progress or (lambda progress: None)
        asked = should_stop or (lambda: False)
        stop = stop_file(self.run_folder)  # how a stop reaches a trainer in a worker process
        self.should_stop = lambda: asked() or stop.exists()
        self.components = components
        self.progress = TrainingProgress(samples=len(dataset.samples))
        self._started = time.monotonic()

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> Outcome:
        resume_from = None if self.request.preprocess_only else self._resume_point()  # before any weight
        comps = self.components or load_components(self.paths, torch.device("cpu"), self.precision)
        preprocessor = Preprocessor(
            comps,
            self.paths,
            cache_root(self.training_dir, self.paths),
            self.device,
            self.precision.torch_dtype,
            on_progress=self._stage,
            should_stop=self.should_stop,
        )
        try:
            prepared = preprocessor.run(self.dataset)
        except Stopped:
            stop_file(self.run_folder).unlink(missing_ok=True)  # honoured: what was cached stays
            raise
        self.progress.preprocess = {"computed": prepared.computed, "reused": prepared.reused}
        if self.request.preprocess_only:
            self.progress.stage, self.progress.fraction = "done", 1.0
            self.on_progress(self.progress)
            return Outcome(self.progress, {}, self.run_folder)
        data = TrainingData(prepared, self.request.train_batch_size, self.request.crop_seconds)
        transformer = comps.transformer.to(self.device)
        transformer.train()
        if self.request.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        adapter = TrainableAdapter(transformer, self.request, self.request.training_seed)
        total = self._total_steps(data)
        optimizer = build_optimizer(self.request, adapter.parameters())
        scheduler = build_schedule(optimizer, self.request, total)
        state = checkpoint.RunState(
            step=0, epoch=0, identity=self.request.run_identity(), dataset=self.dataset.fingerprint()
        )
        if resume_from is not None:
            adapter.load_state_dict(checkpoint.restore(resume_from, optimizer, scheduler))
            state = checkpoint.load_state(resume_from)
            logger.info(f"training {self.name}: resumed at step {state.step} from {resume_from}")
        self.progress.losses = [list(pair) for pair in state.losses]
        self.progress.checkpoints = checkpoint.steps(self.run_folder)
        self.progress.total_steps, self.progress.epochs = total, self.request.epochs
        objective = Objective.for_variant(
            self.paths.variant.is_turbo,
            self.request.training_shift,
            self.request.timestep_mu,
            self.request.timestep_sigma,
            self.request.cfg_ratio,
        )
        stopped = self._train(adapter, data, objective, optimizer, scheduler, state, total)
        last = self._save(adapter, optimizer, scheduler, state)
        stop_file(self.run_folder).unlink(missing_ok=True)  # the stop was honoured
        written = self._export(adapter)
        self.progress.stage, self.progress.fraction, self.progress.stopped = "done", 1.0, stopped
        self.progress.adapter = self.name
        self.on_progress(self.progress)
        logger.info(f"training {self.name}: {state.step} steps, checkpoint {last}, adapter {written}")
        return Outcome(self.progress, written, self.run_folder)

    def _resume_point(self) -> Path | None:
        found = checkpoint.latest(self.run_folder)
        if not self.request.resume:
            if found is not None:
                raise TrainingError(
                    f"a run named {self.name!r} already has checkpoints ({self.run_folder}); "
                    "resume it (resume=true) or choose another output_name"
                )
            return None
        if found is None:
            raise TrainingError(f"nothing to resume: {self.run_folder} has no checkpoint")
        saved = checkpoint.load_state(found)
        differs = checkpoint.identity_differences(saved.identity, self.request.run_identity())
        if differs:
            raise TrainingError(f"resume: the run was made with other settings ({', '.join(differs)} differ)")
        if saved.dataset != self.dataset.fingerprint():
            raise TrainingError("resume: the dataset changed since the run started")
        return found

    def _total_steps(self, data: TrainingData) -> int:
        per_epoch = -(-data.batches_per_epoch() // self.request.gradient_accumulation)
        total = per_epoch * self.request.epochs
        return min(total, self.request.max_steps) if self.request.max_steps else total

    def _train(self, adapter, data, objective, optimizer, scheduler, state, total) -> bool:
        request = self.request
        accumulation = request.gradient_accumulation
        per_epoch = -(-data.batches_per_epoch() // accumulation)
        autocast = self._autocast()
        scaler = torch.amp.GradScaler("cuda") if self.precision.torch_dtype == torch.float16 else None
        params = adapter.parameters()
        first_step, started = state.step, time.monotonic()
        while state.step < total:
            if self.should_stop():
                return True
            epoch, index = divmod(state.step, per_epoch)
            order = data.order(request.training_seed, epoch)
            groups = [
                order[i : i + request.train_batch_size]
                for i in range(0, len(order), request.train_batch_size)
            ]
            micro = groups[index * accumulation : (index + 1) * accumulation]
            optimizer.zero_grad(set_to_none=True)
            loss_sum = 0.0
            for m, indices in enumerate(micro):
                rng = generator(request.training_seed, state.step, m)
                torch.manual_seed(derived_seed(request.training_seed, state.step, m, 0xD0))
                with autocast:
                    loss = self._loss(adapter, data, objective, data.batch(indices, rng), rng) / len(micro)
                (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += float(loss.detach())
            if scaler:
                scaler.unscale_(optimizer)
            if request.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, request.max_grad_norm)
            (scaler.step(optimizer), scaler.update()) if scaler else optimizer.step()
            scheduler.step()
            state.step += 1
            state.epoch = state.step // per_epoch
            state.losses.append((state.step, loss_sum))
            del state.losses[:-MAX_LOSS_POINTS]
            self._report_step(state, epoch, loss_sum, optimizer, first_step, started, total)
            if self._checkpoint_due(state.step, per_epoch, total):
                self._save(adapter, optimizer, scheduler, state)
        return False

    def _loss(self, adapter, data, objective, batch, rng) -> torch.Tensor:
        device, dtype = self.device, next(adapter.transformer.parameters()).dtype
        noise = torch.randn(batch.x0.shape, generator=rng)
        t = objective.timesteps(batch.x0.shape[0], rng)
        states = objective.drop_conditions(batch.states, data.null_embedding, rng)
        x0, noise_d = batch.x0.to(device), noise.to(device)
        predicted = adapter.transformer(
            hidden_states=noisy_input(x0, noise_d, t.to(device)).to(dtype),
            timestep=t.to(device, dtype),
            timestep_r=t.to(device, dtype),
            encoder_hidden_states=states.to(device, dtype),
            context_latents=batch.context.to(device, dtype),
            return_dict=False,
        )[0]
        return flow_loss(predicted, x0, noise_d, batch.valid.to(device))

    def _autocast(self):
        dtype = self.precision.torch_dtype
        if self.device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
            return torch.autocast("cuda", dtype=dtype)
        return nullcontext()

    def _checkpoint_due(self, step: int, per_epoch: int, total: int) -> bool:
        request = self.request
        if step >= total:
            return False  # the end writes its own
        if request.save_every_n_steps and step % request.save_every_n_steps == 0:
            return True
        every = request.save_every_n_epochs
        return bool(every) and step % per_epoch == 0 and (step // per_epoch) % every == 0

    def _save(self, adapter, optimizer, scheduler, state) -> Path:
        folder = checkpoint.save(self.run_folder, state, adapter.state_dict(), optimizer, scheduler)
        if state.step not in self.progress.checkpoints:
            self.progress.checkpoints.append(state.step)
        return folder

    def _export(self, adapter: TrainableAdapter) -> dict[str, Path]:
        self._stage("saving", 0.0)
        return adapter.export(self.lora_dir / self.name, self.paths.variant.tag)

    # -- progress --------------------------------------------------------------------------------

    def _stage(self, stage: str, fraction: float) -> None:
        self.progress.stage, self.progress.fraction = stage, float(fraction)
        self.progress.elapsed_s = round(time.monotonic() - self._started, 3)
        self.on_progress(self.progress)

    def _report_step(self, state, epoch, loss, optimizer, first_step, started, total) -> None:
        p = self.progress
        done = state.step - first_step
        seconds = time.monotonic() - started
        rate = done / seconds if seconds > 0 else None
        p.step, p.epoch, p.loss = state.step, epoch + 1, loss
        p.learning_rate = float(optimizer.param_groups[0]["lr"])
        p.steps_per_second = round(rate, 4) if rate else None
        p.eta_s = round((total - state.step) / rate, 1) if rate else None
        if math.isfinite(loss):
            p.add_loss(state.step, loss)
        self._stage("train", state.step / total if total else 1.0)


__all__ = ["Outcome", "Trainer"]
