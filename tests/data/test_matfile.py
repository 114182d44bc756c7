"""MAT files are checked in Python before SciPy's compiled reader sees them: the byte
flips that crashed the interpreter (a complex flag without an imaginary part, an unknown
data type) are named errors, and valid files read exactly as ``scipy.io.loadmat`` reads them."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import scipy.io

from histozoom.data.matfile import read_mat_arrays
from histozoom.errors import InputError

INST = np.arange(48, dtype=np.int32).reshape(6, 8)
CONTENT = {"inst_map": INST, "inst_type": np.array([[1], [2]], np.uint8), "note": "hello",
           "extra": {"a": np.ones(3)}, "cells": np.array([np.ones(2), "x"], dtype=object)}


def _mat(compress: bool, **kw) -> bytes:
    b = io.BytesIO()
    scipy.io.savemat(b, {**CONTENT, **kw}, do_compression=compress)
    return b.getvalue()


def _offset_of_variable(data: bytes, index: int) -> int:
    pos = 128
    for _ in range(index):
        pos += 8 + struct.unpack_from("<I", data, pos + 4)[0]
        pos += (-pos) % 8
    return pos


@pytest.mark.parametrize("compress", [False, True])
def test_valid_files_read_as_scipy_reads_them(tmp_path, compress):
    p = tmp_path / "a.mat"
    p.write_bytes(_mat(compress))
    got = read_mat_arrays(p, ["inst_map", "inst_type", "note", "absent"])
    ref = scipy.io.loadmat(p)
    assert sorted(got.arrays) == ["inst_map", "inst_type", "note"]
    for k, v in got.arrays.items():
        np.testing.assert_array_equal(v, ref[k])
        assert v.dtype == ref[k].dtype
    assert got.names == list(CONTENT)  # all variables, in file order


def test_big_endian_files_read(tmp_path):
    # hand-built big-endian file: one int32 2x3 variable "m"
    def el(t, payload):
        return struct.pack(">II", t, len(payload)) + payload + bytes((-len(payload)) % 8)
    body = el(6, struct.pack(">II", 12, 0)) + el(5, struct.pack(">ii", 2, 3)) + el(1, b"m")
    body += el(5, struct.pack(">6i", *range(6)))
    header = b"MATLAB 5.0 MAT-file".ljust(116) + bytes(8) + struct.pack(">H", 0x0100) + b"MI"
    p = tmp_path / "be.mat"
    p.write_bytes(header + el(14, body))
    np.testing.assert_array_equal(read_mat_arrays(p, ["m"]).arrays["m"], np.arange(6).reshape(3, 2).T)


def test_complex_flag_without_imaginary_part_is_a_named_error(tmp_path):
    data = bytearray(_mat(False))
    flags = _offset_of_variable(data, 0) + 16  # first variable, array-flags word
    data[flags + 1] |= 0x08  # complex bit (0x800) of the little-endian flags word
    p = tmp_path / "complex.mat"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"complex\.mat.*'inst_map'.*runs past the end"):
        read_mat_arrays(p, ["inst_map"])


def test_unknown_data_type_is_a_named_error(tmp_path):
    data = bytearray(_mat(False))
    real = _offset_of_variable(data, 0) + 8 + 16 + 16 + 16  # tag, flags, dims (2 ints), name "inst_map"
    assert struct.unpack_from("<I", data, real)[0] == 5  # miINT32 real part
    data[real] = 147
    p = tmp_path / "type.mat"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"type\.mat.*real part has unknown data type 147"):
        read_mat_arrays(p, ["inst_map"])


def test_data_shorter_than_the_dimensions_is_a_named_error(tmp_path):
    data = bytearray(_mat(False))
    dims = _offset_of_variable(data, 0) + 8 + 16 + 8
    struct.pack_into("<i", data, dims, 7)  # 7x8 declared, 6x8 stored
    p = tmp_path / "dims.mat"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"dims\.mat.*192 bytes, but 56 elements.*need 224"):
        read_mat_arrays(p, ["inst_map"])


def test_huge_declared_size_is_refused_before_decompressing(tmp_path):
    p = tmp_path / "huge.mat"
    p.write_bytes(_mat(True, inst_map=np.zeros((20, 20), np.uint8)))
    with pytest.raises(InputError, match=r"huge\.mat.*'inst_map' declares 20x20 = 400 elements, over the limit of 100"):
        read_mat_arrays(p, ["inst_map"], max_elements=100)


def test_damaged_compressed_data_is_a_named_error(tmp_path):
    data = bytearray(_mat(True))
    data[128 + 8 + 20] ^= 0xFF
    p = tmp_path / "z.mat"
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"z\.mat"):
        read_mat_arrays(p, ["inst_map"])
    assert zlib  # the error is raised by Python's zlib, not by the compiled reader


@pytest.mark.parametrize(("name", "kind"), [("extra", "a struct"), ("cells", "a cell array")])
def test_a_requested_variable_of_another_class_is_named(tmp_path, name, kind):
    p = tmp_path / "k.mat"
    p.write_bytes(_mat(True))
    with pytest.raises(InputError, match=rf"k\.mat.*'{name}' is {kind}, expected a numeric array"):
        read_mat_arrays(p, [name])


def test_other_formats_are_named(tmp_path):
    p = tmp_path / "h5.mat"
    p.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))
    with pytest.raises(InputError, match=r"h5\.mat.*v7\.3 \(HDF5\).*-v7"):
        read_mat_arrays(p, ["inst_map"])
    p.write_bytes(bytes(100))
    with pytest.raises(InputError, match=r"h5\.mat.*shorter than the 128-byte header"):
        read_mat_arrays(p, ["inst_map"])
    p.write_bytes(_mat(False) + b"\x01\x02")
    with pytest.raises(InputError, match=r"h5\.mat.*2 stray bytes"):
        read_mat_arrays(p, ["inst_map"])
