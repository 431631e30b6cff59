// libFuzzer target: ONNX bytes -> perch IR (protobuf parse, tensor decoding, toposort/graph validation) ->
// executor construction (op support, opset check) and the graph queries every pass relies on. Any
// perch::Error is a correct refusal; anything else (crash, sanitizer report, other exception) is a bug.
#include <cstddef>
#include <cstdint>
#include <string>

#include "perch/core/error.h"
#include "perch/graph/onnx_io.h"
#include "perch/runtime/executor.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  try {
    perch::graph::Model m = perch::graph::model_from_bytes(bytes, "fuzz.onnx");
    for (const auto& n : m.graph.nodes) {
      (void)n.describe();
      for (const auto& o : n.outputs) (void)m.graph.consumers(o);
    }
    // Serializing what was loaded must load again.
    const std::string again = perch::graph::model_to_bytes(m);
    (void)perch::graph::model_from_bytes(again, "fuzz-resaved.onnx");
    perch::runtime::Executor exec(std::move(m));
  } catch (const perch::Error&) {
  }
  return 0;
}
