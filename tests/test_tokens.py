"""The core's token plumbing, shared by every token family (vit, swin, mamba, third parties)."""

from __future__ import annotations

import pytest
import torch

from flemme_core.tokens import (
    GeluLinear,
    PatchExpansion,
    PatchMerging,
    PatchStem,
    TokenStage,
    mlp,
    pad_to_multiple,
    to_channels_first,
    to_tokens,
    token_norm,
)


def test_layout_round_trip_is_a_free_view():
    x = torch.randn(2, 3, 4, 5)
    t = to_tokens(x).contiguous()
    back = to_channels_first(t)
    assert back.shape == x.shape and back.data_ptr() == t.data_ptr()
    assert to_tokens(back).is_contiguous()
    torch.testing.assert_close(back, x)


def test_merging_and_expansion_are_inverse_shuffles():
    for dims in (2, 3):
        c, n = 3, 2 ** dims
        merge = PatchMerging(dims, c, n * c, 2, "none")
        expand = PatchExpansion(dims, n * c, c, 2, "none")
        with torch.no_grad():
            merge.reduction.weight.copy_(torch.eye(n * c))
            expand.expand.weight.copy_(torch.eye(n * c))
        x = torch.randn(2, c, *[4] * dims)
        merged = merge(x)
        assert merged.shape == (2, n * c, *[2] * dims)
        # channel block 0 is the (0, 0[, 0]) neighbour of every 2×2[×2] cell
        torch.testing.assert_close(merged[:, :c], x[(slice(None), slice(None)) + (slice(0, None, 2),) * dims])
        torch.testing.assert_close(expand(merged), x)


def test_odd_sizes_are_zero_padded_at_the_end():
    t = torch.ones(1, 5, 3, 2)
    padded = pad_to_multiple(t, [4, 4])
    assert padded.shape == (1, 8, 4, 2)
    assert padded[:, :5, :3].eq(1).all() and padded[:, 5:].eq(0).all() and padded[:, :, 3:].eq(0).all()
    assert PatchMerging(2, 2, 4, 2, "layer")(torch.randn(1, 2, 5, 7)).shape == (1, 4, 3, 4)
    stem = PatchStem(3, 1, 8, 4, "layer", grid=[2, 2, 2])
    assert stem(torch.randn(1, 1, 9, 8, 8)).shape == (1, 8, 3, 2, 2)  # grid interpolated to 3x2x2


@pytest.mark.parametrize("name", ["batch", "instance", "group"])
def test_channels_first_norms_on_tokens_match_the_plain_norm(name):
    from flemme_core import layers

    norm = token_norm(name, 8, dims=2).train()
    ref = layers.norm(name, 2, 8).train()
    ref.load_state_dict(norm.norm.state_dict())
    x = torch.randn(4, 8, 5, 6)
    torch.testing.assert_close(to_channels_first(norm(to_tokens(x))), ref(x))
    with pytest.raises(ValueError, match="needs the spatial dims"):
        token_norm(name, 8)


def test_layer_norm_normalises_each_token_over_channels():
    t = torch.randn(2, 3, 3, 16) * 5 + 2
    out = token_norm("layer", 16)(t)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 3, 3), atol=1e-5, rtol=0)
    assert isinstance(token_norm("none", 16), torch.nn.Identity)


def test_stage_projects_then_passes_context_to_every_block():
    seen = []

    class Probe(torch.nn.Module):
        def forward(self, t, context=None):
            seen.append((t.shape[-1], context))
            return t + 1

    stage = TokenStage(6, 4, [Probe(), Probe()])
    ctx = torch.zeros(2, 3)
    out = stage(torch.randn(2, 6, 5, 5), ctx)
    assert out.shape == (2, 4, 5, 5) and [s[0] for s in seen] == [4, 4] and all(s[1] is ctx for s in seen)


def test_fused_gelu_mlp_matches_autograd():
    h = torch.randn(3, 5, 8, dtype=torch.double, requires_grad=True)
    w = torch.randn(4, 8, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(GeluLinear.apply, (h, w, b))
    block = mlp(8, 2.0, 0.0, "gelu")
    x = torch.randn(2, 7, 8, requires_grad=True)
    fused = block(x)
    ref = block.linear2(torch.nn.functional.gelu(block.linear1(x)))
    torch.testing.assert_close(fused, ref)
    g1 = torch.autograd.grad(fused.square().sum(), [x, *block.parameters()])
    g2 = torch.autograd.grad(ref.square().sum(), [x, *block.parameters()])
    for a, b_ in zip(g1, g2):
        torch.testing.assert_close(a, b_)


# --- TokenFamily: the one set of token builders, and the mixer ablation contract --------------

class _LinearMixerBlock(torch.nn.Module):
    """t + mixer(norm(t)) + mlp(norm(t)); the mixer a Linear over channels (or the identity)."""

    def __init__(self, width: int, identity: bool):
        super().__init__()
        self.norm = token_norm("layer", width)
        self.mix = torch.nn.Identity() if identity else torch.nn.Linear(width, width)
        self.mlp = mlp(width, 2.0, 0.0, "gelu")

    def forward(self, t, context=None):
        t = t + self.mix(self.norm(t))
        return t + self.mlp(t)


def _tiny_family(mixers, pattern=r"(^|\.)mix\."):
    from flemme_core.tokens import TokenFamily

    class Tiny(TokenFamily):
        name = "tiny"

        def block(self, width, drop_path, index):
            return _LinearMixerBlock(width, self.identity_mixer)

    Tiny.mixers, Tiny.mixer_parameters = mixers, pattern
    return Tiny


def _config(**options):
    from flemme_core.config import EncoderConfig

    return EncoderConfig(name="tiny", channels=[8, 16], num_blocks=1, dims=2, in_channels=1, image_size=[16, 16],
                         options=options)


def test_token_family_builds_stem_stages_merging_and_expansion():
    from flemme_core.encoder import staged_encoder

    enc = staged_encoder(_tiny_family(("linear", "identity")))(_config())
    assert isinstance(enc.stem, PatchStem) and isinstance(enc.downs[0], PatchMerging)
    assert isinstance(enc.stages[0], TokenStage) and enc.blocks.mixer == "linear"
    assert isinstance(enc.blocks.up(16, 8), PatchExpansion)
    assert [f.shape for f in enc(torch.randn(2, 1, 16, 16))] == [(2, 8, 8, 8), (2, 16, 4, 4)]


def test_identity_mixer_contract_on_a_third_party_token_family():
    from flemme_core.ablation import check_identity_mixer
    from flemme_core.encoder import staged_encoder

    result = check_identity_mixer(staged_encoder(_tiny_family(("linear", "identity"))), channels=[8, 16])
    assert result["removed"] == sorted(f"stages.{i}.blocks.0.mix.{p}" for i in (0, 1) for p in ("bias", "weight"))
    # a family whose pattern also claims non-mixer parameters is caught
    with pytest.raises(AssertionError, match="mixer parameters remain"):
        check_identity_mixer(staged_encoder(_tiny_family(("linear", "identity"), r"mix\.|norm\.")),
                             channels=[8, 16])


def test_a_family_that_does_not_opt_in_refuses_in_one_line():
    from flemme_core.encoder import staged_encoder
    from flemme_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model.encoder.mixer: the 'tiny' family does not support mixer: "
                                          r"identity; it builds linear$"):
        staged_encoder(_tiny_family(("linear",)))(_config(mixer="identity"))
    with pytest.raises(ConfigError, match="has no token mixer to replace"):
        staged_encoder(_tiny_family(()))(_config(mixer="identity"))
