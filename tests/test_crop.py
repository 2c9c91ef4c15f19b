import pytest
from PIL import Image

from paddle_ocrvl_sft.data.crop import box_points, cut_box, load_image


def page(size=(100, 60)):
    image = Image.new("RGB", size, "white")
    image.paste((0, 0, 0), (20, 10, 60, 30))  # a black block
    return image


def test_an_axis_aligned_four_point_box_is_the_rectangle_it_bounds():
    piece = cut_box(page(), box_points([[20, 10], [60, 10], [60, 30], [20, 30]]))
    assert piece.size == (40, 20)
    assert piece.getpixel((20, 10)) == (0, 0, 0)


def test_a_slanted_box_comes_out_level():
    # a parallelogram leaning 10 px over its 40 px width: the crop is 41 x 20, not its 50 x 30 bounding box
    piece = cut_box(page(), box_points([[20, 10], [60, 20], [60, 40], [20, 30]]))
    assert piece.size == (41, 20)


def test_a_polygon_of_more_points_is_cut_as_its_bounding_rectangle():
    points = box_points([[20, 10], [40, 8], [60, 10], [60, 30], [40, 32], [20, 30]])
    assert cut_box(page(), points).size == (40, 24)


def test_points_are_clamped_to_the_image_and_empty_boxes_refused():
    assert cut_box(page(), box_points([[-10, -5], [120, -5], [120, 70], [-10, 70]])).size == (100, 60)
    with pytest.raises(ValueError, match="nothing to cut"):
        cut_box(page(), box_points([[200, 10], [300, 10], [300, 30], [200, 30]]))  # wholly outside
    with pytest.raises(ValueError, match="nothing to cut"):
        cut_box(page(), box_points([[20, 10], [20, 10], [20, 10], [20, 10]]))


@pytest.mark.parametrize("points", [None, [[0, 0], [1, 1], [2, 2]], [[0, 0], [1, 1], [2, 2], ["3", 3]],
                                    [[0, 0], [1, 1], [2, 2], [3, float("nan")]], [[0, 0], [1, 1], [2, 2], [3, 3, 3]],
                                    [[0, 0], [1, 1], [2, 2], [True, 3]]])
def test_malformed_points_are_value_errors(points):
    with pytest.raises(ValueError):
        box_points(points)


def test_load_image_applies_the_exif_orientation(tmp_path):
    image = Image.new("RGB", (40, 20), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image.save(tmp_path / "a.jpg", exif=exif)
    assert load_image(tmp_path / "a.jpg").size == (20, 40)
    (tmp_path / "b.png").write_text("not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "b.png")
    with pytest.raises(OSError):
        load_image(tmp_path / "missing.png")
