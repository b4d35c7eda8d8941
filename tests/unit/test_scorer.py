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
