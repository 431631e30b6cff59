// perch/graph/onnx_io.h — ONNX files in and out of perch's IR, through Debian's libonnx protobuf types.
//
// Round trip guarantee: load(save(load(f))) has the same nodes, attributes, values and bit-identical
// initializers. Models with external data, or larger than protobuf's 2 GiB limit, are refused with a
// clear error. Saving is atomic (temporary file in the same folder, then rename).
#pragma once

#include <filesystem>
#include <string>

#include "perch/graph/ir.h"

namespace perch::graph {

Model load_model(const std::filesystem::path& path);
// `what` names the source in error messages.
Model model_from_bytes(const std::string& bytes, const std::string& what);
std::string model_to_bytes(const Model& model);
void save_model(const Model& model, const std::filesystem::path& path);

// A single serialized TensorProto (the input_N.pb / output_N.pb files of ONNX's backend tests).
Tensor read_tensor_pb(const std::filesystem::path& path);
void write_tensor_pb(const std::filesystem::path& path, const Tensor& t, const std::string& name);

}  // namespace perch::graph
