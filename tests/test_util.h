// Shared helpers for perch's tests: where the shared models and the ONNX test data live, and a visible
// skip when they are absent (a user's machine has no ../shared).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <random>
#include <vector>
#include <string>

#include "perch/data/dataset.h"
#include "perch/graph/ir.h"

namespace perch::test {

// ../shared next to the source tree, or $PERCH_SHARED_DIR; empty path if neither exists.
std::filesystem::path shared_dir();
// shared_dir()/models/<name>; calls GTEST_SKIP-compatible logic through the macro below.
std::filesystem::path shared_model(const std::string& name);
// Debian libonnx-testdata's node test folder (/usr/share/libonnx-testdata/data/node).
std::filesystem::path onnx_node_test_dir();
std::filesystem::path source_dir();
std::filesystem::path binary_dir();

// Runs `cmd` through the shell, capturing stdout and stderr separately.
struct CmdResult {
  int code = -1;
  std::string out, err;
};
CmdResult run_cmd(const std::string& cmd);
// Whether this CPU's ONNX Runtime (tools/ort) multiplies u8 x s8 exactly: tools/ort/saturation.js, run once per
// process. On x86 CPUs without VNNI its integer kernels add two products in int16 with saturation (VPMADDUBSW), so
// they are no reference for perch's exact engine there. Tests then run QDQ models with `--level exact` (ONNX
// Runtime's graph optimizations off: the float semantics of the file) and skip comparisons whose ONNX Runtime side
// runs integer ops written in the file (QLinearConv, MatMulInteger, QGemm, ...). A probe that cannot run is a test
// failure (in every test that asks).
bool ort_u8s8_exact();
// The skip message for such a comparison.
std::string ort_saturates_message();

// Runs f; returns the perch::Error message it throws (a test failure if it throws anything else or nothing).
std::string perch_error(const std::function<void()>& f);
// Expects every part to occur in s.
void expect_contains(const std::string& s, const std::vector<std::string>& parts);

// Bit-identical (dtype, shape and bytes), except that any two NaNs count as equal: IEEE 754 leaves the payload and
// sign of a NaN result open, and x86 takes them from the first operand, which a compiler may swap in a commutative
// multiply.
bool same_bits(const Tensor& a, const Tensor& b);
// max |a - b| / max |b| over float32 tensors of the same shape (a test failure otherwise).
double max_rel_diff(const Tensor& a, const Tensor& b);

// 'path' for a shell command line.
std::string shell_quote(const std::filesystem::path& p);

// A small CNN with the patterns perch must handle: Conv+Relu, MaxPool, depthwise Conv+Clip (ReLU6),
// residual Add, GlobalAveragePool, Flatten, Gemm(transB=1); input "x" [N,1,8,8], output "y" [N,3].
// The first Conv's output channels get weight ranges spread x0.01 .. x1 (where per-tensor fails).
graph::Model tiny_cnn(uint32_t seed);
// Appends to `g` a node named "<op>_<first output>".
void add_node(graph::Graph& g, std::string op, std::vector<std::string> in, std::vector<std::string> out,
              std::map<std::string, graph::AttrValue> attrs = {});

// tiny_cnn with a second input "s" [N, 8, 1, 1] added to the first conv's output (a per-sample channel shift, as a
// conditioning input would be): y = head(relu(conv(x) + s)); source "two_input_cnn".
graph::Model two_input_cnn();
// A PyTorch-0.3-style opset-6 MLP: x [N,10] -> Gemm (broadcast 1, transB) -> BatchNormalization (is_test 1,
// spatial 1) -> Relu -> Gemm (broadcast 1, transB) -> y [N,3]; source "opset6_mlp".
graph::Model opset6_mlp(uint32_t seed);
// The same era's conv net: x [N,3,8,8] -> Pad (pads and value 0.25 as attributes) -> Conv 3x3 (4 out) -> Split
// (axis 1, split [2,2] as an attribute) -> Sum -> Relu -> GlobalAveragePool -> Flatten -> Gemm (broadcast 1) ->
// y [N,3]; source "opset6_convnet".
graph::Model opset6_convnet(uint32_t seed);
// An upsampling net of the opsets before Resize-11: x [N,3,6,6] -> Conv 3x3 pad 1 (4 out) -> Relu -> `op` ("Upsample"
// or "Resize", with `mode` and `scales`: an attribute for Upsample below opset 9, else an initializer input) ->
// Conv 1x1 (2 out) -> y; the resize node is named "up"; source "legacy_resize_net".
graph::Model legacy_resize_net(int64_t opset, const std::string& op, const std::string& mode,
                               const std::vector<float>& scales, uint32_t seed);
// A decoder step as DBNet's head has it: x [N,4,5,5] -> Conv 3x3 pad 1 (8) -> Relu -> ConvTranspose (kernel 2,
// stride 2, `group`, W [8, 8 / group, 2, 2], bias; its output channels' weights spread x0.01 .. x1) -> Relu ->
// Conv 1x1 (3) -> y [N,3,10,10]; opset 13, the ConvTranspose node named "up"; source "deconv_net".
graph::Model deconv_net(int64_t group, uint32_t seed);
// A volumetric (3-D) classifier: x [N,2,6,8,8] -> Conv3d 3x3x3 pad 1 (8; output channels' weights spread x0.01 .. x1)
// -> Relu -> depthwise Conv3d 3x3x3 pad 1 (group 8) -> Relu -> MaxPool3d 2x2x2 -> Conv3d 1x1x1 (6) -> AveragePool3d
// (kernel [3,4,4]) -> Flatten -> Gemm (6 -> 4) -> y [N,4]; opset 13; source "conv3d_net".
graph::Model conv3d_net(uint32_t seed);
// A float32 tensor of `shape`, uniform in [lo, hi), drawn from `rng` (or from a generator seeded `seed`).
Tensor uniform_tensor(Shape shape, std::mt19937& rng, float lo, float hi);
Tensor uniform_tensor(Shape shape, uint32_t seed, float lo, float hi);
// n random inputs for tiny_cnn ([n, 1, 8, 8], uniform in [-1, 2)), named "random", no labels.
Dataset tiny_cnn_inputs(int64_t n, uint32_t seed);

}  // namespace perch::test

// Skips the current test (visibly, with the reason) when ../shared/models/<name> is absent.
#define PERCH_REQUIRE_SHARED_MODEL(var, name)                                              \
  const std::filesystem::path var = ::perch::test::shared_model(name);                      \
  if (var.empty()) GTEST_SKIP() << "../shared/models/" << (name) << " not present (user machine)"
