// libFuzzer target: ONNX bytes -> perch IR -> the integer runtime's QDQ lowering (Int8Executor, integer and
// exact-simulation modes: pattern matching of DQ -> op -> Q chains, weight packing, requantization
// multipliers, float fallbacks) -> one run on a small deterministic input. Oracle beyond "no crash": when both
// modes run, their outputs must be bit-identical (docs/INTEGER.md, section 4: the int8 engine and its exact
// simulation compute the same integers). Any perch::Error is a correct refusal.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "perch/core/error.h"
#include "perch/graph/onnx_io.h"
#include "perch/runtime/int8_executor.h"

namespace {

// A float input for the model's first graph input: dynamic or absurd dims become small, values from the bytes.
bool make_input(const perch::graph::Model& m, const uint8_t* data, size_t size, perch::Tensor& out) {
  if (m.graph.inputs.empty()) return false;
  const auto& in = m.graph.inputs[0];
  if (in.dtype != perch::DType::kFloat32 || !in.has_shape || in.shape.size() > 5) return false;
  perch::Shape shape;
  int64_t n = 1;
  for (int64_t d : in.shape) {
    const int64_t v = d <= 0 ? 1 : d;
    if (v > 64) return false;
    shape.push_back(v);
    n *= v;
  }
  if (n > 8192) return false;
  out = perch::Tensor(perch::DType::kFloat32, shape);
  float* x = out.data<float>();
  for (int64_t i = 0; i < n; ++i)
    x[i] = size ? static_cast<float>(static_cast<int>(data[static_cast<size_t>(i) % size]) - 100) * 0.03f : 0.0f;
  return true;
}

bool same_bits(const perch::Tensor& a, const perch::Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  if (a.dtype() == perch::DType::kFloat32) {
    for (int64_t i = 0; i < a.numel(); ++i) {
      const float x = a.data<float>()[i], y = b.data<float>()[i];
      if (x != x && y != y) continue;  // both NaN
      if (std::memcmp(&x, &y, sizeof x) != 0) return false;
    }
    return true;
  }
  return std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    const perch::graph::Model m = perch::graph::model_from_bytes(bytes, "fuzz.onnx");
    perch::Tensor x;
    const bool runnable = make_input(m, data, size, x);
    perch::runtime::TensorMap yi, ys;
    bool ran_i = false, ran_s = false;
    try {
      perch::runtime::Int8Executor exec(m, perch::runtime::Int8Mode::kInteger);
      (void)exec.report();
      if (runnable) yi = exec.run({{m.graph.inputs[0].name, x}}), ran_i = true;
    } catch (const perch::Error&) {
    }
    try {
      perch::runtime::Int8Executor sim(m, perch::runtime::Int8Mode::kSimulate);
      if (runnable) ys = sim.run({{m.graph.inputs[0].name, x}}), ran_s = true;
    } catch (const perch::Error&) {
    }
    if (ran_i && ran_s)
      for (const auto& [name, t] : yi) {
        auto it = ys.find(name);
        if (it == ys.end() || !same_bits(t, it->second)) {
          std::fprintf(stderr, "int8 and simulation outputs differ at '%s'\n", name.c_str());
          std::abort();
        }
      }
  } catch (const perch::Error&) {
  }
  return 0;
}
