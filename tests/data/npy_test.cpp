#include "perch/data/npy.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "data_test_util.h"
#include "perch/core/file_io.h"

namespace perch {
namespace {

using test::bytes_of;
using test::ScratchDir;

// Builds a version-1.0 file from a header dict (padded the NumPy way) and raw data bytes.
std::string npy_v1(const std::string& dict, const std::string& data) {
  size_t total = 10 + dict.size() + 1;
  std::string header = dict + std::string((64 - total % 64) % 64, ' ') + "\n";
  std::string out = "\x93NUMPY";
  out += bytes_of({1, 0, int(header.size() & 0xFF), int(header.size() >> 8)});
  return out + header + data;
}

std::string le_f32(std::initializer_list<float> v) {
  std::string s;
  for (float f : v) s.append(reinterpret_cast<const char*>(&f), 4);
  return s;
}

// What NumPy 1.x's np.save(np.array([1, 2, 3], dtype='<i4')) writes, byte by byte.
std::string numpy_int32_123() {
  std::string b = "\x93NUMPY";
  b += bytes_of({0x01, 0x00, 0x76, 0x00});
  b += "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
  b += std::string(60, ' ') + "\n";
  b += bytes_of({1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0});
  return b;
}

TEST(Npy, ReadsHandBuiltNumpyFile) {
  ScratchDir dir;
  test::write_bytes(dir / "a.npy", numpy_int32_123());
  Tensor t = read_npy(dir / "a.npy");
  EXPECT_EQ(t.dtype(), DType::kInt32);
  EXPECT_EQ(t.shape(), (Shape{3}));
  EXPECT_EQ(t.to_i64_vector(), (std::vector<int64_t>{1, 2, 3}));
}

TEST(Npy, WritesWhatNumpyWrites) {
  EXPECT_EQ(encode_npy(Tensor::from<int32_t>({3}, {1, 2, 3})), numpy_int32_123());
  // Header + preamble is always a multiple of 64 bytes (NumPy's alignment).
  std::string s = encode_npy(Tensor(DType::kFloat32, {7, 5, 3}));
  size_t hlen = static_cast<unsigned char>(s[8]) | (static_cast<unsigned char>(s[9]) << 8);
  EXPECT_EQ((10 + hlen) % 64, 0u);
  EXPECT_EQ(s[10 + hlen - 1], '\n');
}

TEST(Npy, ScalarAndShapes) {
  // Scalar: shape ().
  Tensor s = parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", le_f32({2.5f})), "s");
  EXPECT_EQ(s.rank(), 0);
  EXPECT_EQ(s.data<float>()[0], 2.5f);
  // Keys in another order, double quotes, no trailing comma, odd spacing, Python 2 'L' suffixes.
  Tensor t = parse_npy(npy_v1("{ \"shape\" : ( 2L , 1L ) , \"fortran_order\":False,\"descr\":\"<f4\"}", le_f32({1, 2})), "t");
  EXPECT_EQ(t.shape(), (Shape{2, 1}));
  // Zero-size dimension.
  Tensor z = parse_npy(npy_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (0, 4), }", ""), "z");
  EXPECT_EQ(z.shape(), (Shape{0, 4}));
}

TEST(Npy, RoundTripsEveryType) {
  ScratchDir dir;
  std::vector<Tensor> ts = {
      Tensor::from<float>({2, 3}, {0.f, -1.5f, 3.25f, 1e-20f, -0.f, 7.f}),
      Tensor::from<double>({2}, {M_PI, -1e300}),
      Tensor::from<uint8_t>({4}, {0, 1, 128, 255}),
      Tensor::from<int8_t>({2, 2}, {-128, -1, 0, 127}),
      Tensor::from<int16_t>({3}, {-32768, 0, 32767}),
      Tensor::from<uint16_t>({2}, {0, 65535}),
      Tensor::from<int32_t>({1, 1, 2}, {INT32_MIN, INT32_MAX}),
      Tensor::from<int64_t>({2}, {INT64_MIN, INT64_MAX}),
      [] {
        Tensor b(DType::kBool, {3});
        b.data<bool>()[0] = true;
        b.data<bool>()[2] = true;
        return b;
      }(),
      Tensor::scalar_f32(42.f),
      Tensor(DType::kFloat32, {0, 3}),
      Tensor::from<Half>({2, 2}, {Half{0x3c00}, Half{0x8000}, Half{0x7bff}, Half{0x0001}}),  // <f2
  };
  for (size_t i = 0; i < ts.size(); ++i) {
    std::string name = "t";
    name += std::to_string(i);
    name += ".npy";
    auto p = dir / name;
    write_npy(p, ts[i]);
    Tensor r = read_npy(p);
    EXPECT_EQ(r.dtype(), ts[i].dtype()) << i;
    EXPECT_EQ(r.shape(), ts[i].shape()) << i;
    ASSERT_EQ(r.nbytes(), ts[i].nbytes()) << i;
    EXPECT_EQ(std::memcmp(r.raw(), ts[i].raw(), r.nbytes()), 0) << i;
  }
}

TEST(Npy, ReadsVersions2And3) {
  std::string dict = "{'descr': '|u1', 'fortran_order': False, 'shape': (2,), }";
  for (int major : {2, 3}) {
    size_t total = 12 + dict.size() + 1;
    std::string header = dict + std::string((64 - total % 64) % 64, ' ') + "\n";
    std::string b = "\x93NUMPY" + bytes_of({major, 0, int(header.size()), 0, 0, 0}) + header + bytes_of({7, 9});
    Tensor t = parse_npy(b, "v");
    EXPECT_EQ(t.shape(), (Shape{2}));
    EXPECT_EQ(t.data<uint8_t>()[1], 9);
  }
  EXPECT_ERROR_HAS(parse_npy("\x93NUMPY" + bytes_of({4, 0, 0, 0}), "v4.npy"), "v4.npy", "version 4.0");
}

TEST(Npy, WritesVersion2ForHugeHeaders) {
  // 30000 dims of 1: the header is over 64 KiB, so 1.0's 16-bit length cannot hold it.
  Tensor t(DType::kUInt8, Shape(30000, 1));
  std::string b = encode_npy(t);
  EXPECT_EQ(b[6], 2);
  Tensor r = parse_npy(b, "big");
  EXPECT_EQ(r.shape().size(), 30000u);
}

TEST(Npy, RefusesFortranOrder) {
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", le_f32({1, 2})), "f.npy"),
                   "f.npy", "Fortran order");
}

TEST(Npy, RefusesBigEndianAndUnknownTypes) {
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", "abcd"), "be.npy"),
                   "be.npy", "big-endian", ">f4");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", "abcdefgh"), "c.npy"),
                   "c.npy", "unsupported .npy dtype '<c8'");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '|f4', 'fortran_order': False, 'shape': (1,), }", "abcd"), "p.npy"),
                   "p.npy", "multi-byte");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", "abcd"), "s.npy"),
                   "s.npy", "bad .npy header");
}

TEST(Npy, RefusesBadHeaders) {
  const std::string d = le_f32({1});
  EXPECT_ERROR_HAS(parse_npy("NUMPY!" + bytes_of({1, 0, 0, 0}), "m.npy"), "m.npy", "bad magic");
  EXPECT_ERROR_HAS(parse_npy("\x93NU", "short.npy"), "short.npy", "not a .npy file");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'shape': (1,), }", d), "k.npy"), "k.npy", "missing key 'fortran_order'");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}", d), "x.npy"),
                   "x.npy", "bad .npy header");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", d), "n.npy"),
                   "n.npy", "bad .npy header");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (1,, }", d), "t.npy"),
                   "t.npy", "bad .npy header");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': [1], }", d), "l.npy"),
                   "l.npy", "bad .npy header");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }", d), "b.npy"),
                   "b.npy", "bad .npy header");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), } junk", d), "j.npy"),
                   "j.npy", "unexpected text");
  // Header length pointing past the end of the file.
  EXPECT_ERROR_HAS(parse_npy("\x93NUMPY" + bytes_of({1, 0, 0xFF, 0x00}) + "{'descr'", "h.npy"), "h.npy",
                   "truncated .npy header", "255 header bytes");
}

TEST(Npy, RefusesAbsurdShapesBeforeAllocation) {
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999, 99999999999), }", ""),
                             "huge.npy"),
                   "huge.npy", "2^34");
  EXPECT_ERROR_HAS(parse_npy(npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", ""),
                             "over.npy"),
                   "over.npy", "too large");
  // Allowed by kMaxElements but not by the file size: refused with the sizes, not an allocation.
  ScratchDir dir;
  test::write_bytes(dir / "lie.npy", npy_v1("{'descr': '<f8', 'fortran_order': False, 'shape': (1000000000,), }", "12345678"));
  EXPECT_ERROR_HAS(read_npy(dir / "lie.npy"), "lie.npy", "truncated", "needs 8000000128 bytes", "the file has 136");
}

TEST(Npy, TruncatedAndTrailingData) {
  ScratchDir dir;
  std::string full = numpy_int32_123();
  test::write_bytes(dir / "cut.npy", full.substr(0, full.size() - 3));
  EXPECT_ERROR_HAS(read_npy(dir / "cut.npy"), "cut.npy", "truncated", "needs 140 bytes", "the file has 137");
  test::write_bytes(dir / "long.npy", full + "zz");
  EXPECT_ERROR_HAS(read_npy(dir / "long.npy"), "long.npy", "2 trailing bytes");
  test::write_bytes(dir / "hdr.npy", full.substr(0, 40));
  EXPECT_ERROR_HAS(read_npy(dir / "hdr.npy"), "hdr.npy", "truncated .npy header");
  test::write_bytes(dir / "empty.npy", "");
  EXPECT_ERROR_HAS(read_npy(dir / "empty.npy"), "empty.npy", "not a .npy file");
  EXPECT_ERROR_HAS(read_npy(dir / "missing.npy"), "missing.npy", "not found");
}

TEST(Npy, BoolsAreNormalized) {
  Tensor t = parse_npy(npy_v1("{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }", bytes_of({0, 1, 7})), "b");
  const auto* p = static_cast<const unsigned char*>(t.raw());
  EXPECT_EQ(p[2], 1);
}

TEST(FileIo, AtomicWriteReplacesAndLeavesNoTemp) {
  ScratchDir dir;
  write_file_atomic(dir / "x.bin", "first");
  write_file_atomic(dir / "x.bin", "second, longer");
  EXPECT_EQ(read_file(dir / "x.bin"), "second, longer");
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++n;
  }
  EXPECT_EQ(n, 1u);
  write_file_atomic(dir / "empty.bin", "");
  EXPECT_EQ(read_file(dir / "empty.bin"), "");
}

TEST(FileIo, ClearErrorsAndCleanupOnFailure) {
  ScratchDir dir;
  EXPECT_ERROR_HAS(write_file_atomic(dir / "no/such/dir/x.npy", "a"), "no/such/dir/x.npy", "does not exist");
  // Renaming over a non-empty folder fails: the temporary must be removed.
  std::filesystem::create_directories(dir / "occupied" / "child");
  EXPECT_ERROR_HAS(write_npy(dir / "occupied", Tensor::scalar_f32(1)), "occupied", "cannot rename", "directory");
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    (void)e;
    ++n;
  }
  EXPECT_EQ(n, 1u);  // only "occupied"
  EXPECT_ERROR_HAS(read_file(dir / "nope"), "nope", "cannot open");
}

}  // namespace
}  // namespace perch
