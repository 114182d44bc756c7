"""Images are refused from their header when they declare more pixels than the limit, or another
size than the reader expects, before any pixel data is decoded or allocated."""

import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
import tifffile
from PIL import ImageFile

from histozoom.data.io import DEFAULT_MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV, read_image, read_label_map, read_rgb, write_image
from histozoom.errors import ConfigError, InputError

PEAK_LIMIT = 200 * 2**20


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_declaring(width: int, height: int) -> bytes:
    """A hand-made PNG whose IHDR declares ``width x height`` RGB but which holds a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def tiff_declaring(width: int, height: int) -> bytes:
    """A hand-made little-endian grey TIFF declaring ``width x height`` with one tiny deflate strip."""
    data = zlib.compress(b"\0" * 64)
    tags = [  # (tag, type, count, value): type 3 SHORT, 4 LONG
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 8),  # deflate
        (262, 3, 1, 1),  # black is zero
        (273, 4, 1, 0),  # strip offset, patched below
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, len(data)),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + ifd_size
    out = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags))
    for tag, typ, count, value in tags:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    return out + struct.pack("<I", 0) + data


def _no_decode(*args, **kwargs):
    raise AssertionError("pixel data was decoded")


def _refused_fast(fn, *args, **kwargs) -> InputError:
    """``fn`` raises InputError within 5 s, never decodes pixels (Pillow's and tifffile's decoders
    are replaced by a failure: Pillow allocates outside tracemalloc's view) and traces < 200 MB."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(InputError) as exc:
            mp.setattr(ImageFile.ImageFile, "load", _no_decode)
            mp.setattr(tifffile.TiffFile, "asarray", _no_decode)
            fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 5
    assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
    return exc.value


@pytest.fixture
def bomb_png(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(png_declaring(50000, 50000))
    assert p.stat().st_size < 1000
    return p


@pytest.fixture
def bomb_tiff(tmp_path):
    p = tmp_path / "bomb.tif"
    p.write_bytes(tiff_declaring(100000, 100000))
    assert p.stat().st_size < 1000
    return p


@pytest.mark.parametrize("reader", [read_image, read_rgb, read_label_map])
def test_png_header_over_limit_is_refused_by_name(bomb_png, reader):
    err = _refused_fast(reader, bomb_png)
    assert err.path == str(bomb_png)
    # Pillow refuses it in Image.open (over twice its limit, which read_image keeps at ours)
    assert "2,500,000,000 pixels" in err.problem and f"over the limit of {DEFAULT_MAX_IMAGE_PIXELS:,}" in err.problem


@pytest.mark.parametrize("reader", [read_image, read_rgb, read_label_map])
def test_tiff_header_over_limit_is_refused_by_name(bomb_tiff, reader):
    err = _refused_fast(reader, bomb_tiff)
    assert err.path == str(bomb_tiff)
    assert "100000x100000" in err.problem and f"over the limit of {DEFAULT_MAX_IMAGE_PIXELS:,}" in err.problem


def test_pillow_bomb_check_is_our_error(tmp_path):
    # far over Pillow's own refusal threshold (twice its limit): still our named error
    p = tmp_path / "huge.png"
    p.write_bytes(png_declaring(2**20, 2**20))
    err = _refused_fast(read_image, p, max_pixels=1000)
    assert err.path == str(p) and "over the limit of 1,000 pixels" in err.problem


def test_png_between_limit_and_twice_it_named_with_its_size(tmp_path):
    p = tmp_path / "big.png"
    p.write_bytes(png_declaring(300, 200))  # 60,000 pixels: Pillow only warns, read_image refuses
    err = _refused_fast(read_image, p, max_pixels=50000)
    assert "300x200" in err.problem and "over the limit of 50,000 pixels" in err.problem


def test_expected_size_checked_from_header(tmp_path):
    # a small file that would decode to 12000x12000 is refused by its header when 1024x1024 is expected
    p = tmp_path / "big.png"
    p.write_bytes(png_declaring(12000, 12000))
    err = _refused_fast(read_rgb, p, size=(1024, 1024))
    assert "12000x12000" in err.problem and "1024x1024" in err.problem
    t = tmp_path / "big.tif"
    t.write_bytes(tiff_declaring(12000, 12000))
    err = _refused_fast(read_label_map, t, size=(1024, 1024))
    assert "12000x12000" in err.problem and "1024x1024" in err.problem


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_argument_and_env_set_the_limit(tmp_path, monkeypatch, suffix):
    p = tmp_path / f"img{suffix}"
    write_image(p, np.zeros((40, 50, 3), np.uint8))
    assert read_rgb(p).shape == (40, 50, 3)
    with pytest.raises(InputError, match="over the limit of 1,999 pixels"):
        read_rgb(p, max_pixels=1999)
    assert read_rgb(p, max_pixels=2000).shape == (40, 50, 3)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "1999")
    with pytest.raises(InputError, match="1,999"):
        read_image(p)
    assert read_image(p, max_pixels=2000).shape == (40, 50, 3)  # the argument wins over the env var
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "2000")
    assert read_image(p).shape == (40, 50, 3)


@pytest.mark.parametrize("bad", ["0", "-5", "lots", "1e9"])
def test_bad_env_limit_is_a_named_config_error(tmp_path, monkeypatch, bad):
    p = tmp_path / "img.png"
    write_image(p, np.zeros((4, 5, 3), np.uint8))
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, bad)
    with pytest.raises(ConfigError, match=MAX_IMAGE_PIXELS_ENV):
        read_image(p)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_argument_limit(tmp_path, bad):
    p = tmp_path / "img.png"
    write_image(p, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ConfigError, match="max_pixels"):
        read_image(p, max_pixels=bad)


def test_read_image_size_reads_only_the_header(tmp_path, bomb_png):
    from histozoom.data.io import read_image_size

    p = tmp_path / "big.png"
    p.write_bytes(png_declaring(12000, 9000))
    tracemalloc.start()
    try:
        assert read_image_size(p) == (12000, 9000)
        t = tmp_path / "big.tif"
        t.write_bytes(tiff_declaring(12000, 9000))
        assert read_image_size(t) == (12000, 9000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    with pytest.raises(InputError, match="over the limit"):
        read_image_size(bomb_png)


def test_release_checks_metadata_box_before_decoding(tmp_path):
    # a release image whose header disagrees with its metadata box is refused without decoding it
    from conftest import make_pair
    from histozoom.data.ocelot_release import OcelotRelease, OcelotReleaseWriter

    with OcelotReleaseWriter(tmp_path) as w:
        w.add(make_pair(np.random.default_rng(0), pid="000"), "train", image_ext=".png")
    cell = tmp_path / "images/train/cell/000.png"
    cell.write_bytes(png_declaring(12000, 12000))  # 400 bytes; 432 MB decoded
    err = _refused_fast(OcelotRelease(tmp_path).split("train").load, "000")
    assert "12000x12000" in str(err)
