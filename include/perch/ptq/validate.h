// perch/ptq/validate.h — checks a float model must pass before perch quantizes it.
//
// Policy for non-finite weights: perch refuses to quantize a model whose Conv/Gemm/MatMul weights or
// biases, or BatchNormalization parameters (folded into those weights), hold NaN or ±Inf. There is no
// meaningful int8 scale for them and any replacement value would be a silent guess; the error names the
// model, the node, the tensor, the count and the first bad element's coordinates so the user can fix the
// export. (Other initializers may hold ±Inf legitimately — attention masks, Clip bounds — and are not
// checked.) Non-finite *activations* are handled by the calibration estimators: an error by default,
// skipped and counted with ignore_nonfinite (`perch quantize --ignore-nonfinite`).
#pragma once

#include "perch/graph/ir.h"

namespace perch::ptq {

// Throws perch::Error on the first weight-like initializer holding NaN/Inf (see above).
void check_finite_weights(const graph::Model& model);

// perch quantizes float32 models: a float16 graph input, output or initializer, or a Cast/CastLike to float16, is
// refused naming it (the executor runs such models, computing in float32 and rounding to float16 per op, but a QDQ
// model of them would need float16 scales). graph::upcast_float16 converts one (the CLI applies it, with a note).
void check_no_float16(const graph::Model& model);

// Whether `n` is one of ONNX's quantization ops (default domain): QuantizeLinear, DequantizeLinear,
// DynamicQuantizeLinear, QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger.
bool is_quantization_op(const graph::Node& n);

// A model that already holds quantization (QuantizeLinear / DequantizeLinear, DynamicQuantizeLinear, QLinearConv,
// QLinearMatMul, ConvInteger, MatMulInteger) would get a second layer of it: refused, listing what it holds and
// what to do with it instead (perch eval / run / bench --engine int8).
void check_not_quantized(const graph::Model& model);

}  // namespace perch::ptq
