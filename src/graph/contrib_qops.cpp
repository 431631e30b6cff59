// expand_contrib_qops: ONNX Runtime's quantized contrib operators (domain com.microsoft) rewritten into the
// QDQ form they are defined by. The formulas and the refusals are in passes.h; this file only builds nodes.
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "perch/core/error.h"
#include "perch/graph/passes.h"

namespace perch::graph {

namespace {

bool is_ms_domain(const std::string& d) { return d == "com.microsoft"; }

const std::set<std::string>& contrib_qops() {
  static const std::set<std::string> ops = {"QLinearAdd",         "QLinearMul",       "QLinearSigmoid",
                                            "QLinearLeakyRelu",   "QLinearConcat",    "QLinearAveragePool",
                                            "QLinearGlobalAveragePool", "QGemm"};
  return ops;
}

// What both rewrites share: fresh value / node names, and the nodes of the expansion being built (appended in
// order, so they replace the rewritten node at its place in the topological order).
class RewriteBase {
 protected:
  explicit RewriteBase(Model& m) : m_(m), g_(m.graph) {
    for (const auto& n : g_.nodes) {
      used_.insert(n.name);
      used_.insert(n.inputs.begin(), n.inputs.end());
      used_.insert(n.outputs.begin(), n.outputs.end());
    }
    for (const auto& v : g_.inputs) used_.insert(v.name);
    for (const auto& v : g_.outputs) used_.insert(v.name);
    for (const auto& [k, v] : g_.initializers) used_.insert(k);
  }
  std::string fresh(const std::string& base) {
    std::string c = base;
    for (int i = 1; used_.count(c); ++i) c = base + "_" + std::to_string(i);
    used_.insert(c);
    return c;
  }
  Node& add(const std::string& op, std::vector<std::string> in, std::vector<std::string> outs, const std::string& name) {
    Node n;
    n.op_type = op;
    n.name = name;
    while (!in.empty() && in.back().empty()) in.pop_back();
    n.inputs = std::move(in);
    n.outputs = std::move(outs);
    added_.push_back(std::move(n));
    return added_.back();
  }
  // DequantizeLinear(x, s, zp) of node `owner`'s input -> a new float value.
  std::string dq(const Node& owner, const std::string& x, const std::string& s, const std::string& zp,
                 const std::string& tag, std::optional<int64_t> axis = std::nullopt) {
    const std::string y = fresh(x + "_dequantized");
    Node& n = add("DequantizeLinear", {x, s, zp}, {y}, fresh(owner.name + "/DequantizeLinear_" + tag));
    if (axis) n.attrs["axis"] = *axis;
    return y;
  }
  // A bias scale s_a * s_b[c] (s_a one value, s_b one or one per channel) as a new float initializer, each product
  // rounded once in float as ONNX's reference and ONNX Runtime's quantizer compute it.
  std::string scale_product(const Node& owner, const Tensor& sa, const Tensor& sb) {
    Tensor s(DType::kFloat32, sb.shape());
    const Tensor af = sa.to_f32(), bf = sb.to_f32();
    for (int64_t i = 0; i < sb.numel(); ++i) s.data<float>()[i] = af.data<float>()[0] * bf.data<float>()[i];
    const std::string name = fresh(owner.name + "/bias_scale");
    g_.initializers[name] = std::move(s);
    return name;
  }
  // QuantizeLinear(x, s, zp) writing node `owner`'s own output.
  void q(const Node& owner, const std::string& x, const std::string& s, const std::string& zp) {
    add("QuantizeLinear", {x, s, zp}, {owner.outputs[0]}, fresh(owner.name + "/QuantizeLinear"));
  }

  Model& m_;
  Graph& g_;
  std::set<std::string> used_;
  std::vector<Node> added_;
};

class Expander : RewriteBase {
 public:
  explicit Expander(Model& m) : RewriteBase(m) {
    for (size_t i = 0; i < g_.nodes.size(); ++i)
      for (const auto& o : g_.nodes[i].outputs) producer_[o] = i;
  }

  int run() {
    std::vector<Node> out;
    out.reserve(g_.nodes.size());
    int expanded = 0;
    for (const Node& n : g_.nodes) {
      if (!is_ms_domain(n.domain) || !contrib_qops().count(n.op_type)) {
        out.push_back(n);
        continue;
      }
      PERCH_CHECK(n.outputs.size() == 1 && !n.outputs[0].empty(), m_.source, ": ", n.describe(),
                  " must have exactly one output");
      cur_ = &n;
      added_.clear();
      expand(n);
      for (auto& a : added_) out.push_back(std::move(a));
      ++expanded;
    }
    g_.nodes = std::move(out);
    return expanded;
  }

 private:
  [[noreturn]] void refuse(const std::string& why) const { PERCH_FAIL(m_.source, ": ", cur_->describe(), ": ", why); }

  // The element type of value v when it can be told from the graph (initializer, graph input, value_info, or
  // the zero point of the QuantizeLinear / contrib op producing it); nullopt otherwise.
  std::optional<DType> value_dtype(const std::string& v, int depth = 0) const {
    if (v.empty()) return std::nullopt;
    if (const Tensor* t = g_.initializer(v)) return t->dtype();
    for (const auto* list : {&g_.inputs, &g_.value_info, &g_.outputs})
      for (const auto& vi : *list)
        if (vi.name == v) return vi.dtype;
    auto it = producer_.find(v);
    if (it == producer_.end() || depth > 64) return std::nullopt;
    const Node& p = g_.nodes[it->second];
    if (p.op_type == "QuantizeLinear" && p.domain.empty())
      return p.input(2).empty() ? std::optional<DType>(DType::kUInt8) : value_dtype(p.input(2), depth + 1);
    if (is_ms_domain(p.domain) && contrib_qops().count(p.op_type)) {
      const size_t zi = p.op_type == "QGemm" ? 8 : p.op_type == "QLinearConcat" ? 1
                        : (p.op_type == "QLinearAdd" || p.op_type == "QLinearMul") ? 7 : 4;
      if (!p.input(zi).empty()) return value_dtype(p.input(zi), depth + 1);
      if (p.op_type == "QGemm") return p.input(7).empty() ? std::optional<DType>(DType::kFloat32) : DType::kUInt8;
      return value_dtype(p.input(0), depth + 1);
    }
    return std::nullopt;
  }

  // The 8-bit type shared by a node's quantized tensors: from any zero point present, else from the data inputs.
  DType eight_bit_type(const std::vector<size_t>& zps, const std::vector<size_t>& data) const {
    for (size_t i : zps)
      if (!cur_->input(i).empty()) {
        auto t = value_dtype(cur_->input(i));
        if (t) return *t;
      }
    for (size_t i : data) {
      auto t = value_dtype(cur_->input(i));
      if (t) return *t;
    }
    refuse("its zero points are omitted and the type of its 8-bit inputs cannot be told from the graph");
  }

  void check_8bit(DType t) const {
    if (t != DType::kUInt8 && t != DType::kInt8)
      refuse(std::string("8-bit tensors must be uint8 or int8, got ") + dtype_name(t));
  }

  // A zero point input name: the given one, or (omitted) a new scalar 0 of type t.
  std::string zero_point(const std::string& given, DType t) {
    if (!given.empty()) return given;
    if (t == DType::kUInt8) return "";  // QuantizeLinear / DequantizeLinear default: uint8 zero
    const std::string name = fresh(cur_->name + "/zero_point");
    g_.initializers[name] = Tensor(t, {});
    return name;
  }

  std::string dq(const std::string& x, const std::string& s, const std::string& zp, const std::string& tag,
                 std::optional<int64_t> axis = std::nullopt) {
    return RewriteBase::dq(*cur_, x, s, zp, tag, axis);
  }
  void q(const std::string& x, const std::string& s, const std::string& zp) { RewriteBase::q(*cur_, x, s, zp); }

  void require(size_t lo, size_t hi) const {
    const size_t k = cur_->inputs.size();
    if (k < lo || k > hi)
      refuse("expects " + std::to_string(lo) + (lo == hi ? "" : " to " + std::to_string(hi)) + " inputs, has " +
             std::to_string(k));
  }
  void require_present(std::initializer_list<size_t> idx) const {
    for (size_t i : idx)
      if (cur_->input(i).empty()) refuse("input " + std::to_string(i) + " is required");
  }

  // channels_last = 1: the 8-bit input is N, spatial..., C. The float pool reads NCHW, so the dequantized value is
  // transposed to channels-first and the pooled result back.
  std::pair<std::vector<int64_t>, std::vector<int64_t>> channels_last_perms(int64_t rank) const {
    if (rank < 3) refuse("channels_last needs an input of rank >= 3");
    std::vector<int64_t> to_first = {0, rank - 1}, to_last = {0};
    for (int64_t i = 1; i < rank - 1; ++i) to_first.push_back(i);
    for (int64_t i = 2; i < rank; ++i) to_last.push_back(i);
    to_last.push_back(1);
    return {to_first, to_last};
  }
  int64_t known_rank(const std::string& v) const {
    for (const auto* list : {&g_.inputs, &g_.value_info, &g_.outputs})
      for (const auto& vi : *list)
        if (vi.name == v && vi.has_shape) return static_cast<int64_t>(vi.shape.size());
    if (const Tensor* t = g_.initializer(v)) return t->rank();
    return -1;
  }

  void expand(const Node& n) {
    const std::string& op = n.op_type;
    if (op == "QLinearAdd" || op == "QLinearMul") {
      require(7, 8);
      require_present({0, 1, 3, 4, 6});
      const DType t = eight_bit_type({2, 5, 7}, {0, 3});
      check_8bit(t);
      const std::string a = dq(n.input(0), n.input(1), zero_point(n.input(2), t), "A");
      const std::string b = dq(n.input(3), n.input(4), zero_point(n.input(5), t), "B");
      const std::string c = fresh(n.outputs[0] + "_float");
      add(op == "QLinearAdd" ? "Add" : "Mul", {a, b}, {c}, n.name);
      q(c, n.input(6), zero_point(n.input(7), t));
    } else if (op == "QLinearSigmoid" || op == "QLinearLeakyRelu") {
      require(4, 5);
      require_present({0, 1, 3});
      const DType t = eight_bit_type({2, 4}, {0});
      check_8bit(t);
      const std::string x = dq(n.input(0), n.input(1), zero_point(n.input(2), t), "X");
      const std::string y = fresh(n.outputs[0] + "_float");
      Node& f = add(op == "QLinearSigmoid" ? "Sigmoid" : "LeakyRelu", {x}, {y}, n.name);
      if (op == "QLinearLeakyRelu") f.attrs["alpha"] = n.attr_float("alpha", 0.01f);
      q(y, n.input(3), zero_point(n.input(4), t));
    } else if (op == "QLinearGlobalAveragePool" || op == "QLinearAveragePool") {
      require(4, 5);
      require_present({0, 1, 3});
      const DType t = eight_bit_type({2, 4}, {0});
      check_8bit(t);
      std::string x = dq(n.input(0), n.input(1), zero_point(n.input(2), t), "X");
      const bool last = n.attr_int("channels_last", 0) != 0;
      std::vector<int64_t> to_last;
      if (last) {
        int64_t rank = known_rank(n.input(0));
        if (rank < 0 && op == "QLinearAveragePool") rank = 2 + static_cast<int64_t>(n.attr_ints("kernel_shape").size());
        if (rank < 0) refuse("channels_last = 1 and the rank of input '" + n.input(0) + "' is not recorded in the graph");
        auto [to_first, back] = channels_last_perms(rank);
        to_last = back;
        const std::string xt = fresh(x + "_nchw");
        add("Transpose", {x}, {xt}, fresh(n.name + "/Transpose_in")).attrs["perm"] = to_first;
        x = xt;
      }
      std::string y = fresh(n.outputs[0] + "_float");
      Node& p = add(op == "QLinearAveragePool" ? "AveragePool" : "GlobalAveragePool", {x}, {y}, n.name);
      if (op == "QLinearAveragePool")
        for (const auto& [k, v] : n.attrs)
          if (k != "channels_last") p.attrs[k] = v;
      if (last) {
        const std::string yt = fresh(y + "_nhwc");
        add("Transpose", {y}, {yt}, fresh(n.name + "/Transpose_out")).attrs["perm"] = to_last;
        y = yt;
      }
      q(y, n.input(3), zero_point(n.input(4), t));
    } else if (op == "QLinearConcat") {
      if (n.inputs.size() < 5 || (n.inputs.size() - 2) % 3 != 0)
        refuse("expects Y_scale, Y_zero_point and then (X, X_scale, X_zero_point) triples, has " +
               std::to_string(n.inputs.size()) + " inputs");
      if (!n.has_attr("axis")) refuse("the attribute 'axis' is required");
      std::vector<size_t> zps = {1}, data;
      for (size_t i = 2; i < n.inputs.size(); i += 3) zps.push_back(i + 2), data.push_back(i);
      const DType t = eight_bit_type(zps, data);
      check_8bit(t);
      require_present({0});
      std::vector<std::string> parts;
      for (size_t i = 2; i < n.inputs.size(); i += 3) {
        require_present({i, i + 1});
        parts.push_back(dq(n.input(i), n.input(i + 1), zero_point(n.input(i + 2), t), std::to_string((i - 2) / 3)));
      }
      const std::string y = fresh(n.outputs[0] + "_float");
      add("Concat", parts, {y}, n.name).attrs["axis"] = n.attr_int("axis", 0);
      q(y, n.input(0), zero_point(n.input(1), t));
    } else if (op == "QGemm") {
      expand_qgemm(n);
    }
  }

  // QGemm: Y = alpha * (A' B' + a_scale * b_scale[n] * C[m, n]) (ONNX Runtime accumulates the int32 C into the
  // int32 product before the single output scale alpha * a_scale * b_scale / y_scale), i.e. Gemm with beta = alpha
  // over DQ(A), DQ(B) and DQ(C) at scale a_scale * b_scale (per column when b_scale is).
  void expand_qgemm(const Node& n) {
    require(5, 9);
    require_present({0, 1, 3, 4});
    if (n.input(2).empty()) refuse("input 2 (a_zero_point) is required");
    const bool trans_b = n.attr_int("transB", 0) != 0;
    const float alpha = n.attr_float("alpha", 1.0f);
    const DType ta = eight_bit_type({2}, {0});
    check_8bit(ta);
    const DType tb = eight_bit_type({5}, {3});
    check_8bit(tb);
    const Tensor* sa = g_.initializer(n.input(1));
    const Tensor* sb = g_.initializer(n.input(4));
    const bool per_column = !sb || sb->numel() > 1;
    const std::string a = dq(n.input(0), n.input(1), n.input(2), "A");
    std::optional<int64_t> b_axis;
    if (per_column) b_axis = trans_b ? 0 : 1;
    const std::string b = dq(n.input(3), n.input(4), zero_point(n.input(5), tb), "B", b_axis);
    std::string c;
    if (!n.input(6).empty()) {
      // C's scale a_scale * b_scale: a constant computed here (float products, the value ONNX Runtime's quantizer
      // writes) when both are initializers, else a Mul node.
      std::string sc;
      if (sa && sb && sa->numel() == 1) {
        sc = scale_product(n, *sa, *sb);
      } else {
        sc = fresh(n.name + "/bias_scale");
        add("Mul", {n.input(1), n.input(4)}, {sc}, fresh(n.name + "/Mul_bias_scale"));
      }
      const Tensor* ct = g_.initializer(n.input(6));
      const int64_t c_rank = ct ? ct->rank() : known_rank(n.input(6));
      if (per_column) {
        // Per-column scale along C's last axis: C is [N] or [M, N] (a broadcast scalar C cannot carry it).
        if (c_rank != 1 && c_rank != 2)
          refuse("C must be 1-D or 2-D with a per-column b_scale (its rank is " +
                 (c_rank < 0 ? std::string("unknown") : std::to_string(c_rank)) + ")");
        c = dq(n.input(6), sc, "", "C", c_rank - 1);
      } else {
        c = dq(n.input(6), sc, "", "C");
      }
    }
    const bool quantized_out = !n.input(7).empty();
    const std::string y = quantized_out ? fresh(n.outputs[0] + "_float") : n.outputs[0];
    Node& gm = add("Gemm", {a, b, c}, {y}, n.name);
    if (n.attr_int("transA", 0) != 0) gm.attrs["transA"] = int64_t{1};
    if (trans_b) gm.attrs["transB"] = int64_t{1};
    if (alpha != 1.0f) {
      gm.attrs["alpha"] = alpha;
      if (!c.empty()) gm.attrs["beta"] = alpha;
    }
    if (quantized_out) {
      const DType ty = n.input(8).empty() ? DType::kUInt8 : value_dtype(n.input(8)).value_or(DType::kUInt8);
      check_8bit(ty);
      q(y, n.input(7), n.input(8));
    }
  }

  std::map<std::string, size_t> producer_;
  const Node* cur_ = nullptr;
};

// ---- qlinear_to_qdq ----

bool scalar_const(const Graph& g, const std::string& v) {
  const Tensor* t = g.initializer(v);
  return t && t->numel() == 1;
}
// Scalars, or a 1-D constant of n values.
bool channel_const(const Graph& g, const std::string& v, int64_t n) {
  const Tensor* t = g.initializer(v);
  return t && (t->numel() == 1 || (t->rank() == 1 && t->dim(0) == n));
}

class QLinearRewriter : RewriteBase {
 public:
  explicit QLinearRewriter(Model& m) : RewriteBase(m) {}

  int run() {
    std::vector<Node> out;
    int rewritten = 0;
    for (const Node& n : g_.nodes) {
      added_.clear();
      bool done = false;
      if (n.outputs.size() != 1 || n.outputs[0].empty()) done = false;  // malformed: left for the loader's checks
      else if (n.domain.empty() && n.op_type == "QLinearConv") done = conv(n);
      else if (n.domain.empty() && n.op_type == "QLinearMatMul") done = matmul(n);
      else if (n.domain.empty() && passthrough().count(n.op_type)) done = wrap(n);
      if (!done) {
        out.push_back(n);
      } else {
        ++rewritten;
        for (auto& a : added_) out.push_back(std::move(a));
      }
      for (const auto& o : out.back().outputs) producer_q_.erase(o);
      const Node& last = out.back();
      if (last.op_type == "QuantizeLinear" && last.domain.empty() && last.outputs.size() == 1 && scalar_const(g_, last.input(1)) &&
          (last.input(2).empty() || scalar_const(g_, last.input(2))))
        producer_q_[last.outputs[0]] = {last.input(1), last.input(2)};
    }
    g_.nodes = std::move(out);
    return rewritten;
  }

 private:
  static const std::set<std::string>& passthrough() {
    static const std::set<std::string> ops = {"MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity"};
    return ops;
  }
  bool io_params_ok(const Node& n) const {
    for (size_t i : {size_t{1}, size_t{6}})
      if (!scalar_const(g_, n.input(i))) return false;
    for (size_t i : {size_t{2}, size_t{7}})
      if (!n.input(i).empty() && !scalar_const(g_, n.input(i))) return false;
    return true;
  }

  bool conv(const Node& n) {
    const Tensor* w = g_.initializer(n.input(3));
    if (!w || w->rank() < 3 || !io_params_ok(n)) return false;
    const int64_t m = w->dim(0);
    if (!channel_const(g_, n.input(4), m) || (!n.input(5).empty() && !channel_const(g_, n.input(5), m))) return false;
    const Tensor* b = n.input(8).empty() ? nullptr : g_.initializer(n.input(8));
    if (!n.input(8).empty() && (!b || b->dtype() != DType::kInt32 || b->rank() != 1 || b->dim(0) != m)) return false;
    const bool per_channel = g_.initializer(n.input(4))->numel() > 1;
    const std::string x = dq(n, n.input(0), n.input(1), n.input(2), "x");
    const std::string wf = dq(n, n.input(3), n.input(4), n.input(5), "w", per_channel ? std::optional<int64_t>(0) : std::nullopt);
    std::string bf;
    if (b) bf = dq(n, n.input(8), scale_product(n, *g_.initializer(n.input(1)), *g_.initializer(n.input(4))), "", "B", per_channel ? std::optional<int64_t>(0) : std::nullopt);
    const std::string y = fresh(n.outputs[0] + "_float");
    Node& c = add("Conv", {x, wf, bf}, {y}, n.name);
    c.attrs = n.attrs;
    q(n, y, n.input(6), n.input(7));
    return true;
  }

  bool matmul(const Node& n) {
    const Tensor* w = g_.initializer(n.input(3));
    if (!w || w->rank() != 2 || !io_params_ok(n)) return false;
    const int64_t cols = w->dim(1);
    if (!channel_const(g_, n.input(4), cols) || (!n.input(5).empty() && !channel_const(g_, n.input(5), cols))) return false;
    const bool per_column = g_.initializer(n.input(4))->numel() > 1;
    const std::string a = dq(n, n.input(0), n.input(1), n.input(2), "a");
    const std::string b = dq(n, n.input(3), n.input(4), n.input(5), "b", per_column ? std::optional<int64_t>(1) : std::nullopt);
    const std::string y = fresh(n.outputs[0] + "_float");
    add("MatMul", {a, b}, {y}, n.name);
    q(n, y, n.input(6), n.input(7));
    return true;
  }

  // op(q) -> Q(op(DQ(q, s, zp)), s, zp) with (s, zp) of the QuantizeLinear that made q: exact, since these ops
  // only move or select values (max commutes with the increasing DQ; Q(DQ(q)) = q).
  bool wrap(const Node& n) {
    if (n.inputs.empty() || n.outputs.size() != 1) return false;
    auto it = producer_q_.find(n.input(0));
    if (it == producer_q_.end()) return false;
    const auto [s, zp] = it->second;
    const std::string x = dq(n, n.input(0), s, zp, "x");
    const std::string y = fresh(n.outputs[0] + "_float");
    Node& op = add(n.op_type, n.inputs, {y}, n.name);
    op.inputs[0] = x;
    op.attrs = n.attrs;
    q(n, y, s, zp);
    return true;
  }

  std::map<std::string, std::pair<std::string, std::string>> producer_q_;  // 8-bit value -> (scale, zero point)
};

}  // namespace

int expand_contrib_qops(Model& model) {
  bool any = false;
  for (const auto& n : model.graph.nodes)
    if (is_ms_domain(n.domain) && contrib_qops().count(n.op_type)) any = true;
  if (!any) return 0;
  return Expander(model).run();
}

}  // namespace perch::graph

namespace perch::graph {

int qlinear_to_qdq(Model& model) {
  bool any = false;
  for (const auto& n : model.graph.nodes)
    if (n.domain.empty() && (n.op_type == "QLinearConv" || n.op_type == "QLinearMatMul")) any = true;
  if (!any) return 0;
  return QLinearRewriter(model).run();
}

}  // namespace perch::graph
