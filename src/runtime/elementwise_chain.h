// Fused float element-wise chains for the float executor (internal to runtime/).
//
// Exported models spell many activations as runs of element-wise nodes over one tensor: HardSwish as
// x * Clip(x + 3, 0, 6) / 6, SiLU as x * Sigmoid(x), PaddlePaddle's learnable affine as Mul(w) + Add(b), a folded norm as Mul + Add.
// Run node by node, each of them streams the whole tensor through memory (rec at batch 64: 40 % of the float
// executor's time in Add/Mul/Clip/Div). A chain runs instead in blocks of kChainBlock elements that stay in
// L1: every step of a block before the next block.
//
// What forms a chain: consecutive nodes (in the graph's order) among Add, Sub, Mul, Div, Clip, Relu, LeakyRelu,
// HardSigmoid and Sigmoid (SiLU is x * Sigmoid(x), MobileNetV3's HardSwish before opset 14 x * HardSigmoid(x)) whose
// inputs are the chain's one input tensor X, results of earlier steps, or float32 scalar constants
// (initializers with one element; Clip's min/max as inputs or, before opset 11, attributes); every result
// but the last is read only inside the chain and is not a graph output. Two steps at least, kMaxChainSteps at
// most.
//
// Exactness: each step applies the very float expression of the unfused kernel (ops_elementwise.cpp) to the
// same operands in the same order, one rounding per step, no contraction across steps (results go through
// memory), so the output is bit-identical to running the nodes one by one (tested, Executor.ElementwiseChain*; NaN
// payloads aside, which IEEE 754 leaves open).
// The executor fuses only when nothing needs the intermediate values (no observer, adjuster or cached prefix)
// and X is float32 at run time; otherwise it runs the nodes themselves.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "perch/core/tensor.h"
#include "perch/graph/ir.h"

namespace perch::runtime::detail {

inline constexpr int kMaxChainSteps = 16;
inline constexpr int64_t kChainBlock = 256;

struct ChainStep {
  enum class Op { kAdd, kSub, kMul, kDiv, kClip, kRelu, kLeakyRelu, kHardSigmoid, kSigmoid } op;
  // Operand sources: kInput = X, kConst = the scalar in ca / cb, k >= 0 = the result of step k.
  static constexpr int kInput = -1, kConst = -2;
  int a = kInput, b = kConst;
  float ca = 0.0f, cb = 0.0f;
  float lo = 0.0f, hi = 0.0f;  // Clip's bounds; LeakyRelu's alpha (lo); HardSigmoid's alpha, beta (lo, hi)
};

struct ElementwiseChain {
  size_t first = 0, last = 0;  // node indices of the first and last step (only Constant nodes between the steps)
  std::vector<size_t> nodes;   // the steps' nodes, in order
  std::string input;           // X
  std::string output;          // the last node's output
  size_t const_rank = 0;       // highest rank among the scalar constants (a [1,1,1,1] one broadcasts X up to rank 4)
  std::vector<ChainStep> steps;
};

// The chains of `model` (non-overlapping, in node order). `constants` holds the initializers.
std::vector<ElementwiseChain> find_elementwise_chains(const graph::Model& model,
                                                      const std::unordered_map<std::string, Tensor>& constants);

// Runs a chain on float32 X; the result has X's shape.
Tensor run_elementwise_chain(const ElementwiseChain& chain, const Tensor& x);
// Runs a chain over n floats in place, on the calling thread (the same bits as run_elementwise_chain). The executor
// calls it from a Conv's epilogue on each finished block of the Conv's output, while the block is still in cache.
void run_elementwise_chain_in_place(const ElementwiseChain& chain, float* data, int64_t n);

}  // namespace perch::runtime::detail
