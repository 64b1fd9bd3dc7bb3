import pytest
import torch

from eden_lib.transforms.views import ViewConfig, crop, crop_boxes, gaussian_blur, hflip, jitter, make_view


def _images(b=4, r=32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 1, r, r, generator=g)


def test_full_box_crop_is_identity_at_same_size():
    x = _images()
    boxes = torch.tensor([[1.0, 0.0, 0.0]]).repeat(4, 1)
    torch.testing.assert_close(crop(x, boxes, 32), x, atol=1e-5, rtol=0)


def test_crop_boxes_stay_inside_the_image():
    boxes = crop_boxes(1000, (0.2, 1.0), torch.Generator().manual_seed(1))
    s, c = boxes[:, 0], boxes[:, 1:]
    assert ((s >= 0.2) & (s <= 1.0)).all()
    assert (c.abs() <= (1 - s)[:, None] + 1e-6).all()


def test_blur_with_zero_sigma_is_identity_and_blur_keeps_the_mean():
    x = _images()
    torch.testing.assert_close(gaussian_blur(x, torch.zeros(4)), x)
    y = gaussian_blur(x, torch.tensor([0.0, 0.5, 1.0, 2.0]))
    torch.testing.assert_close(y[0], x[0])
    assert y[3].std() < x[3].std()
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=0.02, rtol=0)


def test_hflip_mask_matches_the_flipped_samples():
    x = _images(64)
    y, flipped = hflip(x, 0.5, torch.Generator().manual_seed(2))
    assert 10 < int(flipped.sum()) < 54
    torch.testing.assert_close(y[flipped], x[flipped].flip(-1))
    torch.testing.assert_close(y[~flipped], x[~flipped])


def test_jitter_stays_in_unit_range_and_is_off_at_p0():
    x = _images()
    cfg = ViewConfig(size=32, jitter_p=0.0)
    torch.testing.assert_close(jitter(x, cfg, torch.Generator().manual_seed(0)), x)
    y = jitter(x, ViewConfig(size=32, jitter_p=1.0, brightness=0.9, contrast=0.9), torch.Generator().manual_seed(0))
    assert y.min() >= 0 and y.max() <= 1 and not torch.allclose(y, x)


def test_make_view_is_seeded_and_returns_the_clean_crop():
    x = _images(r=64)
    cfg = ViewConfig(size=32)
    v1, c1 = make_view(x, cfg, torch.Generator().manual_seed(3))
    v2, c2 = make_view(x, cfg, torch.Generator().manual_seed(3))
    assert v1.shape == c1.shape == (4, 1, 32, 32)
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(c1, c2)
    assert not torch.allclose(v1, c1)


def test_bad_view_config_names_the_field():
    with pytest.raises(ValueError, match="flip_p"):
        ViewConfig(size=32, flip_p=1.5)
