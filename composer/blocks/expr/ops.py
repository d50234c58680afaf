"""The operation table of the expression language: every function an expression may call, and nothing else.

Each entry is a plain function of tensors and Python numbers. ``dim`` arguments are ints (negative allowed);
a reduction without ``dim`` reduces over every element. Constructors (``eye``, ``arange``, ``full``) create on
the device of the block's first input. The distributed operations are the identity on one process, so every
expression means the same on 1 and on N processes when written with them (docs/expressions.md).
"""
from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

from composer.runtime import collectives


@dataclasses.dataclass(frozen=True)
class Op:
    name: str
    fn: Callable
    group: str
    device: bool  # the function takes ``device=`` (constructors)

    @property
    def signature(self) -> str:
        params = [p for p in inspect.signature(self.fn).parameters.values() if p.name != "device"]
        return f"{self.name}({', '.join(str(p) for p in params)})"

    @property
    def doc(self) -> str:
        return " ".join((self.fn.__doc__ or "").split())


OPS: dict[str, Op] = {}


def op(group: str, name: str | None = None):
    def register(fn):
        key = name or fn.__name__.rstrip("_")
        OPS[key] = Op(key, fn, group, "device" in inspect.signature(fn).parameters)
        return fn
    return register


# -- elementwise ----------------------------------------------------------------------------------
@op("elementwise")
def exp(x):
    """e ** x"""
    return torch.exp(x)


@op("elementwise")
def log(x):
    """natural logarithm"""
    return torch.log(x)


@op("elementwise")
def sqrt(x):
    """square root"""
    return torch.sqrt(x)


@op("elementwise", "abs")
def abs_(x):
    """absolute value"""
    return torch.abs(x)


@op("elementwise", "pow")
def pow_(x, exponent):
    """x ** exponent"""
    return torch.pow(x, exponent)


@op("elementwise")
def relu(x):
    """max(x, 0)"""
    return F.relu(x)


@op("elementwise")
def clamp(x, min=None, max=None):  # noqa: A002
    """x limited to [min, max] (either bound may be left out)"""
    return torch.clamp(x, min=min, max=max)


@op("elementwise")
def where(condition, a, b):
    """a where condition is true (non-zero), else b, broadcast: a switch that stays inside one compiled graph,
    e.g. where(full, codes with a memory, codes without) on a memory.fifo's full flag"""
    if not isinstance(condition, torch.Tensor):
        return a if condition else b
    return torch.where(condition if condition.dtype == torch.bool else condition != 0, a, b)


# -- reductions ----------------------------------------------------------------------------------
@op("reduction", "sum")
def sum_(x, dim=None, keepdim=False):
    """sum over dim (every element without dim)"""
    return x.sum() if dim is None else x.sum(dim=dim, keepdim=keepdim)


@op("reduction")
def mean(x, dim=None, keepdim=False):
    """mean over dim (every element without dim)"""
    return x.mean() if dim is None else x.mean(dim=dim, keepdim=keepdim)


@op("reduction")
def var(x, dim=0, unbiased=True, keepdim=False):
    """variance over dim; unbiased (divides by n - 1) unless unbiased=False"""
    return x.var(dim=dim, correction=1 if unbiased else 0, keepdim=keepdim)


@op("reduction")
def std(x, dim=0, unbiased=True, keepdim=False):
    """standard deviation over dim; unbiased unless unbiased=False"""
    return x.std(dim=dim, correction=1 if unbiased else 0, keepdim=keepdim)


@op("reduction")
def logsumexp(x, dim=-1, keepdim=False):
    """log(sum(exp(x), dim)), computed stably"""
    return torch.logsumexp(x, dim=dim, keepdim=keepdim)


# -- similarity and normalisation ----------------------------------------------------------------------------------
@op("similarity")
def normalize(x, dim=-1, eps=1e-12):
    """x / max(||x||, eps) along dim (L2)"""
    return F.normalize(x, dim=dim, eps=eps)


@op("similarity")
def cosine(a, b, dim=-1, eps=1e-8):
    """cosine similarity of a and b along dim"""
    return F.cosine_similarity(a, b, dim=dim, eps=eps)


@op("similarity")
def standardize(x, dim=0, eps=1e-5):
    """(x - mean) / sqrt(biased var + eps) over dim: BatchNorm without affine, in training mode"""
    mu = x.mean(dim=dim, keepdim=True)
    return (x - mu) / torch.sqrt(x.var(dim=dim, correction=0, keepdim=True) + eps)


@op("similarity")
def softmax(x, dim=-1):
    """softmax along dim"""
    return F.softmax(x, dim=dim)


@op("similarity")
def log_softmax(x, dim=-1):
    """log-softmax along dim"""
    return F.log_softmax(x, dim=dim)


@op("similarity")
def cross_entropy(logits, target):
    """mean over rows of -log_softmax(logits)[row, target[row]]; classes on the last axis, integer targets"""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))


@op("similarity")
def sinkhorn(scores, eps=0.05, iters=3):
    """SwAV's Sinkhorn-Knopp codes (B, K) of scores (B, K), without gradient: exp(scores / eps), then iters rounds
    of equalising prototype rows (sums over every process) and sample columns; each row of the result sums to 1"""
    with torch.no_grad():
        s = scores.detach()
        s = s if s.dtype == torch.float64 else s.float()  # at least float32: exp(s / 0.05) overflows in half
        q = torch.exp(s / eps).T  # (K, B)
        k, b = q.shape
        b_total = b * collectives.world_size()
        q = q / collectives.all_reduce_sum(q.sum())
        for _ in range(int(iters)):
            q = q / collectives.all_reduce_sum(q.sum(dim=1, keepdim=True)) / k
            q = q / q.sum(dim=0, keepdim=True) / b_total
        return (q * b_total).T


# -- shapes and matrices ----------------------------------------------------------------------------------
@op("matrix")
def matmul(a, b):
    """matrix product (the same as a @ b)"""
    return a @ b


@op("matrix")
def t(x):
    """swap the last two axes"""
    return x.transpose(-2, -1)


@op("matrix")
def transpose(x, dim0, dim1):
    """swap axes dim0 and dim1"""
    return x.transpose(dim0, dim1)


@op("matrix")
def einsum(subscripts, *operands):
    """Einstein summation, e.g. einsum('nd,md->nm', a, b)"""
    return torch.einsum(subscripts, *operands)


@op("matrix")
def diag(x):
    """the diagonal of the last two axes"""
    return torch.diagonal(x, dim1=-2, dim2=-1)


@op("matrix")
def offdiag(x):
    """the off-diagonal entries of a square matrix (last two axes), flattened: (..., n·(n - 1))"""
    n = x.shape[-1]
    return x.flatten(-2)[..., 1:].reshape(*x.shape[:-2], n - 1, n + 1)[..., :-1].flatten(-2)


@op("matrix")
def cat(*tensors, dim=0):
    """concatenate along dim"""
    return torch.cat(tensors, dim=dim)


@op("matrix")
def stack(*tensors, dim=0):
    """stack along a new axis dim"""
    return torch.stack(tensors, dim=dim)


@op("matrix")
def unsqueeze(x, dim):
    """insert an axis of length 1 at dim"""
    return x.unsqueeze(dim)


@op("matrix")
def size(x, dim):
    """the length of axis dim, a number"""
    return x.shape[dim]


# -- constructors ----------------------------------------------------------------------------------
@op("constructor")
def one_hot(index, n):
    """rows of length n with a 1 at each integer of index (float)"""
    return F.one_hot(index, n).float()


@op("constructor")
def eye(n, device=None):
    """the n x n identity"""
    return torch.eye(n, device=device)


@op("constructor")
def arange(n, device=None):
    """integers 0, 1, ..., n - 1 (class targets)"""
    return torch.arange(n, device=device)


@op("constructor")
def full(n, value, device=None):
    """a vector of n copies of value (integer if value is an integer: class targets)"""
    return torch.full((n,), value, device=device, dtype=torch.long if isinstance(value, int) else torch.float32)


# -- across processes ----------------------------------------------------------------------------------
@op("distributed")
def all_gather(x):
    """x (N, ...) of every process concatenated along axis 0 → (W·N, ...), with gradient: backward returns each
    process its rows' share of every process's gradient (identity on one process)"""
    return collectives.gather_with_grad(x)


@op("distributed")
def all_reduce_sum(x):
    """the sum of x over processes, with gradient (a gather with gradient summed over its new axis; W copies of x
    in memory; identity on one process)"""
    if not collectives.is_distributed():
        return x
    return collectives.gather_with_grad(x.unsqueeze(0)).sum(dim=0)


@op("distributed")
def rank(device=None):
    """this process's index (0 on one process), e.g. arange(n) + n * rank() for targets in a gathered batch"""
    return collectives.rank()


@op("distributed")
def world_size(device=None):
    """the number of processes (1 on one process)"""
    return collectives.world_size()
