#include "perch/data/idx.h"

#include <gtest/gtest.h>

#include "data_test_util.h"

namespace perch {
namespace {

using test::bytes_of;
using test::ScratchDir;

// A 2x3 ubyte IDX file, byte by byte: magic 00 00 08 02, dims 2 and 3 big-endian, 6 pixels.
std::string tiny_ubyte() {
  return bytes_of({0, 0, 0x08, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 2, 253, 254, 255});
}

TEST(Idx, ReadsHandBuiltUbyte) {
  ScratchDir dir;
  test::write_bytes(dir / "a.idx", tiny_ubyte());
  Tensor t = read_idx(dir / "a.idx");
  EXPECT_EQ(t.dtype(), DType::kUInt8);
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  std::vector<uint8_t> want = {0, 1, 2, 253, 254, 255};
  EXPECT_EQ(std::vector<uint8_t>(t.span<uint8_t>().begin(), t.span<uint8_t>().end()), want);
}

TEST(Idx, ReadsGzipSameAsPlain) {
  ScratchDir dir;
  test::write_gz(dir / "a.idx.gz", tiny_ubyte());
  Tensor t = read_idx(dir / "a.idx.gz");
  EXPECT_EQ(t.shape(), (Shape{2, 3}));
  EXPECT_EQ(t.data<uint8_t>()[5], 255);
  // Detection is by content: a gzip file without .gz works, and a plain file named .gz too.
  test::write_gz(dir / "gz_no_suffix", tiny_ubyte());
  EXPECT_EQ(read_idx(dir / "gz_no_suffix").shape(), (Shape{2, 3}));
  test::write_bytes(dir / "plain.gz", tiny_ubyte());
  EXPECT_EQ(read_idx(dir / "plain.gz").shape(), (Shape{2, 3}));
}

TEST(Idx, ReadsBigEndianTypes) {
  ScratchDir dir;
  // int16 [2]: 0x0102 = 258, 0xFFFE = -2
  test::write_bytes(dir / "s.idx", bytes_of({0, 0, 0x0B, 1, 0, 0, 0, 2, 0x01, 0x02, 0xFF, 0xFE}));
  Tensor s = read_idx(dir / "s.idx");
  ASSERT_EQ(s.dtype(), DType::kInt16);
  EXPECT_EQ(s.data<int16_t>()[0], 258);
  EXPECT_EQ(s.data<int16_t>()[1], -2);
  // int32 [1]: 0x01020304
  test::write_bytes(dir / "i.idx", bytes_of({0, 0, 0x0C, 1, 0, 0, 0, 1, 1, 2, 3, 4}));
  EXPECT_EQ(read_idx(dir / "i.idx").data<int32_t>()[0], 0x01020304);
  // float32 [1]: 1.5f = 0x3FC00000
  test::write_bytes(dir / "f.idx", bytes_of({0, 0, 0x0D, 1, 0, 0, 0, 1, 0x3F, 0xC0, 0, 0}));
  EXPECT_EQ(read_idx(dir / "f.idx").data<float>()[0], 1.5f);
  // float64 [1]: -2.0 = 0xC000000000000000
  test::write_bytes(dir / "d.idx", bytes_of({0, 0, 0x0E, 1, 0, 0, 0, 1, 0xC0, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(read_idx(dir / "d.idx").data<double>()[0], -2.0);
  // int8 [2]
  test::write_bytes(dir / "b.idx", bytes_of({0, 0, 0x09, 1, 0, 0, 0, 2, 0x80, 0x7F}));
  Tensor b = read_idx(dir / "b.idx");
  EXPECT_EQ(b.data<int8_t>()[0], -128);
  EXPECT_EQ(b.data<int8_t>()[1], 127);
}

TEST(Idx, EncodeRoundTrips) {
  Tensor f = Tensor::from<float>({2, 2}, {1.0f, -2.5f, 3.25f, 0.0f});
  Tensor g = parse_idx(encode_idx(f), "mem");
  EXPECT_EQ(g.shape(), f.shape());
  for (int i = 0; i < 4; ++i) EXPECT_EQ(g.data<float>()[i], f.data<float>()[i]);
  Tensor i32 = Tensor::from<int32_t>({3}, {-1, 0, 123456789});
  EXPECT_EQ(parse_idx(encode_idx(i32), "mem").to_i64_vector(), (std::vector<int64_t>{-1, 0, 123456789}));
  EXPECT_EQ(encode_idx(Tensor::from<uint8_t>({2, 3}, {0, 1, 2, 253, 254, 255})), tiny_ubyte());
}

TEST(Idx, TruncatedPlainFileNamesExpectedAndActualBytes) {
  ScratchDir dir;
  std::string b = tiny_ubyte();
  test::write_bytes(dir / "short.idx", b.substr(0, b.size() - 2));
  EXPECT_ERROR_HAS(read_idx(dir / "short.idx"), "short.idx", "truncated", "need 18 bytes", "has 16");
}

TEST(Idx, TruncatedGzipPayload) {
  ScratchDir dir;
  std::string b = tiny_ubyte();
  test::write_gz(dir / "short.gz", b.substr(0, b.size() - 2));
  EXPECT_ERROR_HAS(read_idx(dir / "short.gz"), "short.gz", "truncated", "need 18 bytes", "got only 16");
}

TEST(Idx, TruncatedGzipStream) {
  ScratchDir dir;
  // A gzip of 10000 pseudo-random pixels (incompressible) cut in the middle of the compressed stream.
  std::string b = bytes_of({0, 0, 0x08, 1, 0, 0, 0x27, 0x10});
  uint32_t x = 12345;
  for (int i = 0; i < 10000; ++i) b.push_back(static_cast<char>((x = x * 1664525u + 1013904223u) >> 24));
  test::write_gz(dir / "full.gz", b);
  std::string gz = test::slurp(dir / "full.gz");
  test::write_bytes(dir / "cut.gz", gz.substr(0, gz.size() / 2));
  EXPECT_ERROR_HAS(read_idx(dir / "cut.gz"), "cut.gz", "truncated IDX file", "need 10008 bytes", "got only",
                   "gzip stream ends early");
  // Missing only the 8-byte trailer (CRC + size): all data is there but the stream is incomplete.
  test::write_bytes(dir / "notrailer.gz", gz.substr(0, gz.size() - 8));
  EXPECT_ERROR_HAS(read_idx(dir / "notrailer.gz"), "notrailer.gz", "trailer");
}

TEST(Idx, CorruptGzip) {
  ScratchDir dir;
  std::string b = bytes_of({0, 0, 0x08, 1, 0, 0, 0x27, 0x10}) + std::string(10000, '\x07');
  test::write_gz(dir / "ok.gz", b);
  std::string gz = test::slurp(dir / "ok.gz");
  for (size_t i = 12; i < gz.size() - 8; ++i) gz[i] = static_cast<char>(gz[i] ^ 0x5A);
  test::write_bytes(dir / "bad.gz", gz);
  EXPECT_ERROR_HAS(read_idx(dir / "bad.gz"), "bad.gz", "corrupt gzip data");
}

TEST(Idx, TrailingBytesRefused) {
  ScratchDir dir;
  test::write_bytes(dir / "long.idx", tiny_ubyte() + "xy");
  EXPECT_ERROR_HAS(read_idx(dir / "long.idx"), "long.idx", "2 trailing bytes");
  test::write_gz(dir / "long.gz", tiny_ubyte() + "xy");
  EXPECT_ERROR_HAS(read_idx(dir / "long.gz"), "long.gz", "trailing bytes");
}

TEST(Idx, BadMagic) {
  ScratchDir dir;
  test::write_bytes(dir / "m.idx", bytes_of({1, 0, 0x08, 1, 0, 0, 0, 1, 5}));
  EXPECT_ERROR_HAS(read_idx(dir / "m.idx"), "m.idx", "not an IDX file");
  test::write_bytes(dir / "t.idx", bytes_of({0, 0, 0x0A, 1, 0, 0, 0, 1, 5}));
  EXPECT_ERROR_HAS(read_idx(dir / "t.idx"), "t.idx", "unknown IDX element type 0x0A");
  test::write_bytes(dir / "z.idx", bytes_of({0, 0, 0x08, 0}));
  EXPECT_ERROR_HAS(read_idx(dir / "z.idx"), "z.idx", "0 dimensions");
  test::write_bytes(dir / "e.idx", "");
  EXPECT_ERROR_HAS(read_idx(dir / "e.idx"), "e.idx", "magic number is missing");
  test::write_bytes(dir / "h.idx", bytes_of({0, 0, 0x08, 3, 0, 0, 0, 1}));
  EXPECT_ERROR_HAS(read_idx(dir / "h.idx"), "h.idx", "truncated IDX header", "16 header bytes");
}

TEST(Idx, AbsurdDimsRefusedBeforeAllocation) {
  ScratchDir dir;
  // 0xFFFFFFFF^3 elements: far above kMaxElements.
  test::write_bytes(dir / "huge.idx",
                    bytes_of({0, 0, 0x08, 3, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1}));
  EXPECT_ERROR_HAS(read_idx(dir / "huge.idx"), "huge.idx", "2^34");
  // 2^32-1 bytes promised (allowed by kMaxElements) by a tiny gzip: deflate cannot expand that much, so it
  // is refused without allocating 4 GiB.
  test::write_gz(dir / "big.gz", bytes_of({0, 0, 0x08, 1, 0xFF, 0xFF, 0xFF, 0xFF, 1}));
  EXPECT_ERROR_HAS(read_idx(dir / "big.gz"), "big.gz", "truncated or corrupt", "need 4294967303 bytes",
                   "gzip file can hold");
  // Within the bound but still short: read, then refused with the byte counts.
  test::write_gz(dir / "short.gz", bytes_of({0, 0, 0x08, 1, 0, 0, 0x10, 0, 1, 2, 3}));
  EXPECT_ERROR_HAS(read_idx(dir / "short.gz"), "short.gz", "truncated IDX file", "need 4104 bytes", "got only 11");
  test::write_bytes(dir / "big.idx", bytes_of({0, 0, 0x08, 1, 0xFF, 0xFF, 0xFF, 0xFF, 1}));
  EXPECT_ERROR_HAS(read_idx(dir / "big.idx"), "big.idx", "truncated", "the file has 9");
}

TEST(Idx, MissingFile) {
  EXPECT_ERROR_HAS(read_idx("/nonexistent/perch/x.idx"), "/nonexistent/perch/x.idx", "not found");
}

TEST(Idx, EmptyDimIsAnEmptyTensor) {
  Tensor t = parse_idx(bytes_of({0, 0, 0x08, 2, 0, 0, 0, 0, 0, 0, 0, 28}), "mem");
  EXPECT_EQ(t.shape(), (Shape{0, 28}));
  EXPECT_EQ(t.numel(), 0);
}

}  // namespace
}  // namespace perch
