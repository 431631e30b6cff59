// Quantization parameters, quantize / dequantize / fake_quant: properties against a double-precision
// reference over random shapes, axes, bit widths and modes, plus the edge cases.
//
// Tolerance policy: quantize must equal the reference exactly, except where the exact quotient x / s lies
// within one float ulp of a rounding boundary (the ONNX-specified float32 division may land on either
// side there); those cases are counted and must be rare. dequantize is exact.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>
#include <random>

#include "perch/quant/params.h"

namespace perch::quant {
namespace {

std::vector<QuantSpec> all_modes() {
  std::vector<QuantSpec> out;
  for (int bits : {2, 3, 4, 5, 6, 7, 8, 16})
    for (bool sgn : {true, false})
      for (bool sym : {true, false})
        for (bool narrow : {false, true}) {
          QuantSpec s;
          s.bits = bits;
          s.is_signed = sgn;
          s.symmetric = sym;
          s.narrow_range = narrow;
          out.push_back(s);
        }
  return out;
}

TEST(QuantSpec, Ranges) {
  QuantSpec s;
  EXPECT_EQ(s.qmin(), -128);
  EXPECT_EQ(s.qmax(), 127);
  s.narrow_range = true;
  EXPECT_EQ(s.qmin(), -127);
  s.is_signed = false;
  EXPECT_EQ(s.qmin(), 1);
  EXPECT_EQ(s.qmax(), 255);
  EXPECT_EQ(s.storage_type(), DType::kUInt8);
  s.narrow_range = false;
  s.bits = 4;
  EXPECT_EQ(s.qmin(), 0);
  EXPECT_EQ(s.qmax(), 15);
  s.bits = 16;
  s.is_signed = true;
  EXPECT_EQ(s.qmin(), -32768);
  EXPECT_EQ(s.qmax(), 32767);
  EXPECT_EQ(s.storage_type(), DType::kInt16);
  s.is_signed = false;
  EXPECT_EQ(s.storage_type(), DType::kUInt16);
}

TEST(QuantSpec, ValidateRejects) {
  for (int bits : {0, 1, 9, 12, 17, 32}) {
    QuantSpec s;
    s.bits = bits;
    EXPECT_THROW(s.validate(), Error) << bits;
  }
  QuantSpec g;
  g.granularity = Granularity::kPerGroup;
  EXPECT_THROW(g.validate(), Error);
  g.group_size = 4;
  EXPECT_NO_THROW(g.validate());
  EXPECT_NE(g.to_string().find("group_size=4"), std::string::npos);
}

TEST(SlotLayout, MatchesDefinition) {
  const Shape shape{2, 5, 3};
  QuantSpec s;
  s.granularity = Granularity::kPerGroup;
  s.axis = -2;
  s.group_size = 2;
  const SlotLayout l = SlotLayout::make(s, shape);
  EXPECT_EQ(l.axis, 1);
  EXPECT_EQ(l.param_shape, (Shape{2, 3, 3}));
  EXPECT_EQ(l.slots, 18);
  int64_t seen = 0;
  l.for_each_run([&](int64_t b, int64_t n, int64_t s0, int64_t step) {
    for (int64_t k = 0; k < n; ++k) {
      const int64_t i = b + k, o = i / 15, d = (i / 3) % 5, r = i % 3;
      EXPECT_EQ(s0 + k * step, (o * 3 + d / 2) * 3 + r);
      EXPECT_EQ(l.slot(i), s0 + k * step);
      ++seen;
    }
  });
  EXPECT_EQ(seen, 30);
  s.granularity = Granularity::kPerChannel;
  const SlotLayout c = SlotLayout::make(s, shape);
  EXPECT_EQ(c.param_shape, (Shape{5}));
  for (int64_t i = 0; i < 30; ++i) EXPECT_EQ(c.slot(i), (i / 3) % 5);
  s.granularity = Granularity::kPerTensor;
  EXPECT_EQ(SlotLayout::make(s, shape).param_shape, Shape{});
  s.granularity = Granularity::kPerChannel;
  s.axis = 3;
  EXPECT_THROW(SlotLayout::make(s, shape), Error);
  EXPECT_THROW(SlotLayout::make(s, Shape{}), Error);  // per-channel scalar
}

// Double-precision reference for one value; returns false if x/s is within a float ulp of a tie.
bool reference_quantize(float x, float s, int32_t zp, int32_t qmin, int32_t qmax, int32_t* q) {
  const double u = static_cast<double>(x) / static_cast<double>(s);
  const double frac = u - std::floor(u);
  const double ulp = std::fabs(u) * std::ldexp(1.0, -23) + 1e-300;
  const bool near_boundary = std::fabs(frac - 0.5) <= ulp;
  double r = std::nearbyint(u) + zp;
  r = std::min<double>(std::max<double>(r, qmin), qmax);
  *q = static_cast<int32_t>(r);
  return !near_boundary;
}

TEST(Quantize, RandomPropertiesAgainstDoubleReference) {
  std::mt19937_64 rng(12345);
  int64_t checked = 0, boundary = 0;
  for (int iter = 0; iter < 400; ++iter) {
    for (const QuantSpec& base : all_modes()) {
      if ((iter + base.bits) % 7 != 0) continue;  // a rotating subset keeps the run short
      QuantSpec spec = base;
      const int rank = 1 + static_cast<int>(rng() % 4);
      Shape shape;
      for (int i = 0; i < rank; ++i) shape.push_back(1 + static_cast<int64_t>(rng() % 5));
      spec.granularity = static_cast<Granularity>(rng() % 3);
      spec.axis = static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * rank)) - rank;  // [-rank, rank)
      spec.group_size = 1 + static_cast<int64_t>(rng() % 4);
      const double scale_exp = std::uniform_real_distribution<double>(-20, 20)(rng);
      const float spread = static_cast<float>(std::pow(2.0, scale_exp));
      const float offset = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng) * spread;
      Tensor x(DType::kFloat32, shape);
      std::normal_distribution<float> nd(0.0f, 1.0f);
      for (float& v : x.span<float>()) v = offset + spread * nd(rng);
      const QuantParams p = params_from_tensor(spec, x);
      ASSERT_NO_THROW(check_params(p, shape));
      const SlotLayout l = SlotLayout::make(spec, shape);
      const int32_t qmin = spec.qmin(), qmax = spec.qmax();
      for (int64_t k = 0; k < p.count(); ++k) {
        const float s = p.scale[static_cast<size_t>(k)];
        ASSERT_TRUE(std::isnormal(s)) << s;
        ASSERT_GE(p.zero_point[static_cast<size_t>(k)], qmin);
        ASSERT_LE(p.zero_point[static_cast<size_t>(k)], qmax);
        if (spec.symmetric) {
          ASSERT_EQ(p.zero_point[static_cast<size_t>(k)], spec.is_signed ? 0 : 1 << (spec.bits - 1));
        }
        // 0.0 is exactly representable.
        ASSERT_EQ(quantize_value(0.0f, s, p.zero_point[static_cast<size_t>(k)], qmin, qmax), p.zero_point[static_cast<size_t>(k)]);
      }
      const Tensor q = quantize(x, p);
      ASSERT_EQ(q.dtype(), spec.storage_type());
      const Tensor qf = q.to_f32();
      const Tensor d = dequantize(q, p);
      const Tensor fq = fake_quant(x, p);
      for (int64_t i = 0; i < x.numel(); ++i) {
        const auto s = static_cast<size_t>(l.slot(i));
        const float xv = x.span<float>()[static_cast<size_t>(i)];
        int32_t want;
        const bool clean = reference_quantize(xv, p.scale[s], p.zero_point[s], qmin, qmax, &want);
        const auto got = static_cast<int32_t>(qf.span<float>()[static_cast<size_t>(i)]);
        if (clean) {
          ASSERT_EQ(got, want) << "x=" << xv << " s=" << p.scale[s] << " zp=" << p.zero_point[s] << " " << spec.to_string();
        } else {
          ++boundary;
          ASSERT_LE(std::abs(got - want), 1);
        }
        const double deq = static_cast<double>(got - p.zero_point[s]) * p.scale[s];
        ASSERT_EQ(d.span<float>()[static_cast<size_t>(i)], static_cast<float>(deq));
        ASSERT_EQ(fq.span<float>()[static_cast<size_t>(i)], static_cast<float>(deq));
        // Every value lies inside its slot's range, so the error is at most half a step, plus the
        // float rounding of the scale accumulated over the (qmax - qmin) steps of the grid.
        const double slack = (qmax - qmin) * std::ldexp(static_cast<double>(p.scale[s]), -23);
        ASSERT_LE(std::fabs(deq - xv), 0.5 * p.scale[s] + slack)
            << "x=" << xv << " " << spec.to_string();
        ++checked;
      }
    }
  }
  EXPECT_GT(checked, 10000);
  EXPECT_LT(boundary, checked / 1000 + 5);
}

TEST(Quantize, TiesRoundHalfToEven) {
  QuantSpec spec;  // int8 symmetric
  const QuantParams p = make_params(spec, {8}, {1.0f}, {0});
  const Tensor x = Tensor::from<float>({8}, {0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -127.5f});
  const Tensor q = quantize(x, p);
  const std::vector<int8_t> want{0, 2, 2, 0, -2, -2, 126, -128};
  for (size_t i = 0; i < want.size(); ++i) EXPECT_EQ(q.span<int8_t>()[i], want[i]) << i;
  // With a zero point the tie is resolved before adding it: 0.5 -> 0 -> +zp.
  QuantSpec u;
  u.is_signed = false;
  const QuantParams pu = make_params(u, {2}, {1.0f}, {3});
  const Tensor qu = quantize(Tensor::from<float>({2}, {0.5f, 1.5f}), pu);
  EXPECT_EQ(qu.span<uint8_t>()[0], 3);
  EXPECT_EQ(qu.span<uint8_t>()[1], 5);
}

TEST(Quantize, NonFiniteInputs) {
  QuantSpec spec;
  spec.is_signed = false;
  const QuantParams p = make_params(spec, {3}, {0.5f}, {10});
  const float inf = std::numeric_limits<float>::infinity();
  const Tensor q = quantize(Tensor::from<float>({3}, {inf, -inf, std::nanf("")}), p);
  EXPECT_EQ(q.span<uint8_t>()[0], 255);
  EXPECT_EQ(q.span<uint8_t>()[1], 0);
  EXPECT_EQ(q.span<uint8_t>()[2], 10);
}

TEST(ChooseParams, Formulas) {
  QuantSpec a;
  a.is_signed = false;
  a.symmetric = false;
  float mn = -1.0f, mx = 3.0f;
  QuantParams p = choose_params(a, {4}, {&mn, 1}, {&mx, 1});
  EXPECT_EQ(p.scale[0], 4.0f / 255.0f);
  EXPECT_EQ(p.zero_point[0], static_cast<int32_t>(std::nearbyint(0.0f - (-1.0f) / (4.0f / 255.0f))));
  // Range not containing 0 is widened to include it.
  mn = 2.0f, mx = 4.0f;
  p = choose_params(a, {4}, {&mn, 1}, {&mx, 1});
  EXPECT_EQ(p.scale[0], 4.0f / 255.0f);
  EXPECT_EQ(p.zero_point[0], 0);
  mn = -4.0f, mx = -2.0f;
  p = choose_params(a, {4}, {&mn, 1}, {&mx, 1});
  EXPECT_EQ(p.zero_point[0], 255);
  // Symmetric signed: scale = amax / qmax; narrow changes qmin only.
  QuantSpec s;
  mn = -2.0f, mx = 1.0f;
  p = choose_params(s, {4}, {&mn, 1}, {&mx, 1});
  EXPECT_EQ(p.scale[0], 2.0f / 127.0f);
  EXPECT_EQ(p.zero_point[0], 0);
  // Symmetric unsigned: midpoint 2^(b-1), scale = amax / (2^(b-1) - 1).
  s.is_signed = false;
  p = choose_params(s, {4}, {&mn, 1}, {&mx, 1});
  EXPECT_EQ(p.zero_point[0], 128);
  EXPECT_EQ(p.scale[0], 2.0f / 127.0f);
  s.bits = 4;
  p = choose_params(s, {4}, {&mn, 1}, {&mx, 1});
  EXPECT_EQ(p.zero_point[0], 8);
  EXPECT_EQ(p.scale[0], 2.0f / 7.0f);
  // Inverted or non-finite ranges are errors; so is a wrong count.
  mn = 1.0f, mx = 0.0f;
  EXPECT_THROW(choose_params(a, {4}, {&mn, 1}, {&mx, 1}), Error);
  mn = -std::numeric_limits<float>::infinity(), mx = 0.0f;
  EXPECT_THROW(choose_params(a, {4}, {&mn, 1}, {&mx, 1}), Error);
  QuantSpec pc;
  pc.granularity = Granularity::kPerChannel;
  EXPECT_THROW(choose_params(pc, {4}, {&mn, 1}, {&mx, 1}), Error);
}

TEST(ChooseParams, DegenerateAndExtremeRanges) {
  for (const QuantSpec& spec : all_modes()) {
    const std::vector<std::pair<float, float>> ranges{
        {0.0f, 0.0f},          {3.0f, 3.0f},       {-3.0f, -3.0f},     {0.0f, 1e-40f},
        {-1e-40f, 0.0f},       {-1e-44f, 1e-45f},  {1e-38f, 1.2e-38f}, {-FLT_MAX, FLT_MAX},
        {-FLT_MAX, -FLT_MAX},  {FLT_MAX, FLT_MAX}, {-1e30f, 1e-30f},   {0.0f, FLT_MIN}};
    for (auto [mn, mx] : ranges) {
      const QuantParams p = choose_params(spec, {1}, {&mn, 1}, {&mx, 1});
      const float s = p.scale[0];
      ASSERT_TRUE(std::isnormal(s) && s > 0) << s << " for [" << mn << "," << mx << "] " << spec.to_string();
      ASSERT_GE(p.zero_point[0], spec.qmin());
      ASSERT_LE(p.zero_point[0], spec.qmax());
      ASSERT_EQ(quantize_value(0.0f, s, p.zero_point[0], spec.qmin(), spec.qmax()), p.zero_point[0]);
      if (mn == 0.0f && mx == 0.0f) {
        EXPECT_EQ(s, kDegenerateScale);
      }
      // The range's ends survive fake quantization to within half a step (or clip only by that much).
      for (float v : {mn, mx}) {
        const int32_t q = quantize_value(v, s, p.zero_point[0], spec.qmin(), spec.qmax());
        const double back = static_cast<double>(q - p.zero_point[0]) * s;
        ASSERT_LE(std::fabs(back - v), 0.5 * static_cast<double>(s) * (1 + 1e-6) + 1e-300)
            << v << " in [" << mn << "," << mx << "] " << spec.to_string() << " s=" << s << " zp=" << p.zero_point[0];
      }
    }
  }
  EXPECT_EQ(min_scale(), FLT_MIN);
}

TEST(ParamsFromTensor, ConstantAndZeroChannels) {
  QuantSpec spec;
  spec.symmetric = false;
  spec.granularity = Granularity::kPerChannel;
  spec.axis = -1;
  // Channel 0 all zero, channel 1 constant 5, channel 2 constant -2, channel 3 ordinary.
  const Tensor x = Tensor::from<float>({2, 4}, {0, 5, -2, -1, 0, 5, -2, 3});
  const QuantParams p = params_from_tensor(spec, x);
  EXPECT_EQ(p.param_shape, (Shape{4}));
  EXPECT_EQ(p.axis, 1);
  EXPECT_EQ(p.scale[0], 1.0f);
  EXPECT_EQ(p.zero_point[0], -128);
  EXPECT_EQ(p.scale[1], 5.0f / 255.0f);
  EXPECT_EQ(p.zero_point[1], -128);
  EXPECT_EQ(p.zero_point[2], 127);
  const Tensor fq = fake_quant(x, p);
  EXPECT_EQ(fq.span<float>()[0], 0.0f);
  EXPECT_NEAR(fq.span<float>()[1], 5.0f, 1e-6);
  EXPECT_NEAR(fq.span<float>()[2], -2.0f, 1e-6);
  // Non-finite values are rejected with their position.
  Tensor bad = x.clone();
  bad.span<float>()[5] = std::nanf("");
  try {
    params_from_tensor(spec, bad);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("flat index 5"), std::string::npos) << e.what();
  }
}

TEST(ParamsFromTensor, SingleElementAndScalar) {
  QuantSpec spec;
  const Tensor s = Tensor::scalar_f32(-0.75f);
  const QuantParams p = params_from_tensor(spec, s);
  EXPECT_EQ(p.param_shape, Shape{});
  EXPECT_EQ(p.scale[0], 0.75f / 127.0f);
  const Tensor q = quantize(s, p);
  EXPECT_EQ(q.shape(), Shape{});
  EXPECT_EQ(q.span<int8_t>()[0], -127);
  EXPECT_EQ(dequantize(q, p).span<float>()[0], -0.75f);
}

TEST(PerGroup, ParamShapeIsOnnxBlocked) {
  QuantSpec spec;
  spec.granularity = Granularity::kPerGroup;
  spec.axis = 1;
  spec.group_size = 3;
  Tensor x(DType::kFloat32, {2, 7});
  for (int64_t i = 0; i < 14; ++i) x.span<float>()[static_cast<size_t>(i)] = static_cast<float>(i % 7) - 3.0f;
  const QuantParams p = params_from_tensor(spec, x);
  EXPECT_EQ(p.param_shape, (Shape{2, 3}));
  // Groups {0,1,2} -> amax 3, {3,4,5} -> amax 2, {6} -> 3.
  EXPECT_EQ(p.scale[0], 3.0f / 127.0f);
  EXPECT_EQ(p.scale[1], 2.0f / 127.0f);
  EXPECT_EQ(p.scale[2], 3.0f / 127.0f);
  EXPECT_EQ(p.scale[3], 3.0f / 127.0f);
}

TEST(MakeParams, Checks) {
  QuantSpec spec;
  spec.granularity = Granularity::kPerChannel;
  spec.axis = 0;
  EXPECT_THROW(make_params(spec, {3, 2}, {1.0f, 1.0f}, {0, 0}), Error);  // count
  EXPECT_THROW(make_params(spec, {2, 2}, {1.0f, 0.0f}, {0, 0}), Error);  // zero scale
  EXPECT_THROW(make_params(spec, {2, 2}, {1.0f, 1.0f}, {0, 200}), Error);  // zp out of range
  const QuantParams p = make_params(spec, {2, 2}, {1.0f, 2.0f}, {0, 1});
  EXPECT_THROW(quantize(Tensor(DType::kFloat32, {3, 2}), p), Error);
  EXPECT_THROW(quantize(Tensor(DType::kInt8, {2, 2}), p), Error);
  EXPECT_THROW(dequantize(Tensor(DType::kFloat32, {2, 2}), p), Error);
  const Tensor d = dequantize(Tensor::from<int32_t>({2, 2}, {1, 2, 3, 4}), p);
  EXPECT_EQ(d.span<float>()[3], 6.0f);
}

}  // namespace
}  // namespace perch::quant
