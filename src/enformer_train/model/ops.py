"""The custom autograd functions of the model: each computes what plain torch ops would, keeping
less for backward and recomputing the rest there. The modules in blocks.py, attention.py and
batchnorm.py call them through the functions at the end of this file.

Each is checked against autograd by torch.autograd.gradcheck in tests/test_model.py.
"""
from __future__ import annotations

import contextlib
import math

import torch

from ..distributed.reduce import sum_with

GELU_SCALE = 1.702


def without_autocast(device: torch.device):
    """A context that turns autocast off where it is on (for the code inside that picks its dtypes)."""
    on = autocast_dtype(device) is not None
    return torch.autocast(device.type, enabled=False) if on else contextlib.nullcontext()


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The lower dtype autocast computes in on `device`, or None where it is off."""
    if device.type in ("cuda", "cpu", "xpu") and torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return None


class BatchNormFunction(torch.autograd.Function):
    """y = act((x - mean) / sqrt(var + eps) * weight + bias), act = identity or sigmoid(1.702 z) z.

    x: [batch, channels, length]. Mean and biased variance are over (batch, length) of this rank,
    or of all ranks (`world` > 1): forward all-reduces (sum x, sum x^2, count) in float64, backward
    (sum dz, sum dz * x_hat), so each rank's input gradient is that of the sum of all ranks' losses,
    exactly as one process holding the whole batch. Only x is kept for backward; the normalised
    values and the activation are recomputed there, which halves what a conv block keeps.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, gelu, world, key=0):
        channels = x.shape[1]
        # Per-channel moments from row sums along the length (contiguous, fast: torch.var_mean over
        # (batch, length) was a third of a CPU training step), added up over rows in float64 and, with
        # `world` > 1, over ranks in one all-reduce of (sum x, sum x^2, count). Every row's sums are
        # the same whichever rank holds the row, so 1 rank and N ranks differ only by float64 order.
        n = x.shape[0] * x.shape[2]
        local = torch.cat([_row_sums(x).sum(0), _row_dots(x, x).sum(0),
                           torch.tensor([n], dtype=torch.float64, device=x.device)])
        if world > 1:
            local = sum_with(local, key)
        count = local[-1]
        mean64 = local[:channels] / count
        var = (local[channels:2 * channels] / count - mean64 * mean64).clamp_min(0.0).to(x.dtype)
        mean = mean64.to(x.dtype)
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight
        z = torch.addcmul((bias - mean * scale)[None, :, None], x, scale[None, :, None])
        y = z.mul_(torch.sigmoid(z * GELU_SCALE)) if gelu else z
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.count, ctx.gelu, ctx.world, ctx.key = count, gelu, world, key
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        channels = x.shape[1]
        x_hat = (x - mean[None, :, None]).mul_(invstd[None, :, None])
        if ctx.gelu:
            # d/dz [s(1.702 z) z] = s (1 + 1.702 z (1 - s)), in place to spare allocations
            z = torch.addcmul(bias[None, :, None], x_hat, weight[None, :, None])
            s = torch.sigmoid(z * GELU_SCALE)
            grad_z = torch.rsub(s, 1).mul_(z).mul_(GELU_SCALE).add_(1).mul_(s).mul_(grad_y)
            del z, s
        else:
            grad_z = grad_y
        sum_dz = _row_sums(grad_z).sum(0)
        sum_dz_xhat = _row_dots(grad_z, x_hat).sum(0)
        # Parameter gradients stay local: the data-parallel wrapper all-reduces them like any other.
        grad_weight, grad_bias = sum_dz_xhat.to(weight.dtype), sum_dz.to(weight.dtype)
        if ctx.world > 1:
            sums = torch.cat([sum_dz, sum_dz_xhat])
            sums = sum_with(sums, ctx.key)
            sum_dz, sum_dz_xhat = sums[:channels], sums[channels:]
        mean_dz = (sum_dz / ctx.count).to(x.dtype)
        mean_dz_xhat = (sum_dz_xhat / ctx.count).to(x.dtype)
        grad_x = x_hat.mul_(-mean_dz_xhat[None, :, None]).add_(grad_z).sub_(mean_dz[None, :, None]).mul_(
            (weight * invstd)[None, :, None])
        return (grad_x, grad_weight, grad_bias) + (None,) * (len(ctx.needs_input_grad) - 3)  # key may be left out


class HalfBatchNormFunction(torch.autograd.Function):
    """BatchNormFunction for a bf16 or float16 x (autocast) with float32 weight and bias: the same
    training-mode batch norm (+ GELU), its statistics in float32 accumulated from the half-precision
    x by torch's own batch-norm kernels, which take a half-precision input beside float32
    parameters on the CPU and on CUDA. No float32 copy of x is made: x is kept for backward in
    its own dtype (half the bytes), and y comes out in it.

    One rank: torch's training-mode kernels as they are (their mean and variance are this rank's).
    `world` > 1: each rank's (count, mean, biased variance) are summed over ranks as (n, n mean,
    n (var + mean^2)) in float64 and the output is the evaluation-mode kernel with the global
    moments; backward takes dz w invstd and this rank's sums of dz and dz x_hat from the
    evaluation-mode backward kernel, sums those over ranks, and adds -w invstd (mean dz + x_hat
    mean dz x_hat), a per-channel affine map of x_hat, through the evaluation-mode forward kernel.

    GELU runs in bf16 (its forward and its derivative): against float64 of the same bf16 input,
    batch-norm weight gradients are 5e-3 off instead of the float32 path's 1.6e-3 (one rounding of
    the float32 result); outputs and input gradients 2.7e-3 and 4.3e-3 instead of 1.6e-3 and 2.5e-3.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps, gelu, world, key=0):
        with without_autocast(x.device):
            y, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
            var = invstd.pow(-2).sub_(eps).clamp_min_(0.0)  # float32: 1e-7 of var + eps
            if world > 1:
                n = x.shape[0] * x.shape[2]
                mean64, var64 = torch.stack([mean, var]).double()
                local = torch.cat([mean64 * n, (var64 + mean64 * mean64) * n, mean64.new_tensor([n])])
                total = sum_with(local, key)
                channels, count = x.shape[1], total[-1]
                mean64 = total[:channels] / count
                var = (total[channels:2 * channels] / count - mean64 * mean64).clamp_min_(0.0)
                mean, var, invstd = torch.stack([mean64, var, var.add(eps).rsqrt_()]).float()
                y = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, eps)[0]
                ctx.count = count
            if gelu:
                y = y.mul_(torch.sigmoid(y * GELU_SCALE))
        ctx.save_for_backward(x, weight, bias, mean, var, invstd)
        ctx.eps, ctx.gelu, ctx.world, ctx.key = eps, gelu, world, key
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, weight, bias, mean, var, invstd = ctx.saved_tensors
        with without_autocast(x.device):
            grad_z = grad_y.to(x.dtype)
            if ctx.gelu:
                z = torch.native_batch_norm(x, weight, bias, mean, var, False, 0.0, ctx.eps)[0]
                s = torch.sigmoid(z * GELU_SCALE)
                grad_z = torch.rsub(s, 1).mul_(z).mul_(GELU_SCALE).add_(1).mul_(s).mul_(grad_z)
                del z, s
            if ctx.world == 1:
                grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                    grad_z, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True])
            else:
                # Evaluation mode with the global moments: dz w invstd, and this rank's sums of dz x_hat
                # and dz (grad_weight and grad_bias stay local: the data-parallel wrapper all-reduces them).
                grad_x, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                    grad_z, x, weight, mean, var, None, None, False, ctx.eps, [True, True, True])
                channels = x.shape[1]
                total = sum_with(torch.cat([grad_bias, grad_weight]).double(), ctx.key)
                means = total / ctx.count  # global means of dz and dz x_hat
                scale = -(weight * invstd).double()
                # - w invstd (mean dz + x_hat mean dz x_hat), x_hat = (x - mean) invstd: an affine map of x_hat
                centring = torch.native_batch_norm(x, (scale * means[channels:]).float(),
                                                   (scale * means[:channels]).float(), mean, var, False, 0.0, ctx.eps)[0]
                grad_x = grad_x.add_(centring)
        return (grad_x, grad_weight, grad_bias) + (None,) * (len(ctx.needs_input_grad) - 3)  # key may be left out


def _row_sums(x: torch.Tensor) -> torch.Tensor:
    """[batch, channels, length] -> [batch, channels] sums along the length, then float64."""
    return x.sum(dim=2).double()


def _row_dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[batch, channels, length] x 2 -> [batch, channels] sums of a * b along the length, then float64."""
    return torch.linalg.vecdot(a, b, dim=2).double()


class SoftmaxPoolingFunction(torch.autograd.Function):
    """Softmax pooling of pairs: out[b, c, i] = x0 + (x1 - x0) sigmoid(l1 - l0), where (x0, x1) are
    positions 2i and 2i + 1 and l = weight @ x. A softmax over two logits is the sigmoid of their
    difference, and l1 - l0 = weight @ (x1 - x0), so one half-length matmul gives it.

    Keeps only x for backward and recomputes the rest there: this is the largest activation of
    the network, and autograd would keep x, the logits' softmax and more.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight):
        x0, diff, s = _pair_weights(x, weight)
        return torch.addcmul(x0, diff, s)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        _, diff, s = _pair_weights(x, weight)
        g1 = grad * s
        # d out / d (l1 - l0) = g (x1 - x0) s (1 - s); l1 - l0 = weight @ (x1 - x0). 1 - s is written
        # over s, and d is a new tensor: under torch.func.vmap the gradient is batched and s is not.
        d = torch.mul(g1, s.neg_().add_(1)).mul_(diff)
        del s
        grad_weight = torch.matmul(d, diff.transpose(1, 2)).sum(0) if ctx.needs_input_grad[1] else None
        # u = weight^T @ d as one matrix product over (batch, length) rows, written out: torch.matmul
        # picks this or a batched product by whether `weight` requires grad, so the same weights
        # (a parameter, autocast's copy, a copy cast once) would round differently.
        b, c, n = d.shape
        u = torch.mm(d.transpose(1, 2).reshape(b * n, c), weight).view(b, n, c).transpose(1, 2)
        del d, diff
        grad_x1 = g1.add_(u)
        grad_x0 = torch.sub(grad, grad_x1)
        return torch.stack([grad_x0, grad_x1], dim=-1).flatten(-2), grad_weight


def _pair_weights(x: torch.Tensor, weight: torch.Tensor):
    """x [b, c, 2n] -> x0 [b, c, n] (a view), x1 - x0, and the weight of x1, sigmoid(weight @ (x1 - x0))."""
    x0 = x[..., 0::2]
    diff = x[..., 1::2] - x0
    # weight @ diff as one matrix product over (batch, length) rows, written out: torch.matmul takes
    # this path when `weight` requires grad and a batched product when not (contribution scores
    # hold the weights out of autograd), which round differently.
    b, c, n = diff.shape
    logits = torch.mm(diff.transpose(1, 2).reshape(b * n, c), weight.t()).view(b, n, -1).transpose(1, 2)
    return x0, diff, torch.sigmoid(logits)


class AddRelativeLogits(torch.autograd.Function):
    """content + shift(relative), where shift(r)[..., i, j] = r[..., i, j - i + T - 1].

    The reference shifts by padding, reshaping and slicing, which copies the [T, 2T] logits twice;
    here the shift is a strided view of the [T, 2T - 1] relative logits, read once.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(content: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
        return content + _shifted_view(relative.contiguous())

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.relative_shape = inputs[1].shape

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_relative = grad.new_zeros(ctx.relative_shape)
        _shifted_view(grad_relative).copy_(grad)
        return grad, grad_relative


def _shifted_view(relative: torch.Tensor) -> torch.Tensor:
    """[..., T, 2T - 1] contiguous -> view [..., T, T] with out[..., i, j] = relative[..., i, j - i + T - 1].

    Element (i, j) is at i (2T - 1) + j - i + T - 1 = i (2T - 2) + j + T - 1 of each flattened
    [T, 2T - 1] matrix: rows of 2T - 2 from offset T - 1. Views only (no storage offsets read), so
    that torch.compile traces it.
    """
    *lead, t, width = relative.shape
    flat = relative.flatten(-2)[..., t - 1: t - 1 + t * (width - 1)]
    return flat.unflatten(-1, (t, width - 1))[..., :t]


def gap_mask(n: int, rate: float, draws: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """n independent Bernoulli(rate) draws as a bool tensor, drawn as the gaps between the True
    positions: a gap is geometric, 1 + floor(log(1 - U) / log(1 - rate)) for U uniform in [0, 1)
    (float64, from `generator` or torch's default one), so about n x rate uniforms are drawn
    instead of n. Above rate 0.5 the False positions are drawn instead. Exact: the gaps are drawn in
    batches (`draws` at most, for the test) until they pass the end, each batch starting where the
    last stopped (a geometric gap has no memory)."""
    if not 0 < rate < 1:
        raise ValueError(f"a dropout rate must be in (0, 1), got {rate}")
    if rate > 0.5:
        return gap_mask(n, 1.0 - rate, draws, generator).logical_not_()
    scale = 1.0 / math.log1p(-rate)
    mask = torch.zeros(n, dtype=torch.bool)
    last = -1  # the last True position drawn
    while last < n - 1:
        mean = (n - 1 - last) * rate
        count = int(mean + 10 * math.sqrt(mean * (1 - rate)) + 16)  # past the end but for odds below 1e-20
        if draws is not None:
            count = min(count, draws)
        gaps = torch.rand(count, dtype=torch.float64, generator=generator).neg_().log1p_().mul_(scale).floor_().add_(1)
        positions = gaps.to(torch.int64).cumsum_(0).add_(last)
        last = int(positions[-1])
        mask[positions[: int(torch.searchsorted(positions, n))]] = True
    return mask


def _seeded_gap_mask(like: torch.Tensor, seed: torch.Tensor, rate: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(int(seed))
    return gap_mask(like.numel(), rate, generator=generator).view(like.shape)


# The compiled graph's mask on the CPU is an operator of its own (inductor would draw n uniforms),
# a function of a seed drawn by a random operator, which a compiled graph never merges with
# another: two calls draw two seeds, and a backward that recomputes the mask under checkpointing
# recomputes the forward's.
_LIBRARY = torch.library.Library("enformer_train", "DEF")
_LIBRARY.define("dropout_mask(Tensor like, Tensor seed, float rate) -> Tensor")
_LIBRARY.impl("dropout_mask", _seeded_gap_mask, "CPU")


@torch.library.register_fake("enformer_train::dropout_mask")
def _dropout_mask_fake(like, seed, rate):
    return like.new_empty(like.shape, dtype=torch.bool)


def dropout_mask(like: torch.Tensor, rate: float) -> torch.Tensor:
    """A bool tensor of `like`'s shape, each element True (dropped) with probability `rate`.

    In a compiled graph on the CPU drawn by gap_mask from a seed drawn in the graph: 17 ms for the
    attention's 19M weights at 0.05, where bernoulli_ took 120-180 ms on a 2-core AMD EPYC (a
    serial loop there, one uniform per element): 1.4 s of a 14-s quarter-width training step. A
    compiled graph draws its own random numbers anyway (inductor's, for every other dropout), so
    no stream is lost. Eager keeps bernoulli_ and its stream, which the demo's measured figures
    were trained with."""
    if like.device.type == "cpu" and torch.compiler.is_compiling():
        seed = torch.randint(0, 2**62, (), dtype=torch.int64)
        return torch.ops.enformer_train.dropout_mask(like, seed, rate)
    return torch.empty(like.shape, dtype=torch.bool, device=like.device).bernoulli_(rate)


class AttendFunction(torch.autograd.Function):
    """dropout(softmax(logits)) @ v, keeping for backward the softmax and a boolean dropout mask
    only: autograd would also keep the dropped-out copy, the largest tensor of each layer."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, v, rate, training):
        """-> (output, the softmax[, the dropout mask]): the latter for backward only (no None among
        them: torch 2.4's dynamo cannot trace a None output)."""
        p = logits.softmax(dim=-1)
        if training and rate > 0:
            dropped = dropout_mask(p, rate)
            return torch.matmul(p.masked_fill(dropped, 0.0).mul_(1.0 / (1.0 - rate)), v), p, dropped
        return torch.matmul(p, v), p

    @staticmethod
    def setup_context(ctx, inputs, output):
        p, dropped = output[1], (output[2] if len(output) > 2 else None)
        ctx.save_for_backward(p, inputs[1], dropped)
        ctx.mark_non_differentiable(*output[1:])
        ctx.rate = inputs[2]

    @staticmethod
    def backward(ctx, grad, *_not_differentiable):
        p, v, dropped = ctx.saved_tensors
        scale = 1.0 / (1.0 - ctx.rate)
        weights = p if dropped is None else p.masked_fill(dropped, 0.0).mul_(scale)
        # Under autocast the forward matmul ran in the gradient's dtype (bf16) while the softmax
        # stayed float32 (CUDA's autocast keeps softmax in float32): the products here run in the
        # dtype of the forward product, the softmax backward in the softmax's.
        grad_v = torch.matmul(weights.transpose(-1, -2).to(grad.dtype), grad)
        del weights
        grad_p = torch.matmul(grad, v.to(grad.dtype).transpose(-1, -2)).to(p.dtype)
        if dropped is not None:
            grad_p.masked_fill_(dropped, 0.0).mul_(scale)
        # softmax backward: p (grad_p - sum(grad_p p))
        row = (grad_p * p).sum(dim=-1, keepdim=True)
        return grad_p.sub_(row).mul_(p), grad_v, None, None


def batch_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, gelu: bool, world: int,
               key: int = 0):
    """Training-mode batch norm (+ GELU) of x [batch, channels, length] over `world` ranks, summed by
    the reducer registered as `key` (distributed.reduce.key_of)
    -> (y [batch, channels, length], batch mean [channels], biased batch variance [channels])."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return HalfBatchNormFunction.apply(x, weight.float(), bias.float(), eps, gelu, world, key)
    return BatchNormFunction.apply(x, weight, bias, eps, gelu, world, key)


def softmax_pool_pairs(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Softmax pooling of x [batch, channels, 2n] with logits weight [channels, channels] @ x -> [batch, channels, n]."""
    return SoftmaxPoolingFunction.apply(x, weight)


def add_relative_logits(content: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
    """content [..., T, T] + relative [..., T, 2T - 1] shifted so that column j of row i is distance j - i."""
    return AddRelativeLogits.apply(content, relative)


def shifted_relative(relative: torch.Tensor) -> torch.Tensor:
    """relative [..., T, 2T - 1] -> a view [..., T, T] whose column j of row i is distance j - i: the
    relative logits as a bias for torch's scaled_dot_product_attention (autograd takes it through)."""
    return _shifted_view(relative.contiguous())


def attend(logits: torch.Tensor, v: torch.Tensor, dropout_rate: float, training: bool) -> torch.Tensor:
    """dropout(softmax(logits [..., T, T])) @ v [..., T, value] -> [..., T, value]."""
    return AttendFunction.apply(logits, v, dropout_rate, training)[0]


class CastOnce(torch.autograd.Function):
    """Many float32 weights -> their copies in a lower dtype (bf16 under autocast), in one cast.

    Autocast casts each weight where an operator takes it, and each weight's gradient back: two
    casts per weight and step. Here the weights are gathered into one float32 buffer and cast at
    once, and their gradients gathered and cast back at once: two casts per call. The values are
    the same as autocast's (float32 -> bf16 rounds the same way in either), so are the products.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(dtype, *weights):
        flat = torch.cat([w.detach().reshape(-1) for w in weights]).to(dtype)
        return tuple(part.view(w.shape) for part, w in zip(flat.split([w.numel() for w in weights]), weights))

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.shapes = [w.shape for w in inputs[1:]]

    @staticmethod
    def backward(ctx, *grads):
        wanted = [i for i, g in enumerate(grads) if g is not None and ctx.needs_input_grad[i + 1]]
        out = [None] * len(grads)
        if wanted:
            flat = torch.cat([grads[i].reshape(-1) for i in wanted]).float()
            for i, part in zip(wanted, flat.split([grads[i].numel() for i in wanted])):
                out[i] = part.view(ctx.shapes[i])
        return (None, *out)


def cast_once(weights: list[torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """`weights` (float32) as `dtype`, cast in one operation forward and one backward (CastOnce)."""
    return CastOnce.apply(dtype, *weights)
