"""elmrec.dropout: the distribution and gradient of nn.Dropout, drawn from torch.rand."""

import numpy as np
import pytest
import torch
from torch import nn

from elmrec.config import ModelConfig
from elmrec.dropout import Dropout
from elmrec.model import build_model


def test_drops_a_share_p_and_scales_the_rest():
    torch.manual_seed(0)
    x = torch.rand(1000, 1000) + 0.5  # no zeros of its own
    x.requires_grad_(True)
    out = Dropout(0.1).train()(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.002  # 1e6 draws: standard error 0.0003
    torch.testing.assert_close(out[kept], x[kept] / 0.9)
    grad = torch.randn_like(x)
    out.backward(grad)
    torch.testing.assert_close(x.grad, torch.where(kept, grad / 0.9, 0.0))


def test_identity_in_eval_or_at_rate_zero_and_seeded():
    x = torch.randn(50, 40)
    assert torch.equal(Dropout(0.3).eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    torch.manual_seed(1)
    a = Dropout(0.3).train()(x)
    torch.manual_seed(1)
    assert torch.equal(a, Dropout(0.3).train()(x))


def test_bf16_input_is_scaled_in_float32_and_stays_bf16():
    torch.manual_seed(0)
    x = torch.rand(100, 100, dtype=torch.bfloat16) + 1
    out = Dropout(0.1).train()(x)
    kept = out != 0
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[kept], (x[kept].float() / 0.9).to(torch.bfloat16))


@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_the_model_uses_it_at_its_configured_rate(rate):
    cfg = ModelConfig(size="tiny", id_tokens="digits", dropout=rate)
    model = build_model(cfg, 5, 12, np.array([1, 2]), np.array([1, 3]), 100, 0)
    drops = [m for m in model.t5.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(type(m) is Dropout and m.p == rate for m in drops)
