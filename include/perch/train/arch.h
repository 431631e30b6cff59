// perch/train/arch.h — small built-in architectures that `perch train` learns from scratch.
//
// Both take [N, C, H, W] images (Fashion-MNIST: C = 1, 28 x 28) and return logits [N, classes] named
// "logits"; the input is named "input" with a symbolic batch dimension "N". BatchNormalization is kept as
// its own node while training (batch statistics) and folded into the convolutions at export.
//
//   convnet: 3 x (Conv3x3 -> BN -> ReLU -> MaxPool2), Flatten, Gemm -> ReLU -> Gemm (the shape of
//            ../shared's fmnist_convnet, plus BN).
//   mbv2:    MobileNetV2-style: Conv3x3 stem -> inverted residual blocks (1x1 expand -> BN -> ReLU6 ->
//            3x3 depthwise -> BN -> ReLU6 -> 1x1 project -> BN, residual Add when shapes allow) with
//            (expansion, channels, repeats, stride) = (1,16,1,1) (4,24,2,2) (4,32,3,2) (4,64,2,1), 1x1 head
//            conv to 128, GlobalAveragePool, Gemm. ReLU6 is Clip(0, 6).
// Initialization: conv weights He-normal (fan-out, as torchvision's MobileNetV2), Gemm weights and biases
// uniform(+-1/sqrt(fan_in)), BN scale 1, shift 0, running mean 0, variance 1. Deterministic for a seed on
// every platform (perch's own generator, no std:: distributions).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "perch/graph/ir.h"

namespace perch::train {

struct ArchOptions {
  int64_t in_channels = 1, height = 28, width = 28, classes = 10;
  float width_mult = 1.0f;  // scales every channel count (rounded to a multiple of 8, at least 8)
  uint64_t seed = 1;
};

std::vector<std::string> arch_names();
// Throws naming the known architectures if `name` is not one of them.
graph::Model build_arch(const std::string& name, const ArchOptions& options = {});

}  // namespace perch::train
