#include "test_util.h"

#include "perch/core/error.h"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <cstdlib>
#include <map>
#include <random>

namespace perch::test {

std::filesystem::path source_dir() { return PERCH_SOURCE_DIR; }
std::filesystem::path binary_dir() { return PERCH_BINARY_DIR; }

std::filesystem::path shared_dir() {
  if (const char* env = std::getenv("PERCH_SHARED_DIR"); env && *env) {
    if (std::filesystem::is_directory(env)) return env;
  }
  auto p = source_dir().parent_path() / "shared";
  if (std::filesystem::is_directory(p)) return p;
  return {};
}

std::filesystem::path shared_model(const std::string& name) {
  auto s = shared_dir();
  if (s.empty()) return {};
  auto p = s / "models" / name;
  return std::filesystem::exists(p) ? p : std::filesystem::path{};
}

std::string perch_error(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected perch::Error, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected perch::Error, nothing thrown";
  return "";
}

void expect_contains(const std::string& s, const std::vector<std::string>& parts) {
  for (const auto& p : parts) EXPECT_NE(s.find(p), std::string::npos) << "missing '" << p << "' in: " << s;
}

std::string shell_quote(const std::filesystem::path& p) {
  std::string s(1, '\'');  // built with += : GCC 12 warns (falsely, -Wrestrict) on "'" + string
  s += p.string();
  s += '\'';
  return s;
}

CmdResult run_cmd(const std::string& cmd) {
  const auto err_file =
      std::filesystem::temp_directory_path() / ("perch_test_" + std::to_string(::getpid()) + ".err");
  CmdResult r;
  FILE* p = ::popen((cmd + " 2>" + err_file.string()).c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = ::pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream e(err_file);
  r.err.assign(std::istreambuf_iterator<char>(e), {});
  std::filesystem::remove(err_file);
  return r;
}

std::filesystem::path onnx_node_test_dir() { return "/usr/share/libonnx-testdata/data/node"; }

void add_node(graph::Graph& g, std::string op, std::vector<std::string> in, std::vector<std::string> out,
              std::map<std::string, graph::AttrValue> attrs) {
  graph::Node n;
  n.name = op + "_" + out.at(0);
  n.op_type = std::move(op);
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  n.attrs = std::move(attrs);
  g.nodes.push_back(std::move(n));
}

namespace {

// An empty opset-6 model (PyTorch 0.3's exporter) named `source`, with `x` and `y` of the given shapes.
graph::Model opset6_model(const std::string& source, Shape x, Shape y) {
  graph::Model m;
  m.opsets = {{"", 6}};
  m.ir_version = 3;
  m.source = source;
  std::vector<std::string> xd(x.size(), ""), yd(y.size(), "");
  xd[0] = yd[0] = "N";
  m.graph.inputs.push_back({"x", DType::kFloat32, std::move(x), xd, true});
  m.graph.outputs.push_back({"y", DType::kFloat32, std::move(y), yd, true});
  return m;
}

// Normal(0, 0.5) initializers from one generator.
struct NormalInit {
  std::mt19937 rng;
  std::normal_distribution<float> nd{0.0f, 0.5f};
  explicit NormalInit(uint32_t seed) : rng(seed) {}
  Tensor operator()(Shape s) {
    Tensor t(DType::kFloat32, s);
    for (auto& v : t.span<float>()) v = nd(rng);
    return t;
  }
};

}  // namespace

graph::Model tiny_cnn(uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto tensor = [&](Shape s, float scale, bool spread) {
    Tensor t(DType::kFloat32, s);
    const int64_t per = t.numel() / s[0];
    for (int64_t i = 0; i < t.numel(); ++i) {
      const float ch = spread ? std::pow(100.0f, static_cast<float>(i / per) / static_cast<float>(s[0] - 1)) / 100.0f : 1.0f;
      t.data<float>()[i] = nd(rng) * scale * ch;
    }
    return t;
  };
  graph::Model m;
  m.opsets = {{"", 13}};
  m.ir_version = 7;
  auto& g = m.graph;
  g.name = "tiny";
  g.inputs.push_back({"x", DType::kFloat32, {-1, 1, 8, 8}, {"N", "", "", ""}, true});
  g.outputs.push_back({"y", DType::kFloat32, {-1, 3}, {"N", ""}, true});
  g.initializers["w1"] = tensor({8, 1, 3, 3}, 0.5f, true);
  g.initializers["b1"] = tensor({8}, 0.1f, false);
  g.initializers["w2"] = tensor({8, 1, 3, 3}, 0.5f, false);
  g.initializers["b2"] = tensor({8}, 0.1f, false);
  g.initializers["w3"] = tensor({3, 8}, 1.0f, false);
  g.initializers["b3"] = tensor({3}, 0.1f, false);
  g.initializers["lo"] = Tensor::scalar_f32(0.0f);
  g.initializers["hi"] = Tensor::scalar_f32(6.0f);
  auto node = [&](std::string op, std::vector<std::string> in, std::vector<std::string> out,
                  std::map<std::string, graph::AttrValue> attrs = {}) { add_node(g, std::move(op), std::move(in), std::move(out), std::move(attrs)); };
  node("Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}});
  node("Relu", {"c1"}, {"r1"});
  node("MaxPool", {"r1"}, {"p1"}, {{"kernel_shape", std::vector<int64_t>{2, 2}}, {"strides", std::vector<int64_t>{2, 2}}});
  node("Conv", {"p1", "w2", "b2"}, {"c2"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}, {"group", int64_t{8}}});
  node("Clip", {"c2", "lo", "hi"}, {"r2"});
  node("Add", {"r2", "p1"}, {"a"});
  node("GlobalAveragePool", {"a"}, {"gp"});
  node("Flatten", {"gp"}, {"f"});
  node("Gemm", {"f", "w3", "b3"}, {"y"}, {{"transB", int64_t{1}}});
  return m;
}

graph::Model two_input_cnn() {
  graph::Model m = tiny_cnn(11);
  auto& g = m.graph;
  g.inputs.push_back({"s", DType::kFloat32, {-1, 8, 1, 1}, {"N", "", "", ""}, true});
  graph::Node add;
  add.op_type = "Add";
  add.name = "Add_shift";
  add.inputs = {"c1", "s"};
  add.outputs = {"a1"};
  g.nodes[1].inputs[0] = "a1";  // the Relu
  g.nodes.insert(g.nodes.begin() + 1, add);
  m.source = "two_input_cnn";
  return m;
}

graph::Model opset6_mlp(uint32_t seed) {
  graph::Model m = opset6_model("opset6_mlp", {-1, 10}, {-1, 3});
  auto& g = m.graph;
  NormalInit init(seed);
  for (const char* p : {"b1", "gamma", "beta", "mean"}) g.initializers[p] = init({8});
  g.initializers["w1"] = init({8, 10});
  Tensor var = init({8});
  for (auto& v : var.span<float>()) v = 0.5f + std::fabs(v);
  g.initializers["var"] = var;
  g.initializers["w2"] = init({3, 8});
  g.initializers["b2"] = init({3});
  add_node(g, "Gemm", {"x", "w1", "b1"}, {"h"}, {{"broadcast", int64_t{1}}, {"transB", int64_t{1}}});
  add_node(g, "BatchNormalization", {"h", "gamma", "beta", "mean", "var"}, {"bn"},
           {{"is_test", int64_t{1}}, {"spatial", int64_t{1}}, {"epsilon", 1e-5f}, {"momentum", 0.9f}});
  add_node(g, "Relu", {"bn"}, {"r"});
  add_node(g, "Gemm", {"r", "w2", "b2"}, {"y"}, {{"broadcast", int64_t{1}}, {"transB", int64_t{1}}});
  return m;
}

graph::Model opset6_convnet(uint32_t seed) {
  graph::Model m = opset6_model("opset6_convnet", {-1, 3, 8, 8}, {-1, 3});
  auto& g = m.graph;
  NormalInit init(seed);
  g.initializers["w1"] = init({4, 3, 3, 3});
  g.initializers["b1"] = init({4});
  g.initializers["w2"] = init({3, 2});
  g.initializers["b2"] = init({3});
  add_node(g, "Pad", {"x"}, {"p"}, {{"pads", std::vector<int64_t>{0, 0, 1, 1, 0, 0, 1, 1}}, {"value", 0.25f},
                                   {"mode", std::string("constant")}});
  add_node(g, "Conv", {"p", "w1", "b1"}, {"c"}, {{"kernel_shape", std::vector<int64_t>{3, 3}}});
  add_node(g, "Split", {"c"}, {"s1", "s2"}, {{"axis", int64_t{1}}, {"split", std::vector<int64_t>{2, 2}}});
  add_node(g, "Sum", {"s1", "s2"}, {"t"});
  add_node(g, "Relu", {"t"}, {"r"});
  add_node(g, "GlobalAveragePool", {"r"}, {"gp"});
  add_node(g, "Flatten", {"gp"}, {"f"});
  add_node(g, "Gemm", {"f", "w2", "b2"}, {"y"}, {{"broadcast", int64_t{1}}, {"transB", int64_t{1}}});
  return m;
}

graph::Model legacy_resize_net(int64_t opset, const std::string& op, const std::string& mode,
                               const std::vector<float>& scales, uint32_t seed) {
  graph::Model m = opset6_model("legacy_resize_net", {-1, 3, 6, 6}, {-1, 2, -1, -1});
  m.opsets = {{"", opset}};
  auto& g = m.graph;
  NormalInit init(seed);
  g.initializers["w1"] = init({4, 3, 3, 3});
  g.initializers["b1"] = init({4});
  g.initializers["w2"] = init({2, 4, 1, 1});
  g.initializers["b2"] = init({2});
  add_node(g, "Conv", {"x", "w1", "b1"}, {"c"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}});
  add_node(g, "Relu", {"c"}, {"r"});
  std::map<std::string, graph::AttrValue> attrs = {{"mode", mode}};
  std::vector<std::string> in = {"r"};
  if (op == "Upsample" && opset < 9) {
    attrs["scales"] = scales;
  } else {
    g.initializers["s"] = Tensor::from<float>({static_cast<int64_t>(scales.size())}, scales);
    in.push_back("s");
  }
  add_node(g, op, in, {"u"}, attrs);
  g.nodes.back().name = "up";
  add_node(g, "Conv", {"u", "w2", "b2"}, {"y"});
  return m;
}

graph::Model deconv_net(int64_t group, uint32_t seed) {
  graph::Model m = opset6_model("deconv_net", {-1, 4, 5, 5}, {-1, 3, 10, 10});
  m.opsets = {{"", 13}};
  m.ir_version = 7;
  auto& g = m.graph;
  NormalInit init(seed);
  g.initializers["w1"] = init({8, 4, 3, 3});
  g.initializers["b1"] = init({8});
  Tensor wt = init({8, 8 / group, 2, 2});
  // Output channel o of the transposed conv: W[g * cg + i, o % (8 / group), ...] for input channels of group
  // o / (8 / group); scale it by 100^(o / 7) / 100.
  const int64_t og = 8 / group;
  for (int64_t i = 0; i < 8; ++i)
    for (int64_t j = 0; j < og; ++j) {
      const int64_t o = (i / (8 / group)) * og + j;
      for (int64_t k = 0; k < 4; ++k)
        wt.data<float>()[(i * og + j) * 4 + k] *= std::pow(100.0f, static_cast<float>(o) / 7.0f) / 100.0f;
    }
  g.initializers["wt"] = wt;
  g.initializers["bt"] = init({8});
  g.initializers["w2"] = init({3, 8, 1, 1});
  g.initializers["b2"] = init({3});
  add_node(g, "Conv", {"x", "w1", "b1"}, {"c"}, {{"pads", std::vector<int64_t>{1, 1, 1, 1}}});
  add_node(g, "Relu", {"c"}, {"r"});
  add_node(g, "ConvTranspose", {"r", "wt", "bt"}, {"u"},
           {{"kernel_shape", std::vector<int64_t>{2, 2}}, {"strides", std::vector<int64_t>{2, 2}}, {"group", group}});
  g.nodes.back().name = "up";
  add_node(g, "Relu", {"u"}, {"ru"});
  add_node(g, "Conv", {"ru", "w2", "b2"}, {"y"});
  return m;
}

graph::Model conv3d_net(uint32_t seed) {
  graph::Model m = opset6_model("conv3d_net", {-1, 2, 6, 8, 8}, {-1, 4});
  m.opsets = {{"", 13}};
  m.ir_version = 7;
  auto& g = m.graph;
  NormalInit init(seed);
  Tensor w1 = init({8, 2, 3, 3, 3});
  for (int64_t o = 0; o < 8; ++o)
    for (int64_t k = 0; k < 54; ++k) w1.data<float>()[o * 54 + k] *= std::pow(100.0f, static_cast<float>(o) / 7.0f) / 100.0f;
  g.initializers["w1"] = w1;
  g.initializers["b1"] = init({8});
  g.initializers["wd"] = init({8, 1, 3, 3, 3});
  g.initializers["bd"] = init({8});
  g.initializers["w2"] = init({6, 8, 1, 1, 1});
  g.initializers["b2"] = init({6});
  g.initializers["wf"] = init({4, 6});
  g.initializers["bf"] = init({4});
  const std::vector<int64_t> pad1(6, 1);
  add_node(g, "Conv", {"x", "w1", "b1"}, {"c1"}, {{"pads", pad1}});
  add_node(g, "Relu", {"c1"}, {"r1"});
  add_node(g, "Conv", {"r1", "wd", "bd"}, {"cd"}, {{"pads", pad1}, {"group", int64_t{8}}});
  add_node(g, "Relu", {"cd"}, {"rd"});
  add_node(g, "MaxPool", {"rd"}, {"p"}, {{"kernel_shape", std::vector<int64_t>{2, 2, 2}}, {"strides", std::vector<int64_t>{2, 2, 2}}});
  add_node(g, "Conv", {"p", "w2", "b2"}, {"c2"});
  add_node(g, "AveragePool", {"c2"}, {"a"}, {{"kernel_shape", std::vector<int64_t>{3, 4, 4}}});
  add_node(g, "Flatten", {"a"}, {"f"});
  add_node(g, "Gemm", {"f", "wf", "bf"}, {"y"}, {{"transB", int64_t{1}}});
  return m;
}

Tensor uniform_tensor(Shape shape, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  Tensor t(DType::kFloat32, std::move(shape));
  for (auto& v : t.span<float>()) v = u(rng);
  return t;
}

Tensor uniform_tensor(Shape shape, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  return uniform_tensor(std::move(shape), rng, lo, hi);
}

Dataset tiny_cnn_inputs(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 2.0f);
  Dataset d;
  d.name = "random";
  d.images = Tensor(DType::kFloat32, {n, 1, 8, 8});
  for (auto& v : d.images.span<float>()) v = u(rng);
  return d;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  if (a.dtype() != DType::kFloat32) return std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
  const float* pa = a.data<float>();
  const float* pb = b.data<float>();
  for (int64_t i = 0; i < a.numel(); ++i)
    if (std::memcmp(pa + i, pb + i, 4) != 0 && !(std::isnan(pa[i]) && std::isnan(pb[i]))) return false;
  return true;
}

double max_rel_diff(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(a.shape(), b.shape());
  double d = 0, r = 0;
  for (int64_t i = 0; i < std::min(a.numel(), b.numel()); ++i) {
    d = std::max(d, std::fabs(static_cast<double>(a.data<float>()[i]) - b.data<float>()[i]));
    r = std::max(r, std::fabs(static_cast<double>(b.data<float>()[i])));
  }
  return d / r;
}

bool ort_u8s8_exact() {
  static const CmdResult probe = run_cmd("node " + shell_quote(source_dir() / "tools" / "ort" / "saturation.js"));
  // A probe that cannot run must not quietly turn the comparisons into their saturating-CPU form: every caller fails.
  if (probe.code != 0) ADD_FAILURE() << "tools/ort/saturation.js failed (exit " << probe.code << "): " << probe.err;
  return probe.code == 0 && probe.out.find("\"u8s8_exact\":true") != std::string::npos;
}

std::string ort_saturates_message() {
  return "this CPU's ONNX Runtime saturates u8 x s8 products (tools/ort/saturation.js: no VNNI), so its integer "
         "kernels are no reference for perch's exact engine; see docs/INTEGER.md";
}

}  // namespace perch::test
