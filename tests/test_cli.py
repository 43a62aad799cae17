"""The `sparse-diffusion` command: demo (reduced size), generate from a saved checkpoint, compare, bench."""

import json

import numpy as np
import pytest

from sparse_diffusion.cli import main
from sparse_diffusion.media import read_frames, write_video


def test_demo_writes_videos_report_and_masks(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--steps", "4", "--frames", "9", "--height", "128", "--width", "128",
               "--weights", "random", "--config", '{"block_size": 32, "dense_steps": 1}'])
    assert rc == 0
    for name in ("dense.mp4", "sparse.mp4", "report.json", "masks.png"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == "random+locality-prior"
    assert report["dense_steps"] == 1 and report["sparse_steps"] == 3
    assert 0 < report["density"] < 1
    q = report["quality"]
    assert len(q["per_frame_psnr"]) == 9 and np.isfinite(q["mean_psnr"]) and 0 < q["mean_ssim"] <= 1
    assert report["call"]["output_shape"] == [9, 128, 128, 3]
    assert set(report["wall_time_s"]) == {"dense", "sparse"} and report["attention_time_s"]["sparse"] > 0
    assert report["config"]["block_size"] == [32, 32]
    assert read_frames(out / "sparse.mp4").shape == (9, 128, 128, 3)
    assert "PSNR" in capsys.readouterr().out


def test_generate_from_a_saved_checkpoint(tmp_path):
    from sparse_diffusion.pipelines.tiny import build_tiny_wan_pipeline

    folder = tmp_path / "tiny-wan"
    build_tiny_wan_pipeline().save_pretrained(folder)
    common = ["--model", str(folder), "--prompt", "a red circle", "--frames", "9", "--height", "64", "--width", "64",
              "--steps", "3", "--config", '{"block_size": 16, "dense_steps": 1, "sparse_density_limit": 1.0}']
    assert main(["generate", *common, "--out", str(tmp_path / "s")]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["mode"] == "sparse" and report["sparse_report"]["sparse_steps"] == 2
    assert main(["generate", *common, "--dense", "--out", str(tmp_path / "d")]) == 0
    dense = read_frames(tmp_path / "d" / "video.mp4")
    assert dense.shape == (9, 64, 64, 3)
    assert main(["generate", *common, "--both", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "masks.png").is_file()


def test_generate_both_on_an_image_pipeline_writes_pngs(tmp_path):
    from sparse_diffusion.pipelines.tiny import build_tiny_flux_pipeline

    folder = tmp_path / "tiny-flux"
    build_tiny_flux_pipeline().save_pretrained(folder)
    out = tmp_path / "b"
    assert main(["generate", "--model", str(folder), "--prompt", "a red circle", "--height", "64", "--width", "64",
                 "--steps", "2", "--both", "--out", str(out), "--config", '{"dense_steps": 1, "block_size": 64}']) == 0
    assert (out / "dense.png").is_file() and (out / "sparse.png").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["weights"].startswith("loaded from") and report["call"]["output_shape"] == [1, 64, 64, 3]


def test_generate_and_config_errors_exit_cleanly(tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "missing"), "--prompt", "x", "--config", "{bad"]) == 2
    assert "JSON" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path), "--config", '{"dense_step": 2}']) == 2
    assert "unknown SparseAttentionConfig fields" in capsys.readouterr().err


def test_compare_identical_and_different_videos(tmp_path, capsys):
    frames = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    frames[:, 8:24, 8:24] = 200
    write_video(frames, tmp_path / "a.mp4")
    write_video(frames, tmp_path / "b.mp4")
    noisy = frames.copy()
    noisy[:, :4] = 255
    write_video(noisy, tmp_path / "c.mp4")
    assert main(["compare", str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]) == 0
    assert "inf (identical)" in capsys.readouterr().out
    assert main(["compare", str(tmp_path / "a.mp4"), str(tmp_path / "c.mp4"), "--json", str(tmp_path / "m.json")]) == 0
    result = json.loads((tmp_path / "m.json").read_text())
    assert np.isfinite(result["mean_psnr"]) and result["frames"] == 5


def test_bench_attention_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    rc = main(["bench", "attention", "--seq-len", "600", "--heads", "4", "--kv-heads", "2", "--head-dim", "64",
               "--density", "0.3", "--block-size", "64", "--backends", "dense,gather,reference,triton",
               "--repeats", "1", "--json", str(path)])
    assert rc == 0
    results = {r["backend"]: r for r in json.loads(path.read_text())["results"]}
    assert results["dense"]["speedup_vs_dense"] == 1.0
    for name in ("gather", "reference", "triton"):  # triton runs in the interpreter under the tests
        r = results[name]
        assert r["median_s"] > 0 and r["speedup_vs_dense"] > 0 and r["max_abs_err"] < 1e-4 and r["returns_lse"]
    assert "speedup" in capsys.readouterr().out


def test_bench_skips_backends_that_cannot_serve(tmp_path):
    path = tmp_path / "bench.json"
    assert main(["bench", "attention", "--seq-len", "256", "--heads", "2", "--head-dim", "48", "--block-size", "64",
                 "--backends", "dense,flex,flash_attn", "--repeats", "1", "--json", str(path)]) == 0
    results = {r["backend"]: r for r in json.loads(path.read_text())["results"]}
    assert "power-of-two" in results["flex"]["skipped"]
    assert "CUDA" in results["flash_attn"]["skipped"]


def test_bench_without_dense_row(capsys):
    assert main(["bench", "attention", "--seq-len", "256", "--heads", "2", "--block-size", "64",
                 "--backends", "gather", "--repeats", "1"]) == 0
    assert "n/a" in capsys.readouterr().out


def test_bench_rejects_unknown_backend():
    with pytest.raises(SystemExit):
        main(["bench", "attention", "--dtype", "float64"])
    assert main(["bench", "attention", "--seq-len", "128", "--backends", "dense,cuda"]) == 2
