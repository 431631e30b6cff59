// ONNX Runtime's "QOperator" models — QLinearConv / QLinearMatMul plus the com.microsoft contrib ops QLinearAdd,
// QLinearMul, QLinearSigmoid, QLinearLeakyRelu, QLinearConcat, QLinearAveragePool, QLinearGlobalAveragePool and
// QGemm — run in perch (graph::expand_contrib_qops / qlinear_to_qdq) and agree with ONNX Runtime, the independent
// reference for what these contrib ops compute.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>

#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "perch/graph/passes.h"
#include "perch/runtime/int8_executor.h"
#include "cli_test_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;
using namespace perch;
using graph::Model;
using graph::Node;

namespace {

using perch::test::cli::ort_dir;
using perch::test::cli::perch_bin;
using perch::test::cli::q;
using perch::test::cli::scratch;

using test::run_cmd;

Tensor scalar(DType t, double v) {
  Tensor s(t, {});
  switch (t) {
    case DType::kFloat32: s.data<float>()[0] = static_cast<float>(v); break;
    case DType::kUInt8: s.data<uint8_t>()[0] = static_cast<uint8_t>(v); break;
    case DType::kInt8: s.data<int8_t>()[0] = static_cast<int8_t>(v); break;
    case DType::kInt32: s.data<int32_t>()[0] = static_cast<int32_t>(v); break;
    default: ADD_FAILURE() << "scalar: unexpected type";
  }
  return s;
}

// A zero point of the 8-bit type t: `u` for uint8, u - 128 for int8 (the same real grid).
double zp_of(DType t, int u) { return t == DType::kUInt8 ? u : u - 128; }

Tensor random_8bit(DType t, Shape shape, std::mt19937& rng) {
  Tensor x(t, shape);
  std::uniform_int_distribution<int> d(0, 255);
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (t == DType::kUInt8) x.data<uint8_t>()[i] = static_cast<uint8_t>(d(rng));
    else x.data<int8_t>()[i] = static_cast<int8_t>(d(rng) - 128);
  }
  return x;
}

// One contrib-op model: graph inputs are 8-bit tensors, scales / zero points / weights are initializers.
struct OpModel {
  Model m;
  std::vector<std::pair<std::string, Tensor>> inputs;
};

struct Builder {
  OpModel om;
  DType t;
  std::mt19937 rng{17};
  explicit Builder(DType type) : t(type) {
    om.m.ir_version = 8;
    om.m.opsets = {{"", 13}, {"com.microsoft", 1}};
    om.m.graph.name = "qop";
    om.m.source = "qop.onnx";
  }
  std::string input(const std::string& name, Shape shape) {
    graph::ValueInfo v;
    v.name = name, v.dtype = t, v.shape = shape, v.dim_names.assign(shape.size(), ""), v.has_shape = true;
    om.m.graph.inputs.push_back(v);
    om.inputs.emplace_back(name, random_8bit(t, shape, rng));
    return name;
  }
  std::string init(const std::string& name, Tensor v) {
    om.m.graph.initializers[name] = std::move(v);
    return name;
  }
  std::string scale(const std::string& name, double s) { return init(name, scalar(DType::kFloat32, s)); }
  std::string zp(const std::string& name, int u) { return init(name, scalar(t, zp_of(t, u))); }
  Node& node(const std::string& op, std::vector<std::string> in, const std::string& out,
             const std::string& domain = "com.microsoft") {
    Node n;
    n.op_type = op, n.domain = domain, n.name = op + "_node", n.inputs = std::move(in), n.outputs = {out};
    om.m.graph.nodes.push_back(n);
    graph::ValueInfo v;
    v.name = out, v.dtype = t;
    om.m.graph.outputs.push_back(v);
    return om.m.graph.nodes.back();
  }
};

struct OpCase {
  std::string name;
  std::function<OpModel(DType)> build;
  // Every node runs as an integer op on the int8 engine (QGemm with alpha != 1 and the channels_last Transposes
  // stay float steps).
  bool lowered = true;
};
void PrintTo(const OpCase& c, std::ostream* os) { *os << c.name; }

// Random int8 weights [dims], per-channel scales along axis 0 spread 1..n x `base`, zero points 0, int32 bias [n].
struct Weights {
  Tensor w, scale, zp, bias;
};
Weights random_weights(Shape dims, double base, int64_t channels, uint32_t seed) {
  std::mt19937 r(seed);
  std::uniform_int_distribution<int> w8(-127, 127), b32(-3000, 3000);
  Weights k{Tensor(DType::kInt8, dims), Tensor(DType::kFloat32, {channels}), Tensor(DType::kInt8, {channels}),
            Tensor(DType::kInt32, {channels})};
  for (int64_t i = 0; i < k.w.numel(); ++i) k.w.data<int8_t>()[i] = static_cast<int8_t>(w8(r));
  for (int64_t i = 0; i < channels; ++i) {
    k.scale.data<float>()[i] = static_cast<float>(base * static_cast<double>(i + 1));
    k.bias.data<int32_t>()[i] = b32(r);
  }
  return k;
}

std::vector<OpCase> op_cases() {
  std::vector<OpCase> c;
  auto binary = [](const std::string& op, Shape sa, Shape sb) {
    return [=](DType t) {
      Builder b(t);
      b.node(op, {b.input("a", sa), b.scale("sa", 0.05), b.zp("za", 120), b.input("b", sb), b.scale("sb", 0.031),
                  b.zp("zb", 97), b.scale("sc", op == "QLinearMul" ? 0.11 : 0.063), b.zp("zc", 131)},
             "y");
      return b.om;
    };
  };
  c.push_back({"QLinearAdd", binary("QLinearAdd", {2, 3, 4, 5}, {2, 3, 4, 5})});
  c.push_back({"QLinearAddBroadcast", binary("QLinearAdd", {2, 3, 4, 5}, {1, 3, 1, 1})});
  c.push_back({"QLinearMul", binary("QLinearMul", {2, 3, 4, 5}, {2, 3, 4, 5})});
  c.push_back({"QLinearSigmoid", [](DType t) {
                 Builder b(t);
                 b.node("QLinearSigmoid", {b.input("x", {2, 3, 4, 5}), b.scale("sx", 0.08), b.zp("zx", 128),
                                           b.scale("sy", 1.0 / 256), b.zp("zy", 0)},
                        "y");
                 return b.om;
               }});
  c.push_back({"QLinearLeakyRelu", [](DType t) {
                 Builder b(t);
                 b.node("QLinearLeakyRelu", {b.input("x", {2, 3, 4, 5}), b.scale("sx", 0.05), b.zp("zx", 100),
                                             b.scale("sy", 0.045), b.zp("zy", 30)},
                        "y")
                     .attrs["alpha"] = 0.1f;
                 return b.om;
               }});
  c.push_back({"QLinearConcat", [](DType t) {
                 Builder b(t);
                 b.node("QLinearConcat", {b.scale("sy", 0.06), b.zp("zy", 110), b.input("x0", {2, 3, 4, 4}),
                                          b.scale("s0", 0.05), b.zp("z0", 120), b.input("x1", {2, 2, 4, 4}),
                                          b.scale("s1", 0.03), b.zp("z1", 60)},
                        "y")
                     .attrs["axis"] = int64_t{1};
                 return b.om;
               }});
  c.push_back({"QLinearAveragePool", [](DType t) {
                 Builder b(t);
                 Node& n = b.node("QLinearAveragePool", {b.input("x", {2, 3, 9, 9}), b.scale("sx", 0.05), b.zp("zx", 120),
                                                         b.scale("sy", 0.021), b.zp("zy", 128)},
                                  "y");
                 n.attrs["kernel_shape"] = std::vector<int64_t>{3, 3};
                 n.attrs["strides"] = std::vector<int64_t>{2, 2};
                 n.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
                 n.attrs["count_include_pad"] = int64_t{0};
                 return b.om;
               }});
  for (int last : {0, 1})
    c.push_back({last ? "QLinearGlobalAveragePoolChannelsLast" : "QLinearGlobalAveragePool", [last](DType t) {
                   Builder b(t);
                   const Shape s = last ? Shape{2, 5, 5, 3} : Shape{2, 3, 5, 5};
                   b.node("QLinearGlobalAveragePool", {b.input("x", s), b.scale("sx", 0.05), b.zp("zx", 120),
                                                       b.scale("sy", 0.013), b.zp("zy", 128)},
                          "y")
                       .attrs["channels_last"] = int64_t{last};
                   return b.om;
                 }, last == 0});
  for (bool float_out : {false, true})
    c.push_back({float_out ? "QGemmFloatOutput" : "QGemm", [float_out](DType t) {
                   Builder b(t);
                   const Weights k = random_weights({5, 6}, 0.004, 5, 5);
                   std::vector<std::string> in = {b.input("a", {4, 6}), b.scale("sa", 0.05), b.zp("za", 120),
                                                  b.init("w", k.w), b.init("sb", k.scale), b.init("zb", k.zp), b.init("c", k.bias)};
                   if (!float_out) in.push_back(b.scale("sy", 0.09)), in.push_back(b.zp("zy", 125));
                   Node& n = b.node("QGemm", in, "y");
                   n.attrs["transB"] = int64_t{1};
                   n.attrs["alpha"] = 0.5f;
                   if (float_out) b.om.m.graph.outputs.back().dtype = DType::kFloat32;
                   return b.om;
                 }, false});
  // ONNX's own integer ops (default domain), which the int8 engine repacks for its kernels (qlinear_to_qdq).
  c.push_back({"QLinearConvPerChannel", [](DType t) {
                 Builder b(t);
                 const Weights k = random_weights({6, 4, 3, 3}, 0.003, 6, 9);
                 Node& n = b.node("QLinearConv", {b.input("x", {2, 4, 7, 7}), b.scale("sx", 0.05), b.zp("zx", 120),
                                                  b.init("w", k.w), b.init("sw", k.scale), b.init("zw", k.zp),
                                                  b.scale("sy", 0.15), b.zp("zy", 128), b.init("B", k.bias)},
                                  "y", "");
                 n.attrs["pads"] = std::vector<int64_t>{1, 1, 1, 1};
                 n.attrs["strides"] = std::vector<int64_t>{2, 2};
                 return b.om;
               }});
  c.push_back({"QLinearMatMulPerColumn", [](DType t) {
                 Builder b(t);
                 const Weights k = random_weights({6, 5}, 0.004, 5, 11);
                 b.node("QLinearMatMul", {b.input("a", {3, 4, 6}), b.scale("sa", 0.05), b.zp("za", 120), b.init("w", k.w),
                                          b.init("sw", k.scale), b.init("zw", k.zp), b.scale("sy", 0.05), b.zp("zy", 128)},
                        "y", "");
                 return b.om;
               }});
  return c;
}

struct Diff {
  int64_t n = 0, exact = 0;
  double max_abs = 0, max_ref = 0;
};
Diff diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.dtype(), b.dtype());
  EXPECT_EQ(a.shape(), b.shape());
  Diff d;
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return d;
  const Tensor fa = a.to_f32(), fb = b.to_f32();
  d.n = a.numel();
  for (int64_t i = 0; i < d.n; ++i) {
    const double x = fa.data<float>()[i], y = fb.data<float>()[i];
    d.exact += x == y;
    d.max_abs = std::max(d.max_abs, std::fabs(x - y));
    d.max_ref = std::max(d.max_ref, std::fabs(y));
  }
  return d;
}

class QOperatorOps : public ::testing::TestWithParam<std::tuple<OpCase, DType>> {};

// Each contrib op on random 8-bit inputs: perch's float executor (the op's QDQ definition) and its int8 engine
// against ONNX Runtime's kernels. Both compute round(f(dequantized inputs) / s_y) + z_y; they may round a value
// lying within float error of a .5 boundary differently, so one step is allowed on at most 1 % of the elements.
TEST_P(QOperatorOps, MatchOnnxRuntime) {
  PERCH_REQUIRE_ORT();
  const auto& [oc, t] = GetParam();
  const std::string tag = oc.name + (t == DType::kUInt8 ? "_u8" : "_s8");
  const fs::path d = scratch("qop_" + tag);
  OpModel om = oc.build(t);
  graph::save_model(om.m, d / "m.onnx");
  std::string args;
  for (const auto& [name, x] : om.inputs) {
    write_npy(d / (name + ".npy"), x);
    args += " --input " + name + "=" + q(d / (name + ".npy"));
  }
  auto r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "m.onnx") + args + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << "ONNX Runtime could not run the " << tag << " model: " << r.err;
  Tensor ref = read_npy(d / "ort" / "y.npy");
  // uint8 activations x int8 weights (the ops with a product): where ONNX Runtime's integer kernels saturate such
  // products (test::ort_u8s8_exact), its output is no reference; the engines are then checked against perch's fp32
  // engine — the op's QDQ definition computed in float, not by the integer kernels.
  const bool products = oc.name.rfind("QGemm", 0) == 0 || oc.name.rfind("QLinearConv", 0) == 0 ||
                        oc.name.rfind("QLinearMatMul", 0) == 0;
  const bool ort_ref = test::ort_u8s8_exact() || !products || t != DType::kUInt8;
  if (!ort_ref) std::printf("  %s: reference = perch fp32 engine (%s)\n", tag.c_str(), test::ort_saturates_message().c_str());
  for (const std::string engine : {"fp32", "int8", "sim"}) {
    r = run_cmd(perch_bin() + " run " + q(d / "m.onnx") + args + " -o " + q(d / engine) + " -q --engine " + engine);
    ASSERT_EQ(r.code, 0) << engine << ": " << r.err;
    const Tensor y = read_npy(d / engine / "y.npy");
    if (!ort_ref && engine == "fp32") {
      ref = y;
      continue;
    }
    const Diff df = diff(y, ref);
    ASSERT_GT(df.n, 0);
    if (ref.dtype() == DType::kFloat32) {
      EXPECT_LE(df.max_abs, 1e-5 * df.max_ref) << tag << " " << engine;
    } else {
      EXPECT_LE(df.max_abs, 1.0) << tag << " " << engine << ": more than one quantization step from ONNX Runtime";
      EXPECT_GE(df.exact, df.n - df.n / 100) << tag << " " << engine << ": " << df.n - df.exact << " of " << df.n
                                              << " elements differ from ONNX Runtime";
    }
  }
  if (oc.lowered) {
    const runtime::Int8Executor ex(graph::load_model(d / "m.onnx"));
    EXPECT_EQ(ex.report().float_nodes(), 0) << tag << ": " << ex.report().summary();
  }
  // The integer engine and its exact simulation: bit for bit (docs/INTEGER.md section 4).
  EXPECT_TRUE(read_npy(d / "int8" / "y.npy").nbytes() == read_npy(d / "sim" / "y.npy").nbytes() &&
              std::memcmp(read_npy(d / "int8" / "y.npy").raw(), read_npy(d / "sim" / "y.npy").raw(),
                          read_npy(d / "sim" / "y.npy").nbytes()) == 0)
      << tag;
}

INSTANTIATE_TEST_SUITE_P(Contrib, QOperatorOps,
                         ::testing::Combine(::testing::ValuesIn(op_cases()), ::testing::Values(DType::kUInt8, DType::kInt8)),
                         [](const auto& info) {
                           return std::get<0>(info.param).name + (std::get<1>(info.param) == DType::kUInt8 ? "_uint8" : "_int8");
                         });

// Malformed contrib nodes are refused naming the node, not run wrong.
TEST(QOperatorRefusals, MalformedNodesAreRefusedNamingThem) {
  {
    Builder b(DType::kUInt8);
    b.node("QLinearAdd", {b.input("a", {2, 3}), b.scale("sa", 0.1)}, "y");
    const std::string e = test::perch_error([&] { graph::expand_contrib_qops(b.om.m); });
    test::expect_contains(e, {"qop.onnx", "QLinearAdd node 'QLinearAdd_node'", "expects 7 to 8 inputs, has 2"});
  }
  {
    Builder b(DType::kUInt8);
    b.node("QLinearConcat", {b.scale("sy", 0.1), b.zp("zy", 3), b.input("x0", {2, 3}), b.scale("s0", 0.1)}, "y");
    const std::string e = test::perch_error([&] { graph::expand_contrib_qops(b.om.m); });
    test::expect_contains(e, {"QLinearConcat node 'QLinearConcat_node'", "triples"});
  }
  {
    // channels_last on a value whose rank the graph does not record.
    Builder b(DType::kUInt8);
    b.om.m.graph.inputs.clear();
    graph::ValueInfo v;
    v.name = "x", v.dtype = DType::kUInt8;
    b.om.m.graph.inputs.push_back(v);
    b.node("QLinearGlobalAveragePool", {"x", b.scale("sx", 0.1), b.zp("zx", 3), b.scale("sy", 0.1), b.zp("zy", 3)}, "y")
        .attrs["channels_last"] = int64_t{1};
    const std::string e = test::perch_error([&] { graph::expand_contrib_qops(b.om.m); });
    test::expect_contains(e, {"QLinearGlobalAveragePool node 'QLinearGlobalAveragePool_node'", "channels_last", "'x'"});
  }
}

// A model ONNX Runtime itself wrote: perch quantizes tiny_cnn (Conv+Relu, MaxPool, depthwise Conv+Clip, residual
// Add, GlobalAveragePool, Gemm) to QDQ, ONNX Runtime saves its optimized graph (QLinearConv, QLinearAdd,
// QLinearGlobalAveragePool, QGemm), and perch runs that file — every node lowered to integer ops on the int8 engine.
TEST(QOperatorModels, OrtOptimizedTinyModelRunsOnBothEngines) {
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch("qop_tiny");
  const Model m = test::tiny_cnn(7);
  graph::save_model(m, d / "tiny.onnx");
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 2.0f);
  Tensor x(DType::kFloat32, {64, 1, 8, 8});
  for (auto& v : x.span<float>()) v = u(rng);
  write_npy(d / "x.npy", x);
  auto r = run_cmd(perch_bin() + " quantize " + q(d / "tiny.onnx") + " -o " + q(d / "q.onnx") + " --calib " +
                   q("npy:" + (d / "x.npy").string()) + " --calib-count 64 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "optimize.js") + " " + q(d / "q.onnx") + " -o " + q(d / "qop.onnx"));
  ASSERT_EQ(r.code, 0) << r.err;
  const Model qop = graph::load_model(d / "qop.onnx");
  std::map<std::string, int> ops;
  for (const auto& n : qop.graph.nodes) ++ops[(n.domain.empty() ? "" : n.domain + "::") + n.op_type];
  for (const char* op : {"QLinearConv", "com.microsoft::QLinearAdd", "com.microsoft::QLinearGlobalAveragePool",
                         "com.microsoft::QGemm"})
    EXPECT_GT(ops[op], 0) << "ONNX Runtime's optimized model has no " << op << " (the test would not test it)";
  EXPECT_EQ(ops["DequantizeLinear"], 0);

  runtime::Int8Executor ex(graph::load_model(d / "qop.onnx"));
  EXPECT_EQ(ex.report().float_nodes(), 0) << ex.report().summary();
  if (!test::ort_u8s8_exact()) GTEST_SKIP() << "ONNX Runtime's side of the comparison: " << test::ort_saturates_message();
  r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "qop.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << r.err;
  const Tensor ref = read_npy(d / "ort" / "y.npy");
  for (const std::string engine : {"fp32", "int8"}) {
    r = run_cmd(perch_bin() + " run " + q(d / "qop.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / engine) +
                " -q --engine " + engine);
    ASSERT_EQ(r.code, 0) << r.err;
    const Tensor y = read_npy(d / engine / "y.npy");
    const Diff df = diff(y, ref);
    // Logits: the int8 engine requantizes with its fixed-point stage, ONNX Runtime in float (one step apart on
    // a few values); the fp32 engine runs ONNX's own QLinearConv definition.
    EXPECT_LE(df.max_abs, (engine == "fp32" ? 1e-5 : 0.02) * df.max_ref) << engine;
    int64_t agree = 0;
    for (int64_t i = 0; i < y.dim(0); ++i) {
      const float* a = y.data<float>() + i * 3;
      const float* b = ref.data<float>() + i * 3;
      agree += (std::max_element(a, a + 3) - a) == (std::max_element(b, b + 3) - b);
    }
    EXPECT_GE(agree, y.dim(0) - 1) << engine;
  }
}

// The shared models as ONNX Runtime executes them: perch's W8A8 per-channel QDQ, optimized by ONNX Runtime into
// QLinearConv / QLinearAdd / QLinearGlobalAveragePool / QGemm (and MaxPool on uint8). perch's int8 engine on
// that file must give ONNX Runtime's accuracy on the 10 000 test images within 0.001, every node lowered.
class QOperatorShared : public ::testing::TestWithParam<const char*> {};

TEST_P(QOperatorShared, Int8EngineMatchesOnnxRuntimeOnItsOwnOptimizedModel) {
  PERCH_REQUIRE_SHARED_MODEL(model, std::string(GetParam()) + ".onnx");
  PERCH_REQUIRE_ORT();
  const fs::path d = scratch(std::string("qop_shared_") + GetParam());
  auto r = run_cmd(perch_bin() + " quantize " + q(model) + " -o " + q(d / "q.onnx") +
                   " --calib fashion-mnist:train --calib-count 256 -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "optimize.js") + " " + q(d / "q.onnx") + " -o " + q(d / "qop.onnx"));
  ASSERT_EQ(r.code, 0) << r.err;
  const std::string mnist = "/usr/share/datasets/fashion-mnist/";
  // Where ONNX Runtime's integer kernels saturate u8 x s8 products (test::ort_u8s8_exact) they are no reference:
  // the accuracy to match is then ONNX Runtime's on the QDQ file it optimized, run with graph optimizations off
  // (eval.js --level exact: the file's float semantics).
  const bool ort_ref = test::ort_u8s8_exact();
  r = run_cmd("node " + q(ort_dir() / "eval.js") + " " + q(d / (ort_ref ? "qop.onnx" : "q.onnx")) + " --images " +
              mnist + "t10k-images-idx3-ubyte.gz --labels " + mnist + "t10k-labels-idx1-ubyte.gz --json" +
              (ort_ref ? "" : " --level exact"));
  ASSERT_EQ(r.code, 0) << r.err;
  const double ort = json::parse(r.out)["accuracy"];
  if (!ort_ref) std::printf("  reference: ONNX Runtime on the QDQ file, optimizations off (%s)\n", test::ort_saturates_message().c_str());
  r = run_cmd(perch_bin() + " eval " + q(d / "qop.onnx") + " --engine int8 --data fashion-mnist:test --json");
  ASSERT_EQ(r.code, 0) << r.err;
  const json j = json::parse(r.out);
  EXPECT_EQ(j["float_nodes"], 0);
  EXPECT_NEAR(j["accuracy"].get<double>(), ort, 0.001) << "perch int8 vs ONNX Runtime on " << GetParam();
  std::printf("  %s QOperator file: ONNX Runtime %.4f, perch int8 %.4f\n", GetParam(), ort, j["accuracy"].get<double>());
}

INSTANTIATE_TEST_SUITE_P(Models, QOperatorShared, ::testing::Values("fmnist_convnet", "fmnist_mbv2"));

}  // namespace
