"""NAMM token features: attention spectrogram (STFT over the query axis) + EMA + recency embedding.

Shapes: attention rows are [N, W, S] (N = batch x KV heads, W window query rows, S cache slots).
Everything is computed per cache slot, so memory is linear in the cache length.
"""
from __future__ import annotations

import functools
import math

import torch

N_FFT = 32
HOP = 16
N_BINS = N_FFT // 2 + 1  # 17 one-sided magnitudes
EMA_COEFF = 0.99
RECENCY_DIM = 8
FEATURE_DIM = N_BINS + RECENCY_DIM  # 25


@functools.lru_cache(maxsize=8)
def _dft_basis(device, dtype) -> torch.Tensor:
    """[34, 32]: Hann-windowed cosines (17 rows) then sines (17 rows), one row per bin.
    Built once per device and dtype: every update of every layer uses it."""
    n = torch.arange(N_FFT, device=device, dtype=torch.float64)
    k = torch.arange(N_BINS, device=device, dtype=torch.float64)[:, None]
    window = torch.hann_window(N_FFT, periodic=True, device=device, dtype=torch.float64)
    angle = 2 * math.pi * k * n / N_FFT
    return torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window]).to(dtype)


def frame_count(length: int) -> int:
    """STFT frames over `length` rows (n_fft 32, hop 16, no centering)."""
    return (length - N_FFT) // HOP + 1


def stft_magnitudes(rows: torch.Tensor) -> torch.Tensor:
    """|STFT| along the query axis of attention rows: [N, L, S] -> [N, F, 17, S].

    n_fft 32, hop 16, periodic Hann window, no centering, one-sided magnitudes (the same as
    `torch.stft` on each slot's column). Run as one batched GEMM: frame f is the contiguous
    block of rows [16 f, 16 f + 32), so the DFT basis multiplies it in place, with no
    transposed copy of the N x L x S attention and none of torch.stft's per-column overhead.
    """
    frames = rows.unfold(1, N_FFT, HOP).transpose(-1, -2)  # [N, F, 32, S], a view
    spec = torch.matmul(_dft_basis(rows.device, rows.dtype), frames)  # [N, F, 34, S]
    re, im = spec[:, :, :N_BINS], spec[:, :, N_BINS:]
    return torch.addcmul(re * re, im, im).sqrt_()  # |z|; faster than hypot on CPU


def frame_end_positions(first_new_pos: int, n_frames: int, lead_pad: int) -> torch.Tensor:
    """Query position of the last row of each frame (frames run over [pad | 16 previous rows | new rows])."""
    # row r of the padded sequence holds new query index r - lead_pad - HOP
    last_rows = torch.arange(n_frames) * HOP + N_FFT - 1
    return first_new_pos + last_rows - lead_pad - HOP


def _frame_weights(n_frames: int, device, dtype) -> tuple[torch.Tensor, float]:
    """EMA weight of each frame (newest weighs most) and the decay of the carried state.
    One frame spans HOP tokens, so one frame step decays by 0.99**HOP."""
    step = EMA_COEFF**HOP
    exps = torch.arange(n_frames - 1, -1, -1, device=device, dtype=dtype)
    return (step**exps) * (1 - step), step**n_frames


def ema_reduce(mags: torch.Tensor, prev: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """EMA over frames with per-token coefficient 0.99, continuing the previous state.

    mags [N, F, B, S], prev [N, S, B], frame_mask [N, F, S] (the frame counts once the token
    exists) -> [N, S, B].
    """
    weights, decay = _frame_weights(mags.shape[1], mags.device, mags.dtype)
    # multiply-and-sum over frames: several times faster on CPU than the equivalent einsum
    reduced = (mags * (frame_mask * weights[:, None])[:, :, None]).sum(1).transpose(1, 2)
    return prev * decay + reduced


def spectrogram_ema(rows: torch.Tensor, prev: torch.Tensor, frame_mask: torch.Tensor, block: int = 256) -> torch.Tensor:
    """`ema_reduce(stft_magnitudes(rows), prev, frame_mask)`, computed `block` slots at a time.

    rows [N, L, S], prev [N, S, 17], frame_mask [N, F, S] -> [N, S, 17]. The full spectrogram
    ([N, F, 34, S] floats, tens of MB for a few thousand slots) never exists at once: each block's
    spectrogram stays in cache while its magnitudes are weighted and summed (2-3x faster on CPU).
    """
    weights, decay = _frame_weights(frame_mask.shape[1], rows.device, rows.dtype)
    weighted_mask = (frame_mask * weights[:, None])[:, :, None]  # [N, F, 1, S]
    out = prev * decay
    for start in range(0, rows.shape[2], block):
        cols = slice(start, start + block)
        mags = stft_magnitudes(rows[:, :, cols])
        out[:, cols] += (mags * weighted_mask[..., cols]).sum(1).transpose(1, 2)
    return out


def recency_embedding(age: torch.Tensor) -> torch.Tensor:
    """8-dim sinusoidal embedding of token age (0 = newest), [..] -> [.., 8]."""
    half = RECENCY_DIM // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=age.device, dtype=torch.float32) / half)
    angles = age.float()[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def scorer_inputs(norm: "RunningNorm", ema: torch.Tensor, positions: torch.Tensor, seen: int) -> torch.Tensor:
    """The scorer's 25 inputs per slot: the normalised EMA spectrogram, then the recency embedding."""
    age = (seen - 1 - positions).clamp(min=0)
    return torch.cat([norm(ema), recency_embedding(age)], dim=-1)


class RunningNorm:
    """Per-bin z-normalisation whose statistics accumulate until frozen (then they are constants)."""

    def __init__(self, mean: torch.Tensor | None = None, var: torch.Tensor | None = None, count: float = 0.0,
                 frozen: bool = False):
        self.mean = mean if mean is not None else torch.zeros(N_BINS)
        self.var = var if var is not None else torch.ones(N_BINS)
        self.count = float(count)
        self.frozen = frozen

    def update(self, x: torch.Tensor) -> None:
        if self.frozen or x.numel() == 0:
            return
        x = x.reshape(-1, N_BINS).double()
        n = x.shape[0]
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = b_mean - self.mean.double()
        mean = self.mean.double() + delta * n / total
        m2 = self.var.double() * self.count + b_var * n + delta**2 * self.count * n / total
        self.mean, self.var, self.count = mean.float(), (m2 / total).float(), total

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.count == 0:
            return x
        return (x - self.mean.to(x.device)) / torch.sqrt(self.var.to(x.device) + 1e-6)

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count, "frozen": self.frozen}

    @classmethod
    def from_state_dict(cls, d: dict) -> "RunningNorm":
        return cls(d["mean"].float(), d["var"].float(), d.get("count", 1.0), d.get("frozen", True))
