"""DINO's multi-crop self-distillation cross-entropy (Caron et al. 2021, arXiv:2104.14294).

Official code: facebookresearch/dino · main_dino.py · DINOLoss.forward::

    student_out = (student_output / student_temp).chunk(ncrops)          # (2+V) x (N, K)
    temp = teacher_temp_schedule[epoch]
    teacher_out = softmax((teacher_output - center) / temp).detach().chunk(2)
    for iq, q in enumerate(teacher_out):
        for v in range(ncrops):
            if v == iq: continue                                          # same view for teacher and student
            total += sum(-q * log_softmax(student_out[v]), dim=-1).mean(); n_terms += 1
    total /= n_terms                                                      # 2(V+1) pairs
    self.update_center(teacher_output)

The centre update is not part of this block: ``memory.center`` owns it and passes its pre-update value in, as
the official code uses the centre before updating it. The teacher temperature is a per-epoch table
(``np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs)`` then constant); here it is a
``Schedule`` whose current value sits in a buffer that ``update`` advances, so ``forward`` reads no Python value
that changes during the run (that would recompile under ``torch.compile``) and writes no state.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from composer.blocks.registry import block
from composer.runtime.precision import float32_region
from composer.runtime.schedules import Schedule


@block("loss.dino")
class DINOLoss(nn.Module):
    """DINO: cross-entropy between the centred, sharpened teacher on each global crop and the student on every
    other crop.

    For teacher crop ``i`` in {0, 1} and student crop ``v`` in the 2+V crops (globals first), ``v != i``:
    ``mean_n sum_k -softmax((t_i - C)/tau_t) * log_softmax(s_v/tau_s)``, averaged over the 2(V+1) pairs.
    The teacher term is detached as in the official code. Computed in float32 even under autocast (the
    official run uses fp16 autocast; its teacher softmax at tau_t = 0.04 is the numerically delicate part).

    Args:
        student_temp: tau_s, fixed. 0.1 (facebookresearch/dino · main_dino.py · DINOLoss ``student_temp=0.1``).
        teacher_temp: tau_t, a schedule indexed per epoch. Default constant 0.04 (main_dino.py defaults
            ``--warmup_teacher_temp 0.04 --teacher_temp 0.04 --warmup_teacher_temp_epochs 0``); README's best
            ViT-S/16 run: ``{linear: [0.04, 0.07], until: 30ep}`` (``--teacher_temp 0.07
            --warmup_teacher_temp_epochs 30``). Values above 0.07 are reported unstable (main_dino.py help).

    Inputs:
        student_global: (2, N, K) student head outputs (logits) on the two global crops.
        student_local: (V, N, K) student head outputs on the V local crops; V may be 0.
        teacher: (2, N, K) teacher head outputs on the two global crops (through ``!sg``).
        center: (1, K) the centre C from ``memory.center`` (its value before this step's update).
    """

    def __init__(self, *, student_temp: float = 0.1, teacher_temp: Schedule = 0.04):
        super().__init__()
        if not student_temp > 0:
            raise ValueError(f"loss.dino: student_temp must be > 0, got {student_temp}")
        try:
            schedule = Schedule.parse(teacher_temp)
        except ValueError as e:
            raise ValueError(f"loss.dino: teacher_temp: {e}") from None
        ends = [schedule.start, schedule.end] + ([schedule.warmup_from] if schedule.warmup else [])
        if schedule.curve == "steps" or not all(v > 0 for v in ends):
            raise ValueError(f"loss.dino: teacher_temp must stay > 0 (a constant, linear or cosine schedule), "
                             f"got {teacher_temp!r}")
        self.student_temp = float(student_temp)
        self.teacher_temp = schedule
        # The value the next forward uses; advanced by update() after each optimizer step.
        self.register_buffer("teacher_temp_now", torch.tensor(_value_at_start(schedule), dtype=torch.float32))

    def bind(self, total_steps: int, steps_per_epoch: int = 1) -> "DINOLoss":
        """Tell the teacher-temperature schedule the run's length (its ``until: 30ep`` is counted in epochs)."""
        self.teacher_temp.bind(total_steps, steps_per_epoch)
        return self

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After optimizer step ``step`` (0-based): hold the temperature of step ``step + 1``, the next forward."""
        if not self.teacher_temp.is_constant and self.teacher_temp.total_steps is None:
            raise RuntimeError("loss.dino: the teacher_temp schedule is not bound to the run; call "
                               "bind(total_steps, steps_per_epoch) before training")
        self.teacher_temp_now.fill_(self.teacher_temp.at(step + 1))

    def forward(self, student_global: Tensor, student_local: Tensor, teacher: Tensor, center: Tensor) -> Tensor:
        if student_global.ndim != 3 or student_global.shape[0] != 2 or teacher.shape != student_global.shape \
                or student_local.ndim != 3 or student_local.shape[1:] != student_global.shape[1:]:
            raise ValueError(f"loss.dino: expected student_global (2, N, K), student_local (V, N, K), teacher "
                             f"(2, N, K); got {tuple(student_global.shape)}, {tuple(student_local.shape)}, "
                             f"{tuple(teacher.shape)}")
        with float32_region(teacher.device):
            student = torch.cat([student_global, student_local], dim=0).float()  # (2+V, N, K), globals first
            log_p_s = F.log_softmax(student / self.student_temp, dim=-1)
            p_t = F.softmax((teacher.float() - center.float()) / self.teacher_temp_now, dim=-1).detach()  # (2,N,K)
            n_crops = student.shape[0]
            # As DINOLoss.forward: per pair, sum over the K prototypes of each row first, then mean over rows.
            # One contraction over N·K at once loses float32 precision near uniform outputs (1.7 % at N = 32).
            total = student.new_zeros(())
            for i in range(2):
                for v in range(n_crops):
                    if v != i:  # the teacher's own view is skipped
                        total = total + torch.sum(-p_t[i] * log_p_s[v], dim=-1).mean()
            return total / (2 * (n_crops - 1))


def _value_at_start(schedule: Schedule) -> float:
    """The schedule's value at step 0, which needs no run length; an unbound copy is bound to one step."""
    if schedule.is_constant or schedule.total_steps is not None:
        return schedule.at(0)
    return dataclasses.replace(schedule).bind(1, 1).at(0)
