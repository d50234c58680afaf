"""``ComposedModel``: the compiled graph as an ``nn.Module`` with a data stage, a model stage and state updates.

Blocks are registered on the model under their graph names, so ``state_dict`` keys read
``encoder.layer1.0.conv1.weight``, ``queue.queue``; an EMA teacher's weights live under its own name and never
require grad (DDP leaves them out of its buckets). The generated fx code is kept as a plain attribute so the
blocks are not registered twice.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import fx, nn

from composer.runtime.schedules import Schedule


@dataclasses.dataclass
class Output:
    """What one forward returns: the objective, every flow value by name, and the inputs of the state updates."""

    loss: torch.Tensor
    values: dict[str, Any]
    updates: dict[str, dict[str, torch.Tensor]]


class DataStage(nn.Module):
    """The data-stage blocks (augment, maskers, text tokenizer) and their fx code; runs in DataLoader workers."""

    def __init__(self, graph_module: fx.GraphModule, inputs: list[str]):
        super().__init__()
        self.graph_module = graph_module
        self.inputs = inputs

    def use_batched(self, on: bool = True) -> dict[str, str | None]:
        """Switch every block that offers it (the augment recipes) to its batched path, or back.

        Returns ``{block name: None if batched, else why it stays per sample}`` for those blocks.
        """
        status = {}
        for name, module in self.graph_module.named_children():
            if hasattr(module, "use_batched"):
                status[name] = None if module.use_batched(on) else (module.batched_reason() if on else "off")
        return status

    def forward(self, batch: dict) -> dict:
        missing = [k for k in self.inputs if k not in batch]
        if missing:
            raise KeyError(f"the batch lacks {missing}; the graph reads inputs {self.inputs}")
        return self.graph_module(batch)


class ComposedModel(nn.Module):
    def __init__(self, spec, blocks: dict[str, nn.Module], data_stage: DataStage, model_stage: fx.GraphModule,
                 model_inputs: list[str]):
        super().__init__()
        self.spec = spec
        for name, module in blocks.items():
            if spec.blocks[name].info.stage == "model":
                self.add_module(name, module)
        object.__setattr__(self, "data_stage", data_stage)  # not part of state_dict / parameters
        object.__setattr__(self, "eager_stage", model_stage)
        object.__setattr__(self, "model_stage", model_stage)
        self.model_inputs = list(model_inputs)

    # -- running ---------------------------------------------------------------------------------------------
    def forward(self, batch: dict) -> Output:
        """``batch``: the data stage's output (tensors on this model's device). Returns an ``Output``."""
        out = self.model_stage(batch)
        return Output(out["loss"], out["values"], out["updates"])

    def compile(self, **kwargs) -> "ComposedModel":
        """``torch.compile`` the model stage (the blocks stay shared with the eager version)."""
        object.__setattr__(self, "model_stage", torch.compile(self.eager_stage, **kwargs))
        return self

    @torch.no_grad()
    def update(self, output: Output, step: int) -> None:
        """Apply every block's state update after the optimizer step ``step`` (0-based), in graph order.

        EMA teachers, queues, centres, clamps: ``block.update(step, **inputs)`` with the inputs named under
        ``updates:`` in the graph (taken from ``output.updates``).
        """
        for name in self.spec.blocks:
            module = getattr(self, name, None)
            if module is None or not hasattr(module, "update"):
                continue
            module.update(step, **output.updates.get(name, {}))

    def bind_schedules(self, total_steps: int, steps_per_epoch: int) -> None:
        """Give every ``Schedule`` held by a block the run's length (needed by cosine and linear curves), and
        every block with a ``bind_run(total_steps, steps_per_epoch)`` method (a memory that starts at an epoch)."""
        for module in list(self.modules()) + list(self.data_stage.modules()):
            if hasattr(module, "bind_run"):
                module.bind_run(total_steps, steps_per_epoch)
            for value in vars(module).values():
                if isinstance(value, Schedule):
                    value.bind(total_steps, steps_per_epoch)

    # -- introspection ---------------------------------------------------------------------------------------
    @property
    def code(self) -> str:
        """The generated Python of both stages, as ``ptc explain --code`` prints it."""
        return (f"# data stage (DataLoader workers)\n{self.data_stage.graph_module.code.strip()}\n\n"
                f"# model stage (device)\n{self.eager_stage.code.strip()}\n")

    def embedding_module(self) -> nn.Module:
        """The block named by the graph's ``embedding:`` (the encoder used by probes and export)."""
        name = self.spec.embedding
        if name is None:
            raise ValueError(f"graph {self.spec.name!r} names no 'embedding' block")
        return getattr(self, name)

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
