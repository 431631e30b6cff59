// perch/runtime/int8_executor.h — the integer executor: runs a QDQ model with 8-bit activations between ops.
//
// At construction the QDQ graph is *lowered* (docs/INTEGER.md has the formulas):
//   DQ(q_x) -> Conv/Gemm/MatMul(DQ(int8 W), DQ(int32 bias)) [-> Relu | Clip] -> Q
//       becomes one integer op: int32 accumulation of (q_x - zp_x) * w (kernels/gemm_s8.h, im2col in NHWC;
//       depthwise: kernels/dwconv_s8.h), + bias, requantized per output channel by the fixed-point multiplier
//       M[c] = s_x * s_w[c] / s_y (quant/fixed_point.h), the activation fused as the clamp. Without the Q (a
//       graph output) the int32 accumulator is dequantized: y = acc * (s_x * s_w[c]) in float.
//   DQ -> MaxPool -> (Q with the same parameters) and DQ -> Flatten/Reshape/Identity: on the 8-bit values.
//   DQ(a), DQ(b) -> Add [-> Relu | Clip] -> Q, and DQ -> Relu/Clip -> Q: a table of every (q_a, q_b) (or q)
//       built at load time by running the float simulation's own kernels on all inputs, so the result is
//       bit-identical to the simulation.
//   DQ -> GlobalAveragePool / AveragePool -> Q: integer sum, fixed-point division (docs/INTEGER.md).
//   Q(DQ(q)) with the same parameters: nothing (the 8-bit value passes through).
// Everything else runs in float through the fp32 executor's kernels (OpRegistry), with the 8-bit values
// dequantized at the boundary exactly as the simulation's DequantizeLinear does; every such node is listed
// in report() with the reason (never silently).
//
// 8-bit activations of rank 4 are kept NHWC between integer ops (the layout both int8 kernels want) and
// transposed to NCHW only where a float node or the graph output reads them. Weights are packed once, here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "perch/graph/ir.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/profile.h"

namespace perch::runtime {

struct Int8Report {
  struct Entry {
    std::string node;     // Node::describe()
    bool integer = true;  // lowered to an integer op (or absorbed: Q/DQ pairs, fused activations)
    std::string how;      // e.g. "int8 conv 3x3 im2col+GEMM, requant per-channel, fused Relu", or the float reason
  };
  std::vector<Entry> nodes;  // graph order
  // Images per slice when run() splits a larger batch (every node is per-sample; the activations of a slice stay
  // in cache between steps; same results as one run), 0 when it never splits.
  int64_t sub_batch = 0;
  int64_t integer_nodes() const;
  int64_t float_nodes() const;
  // "12 nodes lowered to integer ops, 1 in float: Softmax 'sm' (input is float: not quantized)".
  std::string summary() const;
};

// kInteger: the int8 kernels (gemm_s8.h, dwconv_s8.h). kSimulate: perch's exact simulation of them — the same
// lowering, but Conv/Gemm/MatMul accumulate on the float kernels (conv_f32.h, gemm_f32.h) over the
// integer-valued tensors (q - zp), exact by the bound in docs/INTEGER.md, then the same bias and fixed-point
// output stage. The two give bit-identical results; the float executor (executor.h) on the same QDQ file is
// the classic fake-quant simulation (float conv, then QuantizeLinear), which differs by rounding.
enum class Int8Mode : uint8_t { kInteger, kSimulate };

class Int8Executor {
 public:
  explicit Int8Executor(graph::Model model, Int8Mode mode = Int8Mode::kInteger);
  ~Int8Executor();
  Int8Executor(Int8Executor&&) noexcept;
  Int8Executor& operator=(Int8Executor&&) noexcept;

  // Graph inputs by name (float, as the QDQ model declares them); returns the graph outputs by name, and the
  // values named in `extra_outputs` (8-bit values — QuantizeLinear outputs — as 8-bit tensors in the ONNX
  // layout, float values as float), e.g. to compare every quantized activation with the simulation's.
  TensorMap run(const TensorMap& inputs, const std::vector<std::string>& extra_outputs = {}) const;
  Tensor run1(const Tensor& input) const;

  const Int8Report& report() const;
  // Per-step timing (runtime/profile.h): one entry per integer op or float fallback step, labelled with its node
  // and the report's description; empty until enable_profiling(), which also starts the sums over.
  void enable_profiling();
  std::vector<StepTime> profile() const;
  const graph::Model& model() const;
  const std::string& input_name() const;
  const std::string& output_name() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace perch::runtime
