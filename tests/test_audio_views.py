"""The audio and sync views: time grids, spectrogram, alignment offset, and what the
drawn figures show (pixels read back from the Agg canvas at known data positions)."""

import subprocess
import sys

import matplotlib
import numpy as np
import pytest

from ovi_attn_render.views import audio as av
from ovi_attn_render.common.errors import UserError
from ovi_attn_render.contract.geometry import pixel_frames_of

SR, SPT, FPS, STRIDE = 16000, 512, 24.0, 4
F, LA = 31, 157  # Ovi 5 s clip: 121 pixel frames, 157 audio tokens


def rendered(fig) -> np.ndarray:
    """[H, W, 4] the figure drawn by Agg, as it would be saved."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def pixel_at(rgba: np.ndarray, ax, x, y) -> np.ndarray:
    """RGB of the drawn figure at data point (x, y) of `ax`."""
    px, py = ax.transData.transform((x, y))
    return rgba[int(round(rgba.shape[0] - py)), int(round(px)), :3].astype(int)


def cmap_rgb(name: str, value: float) -> np.ndarray:
    return (np.array(matplotlib.colormaps[name](value)[:3]) * 255).round().astype(int)


def aligned_weights(frames: int = F, tokens: int = LA) -> np.ndarray:
    """[F, La] 1 where the audio token's centre lies in the latent frame's time span."""
    fe = av.latent_frame_edges(frames, FPS, STRIDE)
    tc = (np.arange(tokens) + 0.5) * SPT / SR
    return ((tc[None] >= fe[:-1, None]) & (tc[None] < fe[1:, None])).astype(float)


# ---- time grids --------------------------------------------------------------------------

def test_latent_frame_edges_agree_with_pixel_frames_of_format():
    edges = av.latent_frame_edges(F, FPS, STRIDE)
    assert edges.shape == (F + 1,)
    for f in range(F):
        pixels = pixel_frames_of(f, STRIDE)
        assert edges[f] == pytest.approx(pixels[0] / FPS)
        assert edges[f + 1] == pytest.approx((pixels[-1] + 1) / FPS)
    assert edges[-1] == pytest.approx(121 / 24)


def test_audio_token_edges_are_512_samples():
    edges = av.audio_token_edges(LA, SR, SPT)
    assert edges[1] == pytest.approx(0.032)
    assert edges[100] == pytest.approx(100 * 512 / 16000)
    assert edges[-1] == pytest.approx(157 * 0.032)


# ---- spectrogram -------------------------------------------------------------------------

def test_spectrogram_of_a_pure_tone_peaks_at_its_frequency():
    tone_hz = 1234.0
    t = np.arange(SR) / SR  # 1 s
    db, times, freqs = av.spectrogram(0.5 * np.sin(2 * np.pi * tone_hz * t), SR, n_fft=512, hop=128)
    assert db.shape == (257, 1 + SR // 128) == (freqs.size, times.size)
    assert times[1] - times[0] == pytest.approx(128 / SR)
    assert freqs[-1] == pytest.approx(SR / 2)
    peak = freqs[np.argmax(db[:, db.shape[1] // 2])]
    assert abs(peak - tone_hz) <= (SR / 512) / 2
    assert db.max() == pytest.approx(0.0) and db.min() >= -80.0
    # far from the tone the spectrum is near the floor
    assert db[np.abs(freqs - 5000) < 200, db.shape[1] // 2].max() < -60


def test_mel_spectrogram_peaks_in_the_filter_nearest_the_tone():
    t = np.arange(SR) / SR
    db, _, centres = av.spectrogram(np.sin(2 * np.pi * 3000.0 * t), SR, n_mels=64)
    assert db.shape[0] == 64
    assert np.all(np.diff(centres) > 0)
    peak = int(np.argmax(db[:, db.shape[1] // 2]))
    assert abs(peak - int(np.argmin(np.abs(centres - 3000.0)))) <= 1


def test_spectrogram_of_silence_is_the_floor():
    db, _, _ = av.spectrogram(np.zeros(4000), SR, top_db=70.0)
    assert np.all(db == -70.0)


# ---- alignment offset --------------------------------------------------------------------

def test_alignment_offset_of_aligned_attention_is_about_zero():
    rows = aligned_weights()
    rows /= rows.sum(axis=1, keepdims=True)
    assert abs(av.alignment_offset(rows)) < 0.5 * SPT / SR  # within half a token


def test_alignment_offset_of_shifted_attention_equals_the_shift():
    shift = 5  # tokens: the attention looks 160 ms later than the frame shows
    base = np.pad(aligned_weights(), ((0, 0), (0, shift)))  # [F, La + shift]
    shifted = np.pad(aligned_weights(), ((0, 0), (shift, 0)))  # every row `shift` tokens later
    delta = av.alignment_offset(shifted) - av.alignment_offset(base)
    assert delta == pytest.approx(shift * SPT / SR, abs=1e-9)
    assert av.alignment_offset(shifted) == pytest.approx(0.16, abs=0.016)


def test_alignment_offset_ignores_nan_and_is_nan_without_weight():
    rows = aligned_weights()
    with_nan = rows.copy()
    with_nan[rows == 0] = np.nan
    assert av.alignment_offset(with_nan) == pytest.approx(av.alignment_offset(rows))
    assert np.isnan(av.alignment_offset(np.zeros((F, LA))))


# ---- sync view ---------------------------------------------------------------------------

def test_sync_hot_cells_lie_on_the_drawn_diagonal():
    weights = aligned_weights()  # every hot cell = 1 = the colour scale's top
    fig, panels = av.sync_figure(weights, None, title="t")
    fig.set_dpi(200)
    (panel,) = panels
    ax = panel.ax
    np.testing.assert_array_equal(panel.image, weights)
    np.testing.assert_allclose(panel.audio_edges, av.audio_token_edges(LA))
    np.testing.assert_allclose(panel.video_edges, av.latent_frame_edges(F))
    # the dashed line is audio time = video time in the axes' seconds
    line = ax.lines[0].get_xydata()
    np.testing.assert_allclose(line[:, 0], line[:, 1])
    assert line[0, 0] == 0.0 and line[-1, 0] >= av.latent_frame_edges(F)[-1]

    hot, cold = cmap_rgb("inferno", 1.0), cmap_rgb("inferno", 0.0)
    rgba = rendered(fig)
    centres = 0.5 * (panel.video_edges[:-1] + panel.video_edges[1:])
    for f in range(1, F):
        t = centres[f]
        # just beside the line (0.06 s up, still inside frame f's cell): hot
        assert np.abs(pixel_at(rgba, ax, t, t + 0.06) - hot).max() <= 3, f
        # half a second off the diagonal: cold
        y_far = t + 0.5 if t + 0.5 < panel.video_edges[-1] else t - 0.5
        assert np.abs(pixel_at(rgba, ax, t, y_far) - cold).max() <= 3, f


def test_sync_two_panels_share_axes_and_report_offsets(tmp_path):
    shift = 3
    video_audio = np.pad(aligned_weights(), ((0, 0), (shift, 0)))[:, :LA]  # `shift` tokens late
    video_audio /= video_audio.sum(axis=1, keepdims=True)
    audio_video = aligned_weights().T  # [La, F]
    fig, panels = av.sync_figure(video_audio, audio_video)
    assert [p.name for p in panels] == ["video queries", "audio queries"]
    np.testing.assert_array_equal(panels[1].image, audio_video.T)  # drawn as [F, La]
    assert panels[0].offset_s == pytest.approx(shift * 0.032, abs=0.016)
    assert abs(panels[1].offset_s) < 0.016
    assert f"{1000 * panels[0].offset_s:+.0f} ms" in panels[0].ax.get_title()
    # the right-hand axis numbers latent frames at their cells' centres
    to_frame, to_seconds = av._frame_axis_functions(panels[0].video_edges)
    centres = 0.5 * (panels[0].video_edges[:-1] + panels[0].video_edges[1:])
    np.testing.assert_allclose(to_frame(centres), np.arange(F))
    np.testing.assert_allclose(to_seconds(np.arange(F)), centres)

    out = av.render_sync(video_audio, audio_video, title="x", out_path=tmp_path / "sync.svg")
    assert out.read_text().lstrip().startswith("<?xml")


def test_sync_without_maps_or_with_a_bad_suffix_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="video_audio"):
        av.render_sync(None, None, title="x", out_path=tmp_path / "s.png")
    with pytest.raises(UserError, match=r"\.png or \.svg"):
        av.render_sync(aligned_weights(), None, title="x", out_path=tmp_path / "s.jpg")


# ---- audio strip view --------------------------------------------------------------------

def test_audio_strip_lights_the_right_token_in_the_right_row():
    strips = np.zeros((3, LA))
    strips[1, 100] = 0.5
    wave = 0.3 * np.sin(2 * np.pi * 200 * np.arange(LA * SPT) / SR)
    fig, strip_ax, image, extent = av.audio_strip_figure(wave, SR, strips, ["a", "b", "c"], title="t")
    fig.set_dpi(200)
    assert extent[:2] == (0.0, pytest.approx(LA * 0.032))
    assert fig.axes[0].get_xlim() == strip_ax.get_xlim()  # waveform and strips share time
    hot, cold = cmap_rgb("inferno", 1.0), cmap_rgb("inferno", 0.0)
    rgba = rendered(fig)
    token_100 = 100.5 * SPT / SR
    assert np.abs(pixel_at(rgba, strip_ax, token_100, 1) - hot).max() <= 3
    assert np.abs(pixel_at(rgba, strip_ax, token_100, 0) - cold).max() <= 3  # rows not swapped
    assert np.abs(pixel_at(rgba, strip_ax, token_100 - 0.064, 1) - cold).max() <= 3  # 2 tokens early
    assert [t.get_text() for t in strip_ax.get_yticklabels()] == ["a", "b", "c"]
    assert fig.axes[-1].get_ylabel() == "attention probability"


def test_strip_norms():
    strips = np.array([[0.1, 0.2, 0.4], [0.05, 0.0, 0.0], [np.nan] * 3])
    image, lo, hi, _ = av.normalise_strips(strips, "global")
    assert (lo, hi) == (0.0, 0.4)
    image, lo, hi, label = av.normalise_strips(strips, "row")
    np.testing.assert_allclose(image[:2], [[0.25, 0.5, 1.0], [1.0, 0.0, 0.0]])
    assert np.isnan(image[2]).all() and hi == 1.0 and "row max" in label
    assert av.normalise_strips(strips, "absolute")[1:3] == (0.0, 1.0)
    with pytest.raises(UserError, match="--norm"):
        av.normalise_strips(strips, "loud")


def test_not_computed_rows_are_grey():
    strips = np.full((2, LA), 0.01)
    strips[0] = np.nan
    fig, strip_ax, _, _ = av.audio_strip_figure(None, SR, strips, ["uncond", "cond"])
    grey = (np.array(matplotlib.colors.to_rgb(av.NOT_COMPUTED_COLOUR)) * 255).round()
    rgba = rendered(fig)
    assert np.abs(pixel_at(rgba, strip_ax, 2.0, 0) - grey).max() <= 3


def test_render_audio_strip_writes_png_and_svg(tmp_path):
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, LA * SPT).astype(np.float32)
    strips = np.random.default_rng(1).random((4, LA)) * 0.1
    labels = [f"step {s}" for s in range(4)]
    png = av.render_audio_strip(wave, SR, strips, labels, title="t", out_path=tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = av.render_audio_strip(wave, SR, strips, labels, title="t", background="spectrogram",
                                norm="row", out_path=tmp_path / "sub" / "a.svg")
    assert svg.exists() and "<svg" in svg.read_text()[:2000]
    with pytest.raises(UserError, match="background"):
        av.render_audio_strip(wave, SR, strips, labels, background="video", out_path=tmp_path / "b.png")


def test_views_never_import_torch(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from ovi_attn_render.views import audio as av, masks as mk\n"
        f"av.render_sync(np.eye(4, 20), None, out_path=r'{tmp_path}/s.png')\n"
        f"av.render_audio_strip(np.zeros(2048), 16000, np.ones((1, 4)), ['a'], background='spectrogram', out_path=r'{tmp_path}/a.png')\n"
        "m = np.zeros((2, 2, 2), bool)\n"
        f"mk.render_mask(np.zeros((4, 4, 3), np.uint8), m, step_labels=['0', '1'], areas=[0, 0], out_path=r'{tmp_path}/m.gif')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
