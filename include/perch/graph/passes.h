// perch/graph/passes.h — graph rewrites that keep the model's function (up to float rounding).
#pragma once

#include "perch/graph/ir.h"

namespace perch::graph {

// Constant nodes become initializers (so weights given as Constant nodes are found by the quantizer).
int fold_constant_nodes(Model& model);

// Folds BatchNormalization (inference form) into the preceding Conv when the Conv's output feeds only
// that BN and its weights are initializers:
//   k_c = gamma_c / sqrt(var_c + eps);  W'[c] = W[c] * k_c;  b'_c = (b_c - mean_c) * k_c + beta_c
// Computed in double, rounded once to float. Returns the number of folded BNs; BNs that cannot be folded
// stay (the executor runs them).
int fold_batchnorm(Model& model);

// Folds a Mul or Add whose one input is a Conv output (read by nothing else, not a graph output) and whose
// other input is a constant broadcasting along the output-channel axis only (a scalar, [M], [M,1,1],
// [1,M,1,1], ...), into that Conv — exact algebra on the real numbers:
//   Mul by a:  W'[c] = a_c * W[c],  b'_c = a_c * b_c        Add of d:  b'_c = b_c + d_c
// (PaddlePaddle's LearnableAffineBlock, a scale/shift written as Mul/Add after a conv). Each new value is
// computed in double and rounded once to float. Repeats along a chain (Conv -> Mul -> Add folds twice). A Mul
// whose Conv weight is shared with another node is not folded. Returns the number of folded nodes.
int fold_conv_affine(Model& model);

// Removes Identity nodes (rewiring their consumers), except where the Identity produces a graph output; also
// inference Dropout (an identity: opset 7-11 always, before 7 with is_test set, from 12 without a training_mode
// input or with a constant false one) whose mask output nobody reads — exporters leave them in, and from opset
// 12 their `ratio` input form would otherwise block raising the opset for per-channel QDQ.
int remove_identities(Model& model);

// Makes a float16 model a float32 one: float16 initializers and tensor attributes widened (exactly), graph inputs,
// outputs and value_info declared float32, Cast/Cast-1 to float16 made casts to float32. The float32 model computes
// what the float16 one does without its per-op roundings to float16. Returns the number of values changed (0: the
// model had no float16); If/Loop/Scan subgraphs are widened too. `perch quantize`, `sensitivity` and `qat` apply it
// to a float16 model, with a note.
int upcast_float16(Model& model);

// Rewrites ONNX Runtime's quantized contrib operators (domain com.microsoft: the "QOperator" format of
// onnxruntime.quantization, and what ONNX Runtime writes when it saves an optimized QDQ model) into the QDQ
// subgraphs that define them, so both executors run them — the float executor as ONNX's DequantizeLinear ->
// op -> QuantizeLinear, the int8 executor by lowering those patterns to its integer kernels (docs/INTEGER.md):
//   QLinearAdd / QLinearMul (A, sA, zA, B, sB, zB, sC, zC)  -> Q(Add | Mul(DQ(A), DQ(B)), sC, zC)
//   QLinearSigmoid / QLinearLeakyRelu (X, sX, zX, sY, zY)    -> Q(Sigmoid | LeakyRelu(DQ(X)), sY, zY)
//   QLinearGlobalAveragePool / QLinearAveragePool (same)     -> Q(pool(DQ(X)), sY, zY); channels_last = 1:
//                                                               Transposes to channels-first and back around the pool
//   QLinearConcat (sY, zY, X0, s0, z0, X1, ...)              -> Q(Concat(DQ(X0), DQ(X1), ...), sY, zY)
//   QGemm (A, sA, zA, B, sB, zB, C, sY, zY)                  -> [Q](Gemm(DQ(A), DQ(B), DQ(C at scale sA·sB)),
//                                                               alpha, beta = alpha), i.e.
//                                                               Y = alpha·(A'B' + sA·sB·C) as ONNX Runtime computes it
// Omitted zero points are 0 of the node's 8-bit type. Each expansion keeps the contrib node's name on its
// float op and its output name on the final QuantizeLinear. A node the rewrite cannot express (wrong input
// count, 16-bit types, channels_last with an unknown rank) is refused naming it. Returns the number rewritten.
int expand_contrib_qops(Model& model);

// For the int8 executor: ONNX's QLinearConv and QLinearMatMul (with constant per-tensor activation
// parameters and constant weights, per-tensor or per output channel / column) become their defining QDQ
// subgraphs, Q(Conv(DQ(x), DQ(W), DQ(B at s_x·s_w)), s_y, z_y) and Q(MatMul(DQ(a), DQ(B)), s_y, z_y), which
// the int8 lowering packs for its fast kernels (the float executor keeps ONNX's exact integer loops). Then
// MaxPool / Flatten / Reshape / Squeeze / Unsqueeze / Identity applied to such an 8-bit value q = Q(v, s, zp)
// become Q(op(DQ(q, s, zp)), s, zp) — exact (they only move or select values; Q(DQ(q)) = q) — so the lowering
// sees the DQ -> op patterns it handles. Other forms stay as they are. Returns the number of nodes rewritten.
int qlinear_to_qdq(Model& model);

// All of the above, in order; returns a summary like "folded 3 BatchNormalization, 2 Constant".
std::string canonicalize(Model& model);

}  // namespace perch::graph
