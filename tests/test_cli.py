"""The `sparse-diffusion` command: demo (reduced size), generate from a saved checkpoint, compare, bench."""

import json

import numpy as np
import pytest

from sparse_diffusion.cli import main
from sparse_diffusion.media import read_frames, write_video


def test_demo_writes_videos_report_and_masks(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--steps",
            "4",
            "--frames",
            "9",
            "--height",
            "128",
            "--width",
            "128",
            "--weights",
            "random",
            "--config",
            '{"block_size": 32, "dense_steps": 1}',
        ]
    )
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
    from sparse_diffusion.testing import build_tiny_wan_pipeline

    folder = tmp_path / "tiny-wan"
    build_tiny_wan_pipeline().save_pretrained(folder)
    common = [
        "--model",
        str(folder),
        "--prompt",
        "a red circle",
        "--frames",
        "9",
        "--height",
        "64",
        "--width",
        "64",
        "--steps",
        "3",
        "--config",
        '{"block_size": 16, "dense_steps": 1, "sparse_density_limit": 1.0}',
    ]
    assert main(["generate", *common, "--out", str(tmp_path / "s")]) == 0
    report = json.loads((tmp_path / "s" / "report.json").read_text())
    assert report["mode"] == "sparse" and report["sparse_report"]["sparse_steps"] == 2
    assert main(["generate", *common, "--dense", "--out", str(tmp_path / "d")]) == 0
    dense = read_frames(tmp_path / "d" / "video.mp4")
    assert dense.shape == (9, 64, 64, 3)
    assert main(["generate", *common, "--both", "--out", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "masks.png").is_file()


def test_generate_both_on_an_image_pipeline_writes_pngs(tmp_path):
    from sparse_diffusion.testing import build_tiny_flux_pipeline

    folder = tmp_path / "tiny-flux"
    build_tiny_flux_pipeline().save_pretrained(folder)
    out = tmp_path / "b"
    assert (
        main(
            [
                "generate",
                "--model",
                str(folder),
                "--prompt",
                "a red circle",
                "--height",
                "64",
                "--width",
                "64",
                "--steps",
                "2",
                "--both",
                "--out",
                str(out),
                "--config",
                '{"dense_steps": 1, "block_size": 64}',
            ]
        )
        == 0
    )
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
    rc = main(
        [
            "bench",
            "attention",
            "--seq-len",
            "600",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--head-dim",
            "64",
            "--density",
            "0.3",
            "--block-size",
            "64",
            "--backends",
            "dense,gather,reference,triton",
            "--repeats",
            "1",
            "--json",
            str(path),
        ]
    )
    assert rc == 0
    results = {r["backend"]: r for r in json.loads(path.read_text())["results"]}
    assert results["dense"]["speedup_vs_dense"] == 1.0
    for name in ("gather", "reference", "triton"):  # triton runs in the interpreter under the tests
        r = results[name]
        assert r["median_s"] > 0 and r["speedup_vs_dense"] > 0 and r["max_abs_err"] < 1e-4 and r["returns_lse"]
    assert "speedup" in capsys.readouterr().out


def test_bench_skips_backends_that_cannot_serve(tmp_path):
    path = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "attention",
                "--seq-len",
                "256",
                "--heads",
                "2",
                "--head-dim",
                "48",
                "--block-size",
                "64",
                "--backends",
                "dense,flex,flash_attn",
                "--repeats",
                "1",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    results = {r["backend"]: r for r in json.loads(path.read_text())["results"]}
    assert "power-of-two" in results["flex"]["skipped"]
    assert "CUDA" in results["flash_attn"]["skipped"]


def test_bench_without_dense_row(capsys):
    assert (
        main(
            [
                "bench",
                "attention",
                "--seq-len",
                "256",
                "--heads",
                "2",
                "--block-size",
                "64",
                "--backends",
                "gather",
                "--repeats",
                "1",
            ]
        )
        == 0
    )
    assert "n/a" in capsys.readouterr().out


def test_bench_rejects_unknown_backend():
    with pytest.raises(SystemExit):
        main(["bench", "attention", "--dtype", "float64"])
    assert main(["bench", "attention", "--seq-len", "128", "--backends", "dense,cuda"]) == 2


def _all_parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_of_every_command_has_help_and_one_default():
    from sparse_diffusion.cli import build_parser

    parsers = list(_all_parsers(build_parser()))
    assert {p.prog.split(" ", 1)[-1] for p in parsers} >= {
        "demo",
        "generate",
        "compare",
        "bench attention",
        "bench quality",
        "bench dlm",
        "bench dlm-accuracy",
    }
    for p in parsers:
        formatter = p._get_formatter()
        for action in p._actions:
            name = f"{p.prog} {action.option_strings or action.dest}"
            if action.option_strings or action.dest not in ("command", "bench_command"):
                assert action.help, f"{name} has no help"
            assert not action.help or formatter._expand_help(action).count("(default") <= 1, name
        text = p.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text, p.prog
    flat = " ".join(build_parser()._subparsers._group_actions[0].choices["generate"].format_help().split())
    assert "untouched dense run (default" not in flat and "accelerated run (default)" in flat
    assert "(default: torch's) (default" not in flat
    dlm = " ".join(_all_parsers_by_prog()["bench dlm"].format_help().split())
    assert "(default: 4096,8192,16384)" in dlm and "--threads THREADS torch threads (default: torch's) --warmup" in dlm


def _all_parsers_by_prog():
    from sparse_diffusion.cli import build_parser

    return {p.prog.split(" ", 1)[-1]: p for p in _all_parsers(build_parser())}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "dlm", "--context", "1024,abc"], "argument --context: in '1024,abc': 'abc' is not an integer"),
        (
            ["bench", "attention", "--block-size", "128,abc"],
            "argument --block-size: in '128,abc': 'abc' is not an integer",
        ),
        (["bench", "dlm-accuracy", "--count", "0"], "argument --count: 0 must be a positive integer"),
        (["bench", "dlm-accuracy", "--count", "-1"], "argument --count: -1 must be a positive integer"),
        (["bench", "dlm-accuracy", "--threads", "0"], "argument --threads: 0 must be a positive integer"),
        (["bench", "dlm", "--threads", "0"], "argument --threads: 0 must be a positive integer"),
        (["demo", "--steps", "0"], "argument --steps: 0 must be a positive integer"),
        (["demo", "--steps", "-3"], "argument --steps: -3 must be a positive integer"),
        (
            ["demo", "--frames", "0"],
            "argument --frames: 0 frames: the Wan VAE needs a positive 4k+1 (1, 5, 9, ..., 33)",
        ),
        (
            ["demo", "--frames", "8"],
            "argument --frames: 8 frames: the Wan VAE needs a positive 4k+1 (1, 5, 9, ..., 33), e.g. 5",
        ),
        (["demo", "--height", "100"], "argument --height: 100 pixels must be a multiple of 16"),
        (["bench", "dlm", "--dense-steps", "1.5"], "argument --dense-steps: dense_steps=1.5 as a float"),
        (["bench", "dlm", "--block-size", "100"], "argument --block-size: block_size=(100, 100) is not valid"),
        (["bench", "dlm", "--density", "0"], "argument --density: topk_ratio=0.0 must be a number in (0, 1]"),
    ],
)
def test_bad_arguments_give_argparse_errors_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2 and message in " ".join(captured.err.split())
    assert "Traceback" not in captured.err and captured.out == ""


def test_cuda_device_without_cuda_is_an_argparse_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit):
        main(["bench", "dlm", "--device", "cuda"])
    assert "CUDA is not available here" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--locality", "2"], "--locality shapes the random weights only"),
        (["demo", "--config", "nonexistent.json"], "--config file 'nonexistent.json' was not found"),
        (["demo", "--config", "no/such/config"], "--config file 'no/such/config' was not found"),
        (
            ["bench", "dlm", "--context", "16"],
            "context lengths [16] must exceed gen_length=32 (the prompt is the rest); "
            "give longer contexts or a smaller gen_length.",
        ),
    ],
)
def test_bad_values_exit_cleanly_before_loading(argv, message, capsys, monkeypatch):
    import sparse_diffusion.cli.output as output

    monkeypatch.setattr(output, "prepare_cpu_kernel", lambda: pytest.fail("kernel prepared before validation"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "steps must be" not in err


def test_kernel_note_only_when_not_built(capsys, monkeypatch):
    from sparse_diffusion.kernels.cpu import launch as cpu_kernel

    from sparse_diffusion.cli.output import prepare_cpu_kernel

    monkeypatch.setattr(cpu_kernel, "build_error", lambda: None)
    monkeypatch.setattr(cpu_kernel, "is_built", lambda: True)
    prepare_cpu_kernel()
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(cpu_kernel, "is_built", lambda: False)
    prepare_cpu_kernel()
    assert "compiled on first use" in capsys.readouterr().out


def test_paired_summary_names_replans_and_fallbacks(capsys, tmp_path):
    from sparse_diffusion.cli.output import print_paired

    report = {
        "model": "m",
        "weights": "w",
        "dense_steps": 2,
        "sparse_steps": 3,
        "sparse_report": {
            "dense_fallback_steps": 1,
            "planned_density": 0.3,
            "replans": {"kept-mass estimate below refresh_threshold": 56},
            "fallbacks": [
                {"layer": "a", "reason": "density above break-even", "count": 2},
                {"layer": "b", "reason": "density above break-even", "count": 3},
            ],
        },
        "quality": {"mean_psnr": 30.0, "mean_ssim": 0.9},
        "density": 0.3,
        "effective_density": 0.5,
        "end_to_end_speedup": 1.5,
        "wall_time_s": {"dense": 2.0, "sparse": 1.0},
        "attention_time_s": {"dense": 1.0, "sparse": 0.5},
        "timing_note": "n",
        "files": ["report.json"],
    }
    print_paired(report, tmp_path)
    out = capsys.readouterr().out
    assert "+ 1 ran dense\n" in out and "see report.json fallbacks" not in out
    assert (
        "attention calls run dense after the warm-up: 56 re-planned (kept-mass estimate below "
        "refresh_threshold); 5 fell back (density above break-even)"
    ) in out


def test_demo_judges_clips_against_a_shapes_prompt(capsys, tmp_path):
    """The trained demo scores both clips with `shapes.check_prompt`; the summary prints the verdicts."""
    import torch

    from sparse_diffusion.cli.demo import prompt_judge
    from sparse_diffusion.cli.output import print_paired
    from sparse_diffusion.testing import shapes

    assert prompt_judge("a dog on a beach") is None
    spec = shapes.random_spec(torch.Generator().manual_seed(0))
    clip = shapes.render(spec, 33, 64, 64).permute(1, 2, 3, 0).numpy()
    judge = prompt_judge(spec.prompt)
    forward, backward = judge(clip), judge(clip[::-1].copy())
    assert forward["follows_prompt"] and forward["moved_along"] == pytest.approx(spec.travel, abs=0.02)
    assert not backward["follows_prompt"] and backward["moved_along"] < 0
    report = {
        "model": "m",
        "weights": "w",
        "dense_steps": 2,
        "sparse_steps": 3,
        "sparse_report": {"dense_fallback_steps": 0, "planned_density": 0.3, "replans": {}, "fallbacks": []},
        "quality": {"mean_psnr": 30.0, "mean_ssim": 0.9},
        "density": 0.3,
        "effective_density": 0.3,
        "end_to_end_speedup": 1.5,
        "wall_time_s": {"dense": 2.0, "sparse": 1.0},
        "attention_time_s": {"dense": 1.0, "sparse": 0.5},
        "timing_note": "n",
        "files": ["report.json"],
        "judged": {"dense": forward, "sparse": backward},
    }
    print_paired(report, tmp_path)
    out = capsys.readouterr().out
    assert f"dense clip vs its prompt: {spec.colour} colour match 1.00" in out and out.count("follows it") == 1
    assert prompt_judge("a red circle moving left, then up") is None  # two directions: not judged
    assert "sparse clip vs its prompt" in out and "does not follow it" in out
