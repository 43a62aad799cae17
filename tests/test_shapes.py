"""The procedural moving-shape clips and the prompt-following check used to judge the trained video model."""

import pytest
import torch

from sparse_diffusion.testing import shapes


def _clip(seed: int):
    spec = shapes.random_spec(torch.Generator().manual_seed(seed))
    return spec, shapes.render(spec, 33, 128, 128).permute(1, 2, 3, 0)  # [F, H, W, 3]


@pytest.mark.parametrize("seed", range(6))
def test_drawn_clips_follow_their_prompt_and_measure_their_travel(seed):
    spec, video = _clip(seed)
    check = shapes.check_prompt(video, spec.prompt)
    assert check.follows
    assert check.colour_match > 0.9
    assert check.along == pytest.approx(spec.travel, abs=0.01)  # the centroid moves by the drawn travel
    assert abs(check.across) < 0.01


def test_reversed_recoloured_or_empty_clips_do_not_follow():
    spec, video = _clip(0)
    assert not shapes.check_prompt(video.flip(0), spec.prompt).follows  # played backwards
    assert shapes.check_prompt(video.flip(0), spec.prompt).along == pytest.approx(-spec.travel, abs=0.01)
    other = next(c for c in shapes.COLOURS if c != spec.colour)
    wrong = shapes.check_prompt(video, spec.prompt.replace(spec.colour, other))
    assert wrong.colour_match < 0.1 and not wrong.follows
    still = video[:1].expand_as(video)  # the first frame held still
    assert shapes.check_prompt(still, spec.prompt).along == 0.0
    blank = torch.full_like(video, shapes.BACKGROUND)
    empty = shapes.check_prompt(blank, spec.prompt)
    assert empty.foreground == 0.0 and empty.colour_match == 0.0 and not empty.follows


def test_jumps_and_duplicated_objects_are_not_motion():
    spec = shapes.ClipSpec("red", "circle", "right", (0.2, 0.5), 0.6)  # ends four radii from where it starts
    video = shapes.render(spec, 33, 128, 128).permute(1, 2, 3, 0)
    ref = shapes.check_prompt(video, spec.prompt)
    assert ref.max_step < 0.02 and 0.95 < ref.max_spread < 1.15
    # the object stays put, then a copy appears where it would have ended while the original fades out
    start, end = video[:1].expand(16, -1, -1, -1), video[-1:].expand(17, -1, -1, -1)
    both = torch.maximum(video[:1], video[-1:])  # two copies in one frame
    jumped = torch.cat([start, end])
    duplicated = torch.cat([start, both.expand(4, -1, -1, -1), end[:13]])
    for fake in (jumped, duplicated):
        check = shapes.check_prompt(fake, spec.prompt)
        assert check.along == pytest.approx(ref.along, abs=0.01) and check.colour_match > 0.9
        assert not check.follows
    assert shapes.check_prompt(jumped, spec.prompt).max_step > 0.25
    assert shapes.check_prompt(duplicated, spec.prompt).max_spread > 1.5


def test_check_prompt_rejects_unknown_prompts_and_layouts():
    spec, video = _clip(1)
    with pytest.raises(ValueError, match="no colour"):
        shapes.check_prompt(video, "a dog running")
    with pytest.raises(ValueError, match=r"names \['blue', 'red'\]"):
        shapes.check_prompt(video, "a red circle moving left past a blue one")
    with pytest.raises(ValueError, match=r"\[F, H, W, 3\]"):
        shapes.check_prompt(video.permute(3, 0, 1, 2), spec.prompt)
    with pytest.raises(ValueError, match="F >= 1"):
        shapes.check_prompt(video[:0], spec.prompt)
    with pytest.raises(ValueError, match="NaN"):
        shapes.check_prompt(torch.full_like(video, float("nan")), spec.prompt)
    with pytest.raises(ValueError, match="uint8"):
        shapes.check_prompt(video * 2 - 1, spec.prompt)  # [-1, 1] frames


def test_check_prompt_reads_uint8_numpy_reversed_and_punctuated_input():
    spec, video = _clip(2)
    ref = shapes.check_prompt(video, spec.prompt)
    as_uint8 = shapes.check_prompt((video * 255).round().to(torch.uint8).numpy(), spec.prompt)
    assert as_uint8.follows and as_uint8.along == pytest.approx(ref.along, abs=0.01)
    shouted = spec.prompt.upper().replace(" MOVING", ", moving") + "!"
    assert shapes.check_prompt(video, shouted) == ref
    backwards = shapes.check_prompt(video.numpy()[::-1], spec.prompt)  # negative strides
    assert backwards.along == pytest.approx(-ref.along, abs=1e-6)
