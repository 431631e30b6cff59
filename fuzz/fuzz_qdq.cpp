// libFuzzer target: QuantizeLinear / DequantizeLinear parameter construction and arithmetic, as the
// executor runs them — scale/zero-point shapes, types and values, axis, block_size, output_dtype and
// opset all come from the fuzzer; the data tensor is small.
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "perch/core/error.h"
#include "perch/runtime/executor.h"

using namespace perch;

namespace {

Shape small_shape(FuzzedDataProvider& p, int max_rank, int64_t max_dim) {
  Shape s(p.ConsumeIntegralInRange<int>(0, max_rank));
  for (auto& d : s) d = p.ConsumeIntegralInRange<int64_t>(0, max_dim);
  return s;
}

Tensor fill(FuzzedDataProvider& p, DType dt, const Shape& shape) {
  Tensor t(dt, shape);
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (dt) {
      case DType::kFloat32: t.data<float>()[i] = p.ConsumeFloatingPoint<float>(); break;
      case DType::kInt8: t.data<int8_t>()[i] = p.ConsumeIntegral<int8_t>(); break;
      case DType::kUInt8: t.data<uint8_t>()[i] = p.ConsumeIntegral<uint8_t>(); break;
      case DType::kInt16: t.data<int16_t>()[i] = p.ConsumeIntegral<int16_t>(); break;
      case DType::kUInt16: t.data<uint16_t>()[i] = p.ConsumeIntegral<uint16_t>(); break;
      case DType::kInt32: t.data<int32_t>()[i] = p.ConsumeIntegral<int32_t>(); break;
      case DType::kInt64: t.data<int64_t>()[i] = p.ConsumeIntegral<int64_t>(); break;
      default: break;
    }
  }
  return t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider p(data, size);
  static const DType kQTypes[] = {DType::kInt8, DType::kUInt8, DType::kInt16, DType::kUInt16, DType::kInt32,
                                  DType::kInt64, DType::kFloat32};
  const bool dequantize = p.ConsumeBool();
  const DType xtype = dequantize ? kQTypes[p.ConsumeIntegralInRange<int>(0, 6)] : DType::kFloat32;
  const Shape xshape = small_shape(p, 4, 6);
  const Shape sshape = small_shape(p, 4, 6);
  const bool with_zp = p.ConsumeBool();
  const DType ztype = kQTypes[p.ConsumeIntegralInRange<int>(0, 6)];
  const Shape zshape = p.ConsumeBool() ? sshape : small_shape(p, 2, 6);

  graph::Model m;
  m.source = "fuzz-qdq";
  m.opsets = {{"", p.ConsumeIntegralInRange<int64_t>(10, 21)}};
  graph::Node n;
  n.op_type = dequantize ? "DequantizeLinear" : "QuantizeLinear";
  n.name = "q";
  n.inputs = {"x", "s"};
  if (with_zp) n.inputs.push_back("z");
  n.outputs = {"y"};
  if (p.ConsumeBool()) n.attrs["axis"] = p.ConsumeIntegralInRange<int64_t>(-6, 6);
  if (p.ConsumeBool()) n.attrs["block_size"] = p.ConsumeIntegralInRange<int64_t>(-2, 8);
  if (p.ConsumeBool()) n.attrs["output_dtype"] = p.ConsumeIntegralInRange<int64_t>(0, 6);
  if (p.ConsumeBool()) n.attrs["saturate"] = p.ConsumeIntegralInRange<int64_t>(0, 1);
  m.graph.nodes.push_back(n);
  m.graph.inputs.push_back({"x", xtype, xshape, std::vector<std::string>(xshape.size()), true});
  m.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
  try {
    m.graph.initializers["s"] = fill(p, DType::kFloat32, sshape);
    if (with_zp) m.graph.initializers["z"] = fill(p, ztype, zshape);
    const Tensor x = fill(p, xtype, xshape);
    runtime::Executor exec(m);
    (void)exec.run({{"x", x}});
  } catch (const Error&) {
  }
  return 0;
}
