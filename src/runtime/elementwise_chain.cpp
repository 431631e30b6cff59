#include "elementwise_chain.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "perch/core/cpu.h"
#include "perch/core/threads.h"

namespace perch::runtime::detail {

namespace {

using graph::Node;

// The one element of a float32 constant: an initializer or a Constant node's value / value_float.
bool scalar_constant(const std::string& v, const std::unordered_map<std::string, Tensor>& constants,
                     const std::unordered_map<std::string, const Node*>& constant_nodes, float& out, size_t& rank) {
  const Tensor* t = nullptr;
  if (auto it = constants.find(v); it != constants.end()) t = &it->second;
  if (auto it = constant_nodes.find(v); !t && it != constant_nodes.end()) {
    const Node& c = *it->second;
    if (c.attrs.size() != 1) return false;
    if (c.has_attr("value_float")) {
      out = c.attr_float("value_float", 0.0f);
      rank = 0;
      return true;
    }
    t = c.attr_tensor("value");
  }
  if (!t || t->dtype() != DType::kFloat32 || t->numel() != 1) return false;
  out = t->data<float>()[0];
  rank = static_cast<size_t>(t->rank());
  return true;
}

}  // namespace

std::vector<ElementwiseChain> find_elementwise_chains(const graph::Model& model,
                                                      const std::unordered_map<std::string, Tensor>& constants) {
  static const std::set<std::string> ops = {"Add", "Sub", "Mul", "Div", "Clip", "Relu", "LeakyRelu", "HardSigmoid", "Sigmoid"};
  const auto& nodes = model.graph.nodes;
  const int64_t opset = model.opset();
  // An initializer that is also a graph input is only a default: the caller may feed another value.
  std::unordered_map<std::string, Tensor> fixed = constants;
  for (const auto& in : model.graph.inputs) fixed.erase(in.name);
  std::unordered_map<std::string, const Node*> constant_nodes;
  for (const auto& n : nodes)
    if (n.op_type == "Constant" && n.domain.empty() && n.outputs.size() == 1) constant_nodes[n.outputs[0]] = &n;
  std::unordered_map<std::string, std::vector<size_t>> readers;
  for (size_t i = 0; i < nodes.size(); ++i)
    for (const auto& in : nodes[i].inputs)
      if (!in.empty()) readers[in].push_back(i);

  struct Candidate {
    size_t node;
    ChainStep step;
    size_t const_rank;  // highest rank among this step's constants
  };
  std::vector<ElementwiseChain> chains;
  size_t i = 0;
  while (i < nodes.size()) {
    // Grow a chain from node i: X is its first node's one non-constant input.
    std::vector<Candidate> cand;
    std::unordered_map<std::string, int> slot;  // chain value -> step index
    std::string x;
    size_t j = i;
    for (; j < nodes.size() && static_cast<int>(cand.size()) < kMaxChainSteps; ++j) {
      const Node& n = nodes[j];
      if (n.op_type == "Constant" && n.domain.empty()) {
        if (cand.empty()) break;
        continue;  // constants between the steps (PaddlePaddle's exports put them there)
      }
      if (!n.domain.empty() || !ops.count(n.op_type) || n.outputs.size() != 1 || n.outputs[0].empty()) break;
      ChainStep s;
      size_t const_rank = 0;
      bool ok = true;
      // Resolves input k into (source, constant); false when it is neither X, a step result nor a scalar.
      auto operand = [&](size_t k, int& src, float& c) {
        const std::string& v = n.input(k);
        if (v.empty()) return false;
        if (auto it = slot.find(v); it != slot.end()) return src = it->second, true;
        size_t r = 0;
        if (scalar_constant(v, fixed, constant_nodes, c, r)) {
          const_rank = std::max(const_rank, r);
          return src = ChainStep::kConst, true;
        }
        if (x.empty() && !fixed.count(v) && !constant_nodes.count(v)) x = v;
        if (v == x) return src = ChainStep::kInput, true;
        return false;
      };
      if (n.op_type == "Relu" || n.op_type == "LeakyRelu" || n.op_type == "HardSigmoid" || n.op_type == "Sigmoid") {
        s.op = n.op_type == "Relu"        ? ChainStep::Op::kRelu
               : n.op_type == "LeakyRelu" ? ChainStep::Op::kLeakyRelu
               : n.op_type == "Sigmoid"   ? ChainStep::Op::kSigmoid
                                          : ChainStep::Op::kHardSigmoid;
        // The unfused kernels' defaults (ops_elementwise.cpp).
        if (s.op == ChainStep::Op::kLeakyRelu) s.lo = n.attr_float("alpha", 0.01f);
        if (s.op == ChainStep::Op::kHardSigmoid) s.lo = n.attr_float("alpha", 0.2f), s.hi = n.attr_float("beta", 0.5f);
        ok = n.inputs.size() == 1 && operand(0, s.a, s.ca) && s.a != ChainStep::kConst;
      } else if (n.op_type == "Clip") {
        s.op = ChainStep::Op::kClip;
        s.lo = -std::numeric_limits<float>::infinity();
        s.hi = std::numeric_limits<float>::infinity();
        ok = operand(0, s.a, s.ca) && s.a != ChainStep::kConst;
        if (opset < 11) {
          ok = ok && n.inputs.size() == 1;
          s.lo = n.attr_float("min", s.lo);
          s.hi = n.attr_float("max", s.hi);
        } else {
          for (size_t k = 1; ok && k < n.inputs.size() && k < 3; ++k) {
            if (n.inputs[k].empty()) continue;
            int src = 0;
            float c = 0.0f;
            ok = operand(k, src, c) && src == ChainStep::kConst;
            (k == 1 ? s.lo : s.hi) = c;
          }
          ok = ok && n.inputs.size() <= 3;
        }
      } else {
        s.op = n.op_type == "Add"   ? ChainStep::Op::kAdd
               : n.op_type == "Sub" ? ChainStep::Op::kSub
               : n.op_type == "Mul" ? ChainStep::Op::kMul
                                    : ChainStep::Op::kDiv;
        ok = n.inputs.size() == 2 && operand(0, s.a, s.ca) && operand(1, s.b, s.cb) &&
             !(s.a == ChainStep::kConst && s.b == ChainStep::kConst);
      }
      if (!ok) break;
      slot[n.outputs[0]] = static_cast<int>(cand.size());
      cand.push_back({j, s, const_rank});
    }
    // The longest prefix whose intermediate results stay inside it.
    size_t len = cand.size();
    for (; len >= 2; --len) {
      std::set<size_t> inside;
      for (size_t k = 0; k < len; ++k) inside.insert(cand[k].node);
      bool closed = true;
      for (size_t k = 0; closed && k + 1 < len; ++k) {
        const std::string& v = nodes[cand[k].node].outputs[0];
        if (model.graph.is_graph_output(v)) closed = false;
        for (size_t r : readers[v]) closed = closed && inside.count(r);
      }
      if (closed) break;
    }
    if (len >= 2) {
      ElementwiseChain c;
      c.first = cand[0].node;
      c.last = cand[len - 1].node;
      c.input = x;
      c.output = nodes[c.last].outputs[0];
      for (size_t k = 0; k < len; ++k) {  // the kept steps only: a step cut off must not broadcast the output
        c.nodes.push_back(cand[k].node);
        c.steps.push_back(cand[k].step);
        c.const_rank = std::max(c.const_rank, cand[k].const_rank);
      }
      chains.push_back(std::move(c));
      i = chains.back().last + 1;
    } else {
      ++i;
    }
  }
  return chains;
}

namespace {

#define PERCH_CHAIN_INLINE inline __attribute__((always_inline))

// out[e] = f(A, B) over one block, A and B each an array or a scalar (the operand order of the node).
template <typename F>
PERCH_CHAIN_INLINE void apply2(const float* a, float ca, const float* b, float cb, float* out, int64_t len, F f) {
  if (a && b)
    for (int64_t e = 0; e < len; ++e) out[e] = f(a[e], b[e]);
  else if (a)
    for (int64_t e = 0; e < len; ++e) out[e] = f(a[e], cb);
  else
    for (int64_t e = 0; e < len; ++e) out[e] = f(ca, b[e]);
}

// Blocks [b0, b1) of the chain: every step of a block before the next block. Inlined into one function per
// instruction set below; each step is one IEEE operation per element (add, sub, mul, div, min/max, compare), exact
// at any vector width, so all of them give the same bits (Sigmoid calls the one scalar libm expf everywhere).
PERCH_CHAIN_INLINE void chain_blocks(const ElementwiseChain& chain, const float* xd, float* yd, int64_t n, int64_t b0,
                                     int64_t b1) {
  alignas(64) float scratch[kMaxChainSteps][kChainBlock];
  const size_t steps = chain.steps.size();
  // In place (y == x), the last step also writes to scratch, copied out after the block: the same values, and the
  // step's loop keeps its vector form (a store to the array it reads would make GCC's overlap check fall back to
  // scalar code).
  const bool in_place = xd == yd;
  for (int64_t blk = b0; blk < b1; ++blk) {
    const int64_t base = blk * kChainBlock, len = std::min(kChainBlock, n - base);
    auto src = [&](int s) -> const float* {
      return s == ChainStep::kInput ? xd + base : s == ChainStep::kConst ? nullptr : scratch[s];
    };
    for (size_t k = 0; k < steps; ++k) {
      const ChainStep& s = chain.steps[k];
      float* out = k + 1 == steps && !in_place ? yd + base : scratch[k];
      const float* a = src(s.a);
      const float* b = src(s.b);
      // The same expressions as ops_elementwise.cpp's kernels (AddOp..DivOp, clip, the activations).
      switch (s.op) {
        case ChainStep::Op::kAdd: apply2(a, s.ca, b, s.cb, out, len, [](float p, float q) { return p + q; }); break;
        case ChainStep::Op::kSub: apply2(a, s.ca, b, s.cb, out, len, [](float p, float q) { return p - q; }); break;
        case ChainStep::Op::kMul: apply2(a, s.ca, b, s.cb, out, len, [](float p, float q) { return p * q; }); break;
        case ChainStep::Op::kDiv: apply2(a, s.ca, b, s.cb, out, len, [](float p, float q) { return p / q; }); break;
        case ChainStep::Op::kClip: {
          const float lo = s.lo, hi = s.hi;
          for (int64_t e = 0; e < len; ++e) out[e] = std::min(std::max(a[e], lo), hi);
          break;
        }
        case ChainStep::Op::kRelu:
          for (int64_t e = 0; e < len; ++e) out[e] = a[e] > 0.0f ? a[e] : 0.0f;
          break;
        case ChainStep::Op::kLeakyRelu: {
          const float alpha = s.lo;
          for (int64_t e = 0; e < len; ++e) out[e] = a[e] >= 0.0f ? a[e] : a[e] * alpha;
          break;
        }
        case ChainStep::Op::kHardSigmoid: {
          const float alpha = s.lo, beta = s.hi;
          for (int64_t e = 0; e < len; ++e) out[e] = std::clamp(alpha * a[e] + beta, 0.0f, 1.0f);
          break;
        }
        case ChainStep::Op::kSigmoid:  // libm's expf, as the unfused kernel: the same bits on every path
          for (int64_t e = 0; e < len; ++e) out[e] = 1.0f / (1.0f + std::exp(-a[e]));
          break;
      }
    }
    if (in_place) std::memcpy(yd + base, scratch[steps - 1], static_cast<size_t>(len) * sizeof(float));
  }
}

using ChainFn = void (*)(const ElementwiseChain&, const float*, float*, int64_t, int64_t, int64_t);

// The reference twin (baseline x86-64: SSE2) and the same code compiled for AVX2 and AVX-512 (PERCH_PATHS picks).
void chain_blocks_reference(const ElementwiseChain& c, const float* x, float* y, int64_t n, int64_t b0, int64_t b1) {
  chain_blocks(c, x, y, n, b0, b1);
}
__attribute__((target("avx2"))) void chain_blocks_avx2(const ElementwiseChain& c, const float* x, float* y, int64_t n,
                                                       int64_t b0, int64_t b1) {
  chain_blocks(c, x, y, n, b0, b1);
}
__attribute__((target("avx512f,avx512vl,avx512bw"))) void chain_blocks_avx512(const ElementwiseChain& c, const float* x,
                                                                              float* y, int64_t n, int64_t b0,
                                                                              int64_t b1) {
  chain_blocks(c, x, y, n, b0, b1);
}

}  // namespace

namespace {
ChainFn chain_fn() {
  const uint32_t paths = active_paths();
  return has_path(paths, Path::kAvx512Vnni) ? chain_blocks_avx512
         : has_path(paths, Path::kAvx2)     ? chain_blocks_avx2
                                            : chain_blocks_reference;
}
}  // namespace

void run_elementwise_chain_in_place(const ElementwiseChain& chain, float* data, int64_t n) {
  if (n > 0) chain_fn()(chain, data, data, n, 0, (n + kChainBlock - 1) / kChainBlock);
}

Tensor run_elementwise_chain(const ElementwiseChain& chain, const Tensor& x) {
  Shape shape = x.shape();
  while (shape.size() < chain.const_rank) shape.insert(shape.begin(), 1);  // scalars of shape [1,1,...] broadcast
  Tensor y = Tensor::uninitialized(DType::kFloat32, shape);
  const float* xd = x.data<float>();
  float* yd = y.data<float>();
  const int64_t n = x.numel();
  const int64_t blocks = (n + kChainBlock - 1) / kChainBlock;
  const ChainFn fn = chain_fn();
  parallel_for(0, blocks, [&](int64_t b0, int64_t b1) { fn(chain, xd, yd, n, b0, b1); }, 16);
  return y;
}

}  // namespace perch::runtime::detail
