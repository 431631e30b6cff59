// Writes the seed corpora of the fuzz targets into <out>/<target>/: ONNX node-test models (Debian
// libonnx-testdata) and a small CNN for fuzz_onnx_load, perch-encoded .npy / .idx tensors of every type
// and a few shapes, short byte strings for fuzz_qdq (FuzzedDataProvider input), and QDQ models for
// fuzz_int8_lower (the integer-op node tests and the small CNN quantized by perch four ways).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "perch/core/file_io.h"
#include "perch/core/progress.h"
#include "perch/data/dataset.h"
#include "perch/data/idx.h"
#include "perch/data/npy.h"
#include "perch/graph/onnx_io.h"
#include "perch/ptq/quantize.h"

namespace fs = std::filesystem;
using namespace perch;

namespace {

Tensor numbered(DType dt, Shape shape) {
  Tensor t(dt, std::move(shape));
  for (int64_t i = 0; i < t.numel(); ++i) {
    switch (dt) {
      case DType::kFloat32: t.data<float>()[i] = 0.5f * static_cast<float>(i) - 1.0f; break;
      case DType::kFloat64: t.data<double>()[i] = 0.25 * static_cast<double>(i); break;
      case DType::kInt8: t.data<int8_t>()[i] = static_cast<int8_t>(i - 3); break;
      case DType::kUInt8: t.data<uint8_t>()[i] = static_cast<uint8_t>(i * 7); break;
      case DType::kInt16: t.data<int16_t>()[i] = static_cast<int16_t>(i * 100); break;
      case DType::kUInt16: t.data<uint16_t>()[i] = static_cast<uint16_t>(i * 300); break;
      case DType::kInt32: t.data<int32_t>()[i] = static_cast<int32_t>(i * 100000); break;
      case DType::kInt64: t.data<int64_t>()[i] = i - 2; break;
      case DType::kBool: t.data<bool>()[i] = i % 2; break;
    }
  }
  return t;
}

Tensor scalar_f(float v) {
  Tensor t(DType::kFloat32, {});
  t.data<float>()[0] = v;
  return t;
}
Tensor scalar_u8(uint8_t v) {
  Tensor t(DType::kUInt8, {});
  t.data<uint8_t>()[0] = v;
  return t;
}

// A model with one float input "x" of `shape` and one float output "y"; the caller adds opsets and nodes.
graph::Model float_io_model(Shape shape) {
  graph::Model m;
  m.ir_version = 8;
  graph::ValueInfo in;
  in.name = "x", in.dtype = DType::kFloat32, in.shape = std::move(shape), in.has_shape = true;
  in.dim_names.assign(in.shape.size(), "");
  m.graph.inputs = {in};
  graph::ValueInfo outv;
  outv.name = "y", outv.dtype = DType::kFloat32;
  m.graph.outputs = {outv};
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path out = argv[1];
  for (const char* t : {"fuzz_onnx_load", "fuzz_npy", "fuzz_idx", "fuzz_qdq", "fuzz_int8_lower"})
    fs::create_directories(out / t);
  int onnx = 0, npy = 0, idx = 0, qdq = 0, lower = 0;

  // ONNX: node-test models up to 4 KiB (hundreds of ops, opsets and attribute forms).
  const fs::path node_dir = "/usr/share/libonnx-testdata/data/node";
  std::error_code ec;
  if (fs::is_directory(node_dir, ec))
    for (const auto& e : fs::directory_iterator(node_dir)) {
      const fs::path model = e.path() / "model.onnx";
      if (!fs::exists(model) || fs::file_size(model) > 4096) continue;
      fs::copy_file(model, out / "fuzz_onnx_load" / (e.path().filename().string() + ".onnx"),
                    fs::copy_options::overwrite_existing);
      ++onnx;
      // The integer ops and Q/DQ tests also seed the lowering target.
      const std::string name = e.path().filename().string();
      for (const char* key : {"qlinear", "integer", "quantizelinear", "uint8", "int8"})
        if (name.find(key) != std::string::npos) {
          fs::copy_file(model, out / "fuzz_int8_lower" / (name + ".onnx"), fs::copy_options::overwrite_existing);
          ++lower;
          break;
        }
    }
  {
    // A small Conv -> Relu -> Gemm model of perch's own (initializers, attributes, value infos).
    graph::Model m;
    m.opsets = {{"", 13}};
    auto& g = m.graph;
    g.inputs.push_back({"x", DType::kFloat32, {-1, 1, 4, 4}, {"N", "", "", ""}, true});
    g.outputs.push_back({"y", DType::kFloat32, {-1, 2}, {"N", ""}, true});
    g.initializers["w"] = numbered(DType::kFloat32, {2, 1, 3, 3});
    g.initializers["b"] = numbered(DType::kFloat32, {2});
    g.initializers["w2"] = numbered(DType::kFloat32, {2, 8});
    graph::Node c{"conv", "Conv", "", {"x", "w", "b"}, {"c"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}}};
    graph::Node r{"relu", "Relu", "", {"c"}, {"r"}, {}};
    graph::Node p{"pool", "MaxPool", "", {"r"}, {"p"}, {{"kernel_shape", std::vector<int64_t>{2, 2}}, {"strides", std::vector<int64_t>{2, 2}}}};
    graph::Node f{"flat", "Flatten", "", {"p"}, {"f"}, {}};
    graph::Node gm{"gemm", "Gemm", "", {"f", "w2"}, {"y"}, {{"transB", int64_t{1}}}};
    g.nodes = {c, r, p, f, gm};
    write_file_atomic(out / "fuzz_onnx_load" / "perch_cnn.onnx", graph::model_to_bytes(m));
    ++onnx;
    // The same model quantized by perch (QDQ): per-channel and per-tensor weights, uint8 and int8
    // activations, the patterns the integer runtime lowers.
    Dataset calib;
    calib.images = Tensor(DType::kFloat32, {8, 1, 4, 4});
    std::mt19937 img_rng(3);
    for (float& v : calib.images.span<float>()) v = std::uniform_real_distribution<float>(-1, 1)(img_rng);
    calib.name = "seed images";
    for (int variant = 0; variant < 4; ++variant) {
      ptq::PtqOptions o;
      o.bias_correction = variant % 2 == 0;
      o.weights.granularity = variant % 2 ? quant::Granularity::kPerTensor : quant::Granularity::kPerChannel;
      o.activations.is_signed = variant >= 2;
      set_quiet(true);
      const ptq::PtqResult q = ptq::quantize_model(m, calib, o);
      write_file_atomic(out / "fuzz_int8_lower" / ("perch_cnn_qdq" + std::to_string(variant) + ".onnx"),
                        graph::model_to_bytes(q.model));
      ++lower;
    }
  }

  // fuzz_int8_lower: an ONNX Runtime "QOperator" graph (QLinearConv, MaxPool on uint8, the com.microsoft ops), which
  // the int8 executor first rewrites to QDQ (graph::expand_contrib_qops, qlinear_to_qdq).
  {
    graph::Model m = float_io_model({1, 4, 4, 4});
    m.opsets = {{"", 13}, {"com.microsoft", 1}};
    graph::Graph& g = m.graph;
    g.initializers["s"] = scalar_f(0.05f);
    g.initializers["z"] = scalar_u8(128);
    g.initializers["s2"] = scalar_f(0.1f);
    g.initializers["z2"] = scalar_u8(3);
    g.initializers["w"] = numbered(DType::kInt8, {4, 4, 1, 1});
    Tensor ws(DType::kFloat32, {4});
    for (int i = 0; i < 4; ++i) ws.data<float>()[i] = 0.01f * static_cast<float>(i + 1);
    g.initializers["ws"] = ws;
    g.initializers["wz"] = Tensor(DType::kInt8, {4});
    g.initializers["b"] = numbered(DType::kInt32, {4});
    g.initializers["gw"] = numbered(DType::kInt8, {3, 8});
    g.initializers["gs"] = scalar_f(0.02f);
    g.initializers["gz"] = Tensor(DType::kInt8, {});
    const std::string ms = "com.microsoft";
    g.nodes = {
        {"q", "QuantizeLinear", "", {"x", "s", "z"}, {"xq"}, {}},
        {"conv", "QLinearConv", "", {"xq", "s", "z", "w", "ws", "wz", "s2", "z2", "b"}, {"c"}, {}},
        {"pool", "MaxPool", "", {"c"}, {"p"}, {{"kernel_shape", std::vector<int64_t>{2, 2}}}},
        {"add", "QLinearAdd", ms, {"p", "s2", "z2", "p", "s2", "z2", "s2", "z2"}, {"a"}, {}},
        {"sig", "QLinearSigmoid", ms, {"a", "s2", "z2", "s", "z"}, {"g"}, {}},
        {"cat", "QLinearConcat", ms, {"s", "z", "g", "s", "z", "a", "s2", "z2"}, {"k"}, {{"axis", int64_t{1}}}},
        {"gap", "QLinearGlobalAveragePool", ms, {"k", "s", "z", "s2", "z2"}, {"m"}, {}},
        {"flat", "Flatten", "", {"m"}, {"f"}, {}},
        {"gemm", "QGemm", ms, {"f", "s2", "z2", "gw", "gs", "gz"}, {"y"}, {{"transB", int64_t{1}}}},
    };
    write_file_atomic(out / "fuzz_int8_lower" / "qoperator.onnx", graph::model_to_bytes(m));
    ++lower;
  }

  // fuzz_int8_lower: a QDQ graph with an elementwise chain on one 8-bit value (hardswish written as
  // x * Clip(x + 3, 0, 6) / 6, then a scalar Mul/Add and a Relu), which the int8 executor turns into one table.
  {
    graph::Model m = float_io_model({1, 2, 3, 3});
    m.opsets = {{"", 13}};
    graph::Graph& g = m.graph;
    g.initializers["s"] = scalar_f(0.05f);
    g.initializers["z"] = scalar_u8(140);
    g.initializers["s2"] = scalar_f(0.02f);
    g.initializers["z2"] = scalar_u8(10);
    g.initializers["three"] = scalar_f(3.0f);
    g.initializers["zero"] = scalar_f(0.0f);
    g.initializers["six"] = scalar_f(6.0f);
    g.initializers["a"] = scalar_f(0.8f);
    g.nodes = {
        {"q", "QuantizeLinear", "", {"x", "s", "z"}, {"xq"}, {}},
        {"dq", "DequantizeLinear", "", {"xq", "s", "z"}, {"xd"}, {}},
        {"add3", "Add", "", {"xd", "three"}, {"p"}, {}},
        {"clip", "Clip", "", {"p", "zero", "six"}, {"r6"}, {}},
        {"mul", "Mul", "", {"xd", "r6"}, {"xr"}, {}},
        {"div", "Div", "", {"xr", "six"}, {"h"}, {}},
        {"scale", "Mul", "", {"h", "a"}, {"h2"}, {}},
        {"shift", "Add", "", {"h2", "three"}, {"h3"}, {}},
        {"relu", "Relu", "", {"h3"}, {"r"}, {}},
        {"q2", "QuantizeLinear", "", {"r", "s2", "z2"}, {"rq"}, {}},
        {"dq2", "DequantizeLinear", "", {"rq", "s2", "z2"}, {"y"}, {}},
    };
    write_file_atomic(out / "fuzz_int8_lower" / "hardswish_chain.onnx", graph::model_to_bytes(m));
    ++lower;
  }

  // npy / idx: every type, scalar to rank 3.
  const DType types[] = {DType::kFloat32, DType::kFloat64, DType::kInt8, DType::kUInt8, DType::kInt16,
                         DType::kUInt16, DType::kInt32, DType::kInt64, DType::kBool};
  const Shape shapes[] = {{}, {3}, {2, 3}, {2, 1, 2}, {0, 4}};
  for (DType dt : types)
    for (const Shape& s : shapes) {
      const std::string name = std::string(dtype_name(dt)) + "_r" + std::to_string(s.size()) + (s.empty() || s[0] ? "" : "_empty");
      write_file_atomic(out / "fuzz_npy" / (name + ".npy"), encode_npy(numbered(dt, s)));
      ++npy;
      if (s.empty() || dt == DType::kInt64 || dt == DType::kBool || dt == DType::kUInt16) continue;
      write_file_atomic(out / "fuzz_idx" / (name + ".idx"), encode_idx(numbered(dt, s)));
      ++idx;
    }

  // qdq: random byte strings of a few lengths (the target decodes structure from them).
  std::mt19937 rng(7);
  for (int i = 0; i < 32; ++i) {
    std::string b(static_cast<size_t>(8 + 8 * i), '\0');
    for (auto& c : b) c = static_cast<char>(rng() & 0xff);
    write_file_atomic(out / "fuzz_qdq" / ("seed" + std::to_string(i)), b);
    ++qdq;
  }
  std::printf("seeds: fuzz_onnx_load %d, fuzz_npy %d, fuzz_idx %d, fuzz_qdq %d, fuzz_int8_lower %d in %s\n", onnx, npy,
              idx, qdq, lower, out.string().c_str());
  return 0;
}
