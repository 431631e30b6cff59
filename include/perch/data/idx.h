// perch/data/idx.h — IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.
//
// Layout: a 4-byte magic {0, 0, type, ndims}, then ndims big-endian uint32 dims, then the elements in
// row-major order, big-endian. Types: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
// 0x0E float64. Gzip is detected from the content (zlib reads plain files transparently), not the name.
//
// Every defect throws perch::Error naming the file: bad magic, unknown type, zero dims, shapes above
// kMaxElements (refused before allocation), a file shorter than its header promises (with expected and
// actual byte counts), trailing bytes after the data, corrupt or cut gzip streams. Before allocating, a
// plain file's size must match the dims exactly, and a gzip file must be large enough to possibly hold
// them (deflate expands at most ~1032:1), so a tiny file with huge dims never causes a huge allocation.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

#include "perch/core/tensor.h"

namespace perch {

// Reads an IDX file; the tensor has the file's element type (uint8 for MNIST) and the IDX dims as shape,
// values converted to host byte order.
Tensor read_idx(const std::filesystem::path& path);

// Parses an uncompressed IDX image held in memory; `what` names it in error messages.
Tensor parse_idx(std::string_view bytes, const std::string& what);

// Encodes a tensor as uncompressed IDX bytes (uint8, int8, int16, int32, float32, float64; rank >= 1).
std::string encode_idx(const Tensor& t);

// IDX type code <-> DType; idx_dtype throws (naming `what`) on an unknown code.
DType idx_dtype(uint8_t code, const std::string& what);
uint8_t idx_type_code(DType t);

}  // namespace perch
