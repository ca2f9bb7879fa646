"""dashvl.images: pictures decoded as a person sees them (bit depth, EXIF orientation, transparency)."""
import numpy as np
from PIL import Image

from dashvl.images import BACKGROUND, open_rgb, to_rgb


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64 * 32, dtype=np.uint32).reshape(32, 64) * 31).astype(np.uint16)  # 0 .. 63,457
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = np.asarray(open_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (32, 64, 3) and (rgb[..., 0] == rgb[..., 1]).all()
    want = np.round(ramp / 65535 * 255)
    assert np.abs(rgb[..., 0].astype(int) - want).max() <= 1
    assert (rgb == 255).mean() < 0.01  # a plain convert("RGB") clips 99% of it to white


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # a red band on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = open_rgb(tmp_path / "phone.jpg")
    assert shown.size == (20, 40)  # upright: portrait
    top = np.asarray(shown)[2, 10]
    assert top[0] > 200 and top[2] < 60  # the stored left edge is now the top


def test_transparency_is_composited_on_the_stated_background():
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[4, 4]) == BACKGROUND
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    out = np.asarray(to_rgb(pal))
    assert tuple(out[0, 0]) == BACKGROUND and tuple(out[1, 1]) == (0, 255, 0)
