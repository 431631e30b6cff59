#include "perch/data/npy.h"

#include <bit>
#include <cctype>
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <variant>

#include "perch/core/error.h"
#include "perch/core/file_io.h"

namespace perch {

static_assert(std::endian::native == std::endian::little, "perch's .npy code assumes a little-endian host");

const char* npy_descr(DType t) {
  switch (t) {
    case DType::kFloat32: return "<f4";
    case DType::kFloat64: return "<f8";
    case DType::kInt8: return "|i1";
    case DType::kUInt8: return "|u1";
    case DType::kInt16: return "<i2";
    case DType::kUInt16: return "<u2";
    case DType::kInt32: return "<i4";
    case DType::kInt64: return "<i8";
    case DType::kBool: return "|b1";
    case DType::kFloat16: return "<f2";
    case DType::kBFloat16: PERCH_FAIL("bfloat16 has no .npy type (NumPy has no bfloat16); cast the tensor to float32");
  }
  return "?";
}

namespace {

constexpr std::string_view kMagic = "\x93NUMPY";

// --- a tiny parser for the header's Python dict literal --------------------------------------------
// Grammar accepted: '{' (key ':' value ','?)* '}', key = string, value = string | True | False |
// tuple of non-negative integers (optionally with Python 2's 'L' suffix). Whitespace anywhere.
struct Tuple {
  std::vector<int64_t> items;
};
using Value = std::variant<std::string, bool, Tuple>;

class HeaderParser {
 public:
  HeaderParser(std::string_view s, const std::string& what) : s_(s), what_(what) {}

  std::map<std::string, Value> parse_dict() {
    std::map<std::string, Value> out;
    expect('{');
    while (true) {
      skip_ws();
      if (peek() == '}') {
        ++pos_;
        break;
      }
      std::string key = parse_string();
      expect(':');
      Value v = parse_value();
      PERCH_CHECK(out.emplace(key, std::move(v)).second, what_, ": bad .npy header: key '", key, "' appears twice");
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      expect('}');
      break;
    }
    skip_ws();
    PERCH_CHECK(pos_ == s_.size(), what_, ": bad .npy header: unexpected text after the dict: '",
                std::string(s_.substr(pos_, 20)), "'");
    return out;
  }

 private:
  [[noreturn]] void fail(const std::string& msg) {
    PERCH_FAIL(what_, ": bad .npy header: ", msg, " at offset ", pos_, " in \"", std::string(s_), "\"");
  }
  void skip_ws() {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  char peek() {
    skip_ws();
    return pos_ < s_.size() ? s_[pos_] : '\0';
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  std::string parse_string() {
    char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    ++pos_;
    size_t end = s_.find(q, pos_);
    if (end == std::string_view::npos) fail("unterminated string");
    std::string out(s_.substr(pos_, end - pos_));
    if (out.find('\\') != std::string::npos) fail("escape sequences are not supported");
    pos_ = end + 1;
    return out;
  }
  int64_t parse_int() {
    skip_ws();
    size_t start = pos_;
    int64_t v = 0;
    while (pos_ < s_.size() && std::isdigit(static_cast<unsigned char>(s_[pos_]))) {
      int digit = s_[pos_] - '0';
      if (v > (INT64_MAX - digit) / 10) fail("dimension too large");
      v = v * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) fail("expected a non-negative integer dimension");
    if (pos_ < s_.size() && (s_[pos_] == 'L' || s_[pos_] == 'l')) ++pos_;
    return v;
  }
  Value parse_value() {
    char c = peek();
    if (c == '\'' || c == '"') return parse_string();
    if (c == '(') {
      ++pos_;
      Tuple t;
      if (peek() == ')') {
        ++pos_;
        return t;
      }
      while (true) {
        t.items.push_back(parse_int());
        char n = peek();
        if (n == ',') {
          ++pos_;
          if (peek() == ')') {
            ++pos_;
            break;
          }
          continue;
        }
        if (n == ')') {
          ++pos_;
          // (5) is not a tuple in Python: NumPy never writes it, but it is unambiguous, so accept.
          break;
        }
        fail("expected ',' or ')' in shape tuple");
      }
      return t;
    }
    if (s_.substr(pos_, 4) == "True") {
      pos_ += 4;
      return true;
    }
    if (s_.substr(pos_, 5) == "False") {
      pos_ += 5;
      return false;
    }
    fail("expected a string, True, False or a tuple");
  }

  std::string_view s_;
  const std::string& what_;
  size_t pos_ = 0;
};

DType parse_descr(const std::string& d, const std::string& what) {
  PERCH_CHECK(d.size() >= 2, what, ": unsupported .npy dtype '", d, "'");
  const char order = d[0];
  const std::string code = d.substr(1);
  PERCH_CHECK(order != '>', what, ": big-endian .npy data ('", d,
              "') is not supported; save it little-endian (e.g. arr.astype(arr.dtype.newbyteorder('<')))");
  PERCH_CHECK(order == '<' || order == '|' || order == '=', what, ": unsupported .npy dtype '", d, "'");
  static const std::map<std::string, DType> kTypes = {
      {"f4", DType::kFloat32}, {"f8", DType::kFloat64}, {"i1", DType::kInt8}, {"u1", DType::kUInt8},
      {"i2", DType::kInt16},   {"u2", DType::kUInt16},  {"i4", DType::kInt32}, {"i8", DType::kInt64},
      {"b1", DType::kBool},    {"f2", DType::kFloat16}};
  auto it = kTypes.find(code);
  PERCH_CHECK(it != kTypes.end(), what, ": unsupported .npy dtype '", d,
              "' (supported: <f4 <f8 <f2 |u1 |i1 <i2 <u2 <i4 <i8 |b1)");
  // '|' (not applicable) is only valid for one-byte types.
  PERCH_CHECK(order != '|' || dtype_size(it->second) == 1, what, ": .npy dtype '", d,
              "' has no byte order but is multi-byte");
  return it->second;
}

uint32_t load_le(const unsigned char* p, int n) {
  uint32_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

namespace {

struct NpyHeader {
  DType dtype;
  Shape shape;
  std::string descr;
  uint64_t offset = 0;      // where the data starts
  uint64_t data_bytes = 0;  // numel * element size
};

// Length of the preamble (magic, version, header length) for the version in `pre` (>= 8 bytes).
size_t preamble_size(std::string_view pre, uint64_t file_size, const std::string& what) {
  PERCH_CHECK(pre.size() >= 8 && pre.substr(0, 6) == kMagic, what,
              file_size < 8 ? ": not a .npy file (too short for the magic \\x93NUMPY)" : ": not a .npy file (bad magic; expected \\x93NUMPY)");
  const int major = static_cast<unsigned char>(pre[6]), minor = static_cast<unsigned char>(pre[7]);
  PERCH_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, what, ": unsupported .npy format version ",
              major, ".", minor, " (supported: 1.0, 2.0, 3.0)");
  const size_t prefix = major == 1 ? 10 : 12;
  PERCH_CHECK(file_size >= prefix, what, ": truncated .npy preamble: need ", prefix, " bytes, the file has ", file_size);
  return prefix;
}

// `head` holds at least the preamble; returns the declared header length.
uint64_t header_length(std::string_view head, size_t prefix) {
  const auto* u = reinterpret_cast<const unsigned char*>(head.data());
  return load_le(u + 8, prefix == 10 ? 2 : 4);
}

// Validates the whole header (`head` = preamble + header) against the total file size. Nothing is allocated
// for the data before this passes.
NpyHeader parse_header(std::string_view head, size_t prefix, uint64_t file_size, const std::string& what) {
  const uint64_t header_len = head.size() - prefix;
  std::string_view header = head.substr(prefix);
  PERCH_CHECK(header.find('\0') == std::string_view::npos, what, ": bad .npy header: contains a NUL byte");

  auto dict = HeaderParser(header, what).parse_dict();
  for (const auto& [key, value] : dict) {
    PERCH_CHECK(key == "descr" || key == "fortran_order" || key == "shape", what, ": bad .npy header: unexpected key '",
                key, "' (expected exactly descr, fortran_order, shape)");
  }
  for (const char* key : {"descr", "fortran_order", "shape"}) {
    PERCH_CHECK(dict.count(key), what, ": bad .npy header: missing key '", key, "' in \"", std::string(header), "\"");
  }
  const auto* descr = std::get_if<std::string>(&dict["descr"]);
  PERCH_CHECK(descr, what, ": bad .npy header: 'descr' must be a string (structured dtypes are not supported)");
  const auto* fortran = std::get_if<bool>(&dict["fortran_order"]);
  PERCH_CHECK(fortran, what, ": bad .npy header: 'fortran_order' must be True or False");
  const auto* shape_tuple = std::get_if<Tuple>(&dict["shape"]);
  PERCH_CHECK(shape_tuple, what, ": bad .npy header: 'shape' must be a tuple of integers");

  NpyHeader h;
  h.descr = *descr;
  h.dtype = parse_descr(*descr, what);
  PERCH_CHECK(!*fortran, what, ": .npy array is in Fortran order (fortran_order: True); only C order is supported "
              "(save np.ascontiguousarray(arr))");
  h.shape = shape_tuple->items;
  const int64_t numel = checked_numel(h.shape, what + ": .npy shape " + shape_str(h.shape));
  h.data_bytes = static_cast<uint64_t>(numel) * dtype_size(h.dtype);
  h.offset = prefix + header_len;
  const uint64_t have = file_size - h.offset;
  PERCH_CHECK(have >= h.data_bytes, what, ": truncated .npy file: shape ", shape_str(h.shape), " of ", h.descr, " needs ",
              h.offset + h.data_bytes, " bytes (", h.offset, " header + ", h.data_bytes, " data), the file has ", file_size);
  PERCH_CHECK(have == h.data_bytes, what, ": .npy file has ", have - h.data_bytes, " trailing bytes after the data (shape ",
              shape_str(h.shape), " of ", h.descr, " needs ", h.offset + h.data_bytes, " bytes, the file has ", file_size, ")");
  return h;
}

void normalize_bools(Tensor& t) {
  if (t.dtype() != DType::kBool) return;
  auto* p = static_cast<unsigned char*>(t.raw());
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = p[i] != 0;
}

}  // namespace

Tensor parse_npy(std::string_view bytes, const std::string& what) {
  const size_t prefix = preamble_size(bytes.substr(0, 8), bytes.size(), what);
  const uint64_t header_len = header_length(bytes, prefix);
  PERCH_CHECK(bytes.size() - prefix >= header_len, what, ": truncated .npy header: it declares ", header_len,
              " header bytes, but the file has ", bytes.size(), " bytes in total (need ", prefix + header_len,
              " before the data)");
  const NpyHeader h = parse_header(bytes.substr(0, prefix + header_len), prefix, bytes.size(), what);
  Tensor t(h.dtype, h.shape);
  if (h.data_bytes) std::memcpy(t.raw(), bytes.data() + h.offset, h.data_bytes);
  normalize_bools(t);
  return t;
}

std::string encode_npy(const Tensor& t) {
  PERCH_CHECK(!t.empty() || t.numel() == 0, "encode_npy: tensor has no storage");
  std::string dict = "{'descr': '";
  dict += npy_descr(t.dtype());
  dict += "', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < t.shape().size(); ++i) {
    if (i) dict += ", ";
    dict += std::to_string(t.shape()[i]);
  }
  if (t.shape().size() == 1) dict += ",";
  dict += "), }";
  // Pad with spaces so that preamble + header is a multiple of 64 bytes, ending in '\n'.
  auto padded = [&](size_t prefix) {
    size_t total = prefix + dict.size() + 1;
    size_t pad = (64 - total % 64) % 64;
    return dict + std::string(pad, ' ') + "\n";
  };
  std::string header = padded(10);
  int major = 1;
  if (header.size() > 0xFFFF) {
    major = 2;
    header = padded(12);
  }
  std::string out(kMagic);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xFF));
  out += header;
  const size_t off = out.size();
  out.resize(off + t.nbytes());
  if (t.nbytes()) std::memcpy(out.data() + off, t.raw(), t.nbytes());
  if (t.dtype() == DType::kBool) {
    for (size_t i = off; i < out.size(); ++i) out[i] = out[i] != 0;
  }
  return out;
}

Tensor read_npy(const std::filesystem::path& path) {
  const std::string what = path.string();
  std::error_code ec;
  PERCH_CHECK(std::filesystem::exists(path, ec), what, ": .npy file not found");
  PERCH_CHECK(std::filesystem::is_regular_file(path, ec), what, ": not a regular file");
  const uint64_t file_size = std::filesystem::file_size(path, ec);
  PERCH_CHECK(!ec, what, ": cannot get file size: ", ec.message());
  std::ifstream in(path, std::ios::binary);
  PERCH_CHECK(in, what, ": cannot open for reading: ", std::strerror(errno));

  // Read the header first, validate it against the file size, and only then allocate and read the data.
  auto read_exact = [&](char* dst, uint64_t n, const char* part) {
    in.read(dst, static_cast<std::streamsize>(n));
    PERCH_CHECK(static_cast<uint64_t>(in.gcount()) == n, what, ": read error in the .npy ", part, " (got ",
                in.gcount(), " of ", n, " bytes)");
  };
  std::string head(static_cast<size_t>(std::min<uint64_t>(file_size, 12)), '\0');
  read_exact(head.data(), head.size(), "preamble");
  const size_t prefix = preamble_size(head, file_size, what);
  const uint64_t header_len = header_length(head, prefix);
  PERCH_CHECK(file_size - prefix >= header_len, what, ": truncated .npy header: it declares ", header_len,
              " header bytes, but the file has ", file_size, " bytes in total (need ", prefix + header_len,
              " before the data)");
  head.resize(prefix + header_len);
  in.seekg(static_cast<std::streamoff>(prefix));
  read_exact(head.data() + prefix, header_len, "header");
  const NpyHeader h = parse_header(head, prefix, file_size, what);
  Tensor t(h.dtype, h.shape);
  if (h.data_bytes) read_exact(static_cast<char*>(t.raw()), h.data_bytes, "data");
  normalize_bools(t);
  return t;
}

void write_npy(const std::filesystem::path& path, const Tensor& t) { write_file_atomic(path, encode_npy(t)); }

}  // namespace perch
