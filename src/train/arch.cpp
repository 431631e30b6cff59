#include "perch/train/arch.h"

#include <cmath>
#include <numbers>

#include "perch/core/error.h"
#include "perch/core/random.h"

namespace perch::train {

namespace {

using Rng = SplitMix64;  // perch/core/random.h: the same numbers on every platform

class Builder {
 public:
  Builder(const ArchOptions& o, const std::string& name) : o_(o), rng_{o.seed * 0x100000001B3ull + 7} {
    PERCH_CHECK(o.in_channels > 0 && o.height > 0 && o.width > 0 && o.classes > 1, "architecture '", name,
                "': bad input geometry or class count");
    PERCH_CHECK(o.width_mult > 0 && std::isfinite(o.width_mult), "width multiplier must be positive");
    m_.graph.name = name;
    m_.producer_name = "perch";
    m_.set_opset(13);
    graph::ValueInfo in;
    in.name = "input";
    in.shape = {-1, o.in_channels, o.height, o.width};
    in.dim_names = {"N", "", "", ""};
    in.has_shape = true;
    m_.graph.inputs.push_back(in);
  }

  int64_t ch(int64_t c) const {
    const int64_t v = static_cast<int64_t>(std::lround(static_cast<double>(c) * o_.width_mult / 8.0)) * 8;
    return std::max<int64_t>(8, v);
  }

  std::string conv(const std::string& x, int64_t cin, int64_t cout, int64_t k, int64_t stride, int64_t group) {
    const std::string name = next("conv");
    Tensor w(DType::kFloat32, {cout, cin / group, k, k});
    const double sd = std::sqrt(2.0 / static_cast<double>(cout / group * k * k));  // He, fan-out
    for (auto& v : w.span<float>()) v = static_cast<float>(rng_.normal() * sd);
    m_.graph.initializers[name + ".weight"] = w;
    graph::Node n;
    n.name = name, n.op_type = "Conv", n.inputs = {x, name + ".weight"}, n.outputs = {name + "_out"};
    n.attrs["kernel_shape"] = std::vector<int64_t>{k, k};
    n.attrs["strides"] = std::vector<int64_t>{stride, stride};
    n.attrs["pads"] = std::vector<int64_t>{k / 2, k / 2, k / 2, k / 2};
    n.attrs["group"] = group;
    m_.graph.nodes.push_back(n);
    return n.outputs[0];
  }

  std::string bn(const std::string& x, int64_t c) {
    const std::string name = next("bn");
    auto fill = [&](const char* suffix, float v) {
      Tensor t(DType::kFloat32, {c});
      for (auto& e : t.span<float>()) e = v;
      m_.graph.initializers[name + suffix] = t;
      return name + suffix;
    };
    graph::Node n;
    n.name = name, n.op_type = "BatchNormalization";
    n.inputs = {x, fill(".scale", 1.0f), fill(".bias", 0.0f), fill(".running_mean", 0.0f), fill(".running_var", 1.0f)};
    n.outputs = {name + "_out"};
    n.attrs["epsilon"] = 1e-5f;
    n.attrs["momentum"] = 0.9f;
    m_.graph.nodes.push_back(n);
    return n.outputs[0];
  }

  std::string unary(const std::string& op, const std::string& x) { return node(op, {x}); }

  std::string relu6(const std::string& x) {
    if (!m_.graph.initializers.count("relu6.min")) {
      m_.graph.initializers["relu6.min"] = Tensor::scalar_f32(0.0f);
      m_.graph.initializers["relu6.max"] = Tensor::scalar_f32(6.0f);
    }
    return node("Clip", {x, "relu6.min", "relu6.max"});
  }

  std::string maxpool(const std::string& x) {
    std::string y = node("MaxPool", {x});
    m_.graph.nodes.back().attrs["kernel_shape"] = std::vector<int64_t>{2, 2};
    m_.graph.nodes.back().attrs["strides"] = std::vector<int64_t>{2, 2};
    return y;
  }

  std::string node(const std::string& op, std::vector<std::string> inputs) {
    graph::Node n;
    n.name = next(op);
    n.op_type = op, n.inputs = std::move(inputs), n.outputs = {n.name + "_out"};
    m_.graph.nodes.push_back(n);
    return n.outputs[0];
  }

  std::string gemm(const std::string& x, int64_t in, int64_t out) {
    const std::string name = next("fc");
    Tensor w(DType::kFloat32, {out, in}), b(DType::kFloat32, {out});
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    for (auto& v : w.span<float>()) v = static_cast<float>((2.0 * rng_.uniform() - 1.0) * bound);
    for (auto& v : b.span<float>()) v = static_cast<float>((2.0 * rng_.uniform() - 1.0) * bound);
    m_.graph.initializers[name + ".weight"] = w;
    m_.graph.initializers[name + ".bias"] = b;
    graph::Node n;
    n.name = name, n.op_type = "Gemm", n.inputs = {x, name + ".weight", name + ".bias"}, n.outputs = {name + "_out"};
    n.attrs["transB"] = int64_t{1};
    m_.graph.nodes.push_back(n);
    return n.outputs[0];
  }

  graph::Model finish(const std::string& logits) {
    // Rename the last value "logits".
    for (auto& n : m_.graph.nodes)
      for (auto& o : n.outputs)
        if (o == logits) o = "logits";
    graph::ValueInfo out;
    out.name = "logits";
    out.shape = {-1, o_.classes};
    out.dim_names = {"N", ""};
    out.has_shape = true;
    m_.graph.outputs.push_back(out);
    m_.graph.toposort();
    return m_;
  }

  const ArchOptions& o_;

 private:
  std::string next(const std::string& base) { return base + "_" + std::to_string(counter_++); }
  graph::Model m_;
  Rng rng_;
  int counter_ = 0;
};

graph::Model convnet(const ArchOptions& o) {
  Builder b(o, "convnet");
  std::string x = "input";
  int64_t cin = o.in_channels, h = o.height, w = o.width;
  for (int64_t c : {b.ch(32), b.ch(64), b.ch(64)}) {
    x = b.maxpool(b.unary("Relu", b.bn(b.conv(x, cin, c, 3, 1, 1), c)));
    cin = c, h /= 2, w /= 2;
  }
  PERCH_CHECK(h > 0 && w > 0, "convnet: input ", o.height, "x", o.width, " is too small for three 2x2 poolings");
  x = b.node("Flatten", {x});
  x = b.unary("Relu", b.gemm(x, cin * h * w, b.ch(128)));
  return b.finish(b.gemm(x, b.ch(128), o.classes));
}

graph::Model mbv2(const ArchOptions& o) {
  Builder b(o, "mbv2");
  int64_t cin = b.ch(16);
  std::string x = b.relu6(b.bn(b.conv("input", o.in_channels, cin, 3, 1, 1), cin));
  struct Stage {
    int64_t t, c, n, s;
  };
  for (const Stage& st : {Stage{1, 16, 1, 1}, Stage{4, 24, 2, 2}, Stage{4, 32, 3, 2}, Stage{4, 64, 2, 1}}) {
    const int64_t cout = b.ch(st.c);
    for (int64_t i = 0; i < st.n; ++i) {
      const int64_t stride = i == 0 ? st.s : 1, hidden = cin * st.t;
      std::string y = x;
      if (st.t != 1) y = b.relu6(b.bn(b.conv(y, cin, hidden, 1, 1, 1), hidden));
      y = b.relu6(b.bn(b.conv(y, hidden, hidden, 3, stride, hidden), hidden));
      y = b.bn(b.conv(y, hidden, cout, 1, 1, 1), cout);
      x = stride == 1 && cin == cout ? b.node("Add", {x, y}) : y;
      cin = cout;
    }
  }
  const int64_t head = b.ch(128);
  x = b.relu6(b.bn(b.conv(x, cin, head, 1, 1, 1), head));
  x = b.node("Flatten", {b.node("GlobalAveragePool", {x})});
  return b.finish(b.gemm(x, head, o.classes));
}

}  // namespace

std::vector<std::string> arch_names() { return {"convnet", "mbv2"}; }

graph::Model build_arch(const std::string& name, const ArchOptions& options) {
  if (name == "convnet") return convnet(options);
  if (name == "mbv2") return mbv2(options);
  PERCH_FAIL("unknown architecture '", name, "' (known: convnet, mbv2)");
}

}  // namespace perch::train
