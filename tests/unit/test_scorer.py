"""The BAM scorer: size, zero init, backward mask."""
import torch

from namm import scorer
from namm.features import FEATURE_DIM


def test_parameter_count_is_about_4k2():
    assert scorer.num_params() == 4172


def test_zero_parameters_score_zero_so_everything_is_kept():
    w = scorer.unflatten(torch.zeros(scorer.num_params()))
    scores = scorer.score_tokens(torch.randn(2, 9, FEATURE_DIM), w)
    assert torch.equal(scores, torch.zeros(2, 9))


def test_backward_attention_matches_explicit_mask():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 6, 32), torch.randn(3, 6, 32), torch.randn(3, 6, 32)
    logits = q @ k.transpose(1, 2) / 32**0.5
    allowed = torch.ones(6, 6, dtype=torch.bool).triu()  # token i sees j >= i
    ref = logits.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
    torch.testing.assert_close(scorer.backward_attention(q, k, v), ref, atol=1e-5, rtol=1e-5)


def test_a_token_score_depends_only_on_itself_and_newer_tokens():
    torch.manual_seed(1)
    w = scorer.unflatten(torch.randn(scorer.num_params()) * 0.3)
    x = torch.randn(1, 8, FEATURE_DIM)
    base = scorer.score_tokens(x, w)
    older = x.clone()
    older[0, 2] += 5.0  # change token 2
    s = scorer.score_tokens(older, w)
    assert torch.allclose(s[0, 3:], base[0, 3:])  # newer tokens never look back
    assert not torch.allclose(s[0, :3], base[0, :3])  # tokens 0..2 see token 2


def test_leading_padding_does_not_change_real_scores():
    torch.manual_seed(2)
    w = scorer.unflatten(torch.randn(scorer.num_params()) * 0.3)
    x = torch.randn(1, 5, FEATURE_DIM)
    padded = torch.cat([torch.randn(1, 3, FEATURE_DIM) * 9, x], dim=1)
    torch.testing.assert_close(scorer.score_tokens(padded, w)[:, 3:], scorer.score_tokens(x, w), atol=1e-5, rtol=1e-5)


def test_blocked_backward_attention_matches_an_explicit_block_mask():
    torch.manual_seed(0)
    for length, block in [(10, 16), (16, 16), (17, 16), (100, 16), (300, 64)]:
        q, k, v = (torch.randn(2, length, 8) for _ in range(3))
        got = scorer.blocked_backward_attention(q, k, v, block)
        # blocks are counted from the newest token: slot i belongs to block (length - 1 - i) // block
        i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
        same_block = (length - 1 - i) // block == (length - 1 - j) // block
        mask = (j >= i) & same_block
        want = torch.nn.functional.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None],
                                                                attn_mask=mask).squeeze(1)
        assert torch.allclose(got, want, atol=1e-5), (length, block)


def test_blocked_scores_equal_full_backward_scores_within_one_block():
    torch.manual_seed(1)
    w = scorer.unflatten(torch.randn(scorer.num_params()) * 0.1)
    x = torch.randn(3, 40, FEATURE_DIM)
    assert torch.allclose(scorer.score_tokens(x, w, block=64), scorer.score_tokens(x, w), atol=1e-5)
    assert not torch.allclose(scorer.score_tokens(x, w, block=8), scorer.score_tokens(x, w), atol=1e-3)
