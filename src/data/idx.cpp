#include "perch/data/idx.h"

#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <optional>

#include "perch/core/error.h"

namespace perch {

DType idx_dtype(uint8_t code, const std::string& what) {
  switch (code) {
    case 0x08: return DType::kUInt8;
    case 0x09: return DType::kInt8;
    case 0x0B: return DType::kInt16;
    case 0x0C: return DType::kInt32;
    case 0x0D: return DType::kFloat32;
    case 0x0E: return DType::kFloat64;
    default: break;
  }
  char hex[8];
  std::snprintf(hex, sizeof hex, "0x%02X", code);
  PERCH_FAIL(what, ": unknown IDX element type ", hex,
             " (expected 0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int, 0x0D float or 0x0E double)");
}

uint8_t idx_type_code(DType t) {
  switch (t) {
    case DType::kUInt8: return 0x08;
    case DType::kInt8: return 0x09;
    case DType::kInt16: return 0x0B;
    case DType::kInt32: return 0x0C;
    case DType::kFloat32: return 0x0D;
    case DType::kFloat64: return 0x0E;
    default: break;
  }
  PERCH_FAIL("IDX has no element type for ", dtype_name(t), " tensors");
}

namespace {

// Reads up to n bytes into dst; returns how many were read (0 at end of input); throws on I/O errors.
using ReadFn = std::function<size_t(void* dst, size_t n)>;

uint32_t load_be32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

// Copies `n` elements of big-endian data into `dst` in host order.
void copy_from_big_endian(const unsigned char* src, std::byte* dst, size_t n, size_t elem) {
  if (elem == 1 || std::endian::native == std::endian::big) {
    std::memcpy(dst, src, n * elem);
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    const unsigned char* s = src + i * elem;
    std::byte* d = dst + i * elem;
    for (size_t b = 0; b < elem; ++b) d[b] = static_cast<std::byte>(s[elem - 1 - b]);
  }
}

size_t read_full(const ReadFn& read, void* dst, size_t n) {
  size_t got = 0;
  auto* p = static_cast<unsigned char*>(dst);
  while (got < n) {
    size_t r = read(p + got, n - got);
    if (r == 0) break;
    got += r;
  }
  return got;
}

// Deflate cannot expand data by more than about 1032:1, so a gzip file of C bytes holds at most this many.
uint64_t max_gunzipped_bytes(uint64_t compressed) { return compressed * 1032 + (1 << 16); }

// Byte-swaps `n` elements of size `elem` in place (big-endian file -> little-endian host).
void swap_in_place(std::byte* p, size_t n, size_t elem) {
  if (elem == 1 || std::endian::native == std::endian::big) return;
  for (size_t i = 0; i < n; ++i) std::reverse(p + i * elem, p + (i + 1) * elem);
}

// How the input's size is known: `exact` (plain file, memory) = its total size, checked before allocating;
// `gzip_compressed` = the compressed file size, which bounds the uncompressed size (see above), so that
// absurd dims in a small gzip file are refused before allocation too.
struct SizeInfo {
  std::optional<uint64_t> exact;
  std::optional<uint64_t> gzip_compressed;
};

Tensor read_idx_stream(const ReadFn& read, const std::string& what, const SizeInfo& size) {
  unsigned char magic[4];
  size_t got = read_full(read, magic, 4);
  PERCH_CHECK(got == 4, what, ": not an IDX file: only ", got, " bytes, the 4-byte magic number is missing");
  PERCH_CHECK(magic[0] == 0 && magic[1] == 0, what, ": not an IDX file: magic number starts with bytes ",
              int(magic[0]), ",", int(magic[1]), " instead of 0,0");
  const DType dtype = idx_dtype(magic[2], what);
  const size_t ndims = magic[3];
  PERCH_CHECK(ndims > 0, what, ": IDX magic number declares 0 dimensions");

  std::vector<unsigned char> dimbytes(4 * ndims);
  got = read_full(read, dimbytes.data(), dimbytes.size());
  PERCH_CHECK(got == dimbytes.size(), what, ": truncated IDX header: ", ndims, " dimensions need ",
              4 + dimbytes.size(), " header bytes, the file has only ", 4 + got);
  Shape shape(ndims);
  for (size_t i = 0; i < ndims; ++i) shape[i] = load_be32(&dimbytes[4 * i]);
  const int64_t numel = checked_numel(shape, what + ": IDX dims " + shape_str(shape));
  const size_t elem = dtype_size(dtype);
  const uint64_t header_bytes = 4 + 4 * ndims;
  const uint64_t data_bytes = static_cast<uint64_t>(numel) * elem;
  const uint64_t expected = header_bytes + data_bytes;
  auto need = [&] {
    return detail::concat("dims ", shape_str(shape), " of ", dtype_name(dtype), " need ", expected, " bytes (",
                          header_bytes, " header + ", data_bytes, " data)");
  };

  if (size.exact) {
    PERCH_CHECK(*size.exact >= expected, what, ": truncated IDX file: ", need(), ", the file has ", *size.exact);
    PERCH_CHECK(*size.exact == expected, what, ": IDX file has ", *size.exact - expected, " trailing bytes after the data (",
                need(), ", the file has ", *size.exact, ")");
  }
  if (size.gzip_compressed) {
    PERCH_CHECK(expected <= max_gunzipped_bytes(*size.gzip_compressed), what, ": truncated or corrupt IDX file: ",
                need(), " uncompressed, more than a ", *size.gzip_compressed, "-byte gzip file can hold");
  }

  Tensor t = Tensor::uninitialized(dtype, shape);  // filled by the read below (or refused)
  auto* data = static_cast<std::byte*>(t.raw());
  got = data_bytes ? read_full(read, data, data_bytes) : 0;
  PERCH_CHECK(got == data_bytes, what, ": truncated IDX file: ", need(), ", got only ", header_bytes + got,
              size.exact ? "" : " (uncompressed)");
  if (!size.exact) {
    unsigned char extra[64];
    PERCH_CHECK(read_full(read, extra, sizeof extra) == 0, what, ": IDX file has trailing bytes after the data (",
                need(), " uncompressed)");
  }
  swap_in_place(data, static_cast<size_t>(numel), elem);
  return t;
}

struct GzFile {
  gzFile f = nullptr;
  ~GzFile() {
    if (f) gzclose(f);
  }
};

}  // namespace

Tensor parse_idx(std::string_view bytes, const std::string& what) {
  size_t pos = 0;
  ReadFn read = [&](void* dst, size_t n) {
    size_t k = std::min(n, bytes.size() - pos);
    std::memcpy(dst, bytes.data() + pos, k);
    pos += k;
    return k;
  };
  return read_idx_stream(read, what, SizeInfo{bytes.size(), std::nullopt});
}

Tensor read_idx(const std::filesystem::path& path) {
  const std::string what = path.string();
  std::error_code ec;
  PERCH_CHECK(std::filesystem::exists(path, ec), what, ": IDX file not found");
  PERCH_CHECK(std::filesystem::is_regular_file(path, ec), what, ": not a regular file");
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  PERCH_CHECK(!ec, what, ": cannot get file size: ", ec.message());

  GzFile gz;
  gz.f = gzopen(path.c_str(), "rb");
  PERCH_CHECK(gz.f, what, ": cannot open: ", std::strerror(errno));
  gzbuffer(gz.f, 1 << 17);

  // Right after gzopen, gzdirect looks at the start of the file: 1 if it is plain (not gzip).
  const bool direct = gzdirect(gz.f) != 0;
  // A gzip stream that ends early reads as end-of-input (zlib's Z_BUF_ERROR): the IDX size checks then
  // report expected vs. actual bytes, and the note below says why.
  bool stream_cut = false;
  ReadFn read = [&](void* dst, size_t n) -> size_t {
    unsigned chunk = static_cast<unsigned>(std::min<size_t>(n, 1u << 30));
    int r = gzread(gz.f, dst, chunk);
    int err = Z_OK;
    const char* msg = gzerror(gz.f, &err);
    if (err == Z_BUF_ERROR) {
      stream_cut = true;
      return r > 0 ? static_cast<size_t>(r) : 0;
    }
    if (r < 0 || err != Z_OK) {
      PERCH_FAIL(what, ": corrupt gzip data: ", (err == Z_ERRNO ? std::strerror(errno) : msg));
    }
    return static_cast<size_t>(r);
  };
  const char* cut_note = " (the gzip stream ends early: the file is truncated)";
  Tensor t;
  try {
    t = read_idx_stream(read, what, direct ? SizeInfo{file_size, std::nullopt} : SizeInfo{std::nullopt, file_size});
  } catch (const Error& e) {
    if (stream_cut) throw Error(std::string(e.what()) + cut_note);
    throw;
  }
  PERCH_CHECK(!stream_cut, what, ": truncated gzip file: all ", t.nbytes(), " data bytes are present but the gzip "
              "trailer (CRC and length) is missing", cut_note);
  return t;
}

std::string encode_idx(const Tensor& t) {
  PERCH_CHECK(t.rank() >= 1 && t.rank() <= 255, "encode_idx: IDX needs rank 1..255, got ", t.rank());
  const uint8_t code = idx_type_code(t.dtype());
  std::string out;
  out.push_back(0);
  out.push_back(0);
  out.push_back(static_cast<char>(code));
  out.push_back(static_cast<char>(t.rank()));
  for (int64_t d : t.shape()) {
    PERCH_CHECK(d >= 0 && d <= int64_t{0xFFFFFFFF}, "encode_idx: dim ", d, " does not fit IDX's uint32");
    for (int s = 24; s >= 0; s -= 8) out.push_back(static_cast<char>((static_cast<uint64_t>(d) >> s) & 0xFF));
  }
  const size_t elem = dtype_size(t.dtype());
  const size_t off = out.size();
  out.resize(off + t.nbytes());
  if (t.numel() > 0)
    copy_from_big_endian(static_cast<const unsigned char*>(t.raw()), reinterpret_cast<std::byte*>(out.data() + off),
                         static_cast<size_t>(t.numel()), elem);  // a byte swap is its own inverse
  return out;
}

}  // namespace perch
