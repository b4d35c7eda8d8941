"""NAMM features against direct reference computations."""
import math

import numpy as np
import torch

from namm.features import (HOP, N_BINS, N_FFT, RunningNorm, ema_reduce, frame_end_positions, recency_embedding,
                           spectrogram_ema, stft_magnitudes)


def test_stft_magnitudes_match_a_direct_windowed_dft():
    torch.manual_seed(0)
    columns = torch.rand(3, 7, 16 + 128)  # [N, S, L]: 16 carried rows + a 128-query window, 7 slots
    ours = stft_magnitudes(columns.transpose(1, 2)).permute(0, 3, 2, 1)  # [N, F, 17, S] -> [N, S, 17, F]
    x = columns.double().numpy()
    n = np.arange(N_FFT)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / N_FFT)  # periodic Hann
    frames = np.stack([x[..., f * HOP: f * HOP + N_FFT] for f in range((x.shape[-1] - N_FFT) // HOP + 1)], axis=-2)
    ref = np.abs(np.fft.rfft(frames * window, axis=-1))  # [N, S, F, 17]
    assert ours.shape == (3, 7, N_BINS, 128 // HOP)
    np.testing.assert_allclose(ours.numpy(), ref.transpose(0, 1, 3, 2), atol=1e-5, rtol=1e-5)


def test_stft_magnitudes_match_torch_stft():
    torch.manual_seed(3)
    rows = torch.rand(2, 16 + 512, 5)  # [N, L, S]: query axis first
    ours = stft_magnitudes(rows)  # [N, F, 17, S]
    window = torch.hann_window(N_FFT, periodic=True)
    ref = torch.stft(rows.transpose(1, 2).reshape(10, -1), n_fft=N_FFT, hop_length=HOP, window=window,
                     center=False, onesided=True, return_complex=True).abs()  # [N*S, 17, F]
    torch.testing.assert_close(ours, ref.reshape(2, 5, N_BINS, -1).permute(0, 3, 2, 1), atol=1e-5, rtol=1e-5)


def test_ema_matches_sequential_recurrence():
    torch.manual_seed(1)
    mags = torch.rand(2, 5, N_BINS, 4)  # [N, frames, bins, S]
    prev = torch.rand(2, 4, N_BINS)  # [N, S, bins]
    mask = torch.ones(2, 5, 4)  # [N, frames, S]
    mask[:, :2, 3] = 0  # token 3 did not exist during the first two frames
    step = 0.99**HOP
    state = prev.clone()
    for f in range(5):
        state = step * state + (1 - step) * mags[:, f].transpose(1, 2) * mask[:, f, :, None]
    torch.testing.assert_close(ema_reduce(mags, prev, mask), state, atol=1e-6, rtol=1e-5)


def test_blockwise_spectrogram_ema_equals_the_two_step_reference():
    torch.manual_seed(5)
    rows = torch.rand(3, 16 + 512, 700)  # 700 slots: blocks of 256, 256 and a ragged 188
    prev = torch.rand(3, 700, N_BINS)
    mask = (torch.rand(3, 32, 700) > 0.2).float()
    ref = ema_reduce(stft_magnitudes(rows), prev, mask)
    torch.testing.assert_close(spectrogram_ema(rows, prev, mask), ref, atol=1e-5, rtol=1e-5)


def test_frame_end_positions_cover_the_window():
    # window of 64 new queries at positions 100..163, 16 carried rows in front, no padding
    ends = frame_end_positions(first_new_pos=100, n_frames=4, lead_pad=0)
    assert ends.tolist() == [115, 131, 147, 163]  # the last frame ends at the newest query


def test_recency_embedding_is_sinusoidal():
    emb = recency_embedding(torch.tensor([0, 1, 1000]))
    assert emb.shape == (3, 8)
    assert torch.allclose(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert math.isclose(float(emb[1, 0]), math.sin(1.0), rel_tol=1e-6)


def test_running_norm_matches_batch_statistics_and_freezes():
    torch.manual_seed(2)
    a, b = torch.randn(100, N_BINS) * 3 + 1, torch.randn(50, N_BINS)
    norm = RunningNorm()
    norm.update(a)
    norm.update(b)
    both = torch.cat([a, b])
    torch.testing.assert_close(norm.mean, both.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(norm.var, both.var(0, unbiased=False), atol=1e-4, rtol=1e-4)
    z = norm(both)
    assert z.mean(0).abs().max() < 1e-4
    norm.frozen = True
    before = norm.mean.clone()
    norm.update(torch.randn(10, N_BINS) + 100)
    assert torch.equal(norm.mean, before)
