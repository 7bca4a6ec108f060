import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import preview
from cli import UserError, run_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def source(tmp_path):
    image = np.zeros((40, 30, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, 30, dtype=np.uint8)
    cv2.circle(image, (15, 20), 8, (0, 200, 255), -1)
    cv2.imwrite(str(tmp_path / "in.png"), image)
    return tmp_path / "in.png"


def test_preview_cli(source, tmp_path, capsys):
    out = tmp_path / "grid.png"
    presets = ["original", "ours-clahe", "simclr", "ours:solarize.p=0.9,jitter.strength=0.8,clahe.clip=2"]
    preview.main(["--image", str(source), "--preset", *presets, "--n", "3", "--tile", "64", "--out", str(out)])
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape == (4 * 64, preview.LABEL_WIDTH + (1 + 3) * 64, 3)
    printed = capsys.readouterr().out
    assert "solarize             p=0.9    threshold=0.5" in printed and "wrote" in printed
    with pytest.raises(UserError, match="cannot read"):
        preview.main(["--image", str(tmp_path / "missing.png"), "--out", str(out)])
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(UserError, match="cannot read image .*not an image"):
        preview.main(["--image", str(tmp_path / "text.png"), "--out", str(out)])
    with pytest.raises(UserError, match="unknown augmentation"):
        preview.main(["--image", str(source), "--preset", "nope", "--out", str(out)])
    with pytest.raises(UserError, match="must name a .png"):
        preview.main(["--image", str(source), "--out", str(tmp_path / "grid.jpg")])


def test_preview_of_a_policy_file_and_multicrop(source, tmp_path):
    import augmentations as aug

    policy = tmp_path / "policy.json"
    policy.write_text(aug.policy_to_json(aug.resolve_policy("ours:solarize.p=0.5", 32)))
    out = tmp_path / "multi.png"
    preview.main(["--image", str(source), "--preset", "simclr", str(policy), "--size", "32", "--n", "2",
                  "--local-crops", "3", "--local-size", "16", "--tile", "64", "--out", str(out)])
    grid = cv2.imread(str(out))
    assert grid.shape == (2 * 64, preview.LABEL_WIDTH + (1 + 2) * 64 + 3 * 32, 3)
    for top in (0, 64):  # a local view fills only the top half of its column
        assert (grid[top + 34 : top + 64, -32:] == 255).all() and not (grid[top : top + 32, -32:] == 255).all()


def test_preview_from_the_synthetic_dataset(tmp_path):
    out = tmp_path / "synthetic.png"
    preview.main(["--dataset", "synthetic", "--index", "3", "--preset", "ours", "--n", "2", "--out", str(out)])
    assert cv2.imread(str(out)).shape == (96, preview.LABEL_WIDTH + 3 * 96, 3)
    with pytest.raises(UserError, match="--index 5000 is outside"):
        preview.main(["--dataset", "synthetic", "--index", "5000", "--out", str(out)])


def test_long_labels_wrap():
    tile = preview.label_tile("ours-clahe+blur:solarize.p=0.4,jitter.strength=0.6,blur.sigma_max=1.5", 96)
    inked_rows = np.flatnonzero((tile < 128).any(axis=(1, 2)))
    assert inked_rows.max() - inked_rows.min() > 20  # more than one line of text


@pytest.mark.parametrize("argv, message", [
    (["--preset", "ours:solarize.p=2"], "error: 'solarize.p=2': a probability must be in [0, 1]"),
    (["--n", "0"], "error: --n must be at least 1, --tile at least 8 and --local-crops at least 0"),
    (["--bogus"], "error: unrecognized arguments: --bogus (see --help)"),
    (["--local-crops", "2", "--preset", "supervised"], "error: multi-crop needs the random resized crop 'crop'"),
    (["--seed", "-1"], "error: argument --seed: a seed must be in [0, 2**31), got -1"),
    (["--size", "0"], "error: --size must be at least 1 px, got 0"),  # 0 used to mean the image's own size
    (["--out", "{tmp}/file/v.png"], "error: cannot create --out's directory"),  # was mkdir's traceback
])
def test_user_errors_are_one_line_and_exit_2(tmp_path, source, capsys, argv, message):
    (tmp_path / "file").write_text("kept")  # --out file/v.png: its directory cannot be made
    with pytest.raises(SystemExit) as exit:
        run_main(lambda *_: preview.main(["--image", str(source), "--out", str(tmp_path / "v.png"),
                                          *[arg.format(tmp=tmp_path) for arg in argv]]))
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message)


@pytest.mark.parametrize("content", ["empty", "1x1"])
def test_an_empty_or_tiny_image_is_one_line(tmp_path, capsys, content):
    """Both used to end in a traceback: cv2.error on the empty buffer, Albumentations' ValueError on 1x1."""
    image = tmp_path / "image.png"
    if content == "empty":
        image.write_bytes(b"")
    else:
        assert cv2.imwrite(str(image), np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(SystemExit) as exit:
        run_main(lambda *_: preview.main(["--image", str(image), "--out", str(tmp_path / "v.png")]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit.value.code == 2 and len(lines) == 1
    assert lines[0] == (f"error: cannot read image {image}: not an image file OpenCV can decode" if content == "empty"
                        else f"error: image {image} is 1x1 px; the preview needs at least 8 px on each side")


def test_script_error_exits_2(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "preview.py"), "--image", str(tmp_path / "missing.png"),
                             "--out", str(tmp_path / "v.png")], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: cannot read image {tmp_path / 'missing.png'}: no such file"]
