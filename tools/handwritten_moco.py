"""MoCo v2 written by hand in plain PyTorch: the reference that tools/bench.py races the composed graph against.

Same semantics as graphs/moco_v2.yaml (facebookresearch/moco builder.py): q = norm(mlp(enc(x_q))); under no_grad
k = norm(mlp_k(enc_k(x_k))); logits [q·k | q·queueᵀ]/T, CE with label 0; after the optimizer step the key
network follows by EMA and the keys are enqueued.
"""
from __future__ import annotations

import copy

import timm
import torch
import torch.nn.functional as F
from torch import nn


class HandwrittenMoCo(nn.Module):
    def __init__(self, arch: str = "resnet18", dims=(512, 512, 128), queue_size: int = 4096, m: float = 0.999,
                 t: float = 0.2):
        super().__init__()
        self.encoder = timm.create_model(arch, pretrained=False, num_classes=0)
        self.projector = nn.Sequential(nn.Linear(dims[0], dims[1]), nn.ReLU(inplace=True), nn.Linear(dims[1], dims[2]))
        self.key_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.key_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dims[2]), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.m, self.t = m, t

    def forward(self, x_q, x_k):
        q = F.normalize(self.projector(self.encoder(x_q)), dim=1)
        with torch.no_grad():
            k = F.normalize(self.key_projector(self.key_encoder(x_k)), dim=1)
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ self.queue.T], dim=1) / self.t
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        return loss, k

    @torch.no_grad()
    def update(self, k):
        for student, teacher in ((self.encoder, self.key_encoder), (self.projector, self.key_projector)):
            for ps, pt in zip(student.parameters(), teacher.parameters()):
                pt.mul_(self.m).add_(ps, alpha=1 - self.m)
        ptr = int(self.ptr)
        self.queue[ptr:ptr + len(k)] = k
        self.ptr.fill_((ptr + len(k)) % len(self.queue))
