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

// Removes Identity nodes (rewiring their consumers), except where the Identity produces a graph output.
int remove_identities(Model& model);

// All of the above, in order; returns a summary like "folded 3 BatchNormalization, 2 Constant".
std::string canonicalize(Model& model);

}  // namespace perch::graph
