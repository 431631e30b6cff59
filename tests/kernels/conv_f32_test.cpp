// conv2d_f32 (optimized: im2col + sgemm, 1x1 direct, depthwise direct) and conv2d_f32_reference, both
// against a double-precision loop written here from the formula in conv_f32.h, over fixed edge cases and
// randomized shapes, on every path set (see kernel_test_util.h for the tolerance policy).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "kernel_test_util.h"
#include "perch/core/threads.h"
#include "perch/kernels/conv_f32.h"

namespace perch::kernels {
namespace {

using test::Rng;

std::string describe(const Conv2dShape& s) {
  std::ostringstream os;
  os << "N" << s.batch << " C" << s.in_channels << " " << s.in_h << "x" << s.in_w << " -> M" << s.out_channels << " k"
     << s.kernel_h << "x" << s.kernel_w << " G" << s.group << " stride " << s.stride_h << "," << s.stride_w << " pads t"
     << s.pad_top << " l" << s.pad_left << " b" << s.pad_bottom << " r" << s.pad_right << " dil " << s.dil_h << ","
     << s.dil_w;
  return os.str();
}

// Output extent written independently of Conv2dShape::out_h (ONNX: floor((in + pads - dil*(k-1) - 1)/s) + 1).
int64_t out_extent(int64_t in, int64_t pa, int64_t pb, int64_t k, int64_t dil, int64_t stride) {
  const int64_t span = in + pa + pb - (dil * (k - 1) + 1);
  return span < 0 ? 0 : span / stride + 1;
}

struct Exact {
  std::vector<double> y, S;  // exact value and sum of |terms| (incl. |bias|) per output
};

Exact exact_conv(const Conv2dShape& s, const std::vector<float>& x, const std::vector<float>& w, const float* bias) {
  const int64_t OH = out_extent(s.in_h, s.pad_top, s.pad_bottom, s.kernel_h, s.dil_h, s.stride_h);
  const int64_t OW = out_extent(s.in_w, s.pad_left, s.pad_right, s.kernel_w, s.dil_w, s.stride_w);
  const int64_t Cg = s.in_channels / s.group, Mg = s.out_channels / s.group;
  Exact e;
  e.y.assign(static_cast<size_t>(s.batch * s.out_channels * OH * OW), 0.0);
  e.S = e.y;
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t m = 0; m < s.out_channels; ++m)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double acc = bias ? bias[m] : 0.0, S = std::fabs(acc);
          const int64_t g = m / Mg;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t kh = 0; kh < s.kernel_h; ++kh)
              for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
                const int64_t ih = oh * s.stride_h - s.pad_top + kh * s.dil_h;
                const int64_t iw = ow * s.stride_w - s.pad_left + kw * s.dil_w;
                if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
                const double t = static_cast<double>(x[static_cast<size_t>(((n * s.in_channels + g * Cg + c) * s.in_h + ih) * s.in_w + iw)]) *
                                 static_cast<double>(w[static_cast<size_t>(((m * Cg + c) * s.kernel_h + kh) * s.kernel_w + kw)]);
                acc += t;
                S += std::fabs(t);
              }
          const size_t i = static_cast<size_t>(((n * s.out_channels + m) * OH + oh) * OW + ow);
          e.y[i] = acc;
          e.S[i] = S;
        }
  return e;
}

// Runs one shape through the reference and through conv2d_f32 on every path set; bias and no bias.
void check_conv(const Conv2dShape& s, uint64_t seed) {
  SCOPED_TRACE(describe(s));
  ASSERT_EQ(s.out_h(), out_extent(s.in_h, s.pad_top, s.pad_bottom, s.kernel_h, s.dil_h, s.stride_h));
  ASSERT_EQ(s.out_w(), out_extent(s.in_w, s.pad_left, s.pad_right, s.kernel_w, s.dil_w, s.stride_w));
  ASSERT_GT(s.out_h(), 0);
  ASSERT_GT(s.out_w(), 0);
  Rng rng(seed);
  const auto x = rng.vec(static_cast<size_t>(s.batch * s.in_channels * s.in_h * s.in_w));
  const auto w = rng.vec(static_cast<size_t>(s.out_channels * (s.in_channels / s.group) * s.kernel_h * s.kernel_w));
  const auto b = rng.vec(static_cast<size_t>(s.out_channels), -2.0f, 2.0f);
  const int64_t K = (s.in_channels / s.group) * s.kernel_h * s.kernel_w + 1;  // terms incl. the bias
  const size_t ny = static_cast<size_t>(s.batch * s.out_channels * s.out_h() * s.out_w());
  for (const float* bias : {b.data(), static_cast<const float*>(nullptr)}) {
    SCOPED_TRACE(bias ? "with bias" : "no bias");
    const Exact e = exact_conv(s, x, w, bias);
    ASSERT_EQ(e.y.size(), ny);
    std::vector<float> ref(ny, std::numeric_limits<float>::quiet_NaN());
    conv2d_f32_reference(s, x.data(), w.data(), bias, ref.data());
    for (size_t i = 0; i < ny; ++i)
      ASSERT_LE(std::fabs(ref[i] - e.y[i]), test::double_acc_bound(e.y[i], e.S[i], K))
          << "reference at " << i << ": " << ref[i] << " vs exact " << e.y[i];
    for (const auto& ps : test::path_sets()) {
      SCOPED_TRACE(ps.name);
      test::PathGuard guard(ps.paths);
      std::vector<float> y(ny, std::numeric_limits<float>::quiet_NaN());  // every output must be written
      conv2d_f32(s, x.data(), w.data(), bias, y.data());
      for (size_t i = 0; i < ny; ++i)
        ASSERT_LE(std::fabs(y[i] - e.y[i]), test::gamma_n(K) * e.S[i])
            << "conv2d_f32 at " << i << ": " << y[i] << " vs exact " << e.y[i] << " (S " << e.S[i] << ")";
      if (ps.paths == static_cast<uint32_t>(Path::kReference)) {
        ASSERT_EQ(0, std::memcmp(y.data(), ref.data(), ny * sizeof(float))) << "reference-only dispatch must be the twin";
      }
    }
  }
}

Conv2dShape shape(int64_t n, int64_t c, int64_t h, int64_t w, int64_t m, int64_t kh, int64_t kw, int64_t g = 1) {
  Conv2dShape s;
  s.batch = n, s.in_channels = c, s.in_h = h, s.in_w = w, s.out_channels = m, s.kernel_h = kh, s.kernel_w = kw, s.group = g;
  return s;
}

TEST(ConvF32, OneByOneFastPath) {
  check_conv(shape(1, 1, 1, 1, 1, 1, 1), 1);
  check_conv(shape(2, 7, 5, 3, 9, 1, 1), 2);
  check_conv(shape(1, 32, 14, 14, 64, 1, 1), 3);
  check_conv(shape(1, 6, 4, 4, 8, 1, 1, 2), 4);  // grouped 1x1
  Conv2dShape s = shape(1, 5, 6, 6, 4, 1, 1);  // 1x1 but strided / padded: not the direct path
  s.stride_h = 2, s.pad_left = 1, s.pad_bottom = 2;
  check_conv(s, 5);
}

TEST(ConvF32, Depthwise) {
  Conv2dShape s = shape(2, 8, 9, 7, 8, 3, 3, 8);
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
  check_conv(s, 10);
  s.stride_h = s.stride_w = 2;  // MobileNet's downsampling depthwise
  check_conv(s, 11);
  Conv2dShape mult = shape(1, 3, 6, 8, 9, 3, 2, 3);  // channel multiplier 3
  mult.pad_left = 2, mult.dil_w = 2, mult.stride_w = 3;
  check_conv(mult, 12);
  Conv2dShape wide = shape(1, 4, 5, 5, 8, 5, 5, 4);  // pads wider than the kernel's reach on one side
  wide.pad_top = 4, wide.pad_left = 6, wide.pad_right = 1;
  check_conv(wide, 13);
}

TEST(ConvF32, KernelLargerThanInput) {
  check_conv([] { auto s = shape(1, 2, 3, 3, 2, 5, 5); s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1; return s; }(), 20);
  check_conv([] { auto s = shape(1, 2, 2, 2, 3, 3, 3); s.pad_top = 1, s.pad_bottom = 0, s.pad_left = 0, s.pad_right = 1; return s; }(), 21);
  check_conv([] { auto s = shape(1, 3, 1, 4, 2, 4, 1, 1); s.pad_top = 3; return s; }(), 22);  // only padding rows above
  check_conv([] { auto s = shape(1, 2, 2, 2, 2, 2, 2, 2); s.dil_h = s.dil_w = 3; s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1; return s; }(), 23);
  // Windows lying entirely in the padding: output = bias.
  check_conv([] { auto s = shape(1, 2, 2, 2, 2, 1, 1); s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 2; return s; }(), 24);
}

TEST(ConvF32, LargeEnoughToExerciseBlocking) {
  auto s = shape(2, 16, 28, 28, 32, 3, 3);
  s.pad_top = s.pad_left = s.pad_bottom = s.pad_right = 1;
  check_conv(s, 30);
  check_conv(shape(1, 3, 5, 5, 4, 3, 3), 31);  // small after big: the im2col scratch is reused, not stale
  // im2col larger than 2^17 floats: built and multiplied in blocks of output rows (16 + 16 + 8 rows here; the
  // strided one 7 rows per block with a remainder), batch 2 and a grouped one.
  auto big = shape(2, 24, 40, 37, 12, 3, 3);
  big.pad_top = big.pad_left = big.pad_bottom = big.pad_right = 1;
  check_conv(big, 32);
  auto strided = shape(1, 40, 61, 45, 10, 3, 5, 2);
  strided.stride_h = 2, strided.stride_w = 1, strided.pad_top = 2, strided.pad_right = 2, strided.dil_w = 2;
  check_conv(strided, 33);
}

// Randomized: dense, grouped, depthwise (with multiplier) and 1x1; strides, dilations, asymmetric pads.
TEST(ConvF32, RandomizedShapes) {
  Rng rng(20240611);
  int ran = 0;
  for (int iter = 0; ran < 250; ++iter) {
    ASSERT_LT(iter, 10000);
    Conv2dShape s;
    const int kind = static_cast<int>(rng.range(0, 4));
    s.batch = rng.range(1, 3);
    s.group = kind == 0 ? 1 : rng.range(2, 4);
    const int64_t cg = kind >= 2 ? 1 : rng.range(1, 5);  // kinds 2,3: depthwise
    const int64_t mg = kind == 3 ? rng.range(2, 3) : kind == 2 ? 1 : rng.range(1, 6);
    s.in_channels = s.group * cg;
    s.out_channels = s.group * mg;
    s.in_h = rng.range(1, 12), s.in_w = rng.range(1, 12);
    if (kind == 4) {
      s.kernel_h = s.kernel_w = 1;  // 1x1 fast path
    } else {
      s.kernel_h = rng.range(1, 5), s.kernel_w = rng.range(1, 5);
      s.stride_h = rng.range(1, 3), s.stride_w = rng.range(1, 3);
      s.dil_h = rng.range(1, 3), s.dil_w = rng.range(1, 3);
      s.pad_top = rng.range(0, 3), s.pad_bottom = rng.range(0, 3), s.pad_left = rng.range(0, 3), s.pad_right = rng.range(0, 3);
    }
    if (out_extent(s.in_h, s.pad_top, s.pad_bottom, s.kernel_h, s.dil_h, s.stride_h) <= 0 ||
        out_extent(s.in_w, s.pad_left, s.pad_right, s.kernel_w, s.dil_w, s.stride_w) <= 0)
      continue;
    check_conv(s, rng.next());
    if (HasFatalFailure()) return;
    ++ran;
  }
}

// The epilogue (conv2d_f32's `post`): called on whole output planes of one image, each element exactly once, after
// the block is final (it holds the bits the call without an epilogue gives), and what it writes is what stays. Shapes
// for each kind of work unit: 1x1 direct, im2col, im2col built in row blocks (kdim * hw above 2^17 floats), output
// channels split in blocks (batch 1 on 2 threads), groups, depthwise with a channel multiplier, batches.
TEST(ConvF32, EpilogueSeesEveryFinishedBlockOnce) {
  std::vector<Conv2dShape> shapes = {shape(3, 16, 9, 7, 24, 1, 1), shape(2, 6, 11, 10, 10, 3, 3, 2),
                                     shape(1, 32, 30, 30, 40, 3, 3), shape(1, 64, 20, 20, 96, 1, 1),
                                     shape(2, 5, 9, 8, 15, 3, 3, 5), shape(3, 12, 7, 9, 12, 5, 5, 12)};
  shapes[1].pad_top = shapes[1].pad_left = 1;
  shapes[2].pad_top = shapes[2].pad_bottom = shapes[2].pad_left = shapes[2].pad_right = 1;
  shapes[4].stride_h = shapes[4].stride_w = 2;
  shapes[5].pad_top = shapes[5].pad_left = shapes[5].pad_bottom = shapes[5].pad_right = 2;
  const int saved = num_threads();
  for (size_t si = 0; si < shapes.size(); ++si) {
    const Conv2dShape& s = shapes[si];
    SCOPED_TRACE(describe(s));
    Rng rng(100 + si);
    const auto x = rng.vec(static_cast<size_t>(s.batch * s.in_channels * s.in_h * s.in_w));
    const auto w = rng.vec(static_cast<size_t>(s.out_channels * (s.in_channels / s.group) * s.kernel_h * s.kernel_w));
    const auto b = rng.vec(static_cast<size_t>(s.out_channels), -2.0f, 2.0f);
    const int64_t hw = s.out_h() * s.out_w();
    const size_t ny = static_cast<size_t>(s.batch * s.out_channels * hw);
    for (int threads : {1, 2}) {
      set_num_threads(threads);
      for (const auto& ps : test::path_sets()) {
        SCOPED_TRACE(std::string(ps.name) + ", threads " + std::to_string(threads));
        test::PathGuard guard(ps.paths);
        std::vector<float> plain(ny), y(ny, std::numeric_limits<float>::quiet_NaN());
        conv2d_f32(s, x.data(), w.data(), b.data(), plain.data());
        std::vector<int> seen(ny, 0);
        int64_t unfinished = 0, misaligned = 0, calls = 0;
        std::mutex mu;
        conv2d_f32(s, x.data(), w.data(), b.data(), y.data(), [&](float* blk, int64_t count) {
          const int64_t off = blk - y.data();
          std::lock_guard<std::mutex> lock(mu);
          ++calls;
          if (off < 0 || count <= 0 || off + count > static_cast<int64_t>(ny) || off % hw != 0 || count % hw != 0) {
            ++misaligned;
            return;
          }
          for (int64_t i = 0; i < count; ++i) {
            ++seen[static_cast<size_t>(off + i)];
            unfinished += std::memcmp(&blk[i], &plain[static_cast<size_t>(off + i)], 4) != 0;
            blk[i] = blk[i] * 2.0f + 1.0f;
          }
        });
        EXPECT_GT(calls, 0);
        EXPECT_EQ(misaligned, 0) << "a block that is not whole output planes";
        EXPECT_EQ(unfinished, 0) << "the epilogue saw values before they were final";
        int64_t not_once = 0, differ = 0;
        for (size_t i = 0; i < ny; ++i) {
          not_once += seen[i] != 1;
          const float want = plain[i] * 2.0f + 1.0f;
          differ += std::memcmp(&want, &y[i], 4) != 0;
        }
        EXPECT_EQ(not_once, 0) << "elements the epilogue saw other than once";
        EXPECT_EQ(differ, 0) << "the epilogue's writes did not stay";
      }
    }
  }
  set_num_threads(saved);
}

}  // namespace
}  // namespace perch::kernels
