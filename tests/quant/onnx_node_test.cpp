// ONNX backend node tests (Debian's libonnx-testdata): QuantizeLinear, DequantizeLinear and
// DynamicQuantizeLinear reproduced bit for bit with perch's primitives. Folders are found by glob, so
// newer test data (more cases) is picked up; absent data skips visibly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "perch/graph/onnx_io.h"
#include "perch/quant/params.h"
#include "test_util.h"

namespace perch::quant {
namespace {

namespace fs = std::filesystem;

const char* const kPrefixes[] = {"test_quantizelinear", "test_dequantizelinear", "test_dynamicquantizelinear"};

std::vector<std::string> node_test_folders() {
  std::vector<std::string> out;
  const fs::path dir = test::onnx_node_test_dir();
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    for (const char* p : kPrefixes) {
      if (name.rfind(p, 0) == 0 && fs::exists(e.path() / "test_data_set_0")) {
        out.push_back(name);
        break;
      }
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

Tensor read_pb(const fs::path& p) { return graph::read_tensor_pb(p); }

// Bitwise equality of two tensors (dtype, shape, bytes).
void expect_identical(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.dtype(), want.dtype()) << what << ": " << dtype_name(got.dtype()) << " vs " << dtype_name(want.dtype());
  ASSERT_EQ(got.shape(), want.shape()) << what << ": " << shape_str(got.shape()) << " vs " << shape_str(want.shape());
  ASSERT_EQ(0, std::memcmp(got.raw(), want.raw(), got.nbytes())) << what << " differs";
  if (got.dtype() == DType::kFloat32) {
    for (int64_t i = 0; i < got.numel(); ++i) {
      ASSERT_EQ(got.span<float>()[static_cast<size_t>(i)], want.span<float>()[static_cast<size_t>(i)]) << what << " at " << i;
    }
  }
}

// QuantSpec for (de)quantizing a tensor of shape `x_shape` with parameters shaped like `scale`, following
// the node's axis / block_size attributes (ONNX defaults: axis 1, block_size 0).
QuantSpec spec_for(DType storage, const Tensor& scale, const Shape& x_shape, const graph::Node* node) {
  QuantSpec spec;
  switch (storage) {
    case DType::kInt8: spec.bits = 8, spec.is_signed = true; break;
    case DType::kUInt8: spec.bits = 8, spec.is_signed = false; break;
    case DType::kInt16: spec.bits = 16, spec.is_signed = true; break;
    case DType::kUInt16: spec.bits = 16, spec.is_signed = false; break;
    default: PERCH_FAIL("storage type ", dtype_name(storage), " not supported by perch::quant");
  }
  spec.symmetric = false;
  const int64_t axis = node ? node->attr_int("axis", 1) : 1;
  const int64_t block = node ? node->attr_int("block_size", 0) : 0;
  if (scale.rank() == 0 || (scale.numel() == 1 && x_shape.size() == 0)) {
    spec.granularity = Granularity::kPerTensor;
  } else if (block > 0) {
    spec.granularity = Granularity::kPerGroup;
    spec.axis = axis;
    spec.group_size = block;
  } else {
    spec.granularity = Granularity::kPerChannel;
    spec.axis = axis;
  }
  return spec;
}

const graph::Node* find_node(const graph::Model& m, const std::string& op) {
  for (const auto& n : m.graph.nodes) {
    if (n.op_type == op) return &n;
  }
  return nullptr;
}

std::vector<int32_t> ints_of(const Tensor& t) {
  const std::vector<int64_t> v = t.to_i64_vector();
  return {v.begin(), v.end()};
}

class OnnxNodeTest : public ::testing::TestWithParam<std::string> {};

TEST_P(OnnxNodeTest, ReproducesExpectedOutputs) {
  const fs::path dir = test::onnx_node_test_dir() / GetParam();
  const fs::path data = dir / "test_data_set_0";
  const graph::Model model = graph::load_model(dir / "model.onnx");
  const std::string& name = GetParam();

  if (name.rfind("test_dynamicquantizelinear", 0) == 0) {
    // DynamicQuantizeLinear: uint8, asymmetric range widened to include 0, scale = (max - min) / 255,
    // zero_point = saturate(round(0 - min / scale)). The *_expanded variants compute the same thing.
    const Tensor x = read_pb(data / "input_0.pb");
    QuantSpec spec;
    spec.is_signed = false;
    spec.symmetric = false;
    const QuantParams p = params_from_tensor(spec, x);
    const Tensor y = quantize(x, p);
    expect_identical(y, read_pb(data / "output_0.pb"), name + " y");
    const Tensor scale = read_pb(data / "output_1.pb");
    const Tensor zp = read_pb(data / "output_2.pb");
    ASSERT_EQ(scale.numel(), 1);
    EXPECT_EQ(p.scale[0], scale.to_f32().span<float>()[0]) << name << " y_scale";
    EXPECT_EQ(p.zero_point[0], ints_of(zp)[0]) << name << " y_zero_point";
    return;
  }

  const bool is_quantize = name.rfind("test_quantizelinear", 0) == 0;
  const graph::Node* node = find_node(model, is_quantize ? "QuantizeLinear" : "DequantizeLinear");
  const Tensor x = read_pb(data / "input_0.pb");
  const Tensor scale = read_pb(data / "input_1.pb").to_f32();
  const Tensor want = read_pb(data / "output_0.pb");
  const bool has_zp = fs::exists(data / "input_2.pb");
  const Tensor zp_t = has_zp ? read_pb(data / "input_2.pb") : Tensor();
  // Storage type: the zero point's type, or the data's (dequantize), or uint8 (QuantizeLinear default).
  const DType storage = has_zp ? zp_t.dtype() : (is_quantize ? DType::kUInt8 : x.dtype());
  const QuantSpec spec = spec_for(storage, scale, x.shape(), node);
  std::vector<int32_t> zp = has_zp ? ints_of(zp_t) : std::vector<int32_t>(static_cast<size_t>(scale.numel()), 0);
  const auto sspan = scale.span<float>();
  const QuantParams p = make_params(spec, x.shape(), {sspan.begin(), sspan.end()}, std::move(zp));
  const Tensor got = is_quantize ? quantize(x, p) : dequantize(x, p);
  expect_identical(got, want, name);
}

// Names like "test_quantizelinear_axis" are valid gtest parameter names.
INSTANTIATE_TEST_SUITE_P(Onnx, OnnxNodeTest, ::testing::ValuesIn(node_test_folders()),
                         [](const ::testing::TestParamInfo<std::string>& i) { return i.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(OnnxNodeTest);

TEST(OnnxNodeTests, DataPresent) {
  if (!fs::is_directory(test::onnx_node_test_dir())) {
    GTEST_SKIP() << "ONNX node test data not installed at " << test::onnx_node_test_dir()
                 << " (Debian: libonnx-testdata); QuantizeLinear/DequantizeLinear conformance not checked";
  }
  EXPECT_GE(node_test_folders().size(), 3u) << "expected quantize/dequantize/dynamic folders";
}

}  // namespace
}  // namespace perch::quant
