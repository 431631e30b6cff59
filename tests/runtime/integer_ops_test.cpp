// ConvInteger and MatMulInteger in the float executor against plain int64 loops written here from the ONNX
// definitions, over random shapes, both 8-bit types on each side, zero points at the extremes (per tensor, per output
// channel / per column, per row of A) and reduction lengths around the packed GEMM's k-groups of 4 and column panels
// of 16; past kMaxGemmS8K the executor's own loops run (and must agree too). Exact: int32 results compared equal.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "perch/kernels/gemm_s8.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {
namespace {

using graph::Model;
using graph::Node;
using graph::ValueInfo;

Tensor random_8bit(DType t, Shape s, std::mt19937& rng) {
  Tensor x(t, std::move(s));
  std::uniform_int_distribution<int> d(0, 255);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int v = d(rng);
    if (t == DType::kUInt8) x.data<uint8_t>()[i] = static_cast<uint8_t>(v);
    else x.data<int8_t>()[i] = static_cast<int8_t>(v - 128);
  }
  return x;
}

// A zero point of type t: an extreme or a random value.
int32_t zero_point(DType t, std::mt19937& rng) {
  const int lo = t == DType::kUInt8 ? 0 : -128, hi = lo + 255;
  const int pick = std::uniform_int_distribution<int>(0, 3)(rng);
  return pick == 0 ? lo : pick == 1 ? hi : std::uniform_int_distribution<int>(lo, hi)(rng);
}

Tensor zero_points(DType t, const std::vector<int32_t>& z, bool scalar) {
  Tensor out(t, scalar ? Shape{} : Shape{static_cast<int64_t>(z.size())});
  for (size_t i = 0; i < z.size(); ++i) {
    if (t == DType::kUInt8) out.data<uint8_t>()[i] = static_cast<uint8_t>(z[i]);
    else out.data<int8_t>()[i] = static_cast<int8_t>(z[i]);
  }
  return out;
}

int32_t value(const Tensor& t, int64_t i) {
  return t.dtype() == DType::kUInt8 ? int32_t{t.data<uint8_t>()[i]} : int32_t{t.data<int8_t>()[i]};
}

// One-node model: input "x" is the node's input 0, the rest initializers; returns output 0.
Tensor run(Node n, const Tensor& x, const std::map<std::string, Tensor>& inits) {
  Model m;
  m.source = "integer_ops_test.onnx";
  m.graph.inputs = {ValueInfo{"x", x.dtype(), x.shape(), {}, true}};
  m.graph.outputs = {ValueInfo{n.outputs[0], DType::kInt32, {}, {}, true}};
  m.graph.initializers = inits;
  n.name = n.op_type + "_under_test";
  m.graph.nodes = {std::move(n)};
  m.set_opset(13);
  return Executor(m).run({{"x", x}}).at(m.graph.outputs[0].name);
}

TEST(IntegerOps, ConvIntegerMatchesInt64LoopsOverRandomShapes) {
  std::mt19937 rng(2026);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t G = trial % 5 == 0 ? pick(2, 4) : 1;
    const int64_t CG = pick(1, 9), MG = trial % 7 == 0 ? pick(17, 34) : pick(1, 20);
    const int64_t C = CG * G, M = MG * G, N = pick(1, 2);
    const int64_t KH = pick(1, 3), KW = pick(1, 3), H = pick(KH, 9), W = pick(KW, 9);
    const int64_t sh = pick(1, 2), sw = pick(1, 2), dh = pick(1, 2), dw = pick(1, 2);
    const int64_t pt = pick(0, 2), pl = pick(0, 2), pb = pick(0, 2), pr = pick(0, 2);
    const int64_t OH = (H + pt + pb - dh * (KH - 1) - 1) / sh + 1, OW = (W + pl + pr - dw * (KW - 1) - 1) / sw + 1;
    if (OH <= 0 || OW <= 0) continue;
    const DType xt = pick(0, 1) ? DType::kUInt8 : DType::kInt8, wt = pick(0, 1) ? DType::kUInt8 : DType::kInt8;
    SCOPED_TRACE("trial " + std::to_string(trial) + ": C " + std::to_string(C) + " M " + std::to_string(M) + " G " +
                 std::to_string(G) + " k " + std::to_string(KH) + "x" + std::to_string(KW));
    const Tensor x = random_8bit(xt, {N, C, H, W}, rng), w = random_8bit(wt, {M, CG, KH, KW}, rng);
    const int32_t xz = zero_point(xt, rng);
    const bool per_channel = pick(0, 1);
    std::vector<int32_t> wz(per_channel ? M : 1);
    for (auto& z : wz) z = zero_point(wt, rng);
    Node n;
    n.op_type = "ConvInteger";
    n.inputs = {"x", "w", "xz", "wz"};
    n.outputs = {"y"};
    n.attrs["group"] = G;
    n.attrs["strides"] = std::vector<int64_t>{sh, sw};
    n.attrs["dilations"] = std::vector<int64_t>{dh, dw};
    n.attrs["pads"] = std::vector<int64_t>{pt, pl, pb, pr};
    const Tensor y = run(n, x, {{"w", w}, {"xz", zero_points(xt, {xz}, true)}, {"wz", zero_points(wt, wz, !per_channel)}});
    ASSERT_EQ(y.shape(), (Shape{N, M, OH, OW}));
    int64_t mismatches = 0;
    for (int64_t b = 0; b < N; ++b)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t oh = 0; oh < OH; ++oh)
          for (int64_t ow = 0; ow < OW; ++ow) {
            const int64_t g = m / MG;
            const int32_t zw = wz[per_channel ? m : 0];
            int64_t acc = 0;
            for (int64_t c = 0; c < CG; ++c)
              for (int64_t i = 0; i < KH; ++i)
                for (int64_t j = 0; j < KW; ++j) {
                  const int64_t ih = oh * sh - pt + i * dh, iw = ow * sw - pl + j * dw;
                  const int32_t xv = ih < 0 || ih >= H || iw < 0 || iw >= W ? xz : value(x, ((b * C + g * CG + c) * H + ih) * W + iw);
                  acc += int64_t{xv - xz} * (value(w, ((m * CG + c) * KH + i) * KW + j) - zw);
                }
            mismatches += y.data<int32_t>()[((b * M + m) * OH + oh) * OW + ow] != acc;
          }
    ASSERT_EQ(mismatches, 0);
  }
}

// A [batch, M, K] x B [K, N], [batch, K, N] or [1, K, N]; zero points per tensor, per row of A, per column of B.
TEST(IntegerOps, MatMulIntegerMatchesInt64LoopsOverRandomShapes) {
  std::mt19937 rng(7);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int trial = 0; trial < 60; ++trial) {
    const int64_t M = pick(1, 30), K = trial % 4 == 0 ? pick(60, 140) : pick(1, 19), N = pick(1, 40);
    const int64_t batch = pick(1, 3);
    // B [K, N], [batch, K, N], or [1, K, N] broadcast over A's batch.
    const bool batched_b = trial % 6 == 5, broadcast_b = trial % 6 == 4, a_per_row = trial % 5 == 4;
    const DType at = pick(0, 1) ? DType::kUInt8 : DType::kInt8, bt = pick(0, 1) ? DType::kUInt8 : DType::kInt8;
    SCOPED_TRACE("trial " + std::to_string(trial) + ": " + std::to_string(batch) + "x" + std::to_string(M) + "x" +
                 std::to_string(K) + " . " + std::to_string(K) + "x" + std::to_string(N));
    const Tensor a = random_8bit(at, {batch, M, K}, rng);
    const Tensor b = random_8bit(bt, batched_b ? Shape{batch, K, N} : broadcast_b ? Shape{1, K, N} : Shape{K, N}, rng);
    std::vector<int32_t> az(a_per_row ? M : 1), bz(pick(0, 1) ? N : 1);
    for (auto& z : az) z = zero_point(at, rng);
    for (auto& z : bz) z = zero_point(bt, rng);
    Node n;
    n.op_type = "MatMulInteger";
    n.inputs = {"x", "b", "az", "bz"};
    n.outputs = {"y"};
    const Tensor y = run(n, a, {{"b", b}, {"az", zero_points(at, az, az.size() == 1)}, {"bz", zero_points(bt, bz, bz.size() == 1)}});
    ASSERT_EQ(y.shape(), (Shape{batch, M, N}));
    int64_t mismatches = 0;
    for (int64_t t = 0; t < batch; ++t)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < N; ++j) {
          int64_t acc = 0;
          for (int64_t k = 0; k < K; ++k)
            acc += int64_t{value(a, (t * M + i) * K + k) - az[az.size() == 1 ? 0 : i]} *
                   (value(b, (batched_b ? t * K * N : 0) + k * N + j) - bz[bz.size() == 1 ? 0 : j]);
          mismatches += y.data<int32_t>()[(t * M + i) * N + j] != acc;
        }
    ASSERT_EQ(mismatches, 0);
  }
}

// Past the packed GEMM's bound the loops run; the result is the same sum.
TEST(IntegerOps, MatMulIntegerBeyondThePackedBoundStillExact) {
  std::mt19937 rng(3);
  const int64_t K = kernels::kMaxGemmS8K + 5, N = 3;
  const Tensor a = random_8bit(DType::kUInt8, {2, K}, rng), b = random_8bit(DType::kInt8, {K, N}, rng);
  Node n;
  n.op_type = "MatMulInteger";
  n.inputs = {"x", "b", "az"};
  n.outputs = {"y"};
  const Tensor y = run(n, a, {{"b", b}, {"az", zero_points(DType::kUInt8, {200}, true)}});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < N; ++j) {
      int64_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int64_t{value(a, i * K + k) - 200} * value(b, k * N + j);
      EXPECT_EQ(y.data<int32_t>()[i * N + j], acc);
    }
}

}  // namespace
}  // namespace perch::runtime
