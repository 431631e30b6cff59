// The integer executor on hand-built QDQ graphs in the style other tools write (int8 activations, unfused
// activations, uint8 weights with a zero point, float ops in between), against its exact simulation
// (Int8Mode::kSimulate), the float executor, and double-precision references. The shared models and perch's
// own quantizer's output are covered in tests/ptq/int8_test.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>

#include "perch/graph/onnx_io.h"
#include "perch/quant/fixed_point.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/int8_executor.h"
#include "test_util.h"

namespace perch::runtime {
namespace {

struct Builder {
  graph::Model m;
  Builder() { m.set_opset(13); }
  void node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out,
            std::map<std::string, graph::AttrValue> attrs = {}) {
    test::add_node(m.graph, op, std::move(in), std::move(out), std::move(attrs));
  }
  template <typename T>
  void init(const std::string& name, Shape s, std::vector<T> v) {
    m.graph.initializers[name] = Tensor::from<T>(std::move(s), v);
  }
  // Q -> DQ pair on `v` with per-tensor (scale, zp of type T); returns the DQ output name.
  template <typename T>
  std::string qdq(const std::string& v, float scale, T zp) {
    init<float>(v + "_s", {}, {scale});
    init<T>(v + "_z", {}, {zp});
    node("QuantizeLinear", {v, v + "_s", v + "_z"}, {v + "_q"});
    node("DequantizeLinear", {v + "_q", v + "_s", v + "_z"}, {v + "_dq"});
    return v + "_dq";
  }
};

std::vector<float> randn(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// x [N,3,6,6] -Q(int8)-> Conv 3x3 (int8 weights per-channel, int32 bias) -> Relu (unfused: its own Q/DQ)
// -> Flatten -> MatMul (uint8 weights, per-tensor zero point 120) -> Q(uint8) -> DQ -> "y2";
// and the Conv's dequantized output -> Sigmoid -> "y1" (float: not followed by a Q).
graph::Model foreign_model() {
  Builder b;
  auto& g = b.m.graph;
  g.inputs.push_back({"x", DType::kFloat32, {-1, 3, 6, 6}, {"N", "", "", ""}, true});
  g.outputs.push_back({"y1", DType::kFloat32, {-1, 4, 6, 6}, {}, true});
  g.outputs.push_back({"y2", DType::kFloat32, {-1, 5}, {}, true});
  const float xs = 0.02f;
  const std::string x = b.qdq<int8_t>("x", xs, int8_t{-3});
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> wq(-127, 127), bq(-2000, 2000), uq(0, 255);
  std::vector<int8_t> w(4 * 3 * 3 * 3);
  for (auto& v : w) v = static_cast<int8_t>(wq(rng));
  const std::vector<float> ws = {0.004f, 0.0011f, 0.0063f, 0.002f};
  b.init<int8_t>("w", {4, 3, 3, 3}, w);
  b.init<float>("w_s", {4}, ws);
  b.init<int8_t>("w_z", {4}, {0, 0, 0, 0});
  b.node("DequantizeLinear", {"w", "w_s", "w_z"}, {"w_dq"}, {{"axis", int64_t{0}}});
  std::vector<int32_t> bias(4);
  std::vector<float> bs(4);
  for (int c = 0; c < 4; ++c) bias[c] = bq(rng), bs[c] = xs * ws[c];
  b.init<int32_t>("b", {4}, bias);
  b.init<float>("b_s", {4}, bs);
  b.node("DequantizeLinear", {"b", "b_s"}, {"b_dq"}, {{"axis", int64_t{0}}});
  b.node("Conv", {x, "w_dq", "b_dq"}, {"c"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}});
  const std::string c = b.qdq<int8_t>("c", 0.05f, int8_t{10});
  b.node("Sigmoid", {c}, {"y1"});
  b.node("Relu", {c}, {"r"});
  const std::string r = b.qdq<int8_t>("r", 0.03f, int8_t{-128});
  b.node("Flatten", {r}, {"f"});
  std::vector<uint8_t> wm(4 * 6 * 6 * 5);
  for (auto& v : wm) v = static_cast<uint8_t>(uq(rng));
  b.init<uint8_t>("wm", {144, 5}, wm);
  b.init<float>("wm_s", {}, {0.001f});
  b.init<uint8_t>("wm_z", {}, {120});
  b.node("DequantizeLinear", {"wm", "wm_s", "wm_z"}, {"wm_dq"});
  b.node("MatMul", {"f", "wm_dq"}, {"mm"});
  b.init<float>("mm_s", {}, {0.04f});
  b.init<uint8_t>("mm_z", {}, {128});
  b.node("QuantizeLinear", {"mm", "mm_s", "mm_z"}, {"mm_q"});
  b.node("DequantizeLinear", {"mm_q", "mm_s", "mm_z"}, {"y2"});
  return b.m;
}

Tensor input(int64_t n, uint32_t seed) {
  auto v = randn(static_cast<size_t>(n * 3 * 36), seed, 1.0f);
  return Tensor::from<float>({n, 3, 6, 6}, v);
}

TEST(Int8Executor, ForeignQdqLowersAndReportsTheFloatNode) {
  const graph::Model m = foreign_model();
  const Int8Executor i8(m);
  const auto& rep = i8.report();
  // Sigmoid's output is a float graph output (no Q after it): the one float node, named with the reason.
  EXPECT_EQ(rep.float_nodes(), 1) << rep.summary();
  for (const auto& e : rep.nodes)
    if (!e.integer) {
      EXPECT_NE(e.node.find("Sigmoid"), std::string::npos) << e.node;
      EXPECT_NE(e.how.find("QuantizeLinear"), std::string::npos) << e.how;
    }
  EXPECT_NE(rep.summary().find("Sigmoid"), std::string::npos);
  int lowered = 0;
  for (const auto& e : rep.nodes) {
    std::printf("  %-45s %s\n", e.node.c_str(), e.how.c_str());
    if ((e.node.rfind("Conv ", 0) == 0 || e.node.rfind("MatMul ", 0) == 0 || e.node.rfind("Relu ", 0) == 0) &&
        e.how.rfind("int8 ", 0) == 0)
      ++lowered;
  }
  EXPECT_EQ(lowered, 3) << "Conv, Relu (table) and MatMul must run as integer ops";
  const Tensor x = input(8, 3);
  const TensorMap a = i8.run({{"x", x}}, {"c_q", "r_q", "mm_q"});
  const TensorMap s = Int8Executor(m, Int8Mode::kSimulate).run({{"x", x}}, {"c_q", "r_q", "mm_q"});
  for (const char* v : {"c_q", "r_q", "mm_q", "y1", "y2"}) {
    ASSERT_EQ(a.at(v).dtype(), s.at(v).dtype()) << v;
    ASSERT_EQ(a.at(v).shape(), s.at(v).shape()) << v;
    EXPECT_EQ(std::memcmp(a.at(v).raw(), s.at(v).raw(), a.at(v).nbytes()), 0) << v << " differs from the exact simulation";
  }
  EXPECT_EQ(a.at("c_q").dtype(), DType::kInt8);
  EXPECT_EQ(a.at("mm_q").dtype(), DType::kUInt8);
}

// The Conv's quantized output against a double-precision reference of the integer formula:
// q = clamp(round((acc + bias) * s_x s_w[c] / s_y) + zp): the output stage rounds acc * M once (docs/INTEGER.md),
// so it equals the exactly rounded value except where that value lies within the multiplier's 31-bit precision of
// a rounding boundary (or on it: ties go up, nearbyint to even) — there it may be one step away.
TEST(Int8Executor, ConvRequantizationIsTheExactlyRoundedValue) {
  const graph::Model m = foreign_model();
  const Int8Executor i8(m);
  const Tensor x = input(4, 9);
  const Tensor cq = i8.run({{"x", x}}, {"c_q"}).at("c_q");
  const Tensor& w = m.graph.initializers.at("w");
  const Tensor& b = m.graph.initializers.at("b");
  const auto ws = m.graph.initializers.at("w_s").span<float>();
  // Quantize x as the model does (float division, ties to even), then convolve exactly in int64.
  std::vector<int32_t> xq(static_cast<size_t>(x.numel()));
  for (int64_t i = 0; i < x.numel(); ++i)
    xq[static_cast<size_t>(i)] =
        static_cast<int32_t>(std::clamp(std::nearbyint(x.data<float>()[i] / 0.02f) + -3.0f, -128.0f, 127.0f));
  int64_t exact = 0, total = 0;
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t c = 0; c < 4; ++c)
      for (int64_t oh = 0; oh < 6; ++oh)
        for (int64_t ow = 0; ow < 6; ++ow) {
          int64_t acc = b.data<int32_t>()[c];
          for (int64_t ci = 0; ci < 3; ++ci)
            for (int64_t i = 0; i < 3; ++i)
              for (int64_t j = 0; j < 3; ++j) {
                const int64_t ih = oh - 1 + i, iw = ow - 1 + j;
                if (ih < 0 || ih >= 6 || iw < 0 || iw >= 6) continue;
                acc += int64_t{xq[static_cast<size_t>(((n * 3 + ci) * 6 + ih) * 6 + iw)] + 3} *
                       w.data<int8_t>()[((c * 3 + ci) * 3 + i) * 3 + j];
              }
          const double real = static_cast<double>(acc) * (double{0.02f} * double{ws[static_cast<size_t>(c)]} / double{0.05f});
          const double want = std::clamp(std::nearbyint(real) + 10.0, -128.0, 127.0);
          const double got = cq.data<int8_t>()[((n * 4 + c) * 6 + oh) * 6 + ow];
          const double frac = real - std::floor(real);
          if (std::fabs(frac - 0.5) > 1e-6 * std::max(1.0, std::fabs(real)))
            EXPECT_EQ(got, want) << "n=" << n << " c=" << c << " acc=" << acc << " real=" << real;
          else
            EXPECT_LE(std::fabs(got - want), 1.0) << "n=" << n << " c=" << c << " acc=" << acc;
          exact += got == want;
          ++total;
        }
  EXPECT_GE(exact, total - 2);
}

// Narrow first-layer convolutions (kw * C < 16 bytes, not a multiple of 4: the kernel-row-group im2col) with uint8
// weights and per-channel zero points, strides, asymmetric pads, height dilation: the int32 accumulator (read back
// from the float output acc * s_x s_w[c], exact for |acc| < 2^20) equals an int64 convolution written here, and the
// output equals the exact simulation's bit for bit.
TEST(Int8Executor, NarrowConvolutionsMatchInt64Reference) {
  std::mt19937 rng(77);
  struct Geo { int64_t c, kh, kw, sh, sw, dh, pt, pl, pb, pr, h, w; };
  const std::vector<Geo> geos = {{1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 9, 11}, {1, 5, 5, 2, 2, 1, 2, 1, 0, 2, 12, 13},
                                 {3, 3, 3, 2, 1, 1, 0, 1, 1, 0, 7, 8},  {2, 1, 3, 1, 3, 1, 0, 0, 0, 1, 5, 10},
                                 {1, 3, 2, 1, 1, 2, 2, 0, 1, 1, 9, 6},  {3, 5, 1, 1, 1, 1, 2, 0, 2, 0, 6, 4},
                                 {5, 3, 3, 1, 1, 1, 1, 1, 1, 1, 5, 5},
                                 // pads far larger than the image: the checked builder instead of a padded copy
                                 {1, 3, 3, 30, 1, 1, 70, 1, 9, 1, 5, 9}};
  for (const Geo& G : geos) {
    SCOPED_TRACE("C=" + std::to_string(G.c) + " k=" + std::to_string(G.kh) + "x" + std::to_string(G.kw));
    const int64_t N = 5, co = 19;
    Builder b;
    b.m.graph.inputs.push_back({"x", DType::kFloat32, {-1, G.c, G.h, G.w}, {}, true});
    b.m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
    const float xs = 0.03f;
    const std::string x = b.qdq<uint8_t>("x", xs, uint8_t{121});
    std::uniform_int_distribution<int> uq(0, 255), zq(90, 160), bq(-5000, 5000);
    std::vector<uint8_t> w(static_cast<size_t>(co * G.c * G.kh * G.kw));
    for (auto& v : w) v = static_cast<uint8_t>(uq(rng));
    std::vector<uint8_t> wz(co);
    std::vector<float> ws(co), bs(co);
    std::vector<int32_t> bias(co);
    for (int64_t c = 0; c < co; ++c)
      wz[c] = static_cast<uint8_t>(zq(rng)), ws[c] = 0.001f * static_cast<float>(c + 1), bias[c] = bq(rng), bs[c] = xs * ws[c];
    b.init<uint8_t>("w", {co, G.c, G.kh, G.kw}, w);
    b.init<float>("w_s", {co}, ws);
    b.init<uint8_t>("w_z", {co}, wz);
    b.node("DequantizeLinear", {"w", "w_s", "w_z"}, {"w_dq"}, {{"axis", int64_t{0}}});
    b.init<int32_t>("b", {co}, bias);
    b.init<float>("b_s", {co}, bs);
    b.node("DequantizeLinear", {"b", "b_s"}, {"b_dq"}, {{"axis", int64_t{0}}});
    b.node("Conv", {x, "w_dq", "b_dq"}, {"y"},
           {{"pads", std::vector<int64_t>{G.pt, G.pl, G.pb, G.pr}}, {"strides", std::vector<int64_t>{G.sh, G.sw}},
            {"dilations", std::vector<int64_t>{G.dh, 1}}});
    const Int8Executor i8(b.m);
    bool grouped = false;
    for (const auto& e : i8.report().nodes) grouped |= e.how.find("kernel-row-group") != std::string::npos;
    EXPECT_EQ(grouped, (G.kw * G.c) % 4 != 0 && G.kw * G.c < 16) << i8.report().summary();
    const auto xv = randn(static_cast<size_t>(N * G.c * G.h * G.w), 5, 1.5f);
    const Tensor xt = Tensor::from<float>({N, G.c, G.h, G.w}, xv);
    const Tensor y = i8.run({{"x", xt}}).at("y");
    const Tensor ys = Int8Executor(b.m, Int8Mode::kSimulate).run({{"x", xt}}).at("y");
    ASSERT_EQ(y.shape(), ys.shape());
    EXPECT_EQ(std::memcmp(y.raw(), ys.raw(), y.nbytes()), 0) << "differs from the exact simulation";
    const int64_t oh = (G.h + G.pt + G.pb - G.dh * (G.kh - 1) - 1) / G.sh + 1, ow = (G.w + G.pl + G.pr - G.kw) / G.sw + 1;
    ASSERT_EQ(y.shape(), (Shape{N, co, oh, ow}));
    std::vector<int32_t> xq(xv.size());
    for (size_t i = 0; i < xv.size(); ++i)
      xq[i] = static_cast<int32_t>(std::clamp(std::nearbyint(xv[i] / xs) + 121.0f, 0.0f, 255.0f));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < co; ++c)
        for (int64_t p = 0; p < oh * ow; ++p) {
          const int64_t r = p / ow, q = p % ow;
          int64_t acc = bias[c];
          for (int64_t ci = 0; ci < G.c; ++ci)
            for (int64_t i = 0; i < G.kh; ++i)
              for (int64_t j = 0; j < G.kw; ++j) {
                const int64_t ih = r * G.sh - G.pt + i * G.dh, iw = q * G.sw - G.pl + j;
                if (ih < 0 || ih >= G.h || iw < 0 || iw >= G.w) continue;  // padding: q = zp_x, adds 0
                acc += int64_t{xq[static_cast<size_t>(((n * G.c + ci) * G.h + ih) * G.w + iw)] - 121} *
                       (int64_t{w[static_cast<size_t>(((c * G.c + ci) * G.kh + i) * G.kw + j)]} - wz[c]);
              }
          const double got = y.data<float>()[(n * co + c) * oh * ow + p] / (double{xs} * double{ws[c]});
          ASSERT_EQ(std::llround(got), acc) << "n=" << n << " c=" << c << " pixel " << p;
        }
  }
}

TEST(Int8Executor, AgreesWithFloatExecutorUpToRounding) {
  const graph::Model m = foreign_model();
  const Tensor x = input(8, 4);
  const TensorMap a = Int8Executor(m).run({{"x", x}}, {"c_q"});
  const TensorMap f = Executor(m).run({{"x", x}}, nullptr, {"c_q"});
  const auto va = a.at("c_q").to_i64_vector(), vf = f.at("c_q").to_i64_vector();
  ASSERT_EQ(va.size(), vf.size());
  for (size_t i = 0; i < va.size(); ++i) ASSERT_LE(std::llabs(va[i] - vf[i]), 1) << i;
}

// The float -> 8-bit boundary is QuantizeLinear exactly: ties to even, NaN -> zero point, +-inf and huge
// values clamp, for uint8 and int8 — compared with the float executor's QuantizeLinear value by value.
TEST(Int8Executor, InputQuantizationIsQuantizeLinearExactly) {
  for (bool is_signed : {false, true}) {
    Builder b;
    b.m.graph.inputs.push_back({"x", DType::kFloat32, {-1}, {"N"}, true});
    b.m.graph.outputs.push_back({"y", DType::kFloat32, {-1}, {}, true});
    const float s = 0.1f;
    const std::string dq = is_signed ? b.qdq<int8_t>("x", s, int8_t{-5}) : b.qdq<uint8_t>("x", s, uint8_t{7});
    b.node("Identity", {dq}, {"y"});
    std::vector<float> v = {0.05f, 0.15f, 0.25f, -0.05f, -0.15f, -0.25f, 12.75f, -12.75f, 1e30f, -1e30f,
                            std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(), 0.0f, -0.0f, 25.45f, -13.35f};
    for (int k = -300; k <= 300; ++k) v.push_back((static_cast<float>(k) + 0.5f) * s);  // ties of x / s (near)
    const Tensor x = Tensor::from<float>({static_cast<int64_t>(v.size())}, v);
    const Tensor a = Int8Executor(b.m).run({{"x", x}}, {"x_q"}).at("x_q");
    const Tensor f = Executor(b.m).run({{"x", x}}, nullptr, {"x_q"}).at("x_q");
    ASSERT_EQ(a.dtype(), f.dtype());
    EXPECT_EQ(std::memcmp(a.raw(), f.raw(), a.nbytes()), 0) << (is_signed ? "int8" : "uint8");
  }
}

// Pools with padding, strides and ceil_mode: MaxPool is exact (max commutes with the increasing DQ), the
// average within one step of the float executor (fixed-point vs float-mean rounding, docs/INTEGER.md).
TEST(Int8Executor, PoolsMatchTheFloatExecutor) {
  struct Case {
    std::vector<int64_t> k, s, pads;
    int64_t ceil, include_pad;
  };
  for (const Case& pc : {Case{{3, 3}, {2, 2}, {1, 1, 1, 1}, 0, 0}, Case{{3, 3}, {2, 2}, {1, 1, 1, 1}, 0, 1},
                         Case{{2, 2}, {2, 2}, {0, 0, 0, 0}, 1, 0}, Case{{3, 2}, {1, 2}, {0, 1, 1, 0}, 1, 1},
                         Case{{2, 2}, {2, 2}, {0, 0, 0, 0}, 0, 0}}) {
    Builder b;
    b.m.graph.inputs.push_back({"x", DType::kFloat32, {-1, 5, 7, 7}, {}, true});
    b.m.graph.outputs.push_back({"mp", DType::kFloat32, {}, {}, false});
    b.m.graph.outputs.push_back({"ap", DType::kFloat32, {}, {}, false});
    const std::string x = b.qdq<uint8_t>("x", 0.03f, uint8_t{100});
    std::map<std::string, graph::AttrValue> attrs = {{"kernel_shape", pc.k}, {"strides", pc.s}, {"pads", pc.pads},
                                                    {"ceil_mode", pc.ceil}};
    b.node("MaxPool", {x}, {"m"}, attrs);
    b.qdq<uint8_t>("m", 0.03f, uint8_t{100});
    b.node("Identity", {"m_dq"}, {"mp"});
    attrs["count_include_pad"] = pc.include_pad;
    b.node("AveragePool", {x}, {"a"}, attrs);
    b.qdq<uint8_t>("a", 0.0217f, uint8_t{90});  // s_x / s_y not a small rational: no exact ties by design
    b.node("Identity", {"a_dq"}, {"ap"});
    const Int8Executor i8(b.m);
    EXPECT_EQ(i8.report().float_nodes(), 0) << i8.report().summary();
    const Tensor in = Tensor::from<float>({2, 5, 7, 7}, randn(2 * 5 * 49, 8, 1.0f));
    const TensorMap a = i8.run({{"x", in}}, {"m_q", "a_q"});
    const TensorMap f = Executor(b.m).run({{"x", in}}, nullptr, {"m_q", "a_q"});
    const TensorMap s = Int8Executor(b.m, Int8Mode::kSimulate).run({{"x", in}}, {"m_q", "a_q"});
    ASSERT_EQ(a.at("m_q").shape(), f.at("m_q").shape());
    ASSERT_EQ(a.at("a_q").shape(), f.at("a_q").shape());
    EXPECT_EQ(std::memcmp(a.at("m_q").raw(), f.at("m_q").raw(), a.at("m_q").nbytes()), 0) << "MaxPool must be exact";
    EXPECT_EQ(std::memcmp(a.at("a_q").raw(), s.at("a_q").raw(), a.at("a_q").nbytes()), 0);
    const auto va = a.at("a_q").to_i64_vector(), vf = f.at("a_q").to_i64_vector();
    int64_t differ = 0;
    for (size_t i = 0; i < va.size(); ++i) {
      ASSERT_LE(std::llabs(va[i] - vf[i]), 1) << "AveragePool value " << i << " (case k" << pc.k[0] << pc.k[1]
                                               << " ceil " << pc.ceil << " include_pad " << pc.include_pad << ")";
      differ += va[i] != vf[i];
    }
    // Only near-ties of the real average can round differently (single fixed-point rounding vs float mean).
    EXPECT_LE(differ, static_cast<int64_t>(va.size()) / 100) << differ << " of " << va.size();
  }
}

// Elementwise chains on one 8-bit value (hardswish as exporters write it, PaddlePaddle's scalar affine after it,
// a fused Relu, int8 and uint8) become one 256-entry table: every node integer, and the codes equal to the float
// executor's run of the same QDQ graph (the simulation) for every input code, bit for bit. Chains that are not a
// function of one code stay float and still agree: a per-channel constant, an inner value that is a graph output,
// two different 8-bit roots.
TEST(Int8Executor, ElementwiseChainIsOneTableOfTheSimulation) {
  struct Case {
    const char* name;
    bool int8;
    int kind;         // 0 hardswish x*Clip(x+3,0,6)/6, 1 HardSigmoid form, 2 x*(Clip(..)*(1/6)), 3..5 refused
    bool relu;        // Relu between the chain's end and its Q
    bool lowered;     // expected: the chain is one integer step
  };
  const Case cases[] = {{"hardswish /6 uint8", false, 0, false, true},    {"hardswish /6 int8 + relu", true, 0, true, true},
                        {"HardSigmoid form int8", true, 1, false, true},   {"*(1/6) form uint8 + relu", false, 2, true, true},
                        {"per-channel constant", false, 3, false, false},  {"inner value is an output", true, 4, false, false},
                        {"two roots", false, 5, false, false}};
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    Builder b;
    auto& g = b.m.graph;
    g.inputs.push_back({"x", DType::kFloat32, {-1, 4, 4, 4}, {}, true});
    g.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
    auto q = [&](const std::string& v, float sc, int zp) {
      return k.int8 ? b.qdq<int8_t>(v, sc, static_cast<int8_t>(zp - 128)) : b.qdq<uint8_t>(v, sc, static_cast<uint8_t>(zp));
    };
    const std::string x = q("x", 0.047f, 150);  // codes cover about [-7, 5]: both hardswish knees
    b.init<float>("three", {}, {3.0f}), b.init<float>("zero", {}, {0.0f}), b.init<float>("six", {1}, {6.0f});
    b.init<float>("sixth", {}, {1.0f / 6.0f}), b.init<float>("a", {1, 1, 1, 1}, {0.8f}), b.init<float>("t", {}, {0.1f});
    b.init<float>("pair", {1, 4, 1, 1}, {0.8f, 0.9f, 1.1f, 0.7f});  // per channel
    std::string h;
    if (k.kind == 1) {
      b.node("HardSigmoid", {x}, {"hs"}, {{"alpha", 1.0f / 6.0f}, {"beta", 0.5f}});
      b.node("Mul", {x, "hs"}, {"h"});
    } else {
      b.node("Add", {x, "three"}, {"p"});
      b.node("Clip", {"p", "zero", "six"}, {"r6"});
      if (k.kind == 2) {
        b.node("Mul", {"r6", "sixth"}, {"gs"});
        b.node("Mul", {x, "gs"}, {"h"});
      } else {
        b.node("Mul", {x, "r6"}, {"xr"});
        b.node("Div", {"xr", "six"}, {"h"});
      }
    }
    if (k.kind == 5) {  // a second 8-bit value enters the chain
      b.node("Identity", {x}, {"x2"});
      const std::string x2 = q("x2", 0.05f, 120);
      b.node("Mul", {"h", x2}, {"h2"});
    } else {
      b.node("Mul", {"h", k.kind == 3 ? "pair" : "a"}, {"h2"});
    }
    if (k.kind == 4) g.outputs.push_back({"p", DType::kFloat32, {}, {}, false});
    b.node("Add", {"h2", "t"}, {"z"});
    std::string end = "z";
    if (k.relu) b.node("Relu", {"z"}, {"zr"}), end = "zr";
    const std::string zq = q(end, 0.021f, 40);
    b.node("Identity", {zq}, {"y"});
    // Every code of x: 4 * 4 * 4 * 4 = 256 values spread over the grid, in a shuffled order.
    std::vector<float> v(256);
    for (int i = 0; i < 256; ++i) v[static_cast<size_t>(i)] = 0.047f * static_cast<float>(((i * 97) % 256) - 150);
    const Tensor in = Tensor::from<float>({4, 4, 4, 4}, v);
    const Int8Executor i8(b.m);
    const std::string summary = i8.report().summary();
    bool chain = false;
    for (const auto& n : i8.report().nodes) chain = chain || n.how.find("chain of") != std::string::npos;
    EXPECT_EQ(chain, k.lowered) << summary;
    if (k.lowered) {
      EXPECT_EQ(i8.report().float_nodes(), 0) << summary;
    }
    const std::string qn = end + "_q";
    const TensorMap a = i8.run({{"x", in}}, {qn});
    const TensorMap f = Executor(b.m).run({{"x", in}}, nullptr, {qn});
    const TensorMap sm = Int8Executor(b.m, Int8Mode::kSimulate).run({{"x", in}}, {qn});
    ASSERT_EQ(a.at(qn).shape(), f.at(qn).shape());
    EXPECT_EQ(std::memcmp(a.at(qn).raw(), f.at(qn).raw(), a.at(qn).nbytes()), 0) << "int8 vs the float executor";
    EXPECT_EQ(std::memcmp(a.at(qn).raw(), sm.at(qn).raw(), a.at(qn).nbytes()), 0) << "int8 vs its simulation";
    // Not degenerate: the outputs take many codes.
    const auto codes = a.at(qn).to_i64_vector();
    EXPECT_GT(std::set<int64_t>(codes.begin(), codes.end()).size(), 40u);
  }
}

TEST(Int8Executor, BadInputNamesTheTensor) {
  const Int8Executor i8(foreign_model());
  const std::string e = test::perch_error([&] { i8.run({{"x", Tensor(DType::kFloat32, {1, 3, 5, 6})}}); });
  test::expect_contains(e, {"'x'", "[1,3,5,6]"});
  const std::string e2 = test::perch_error([&] { i8.run({}); });
  test::expect_contains(e2, {"'x'", "not given"});
}

TEST(Int8Executor, ModelWithoutQdqRunsInFloatAndSaysSo) {
  graph::Model m = test::tiny_cnn(1);
  const Int8Executor i8(m);
  EXPECT_GT(i8.report().float_nodes(), 0);
  const Tensor x = Tensor::from<float>({2, 1, 8, 8}, randn(128, 1, 1.0f));
  const Tensor a = i8.run1(x), b = Executor(m).run1(x);
  ASSERT_EQ(a.shape(), b.shape());
  for (int64_t i = 0; i < a.numel(); ++i) EXPECT_EQ(a.data<float>()[i], b.data<float>()[i]);
}

}  // namespace
}  // namespace perch::runtime

namespace perch::runtime {
namespace {

// Hostile files (fuzz_int8_lower's first finding): a Conv with no output made the lowering read
// n.outputs.at(0) and die with std::out_of_range. Building the integer engine must end in a model the
// engine accepts (the node left to the float path, said so) or a perch::Error — never another exception.
void builds_or_refuses(const graph::Model& m, const std::string& what) {
  for (Int8Mode mode : {Int8Mode::kInteger, Int8Mode::kSimulate}) {
    try {
      Int8Executor e(m, mode);
      (void)e.report();
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": " << e.what();
    }
  }
}

TEST(Int8Executor, NodeWithoutOutputsIsNotLoweredAndDoesNotCrash) {
  graph::Model m = foreign_model();
  bool cleared = false;
  for (auto& n : m.graph.nodes)
    if (n.op_type == "Conv") n.outputs.clear(), cleared = true;
  ASSERT_TRUE(cleared);
  builds_or_refuses(m, "Conv without outputs");
  // Finding 7: a node with neither inputs nor outputs looked "all inputs constant" to the lowering, which ran
  // its float kernel at load. Both executors now refuse it, naming it.
  graph::Model mute = foreign_model();
  graph::Node pool;
  pool.op_type = "MaxPool";
  pool.name = "mute_pool";
  pool.attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
  mute.graph.nodes.insert(mute.graph.nodes.begin(), pool);
  for (Int8Mode mode : {Int8Mode::kInteger, Int8Mode::kSimulate}) {
    try {
      Int8Executor e(mute, mode);
      ADD_FAILURE() << "a node without outputs was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("mute_pool"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("no outputs"), std::string::npos) << e.what();
    }
  }
  try {
    Executor e(mute);
    ADD_FAILURE() << "the float executor accepted a node without outputs";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("mute_pool"), std::string::npos) << e.what();
  }
  // The fuzzer's input itself (fuzz/regressions/fuzz_int8_lower/).
  const std::string dir = std::string(PERCH_SOURCE_DIR) + "/fuzz/regressions/fuzz_int8_lower";
  int replayed = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    std::ifstream f(e.path(), std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    try {
      builds_or_refuses(graph::model_from_bytes(bytes, e.path().string()), e.path().string());
    } catch (const Error&) {  // refused by the loader: fine
    }
    ++replayed;
  }
  EXPECT_GE(replayed, 1);
}

}  // namespace
}  // namespace perch::runtime

namespace perch::runtime {
namespace {

// Per-step profiling (runtime/profile.h): one entry per step, labelled with a node of the graph and the report's
// description of it; every step counted once per run (once per slice when a batch is split), the outputs unchanged.
TEST(Int8Executor, ProfilingCountsEveryStepOncePerRunAndChangesNothing) {
  const graph::Model m = foreign_model();
  const Int8Executor plain(m);
  Int8Executor prof(m);
  EXPECT_TRUE(prof.profile().empty());
  prof.enable_profiling();
  const std::vector<StepTime> fresh = prof.profile();
  ASSERT_FALSE(fresh.empty());
  for (const auto& s : fresh) EXPECT_EQ(s.calls, 0) << s.node;
  std::set<std::string> described;
  for (const auto& n : m.graph.nodes) described.insert(n.describe());
  const Tensor small = input(5, 11), big = input(19, 12);  // 19 images: three slices of <= 8
  for (int r = 0; r < 2; ++r) {
    const TensorMap a = prof.run({{"x", small}}), b = plain.run({{"x", small}});
    for (const char* v : {"y1", "y2"})
      EXPECT_EQ(std::memcmp(a.at(v).raw(), b.at(v).raw(), a.at(v).nbytes()), 0) << v;
  }
  const TensorMap a = prof.run({{"x", big}}), b = plain.run({{"x", big}});
  for (const char* v : {"y1", "y2"}) EXPECT_EQ(std::memcmp(a.at(v).raw(), b.at(v).raw(), a.at(v).nbytes()), 0) << v;
  const int64_t slices = plain.report().sub_batch > 0 ? (19 + plain.report().sub_batch - 1) / plain.report().sub_batch : 1;
  EXPECT_EQ(slices, 3) << "the foreign model is per-sample: a batch of 19 runs in slices of 8";
  double total = 0.0;
  bool conv = false, matmul = false, sigmoid = false;
  for (const auto& s : prof.profile()) {
    EXPECT_TRUE(described.count(s.node)) << "'" << s.node << "' is not a node of the graph";
    EXPECT_EQ(s.calls, 2 + slices) << s.node;
    EXPECT_GE(s.total_ms, 0.0);
    total += s.total_ms;
    conv |= s.node.rfind("Conv ", 0) == 0 && s.what.rfind("int8 conv", 0) == 0;
    matmul |= s.node.rfind("MatMul ", 0) == 0 && s.what.rfind("int8 MatMul", 0) == 0;
    sigmoid |= s.node.rfind("Sigmoid ", 0) == 0 && s.what.rfind("float", 0) == 0;
  }
  EXPECT_GT(total, 0.0);
  EXPECT_TRUE(conv && matmul && sigmoid) << "the integer Conv, MatMul and the float Sigmoid each have their step";
  prof.enable_profiling();  // starts over
  for (const auto& s : prof.profile()) EXPECT_EQ(s.calls, 0) << s.node;
}

TEST(Executor, ProfilingTimesEveryNodeOncePerRun) {
  const graph::Model m = foreign_model();
  Executor ex(m);
  EXPECT_TRUE(ex.profile().empty());
  ex.enable_profiling();
  const Tensor x = input(4, 13);
  const TensorMap a = ex.run({{"x", x}}), b = Executor(m).run({{"x", x}});
  (void)ex.run({{"x", x}});
  for (const char* v : {"y1", "y2"}) EXPECT_EQ(std::memcmp(a.at(v).raw(), b.at(v).raw(), a.at(v).nbytes()), 0) << v;
  const auto p = ex.profile();
  ASSERT_EQ(p.size(), m.graph.nodes.size());
  for (size_t i = 0; i < p.size(); ++i) {
    EXPECT_EQ(p[i].node, m.graph.nodes[i].describe());
    EXPECT_EQ(p[i].what, m.graph.nodes[i].op_type);
    EXPECT_EQ(p[i].calls, 2) << p[i].node;
  }
}

}  // namespace
}  // namespace perch::runtime
