"""Pictures: uint8 conversion, grids, noising strips, trajectories and GIFs."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from minildm import viz  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


class LinearSchedule:
    """A stand-in for schedules.NoiseSchedule: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""

    def __init__(self, T=100):
        self.alpha_bar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)

    def q_sample(self, x0, t, noise):
        abar = self.alpha_bar[t].float()[:, None, None, None]
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


class NoAlphaBar:
    def q_sample(self, x0, t, noise):
        return x0 + 0 * noise


def test_to_uint8_maps_the_pixel_levels_back_exactly():
    levels = torch.arange(256, dtype=torch.float32)
    x = (levels / 127.5 - 1).reshape(1, 16, 16)  # (C, H, W), every level once
    assert np.array_equal(viz.to_uint8(x)[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    u = viz.to_uint8(torch.tensor([-1.0, 1.0, -3.0, 2.0, 0.0]).reshape(1, 1, 5))
    assert u.dtype == np.uint8 and u.ravel().tolist() == [0, 255, 0, 255, 128]  # clamped; 127.5 rounds to even


def test_to_uint8_moves_channels_last():
    x = torch.zeros(2, 3, 4, 5)
    x[:, 0] = 1  # red channel on
    u = viz.to_uint8(x)
    assert u.shape == (2, 4, 5, 3) and (u[..., 0] == 255).all() and (u[..., 1:] == 128).all()
    assert viz.to_uint8(x[0]).shape == (4, 5, 3)
    assert viz.to_uint8(np.zeros((1, 4, 5), np.float32)).shape == (4, 5, 1)


@pytest.mark.parametrize("shape", [(4, 5), (2, 2, 4, 5), (1, 1, 1, 4, 5)])
def test_to_uint8_rejects_wrong_shapes(shape):
    with pytest.raises(ValueError, match="images"):
        viz.to_uint8(torch.zeros(shape))


def test_tile_lays_images_out_row_by_row_with_padding():
    images = torch.stack([torch.full((3, 2, 3), v) for v in (-1.0, 0.0, 1.0)])  # black, grey, white
    out = viz.tile(images, nrow=2, padding=1, pad_value=-1.0)
    assert out.shape == (2 * 3 + 1, 2 * 4 + 1, 3)
    assert (out[1:3, 1:4] == 0).all() and (out[1:3, 5:8] == 128).all() and (out[4:6, 1:4] == 255).all()
    assert (out[0] == 0).all() and (out[4:6, 5:8] == 0).all()  # padding and the empty cell
    gray = viz.tile(torch.zeros(2, 1, 3, 3), nrow=8, padding=0)
    assert gray.shape == (3, 6, 3) and (gray == 128).all()


def test_grid_has_one_titled_panel_per_image():
    images = torch.rand(5, 3, 8, 8) * 2 - 1
    fig = viz.grid(images, nrow=2, titles=list("abcde"), title="five")
    assert len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes] == list("abcde")
    assert fig._suptitle.get_text() == "five"
    assert np.array_equal(fig.axes[3].images[0].get_array(), viz.to_uint8(images[3]))
    # 3 rows of 2: the sixth cell is removed, not left empty
    assert len({round(ax.get_position().y0, 3) for ax in fig.axes}) == 3


def test_grid_draws_one_channel_images_in_grey():
    fig = viz.grid(torch.zeros(3, 1, 8, 8), nrow=8)
    assert len(fig.axes) == 3
    image = fig.axes[0].images[0]
    assert image.get_array().shape == (8, 8) and image.get_cmap().name == "gray"


def test_grid_rejects_mismatched_titles():
    with pytest.raises(ValueError, match="titles"):
        viz.grid(torch.zeros(3, 3, 4, 4), titles=["a"])
    with pytest.raises(ValueError, match="nrow"):
        viz.grid(torch.zeros(3, 3, 4, 4), nrow=0)


def test_captioned_grid_shows_each_caption():
    captions = ["a small red circle in the top left on white", "a large blue square in the center on black"]
    fig = viz.captioned_grid(torch.zeros(2, 3, 8, 8), captions, width=15)
    assert [ax.get_title().replace("\n", " ") for ax in fig.axes] == captions
    assert all(max(len(line) for line in ax.get_title().split("\n")) <= 15 for ax in fig.axes)


def test_noising_strip_shows_q_sample_at_each_t():
    schedule = LinearSchedule()
    x0 = torch.rand(3, 8, 8) * 2 - 1
    ts = [0, 10, 50, 99]
    fig = viz.noising_strip(x0, schedule, ts, generator=torch.Generator().manual_seed(0), title="forward")
    assert len(fig.axes) == len(ts)
    for ax, t in zip(fig.axes, ts):
        assert f"t = {t}" in ax.get_title()
        assert f"{schedule.alpha_bar[t].item():.3f}" in ax.get_title()
    # the same noise draw at every t: the panel is sqrt(abar) x0 + sqrt(1 - abar) eps, computed here
    eps = torch.randn((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    for ax, t in zip(fig.axes, ts):
        abar = schedule.alpha_bar[t].item()
        expected = viz.to_uint8(abar**0.5 * x0 + (1 - abar) ** 0.5 * eps[0])
        assert np.abs(ax.images[0].get_array().astype(int) - expected.astype(int)).max() <= 1


def test_noising_strip_puts_a_batch_in_rows_and_works_without_alpha_bar():
    fig = viz.noising_strip(torch.zeros(2, 1, 8, 8), LinearSchedule(), [5, 20, 60])
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[3:]] == ["", "", ""]  # column titles on the first row
    fig = viz.noising_strip(torch.zeros(1, 8, 8), NoAlphaBar(), [3, 7])
    assert [ax.get_title() for ax in fig.axes] == ["t = 3", "t = 7"]


def test_noising_strip_rejects_timesteps_outside_the_schedule():
    with pytest.raises(ValueError, match="ts"):
        viz.noising_strip(torch.zeros(1, 8, 8), LinearSchedule(T=10), [0, 10])


def test_trajectory_draws_a_panel_per_cloud_with_the_data_behind():
    clouds = [torch.randn(50, 2) * s for s in (1.0, 0.5, 0.1)]
    data = torch.randn(80, 2)
    fig = viz.trajectory(clouds, ts=[99, 50, 0], data=data, title="reverse")
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["t = 99", "t = 50", "t = 0"]
    for ax, cloud in zip(fig.axes, clouds):
        behind, front = ax.collections
        assert np.allclose(behind.get_offsets(), data.numpy()) and np.allclose(front.get_offsets(), cloud.numpy())
        assert ax.get_xlim() == fig.axes[0].get_xlim()
    lim = fig.axes[0].get_xlim()[1]
    assert lim >= max(c.abs().max().item() for c in clouds + [data])


def test_trajectory_rejects_bad_clouds():
    with pytest.raises(ValueError, match=r"points_list\[1\]"):
        viz.trajectory([torch.zeros(5, 2), torch.zeros(5, 3)])
    with pytest.raises(ValueError, match="ts"):
        viz.trajectory([torch.zeros(5, 2)], ts=[1, 2])


def read_gif(path):
    with Image.open(path) as im:
        frames = []
        for i in range(im.n_frames):
            im.seek(i)
            frames.append(np.asarray(im.convert("RGB")))
        return im.n_frames, im.size, im.info.get("duration"), frames


def test_gif_writes_every_frame_at_the_grid_size(tmp_path):
    frames = [torch.full((4, 3, 8, 8), v) for v in (-1.0, 0.0, 1.0)]
    path = viz.gif(frames, tmp_path / "denoise.gif", fps=5, scale=2, nrow=2)
    n, size, duration, pictures = read_gif(path)
    # 2 x 2 grid of 8 px images with 1 px padding: 2 * 9 + 1 = 19, doubled
    assert (n, size, duration) == (3, (38, 38), 200)
    assert (pictures[0][2:4, 2:4] == 0).all() and (pictures[2][2:4, 2:4] == 255).all()


def test_gif_takes_a_frames_tensor_or_figures(tmp_path):
    path = viz.gif(torch.linspace(-1, 1, 4)[:, None, None, None].expand(4, 1, 6, 6), tmp_path / "a.gif", scale=1)
    assert read_gif(path)[:2] == (4, (8, 8))
    figures = []
    for k in range(2):
        fig, ax = plt.subplots(figsize=(2, 1.5), dpi=50)
        ax.plot([0, 1], [0, k])
        figures.append(fig)
    n, size, _, _ = read_gif(viz.gif(figures, tmp_path / "b.gif"))
    assert (n, size) == (2, (100, 75))


def test_gif_rejects_frames_of_different_sizes(tmp_path):
    with pytest.raises(ValueError, match="same size"):
        viz.gif([torch.zeros(3, 4, 4), torch.zeros(3, 5, 5)], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="frames"):
        viz.gif([], tmp_path / "x.gif")
    with pytest.raises(ValueError, match="scale"):
        viz.gif([torch.zeros(3, 4, 4)], tmp_path / "x.gif", scale=0)
