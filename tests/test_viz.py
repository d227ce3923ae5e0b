"""Pictures and image files (``attnzoo.viz``): every PIL mode reads as the right 8-bit RGB or is
refused naming the mode."""

import numpy as np
import pytest
from PIL import Image

from attnzoo import data, viz
from attnzoo.data import context_shapes as cs

GREY = np.array([[0, 100, 255]], np.uint8)


@pytest.mark.parametrize("mode,image,expected", [
    ("1", Image.fromarray(np.array([[0, 1, 1]], bool)), [[0, 255, 255]]),
    ("L", Image.fromarray(GREY), GREY),
    ("LA", Image.fromarray(np.stack([GREY, np.full_like(GREY, 7)], -1), "LA"), GREY),
    ("P", Image.fromarray(GREY).convert("P"), GREY),
    ("RGB", Image.fromarray(np.repeat(GREY[..., None], 3, -1)), GREY),
    ("RGBA", Image.fromarray(np.concatenate([np.repeat(GREY[..., None], 3, -1),
                                             np.full((1, 3, 1), 9, np.uint8)], -1)), GREY),
    ("CMYK", Image.fromarray(np.repeat(GREY[..., None], 3, -1)).convert("CMYK"), GREY),
    ("I;16", Image.fromarray((GREY.astype(np.uint16) * 257)), GREY),
    ("I", Image.fromarray((GREY.astype(np.int32) * 257), "I"), GREY),
])
def test_every_mode_reads_as_8_bit_rgb(mode, image, expected, tmp_path):
    assert image.mode == mode
    expected = np.broadcast_to(np.asarray(expected, np.uint8)[..., None], (1, 3, 3))
    np.testing.assert_array_equal(viz.to_rgb8(image), expected)
    if mode not in ("I", "LA"):  # what a file of that mode reads back as
        path = tmp_path / ("x.tiff" if mode == "CMYK" else "x.png")
        image.save(path)
        np.testing.assert_array_equal(viz.load_image(path), expected)


def test_modes_without_an_8_bit_reading_are_refused():
    with pytest.raises(ValueError, match="mode 'F' has no 8-bit RGB reading"):
        viz.to_rgb8(Image.fromarray(np.ones((2, 2), np.float32)), "img.tif")
    with pytest.raises(ValueError, match="img.png: mode I values -5..70000 are not 16-bit"):
        viz.to_rgb8(Image.fromarray(np.array([[-5, 70000]], np.int32), "I"), "img.png")


def test_colorize_uses_the_given_colours_and_checks_their_shape():
    k = len(cs.CLASSES)
    mask = np.array([[0, 1], [k - 1, 255]])
    colours = np.array(cs.CLASS_COLOURS, np.uint8)
    np.testing.assert_array_equal(viz.colorize(mask, k, colours=colours),
                                  [[colours[0], colours[1]], [colours[k - 1], (0, 0, 0)]])
    np.testing.assert_array_equal(data.spec("context_shapes").class_colours(k), colours)
    np.testing.assert_array_equal(data.spec("context_shapes").class_colours(k + 1),
                                  viz.palette(k + 1))  # a model with other classes
    np.testing.assert_array_equal(data.spec("cityscapes").class_colours(19),
                                  viz.CITYSCAPES_PALETTE)
    np.testing.assert_array_equal(viz.colorize(mask, k), viz.palette(k)[[[0, 1], [k - 1, 0]]]
                                  * (mask != 255)[..., None])
    with pytest.raises(ValueError, match="colours"):
        viz.colorize(mask, k, colours=colours[:-1])
