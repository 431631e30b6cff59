// Ops whose ONNX node tests leave cases out, against ONNX Runtime: Einsum's equation forms (implicit output,
// broadcast "...", diagonals, three operands, float32 through the GEMM and integers), LRN with windows wider than
// the channels, GridSample in every mode × padding × align_corners with grids reaching outside, RoiAlign (avg and
// max, both coordinate modes, boxes partly outside), MaxUnpool of MaxPool's indices, opset 17's signal ops (DFT
// real/complex, padded/cut, onesided, inverse, along any axis; STFT; MelWeightMatrix; the windows), Det, Unique,
// ReverseSequence and BitShift, and NonMaxSuppression on random boxes — flipped corners, zero-area boxes, tied scores, both box formats,
// score thresholds, per-class limits.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <bit>
#include <random>

#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "cli_test_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace perch;
using perch::test::cli::ort_dir;
using perch::test::cli::perch_bin;
using perch::test::cli::q;
using perch::test::cli::scratch;
using test::run_cmd;
using test::uniform_tensor;

namespace {

// Runs `m` (one input "x") in perch and ONNX Runtime; every output must match: integers exactly, floats within
// `rel` of the output's largest magnitude.
void expect_same_as_ort(const graph::Model& m, const Tensor& x, const std::string& name, double rel) {
  const fs::path d = scratch(name);
  graph::save_model(m, d / "m.onnx");
  write_npy(d / "x.npy", x);
  auto r = run_cmd(perch_bin() + " run " + q(d / "m.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "m.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const auto& out : m.graph.outputs) {
    SCOPED_TRACE(out.name);
    const Tensor a = read_npy(d / "perch" / (out.name + ".npy")), b = read_npy(d / "ort" / (out.name + ".npy"));
    ASSERT_EQ(a.dtype(), b.dtype());
    ASSERT_EQ(a.shape(), b.shape());
    if (a.dtype() != DType::kFloat32 && a.dtype() != DType::kFloat64) {  // integers: exactly
      EXPECT_EQ(a.to_i64_vector(), b.to_i64_vector());
      continue;
    }
    EXPECT_LE(test::max_rel_diff(a, b), rel);
  }
}

graph::Model one_input_model(const std::string& name, Shape x, int64_t opset) {
  graph::Model m;
  m.ir_version = 8;
  m.opsets = {{"", opset}};
  m.source = name;
  m.graph.name = name;
  m.graph.inputs.push_back({"x", DType::kFloat32, std::move(x), {}, true});
  return m;
}

// ONNX Runtime takes odd sizes only; even ones: LrnOp.EvenWindowsReachOneChannelMoreAbove.
TEST(OpsVsOrt, LrnOddWindows) {
  PERCH_REQUIRE_ORT();
  graph::Model m = one_input_model("lrn", {2, 7, 3, 4}, 13);
  for (int64_t size : {1, 3, 5, 9}) {
    const std::string y = "y_size" + std::to_string(size);
    test::add_node(m.graph, "LRN", {"x"}, {y},
                   {{"size", size}, {"alpha", 0.02f * static_cast<float>(size)}, {"beta", 0.6f}, {"bias", 1.5f}});
    m.graph.outputs.push_back({y, DType::kFloat32, {}, {}, false});
  }
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-3.0f, 3.0f);
  Tensor x(DType::kFloat32, {2, 7, 3, 4});
  for (auto& v : x.span<float>()) v = u(rng);
  expect_same_as_ort(m, x, "lrn_vs_ort", 1e-6);
}

TEST(OpsVsOrt, NonMaxSuppressionOnRandomBoxes) {
  PERCH_REQUIRE_ORT();
  constexpr int64_t B = 2, N = 40, C = 3;
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> pos(0.0f, 10.0f), ext(0.5f, 4.0f);
  std::uniform_int_distribution<int> level(0, 9);
  // x holds the boxes: each as a random position and extent, written in the format under test; every 7th box has
  // its corners flipped, every 11th zero width, every 13th is the box before it again (IoU exactly 1).
  Tensor corners(DType::kFloat32, {B, N, 4}), centers(DType::kFloat32, {B, N, 4});
  for (int64_t i = 0; i < B * N; ++i) {
    float cx = pos(rng), cy = pos(rng), w = i % 11 == 0 ? 0.0f : ext(rng), h = ext(rng);
    float* c = corners.data<float>() + i * 4;
    if (i % 13 == 0 && i % N > 0) {
      const float* p = centers.data<float>() + (i - 1) * 4;
      cx = p[0], cy = p[1], w = p[2], h = p[3];
    }
    c[0] = cy - h / 2, c[1] = cx - w / 2, c[2] = cy + h / 2, c[3] = cx + w / 2;
    if (i % 7 == 0) std::swap(c[0], c[2]), std::swap(c[1], c[3]);
    float* z = centers.data<float>() + i * 4;
    z[0] = cx, z[1] = cy, z[2] = w, z[3] = h;
  }
  Tensor scores(DType::kFloat32, {B, C, N});
  for (auto& v : scores.span<float>()) v = static_cast<float>(level(rng)) / 10.0f;  // many ties
  for (int format : {0, 1}) {
    SCOPED_TRACE(format);
    graph::Model m = one_input_model("nms", {B, N, 4}, 11);
    auto& g = m.graph;
    g.initializers["scores"] = scores;
    struct Case {
      int64_t max_out;
      float iou;
      float score;  // < 0: no score_threshold input
    };
    // thresholds equal to IoUs (0, 1) and to scores (0, 0.3: the levels are k / 10) test the strict comparisons
    const Case cases[] = {{5, 0.3f, -1.0f}, {100, 0.5f, 0.3f}, {3, 0.0f, 0.35f}, {1000, 1.0f, -1.0f},
                          {1000, 0.7f, 0.0f}, {0, 0.5f, -1.0f}};
    int k = 0;
    for (const Case& c : cases) {
      const std::string tag = std::to_string(k++);
      g.initializers["max" + tag] = Tensor::from<int64_t>({1}, {c.max_out});
      g.initializers["iou" + tag] = Tensor::from<float>({1}, {c.iou});
      std::vector<std::string> in = {"x", "scores", "max" + tag, "iou" + tag};
      if (c.score >= 0) {
        g.initializers["score" + tag] = Tensor::from<float>({1}, {c.score});
        in.push_back("score" + tag);
      }
      test::add_node(g, "NonMaxSuppression", in, {"sel" + tag}, {{"center_point_box", int64_t{format}}});
      g.outputs.push_back({"sel" + tag, DType::kInt64, {}, {}, false});
    }
    expect_same_as_ort(m, format == 0 ? corners : centers, "nms_vs_ort_" + std::to_string(format), 0.0);
  }
}


TEST(OpsVsOrt, EinsumEquations) {
  PERCH_REQUIRE_ORT();
  struct Case {
    std::string equation;
    std::vector<Shape> shapes;
  };
  const std::vector<Case> cases = {
      {"bhqd,bhkd->bhqk", {{2, 3, 5, 4}, {2, 3, 6, 4}}},  // attention scores
      {"ij,jk", {{3, 4}, {4, 5}}},                           // implicit output: ik
      {"...ij,...jk->...ik", {{2, 1, 3, 4}, {1, 5, 4, 6}}},  // broadcast batch dims
      {"ii->i", {{4, 4}}},
      {"ii", {{5, 5}}},  // trace
      {"ij->", {{3, 7}}},
      {"ijk->kji", {{2, 3, 4}}},
      {"bij,bjk,bkl->bil", {{2, 3, 4}, {2, 4, 5}, {2, 5, 3}}},
      {"i,j->ij", {{3}, {4}}},
      {"ij,ij->ij", {{3, 4}, {3, 4}}},
      {"abc,cd->abd", {{2, 3, 4}, {4, 5}}},
      {"Ab,bC->CA", {{3, 4}, {4, 2}}},
      {"bii->bi", {{2, 3, 3}}},
      {"ij,jk,kl", {{2, 3}, {3, 4}, {4, 2}}},
      {"b...,b->...", {{3, 2, 4}, {3}}},
  };
  std::mt19937 rng(23);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::uniform_int_distribution<int32_t> ui(-5, 5);
  for (DType dt : {DType::kFloat32, DType::kInt32}) {
    graph::Model m = one_input_model("einsum", {1}, 13);
    auto& g = m.graph;
    int k = 0;
    for (const Case& c : cases) {
      const std::string tag = std::to_string(k++);
      std::vector<std::string> in;
      for (size_t o = 0; o < c.shapes.size(); ++o) {
        Tensor t(DType::kFloat32, c.shapes[o]);
        for (auto& v : t.span<float>()) v = dt == DType::kInt32 ? static_cast<float>(ui(rng)) : u(rng);
        const std::string name = "e" + tag + "_" + std::to_string(o);
        g.initializers[name] = t.to(dt);
        in.push_back(name);
      }
      test::add_node(g, "Einsum", in, {"y" + tag}, {{"equation", c.equation}});
      g.outputs.push_back({"y" + tag, dt, {}, {}, false});
    }
    test::add_node(g, "Identity", {"x"}, {"x_out"});
    g.outputs.push_back({"x_out", DType::kFloat32, {}, {}, false});
    expect_same_as_ort(m, Tensor::from<float>({1}, {1.0f}), dt == DType::kInt32 ? "einsum_i32" : "einsum_f32", 1e-5);
  }
}


TEST(OpsVsOrt, GridSampleModesAndPaddings) {
  PERCH_REQUIRE_ORT();
  graph::Model m = one_input_model("gridsample", {2, 3, 5, 6}, 16);
  auto& g = m.graph;
  Tensor grid = uniform_tensor({2, 4, 7, 2}, 41, -1.3f, 1.3f);
  // exact ties for nearest (round half to even): x = 0 is pixel 2.5 of 6 either way; y = −0.75 / −0.25 are 0.5 /
  // 1.5 of 5 with align_corners
  const float ties[] = {0.0f, -0.75f, 0.0f, -0.25f, 0.0f, 0.25f};
  std::copy(std::begin(ties), std::end(ties), grid.data<float>());
  g.initializers["grid"] = grid;
  for (const char* mode : {"bilinear", "nearest", "bicubic"})
    for (const char* pad : {"zeros", "border", "reflection"})
      for (int64_t align : {0, 1}) {
        const std::string y = std::string("y_") + mode + "_" + pad + "_" + std::to_string(align);
        test::add_node(g, "GridSample", {"x", "grid"}, {y},
                       {{"mode", std::string(mode)}, {"padding_mode", std::string(pad)}, {"align_corners", align}});
        g.outputs.push_back({y, DType::kFloat32, {}, {}, false});
      }
  expect_same_as_ort(m, uniform_tensor({2, 3, 5, 6}, 42, -2.0f, 2.0f), "gridsample_vs_ort", 1e-5);
}

TEST(OpsVsOrt, RoiAlignBothModesAndCoordinateConventions) {
  PERCH_REQUIRE_ORT();
  graph::Model m = one_input_model("roialign", {2, 3, 9, 11}, 16);
  auto& g = m.graph;
  // boxes (x1, y1, x2, y2) at spatial_scale 0.5: inside, partly outside, thinner than a pixel, reversed
  g.initializers["rois"] = Tensor::from<float>({5, 4}, {2, 2, 12, 10, -6, -4, 8, 9, 15, 3, 26, 20, 4, 4, 4.6f, 12, 10, 10, 3, 3});
  g.initializers["bidx"] = Tensor::from<int64_t>({5}, {0, 1, 1, 0, 1});
  for (const char* mode : {"avg", "max"})
    for (const char* ctm : {"half_pixel", "output_half_pixel"})
      for (int64_t ratio : {0, 2}) {
        const std::string y = std::string("y_") + mode + "_" + ctm + "_" + std::to_string(ratio);
        test::add_node(g, "RoiAlign", {"x", "rois", "bidx"}, {y},
                       {{"mode", std::string(mode)}, {"coordinate_transformation_mode", std::string(ctm)},
                        {"output_height", int64_t{3}}, {"output_width", int64_t{4}}, {"sampling_ratio", ratio},
                        {"spatial_scale", 0.5f}});
        g.outputs.push_back({y, DType::kFloat32, {}, {}, false});
      }
  expect_same_as_ort(m, uniform_tensor({2, 3, 9, 11}, 43, -1.0f, 3.0f), "roialign_vs_ort", 1e-5);
}

// With an output_shape larger than the unpooled shape, ONNX Runtime 1.30 reads the indices as flat indices of the
// larger output, while ONNX's node test test_maxunpool_export_with_output_shape (which perch passes) places the
// unpooled shape at its start; so only the shape the kernel gives, and an output_shape equal to it, are compared.
TEST(OpsVsOrt, MaxUnpoolOfMaxPoolIndices) {
  PERCH_REQUIRE_ORT();
  graph::Model m = one_input_model("maxunpool", {2, 3, 6, 7}, 11);
  auto& g = m.graph;
  using V = std::vector<int64_t>;
  test::add_node(g, "MaxPool", {"x"}, {"p", "idx"}, {{"kernel_shape", V{2, 3}}, {"strides", V{2, 2}}});
  g.initializers["shape"] = Tensor::from<int64_t>({4}, {2, 3, 6, 7});
  test::add_node(g, "MaxUnpool", {"p", "idx"}, {"y"}, {{"kernel_shape", V{2, 3}}, {"strides", V{2, 2}}});
  test::add_node(g, "MaxUnpool", {"p", "idx", "shape"}, {"y_shaped"}, {{"kernel_shape", V{2, 3}}, {"strides", V{2, 2}}});
  g.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  g.outputs.push_back({"y_shaped", DType::kFloat32, {}, {}, false});
  expect_same_as_ort(m, uniform_tensor({2, 3, 6, 7}, 44, -1.0f, 1.0f), "maxunpool_vs_ort", 0.0);
}


TEST(OpsVsOrt, SignalAndSmallOps) {
  PERCH_REQUIRE_ORT();
  graph::Model m = one_input_model("signal", {1}, 17);
  auto& g = m.graph;
  std::vector<std::string> outs;
  std::map<std::string, DType> types;
  auto node = [&](const std::string& op, std::vector<std::string> in, std::map<std::string, graph::AttrValue> attrs,
                  int n_out = 1, DType type = DType::kFloat32) {
    std::vector<std::string> out;
    for (int k = 0; k < n_out; ++k) {
      std::string name = "y";
      name += std::to_string(outs.size());
      out.push_back(name);
      outs.push_back(name);
      types[name] = type;
    }
    test::add_node(g, op, std::move(in), out, std::move(attrs));
  };
  g.initializers["real"] = uniform_tensor({2, 9, 3, 1}, 51, -1.0f, 1.0f);
  g.initializers["cplx"] = uniform_tensor({2, 9, 3, 2}, 52, -1.0f, 1.0f);
  g.initializers["len7"] = Tensor::from<int64_t>({}, {7});
  g.initializers["len12"] = Tensor::from<int64_t>({}, {12});
  node("DFT", {"real"}, {});
  node("DFT", {"real", "len12"}, {{"onesided", int64_t{1}}});
  node("DFT", {"cplx", "len7"}, {{"axis", int64_t{2}}});
  node("DFT", {"cplx"}, {{"inverse", int64_t{1}}});
  node("DFT", {"cplx", "len12"}, {{"axis", int64_t{-2}}, {"inverse", int64_t{1}}});
  g.initializers["signal"] = uniform_tensor({2, 64, 1}, 53, -1.0f, 1.0f);
  g.initializers["step"] = Tensor::from<int64_t>({}, {6});
  g.initializers["win"] = uniform_tensor({16}, 55, 0.0f, 1.0f);
  g.initializers["flen"] = Tensor::from<int64_t>({}, {10});
  node("STFT", {"signal", "step", "win"}, {});
  node("STFT", {"signal", "step", "", "flen"}, {{"onesided", int64_t{0}}});
  // (not complex signals: ONNX Runtime 1.30's STFT returns values far outside the possible range for them;
  // SignalOps.ComplexStftIsTheDftOfEachWindowedFrame checks perch's against its DFT, compared here)
  g.initializers["mels"] = Tensor::from<int64_t>({}, {10});
  g.initializers["dftlen"] = Tensor::from<int64_t>({}, {64});
  g.initializers["rate"] = Tensor::from<int64_t>({}, {16000});
  g.initializers["lo"] = Tensor::from<float>({}, {60.0f});
  g.initializers["hi"] = Tensor::from<float>({}, {7600.0f});
  node("MelWeightMatrix", {"mels", "dftlen", "rate", "lo", "hi"}, {});
  g.initializers["wsize"] = Tensor::from<int64_t>({}, {11});
  for (const char* w : {"HannWindow", "HammingWindow", "BlackmanWindow"})
    for (int64_t periodic : {0, 1}) node(w, {"wsize"}, {{"periodic", periodic}});
  Tensor sq = uniform_tensor({3, 4, 4}, 56, -2.0f, 2.0f);
  for (int64_t k = 0; k < 4; ++k) sq.data<float>()[32 + 4 + k] = sq.data<float>()[32 + k];  // a singular one
  g.initializers["sq"] = sq;
  node("Det", {"sq"}, {});
  std::mt19937 rng(57);
  std::uniform_int_distribution<int64_t> small(0, 3);
  Tensor ints(DType::kInt64, {4, 5, 2});
  for (auto& v : ints.span<int64_t>()) v = small(rng);
  for (int64_t k = 0; k < 10; ++k) ints.data<int64_t>()[20 + k] = ints.data<int64_t>()[k];  // a repeated slice on axis 0
  g.initializers["ints"] = ints;
  node("Unique", {"ints"}, {{"sorted", int64_t{0}}}, 4, DType::kInt64);
  node("Unique", {"ints"}, {{"sorted", int64_t{1}}, {"axis", int64_t{0}}}, 4, DType::kInt64);
  node("Unique", {"ints"}, {{"sorted", int64_t{0}}, {"axis", int64_t{-1}}}, 4, DType::kInt64);
  g.initializers["seq"] = uniform_tensor({6, 3, 2}, 58, -1.0f, 1.0f);
  g.initializers["lens"] = Tensor::from<int64_t>({3}, {6, 1, 4});
  g.initializers["lens6"] = Tensor::from<int64_t>({6}, {3, 0, 2, 3, 1, 2});
  node("ReverseSequence", {"seq", "lens"}, {{"time_axis", int64_t{0}}, {"batch_axis", int64_t{1}}});
  node("ReverseSequence", {"seq", "lens6"}, {{"time_axis", int64_t{1}}, {"batch_axis", int64_t{0}}});
  Tensor bits(DType::kUInt8, {12}), shifts(DType::kUInt8, {12});
  for (int64_t k = 0; k < 12; ++k) bits.data<uint8_t>()[k] = static_cast<uint8_t>(37 * k + 11), shifts.data<uint8_t>()[k] = static_cast<uint8_t>(k);
  g.initializers["bits"] = bits;
  g.initializers["shifts"] = shifts;
  node("BitShift", {"bits", "shifts"}, {{"direction", std::string("LEFT")}}, 1, DType::kUInt8);
  node("BitShift", {"bits", "shifts"}, {{"direction", std::string("RIGHT")}}, 1, DType::kUInt8);
  test::add_node(g, "Identity", {"x"}, {"x_out"});
  outs.push_back("x_out");
  types["x_out"] = DType::kFloat32;
  for (const auto& o : outs) g.outputs.push_back({o, types.at(o), {}, {}, false});
  expect_same_as_ort(m, Tensor::from<float>({1}, {1.0f}), "signal_vs_ort", 5e-6);  // ONNX Runtime: a float FFT
}


// float32 → bfloat16 → float32 (and through float16, and bfloat16 → float16) in perch and ONNX Runtime, bit for bit:
// round to nearest even at ties, the overflow threshold, subnormals (ONNX 1.14's own test data truncates instead).
TEST(OpsVsOrt, BFloat16CastsRoundLikeOnnxRuntime) {
  PERCH_REQUIRE_ORT();
  std::vector<float> v = {1.0f + std::ldexp(1.0f, -8), 1.0f + std::ldexp(3.0f, -8), 0.48033666f, 0.49968487f,
                          std::ldexp(2.0f - std::ldexp(1.0f, -8), 127), std::nextafter(std::ldexp(2.0f - std::ldexp(1.0f, -8), 127), 0.0f),
                          std::numeric_limits<float>::max(), std::ldexp(1.0f, -134), std::ldexp(3.0f, -134), std::ldexp(1.0f, -130),
                          -0.0f, 65520.0f, 3.14159265f, -1e-3f};
  std::mt19937 rng(19);
  std::uniform_real_distribution<float> u(-8.0f, 8.0f);
  while (v.size() < 64) v.push_back(u(rng));
  graph::Model m = one_input_model("bf16", {static_cast<int64_t>(v.size())}, 13);
  auto& g = m.graph;
  test::add_node(g, "Cast", {"x"}, {"b"}, {{"to", int64_t{16}}});
  test::add_node(g, "Cast", {"b"}, {"y_bf16"}, {{"to", int64_t{1}}});
  test::add_node(g, "Cast", {"x"}, {"h"}, {{"to", int64_t{10}}});
  test::add_node(g, "Cast", {"h"}, {"hb"}, {{"to", int64_t{16}}});
  test::add_node(g, "Cast", {"hb"}, {"y_f16_bf16"}, {{"to", int64_t{1}}});
  test::add_node(g, "Cast", {"b"}, {"bh"}, {{"to", int64_t{10}}});
  test::add_node(g, "Cast", {"bh"}, {"y_bf16_f16"}, {{"to", int64_t{1}}});
  for (const char* o : {"y_bf16", "y_f16_bf16", "y_bf16_f16"}) g.outputs.push_back({o, DType::kFloat32, {}, {}, false});
  const fs::path d = scratch("bf16_vs_ort");
  graph::save_model(m, d / "m.onnx");
  write_npy(d / "x.npy", Tensor::from<float>({static_cast<int64_t>(v.size())}, v));
  auto r = run_cmd(perch_bin() + " run " + q(d / "m.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "perch") + " -q");
  ASSERT_EQ(r.code, 0) << r.err;
  r = run_cmd("node " + q(ort_dir() / "run.js") + " " + q(d / "m.onnx") + " --input x=" + q(d / "x.npy") + " -o " + q(d / "ort"));
  ASSERT_EQ(r.code, 0) << r.err;
  for (const char* o : {"y_bf16", "y_f16_bf16", "y_bf16_f16"}) {
    const Tensor a = read_npy(d / "perch" / (std::string(o) + ".npy")), b = read_npy(d / "ort" / (std::string(o) + ".npy"));
    ASSERT_EQ(a.shape(), b.shape());
    for (int64_t k = 0; k < a.numel(); ++k)
      EXPECT_EQ(std::bit_cast<uint32_t>(a.data<float>()[k]), std::bit_cast<uint32_t>(b.data<float>()[k])) << o << " " << v[k];
  }
}

}  // namespace
