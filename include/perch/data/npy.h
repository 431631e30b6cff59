// perch/data/npy.h — NumPy .npy files.
//
// Reads format versions 1.0, 2.0 and 3.0; writes 1.0 (2.0 when the header does not fit 1.0's 16-bit
// length). Element types: little-endian <f4 <f8 <i2 <u2 <i4 <i8 and the one-byte |u1 |i1 |b1 (also with
// '<' or '=' as NumPy accepts). C order only: fortran_order True, big-endian descrs, other types, malformed
// headers, absurd shapes (refused before allocation), truncated files and trailing bytes all throw
// perch::Error naming the file and what is wrong. Bool elements are normalized to 0/1 on read.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "perch/core/tensor.h"

namespace perch {

Tensor read_npy(const std::filesystem::path& path);
// Writes atomically (temporary file in the same folder, then rename).
void write_npy(const std::filesystem::path& path, const Tensor& t);

// In-memory versions: parse_npy names the data `what` in errors; encode_npy returns the file's bytes.
Tensor parse_npy(std::string_view bytes, const std::string& what);
std::string encode_npy(const Tensor& t);

// The .npy descr of a dtype ("<f4", "|u1", ...).
const char* npy_descr(DType t);

}  // namespace perch
