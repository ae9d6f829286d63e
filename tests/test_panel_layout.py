"""The panel's patches line up (a receptive field cut by the image border is padded to the field's size with
grey on the border's side) and its caption says when a field is the whole image."""

import numpy as np

from polysem.figures.plots import selection_caption
from polysem.method.figure_data import BEYOND_BORDER, pad_to_field

FACTS = {"split": "val", "classes": {1: ["Bag"], 2: ["Coat"]}, "top": 16, "n_images": 40, "shown": 6,
         "photo_note": "photos as files"}


def test_a_field_cut_at_the_top_border_is_padded_on_top():
    crop = np.arange(6).reshape(3, 2)
    padded = pad_to_field(crop, (0, 5, 3, 7), (5, 2), (8, 8))
    assert padded.shape == (5, 2)
    assert (padded[:2] == BEYOND_BORDER).all() and (padded[2:] == crop).all()


def test_a_field_cut_at_the_right_and_bottom_is_padded_there_in_colour():
    crop = np.zeros((2, 3, 3), np.uint8)
    padded = pad_to_field(crop, (6, 5, 8, 8), (4, 4), (8, 8))
    assert padded.shape == (4, 4, 3)
    assert (padded[:2, :3] == 0).all() and (padded[2:] == BEYOND_BORDER).all() and (padded[:, 3] == BEYOND_BORDER).all()


def test_the_caption_says_whole_image_or_names_the_grey():
    whole = selection_caption({**FACTS, "whole_field": True}, "narrow")
    assert "Patches: the whole image (the receptive field of every most activating position of layer narrow" in whole
    assert "receptive field of the most activating position" not in whole
    padded = selection_caption({**FACTS, "whole_field": False, "padded": True}, "narrow")
    assert "grey: beyond the image border" in padded
    plain = selection_caption({**FACTS, "whole_field": False, "padded": False}, "narrow")
    assert "grey" not in plain and "receptive field of the most activating position of layer narrow." in plain
