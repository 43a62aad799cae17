"""The project-trained tiny diffusion LM (needle retrieval, `sparse_diffusion/testing/weights/tiny_dlm_retrieval`): it loads offline,
retrieves at 1k context with the sampler, and the default accelerated config keeps its accuracy at low density;
`bench dlm` prints its table. Thresholds come from the README's accuracy table (64 prompts per length)."""

import json

import pytest
import torch

from sparse_diffusion import accelerate_model
from sparse_diffusion.cli import main
from sparse_diffusion.testing import retrieval as task
from sparse_diffusion.testing.dlm import load_trained_tiny_dlm


COUNT, CONTEXT = 16, 1000  # 16 held-out prompts of 1,000 tokens (not a multiple of the 128-token tiles), 4 answers
MIN_DENSE_ACCURACY = 0.9
TOLERANCE = 0.01  # the README's "within 1 point"
MAX_DENSITY = 0.4


@pytest.fixture(scope="module")
def model():
    return load_trained_tiny_dlm()


@pytest.fixture(scope="module")
def data():
    return task.held_out_set(COUNT, CONTEXT)


@pytest.fixture(scope="module")
def dense(model, data):
    return task.retrieval_accuracy(model, data, return_tokens=True)


def test_trained_model_loads_offline_and_retrieves_at_1k_context(model, data, dense):
    assert model.config["mask_id"] == task.MASK and model.config["vocab_size"] == task.VOCAB_SIZE
    assert not model.training
    accuracy, tokens = dense
    assert tokens.shape == (COUNT, task.NUM_QUERIES * task.VALUE_LEN)
    assert accuracy >= MIN_DENSE_ACCURACY, accuracy
    # the answers come from the needles, not from the prompt's end: blanking the asked needle breaks them
    blank = data.prompts.clone()
    for b, p in enumerate(data.needle_positions[:, 0].tolist()):
        blank[b, p : p + 1 + task.VALUE_LEN] = task.FILLER0
    damaged = task.RetrievalBatch(blank, data.answers, data.needle_positions)
    assert task.retrieval_accuracy(model, damaged) < 0.2


def test_default_config_matches_dense_accuracy_at_low_density(model, data, dense):
    dense_accuracy, dense_tokens = dense
    with accelerate_model(model) as handle:
        accuracy, tokens = task.retrieval_accuracy(model, data, return_tokens=True)
        report = handle.report()
    assert report["adapter"] == "dlm" and report["fallbacks"] == []
    config = report["config"]
    assert (config["policy"], config["topk_ratio"], config["cache_complement"], config["refresh_threshold"]) == (
        "topk",
        0.1,
        True,
        0.0,
    ), "the dlm adapter's defaults"
    assert [(r["total_steps"], r["dense_steps"], r["sparse_steps"]) for r in report["runs"]] == [(4, 1, 3)] * (
        COUNT // 8
    )
    assert report["density"] is not None and report["density"] <= MAX_DENSITY, report["density"]
    assert abs(accuracy - dense_accuracy) <= TOLERANCE, (accuracy, dense_accuracy)
    assert float((tokens == dense_tokens).double().mean()) >= 1 - TOLERANCE


def test_bench_dlm_prints_a_table(capsys, tmp_path):
    torch.manual_seed(0)
    args = [
        "bench",
        "dlm",
        "--context",
        "256,512",
        "--heads",
        "2",
        "--head-dim",
        "32",
        "--steps",
        "4",
        "--gen-length",
        "16",
        "--block-size",
        "64",
        "--json",
        str(tmp_path / "dlm.json"),
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines()]
    rows = [line for line in lines if line and line[0] in ("256", "512")]
    assert len(rows) == 2 and all(row[3].endswith("x") for row in rows), out
    assert "attn share" in out and (tmp_path / "dlm.json").is_file()


def test_accuracy_sweep_rows(model, capsys, tmp_path):
    from sparse_diffusion.bench_dlm import accuracy_sweep

    points = {"dense": None, "default": {}, "top-k 0.5": {"topk_ratio": 0.5, "cache_complement": False}}
    result = accuracy_sweep((512,), count=4, points=points, model=model)
    rows = {r["label"]: r for r in result["rows"]}
    assert rows["dense"]["same_as_dense"] == 1.0 and rows["dense"]["density"] == 1.0
    assert result["setup"]["task"].endswith("gen_length = steps = 4")
    for label in ("default", "top-k 0.5"):
        row = rows[label]
        assert row["sparse_steps"] == 3 and row["fallback_calls"] == 0
        assert 0 < row["density"] <= row["effective_density"] < 1
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["same_as_dense"] <= 1
    assert rows["default"]["density"] < rows["top-k 0.5"]["density"]
    assert main(["bench", "dlm-accuracy", "--context", "512", "--count", "2", "--json", str(tmp_path / "a.json")]) == 0
    assert "dlm default" in capsys.readouterr().out and (tmp_path / "a.json").is_file()


def test_bench_dlm_rows_without_a_sparse_step_give_no_speedup(capsys, tmp_path):
    path = tmp_path / "dlm.json"
    # 4 steps all dense (warm-up 10), and a context of one 128-token key block
    assert (
        main(
            [
                "bench",
                "dlm",
                "--context",
                "300,100",
                "--heads",
                "1",
                "--head-dim",
                "32",
                "--layers",
                "1",
                "--steps",
                "4",
                "--gen-length",
                "16",
                "--dense-steps",
                "10",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = {r["context"]: r for r in json.loads(path.read_text())["rows"]}
    for n in (300, 100):
        assert rows[n]["speedup"] is None and rows[n]["attention_speedup"] is None and rows[n]["density"] is None
        assert rows[n]["sparse_steps"] == 0
    assert out.count("no sparse step") == 3 and "both runs were dense and no speed-up is given" in out


def test_dlm_accuracy_with_config_compares_dense_and_that_config_only(model, capsys, tmp_path):
    from sparse_diffusion.bench_dlm import accuracy_sweep
    from sparse_diffusion.config import SparseAttentionConfig

    base = SparseAttentionConfig(policy="mass", mass_threshold=0.9, dense_steps=1)
    result = accuracy_sweep((512,), count=2, base=base, model=model)
    assert [r["label"] for r in result["rows"]] == ["dense", "base config"]
    assert result["rows"][1]["config"]["policy"] == "mass" and result["rows"][1]["dense_steps"] == 1
    path = tmp_path / "a.json"
    assert (
        main(
            [
                "bench",
                "dlm-accuracy",
                "--context",
                "512",
                "--count",
                "2",
                "--config",
                '{"policy": "mass", "mass_threshold": 0.9}',
                "--json",
                str(path),
            ]
        )
        == 0
    )
    rows = json.loads(path.read_text())["rows"]
    assert [r["label"] for r in rows] == ["dense", "--config"] and rows[1]["config"]["mass_threshold"] == 0.9
    assert "SparseD" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(context_lengths=512), "context_lengths=512"),
        (dict(count=0), "count=0"),
        (dict(batch_size=0), "batch_size=0"),
        (dict(batch_size=-1), "batch_size=-1"),
        (dict(points=["dense"]), "points=['dense']"),
        (dict(points={"x": 0.3}), "points={'x': 0.3}"),
    ],
)
def test_accuracy_sweep_rejects_odd_arguments_before_loading_the_model(kwargs, words):
    from sparse_diffusion.bench_dlm import accuracy_sweep
    from sparse_diffusion.errors import SparseDiffusionError

    args = {"context_lengths": (512,), "count": 2, **kwargs}
    with pytest.raises(SparseDiffusionError, match=__import__("re").escape(words)):
        accuracy_sweep(**args, model=object())  # not a model: the check comes first


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(context_lengths=256), "context_lengths=256"),
        (dict(heads=0), "heads=0"),
        (dict(kv_heads=0), "kv_heads=0"),
        (dict(layers=0), "layers=0"),
        (dict(head_dim=0), "head_dim=0"),
        (dict(gen_length=8.0), "gen_length=8.0"),
        (dict(density="0.2"), "density='0.2'"),
        (dict(block_size=64.0), "block_size=64.0"),
    ],
)
def test_bench_dlm_rejects_odd_arguments(kwargs, words):
    from sparse_diffusion.bench_dlm import bench_dlm
    from sparse_diffusion.errors import SparseDiffusionError

    args = dict(context_lengths=(256,), heads=2, head_dim=16, layers=1, gen_length=8, steps=2, block_size=32)
    with pytest.raises(SparseDiffusionError, match=__import__("re").escape(words)):
        bench_dlm(**{**args, **kwargs})
