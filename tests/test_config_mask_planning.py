"""SparseAttentionConfig validation, BlockSparseMask round trips, and the mask planner on hand-made block mass."""

import json

import pytest
import torch

from sparse_diffusion import BlockSparseMask, SparseAttentionConfig, SparseDiffusionError
from sparse_diffusion.planning import forced_blocks, kept_mass, plan_block_mask


# ---- config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dense_steps": 0}, ">= 1"),
        ({"dense_steps": 1.5}, "fraction"),
        ({"dense_steps": "3"}, "int"),
        ({"block_size": 100}, "multiple of 16"),
        ({"block_size": (64,)}, "pair"),
        ({"policy": "random"}, "policy"),
        ({"mass_threshold": 0.0}, r"\(0, 1\]"),
        ({"topk_ratio": 2}, r"\(0, 1\]"),
        ({"max_density": -0.1}, r"\(0, 1\]"),
        ({"min_kv_blocks": -1}, ">= 1"),
        ({"min_kv_blocks": 0}, "at least one key block"),
        ({"refresh_threshold": 1.5}, r"\[0, 1\]"),
        ({"backend": "cuda"}, "backend"),
        ({"dense_layers": (1.5,)}, "dense_layers"),
        ({"dense_layers": None}, "dense_layers"),
        ({"keep_text_tokens": "no"}, "True or False"),
        ({"sparse_density_limit": 0}, "sparse_density_limit"),
    ],
)
def test_config_errors_say_how_to_fix(kwargs, match):
    with pytest.raises(SparseDiffusionError, match=match):
        SparseAttentionConfig(**kwargs)


def test_config_round_trip_and_dense_steps():
    cfg = SparseAttentionConfig(dense_steps=0.2, block_size=(128, 64), dense_layers=(0, "blocks.3.attn1"))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert SparseAttentionConfig.from_dict(data) == cfg
    assert cfg.block_size == (128, 64)
    assert cfg.resolve_dense_steps(50) == 10 and cfg.resolve_dense_steps(4) == 1 and cfg.resolve_dense_steps(11) == 3
    assert SparseAttentionConfig(dense_steps=7).resolve_dense_steps(None) == 7
    with pytest.raises(SparseDiffusionError, match="unknown"):
        cfg.resolve_dense_steps(None)
    with pytest.raises(SparseDiffusionError, match="unknown SparseAttentionConfig fields"):
        SparseAttentionConfig.from_dict({"dense_step": 3})
    assert cfg.replace(policy="topk").policy == "topk"
    import numpy as np

    numpy_cfg = SparseAttentionConfig(dense_steps=np.int64(3), block_size=np.int64(64), mass_threshold=np.float32(0.5))
    assert numpy_cfg.dense_steps == 3 and numpy_cfg.block_size == (64, 64) and isinstance(numpy_cfg.dense_steps, int)
    with pytest.raises(SparseDiffusionError, match="dict"):
        SparseAttentionConfig.from_dict(None)


# ---- block mask --------------------------------------------------------------------------------------------


def test_block_mask_round_trip_density_and_token_mask():
    table = torch.rand(2, 3, 4, 5) < 0.5
    table[0, 0, 0] = False
    mask = BlockSparseMask.from_dense(table, (32, 16), (100, 70))
    mask.validate()
    assert torch.equal(mask.to_dense(), table)
    assert mask.kv_num_blocks.dtype == torch.int32 and mask.kv_indices.dtype == torch.int32
    assert torch.allclose(mask.density(), table.float().mean(-1).mean(-1))
    tokens = mask.to_token_mask()
    assert tokens.shape == (2, 3, 100, 70)
    assert torch.equal(tokens[1, 2, 40, 20], table[1, 2, 1, 1])
    assert "density=" in repr(mask) and "QB=4" in repr(mask)


def test_block_mask_validation_errors():
    with pytest.raises(SparseDiffusionError, match="needs"):
        BlockSparseMask.from_dense(torch.ones(1, 1, 3, 3, dtype=torch.bool), 64, (300, 300))
    with pytest.raises(SparseDiffusionError, match="bool"):
        BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2), 64, (128, 128))
    mask = BlockSparseMask.from_dense(torch.ones(1, 1, 2, 2, dtype=torch.bool), 64, (128, 128))
    mask.kv_indices[0, 0, 0, 1] = 7
    with pytest.raises(SparseDiffusionError, match="kv_indices"):
        mask.validate()


# ---- planning ----------------------------------------------------------------------------------------------


def _mass(rows):
    m = torch.tensor(rows, dtype=torch.float32)
    return (m / m.sum(-1, keepdim=True))[None, None]


def test_mass_policy_keeps_fewest_blocks_covering_threshold():
    mass = _mass([[0.5, 0.3, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.25, 0.25, 0.25, 0.25], [0.05, 0.05, 0.6, 0.3]])
    cfg = SparseAttentionConfig(policy="mass", mass_threshold=0.8, block_size=16)
    mask = plan_block_mask(mass, cfg, (64, 64), keep_diagonal=False)
    kept = mask.to_dense()[0, 0]
    assert kept[0].tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    assert kept[1].sum() == 2 and kept[1, 3]  # 0.7 + one 0.1 reaches 0.8
    assert kept[2].sum() == 4  # uniform: 0.75 < 0.8 needs all four
    assert kept[3].tolist() == [False, False, True, True]
    assert torch.allclose(kept_mass(mass, mask), torch.tensor([[(0.8 + 0.8 + 1.0 + 0.9) / 4]]), atol=1e-6)


def test_topk_policy_budgets_and_forced_blocks():
    gen = torch.Generator().manual_seed(1)
    mass = torch.rand(1, 2, 8, 8, generator=gen)
    mass /= mass.sum(-1, keepdim=True)
    cfg = SparseAttentionConfig(policy="topk", topk_ratio=0.25, block_size=16)
    mask = plan_block_mask(mass, cfg, (128, 128), keep_diagonal=False)
    assert (mask.kv_num_blocks == 2).all()
    assert torch.equal(mask.to_dense(), torch.zeros_like(mask.to_dense()).scatter_(-1, mass.topk(2, -1).indices, True))
    # ceiling and floor
    capped = plan_block_mask(
        mass,
        SparseAttentionConfig(mass_threshold=1.0, max_density=0.5, block_size=16),
        (128, 128),
        keep_diagonal=False,
    )
    assert (capped.kv_num_blocks == 4).all()
    floored = plan_block_mask(
        mass,
        SparseAttentionConfig(mass_threshold=0.01, min_kv_blocks=3, block_size=16),
        (128, 128),
        keep_diagonal=False,
    )
    assert (floored.kv_num_blocks == 3).all()
    # diagonal and text tokens (first 20 tokens = blocks 0 and 1) are always kept
    forced = plan_block_mask(mass, cfg, (128, 128), dense_token_ranges=[(0, 20)]).to_dense()
    assert forced[..., torch.arange(8), torch.arange(8)].all()
    assert forced[:, :, :2, :].all() and forced[:, :, :, :2].all()


def test_planner_never_keeps_blocks_past_the_valid_keys():
    """seq_lens_k [B]: key blocks starting at or past a batch element's valid length are dropped, also the forced
    diagonal and text columns (padded text keys at the end, HunyuanVideo-style)."""
    mass = torch.full((2, 1, 8, 8), 1 / 8)
    mass[1, :, :, 5:] = 0.0  # element 1 has 70 valid keys: blocks 5..7 (keys 80..127) hold no mass
    mass[1, :, :, :5] = 1 / 5
    cfg = SparseAttentionConfig(policy="topk", topk_ratio=1.0, block_size=16)
    plan = plan_block_mask(mass, cfg, (128, 128), dense_token_ranges=[(96, 128)], seq_lens_k=torch.tensor([128, 70]))
    table = plan.to_dense()
    assert table[0].all()
    assert table[1, :, :, :5].all() and not table[1, :, :, 5:].any()  # block 4 (keys 64..79) holds valid keys 64..69
    assert (plan.kv_num_blocks[1] == 5).all()


def test_forced_blocks_rectangular_tiles_and_tails():
    forced = forced_blocks((32, 16), (70, 70))
    assert forced.shape == (3, 5)
    # query block 0 covers tokens 0..31 -> key blocks 0, 1; the tail query block (64..69) -> key block 4
    assert forced[0].tolist() == [True, True, False, False, False]
    assert forced[2].tolist() == [False, False, False, False, True]


def test_tile_permutation_is_tile_major_and_invertible():
    from sparse_diffusion.reorder import tile_permutation

    grid, tile = (3, 5, 6), (2, 4, 4)
    perm, inverse = tile_permutation(grid, tile)
    assert sorted(perm.tolist()) == list(range(90)) and torch.equal(perm[inverse], torch.arange(90))
    f, h, w = (perm // 30), (perm // 6) % 5, perm % 6
    first = 2 * 4 * 4  # the first tile holds f < 2, h < 4, w < 4 in raster order
    assert (f[:first] < 2).all() and (h[:first] < 4).all() and (w[:first] < 4).all()
    assert perm[:3].tolist() == [0, 1, 2] and perm[4].item() == 6  # row 0 of the tile, then row 1
    with pytest.raises(SparseDiffusionError, match="token_tile"):
        SparseAttentionConfig(token_tile=(2, 8))
    cfg = SparseAttentionConfig(token_tile=(2, 8, 8))
    assert SparseAttentionConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_sparsed_selection_error_names_only_the_failing_condition():
    with pytest.raises(SparseDiffusionError) as info:
        SparseAttentionConfig(sparsed_selection=True, policy="mass")
    msg = str(info.value)
    assert "policy='topk' (got 'mass')" in msg and "max_density" not in msg
    with pytest.raises(SparseDiffusionError) as info:
        SparseAttentionConfig(sparsed_selection=True, policy="topk", max_density=0.5)
    msg = str(info.value)
    assert "max_density=1.0 (got 0.5)" in msg and "policy" not in msg


def test_token_tile_volume_other_than_block_q_warns_once(caplog):
    with caplog.at_level("WARNING", logger="sparse_diffusion.config"):
        SparseAttentionConfig(token_tile=(1, 4, 4), block_size=48)
        SparseAttentionConfig(token_tile=(1, 4, 4), block_size=48)
        SparseAttentionConfig(token_tile=(1, 4, 4), block_size=16)
    warnings = [r.getMessage() for r in caplog.records if "token_tile" in r.getMessage()]
    assert len(warnings) == 1 and "volume 16" in warnings[0] and "is 48" in warnings[0]
