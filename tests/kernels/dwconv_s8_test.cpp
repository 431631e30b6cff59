// depthwise_s8: the reference twin against an independent int64 formula, and every compiled SIMD path
// against the reference, bit-exact (tolerance 0), over channel counts around the 16/64-channel blocks, kernel
// sizes with tap counts around the 2/4-tap groups, strides, dilations, asymmetric padding and extreme zero
// points and weights.
#include "perch/kernels/dwconv_s8.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/kernel_test_util.h"
#include "perch/core/cpu.h"
#include "perch/core/error.h"
#include "perch/core/threads.h"

namespace perch::kernels {
namespace {

using test::PathGuard;
using test::Rng;

struct IsaPath {
  const char* name;
  uint32_t paths;
  Path needs;
};
std::vector<IsaPath> isa_paths() {
  return {{"avx2", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx2), Path::kAvx2},
          {"avx512vnni", Path::kReference | Path::kOptimized | static_cast<uint32_t>(Path::kAvx512Vnni),
           Path::kAvx512Vnni}};
}

struct DwCase {
  DepthwiseS8Args args;  // pointers set by bind()
  std::vector<uint8_t> x;
  std::vector<int8_t> w;
  std::vector<int32_t> bias;
  PackedDepthwiseS8 packed;
  int64_t kh = 3, kw = 3;

  void bind() {
    args.x = x.data();
    args.w = &packed;
    args.bias = bias.empty() ? nullptr : bias.data();
  }
  std::string describe() const {
    const auto& a = args;
    return "N=" + std::to_string(a.batch) + " H=" + std::to_string(a.in_h) + " W=" + std::to_string(a.in_w) +
           " C=" + std::to_string(a.channels) + " k=" + std::to_string(kh) + "x" + std::to_string(kw) +
           " s=" + std::to_string(a.stride_h) + "," + std::to_string(a.stride_w) + " d=" + std::to_string(a.dilation_h) +
           "," + std::to_string(a.dilation_w) + " pad=" + std::to_string(a.pad_top) + "," + std::to_string(a.pad_left) +
           "," + std::to_string(a.pad_bottom) + "," + std::to_string(a.pad_right) +
           (a.x_type == Act8::kUInt8 ? " u8" : " s8") + " zx=" + std::to_string(a.x_zero_point);
  }
};

DwCase make_case(Rng& rng, int64_t channels, int64_t kh, int64_t kw) {
  DwCase c;
  c.kh = kh;
  c.kw = kw;
  auto& a = c.args;
  a.channels = channels;
  a.batch = rng.range(1, 2);
  a.stride_h = rng.range(1, 2);
  a.stride_w = rng.range(1, 2);
  a.dilation_h = rng.range(0, 3) == 0 ? 2 : 1;
  a.dilation_w = rng.range(0, 3) == 0 ? 2 : 1;
  a.pad_top = rng.range(0, 2);
  a.pad_left = rng.range(0, 2);
  a.pad_bottom = rng.range(0, 2);
  a.pad_right = rng.range(0, 2);
  const int64_t min_h = std::max<int64_t>(1, a.dilation_h * (kh - 1) + 1 - a.pad_top - a.pad_bottom);
  const int64_t min_w = std::max<int64_t>(1, a.dilation_w * (kw - 1) + 1 - a.pad_left - a.pad_right);
  a.in_h = min_h + rng.range(0, 6);
  a.in_w = min_w + rng.range(0, 9);
  a.x_type = rng.range(0, 1) ? Act8::kUInt8 : Act8::kInt8;
  static const int32_t zu[] = {0, 255, 128, 9}, zs[] = {-128, 127, 0, -3};
  a.x_zero_point = a.x_type == Act8::kUInt8 ? zu[rng.range(0, 3)] : zs[rng.range(0, 3)];
  c.x.resize(static_cast<size_t>(a.batch * a.in_h * a.in_w * channels));
  for (auto& v : c.x) {
    const int64_t r = rng.range(0, 9);
    v = static_cast<uint8_t>(r == 0 ? 0 : (r == 1 ? 255 : rng.range(0, 255)));
  }
  c.w.resize(static_cast<size_t>(channels * kh * kw));
  for (auto& v : c.w) {
    const int64_t r = rng.range(0, 9);
    v = static_cast<int8_t>(r == 0 ? -128 : (r == 1 ? -127 : (r == 2 ? 127 : rng.range(-128, 127))));
  }
  if (rng.range(0, 2)) {
    c.bias.resize(static_cast<size_t>(channels));
    for (auto& b : c.bias) b = static_cast<int32_t>(rng.range(-50000, 50000));
  }
  c.packed = pack_depthwise_s8(c.w.data(), channels, kh, kw);
  c.bind();
  return c;
}

// Independent int64 formula on the unpacked weights; padding taps skipped (they are the zero point).
std::vector<int64_t> exact(const DwCase& c) {
  const auto& a = c.args;
  const int64_t oh_n = a.out_h(), ow_n = a.out_w(), cn = a.channels;
  std::vector<int64_t> out(static_cast<size_t>(a.batch * oh_n * ow_n * cn));
  for (int64_t n = 0; n < a.batch; ++n)
    for (int64_t oh = 0; oh < oh_n; ++oh)
      for (int64_t ow = 0; ow < ow_n; ++ow)
        for (int64_t ch = 0; ch < cn; ++ch) {
          int64_t s = c.bias.empty() ? 0 : c.bias[static_cast<size_t>(ch)];
          for (int64_t i = 0; i < c.kh; ++i)
            for (int64_t j = 0; j < c.kw; ++j) {
              const int64_t ih = oh * a.stride_h - a.pad_top + i * a.dilation_h;
              const int64_t iw = ow * a.stride_w - a.pad_left + j * a.dilation_w;
              if (ih < 0 || ih >= a.in_h || iw < 0 || iw >= a.in_w) continue;
              const uint8_t b = c.x[static_cast<size_t>(((n * a.in_h + ih) * a.in_w + iw) * cn + ch)];
              const int64_t xv = a.x_type == Act8::kUInt8 ? int64_t{b} : int64_t{static_cast<int8_t>(b)};
              s += (xv - a.x_zero_point) * c.w[static_cast<size_t>((ch * c.kh + i) * c.kw + j)];
            }
          out[static_cast<size_t>(((n * oh_n + oh) * ow_n + ow) * cn + ch)] = s;
        }
  return out;
}

size_t want_size(const DwCase& c, const OutputStageS8& st) {
  const size_t elems = static_cast<size_t>(c.args.batch * c.args.out_h() * c.args.out_w() * c.args.channels);
  return elems * (st.type == OutputType::kInt32 ? 4 : 1) + 64;
}

std::vector<uint8_t> run(DwCase& c, OutputStageS8 st, bool reference_twin) {
  const size_t elems = static_cast<size_t>(c.args.batch * c.args.out_h() * c.args.out_w() * c.args.channels);
  std::vector<uint8_t> y(elems * (st.type == OutputType::kInt32 ? 4 : 1) + 64, 0xCD);
  c.args.out = st;
  c.args.y = y.data();
  if (reference_twin)
    depthwise_s8_reference(c.args);
  else
    depthwise_s8(c.args);
  for (size_t i = y.size() - 64; i < y.size(); ++i) EXPECT_EQ(y[i], 0xCD) << "wrote past the output";
  return y;
}

std::vector<quant::FixedPointMultiplier> pick_multipliers(Rng& rng, const DwCase& c, const std::vector<int64_t>& acc,
                                                          bool per_channel) {
  const int64_t cn = c.args.channels;
  std::vector<int64_t> mx(static_cast<size_t>(cn), 1);
  for (size_t i = 0; i < acc.size(); ++i)
    mx[i % static_cast<size_t>(cn)] = std::max<int64_t>(mx[i % static_cast<size_t>(cn)], std::llabs(acc[i]));
  std::vector<quant::FixedPointMultiplier> ms;
  for (int64_t ch = 0; ch < (per_channel ? cn : 1); ++ch)
    ms.push_back(quant::quantize_multiplier(127.0 / static_cast<double>(mx[static_cast<size_t>(ch)]) *
                                            (0.6 + 0.8 * rng.uniform(0, 1))));
  return ms;
}

TEST(DepthwiseS8, PackLayouts) {
  Rng rng(1);
  const int64_t cn = 70, kh = 3, kw = 3;
  std::vector<int8_t> w(static_cast<size_t>(cn * kh * kw));
  for (auto& v : w) v = static_cast<int8_t>(rng.range(-128, 127));
  const auto p = pack_depthwise_s8(w.data(), cn, kh, kw);
  for (int64_t ch = 0; ch < cn; ++ch) {
    int32_t s = 0;
    for (int64_t t = 0; t < 9; ++t) s += w[static_cast<size_t>(ch * 9 + t)];
    EXPECT_EQ(p.w_sum[static_cast<size_t>(ch)], s);
  }
  // Channel 37, tap 6: VNNI block 0, group 1, j = (37 % 16) / 4 = 1, l = 2, i = 1, t = 2.
  EXPECT_EQ(p.vnni[static_cast<size_t>((1 * 4 + 1) * 64 + 16 * 2 + 4 * 1 + 2)], w[37 * 9 + 6]);
  // AVX2: channel 37 = 16 * 2 + 5: block 2, l = 0, h = 1, i = 1; tap 6 = pair 3, t = 0.
  EXPECT_EQ(p.avx2[static_cast<size_t>(((2 * 5 + 3) * 2 + 1) * 16 + 0 + 2 * 1 + 0)], w[37 * 9 + 6]);
  EXPECT_THROW(pack_depthwise_s8(w.data(), 0, 3, 3), Error);
}

TEST(DepthwiseS8, ValidateRejectsBadArguments) {
  Rng rng(2);
  DwCase c = make_case(rng, 8, 3, 3);
  const quant::FixedPointMultiplier m{1 << 30, -8};
  c.args.out.multipliers = &m;
  c.args.out.num_multipliers = 1;
  std::vector<uint8_t> y(1 << 16);
  c.args.y = y.data();
  EXPECT_NO_THROW(validate(c.args));
  auto bad = c.args;
  bad.channels = 9;
  EXPECT_THROW(validate(bad), Error);
  bad = c.args;
  bad.stride_h = 0;
  EXPECT_THROW(validate(bad), Error);
  bad = c.args;
  bad.in_h = 1;
  bad.pad_top = bad.pad_bottom = 0;
  EXPECT_THROW(validate(bad), Error);  // the 3x3 kernel does not fit
  bad = c.args;
  bad.out.num_multipliers = 3;
  EXPECT_THROW(validate(bad), Error);
}

TEST(DepthwiseS8, ReferenceMatchesInt64Formula) {
  Rng rng(3);
  for (int it = 0; it < 30; ++it) {
    DwCase c = make_case(rng, rng.range(1, 20), rng.range(1, 4), rng.range(1, 4));
    const auto want = exact(c);
    OutputStageS8 raw;
    raw.type = OutputType::kInt32;
    const auto got = run(c, raw, true);
    for (size_t i = 0; i < want.size(); ++i) {
      int32_t v;
      std::memcpy(&v, got.data() + i * 4, 4);
      ASSERT_EQ(v, want[i]) << c.describe() << " at " << i;
    }
    OutputStageS8 st;
    st.type = OutputType::kUInt8;
    st.zero_point = 120;
    st.qmin = 0;
    st.qmax = 255;
    const auto ms = pick_multipliers(rng, c, want, true);
    st.multipliers = ms.data();
    st.num_multipliers = static_cast<int64_t>(ms.size());
    const auto q = run(c, st, true);
    for (size_t i = 0; i < want.size(); ++i) {
      const auto m = ms[i % ms.size()];
      const int64_t e = std::clamp<int64_t>(
          int64_t{quant::multiply_round_once(static_cast<int32_t>(want[i]), m)} + 120, 0, 255);
      ASSERT_EQ(int{q[i]}, e) << c.describe();
    }
  }
}

TEST(DepthwiseS8, EveryPathMatchesReference) {
  const int64_t channels[] = {1, 3, 15, 16, 17, 31, 32, 48, 63, 64, 65, 100, 144};
  const std::pair<int64_t, int64_t> kernels[] = {{3, 3}, {1, 1}, {2, 2}, {1, 3}, {3, 1}, {5, 5}, {2, 3}, {1, 5}, {3, 3}};
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) {
      std::cout << "[   NOTE   ] path " << isa.name << " not run: this CPU lacks it (the other paths ran)\n";
      continue;
    }
    Rng rng(10);
    int64_t outputs = 0, inside = 0;
    for (int64_t cn : channels)
      for (auto [kh, kw] : kernels) {
        DwCase c = make_case(rng, cn, kh, kw);
        const auto ex = exact(c);
        OutputStageS8 raw;
        raw.type = OutputType::kInt32;
        {
          PathGuard guard(isa.paths);
          const auto got = run(c, raw, false);
          for (size_t i = 0; i < ex.size(); ++i) {
            int32_t v;
            std::memcpy(&v, got.data() + i * 4, 4);
            ASSERT_EQ(v, ex[i]) << isa.name << " " << c.describe() << " at " << i;
          }
        }
        for (OutputType type : {OutputType::kUInt8, OutputType::kInt8}) {
          OutputStageS8 st;
          st.type = type;
          const int32_t lo = type == OutputType::kUInt8 ? 0 : -128;
          st.zero_point = lo + static_cast<int32_t>(rng.range(100, 155));
          st.qmin = rng.range(0, 3) == 0 ? st.zero_point : lo;  // fused ReLU
          st.qmax = lo + 255;
          const auto ms = pick_multipliers(rng, c, ex, rng.range(0, 3) != 0);
          st.multipliers = ms.data();
          st.num_multipliers = static_cast<int64_t>(ms.size());
          const auto want = run(c, st, true);
          std::vector<uint8_t> got;
          {
            PathGuard guard(isa.paths);
            got = run(c, st, false);
          }
          ASSERT_EQ(got, want) << isa.name << " " << c.describe();
          for (size_t i = 0; i < ex.size(); ++i) {
            const int v = type == OutputType::kUInt8 ? int{got[i]} : int{static_cast<int8_t>(got[i])};
            ++outputs;
            inside += (v > st.qmin && v < st.qmax) ? 1 : 0;
          }
        }
      }
    EXPECT_GT(inside * 10, outputs * 3) << isa.name << ": only " << inside << " of " << outputs
                                        << " outputs strictly inside (qmin, qmax)";
  }
}

// prepare_depthwise_s8: constants built once (every path's variant) give the same bytes as per-call ones, on every
// path set, when the same prepared object serves calls of other geometries (batch, size, stride, padding) — the
// executor's use; a call with another input zero point is refused.
TEST(DepthwiseS8, PreparedConstantsGiveTheSameResults) {
  Rng rng(23);
  const int64_t channels[] = {1, 16, 17, 48, 64, 65, 144};
  const std::pair<int64_t, int64_t> kernels[] = {{3, 3}, {5, 5}, {1, 3}};
  for (int64_t cn : channels)
    for (auto [kh, kw] : kernels) {
      DwCase c = make_case(rng, cn, kh, kw);
      const auto ex = exact(c);
      for (OutputType type : {OutputType::kInt32, OutputType::kUInt8, OutputType::kInt8}) {
        OutputStageS8 st;
        st.type = type;
        const int32_t lo = type == OutputType::kInt8 ? -128 : 0;
        st.zero_point = lo + 128;
        st.qmin = lo;
        st.qmax = lo + 255;
        const auto ms = pick_multipliers(rng, c, ex, true);
        st.multipliers = ms.data();
        st.num_multipliers = static_cast<int64_t>(ms.size());
        c.args.out = st;
        const auto prep = prepare_depthwise_s8(c.args);
        for (int geo = 0; geo < 2; ++geo) {
          if (geo == 1) {  // another geometry, same layer constants
            c.args.stride_h = c.args.stride_h == 1 ? 2 : 1;
            c.args.pad_top += 1;  // more padding always fits
          }
          const auto want = run(c, st, true);
          for (const auto& ps : test::path_sets()) {
            PathGuard guard(ps.paths);
            std::vector<uint8_t> got(want.size(), 0xCD);
            c.args.y = got.data();
            depthwise_s8(c.args, *prep);
            ASSERT_EQ(got, want) << ps.name << " " << c.describe() << " geometry " << geo;
          }
        }
        DepthwiseS8Args other = c.args;
        std::vector<uint8_t> buf(want_size(c, st));
        other.y = buf.data();
        other.x_zero_point = c.args.x_zero_point == 0 ? 1 : 0;  // valid for both types, not what was prepared
        EXPECT_THROW(depthwise_s8(other, *prep), Error);
      }
    }
}

// The MobileNetV2 shape, split over two threads; left-shift multipliers (M >= 1) included.
TEST(DepthwiseS8, LargeThreadedAndLeftShifts) {
  Rng rng(4);
  const int saved = num_threads();
  set_num_threads(2);
  DwCase c = make_case(rng, 144, 3, 3);
  c.args.batch = 1;
  c.args.in_h = c.args.in_w = 28;
  c.args.stride_h = c.args.stride_w = 1;
  c.args.dilation_h = c.args.dilation_w = 1;
  c.args.pad_top = c.args.pad_left = c.args.pad_bottom = c.args.pad_right = 1;
  c.x.resize(static_cast<size_t>(28 * 28 * 144));
  for (auto& v : c.x) v = static_cast<uint8_t>(rng.range(0, 255));
  c.bind();
  std::vector<quant::FixedPointMultiplier> ms(144);
  for (auto& m : ms) {
    m.multiplier = static_cast<int32_t>(rng.range(int64_t{1} << 30, (int64_t{1} << 31) - 1));
    m.shift = static_cast<int32_t>(rng.range(-20, 3));
  }
  OutputStageS8 st;
  st.type = OutputType::kInt8;
  st.qmin = -128;
  st.qmax = 127;
  st.multipliers = ms.data();
  st.num_multipliers = 144;
  const auto want = run(c, st, true);
  for (const auto& ps : test::path_sets()) {
    PathGuard guard(ps.paths);
    EXPECT_EQ(run(c, st, false), want) << ps.name;
  }
  set_num_threads(saved);
}


// The row-cached kernels (kw <= 4; kw <= 8 on AVX-512 VNNI): channel counts around their 16-channel vectors and 64-channel blocks (full
// blocks keep the unpack order, a partial last block is in natural order), widths around the 2-pixel step and
// the border/interior split of the row build, kernel heights and dilations around the row-cache slots, strides
// 1-3 (the sliding-window build is stride 1), both input types, and multipliers of every kind: right shifts
// (R >= 1), M in [0.5, 1) (R = 0), left shifts (the 64-bit clamp), and 0.
using KernelPick = void (*)(Rng&, int64_t& kh, int64_t& kw, int64_t& stride_w, int64_t& dilation_w);

// unit_h: stride_h and dilation_h 1 in every case (the column-quad kernel's output-row pairs), else 1-3 each.
void tile_boundaries(uint64_t seed, KernelPick pick, bool unit_h = false) {
  const int64_t channels[] = {1, 15, 16, 17, 31, 32, 33, 47, 48, 49, 63, 64, 65, 80, 113, 127, 128, 129, 144, 192, 200};
  const int64_t widths[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17};
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) continue;
    Rng rng(seed);
    for (int64_t cn : channels)
      for (int rep = 0; rep < 3; ++rep) {
        int64_t kh, kw, sw, dw;
        pick(rng, kh, kw, sw, dw);
        DwCase c = make_case(rng, cn, kh, kw);
        auto& a = c.args;
        a.stride_w = sw;
        a.stride_h = unit_h ? 1 : rng.range(1, 3);
        a.dilation_h = unit_h ? 1 : rng.range(1, 3);
        a.dilation_w = dw;
        const int64_t min_w = std::max<int64_t>(1, a.dilation_w * (kw - 1) + 1 - a.pad_left - a.pad_right);
        const int64_t min_h = std::max<int64_t>(1, a.dilation_h * (kh - 1) + 1 - a.pad_top - a.pad_bottom);
        a.in_w = std::max(min_w, widths[rng.range(0, 10)] * a.stride_w);
        a.in_h = min_h + rng.range(0, 5);
        c.x.resize(static_cast<size_t>(a.batch * a.in_h * a.in_w * cn));
        for (auto& v : c.x) v = static_cast<uint8_t>(rng.range(0, 255));
        c.bind();
        const auto ex = exact(c);
        OutputStageS8 raw;
        raw.type = OutputType::kInt32;
        {
          PathGuard guard(isa.paths);
          const auto got = run(c, raw, false);
          for (size_t i = 0; i < ex.size(); ++i) {
            int32_t v;
            std::memcpy(&v, got.data() + i * 4, 4);
            ASSERT_EQ(v, ex[i]) << isa.name << " " << c.describe() << " at " << i;
          }
        }
        for (int kind = 0; kind < 3; ++kind) {
          OutputStageS8 st;
          st.type = rng.range(0, 1) ? OutputType::kUInt8 : OutputType::kInt8;
          const int32_t lo = st.type == OutputType::kUInt8 ? 0 : -128;
          st.zero_point = lo + static_cast<int32_t>(rng.range(0, 255));
          st.qmin = rng.range(0, 2) == 0 ? st.zero_point : lo;  // a fused ReLU's clamp, or the type's
          // A top below the type's too (a fused ReLU6 / Clip): the stores' min/max path, not the saturation alone.
          st.qmax = rng.range(0, 2) == 0 ? static_cast<int32_t>(rng.range(st.qmin, lo + 255)) : lo + 255;
          auto ms = pick_multipliers(rng, c, ex, true);
          for (auto& m : ms) {
            const int64_t r = rng.range(0, 9);
            if (kind == 1 && r < 3) m.shift = 0;                                   // M in [0.5, 1)
            if (kind == 2 && r < 3) m.shift = static_cast<int32_t>(rng.range(1, 8));  // left shifts
            if (r == 9) m = {0, 0};
          }
          st.multipliers = ms.data();
          st.num_multipliers = static_cast<int64_t>(ms.size());
          const auto want = run(c, st, true);
          std::vector<uint8_t> got;
          {
            PathGuard guard(isa.paths);
            got = run(c, st, false);
          }
          ASSERT_EQ(got, want) << isa.name << " kind " << kind << " " << c.describe();
        }
      }
  }
}

TEST(DepthwiseS8, RowCachedTileBoundaries) {
  set_depthwise_s8_column_kernel(false);  // 3x3 too (on VNNI with VBMI the column-quad kernel would take it)
  tile_boundaries(77, [](Rng& rng, int64_t& kh, int64_t& kw, int64_t& sw, int64_t& dw) {
    // kw 5..8: two tap quads per kernel row on AVX-512 VNNI (the AVX2 row cache stops at 4).
    kh = rng.range(1, 4) == 4 ? 5 : rng.range(1, 3);
    kw = rng.range(1, 4) == 4 ? rng.range(5, 8) : rng.range(1, 4);
    sw = rng.range(1, 3);
    dw = rng.range(0, 2) == 0 ? 2 : 1;
  });
  set_depthwise_s8_column_kernel(true);
}

// The column-quad kernel (AVX-512 VNNI + VBMI; 3x3, stride_w 1 or 2, dilation_w 1; elsewhere these cases run on the
// other kernels and are checked all the same): channel counts around its 16-channel vectors and 4-vector groups,
// widths from 1 (every column a border) up, both strides (one or two new columns per pixel), padding 0-2 on either
// side, and the output-stage kinds of the row-cached test.
TEST(DepthwiseS8, ColumnKernelTileBoundaries) {
  tile_boundaries(78, [](Rng& rng, int64_t& kh, int64_t& kw, int64_t& sw, int64_t& dw) {
    kh = kw = 3;
    sw = rng.range(1, 2);
    dw = 1;
  });
}

// The same at stride_h = dilation_h = 1, where the column-quad kernel computes output rows in pairs from 4-row column
// quads (an odd row count leaves a single row; a pair never spans two images), and, with 16 channels in all, narrows
// four pixels per store (widths 4-17 take that loop, with 0-3 pixels left over).
TEST(DepthwiseS8, ColumnKernelRowPairs) {
  tile_boundaries(79, [](Rng& rng, int64_t& kh, int64_t& kw, int64_t& sw, int64_t& dw) {
    kh = kw = 3;
    sw = rng.range(0, 3) == 0 ? 2 : 1;
    dw = 1;
  }, true);
}

// The one-rounding output stage of the row-cached kernels against multiply_round_once over the
// whole int32 range: a 1x1 kernel with the input at its zero point gives acc = bias, so the biases choose the
// accumulators (extremes, 0, +-1, +-2^30, random), and each channel has its own multiplier (every shift the SIMD
// paths take, multipliers 2^30, 2^30 + 1, 2^31 - 1 and random, and 0; every other iteration right shifts only).
// k = 3: a 3x3 kernel whose only non-zero tap is the centre, padding 1, two rows (the column-quad kernel's output-row
// pair; with 16 channels its four-pixel stores).
void output_stage_over_int32_range(int64_t cn, int64_t k, uint64_t seed) {
  Rng rng(seed);
  const int64_t pixels = 7, rows = k == 1 ? 1 : 2;
  const int8_t one = 1;
  std::vector<int8_t> w(static_cast<size_t>(cn * k * k), 0);
  for (int it = 0; it < 60; ++it) {
    for (int64_t c = 0; c < cn; ++c)
      w[static_cast<size_t>(c * k * k + (k * k) / 2)] = rng.range(0, 1) ? one : static_cast<int8_t>(-1);
    const PackedDepthwiseS8 pw = pack_depthwise_s8(w.data(), cn, k, k);
    std::vector<uint8_t> x(static_cast<size_t>(rows * pixels * cn));
    std::vector<int32_t> bias(static_cast<size_t>(cn));
    static const int64_t special[] = {INT32_MIN, INT32_MIN + 1, -(int64_t{1} << 30) - 1, -(int64_t{1} << 30), -2, -1, 0,
                                      1, 2, int64_t{1} << 30, (int64_t{1} << 30) + 1, INT32_MAX - 1, INT32_MAX};
    for (auto& b : bias) {
      const int64_t r = rng.range(0, 3);
      b = static_cast<int32_t>(r == 0 ? special[rng.range(0, 12)] : r == 1 ? rng.range(-1000, 1000)
                                                                          : rng.range(INT32_MIN, INT32_MAX));
    }
    const int32_t zx = static_cast<int32_t>(rng.range(0, 255));
    // Pixel 0 of each row sits at the zero point (acc = bias); the others move acc by up to +-255 around it.
    for (int64_t i = 0; i < rows * pixels * cn; ++i)
      x[static_cast<size_t>(i)] = static_cast<uint8_t>(i % (pixels * cn) < cn ? zx : rng.range(0, 255));
    std::vector<quant::FixedPointMultiplier> ms(static_cast<size_t>(cn));
    for (auto& m : ms) {
      const int64_t r = rng.range(0, 4);
      m.multiplier = static_cast<int32_t>(r == 0   ? int64_t{1} << 30
                                          : r == 1 ? (int64_t{1} << 30) + 1
                                          : r == 2 ? (int64_t{1} << 31) - 1
                                                   : rng.range(int64_t{1} << 30, (int64_t{1} << 31) - 1));
      // Odd iterations: right shifts only (every M < 1/2, the kernels' 32-bit-shift mode).
      m.shift = static_cast<int32_t>(it % 2 ? rng.range(-31, -1) : rng.range(-31, 30));
      if (rng.range(0, 20) == 0) m = {0, 0};
    }
    DepthwiseS8Args d;
    d.batch = 1;
    d.in_h = rows;
    d.in_w = pixels;
    d.pad_top = d.pad_bottom = d.pad_left = d.pad_right = k / 2;
    d.channels = cn;
    d.x = x.data();
    d.x_zero_point = zx;
    d.w = &pw;
    d.bias = bias.data();
    d.out.type = rng.range(0, 1) ? OutputType::kUInt8 : OutputType::kInt8;
    const int32_t lo = d.out.type == OutputType::kUInt8 ? 0 : -128;
    d.out.zero_point = lo + static_cast<int32_t>(rng.range(0, 255));
    // Every third iteration a narrowed clamp (the stores' min/max path), else the type's range (saturation alone).
    d.out.qmin = it % 3 == 2 ? lo + static_cast<int32_t>(rng.range(0, 100)) : lo;
    d.out.qmax = it % 3 == 2 ? lo + static_cast<int32_t>(rng.range(155, 255)) : lo + 255;
    d.out.multipliers = ms.data();
    d.out.num_multipliers = cn;
    std::vector<uint8_t> want(static_cast<size_t>(rows * pixels * cn)), got(want.size());
    d.y = want.data();
    depthwise_s8_reference(d);
    for (const IsaPath& isa : isa_paths()) {
      if (!has_path(supported_paths(), isa.needs)) continue;
      PathGuard guard(isa.paths);
      d.y = got.data();
      depthwise_s8(d);
      ASSERT_EQ(got, want) << isa.name << " " << cn << " channels, " << k << "x" << k << ", iteration " << it;
    }
  }
}

// 80 channels: one full 64-channel block and a 16-channel tail.
TEST(DepthwiseS8, OutputStageOverInt32Range) { output_stage_over_int32_range(80, 1, 99); }
TEST(DepthwiseS8, OutputStageOverInt32Range3x3) {
  output_stage_over_int32_range(80, 3, 100);
  output_stage_over_int32_range(16, 3, 101);
}


// A dilation so large that the row cache (kh * dilation_h rows) would pass 8 MB: the per-pixel kernels run, with
// the channel order they expect.
TEST(DepthwiseS8, HugeDilationUsesPerPixelKernel) {
  Rng rng(5);
  DwCase c = make_case(rng, 70, 3, 3);
  auto& a = c.args;
  a.batch = 1;
  a.stride_h = a.stride_w = 1;
  a.dilation_h = 40;
  a.dilation_w = 1;
  a.pad_top = a.pad_bottom = a.pad_left = a.pad_right = 1;
  a.in_h = 80;
  a.in_w = 320;
  c.x.resize(static_cast<size_t>(a.in_h * a.in_w * 70));
  for (auto& v : c.x) v = static_cast<uint8_t>(rng.range(0, 255));
  c.bind();
  const auto ex = exact(c);
  OutputStageS8 st;
  st.type = OutputType::kUInt8;
  st.zero_point = 128;
  st.qmax = 255;
  const auto ms = pick_multipliers(rng, c, ex, true);
  st.multipliers = ms.data();
  st.num_multipliers = static_cast<int64_t>(ms.size());
  const auto want = run(c, st, true);
  for (const IsaPath& isa : isa_paths()) {
    if (!has_path(supported_paths(), isa.needs)) continue;
    PathGuard guard(isa.paths);
    EXPECT_EQ(run(c, st, false), want) << isa.name;
  }
}

}  // namespace
}  // namespace perch::kernels
