// Opset-dependent forms of the coverage ops that ONNX's node tests (libonnx-testdata 1.12: opsets 11-17)
// do not exercise: attribute forms before the move to inputs (Slice-1, Pad-2, Reduce*-1, Split-2,
// Upsample-7), Resize-10's legacy nearest rounding, and that both forms give the same result.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "perch/runtime/executor.h"
#include "test_util.h"

namespace perch::runtime {
namespace {

using graph::Model;
using graph::Node;
using graph::ValueInfo;

Node node(const std::string& op, std::vector<std::string> in, std::vector<std::string> out) {
  Node n;
  n.op_type = op;
  n.name = op + "_under_test";
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  return n;
}

// Runs a one-node model at `opset` on x (float32) plus integer/float initializers; returns output 0.
Tensor run_one(Node n, int64_t opset, const Tensor& x, const std::map<std::string, Tensor>& inits = {},
               size_t outputs = 1, size_t which = 0) {
  Model m;
  m.source = "opset_test.onnx";
  ValueInfo in;
  in.name = "x";
  in.dtype = x.dtype();
  m.graph.inputs = {in};
  for (size_t i = 0; i < outputs; ++i) {
    ValueInfo o;
    o.name = n.outputs.at(i);
    m.graph.outputs.push_back(o);
  }
  m.graph.initializers = inits;
  m.graph.nodes = {std::move(n)};
  m.set_opset(opset);
  Executor e(m);
  return e.run({{"x", x}}).at(m.graph.outputs.at(which).name);
}

Tensor iota(Shape s) {
  Tensor t(DType::kFloat32, s);
  for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = static_cast<float>(i);
  return t;
}

Tensor ints(std::vector<int64_t> v) { return Tensor::from<int64_t>({static_cast<int64_t>(v.size())}, v); }

std::vector<float> values(const Tensor& t) {
  auto s = t.span<float>();
  return {s.begin(), s.end()};
}

TEST(OpsetForms, SliceAttributesBefore10MatchInputsFrom10) {
  const Tensor x = iota({3, 4});
  Node a = node("Slice", {"x"}, {"y"});
  a.attrs["starts"] = std::vector<int64_t>{1, -3};
  a.attrs["ends"] = std::vector<int64_t>{1000, -1};
  a.attrs["axes"] = std::vector<int64_t>{0, 1};
  const Tensor y1 = run_one(a, 9, x);
  EXPECT_EQ(y1.shape(), (Shape{2, 2}));
  EXPECT_EQ(values(y1), (std::vector<float>{5, 6, 9, 10}));
  const Tensor y10 = run_one(node("Slice", {"x", "s", "e", "a"}, {"y"}), 10, x,
                             {{"s", ints({1, -3})}, {"e", ints({1000, -1})}, {"a", ints({0, 1})}});
  EXPECT_EQ(values(y10), values(y1));
  // Negative steps (10+): reverse a row.
  const Tensor r = run_one(node("Slice", {"x", "s", "e", "a", "st"}, {"y"}), 13, x,
                           {{"s", ints({-1})}, {"e", ints({-1000})}, {"a", ints({1})}, {"st", ints({-1})}});
  EXPECT_EQ(values(r), (std::vector<float>{3, 2, 1, 0, 7, 6, 5, 4, 11, 10, 9, 8}));
}

TEST(OpsetForms, PadAttributesBefore11MatchInputsFrom11) {
  const Tensor x = iota({1, 3});
  Node a = node("Pad", {"x"}, {"y"});
  a.attrs["pads"] = std::vector<int64_t>{0, 2, 0, 1};
  a.attrs["mode"] = std::string("reflect");
  const Tensor y2 = run_one(a, 2, x);
  EXPECT_EQ(values(y2), (std::vector<float>{2, 1, 0, 1, 2, 1}));
  Node b = node("Pad", {"x", "p"}, {"y"});
  b.attrs["mode"] = std::string("reflect");
  EXPECT_EQ(values(run_one(b, 11, x, {{"p", ints({0, 2, 0, 1})}})), values(y2));
  Node c = node("Pad", {"x"}, {"y"});
  c.attrs["pads"] = std::vector<int64_t>{0, 1, 0, 1};
  c.attrs["value"] = 7.0f;
  EXPECT_EQ(values(run_one(c, 2, x)), (std::vector<float>{7, 0, 1, 2, 7}));
}

TEST(OpsetForms, ReduceAxesAttributeAndInput) {
  const Tensor x = iota({2, 3});
  Node a = node("ReduceMean", {"x"}, {"y"});
  a.attrs["axes"] = std::vector<int64_t>{-1};
  a.attrs["keepdims"] = int64_t{0};
  EXPECT_EQ(values(run_one(a, 9, x)), (std::vector<float>{1, 4}));
  // ReduceSum takes axes as an input from 13; noop_with_empty_axes keeps the input.
  Node s = node("ReduceSum", {"x", "ax"}, {"y"});
  EXPECT_EQ(values(run_one(s, 13, x, {{"ax", ints({0})}})), (std::vector<float>{3, 5, 7}));
  Node noop = node("ReduceSum", {"x"}, {"y"});
  noop.attrs["noop_with_empty_axes"] = int64_t{1};
  EXPECT_EQ(values(run_one(noop, 13, x)), values(x));
  // ReduceMean keeps the attribute until 18.
  EXPECT_EQ(values(run_one(a, 17, x)), (std::vector<float>{1, 4}));
  Node m18 = node("ReduceMean", {"x", "ax"}, {"y"});
  m18.attrs["keepdims"] = int64_t{0};
  EXPECT_EQ(values(run_one(m18, 18, x, {{"ax", ints({1})}})), (std::vector<float>{1, 4}));
}

TEST(OpsetForms, SplitAttributeInputAndNumOutputs) {
  const Tensor x = iota({5});
  Node a = node("Split", {"x"}, {"a", "b"});
  a.attrs["split"] = std::vector<int64_t>{2, 3};
  EXPECT_EQ(values(run_one(a, 2, x, {}, 2, 1)), (std::vector<float>{2, 3, 4}));
  EXPECT_EQ(values(run_one(node("Split", {"x", "s"}, {"a", "b"}), 13, x, {{"s", ints({2, 3})}}, 2, 1)),
            (std::vector<float>{2, 3, 4}));
  Node c = node("Split", {"x"}, {"a", "b"});
  c.attrs["num_outputs"] = int64_t{2};  // ceil(5 / 2) = 3, then the rest
  EXPECT_EQ(values(run_one(c, 18, x, {}, 2, 0)), (std::vector<float>{0, 1, 2}));
}

TEST(OpsetForms, UpsampleAndResize10UseAsymmetricNearest) {
  const Tensor x = iota({1, 1, 2, 2});
  Node u = node("Upsample", {"x"}, {"y"});
  u.attrs["scales"] = std::vector<float>{1, 1, 2, 2};
  const Tensor y7 = run_one(u, 7, x);
  EXPECT_EQ(y7.shape(), (Shape{1, 1, 4, 4}));
  EXPECT_EQ(values(y7), (std::vector<float>{0, 0, 1, 1, 0, 0, 1, 1, 2, 2, 3, 3, 2, 2, 3, 3}));
  const Tensor sc = Tensor::from<float>({4}, std::vector<float>{1, 1, 2, 2});
  EXPECT_EQ(values(run_one(node("Upsample", {"x", "s"}, {"y"}), 9, x, {{"s", sc}})), values(y7));
  EXPECT_EQ(values(run_one(node("Resize", {"x", "s"}, {"y"}), 10, x, {{"s", sc}})), values(y7));
  // Opset 11's default (half_pixel, round_prefer_floor) gives the same picture for an exact 2x.
  EXPECT_EQ(values(run_one(node("Resize", {"x", "", "s"}, {"y"}), 13, x, {{"s", sc}})), values(y7));
  // Linear Upsample is asymmetric: the last column repeats the edge.
  Node l = node("Upsample", {"x"}, {"y"});
  l.attrs["scales"] = std::vector<float>{1, 1, 1, 2};
  l.attrs["mode"] = std::string("linear");
  EXPECT_EQ(values(run_one(l, 7, x)), (std::vector<float>{0, 0.5f, 1, 1, 2, 2.5f, 3, 3}));
}

// Equal/Less/Greater/And/Or/Xor before 7 broadcast as Add-1 does (`broadcast` 1, B's dims aligned with A's at
// `axis`): the same result as the opset-7 op given B reshaped to [C, 1] (NumPy broadcasting).
TEST(OpsetForms, ComparisonAndLogicBroadcastAttributesBefore7) {
  const Tensor x = iota({2, 3, 2});
  const Tensor b = Tensor::from<float>({3}, {1.0f, 7.0f, 10.0f});
  for (const char* op : {"Less", "Greater", "Equal"}) {
    SCOPED_TRACE(op);
    Node legacy = node(op, {"x", "b"}, {"y"});
    legacy.attrs["broadcast"] = int64_t{1};
    legacy.attrs["axis"] = int64_t{1};
    const Tensor xi = Tensor::from<int32_t>({2, 3, 2}, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11});
    const Tensor bi = Tensor::from<int32_t>({3}, {1, 7, 10});
    const bool equal = std::string(op) == "Equal";  // Equal-1 takes integers and bool only
    const Tensor got = run_one(legacy, 6, equal ? xi : x, {{"b", equal ? bi : b}});
    const Tensor want = run_one(node(op, {"x", "b"}, {"y"}), 13, equal ? xi : x,
                                {{"b", (equal ? bi : b).reshaped({3, 1})}});
    ASSERT_EQ(got.dtype(), DType::kBool);
    ASSERT_EQ(got.shape(), want.shape());
    EXPECT_EQ(0, std::memcmp(got.raw(), want.raw(), got.nbytes()));
    if (std::string(op) == "Less") {  // x[1, 2, 0] = 10 < b[2] = 10: false; x[0, 1, 1] = 3 < 7: true
      EXPECT_FALSE(got.data<bool>()[10]);
      EXPECT_TRUE(got.data<bool>()[3]);
    }
  }
  Tensor xb(DType::kBool, {2, 3}), bb(DType::kBool, {3});
  for (int64_t i = 0; i < 6; ++i) xb.data<bool>()[i] = i % 2 == 0;
  bb.data<bool>()[1] = true;
  for (const char* op : {"And", "Or", "Xor"}) {
    SCOPED_TRACE(op);
    Node legacy = node(op, {"x", "b"}, {"y"});
    legacy.attrs["broadcast"] = int64_t{1};  // no axis: B is x's trailing dims
    const Tensor got = run_one(legacy, 1, xb, {{"b", bb}});
    const Tensor want = run_one(node(op, {"x", "b"}, {"y"}), 13, xb, {{"b", bb}});
    EXPECT_EQ(0, std::memcmp(got.raw(), want.raw(), got.nbytes()));
  }
}

TEST(OpsetForms, KernelErrorsNameTheNode) {
  Node a = node("Slice", {"x", "s", "e", "a", "st"}, {"y"});
  try {
    run_one(a, 13, iota({3}), {{"s", ints({0})}, {"e", ints({3})}, {"a", ints({0})}, {"st", ints({0})}});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("Slice_under_test"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("step of axis 0 is 0"), std::string::npos) << e.what();
  }
}

// RNN/GRU/LSTM (ONNX Runtime checks the attribute combinations, zero lengths included: tests/cli/recurrent_test.cpp).
// Here by hand: a zero-length sequence outputs zeros, Y_h and Y_c included (ONNX Runtime's reading: no step ran),
// whatever the initial state; the float64 path (plain double loops) agrees with the float32 one (GEMM kernel); bad
// inputs are named.
Tensor uniform_tensor(Shape s, uint32_t seed, DType dt = DType::kFloat32) {
  return test::uniform_tensor(std::move(s), seed, -0.8f, 0.8f).to(dt);
}

Node lstm_node(const std::string& direction) {
  Node n = node("LSTM", {"x", "w", "r", "b", "lens", "h0", "c0", "p"}, {"y", "yh", "yc"});
  n.attrs["direction"] = direction;
  n.attrs["hidden_size"] = int64_t{3};
  return n;
}

std::map<std::string, Tensor> lstm_inits(int64_t dirs, std::vector<int32_t> lens, DType dt) {
  const int64_t B = static_cast<int64_t>(lens.size());
  return {{"w", uniform_tensor({dirs, 12, 2}, 1, dt)}, {"r", uniform_tensor({dirs, 12, 3}, 2, dt)},
          {"b", uniform_tensor({dirs, 24}, 3, dt)},    {"lens", Tensor::from<int32_t>({B}, lens)},
          {"h0", uniform_tensor({dirs, B, 3}, 4, dt)}, {"c0", uniform_tensor({dirs, B, 3}, 5, dt)},
          {"p", uniform_tensor({dirs, 9}, 6, dt)}};
}

TEST(RecurrentOps, ZeroLengthSequencesOutputZeros) {
  const Tensor x = uniform_tensor({4, 2, 2}, 7);  // S 4, batch 2, input 2
  for (const char* direction : {"forward", "reverse"}) {
    SCOPED_TRACE(direction);
    const auto inits = lstm_inits(1, {0, 3}, DType::kFloat32);
    const Tensor y = run_one(lstm_node(direction), 14, x, inits, 3, 0);
    const Tensor yh = run_one(lstm_node(direction), 14, x, inits, 3, 1);
    const Tensor yc = run_one(lstm_node(direction), 14, x, inits, 3, 2);
    ASSERT_EQ(y.shape(), (Shape{4, 1, 2, 3}));
    for (int64_t t = 0; t < 4; ++t)
      for (int64_t j = 0; j < 3; ++j) {
        EXPECT_EQ(y.data<float>()[(t * 2 + 0) * 3 + j], 0.0f);  // batch 0: no step
        if (t == 3) {
          EXPECT_EQ(y.data<float>()[(t * 2 + 1) * 3 + j], 0.0f);  // batch 1: past its 3 steps
        }
      }
    for (int64_t j = 0; j < 3; ++j) {
      EXPECT_NE(inits.at("h0").data<float>()[j], 0.0f);
      EXPECT_EQ(yh.data<float>()[j], 0.0f);
      EXPECT_EQ(yc.data<float>()[j], 0.0f);
      // batch 1's final state is its last step's output: step 2 forward, step 0 in reverse
      const int64_t last = std::string(direction) == "forward" ? 2 : 0;
      EXPECT_EQ(yh.data<float>()[3 + j], y.data<float>()[(last * 2 + 1) * 3 + j]);
      EXPECT_NE(yh.data<float>()[3 + j], 0.0f);
    }
  }
}

TEST(RecurrentOps, Float64AgreesWithFloat32) {
  for (const char* direction : {"forward", "bidirectional"}) {
    SCOPED_TRACE(direction);
    const int64_t dirs = std::string(direction) == "bidirectional" ? 2 : 1;
    const Tensor x = uniform_tensor({5, 2, 2}, 8);
    for (size_t out = 0; out < 3; ++out) {
      const Tensor f = run_one(lstm_node(direction), 14, x, lstm_inits(dirs, {5, 4}, DType::kFloat32), 3, out);
      const Tensor d = run_one(lstm_node(direction), 14, x.to(DType::kFloat64), lstm_inits(dirs, {5, 4}, DType::kFloat64), 3, out);
      ASSERT_EQ(d.dtype(), DType::kFloat64);
      ASSERT_EQ(f.shape(), d.shape());
      double worst = 0;
      for (int64_t i = 0; i < f.numel(); ++i) worst = std::max(worst, std::abs(f.data<float>()[i] - d.data<double>()[i]));
      EXPECT_LT(worst, 1e-5) << "output " << out;
      EXPECT_GT(std::abs(d.data<double>()[0]), 1e-3);
    }
  }
}

TEST(RecurrentOps, BadInputsAreNamed) {
  const Tensor x = uniform_tensor({4, 2, 2}, 7);
  auto expect_error = [&](const Node& n, std::map<std::string, Tensor> inits, const std::string& what) {
    try {
      run_one(n, 14, x, inits, 3, 0);
      ADD_FAILURE() << "expected an error containing " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("LSTM_under_test"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  auto inits = lstm_inits(1, {4, 4}, DType::kFloat32);
  inits["w"] = uniform_tensor({1, 12, 3}, 1);  // input size 3, X has 2
  expect_error(lstm_node("forward"), inits, "W must be [1, 4·hidden_size, 2]");
  Node gelu = lstm_node("forward");
  gelu.attrs["activations"] = std::vector<std::string>{"Sigmoid", "Gelu", "Tanh"};
  expect_error(gelu, lstm_inits(1, {4, 4}, DType::kFloat32), "unknown activation 'Gelu'");
  inits = lstm_inits(1, {4, 5}, DType::kFloat32);
  expect_error(lstm_node("forward"), inits, "sequence_lens value 5 outside [0, 4]");
  expect_error(lstm_node("sideways"), lstm_inits(1, {4, 4}, DType::kFloat32), "direction 'sideways'");
}

// LRN's window is [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉]: an even size reaches one channel further above than below
// (ONNX Runtime refuses even sizes, so this is checked by hand). C = 3, size 2, alpha 2, beta 1, bias 1:
// y_c = x_c / (1 + (2/2)·(x_c² + x_{c+1}²)), the last channel alone.
TEST(LrnOp, EvenWindowsReachOneChannelMoreAbove) {
  Node n = node("LRN", {"x"}, {"y"});
  n.attrs["size"] = int64_t{2};
  n.attrs["alpha"] = 2.0f;
  n.attrs["beta"] = 1.0f;
  n.attrs["bias"] = 1.0f;
  const Tensor x = Tensor::from<float>({1, 3, 1, 1}, {1.0f, 2.0f, 3.0f});
  const Tensor y = run_one(n, 13, x);
  EXPECT_FLOAT_EQ(y.data<float>()[0], 1.0f / (1 + 1 + 4));
  EXPECT_FLOAT_EQ(y.data<float>()[1], 2.0f / (1 + 4 + 9));
  EXPECT_FLOAT_EQ(y.data<float>()[2], 3.0f / (1 + 9));
}

// Einsum's "..." of different ranks broadcast aligned on the right, as NumPy's (ONNX Runtime refuses such models, so
// by hand): out[a, b, i, k] = Σ_j A[a, b, i, j] · B[b, j, k]; in float64 (the double path) and float32 (the GEMM).
TEST(EinsumOp, EllipsesOfDifferentRanksAlignOnTheRight) {
  for (DType dt : {DType::kFloat64, DType::kFloat32}) {
    const Tensor a = uniform_tensor({2, 2, 3, 4}, 31, dt), b = uniform_tensor({2, 4, 5}, 32, dt);
    Node n = node("Einsum", {"x", "b"}, {"y"});
    n.attrs["equation"] = std::string("...ij,...jk->...ik");
    const Tensor y = run_one(n, 13, a, {{"b", b}}).to(DType::kFloat64);
    ASSERT_EQ(y.shape(), (Shape{2, 2, 3, 5}));
    const Tensor ad = a.to(DType::kFloat64), bd = b.to(DType::kFloat64);
    for (int64_t p = 0; p < 2; ++p)
      for (int64_t q = 0; q < 2; ++q)
        for (int64_t i = 0; i < 3; ++i)
          for (int64_t k = 0; k < 5; ++k) {
            double want = 0;
            for (int64_t j = 0; j < 4; ++j)
              want += ad.data<double>()[((p * 2 + q) * 3 + i) * 4 + j] * bd.data<double>()[(q * 4 + j) * 5 + k];
            EXPECT_NEAR(y.data<double>()[((p * 2 + q) * 3 + i) * 5 + k], want, 1e-6);
          }
  }
}

TEST(EinsumOp, BadEquationsAreNamed) {
  const Tensor x = uniform_tensor({2, 3}, 33);
  const std::map<std::string, Tensor> inits = {{"b", uniform_tensor({4, 5}, 34)}};
  for (const auto& [eq, want] : {std::pair<std::string, std::string>{"ij->ij", "1 operand terms for 2 inputs"},
                                 {"ij,jk->ik", "label 'j' has sizes 3 and 4"},
                                 {"ijk,jk->i", "names 3 dims of input 0, which has rank 2"},
                                 {"ij,kl->im", "output label 'm' is in no input"},
                                 {"i1,kl->i", "'1' is not a letter"}}) {
    SCOPED_TRACE(eq);
    Node n = node("Einsum", {"x", "b"}, {"y"});
    n.attrs["equation"] = eq;
    try {
      run_one(n, 13, x, inits);
      ADD_FAILURE() << "expected an error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("Einsum_under_test"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  }
}

// STFT of a complex signal, frame by frame, is the DFT (checked against ONNX Runtime in OpsVsOrt.SignalAndSmallOps)
// of the windowed frame.
TEST(SignalOps, ComplexStftIsTheDftOfEachWindowedFrame) {
  const Tensor sig = uniform_tensor({1, 40, 2}, 61), win = uniform_tensor({16}, 62);
  Node stft = node("STFT", {"x", "step", "win"}, {"y"});
  stft.attrs["onesided"] = int64_t{0};
  const Tensor y = run_one(stft, 17, sig, {{"step", Tensor::from<int64_t>({}, {6})}, {"win", win}});
  ASSERT_EQ(y.shape(), (Shape{1, 5, 16, 2}));
  for (int64_t f = 0; f < 5; ++f) {
    Tensor frame(DType::kFloat32, {1, 16, 2});
    for (int64_t t = 0; t < 16; ++t)
      for (int64_t c = 0; c < 2; ++c)
        frame.data<float>()[t * 2 + c] = sig.data<float>()[(f * 6 + t) * 2 + c] * win.data<float>()[t];
    const Tensor d = run_one(node("DFT", {"x"}, {"y"}), 17, frame);
    for (int64_t k = 0; k < 32; ++k) EXPECT_NEAR(y.data<float>()[f * 32 + k], d.data<float>()[k], 1e-5) << f << " " << k;
  }
}

// A shift by the type's width or more gives 0 (a C++ shift by 32 or more would be undefined).
TEST(SignalOps, BitShiftPastTheWidthIsZero) {
  const Tensor x = Tensor::from<uint16_t>({4}, {1, 65535, 300, 7});
  const Tensor s = Tensor::from<uint16_t>({4}, {15, 16, 40, 2});
  for (const char* dir : {"LEFT", "RIGHT"}) {
    Node n = node("BitShift", {"x", "s"}, {"y"});
    n.attrs["direction"] = std::string(dir);
    const Tensor y = run_one(n, 11, x, {{"s", s}});
    const bool left = std::string(dir) == "LEFT";
    EXPECT_EQ(y.data<uint16_t>()[0], left ? 32768 : 0);
    EXPECT_EQ(y.data<uint16_t>()[1], 0);
    EXPECT_EQ(y.data<uint16_t>()[2], 0);
    EXPECT_EQ(y.data<uint16_t>()[3], left ? 28 : 1);
  }
}

}  // namespace
}  // namespace perch::runtime
