"""MDPR attention pictures: stripes and heat overlays (mdpr.visualize), and the command line
(projects/MDPR/visualize_attention.py)."""

import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kdreid.cli import build_inference_model
from kdreid.errors import ConfigError, UnreadableImageError, WeightsError
from mdpr import visualize
from mdpr.modeling import Generate
from tests.conftest import REPO, load_script_module

TOOL = os.path.join(REPO, "projects", "MDPR", "visualize_attention.py")
TINY = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")
NOT_MDPR = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")


tool = load_script_module("projects/MDPR/visualize_attention.py")  # the tests share its functions


def noise_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def panel_runs(picture, box_top, box_height):
    """(start, width) of the runs of columns that are not all white over the panels' rows."""
    band = np.asarray(picture.convert("RGB"))[box_top : box_top + box_height]
    filled = (band < 250).any(axis=2).any(axis=0)
    runs, start = [], None
    for x, on in enumerate([*filled, False]):
        if on and start is None:
            start = x
        elif not on and start is not None:
            runs.append((start, x - start))
            start = None
    return runs


# --- Stripes ----------------------------------------------------------------------------------


def test_stripe_rows_are_those_of_tensor_split():
    for rows in range(1, 25):
        for stripes in range(1, rows + 1):
            expected = [len(c) for c in torch.tensor_split(torch.arange(rows), stripes)]
            assert visualize.stripe_rows(rows, stripes) == expected, (rows, stripes)


def test_stripe_rows_rejects_more_stripes_than_rows():
    with pytest.raises(ValueError, match="cannot split 4 rows into 5 stripes"):
        visualize.stripe_rows(4, 5)


def test_stripe_boundaries_on_known_maps():
    """24 rows in 2 stripes of 12: the boundary is after map row 12, 12 * 384 / 24 = 192.
    7 rows in 3 stripes: 3, 2, 2 rows (tensor_split), boundaries after map rows 3 and 5, i.e.
    3 * 70 / 7 = 30 and 5 * 70 / 7 = 50; for 64 pixels 27.43 -> 27 and 45.71 -> 46."""
    assert visualize.stripe_boundaries(24, 2, 384) == [192]
    assert visualize.stripe_boundaries(7, 3, 70) == [30, 50]
    assert visualize.stripe_boundaries(7, 3, 64) == [27, 46]
    assert visualize.stripe_boundaries(4, 1, 64) == []


def test_boundaries_follow_the_models_own_split():
    """The boundaries drawn from the model's stripe heights are those of stripe_boundaries."""
    for rows, stripes in [(4, 2), (7, 3), (24, 5), (5, 5)]:
        parts = Generate.stripes(SimpleNamespace(num_stripes=stripes), torch.zeros(1, 1, rows, 2))
        heights = [p.shape[2] for p in parts]
        expected = visualize.stripe_boundaries(rows, stripes, 384)
        assert visualize.pixel_boundaries(heights, 384) == expected


# --- Maps and overlay -------------------------------------------------------------------------


def test_overlay_heats_where_the_map_is_high():
    """A 4x2 map hot in its top-left quarter (rows 0-1 of column 0), upsampled x16
    (align_corners=False) to 64x32: the source coordinate of pixel p is (p + 0.5) / 16 - 0.5, so
    rows < 24 and columns < 8 read hot cells only (attention 1) and rows >= 40 or columns >= 24
    read cold cells only (0)."""
    image = noise_image(64, 32)
    attention = np.zeros((4, 2), np.float32)
    attention[:2, 0] = 1
    out = visualize.overlay(image, attention)
    grey = visualize.greyscale(image)  # the heat is laid over the image in grey
    assert out.shape == image.shape and out.dtype == np.uint8
    hot = np.abs(out[:24, :8].astype(int) - grey[:24, :8]).max(axis=2)
    heat = np.array(visualize.colormaps[visualize.CMAP](1.0)[:3]) * 255
    expected = np.rint((1 - visualize.ALPHA) * grey[:24, :8] + visualize.ALPHA * heat)
    np.testing.assert_allclose(out[:24, :8], expected, atol=1)
    assert np.median(hot) > 40  # the colour changes
    np.testing.assert_array_equal(out[40:], grey[40:])  # the rest is the grey image
    np.testing.assert_array_equal(out[:, 24:], grey[:, 24:])
    in_colour = visualize.overlay(image, attention, grey=False)  # as before: over the colours
    np.testing.assert_array_equal(in_colour[40:], image[40:])


def test_overlay_of_a_zero_map_is_the_image_in_grey():
    # on a colourful image the heat could not be told from the clothes: only the heat has colour
    image = noise_image(16, 8)
    out = visualize.overlay(image, np.zeros((16, 8)))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    luma = 0.299 * image[..., 0] + 0.587 * image[..., 1] + 0.114 * image[..., 2]
    np.testing.assert_allclose(out[..., 0], luma, atol=0.51)


def test_overlay_rejects_a_grey_image():
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        visualize.overlay(np.zeros((16, 8), np.uint8), np.zeros((16, 8)))


def test_upsample_is_bilinear_to_the_image_size():
    maps = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    out = visualize.upsample(maps, (1, 4))
    # Source x of pixel p: (p + 0.5) / 2 - 0.5 -> -0.25, 0.25, 0.75, 1.25 (ends clamped).
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))


def test_background_and_panel_titles():
    parts = np.array([[[0.2, 0.9]], [[0.3, 0.4]]])  # M = 2 maps of 1x2
    np.testing.assert_allclose(visualize.background(parts), [[0.5, 0.0]])  # 1 - 1.3 clipped to 0
    panels = visualize.attention_panels([(4, parts), (3, parts)])
    assert [title for title, _ in panels] == [
        "level 4, part 1",
        "level 4, part 2",
        "level 4, background",
        "level 3, part 1",
        "level 3, part 2",
        "level 3, background",
    ]
    assert len(visualize.attention_panels([(4, parts), (3, parts)], with_background=False)) == 4


# --- Picture ----------------------------------------------------------------------------------


def test_render_places_every_panel_and_the_stripe_boundary(tmp_path):
    """Scale 8: each input pixel is an 8x8 block; its centre pixel has the panel's exact colour."""
    image = noise_image(16, 8, seed=1)
    hot = np.zeros((16, 8), np.float32)
    hot[:8, :4] = 1
    maps = [("level 4, part 1", np.zeros((16, 8), np.float32)), ("level 4, part 2", hot)]
    path = tmp_path / "picture.png"
    size = visualize.render(image, [6], maps, str(path), scale=8)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (size.height, size.width, 3)
    assert len(size.panels) == 3 and all(box[2:] == (64, 128) for box in size.panels)
    centres = np.arange(16)[:, None] * 8 + 4, np.arange(8)[None, :] * 8 + 4

    def panel(i):
        left, top = size.panels[i][:2]
        return picture[top + centres[0], left + centres[1]]

    np.testing.assert_array_equal(panel(1), visualize.greyscale(image))  # zero attention
    np.testing.assert_array_equal(panel(2), visualize.overlay(image, hot))
    assert not np.array_equal(panel(2), visualize.greyscale(image))
    # The boundary before image row 6 is at magnified row 48: a white line across the panel.
    left, top, width, _ = size.panels[0]
    line = picture[top + 47 : top + 49, left + width // 2 : left + width]
    assert (line > 200).all()
    assert panel_runs(Image.open(path), top, 128) == [(box[0], 64) for box in size.panels]


def test_output_names_of_repeated_stems():
    paths = ["a/x.jpg", "b/x.png", "y.jpg", "c/x.jpg"]
    assert tool.output_names(paths) == ["x.png", "x_2.png", "y.png", "x_3.png"]


def test_collect_images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ["b.png", "a.JPG", "notes.txt"]:
        (folder / name).write_bytes(b"")
    single = tmp_path / "single.bmp"
    single.write_bytes(b"")
    got = tool.collect_images([str(single), str(folder)])
    assert got == [str(single), str(folder / "a.JPG"), str(folder / "b.png")]


def test_missing_path_and_empty_folder_are_named(tmp_path):
    missing = str(tmp_path / "nowhere.jpg")
    with pytest.raises(tool.ImagePathError, match="'" + missing + "' does not exist"):
        tool.collect_images([missing])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(tool.ImagePathError, match=f"folder '{empty}' holds no image"):
        tool.collect_images([str(empty)])


def test_config_options_after_input_are_not_inputs():
    args = tool.parse_args(
        ["--config-file", TINY, "--output", "out", "--input", "a.jpg", "b/", "MODEL.WEIGHTS", "m"]
    )
    assert args.input == ["a.jpg", "b/"]
    assert args.opts == ["MODEL.WEIGHTS", "m"]
    with pytest.raises(SystemExit):
        tool.parse_args(["--config-file", TINY, "--output", "out", "--input", "MODEL.WEIGHTS", "m"])


# --- Command line -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny MDPR, as trained on 10 identities (the classifiers are not
    needed: the tool builds the model with NUM_CLASSES 0 and skips them)."""
    torch.manual_seed(0)
    _, model = build_inference_model(
        TINY, ["MODEL.HEADS.NUM_CLASSES", "10"], device="cpu", load_weights=False
    )
    with torch.no_grad():  # BN statistics as after training, so that the maps are not uniform
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("mdpr") / "model_final.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A folder with an RGB PNG and an RGBA PNG, and a greyscale JPEG outside it."""
    root = tmp_path_factory.mktemp("inputs")
    folder = root / "folder"
    folder.mkdir()
    Image.fromarray(noise_image(100, 50, seed=1)).save(folder / "rgb.png")
    rgba = np.concatenate([noise_image(90, 40, seed=2), np.full((90, 40, 1), 128, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(noise_image(120, 60, seed=3)[..., 0]).save(root / "grey.jpg")
    return [str(folder), str(root / "grey.jpg")]


def run_cli(args, env=None):
    """Run the tool from the repository root in a subprocess, on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run(
        [sys.executable, TOOL, *args], cwd=REPO, capture_output=True, text=True, env=env
    )


def check_pictures(paths, num_panels, panel_width, panel_height):
    size = visualize.layout(num_panels, panel_width, panel_height)
    for path in paths:
        with Image.open(path) as picture:
            picture.load()
        assert picture.size == (size.width, size.height), path
        top = size.panels[0][1]
        assert panel_runs(picture, top, panel_height) == [(b[0], panel_width) for b in size.panels]


@pytest.mark.slow
def test_cli_on_given_images(tmp_path, checkpoint, images):
    """64x32 inputs: scale 4 (128-pixel panels); 1 + 2 levels x (2 parts + background) panels."""
    out = tmp_path / "out"
    result = run_cli(
        ["--config-file", TINY, "--output", str(out), "--device", "cpu", "--input", *images]
        + ["MODEL.WEIGHTS", checkpoint, "TEST.IMS_PER_BATCH", "2"]
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote 3 picture(s)" in result.stdout and "model on cpu" in result.stdout
    assert "Attention maps" in result.stderr  # the progress bar
    assert sorted(os.listdir(out)) == ["grey.png", "rgb.png", "rgba.png"]
    check_pictures([out / name for name in os.listdir(out)], 7, 128, 256)


@pytest.mark.slow
def test_cli_on_the_test_sets_queries(tmp_path, checkpoint, datasets_root):
    from fastreid.data.datasets import DATASET_REGISTRY

    out = tmp_path / "out"
    args = ["--config-file", TINY, "--output", str(out), "--num-images", "2", "--scale", "2"]
    result = run_cli(
        [*args, "--no-background", "MODEL.WEIGHTS", checkpoint],
        env={"FASTREID_DATASETS": str(datasets_root)},
    )
    assert result.returncode == 0, result.stderr
    queries = DATASET_REGISTRY.get("SynthReIDTiny")(root=str(datasets_root)).query
    stems = [os.path.splitext(os.path.basename(q[0]))[0] for q in queries[:2]]
    assert sorted(os.listdir(out)) == sorted(f"{s}.png" for s in stems)
    check_pictures([out / f"{s}.png" for s in stems], 5, 64, 128)


def test_bad_input_ends_with_one_line_and_status_2(tmp_path, checkpoint, capsys):
    missing = str(tmp_path / "missing.jpg")
    args = ["--config-file", TINY, "--output", str(tmp_path / "out"), "--input", missing]
    with pytest.raises(SystemExit) as exit_info:
        tool.main([*args, "MODEL.WEIGHTS", checkpoint])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --input '{missing}' does not exist."
    assert not os.path.exists(tmp_path / "out")


def run_tool(tmp_path, inputs, opts, config=TINY):
    argv = ["--config-file", config, "--output", str(tmp_path / "out"), "--input", *inputs]
    return tool.run(tool.parse_args([*argv, *opts]))


def test_unreadable_image_is_named(tmp_path, checkpoint, images):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not a JPEG")
    opts = ["MODEL.WEIGHTS", checkpoint, "MODEL.DEVICE", "cpu", "KDREID.PROGRESS", "False"]
    with pytest.raises(UnreadableImageError, match=f"Cannot read image '{broken}'"):
        run_tool(tmp_path, [images[1], str(broken)], opts)


def test_a_config_that_is_not_mdpr_is_refused(tmp_path, images):
    with pytest.raises(ConfigError, match="MODEL.META_ARCHITECTURE is 'Baseline'"):
        run_tool(tmp_path, images, ["MODEL.WEIGHTS", "unused.pth"], config=NOT_MDPR)


def test_weights_are_required_and_must_fit(tmp_path, checkpoint, images):
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS"):
        run_tool(tmp_path, images, ["MODEL.DEVICE", "cpu"])
    with pytest.raises(WeightsError, match="do not fit"):
        run_tool(tmp_path, images, ["MODEL.WEIGHTS", checkpoint, "MODEL.MDPR.NUM_PARTS", "3"])


def _rendered_figure(monkeypatch, tmp_path, scale, name="0001_c1s1_000151_01.jpg"):
    figures = []
    monkeypatch.setattr(visualize, "save_figure", lambda figure, *a, **k: figures.append(figure))
    image = noise_image(16, 8, seed=2)
    half = np.full((16, 8), 0.5, np.float32)
    maps = [("level 4, part 1", half), ("level 4, background", half * 0.4)]
    size = visualize.render(image, [8], maps, str(tmp_path / "p.png"), scale=scale, name=name)
    return figures[0], size


def test_render_names_the_image_and_each_map_s_peak(monkeypatch, tmp_path):
    figure, _ = _rendered_figure(monkeypatch, tmp_path, scale=16)
    assert [t.get_text() for t in figure.texts] == ["0001_c1s1_000151_01.jpg"]
    titles = [ax.get_title() for ax in figure.axes[1:3]]
    assert titles == ["level 4, part 1\npeak 0.50", "level 4, background\npeak 0.20"]


def test_lettering_grows_with_the_scale(monkeypatch, tmp_path):
    small, small_size = _rendered_figure(monkeypatch, tmp_path, scale=16)  # panels 128 wide
    large, large_size = _rendered_figure(monkeypatch, tmp_path, scale=64)  # 512 wide: 4x
    assert large.texts[0].get_fontsize() == pytest.approx(4 * small.texts[0].get_fontsize())
    title = [ax.title.get_fontsize() for ax in (small.axes[1], large.axes[1])]
    assert title[1] == pytest.approx(4 * title[0])
    # the bands for the text grow with it: the panels start 4x lower
    assert large_size.panels[0][1] == 4 * small_size.panels[0][1]
