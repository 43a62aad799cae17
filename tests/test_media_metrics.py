"""Video/image I/O (sparse_diffusion.media) and PSNR/SSIM (sparse_diffusion.metrics)."""

import json
import math

import numpy as np
import pytest

from sparse_diffusion.errors import SparseDiffusionError
from sparse_diffusion.media import read_frames, save_mask_grid, write_video
from sparse_diffusion.metrics import compare_videos, psnr, ssim


def _moving_square(frames=9, height=64, width=64):
    """Float [F, H, W, 3] in [0, 1]: a yellow square moving left over a gray gradient."""
    ramp = np.linspace(0.2, 0.5, width, dtype=np.float32)
    video = np.empty((frames, height, width, 3), dtype=np.float32)
    video[:] = ramp[None, None, :, None]
    for f in range(frames):
        x = 40 - 3 * f
        video[f, 20:36, x : x + 16] = (0.9, 0.8, 0.1)
    return video


def _to_uint8(video):
    return np.round(np.clip(video, 0, 1) * 255).astype(np.uint8)


def test_mp4_round_trip(tmp_path):
    video = _moving_square()
    path = write_video(video, tmp_path / "sub" / "square.mp4", fps=8)
    assert path.exists() and path.suffix == ".mp4"
    back = read_frames(path)
    assert back.dtype == np.uint8
    assert back.shape == (9, 64, 64, 3)
    assert psnr(back, _to_uint8(video)) > 30.0
    # the square moves, so frames differ from each other
    assert psnr(back[0], back[-1]) < 25.0


def test_write_accepts_uint8_and_list_and_pads_odd_sizes(tmp_path):
    video = _to_uint8(_moving_square(frames=3, height=31, width=33))
    back = read_frames(write_video(list(video), tmp_path / "odd.mp4"))
    assert back.shape == (3, 32, 34, 3)  # yuv420p needs even sides: padded by one edge row/column
    assert psnr(back[:, :31, :33], video) > 30.0


def test_write_rejects_bad_input(tmp_path):
    with pytest.raises(SparseDiffusionError, match="batch"):
        write_video(np.zeros((1, 3, 8, 8, 3), np.uint8), tmp_path / "x.mp4")
    with pytest.raises(SparseDiffusionError, match="suffix"):
        write_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "x.avi2")
    with pytest.raises(SparseDiffusionError, match="fps"):
        write_video(np.zeros((3, 8, 8, 3), np.uint8), tmp_path / "x.mp4", fps=0)
    with pytest.raises(SparseDiffusionError, match="non-finite"):
        write_video(np.full((3, 8, 8, 3), np.nan, np.float32), tmp_path / "x.mp4")


def test_read_folder_of_pngs_in_natural_order(tmp_path):
    import imageio.v3 as iio

    video = _to_uint8(_moving_square(frames=11, height=16, width=24))
    for i, frame in enumerate(video):
        iio.imwrite(tmp_path / f"frame_{i}.png", frame)
    (tmp_path / "notes.txt").write_text("ignored")
    back = read_frames(tmp_path)
    assert back.shape == (11, 16, 24, 3)
    np.testing.assert_array_equal(back, video)  # PNG is lossless; frame_10 comes after frame_9
    one = read_frames(tmp_path / "frame_3.png")
    np.testing.assert_array_equal(one, video[3:4])


def test_read_errors(tmp_path):
    with pytest.raises(SparseDiffusionError, match="does not exist"):
        read_frames(tmp_path / "missing.mp4")
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(SparseDiffusionError, match="broken.mp4"):
        read_frames(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseDiffusionError, match="no images"):
        read_frames(tmp_path / "empty")


def test_mask_grid(tmp_path):
    import imageio.v3 as iio

    masks = [
        ("layer0/head0", np.eye(8, dtype=bool)),
        ("layer0/head1", np.tri(16, dtype=bool)),
        ("layer1/head0", np.ones((4, 12), dtype=np.int64)),
    ]
    names = save_mask_grid(masks, tmp_path / "masks.png")
    assert names == ["layer0/head0", "layer0/head1", "layer1/head0"]
    img = iio.imread(tmp_path / "masks.png")
    # 2 x 2 grid; 8x8 -> x16, 16x16 -> x8, 4x12 -> x11 (44x132), so cells are 128 x 132; 2 px separators
    assert img.shape == (2 * 128 + 3 * 2, 2 * 132 + 3 * 2)
    first = img[2:130, 2:130]
    np.testing.assert_array_equal(first, np.kron(np.eye(8, dtype=np.uint8) * 255, np.ones((16, 16), np.uint8)))
    assert img[0, 0] == 128
    with pytest.raises(SparseDiffusionError, match="dtype"):
        save_mask_grid([("m", np.random.rand(4, 4))], tmp_path / "bad.png")


def test_psnr_identical_is_inf_and_json_friendly():
    a = _to_uint8(_moving_square(frames=2))
    assert psnr(a, a.copy()) == float("inf")
    report = compare_videos(a, a.copy())
    assert report["mean_psnr"] == float("inf")
    assert report["identical_frames"] == 2
    assert "identical" in report["note"]
    assert json.loads(json.dumps(report))["mean_psnr"] == float("inf")


def test_psnr_matches_hand_formula():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, size=a.shape)
    b = np.clip(a.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    expected = 10 * np.log10(255.0**2 / mse)
    assert psnr(a, b) == pytest.approx(expected, rel=1e-12)
    # the same data as [0, 1] floats: data_range 1.0 gives the same dB
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(expected, rel=1e-9)
    assert psnr(a / 255.0, b / 255.0, data_range=None) == pytest.approx(expected, rel=1e-9)


def test_ssim_identical_and_small_frames():
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    assert ssim(frame, frame.copy()) == pytest.approx(1.0, abs=1e-12)
    noisy = np.clip(frame.astype(np.int64) + rng.integers(-40, 41, size=frame.shape), 0, 255).astype(np.uint8)
    assert ssim(frame, noisy) < 0.99
    tiny = rng.random((4, 5, 3))
    assert ssim(tiny, tiny, data_range=1.0) == pytest.approx(1.0)  # window shrunk to 3x3
    with pytest.raises(SparseDiffusionError, match="too small"):
        ssim(tiny[:2], tiny[:2], data_range=1.0)


def test_compare_videos_report():
    a = _moving_square(frames=4)
    b = a.copy()
    b[1:] += np.random.default_rng(2).normal(0, 0.02, size=b[1:].shape).astype(np.float32)
    report = compare_videos(a, np.clip(b, 0, 1))
    assert report["data_range"] == 1.0 and report["frames"] == 4
    assert report["identical_frames"] == 1 and report["per_frame_psnr"][0] == float("inf")
    finite = report["per_frame_psnr"][1:]
    assert all(math.isfinite(p) and 25 < p < 50 for p in finite)
    assert report["mean_psnr"] == pytest.approx(np.mean(finite))
    assert report["mean_ssim"] == pytest.approx(np.mean(report["per_frame_ssim"]))
    assert "3 frames that differ" in report["note"]


def test_shape_and_dtype_errors():
    a = np.zeros((3, 8, 8, 3), np.uint8)
    with pytest.raises(SparseDiffusionError, match=r"\(3, 8, 8, 3\).*\(3, 8, 10, 3\)"):
        compare_videos(a, np.zeros((3, 8, 10, 3), np.uint8))
    with pytest.raises(SparseDiffusionError, match=r"\(8, 8, 3\)"):
        psnr(a, a[0])
    with pytest.raises(SparseDiffusionError, match="mixed dtypes"):
        compare_videos(a, a.astype(np.float32))
    with pytest.raises(SparseDiffusionError, match="frames\\[0\\]"):
        compare_videos(a[None], a[None])
    with pytest.raises(SparseDiffusionError, match="data_range"):
        psnr(a, a, data_range=0)
    with pytest.raises(SparseDiffusionError, match="non-finite"):
        psnr(np.full(3, np.nan), np.zeros(3))
