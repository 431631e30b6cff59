// The integer executor: lowering of QDQ patterns to integer steps, and the run loop (header: int8_executor.h;
// the scheme, formulas and the sim-vs-int8 contract: docs/INTEGER.md).
#include "perch/runtime/int8_executor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <unordered_map>

#include "int8_kernels.h"
#include "ops_common.h"
#include "perch/core/threads.h"
#include "perch/graph/passes.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/dwconv_s8.h"
#include "perch/kernels/gemm_f32.h"
#include "perch/kernels/gemm_s8.h"
#include "perch/kernels/pool_f32.h"
#include "perch/quant/fixed_point.h"
#include "perch/quant/params.h"

namespace perch::runtime {

using graph::Node;
using kernels::Act8;
using kernels::OutputType;

int64_t Int8Report::integer_nodes() const {
  return std::count_if(nodes.begin(), nodes.end(), [](const Entry& e) { return e.integer; });
}
int64_t Int8Report::float_nodes() const { return static_cast<int64_t>(nodes.size()) - integer_nodes(); }

std::string Int8Report::summary() const {
  std::ostringstream os;
  os << integer_nodes() << " of " << nodes.size() << " nodes lowered to integer ops";
  if (float_nodes() == 0) {
    os << ", none in float";
  } else {
    os << ", " << float_nodes() << " in float:";
    for (const auto& e : nodes)
      if (!e.integer) os << "\n  " << e.node << ": " << e.how;
  }
  return os.str();
}

namespace {

// Per-tensor 8-bit quantization parameters of an activation: real = scale * (q - zero_point).
struct QParams {
  DType type = DType::kUInt8;
  float scale = 1.0f;
  int32_t zero_point = 0;
  int32_t qmin() const { return type == DType::kUInt8 ? 0 : -128; }
  int32_t qmax() const { return type == DType::kUInt8 ? 255 : 127; }
  Act8 act() const { return type == DType::kUInt8 ? Act8::kUInt8 : Act8::kInt8; }
  OutputType out() const { return type == DType::kUInt8 ? OutputType::kUInt8 : OutputType::kInt8; }
  bool operator==(const QParams& o) const {
    // Bitwise scale equality: the simulation's Q(DQ(q)) is the identity exactly when the parameters match.
    return type == o.type && zero_point == o.zero_point && std::memcmp(&scale, &o.scale, sizeof(float)) == 0;
  }
};

enum class Layout : uint8_t { kPlain, kNHWC };  // kPlain: as the ONNX graph has it (NCHW for rank 4)

// A runtime value.
struct Slot {
  Tensor t;
  Layout layout = Layout::kPlain;
};

// A float value the graph computes as DequantizeLinear(q, params): integer ops read q directly.
struct Alias {
  std::string q;  // the 8-bit value
  QParams params;
};

struct Ctx {
  std::unordered_map<std::string, Slot> values;
};

using Step = std::function<void(Ctx&)>;

Tensor to_layout(const Slot& s, Layout want) {
  if (s.layout == want || s.t.rank() != 4) return s.t;
  return want == Layout::kNHWC ? int8::nchw_to_nhwc(s.t) : int8::nhwc_to_nchw(s.t);
}

// The ONNX (NCHW) shape of a slot.
Shape onnx_shape(const Slot& s) {
  if (s.layout == Layout::kPlain || s.t.rank() != 4) return s.t.shape();
  return {s.t.dim(0), s.t.dim(3), s.t.dim(1), s.t.dim(2)};
}

// `t` (1-byte elements, ONNX layout) broadcast to `out` (NumPy rules; the shapes are compatible). Row by row over
// the last output dim: a row is a copy (input stride 1), a fill (stride 0) or, for an input of the same rank, both.
Tensor expand_bytes(const Tensor& t, const Shape& out) {
  Tensor y = Tensor::uninitialized(t.dtype(), out);
  if (y.numel() == 0) return y;
  const std::vector<int64_t> st = detail::broadcast_strides(t.shape(), out);
  const auto* src = static_cast<const uint8_t*>(t.raw());
  auto* dst = static_cast<uint8_t*>(y.raw());
  const size_t r = out.size();
  if (r == 0) {
    dst[0] = src[0];
    return y;
  }
  const int64_t inner = out[r - 1], si = st[r - 1], rows = y.numel() / inner;
  std::vector<int64_t> idx(r, 0);
  int64_t off = 0;  // input offset of the current row's first element
  for (int64_t row = 0; row < rows; ++row) {
    uint8_t* d = dst + row * inner;
    if (si == 0) std::memset(d, src[off], static_cast<size_t>(inner));
    else std::memcpy(d, src + off, static_cast<size_t>(inner));  // si == 1: the input's last dim equals inner
    for (size_t k = r - 1; k-- > 0;) {  // odometer over the outer output dims, the input offset in step
      off += st[k];
      if (++idx[k] < out[k]) break;
      off -= st[k] * out[k];
      idx[k] = 0;
    }
  }
  return y;
}

// The simulation's DequantizeLinear of every code 0..255 (index = the raw byte) under per-tensor parameters p.
Tensor code_values(const QParams& p) {
  Tensor codes(p.type, {256});
  for (int i = 0; i < 256; ++i) static_cast<uint8_t*>(codes.raw())[i] = static_cast<uint8_t>(i);
  quant::QuantSpec spec;
  spec.bits = 8, spec.is_signed = p.type == DType::kInt8, spec.symmetric = false;
  return quant::dequantize(codes, quant::make_params(spec, codes.shape(), {p.scale}, {p.zero_point}));
}

struct WeightInfo {
  Tensor q;                        // int8 or uint8 initializer
  std::vector<float> scale;        // 1 or per output channel
  std::vector<int32_t> zero_point; // empty when all 0
  int64_t axis = -1;               // per-channel axis, -1 per-tensor
};


}  // namespace

struct Int8Executor::Impl {
  graph::Model model;
  Int8Mode mode = Int8Mode::kInteger;
  Int8Report report;
  TensorMap constants;
  std::vector<Step> steps;
  std::vector<std::string> step_node, step_what;  // per step: the node it runs and how (lower(); profiling)
  std::shared_ptr<StepProfile> profile;           // set by enable_profiling()
  std::unordered_map<std::string, Alias> aliases;    // float value -> DQ(q)
  std::unordered_map<std::string, std::string> renames;  // value -> value it is identical to
  std::map<std::string, DType> qvalues;              // 8-bit values produced by steps, and their type
  std::vector<size_t> absorbed;                      // node indices handled by an earlier step
  const OpRegistry* registry = nullptr;

  Impl(graph::Model m, Int8Mode md);
  void lower();
  // Every node treats axis 0 as independent samples (checked after lowering): run() may then split a large
  // batch into sub-batches of kSubBatch images, whose activations stay in the L2 cache between steps.
  bool per_sample = false;
  static constexpr int64_t kSubBatch = 8;
  void check_per_sample();
  TensorMap run_whole(const TensorMap& inputs, const std::vector<std::string>& extra_outputs) const;

  // --- plan-time helpers ---
  std::string resolve(const std::string& v) const {
    std::string r = v;
    for (auto it = renames.find(r); it != renames.end(); it = renames.find(r)) r = it->second;
    return r;
  }
  const Tensor* constant(const std::string& v) const {
    auto it = constants.find(v);
    return it == constants.end() ? nullptr : &it->second;
  }
  const Alias* alias_of(const std::string& v) const {
    auto it = aliases.find(resolve(v));
    return it == aliases.end() ? nullptr : &it->second;
  }
  const Node* producer(const std::string& v) const {
    const int64_t p = model.graph.producer(v);
    return p < 0 ? nullptr : &model.graph.nodes[static_cast<size_t>(p)];
  }
  std::vector<const Node*> consumers(const std::string& v) const {
    std::vector<const Node*> out;
    for (size_t i : model.graph.consumers(v)) out.push_back(&model.graph.nodes[i]);
    return out;
  }
  size_t index_of(const Node* n) const { return static_cast<size_t>(n - model.graph.nodes.data()); }
  const OpKernel& kernel(const Node& n) const {
    const OpKernel* k = registry->find(n.op_type, n.domain, model.opset());
    PERCH_CHECK(k, model.source, ": ", n.describe(), ": op not supported at opset ", model.opset());
    return *k;
  }
  // Per-tensor 8-bit parameters of a Q/DQ node, or nullopt (per-axis, other types, non-constant).
  std::optional<QParams> qdq_params(const Node& n, DType data_type) const;

  // --- lowering rules; each returns false to leave the node to the float fallback (why in *reason) ---
  bool lower_conv_like(const Node& n, std::string* reason);
  void add_sim_conv_step(const Node& n, const WeightInfo& w, int64_t K, int64_t N, int64_t group, bool depthwise,
                         std::shared_ptr<std::vector<int32_t>> bias,
                         std::shared_ptr<std::vector<quant::FixedPointMultiplier>> mults,
                         std::shared_ptr<std::vector<float>> fscale, const kernels::OutputStageS8& stage,
                         const std::string& xq, const QParams& xp, const std::string& out_name);
  bool lower_maxpool(const Node& n, std::string* reason);
  bool lower_avgpool(const Node& n, std::string* reason);
  bool lower_reshape(const Node& n, std::string* reason);
  bool lower_table(const Node& n, std::string* reason);
  bool lower_chain(size_t start, std::string* reason);
  bool lower_concat(const Node& n, std::string* reason);
  // The 256-entry table of the simulation's own DequantizeLinear (parameters `from`) -> QuantizeLinear `qn`.
  std::shared_ptr<std::vector<uint8_t>> requant_table(const QParams& from, const Node& qn) const;
  // Runs kernel k of node n at plan/run time, errors re-raised naming the model and the node.
  std::vector<Tensor> run_named(const Node& n, const OpKernel& k, const std::vector<const Tensor*>& args) const;
  void lower_requant_table(const Node& q, const Alias& a, const QParams& p);
  void add_float_step(const Node& n);

  // The Q nodes (all with equal parameters) `v` feeds when it feeds nothing else, through an optional
  // Relu/Clip; fills the fused clamp range in quantized units. nullopt when the pattern does not hold.
  struct OutputQ {
    QParams params;
    std::vector<const Node*> qs;
    const Node* act = nullptr;  // fused Relu/Clip
    int32_t qmin = 0, qmax = 0;
  };
  std::optional<OutputQ> output_q(const std::string& v) const;
  // f (a table's float values) through o's fused Relu/Clip and its QuantizeLinear, with the float kernels: the codes.
  Tensor through_output_q(const OutputQ& o, Tensor f) const;
  // Marks the nodes of `o` absorbed and renames their outputs to `name`; returns `name`.
  std::string claim_output(const OutputQ& o);

  // --- run-time helpers ---
  Tensor float_value(Ctx& c, const std::string& v) const;
  const Slot& slot(Ctx& c, const std::string& v) const;
};

// ---------------------------------------------------------------------------------------------------------
// Plan-time helpers

std::optional<QParams> Int8Executor::Impl::qdq_params(const Node& n, DType data_type) const {
  if (data_type != DType::kUInt8 && data_type != DType::kInt8) return std::nullopt;
  if (n.attr_int("block_size", 0) != 0) return std::nullopt;
  const Tensor* s = constant(n.input(1));
  if (!s || s->numel() != 1 || s->dtype() != DType::kFloat32) return std::nullopt;
  QParams p;
  p.type = data_type;
  p.scale = s->data<float>()[0];
  if (!(p.scale > 0) || !std::isfinite(p.scale)) return std::nullopt;
  if (!n.input(2).empty()) {
    const Tensor* z = constant(n.input(2));
    if (!z || z->numel() != 1 || z->dtype() != data_type) return std::nullopt;
    p.zero_point = static_cast<int32_t>(z->to_i64_vector()[0]);
  }
  return p;
}

std::optional<Int8Executor::Impl::OutputQ> Int8Executor::Impl::output_q(const std::string& v) const {
  if (model.graph.is_graph_output(v)) return std::nullopt;
  auto cs = consumers(v);
  OutputQ o;
  std::string through = v;
  if (cs.size() == 1 && (cs[0]->op_type == "Relu" || cs[0]->op_type == "Clip")) {
    o.act = cs[0];
    through = o.act->outputs.at(0);
    if (model.graph.is_graph_output(through)) return std::nullopt;
    cs = consumers(through);
  }
  if (cs.empty()) return std::nullopt;
  for (const Node* q : cs) {
    if (q->op_type != "QuantizeLinear" || q->input(0) != through) return std::nullopt;
    // The Q output type: its zero point's type, uint8 when absent (or output_dtype).
    DType t = DType::kUInt8;
    if (!q->input(2).empty()) {
      const Tensor* z = constant(q->input(2));
      if (!z) return std::nullopt;
      t = z->dtype();
    }
    if (q->attr_int("output_dtype", 0) != 0) return std::nullopt;
    auto p = qdq_params(*q, t);
    if (!p) return std::nullopt;
    if (!o.qs.empty() && !(*p == o.params)) return std::nullopt;
    o.params = *p;
    o.qs.push_back(q);
  }
  o.qmin = o.params.qmin();
  o.qmax = o.params.qmax();
  if (o.act) {
    // Q is monotone, so Q(relu(y)) = max(Q(y), Q(0)) = max(Q(y), zp) and Q(clip(y, lo, hi)) =
    // clamp(Q(y), Q(lo), Q(hi)) exactly (Q(v) = clamp(nearbyint(v / s) + zp): the same formula the
    // simulation's QuantizeLinear uses for the bounds).
    float lo = 0.0f, hi = std::numeric_limits<float>::infinity();
    if (o.act->op_type == "Clip") {
      lo = -std::numeric_limits<float>::infinity();
      if (model.opset() < 11) {
        lo = o.act->attr_float("min", lo);
        hi = o.act->attr_float("max", hi);
      } else {
        for (int i : {1, 2}) {
          if (o.act->input(static_cast<size_t>(i)).empty()) continue;
          const Tensor* t = constant(o.act->input(static_cast<size_t>(i)));
          if (!t || t->numel() != 1) return std::nullopt;
          (i == 1 ? lo : hi) = t->to_f32().data<float>()[0];
        }
      }
    }
    auto qv = [&](float x) -> int64_t {
      if (std::isinf(x)) return x > 0 ? o.qmax : o.qmin;
      return quant::quantize_value(x, o.params.scale, o.params.zero_point, o.params.qmin(), o.params.qmax());
    };
    o.qmin = static_cast<int32_t>(std::max<int64_t>(o.qmin, qv(lo)));
    o.qmax = static_cast<int32_t>(std::min<int64_t>(o.qmax, qv(hi)));
    if (o.qmin > o.qmax) o.qmin = o.qmax;  // Clip with min > max: ONNX gives max everywhere
  }
  return o;
}

Tensor Int8Executor::Impl::through_output_q(const OutputQ& o, Tensor f) const {
  if (o.act) {
    std::vector<const Tensor*> aa{&f};
    for (size_t i = 1; i < o.act->inputs.size(); ++i)
      aa.push_back(o.act->inputs[i].empty() ? nullptr : constant(o.act->inputs[i]));
    f = kernel(*o.act)(*o.act, aa, model.opset()).at(0);
  }
  const Node& qn = *o.qs[0];
  std::vector<const Tensor*> qa{&f, constant(qn.input(1)), qn.input(2).empty() ? nullptr : constant(qn.input(2))};
  return kernel(qn)(qn, qa, model.opset()).at(0);
}

std::string Int8Executor::Impl::claim_output(const OutputQ& o) {
  const std::string name = o.qs[0]->outputs.at(0);
  if (o.act) absorbed.push_back(index_of(o.act));
  for (const Node* q : o.qs) {
    absorbed.push_back(index_of(q));
    if (q->outputs.at(0) != name) renames[q->outputs.at(0)] = name;
  }
  qvalues[name] = o.params.type;
  return name;
}

// ---------------------------------------------------------------------------------------------------------
// Run-time helpers

const Slot& Int8Executor::Impl::slot(Ctx& c, const std::string& v) const {
  const std::string r = resolve(v);
  auto it = c.values.find(r);
  if (it != c.values.end()) return it->second;
  auto k = constants.find(r);
  PERCH_CHECK(k != constants.end(), model.source, ": value '", v, "' is not available");
  return c.values[r] = Slot{k->second, Layout::kPlain};
}

// A float value: computed, constant, or materialized from its 8-bit source with the simulation's own
// DequantizeLinear (so a float node sees exactly what it sees in the simulation).
Tensor Int8Executor::Impl::float_value(Ctx& c, const std::string& v) const {
  const std::string r = resolve(v);
  if (const Alias* a = alias_of(r)) {
    auto it = c.values.find(r);
    if (it != c.values.end()) return it->second.t;
    const Tensor q = to_layout(slot(c, a->q), Layout::kPlain);
    // The simulation's DequantizeLinear of each code, through the 256-entry table of its values (one lookup each).
    const Tensor values = code_values(a->params);
    const float* table = values.data<float>();
    Tensor f = Tensor::uninitialized(DType::kFloat32, q.shape());
    const auto* qb = static_cast<const uint8_t*>(q.raw());
    float* fd = f.data<float>();
    for (int64_t i = 0; i < q.numel(); ++i) fd[i] = table[qb[i]];
    c.values[r] = Slot{f, Layout::kPlain};
    return f;
  }
  return to_layout(slot(c, r), Layout::kPlain);
}

void Int8Executor::Impl::add_float_step(const Node& n) {
  const OpKernel* k = &kernel(n);
  const int64_t opset = model.opset();
  steps.push_back([this, &n, k, opset](Ctx& c) {
    std::vector<Tensor> held;
    held.reserve(n.inputs.size());
    std::vector<const Tensor*> args;
    for (const auto& in : n.inputs) {
      if (in.empty()) {
        args.push_back(nullptr);
        continue;
      }
      held.push_back(float_value(c, in));
      args.push_back(nullptr);
    }
    for (size_t i = 0, h = 0; i < n.inputs.size(); ++i)
      if (!n.inputs[i].empty()) args[i] = &held[h++];
    std::vector<Tensor> outs;
    try {
      outs = (*k)(n, args, opset);
    } catch (const Error& e) {
      PERCH_FAIL(model.source, ": ", n.prefixed(e.what()));
    }
    for (size_t o = 0; o < n.outputs.size() && o < outs.size(); ++o)
      if (!n.outputs[o].empty()) c.values[n.outputs[o]] = Slot{std::move(outs[o]), Layout::kPlain};
  });
}

// ---------------------------------------------------------------------------------------------------------
// Conv / Gemm / MatMul


bool Int8Executor::Impl::lower_conv_like(const Node& n, std::string* reason) {
  const std::string& op = n.op_type;
  const Alias* xa = alias_of(n.input(0));
  if (!xa) return *reason = "input 0 is not a per-tensor 8-bit DequantizeLinear output", false;
  // Weight: DQ(int8/uint8 initializer, constant scale per-tensor or per-channel).
  const Node* wdq = producer(n.input(1));
  if (!wdq || wdq->op_type != "DequantizeLinear")
    return *reason = "weight is not a DequantizeLinear of an integer initializer", false;
  WeightInfo w;
  {
    const Tensor* wq = constant(wdq->input(0));
    const Tensor* ws = constant(wdq->input(1));
    if (!wq || !ws || (wq->dtype() != DType::kInt8 && wq->dtype() != DType::kUInt8))
      return *reason = "weight is not a DequantizeLinear of an int8/uint8 initializer", false;
    if (wdq->attr_int("block_size", 0) != 0) return *reason = "blocked (per-group) weight quantization", false;
    w.q = *wq;
    const Tensor sf = ws->to_f32();
    w.scale.assign(sf.data<float>(), sf.data<float>() + sf.numel());
    if (sf.numel() > 1) w.axis = normalize_axis(wdq->attr_int("axis", 1), wq->rank(), wdq->describe());
    if (!wdq->input(2).empty()) {
      const Tensor* z = constant(wdq->input(2));
      if (!z) return *reason = "weight zero point is not constant", false;
      for (int64_t v : z->to_i64_vector()) w.zero_point.push_back(static_cast<int32_t>(v));
      if (std::all_of(w.zero_point.begin(), w.zero_point.end(), [](int32_t v) { return v == 0; }) &&
          w.q.dtype() == DType::kInt8)
        w.zero_point.clear();
    }
  }
  // Geometry of the weight as a K x N matrix, the output-channel axis it must be quantized along.
  int64_t K = 0, N = 0, out_axis = 0;
  kernels::WeightLayout layout = kernels::WeightLayout::kNK;
  bool depthwise = false;
  int64_t group = 1;
  if (op == "Conv") {
    if (w.q.rank() != 4) return *reason = "only 2-D convolutions are lowered", false;
    group = n.attr_int("group", 1);
    N = w.q.dim(0);
    if (group == 1) {
      K = w.q.dim(1) * w.q.dim(2) * w.q.dim(3);
    } else if (w.q.dim(1) == 1 && group == N) {
      depthwise = true;
      if (!w.zero_point.empty() || w.q.dtype() != DType::kInt8)
        return *reason = "depthwise weights with a zero point (the int8 depthwise kernel is symmetric)", false;
    } else {
      return *reason = "grouped convolution (group " + std::to_string(group) + ", not depthwise)", false;
    }
    out_axis = 0;
  } else if (op == "Gemm") {
    if (n.attr_int("transA", 0) != 0) return *reason = "Gemm with transA", false;
    if (n.attr_float("alpha", 1.0f) != 1.0f || n.attr_float("beta", 1.0f) != 1.0f)
      return *reason = "Gemm with alpha/beta != 1", false;
    if (w.q.rank() != 2) return *reason = "weight is not 2-D", false;
    const bool tb = n.attr_int("transB", 0) != 0;
    K = tb ? w.q.dim(1) : w.q.dim(0);
    N = tb ? w.q.dim(0) : w.q.dim(1);
    layout = tb ? kernels::WeightLayout::kNK : kernels::WeightLayout::kKN;
    out_axis = tb ? 0 : 1;
  } else {  // MatMul
    if (w.q.rank() != 2) return *reason = "MatMul weight is not 2-D", false;
    K = w.q.dim(0), N = w.q.dim(1);
    layout = kernels::WeightLayout::kKN;
    out_axis = 1;
  }
  if (w.scale.size() > 1 && (w.axis != out_axis || static_cast<int64_t>(w.scale.size()) != N))
    return *reason = "weight scales are not per output channel", false;
  if (!w.zero_point.empty() && w.zero_point.size() != w.scale.size())
    return *reason = "weight zero point count differs from scale count", false;
  if (!depthwise && K > kernels::kMaxGemmS8K) return *reason = "K too large for the int32 accumulator bound", false;

  // Effective per-channel scales s_x * s_w[c] (double: the exact product of two floats).
  std::vector<double> acc_scale(static_cast<size_t>(N));
  for (int64_t c = 0; c < N; ++c)
    acc_scale[static_cast<size_t>(c)] = double{xa->params.scale} * double{w.scale[w.scale.size() == 1 ? 0 : c]};

  // Bias -> int32 in units of s_x * s_w[c].
  auto bias = std::make_shared<std::vector<int32_t>>();
  const std::string bname = op == "Gemm" || op == "Conv" ? n.input(2) : std::string();
  if (!bname.empty()) {
    const Node* bdq = producer(bname);
    const Tensor* bq = bdq && bdq->op_type == "DequantizeLinear" ? constant(bdq->input(0)) : nullptr;
    const Tensor* bs = bq ? constant(bdq->input(1)) : nullptr;
    const Tensor* bf = constant(bname);  // the folded float bias (always present when bname is constant)
    if (!bf) return *reason = "bias is not constant", false;
    if (bf->numel() != N) return *reason = "bias is not one value per output channel (broadcast bias)", false;
    bias->resize(static_cast<size_t>(N));
    bool direct = bq && bs && bq->dtype() == DType::kInt32 && bq->numel() == N &&
                  (bdq->input(2).empty() || (constant(bdq->input(2)) && constant(bdq->input(2))->to_i64_vector() ==
                                                                             std::vector<int64_t>(constant(bdq->input(2))->numel(), 0)));
    const Tensor bsf = direct ? bs->to_f32() : Tensor();
    for (int64_t c = 0; direct && c < N; ++c) {
      // The int32 bias is used as is when its scale is s_x * s_w[c] up to float rounding of the product
      // (what perch and ONNX Runtime's quantizer write): relative difference <= 2^-22.
      const double sb = bsf.data<float>()[bsf.numel() == 1 ? 0 : c];
      direct = std::fabs(sb - acc_scale[static_cast<size_t>(c)]) <= std::ldexp(acc_scale[static_cast<size_t>(c)], -22);
    }
    const Tensor bff = bf->to_f32();
    for (int64_t c = 0; c < N; ++c) {
      if (direct) {
        (*bias)[static_cast<size_t>(c)] = bq->data<int32_t>()[c];
      } else {
        // Float bias (or another scale): round(b / (s_x s_w[c])) half away from zero, must fit int32.
        const double v = std::round(double{bff.data<float>()[c]} / acc_scale[static_cast<size_t>(c)]);
        if (!(std::fabs(v) < 2147483647.0)) return *reason = "bias does not fit int32 at scale s_x * s_w", false;
        (*bias)[static_cast<size_t>(c)] = static_cast<int32_t>(v);
      }
    }
  }

  // Output: 8-bit through Q (fused Relu/Clip), or float (the int32 accumulator dequantized).
  auto oq = output_q(n.outputs.at(0));
  auto mults = std::make_shared<std::vector<quant::FixedPointMultiplier>>();
  auto fscale = std::make_shared<std::vector<float>>();
  if (oq) {
    for (int64_t c = 0; c < N; ++c)
      mults->push_back(quant::quantize_multiplier(acc_scale[static_cast<size_t>(c)] / double{oq->params.scale}));
  } else {
    for (double s : acc_scale) fscale->push_back(static_cast<float>(s));
  }
  const std::string out_name = oq ? claim_output(*oq) : n.outputs.at(0);
  const std::string xq = xa->q;
  const QParams xp = xa->params;
  kernels::OutputStageS8 stage;
  if (oq) {
    stage.type = oq->params.out();
    stage.num_multipliers = N;
    stage.zero_point = oq->params.zero_point;
    stage.qmin = oq->qmin;
    stage.qmax = oq->qmax;
  } else {
    stage.type = OutputType::kInt32;
  }

  std::ostringstream how;
  const std::string fused = oq && oq->act ? ", fused " + oq->act->op_type : "";
  const std::string req = oq ? (N > 1 && w.scale.size() > 1 ? ", requant per-channel" : ", requant per-tensor")
                             : ", int32 -> float output";

  if (mode == Int8Mode::kSimulate) {
    add_sim_conv_step(n, w, K, N, group, depthwise, bias, mults, fscale, stage, xq, xp, out_name);
    how << "sim: " << op << (depthwise ? " (depthwise)" : "") << " accumulated in float over integer values" << req << fused;
    report.nodes.push_back({n.describe(), true, how.str()});
    return true;
  }

  if (op == "Conv" && depthwise) {
    auto packed = std::make_shared<kernels::PackedDepthwiseS8>(
        kernels::pack_depthwise_s8(w.q.data<int8_t>(), N, w.q.dim(2), w.q.dim(3)));
    const int64_t kh = w.q.dim(2), kw = w.q.dim(3);
    how << "int8 depthwise conv " << kh << "x" << kw << req << fused;
    // The kernel's per-call constants (offsets, output-stage tables per path), built once here.
    std::shared_ptr<const kernels::DepthwiseS8Prepared> prep;
    {
      kernels::DepthwiseS8Args proto;
      proto.channels = N;
      proto.x_type = xp.act();
      proto.x_zero_point = xp.zero_point;
      proto.w = packed.get();
      proto.bias = bias->empty() ? nullptr : bias->data();
      proto.out = stage;
      proto.out.multipliers = mults->empty() ? nullptr : mults->data();
      prep = kernels::prepare_depthwise_s8(proto);
    }
    steps.push_back([this, &n, packed, prep, bias, mults, fscale, stage, xq, xp, out_name, kh, kw, N](Ctx& c) {
      const Slot& xs = slot(c, xq);
      PERCH_CHECK(xs.t.rank() == 4, model.source, ": ", n.describe(), ": input must be 4-D, got ", shape_str(onnx_shape(xs)));
      const Tensor x = to_layout(xs, Layout::kNHWC);
      PERCH_CHECK(x.dim(3) == N, model.source, ": ", n.describe(), ": input has ", x.dim(3), " channels, weight ", N);
      const auto g = detail::geometry(n, {x.dim(1), x.dim(2)}, {kh, kw}, false);
      kernels::DepthwiseS8Args d;
      d.batch = x.dim(0), d.in_h = x.dim(1), d.in_w = x.dim(2), d.channels = N;
      d.x = x.raw();
      d.x_type = xp.act();
      d.x_zero_point = xp.zero_point;
      d.w = packed.get();
      d.stride_h = g.strides[0], d.stride_w = g.strides[1], d.dilation_h = g.dilations[0], d.dilation_w = g.dilations[1];
      d.pad_top = g.pads_begin[0], d.pad_left = g.pads_begin[1], d.pad_bottom = g.pads_end[0], d.pad_right = g.pads_end[1];
      d.bias = bias->empty() ? nullptr : bias->data();
      d.out = stage;
      d.out.multipliers = mults->empty() ? nullptr : mults->data();
      const int64_t oh = d.out_h(), ow = d.out_w();
      PERCH_CHECK(oh > 0 && ow > 0, model.source, ": ", n.describe(), ": input ", shape_str(onnx_shape(xs)), " too small");
      const DType yt = stage.type == OutputType::kUInt8 ? DType::kUInt8 : stage.type == OutputType::kInt8 ? DType::kInt8 : DType::kInt32;
      Tensor y = Tensor::uninitialized(yt, {d.batch, oh, ow, N});
      d.y = y.raw();
      try {
        kernels::depthwise_s8(d, *prep);
      } catch (const Error& e) {
        PERCH_FAIL(model.source, ": ", n.prefixed(e.what()));
      }
      if (yt != DType::kInt32) {
        c.values[out_name] = Slot{std::move(y), Layout::kNHWC};
        return;
      }
      // int32 -> float y = acc * s_x s_w[c], back to NCHW.
      Tensor f = Tensor::uninitialized(DType::kFloat32, {d.batch, N, oh, ow});
      const int32_t* a = y.data<int32_t>();
      float* fo = f.data<float>();
      const int64_t hw = oh * ow;
      for (int64_t b = 0; b < d.batch; ++b)
        for (int64_t p = 0; p < hw; ++p)
          for (int64_t ch = 0; ch < N; ++ch)
            fo[(b * N + ch) * hw + p] = static_cast<float>(a[(b * hw + p) * N + ch]) * (*fscale)[static_cast<size_t>(ch)];
      c.values[out_name] = Slot{std::move(f), Layout::kPlain};
    });
    report.nodes.push_back({n.describe(), true, how.str()});
    return true;
  }

  // GEMM-based: weights as K x N. Conv weights [N, C, KH, KW] are reordered to [N][KH][KW][C] (the NHWC patch
  // order of im2col) and packed with layout kNK.
  // Narrow kernel rows (kw * C < 16 bytes, not a multiple of 4, unit width dilation: first layers on 1 or 3
  // channels) are packed in kernel-row groups of R = 4 ceil(kw C / 4) bytes, k = i R + j C + c, with the weight zero
  // point at the other R - kw C positions of each group (int8_kernels.h, im2col_groups): a patch row is then one R-byte
  // copy per kernel row instead of one copy per tap. K becomes kh * R.
  Tensor wmat = w.q;
  int64_t kh = 1, kw = 1, cin = K, row_group = 0;
  if (op == "Conv") {
    cin = w.q.dim(1), kh = w.q.dim(2), kw = w.q.dim(3);
    const auto dil = n.attr_ints("dilations", {1, 1});
    if ((kw * cin) % 4 != 0 && kw * cin < 16 && !(kh == 1 && kw == 1) && dil.size() == 2 && dil[1] == 1)
      row_group = (kw * cin + 3) / 4 * 4;
    const int64_t row = row_group > 0 ? row_group : kw * cin;
    K = kh * row;
    wmat = Tensor::uninitialized(w.q.dtype(), {N, K});
    const auto* s = static_cast<const uint8_t*>(w.q.raw());
    auto* d = static_cast<uint8_t*>(wmat.raw());
    for (int64_t o = 0; o < N; ++o) {
      const int32_t zw = w.zero_point.empty() ? 0 : w.zero_point[w.zero_point.size() == 1 ? 0 : static_cast<size_t>(o)];
      std::memset(d + o * K, static_cast<uint8_t>(zw), static_cast<size_t>(K));  // the raw byte of the zero point
      for (int64_t ci = 0; ci < cin; ++ci)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j) d[o * K + i * row + j * cin + ci] = s[((o * cin + ci) * kh + i) * kw + j];
    }
  }
  std::shared_ptr<kernels::PackedWeightsS8> packed;
  try {
    packed = std::make_shared<kernels::PackedWeightsS8>(
        wmat.dtype() == DType::kInt8 ? kernels::pack_weights_s8(wmat.data<int8_t>(), K, N, layout, w.zero_point)
                                     : kernels::pack_weights_u8(wmat.data<uint8_t>(), K, N, layout,
                                                                w.zero_point.empty() ? std::vector<int32_t>{0} : w.zero_point));
  } catch (const Error& e) {
    return *reason = std::string("weight packing: ") + e.what(), false;
  }
  // The GEMM's per-call constants (zero-point terms, output-stage tables), built once here.
  std::shared_ptr<const kernels::GemmS8Prepared> prep;
  {
    kernels::GemmS8Args proto;
    proto.a_type = xp.act();
    proto.a_zero_point = xp.zero_point;
    proto.w = packed.get();
    proto.bias = bias->empty() ? nullptr : bias->data();
    proto.out = stage;
    proto.out.multipliers = mults->empty() ? nullptr : mults->data();
    prep = kernels::prepare_gemm_s8(proto);
  }
  const bool pointwise = op == "Conv" && kh == 1 && kw == 1;
  if (op == "Conv")
    how << "int8 conv " << kh << "x" << kw
        << (pointwise ? (cin % 4 == 0 ? " (GEMM; indirect GEMM if strided/padded)" : " (GEMM; im2col only if strided/padded)")
                      : row_group > 0 ? " kernel-row-group im2col+GEMM" : cin % 4 == 0 ? " indirect GEMM" : " im2col+GEMM")
        << req << fused;
  else
    how << "int8 " << op << " GEMM" << req << fused;

  steps.push_back([this, &n, packed, prep, bias, mults, fscale, stage, xq, xp, out_name, kh, kw, cin, K, N, op, row_group](Ctx& c) {
    const Slot& xs = slot(c, xq);
    kernels::GemmS8Args g;
    g.a_type = xp.act();
    g.a_zero_point = xp.zero_point;
    g.w = packed.get();
    g.bias = bias->empty() ? nullptr : bias->data();
    g.out = stage;
    g.out.multipliers = mults->empty() ? nullptr : mults->data();
    const DType yt = stage.type == OutputType::kUInt8 ? DType::kUInt8 : stage.type == OutputType::kInt8 ? DType::kInt8 : DType::kInt32;
    Tensor y;
    Layout ylayout = Layout::kPlain;
    int64_t batch = 0, oh = 0, ow = 0;
    try {
      if (op == "Conv") {
        PERCH_CHECK(xs.t.rank() == 4, "input must be 4-D, got ", shape_str(onnx_shape(xs)));
        const Tensor x = to_layout(xs, Layout::kNHWC);
        PERCH_CHECK(x.dim(3) == cin, "input has ", x.dim(3), " channels, the weight ", cin);
        const auto geo = detail::geometry(n, {x.dim(1), x.dim(2)}, {kh, kw}, false);
        int8::Im2Col ic{x.dim(0), x.dim(1), x.dim(2), cin, kh, kw, geo.strides[0], geo.strides[1], geo.dilations[0],
                        geo.dilations[1], geo.pads_begin[0], geo.pads_begin[1], 0, 0};
        ic.out_h = (ic.in_h + geo.pads_begin[0] + geo.pads_end[0] - geo.dilations[0] * (kh - 1) - 1) / geo.strides[0] + 1;
        ic.out_w = (ic.in_w + geo.pads_begin[1] + geo.pads_end[1] - geo.dilations[1] * (kw - 1) - 1) / geo.strides[1] + 1;
        PERCH_CHECK(ic.out_h > 0 && ic.out_w > 0, "input ", shape_str(onnx_shape(xs)), " is too small for the kernel");
        batch = x.dim(0), oh = ic.out_h, ow = ic.out_w;
        const int64_t M = batch * oh * ow;
        y = Tensor::uninitialized(yt, {batch, oh, ow, N});
        ylayout = Layout::kNHWC;
        g.m = M;
        g.ldc = N;
        const bool direct = kh == 1 && kw == 1 && ic.stride_h == 1 && ic.stride_w == 1 && geo.pads_begin[0] == 0 &&
                            geo.pads_begin[1] == 0 && geo.pads_end[0] == 0 && geo.pads_end[1] == 0;
        if (direct) {  // 1x1: the NHWC input is the patch matrix
          g.a = x.raw();
          g.lda = cin;
          g.c = y.raw();
          kernels::gemm_s8(g, *prep);
        } else if (cin % 4 == 0) {
          // Indirect GEMM (gemm_s8.h): no patch matrix; per row block (same blocks as below, over the threads) a
          // table of kh * kw pointers per output pixel into the NHWC input, or to a row of zero points for taps
          // in the padding. Bit-identical to the im2col route.
          const int64_t rows = std::max<int64_t>(16, std::min<int64_t>(256, (256 * 1024) / std::max<int64_t>(K, 1)));
          g.a = x.raw();  // for validate_indirect's null check; the kernel reads through the table
          g.lda = K;
          g.c = y.raw();
          const std::vector<uint8_t> pad_row(static_cast<size_t>(cin), static_cast<uint8_t>(xp.zero_point));
          const kernels::IndirectRowsS8 shape{nullptr, kh * kw, cin};
          {
            kernels::IndirectRowsS8 probe = shape;
            const uint8_t* one = pad_row.data();
            probe.rows = &one;
            kernels::validate_indirect(g, probe);
          }
          const size_t esz = dtype_size(yt);
          parallel_for(0, (M + rows - 1) / rows, [&](int64_t b0, int64_t b1) {
            std::vector<const uint8_t*> table(static_cast<size_t>(rows * kh * kw));
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t r0 = b * rows, r1 = std::min(M, r0 + rows);
              int8::conv_indirection_nhwc(ic, static_cast<const uint8_t*>(x.raw()), pad_row.data(), r0, r1, table.data());
              kernels::GemmS8Args gb = g;
              gb.m = r1 - r0;
              gb.c = static_cast<char*>(y.raw()) + static_cast<size_t>(r0 * N) * esz;
              kernels::IndirectRowsS8 ind = shape;
              ind.rows = table.data();
              kernels::gemm_s8_indirect_block(gb, ind, *prep, 0, gb.m, 0, N);
            }
          });
        } else {
          // Row blocks of the patch matrix, one buffer per block (L2-sized), blocks over the threads. The rows are
          // built by im2col (one copy per tap) or, for narrow kernel rows packed in kernel-row groups at lowering,
          // one R-byte copy per kernel row: from a padded copy of the images (no check per kernel row) unless the
          // pads and strides would make that copy large (hostile geometry: then the checked builder).
          const int64_t rows = row_group > 0 ? std::max<int64_t>(16, std::min<int64_t>(1024, (64 * 1024) / K))
                                             : std::max<int64_t>(16, std::min<int64_t>(256, (256 * 1024) / std::max<int64_t>(K, 1)));
          // Rows padded to a multiple of 4 bytes: the AVX-512 VNNI GEMM then reads them in place (gemm_s8.h).
          // Kernel-row groups are kh * R bytes, already a multiple of 4.
          g.lda = (K + 3) / 4 * 4;
          g.a = x.raw();  // for validate(); each block points at its own buffer
          g.c = y.raw();
          kernels::validate(g);
          const size_t esz = dtype_size(yt);
          const uint8_t pad = static_cast<uint8_t>(xp.zero_point);  // raw byte of the zero point (int8 too)
          const auto* xb = static_cast<const uint8_t*>(x.raw());
          int8::PaddedImages pi;
          std::vector<uint8_t> padded;
          if (row_group > 0) {
            PERCH_CHECK(ic.dil_w == 1, "width dilation changed after lowering");
            pi = int8::padded_geometry(ic);
            const int64_t in_bytes = ic.in_h * ic.in_w * cin;
            if (pi.rows <= 2 * ic.in_h + 64 && pi.row_bytes <= 2 * ic.in_w * cin + 256 &&
                pi.bytes_per_image() <= 4 * in_bytes + 65536) {
              padded.resize(static_cast<size_t>(batch * pi.bytes_per_image()));
              int8::pad_images_nhwc(ic, pi, xb, pad, padded.data());
            }
          }
          parallel_for(0, (M + rows - 1) / rows, [&](int64_t b0, int64_t b1) {
            std::vector<uint8_t> buf(static_cast<size_t>(rows * g.lda));
            for (int64_t b = b0; b < b1; ++b) {
              const int64_t r0 = b * rows, r1 = std::min(M, r0 + rows);
              if (row_group == 0) int8::im2col_nhwc(ic, xb, pad, r0, r1, buf.data(), g.lda);
              else if (!padded.empty()) int8::im2col_groups_padded(ic, pi, padded.data(), r0, r1, buf.data(), g.lda);
              else int8::im2col_groups(ic, xb, pad, r0, r1, buf.data(), g.lda);
              kernels::GemmS8Args gb = g;
              gb.m = r1 - r0;
              gb.a = buf.data();
              gb.c = static_cast<char*>(y.raw()) + static_cast<size_t>(r0 * N) * esz;
              kernels::gemm_s8_block(gb, *prep, 0, gb.m, 0, N);
            }
          });
        }
      } else {
        const Tensor x = to_layout(xs, Layout::kPlain);
        PERCH_CHECK(x.rank() >= 2 && x.dim(-1) == K, "input ", shape_str(x.shape()), " does not end in K = ", K);
        PERCH_CHECK(op == "MatMul" || x.rank() == 2, "Gemm input must be 2-D, got ", shape_str(x.shape()));
        const int64_t M = x.numel() / K;
        Shape ys = x.shape();
        ys.back() = N;
        y = Tensor::uninitialized(yt, ys);
        g.m = M, g.a = x.raw(), g.lda = K, g.c = y.raw(), g.ldc = N;
        kernels::gemm_s8(g, *prep);
      }
    } catch (const Error& e) {
      PERCH_FAIL(model.source, ": ", n.prefixed(e.what()));
    }
    if (yt != DType::kInt32) {
      c.values[out_name] = Slot{std::move(y), ylayout};
      return;
    }
    // int32 accumulator -> float: y = acc * (s_x s_w[c]) (one float rounding; see docs/INTEGER.md).
    const int32_t* a = y.data<int32_t>();
    if (ylayout == Layout::kNHWC) {
      Tensor f = Tensor::uninitialized(DType::kFloat32, {batch, N, oh, ow});
      float* fo = f.data<float>();
      const int64_t hw = oh * ow;
      for (int64_t b = 0; b < batch; ++b)
        for (int64_t p = 0; p < hw; ++p)
          for (int64_t ch = 0; ch < N; ++ch)
            fo[(b * N + ch) * hw + p] = static_cast<float>(a[(b * hw + p) * N + ch]) * (*fscale)[static_cast<size_t>(ch)];
      c.values[out_name] = Slot{std::move(f), Layout::kPlain};
    } else {
      Tensor f = Tensor::uninitialized(DType::kFloat32, y.shape());
      float* fo = f.data<float>();
      for (int64_t i = 0; i < y.numel(); ++i) fo[i] = static_cast<float>(a[i]) * (*fscale)[static_cast<size_t>(i % N)];
      c.values[out_name] = Slot{std::move(f), Layout::kPlain};
    }
  });
  report.nodes.push_back({n.describe(), true, how.str()});
  return true;
}

// The exact simulation of an integer Conv/Gemm/MatMul step (Int8Mode::kSimulate): the same lowering, but the
// accumulation runs on the float kernels over integer-valued tensors (q - zp_x) and (w - zp_w). Every
// partial sum of a dot product is bounded by B[c] = max|q - zp_x| * sum_k |w[c][k] - zp_w[c]|; while
// B[c] < 2^24 float addition of these integers is exact in any order (BLAS, SIMD), so the accumulator is the
// exact integer. A layer with a larger bound uses double accumulation (exact below 2^53). Then bias (int32)
// and the output stage of output_stage_s8.h, written out here on its own.
void Int8Executor::Impl::add_sim_conv_step(const Node& n, const WeightInfo& w, int64_t K, int64_t N, int64_t group,
                                           bool depthwise, std::shared_ptr<std::vector<int32_t>> bias,
                                           std::shared_ptr<std::vector<quant::FixedPointMultiplier>> mults,
                                           std::shared_ptr<std::vector<float>> fscale,
                                           const kernels::OutputStageS8& stage, const std::string& xq, const QParams& xp,
                                           const std::string& out_name) {
  (void)depthwise;
  const std::string op = n.op_type;
  // Integer-valued float weights, ONNX layout.
  auto wf = std::make_shared<Tensor>(DType::kFloat32, w.q.shape());
  const auto wv = w.q.to_i64_vector();
  const int64_t per = w.q.numel() / (w.axis >= 0 ? w.q.dim(w.axis) : 1);
  std::vector<double> bound(static_cast<size_t>(N), 0.0);
  const double xmax = std::max(xp.zero_point - xp.qmin(), xp.qmax() - xp.zero_point);
  for (int64_t i = 0; i < w.q.numel(); ++i) {
    // Output channel of flat index i: axis 0 (Conv, Gemm transB) or the last axis (Gemm, MatMul).
    const bool last = op != "Conv" && !(op == "Gemm" && n.attr_int("transB", 0) != 0);
    const int64_t c = last ? i % N : i / (w.q.numel() / N);
    const int32_t zw = w.zero_point.empty() ? 0 : w.zero_point[w.zero_point.size() == 1 ? 0 : static_cast<size_t>(c)];
    const double v = static_cast<double>(wv[static_cast<size_t>(i)] - zw);
    wf->data<float>()[i] = static_cast<float>(v);
    bound[static_cast<size_t>(c)] += std::fabs(v) * xmax;
  }
  (void)per;
  const bool exact_f32 = *std::max_element(bound.begin(), bound.end()) < 16777216.0;  // 2^24
  const bool trans_b = op == "Gemm" && n.attr_int("transB", 0) != 0;
  steps.push_back([this, &n, wf, K, N, group, bias, mults, fscale, stage, xq, xp, out_name, exact_f32, trans_b, op](Ctx& c) {
    const Slot& xs = slot(c, xq);
    const Tensor xq_plain = to_layout(xs, Layout::kPlain);
    // (q - zp_x) as float: exact (|q - zp| <= 255).
    Tensor x = Tensor::uninitialized(DType::kFloat32, xq_plain.shape());
    {
      float* d = x.data<float>();
      const int64_t cnt = x.numel();
      if (xq_plain.dtype() == DType::kUInt8) {
        const uint8_t* q = xq_plain.data<uint8_t>();
        for (int64_t i = 0; i < cnt; ++i) d[i] = static_cast<float>(int32_t{q[i]} - xp.zero_point);
      } else {
        const int8_t* q = xq_plain.data<int8_t>();
        for (int64_t i = 0; i < cnt; ++i) d[i] = static_cast<float>(int32_t{q[i]} - xp.zero_point);
      }
    }
    Tensor acc;      // float, integer-valued
    Shape out_shape;
    try {
      if (op == "Conv") {
        PERCH_CHECK(x.rank() == 4, "input must be 4-D, got ", shape_str(x.shape()));
        kernels::Conv2dShape s;
        s.batch = x.dim(0), s.in_channels = x.dim(1), s.in_h = x.dim(2), s.in_w = x.dim(3);
        s.out_channels = N, s.kernel_h = wf->dim(2), s.kernel_w = wf->dim(3), s.group = group;
        PERCH_CHECK(s.in_channels == wf->dim(1) * group, "input has ", s.in_channels, " channels, the weight ",
                    wf->dim(1) * group);
        const auto g = detail::geometry(n, {s.in_h, s.in_w}, {s.kernel_h, s.kernel_w}, false);
        s.stride_h = g.strides[0], s.stride_w = g.strides[1], s.dil_h = g.dilations[0], s.dil_w = g.dilations[1];
        s.pad_top = g.pads_begin[0], s.pad_left = g.pads_begin[1], s.pad_bottom = g.pads_end[0], s.pad_right = g.pads_end[1];
        PERCH_CHECK(s.out_h() > 0 && s.out_w() > 0, "input ", shape_str(x.shape()), " is too small for the kernel");
        out_shape = {s.batch, N, s.out_h(), s.out_w()};
        acc = Tensor(DType::kFloat32, out_shape);
        // Zero padding of (q - zp) is the ONNX padding of the real input.
        if (exact_f32)
          kernels::conv2d_f32(s, x.data<float>(), wf->data<float>(), nullptr, acc.data<float>());
        else
          kernels::conv2d_f32_reference(s, x.data<float>(), wf->data<float>(), nullptr, acc.data<float>());
      } else {
        PERCH_CHECK(x.rank() >= 2 && x.dim(-1) == K, "input ", shape_str(x.shape()), " does not end in K = ", K);
        const int64_t M = x.numel() / K;
        out_shape = x.shape();
        out_shape.back() = N;
        acc = Tensor(DType::kFloat32, out_shape);
        if (exact_f32) {
          kernels::GemmF32Args g;
          g.trans_b = trans_b;
          g.m = M, g.n = N, g.k = K;
          g.a = x.data<float>(), g.lda = K;
          g.b = wf->data<float>(), g.ldb = trans_b ? K : N;
          g.c = acc.data<float>(), g.ldc = N;
          kernels::gemm_f32(g);
        } else {
          const float* a = x.data<float>();
          const float* b = wf->data<float>();
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) {
              double sum = 0;
              for (int64_t k = 0; k < K; ++k) sum += double{a[i * K + k]} * double{trans_b ? b[j * K + k] : b[k * N + j]};
              acc.data<float>()[i * N + j] = static_cast<float>(sum);  // |sum| < 2^24 after all, or rounded
            }
        }
      }
    } catch (const Error& e) {
      PERCH_FAIL(model.source, ": ", n.prefixed(e.what()));
    }
    // Walk the output as (outer, channel, inner): NCHW for Conv (inner = OH*OW), [.., N] otherwise (inner = 1).
    const int64_t inner = op == "Conv" ? out_shape[2] * out_shape[3] : 1;
    const int64_t outer = acc.numel() / (N * inner);
    const float* a = acc.data<float>();
    // The exact integer sum (an integer-valued float: the conversion is exact), plus the bias with int32
    // wrap-around as the int8 kernels add it.
    auto acc_at = [&](int64_t i, int64_t ch) {
      const int64_t v = static_cast<int64_t>(a[i]) + (bias->empty() ? 0 : (*bias)[static_cast<size_t>(ch)]);
      return static_cast<int32_t>(static_cast<uint32_t>(v));
    };
    if (stage.type == OutputType::kInt32) {
      Tensor f = Tensor::uninitialized(DType::kFloat32, out_shape);
      float* fo = f.data<float>();
      for (int64_t o = 0; o < outer; ++o)
        for (int64_t ch = 0; ch < N; ++ch)
          for (int64_t p = 0; p < inner; ++p) {
            const int64_t i = (o * N + ch) * inner + p;
            fo[i] = static_cast<float>(acc_at(i, ch)) * (*fscale)[static_cast<size_t>(ch)];
          }
      c.values[out_name] = Slot{std::move(f), Layout::kPlain};
      return;
    }
    // q = clamp(multiply_round_once(acc, M[c]) + zp_y, qmin, qmax)   (output_stage_s8.h)
    Tensor y = Tensor::uninitialized(stage.type == OutputType::kUInt8 ? DType::kUInt8 : DType::kInt8, out_shape);
    auto* yo = static_cast<uint8_t*>(y.raw());  // raw bytes: int8 is stored as its two's complement byte
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t ch = 0; ch < N; ++ch) {
        const quant::FixedPointMultiplier m = (*mults)[static_cast<size_t>(ch)];
        for (int64_t p = 0; p < inner; ++p) {
          const int64_t i = (o * N + ch) * inner + p;
          const int64_t v = int64_t{quant::multiply_round_once(acc_at(i, ch), m)} + stage.zero_point;
          yo[i] = static_cast<uint8_t>(static_cast<int32_t>(std::clamp<int64_t>(v, stage.qmin, stage.qmax)));
        }
      }
    c.values[out_name] = Slot{std::move(y), Layout::kPlain};
  });
}

// ---------------------------------------------------------------------------------------------------------
// Pools, reshapes, tables

namespace {
bool pool_shape(const Node& n, const Shape& x /* NCHW */, kernels::Pool2dShape& s) {
  auto ks = n.attr_ints("kernel_shape");
  if (x.size() != 4 || ks.size() != 2) return false;
  s.batch = x[0], s.channels = x[1], s.in_h = x[2], s.in_w = x[3];
  s.kernel_h = ks[0], s.kernel_w = ks[1];
  s.ceil_mode = n.attr_int("ceil_mode", 0) != 0;
  s.count_include_pad = n.attr_int("count_include_pad", 0) != 0;
  const auto g = detail::geometry(n, {s.in_h, s.in_w}, ks, s.ceil_mode);
  s.stride_h = g.strides[0], s.stride_w = g.strides[1], s.dil_h = g.dilations[0], s.dil_w = g.dilations[1];
  s.pad_top = g.pads_begin[0], s.pad_left = g.pads_begin[1], s.pad_bottom = g.pads_end[0], s.pad_right = g.pads_end[1];
  return s.out_h() > 0 && s.out_w() > 0;
}
}  // namespace

bool Int8Executor::Impl::lower_maxpool(const Node& n, std::string* reason) {
  const Alias* xa = alias_of(n.input(0));
  if (!xa) return *reason = "input is not a per-tensor 8-bit DequantizeLinear output", false;
  if (n.outputs.size() > 1 && !n.outputs[1].empty()) return *reason = "Indices output", false;
  if (n.attr_ints("kernel_shape").size() != 2) return *reason = "only 2-D max pooling is lowered", false;
  // max commutes with the monotone DQ: MaxPool(DQ(q)) = DQ(MaxPool(q)) exactly. The output stays an alias.
  const std::string xq = xa->q, out = n.outputs[0] + "#q";
  aliases[n.outputs[0]] = Alias{out, xa->params};
  qvalues[out] = xa->params.type;
  steps.push_back([this, &n, xq, out](Ctx& c) {
    const Slot& xs = slot(c, xq);
    kernels::Pool2dShape s;
    PERCH_CHECK(pool_shape(n, onnx_shape(xs), s), model.source, ": ", n.describe(), ": input ", shape_str(onnx_shape(xs)),
                " does not fit the window");
    const Tensor x = to_layout(xs, Layout::kNHWC);
    Tensor y = Tensor::uninitialized(x.dtype(), {s.batch, s.out_h(), s.out_w(), s.channels});
    int8::maxpool_nhwc(s, x, y);
    c.values[out] = Slot{std::move(y), Layout::kNHWC};
  });
  report.nodes.push_back({n.describe(), true, "int8 max pool (NHWC) on the 8-bit values"});
  return true;
}

bool Int8Executor::Impl::lower_avgpool(const Node& n, std::string* reason) {
  const Alias* xa = alias_of(n.input(0));
  if (!xa) return *reason = "input is not a per-tensor 8-bit DequantizeLinear output", false;
  auto oq = output_q(n.outputs[0]);
  if (!oq) return *reason = "output does not feed QuantizeLinear only (nothing to requantize to)", false;
  const bool global = n.op_type == "GlobalAveragePool";
  if (!global && n.attr_ints("kernel_shape").size() != 2) return *reason = "only 2-D average pooling is lowered", false;
  const QParams xp = xa->params;
  const std::string xq = xa->q;
  const std::string out = claim_output(*oq);
  const OutputQ o = *oq;
  // M_d = s_x / (s_y d) for every divisor d the window can have; computed per call for global pooling (H*W).
  auto cache = std::make_shared<std::map<int64_t, std::vector<quant::FixedPointMultiplier>>>();
  auto mtx = std::make_shared<std::mutex>();
  steps.push_back([this, &n, xq, xp, out, o, global, cache, mtx](Ctx& c) {
    const Slot& xs = slot(c, xq);
    const Shape xshape = onnx_shape(xs);
    kernels::Pool2dShape s;
    if (global) {
      PERCH_CHECK(xshape.size() == 4, model.source, ": ", n.describe(), ": input must be 4-D");
      s.batch = xshape[0], s.channels = xshape[1], s.in_h = xshape[2], s.in_w = xshape[3];
      s.kernel_h = s.in_h, s.kernel_w = s.in_w;
    } else {
      PERCH_CHECK(pool_shape(n, xshape, s), model.source, ": ", n.describe(), ": input ", shape_str(xshape),
                  " does not fit the window");
    }
    const int64_t cells = s.kernel_h * s.kernel_w;
    PERCH_CHECK(cells <= (int64_t{1} << 23), model.source, ": ", n.describe(), ": window of ", cells,
                " cells exceeds the int32 sum bound (255 * cells < 2^31)");
    std::vector<quant::FixedPointMultiplier>* m;
    {
      std::lock_guard<std::mutex> lock(*mtx);
      auto& v = (*cache)[cells];
      if (v.empty()) {
        v.resize(static_cast<size_t>(cells + 1));
        for (int64_t d = 1; d <= cells; ++d)
          v[static_cast<size_t>(d)] = quant::quantize_multiplier(double{xp.scale} / (double{o.params.scale} * static_cast<double>(d)));
      }
      m = &v;
    }
    const Tensor x = to_layout(xs, Layout::kNHWC);
    Tensor y = Tensor::uninitialized(x.dtype(), {s.batch, s.out_h(), s.out_w(), s.channels});
    PERCH_CHECK(o.params.type == x.dtype(), model.source, ": ", n.describe(),
                ": input and output 8-bit types differ (not lowered)");
    int8::avgpool_nhwc(s, x, xp.zero_point, m->data(), o.params.zero_point, o.qmin, o.qmax, y);
    c.values[out] = Slot{std::move(y), Layout::kNHWC};
  });
  report.nodes.push_back({n.describe(), true,
                          std::string("int8 ") + (global ? "global " : "") + "average pool, fixed-point division" +
                              (o.act ? ", fused " + o.act->op_type : "")});
  return true;
}

bool Int8Executor::Impl::lower_reshape(const Node& n, std::string* reason) {
  const Alias* xa = alias_of(n.input(0));
  if (!xa) return *reason = "input is not a per-tensor 8-bit DequantizeLinear output", false;
  for (size_t i = 1; i < n.inputs.size(); ++i)
    if (!n.inputs[i].empty() && !constant(n.inputs[i])) return *reason = "shape input is not constant", false;
  // Data movement commutes with DQ: the 8-bit values move (in ONNX order), the parameters stay.
  const std::string xq = xa->q, out = n.outputs[0] + "#q";
  aliases[n.outputs[0]] = Alias{out, xa->params};
  qvalues[out] = xa->params.type;
  const OpKernel* k = &kernel(n);
  steps.push_back([this, &n, xq, out, k](Ctx& c) {
    const Tensor x = to_layout(slot(c, xq), Layout::kPlain);
    std::vector<const Tensor*> args{&x};
    for (size_t i = 1; i < n.inputs.size(); ++i) args.push_back(n.inputs[i].empty() ? nullptr : constant(n.inputs[i]));
    c.values[out] = Slot{std::move(run_named(n, *k, args).at(0)), Layout::kPlain};
  });
  report.nodes.push_back({n.describe(), true, n.op_type + " on the 8-bit values"});
  return true;
}

// DQ(a_0), DQ(a_1), ... -> Concat -> Q: Q(Concat(DQ(a_i))) = Concat(Q(DQ(a_i))), so each input's codes go through
// the 256-entry table of the simulation's own DequantizeLinear -> QuantizeLinear (none when its parameters are the
// output's: Q(DQ(q)) = q) and the 8-bit results are concatenated in ONNX order. Exact, bit for bit the simulation.
bool Int8Executor::Impl::lower_concat(const Node& n, std::string* reason) {
  std::vector<const Alias*> in;
  for (const auto& v : n.inputs) {
    const Alias* a = v.empty() ? nullptr : alias_of(v);
    if (!a) return *reason = "inputs are not per-tensor 8-bit DequantizeLinear outputs", false;
    in.push_back(a);
  }
  if (in.empty()) return *reason = "no inputs", false;
  const std::optional<OutputQ> oq = output_q(n.outputs[0]);
  if (!oq || oq->act) return *reason = "output does not feed QuantizeLinear only", false;
  for (const Alias* a : in)
    if (a->params.type != oq->params.type) return *reason = "mixed uint8/int8 inputs and output", false;
  const bool u8 = oq->params.type == DType::kUInt8;
  const bool full_range = oq->qmin <= (u8 ? 0 : -128) && oq->qmax >= (u8 ? 255 : 127);
  const Node& qn = *oq->qs[0];
  std::vector<std::string> qs;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> tables;
  int requantized = 0;
  for (const Alias* a : in) {
    qs.push_back(a->q);
    if (full_range && a->params.scale == oq->params.scale && a->params.zero_point == oq->params.zero_point) {
      tables.push_back(nullptr);
      continue;
    }
    try {
      tables.push_back(requant_table(a->params, qn));
    } catch (const Error& e) {
      return *reason = std::string("table construction failed: ") + e.what(), false;
    }
    ++requantized;
  }
  const std::string out = claim_output(*oq);
  const OpKernel* k = &kernel(n);
  steps.push_back([this, &n, qs, tables, out, k](Ctx& c) {
    std::vector<Tensor> parts;
    parts.reserve(qs.size());
    for (size_t i = 0; i < qs.size(); ++i) {
      Tensor x = to_layout(slot(c, qs[i]), Layout::kPlain);
      if (tables[i]) {
        Tensor y = Tensor::uninitialized(x.dtype(), x.shape());
        int8::lut1(static_cast<const uint8_t*>(x.raw()), x.numel(), tables[i]->data(), static_cast<uint8_t*>(y.raw()));
        x = std::move(y);
      }
      parts.push_back(std::move(x));
    }
    std::vector<const Tensor*> args;
    for (const Tensor& t : parts) args.push_back(&t);
    c.values[out] = Slot{std::move(run_named(n, *k, args).at(0)), Layout::kPlain};
  });
  report.nodes.push_back({n.describe(), true,
                          "int8 Concat of the 8-bit values (" + std::to_string(requantized) + " of " +
                              std::to_string(qs.size()) + " inputs requantized by 256-entry tables)"});
  return true;
}

// Elementwise ops between DQ inputs and a Q output, as a lookup table of the simulation's own result for
// every input code: DQ -> op [-> Relu | Clip] -> Q. Unary (256 entries) or binary Add/Sub/Mul without
// broadcasting (65536 entries). Bit-identical to the simulation by construction.
bool Int8Executor::Impl::lower_table(const Node& n, std::string* reason) {
  static const std::set<std::string> unary = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
                                              "HardSwish", "Abs", "Neg", "Elu", "Selu", "Softplus", "Identity"};
  static const std::set<std::string> binary = {"Add", "Sub", "Mul"};
  const bool is_binary = binary.count(n.op_type) != 0;
  if (!is_binary && !unary.count(n.op_type)) return *reason = "no integer lowering for " + n.op_type, false;
  const Alias* a = alias_of(n.input(0));
  const Alias* b = is_binary ? alias_of(n.input(1)) : nullptr;
  if (!a || (is_binary && !b)) return *reason = "inputs are not per-tensor 8-bit DequantizeLinear outputs", false;
  for (size_t i = 1; !is_binary && i < n.inputs.size(); ++i)
    if (!n.inputs[i].empty() && !constant(n.inputs[i])) return *reason = "non-constant parameter input", false;
  std::optional<OutputQ> oq;
  if (n.op_type == "Relu" || n.op_type == "Clip") {
    // Relu/Clip itself is the activation of the pattern: find the Q readers of its output.
    oq = output_q(n.outputs[0]);
    if (oq && oq->act) oq.reset();  // Relu -> Relu -> Q: keep it simple, table the first one alone below
  } else {
    oq = output_q(n.outputs[0]);
  }
  if (!oq) return *reason = "output does not feed QuantizeLinear only", false;
  if (oq->params.type != a->params.type || (b && b->params.type != a->params.type))
    return *reason = "mixed uint8/int8 inputs and output", false;

  // Build the table by running the real float kernels on every code (the simulation's exact arithmetic).
  const int64_t codes = is_binary ? 65536 : 256;
  auto codes_tensor = [&](bool high) {
    Tensor t(a->params.type, {codes});
    auto* d = static_cast<uint8_t*>(t.raw());
    for (int64_t i = 0; i < codes; ++i) d[i] = static_cast<uint8_t>(is_binary ? (high ? i >> 8 : i & 255) : i);
    return t;
  };
  auto dq = [&](const Tensor& q, const QParams& p) {
    quant::QuantSpec spec;
    spec.bits = 8, spec.is_signed = p.type == DType::kInt8, spec.symmetric = false;
    return quant::dequantize(q, quant::make_params(spec, q.shape(), {p.scale}, {p.zero_point}));
  };
  Tensor fa = dq(codes_tensor(true), a->params);
  Tensor fb = is_binary ? dq(codes_tensor(false), b->params) : Tensor();
  std::vector<const Tensor*> args{&fa};
  if (is_binary) args.push_back(&fb);
  for (size_t i = is_binary ? 2 : 1; i < n.inputs.size(); ++i) args.push_back(n.inputs[i].empty() ? nullptr : constant(n.inputs[i]));
  Tensor f;
  try {
    f = kernel(n)(n, args, model.opset()).at(0);
    f = through_output_q(*oq, f);
  } catch (const Error& e) {
    return *reason = std::string("table construction failed: ") + e.what(), false;
  }
  if (f.numel() != codes) return *reason = "op changes the element count", false;
  auto table = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(f.raw()),
                                                      static_cast<const uint8_t*>(f.raw()) + codes);
  // Binary ops: the float formula in SIMD (int8::Binary8) when it reproduces the table for every code pair on
  // every path (checked here, exhaustively); otherwise the table lookup.
  std::shared_ptr<int8::Binary8> formula;
  if (is_binary) {
    auto fm = std::make_shared<int8::Binary8>();
    fm->op = n.op_type == "Add" ? int8::Binary8::Op::kAdd : n.op_type == "Sub" ? int8::Binary8::Op::kSub : int8::Binary8::Op::kMul;
    fm->a_signed = a->params.type == DType::kInt8, fm->b_signed = b->params.type == DType::kInt8;
    fm->za = a->params.zero_point, fm->zb = b->params.zero_point, fm->zy = oq->params.zero_point;
    fm->qmin = oq->qmin, fm->qmax = oq->qmax;
    fm->sa = a->params.scale, fm->sb = b->params.scale, fm->sy = oq->params.scale;
    // The reciprocal form first (a multiply, cheaper than the division), then the division, each only when it
    // reproduces the table for all 65 536 code pairs on every path.
    fm->reciprocal = true, fm->inv_sy = static_cast<float>(1.0 / static_cast<double>(fm->sy));
    if (!std::isfinite(fm->inv_sy) || !int8::binary8_matches(*fm, table->data())) fm->reciprocal = false;
    if (fm->reciprocal || int8::binary8_matches(*fm, table->data())) formula = fm;
  }
  const std::string aq = a->q, bq = b ? b->q : std::string();
  const std::string out = claim_output(*oq);
  steps.push_back([this, &n, table, formula, aq, bq, is_binary, out](Ctx& c) {
    const Slot& as = slot(c, aq);
    if (!is_binary) {
      Tensor y = Tensor::uninitialized(as.t.dtype(), as.t.shape());
      int8::lut1(static_cast<const uint8_t*>(as.t.raw()), as.t.numel(), table->data(), static_cast<uint8_t*>(y.raw()));
      c.values[out] = Slot{std::move(y), as.layout};
      return;
    }
    const Slot& bs = slot(c, bq);
    Layout l = as.layout;
    Tensor ta = as.t, tb = to_layout(bs, l);
    if (onnx_shape(as) != onnx_shape(bs)) {
      // NumPy broadcasting: the result is an elementwise function of the two codes, so broadcasting the 8-bit
      // inputs to the output shape first and then applying the table / formula is exact.
      l = Layout::kPlain;
      const Tensor pa = to_layout(as, l), pb = to_layout(bs, l);
      const Shape out_shape = detail::broadcast_shape(pa.shape(), pb.shape(), n);
      ta = expand_bytes(pa, out_shape), tb = expand_bytes(pb, out_shape);
    }
    Tensor y = Tensor::uninitialized(ta.dtype(), ta.shape());
    if (formula)
      int8::binary8(*formula, static_cast<const uint8_t*>(ta.raw()), static_cast<const uint8_t*>(tb.raw()), ta.numel(),
                    static_cast<uint8_t*>(y.raw()));
    else
      int8::lut2(static_cast<const uint8_t*>(ta.raw()), static_cast<const uint8_t*>(tb.raw()), ta.numel(),
                 table->data(), static_cast<uint8_t*>(y.raw()));
    c.values[out] = Slot{std::move(y), l};
  });
  report.nodes.push_back({n.describe(), true,
                          std::string("int8 ") + n.op_type + (oq->act ? " + " + oq->act->op_type : "") +
                              (formula ? std::string(formula->reciprocal ? " by the simulation's float formula with 1/s_y" : " by the simulation's float formula") + " (equal to its " + std::to_string(codes) +
                                             "-entry table, checked for every code pair)"
                                       : " as a " + std::to_string(codes) + "-entry table of the simulation's result")});
  return true;
}

// A chain of elementwise ops that is a function of one 8-bit value: each node's non-constant inputs are
// DQ(q) (one 8-bit value q with one set of parameters) or outputs of earlier nodes of the chain, its constant
// inputs hold one element, the values inside the chain are read by chain nodes only, and its last value feeds
// QuantizeLinear only (through an optional Relu/Clip). Then y = Q(f(DQ(q))) depends on the code q alone: one
// 256-entry table of the simulation's own result, built by running the chain's float kernels (in graph order,
// the constants broadcasting against the 256 dequantized codes) and the QuantizeLinear on every code. Each
// element of the simulation goes through the same kernels with the same operands, so the table is bit-identical
// to it by construction. Hardswish written as x * Clip(x + 3, 0, 6) / 6, and the scalar Mul/Add of
// PaddlePaddle's blocks after it, are such chains (docs/INTEGER.md, "Elementwise chains").
bool Int8Executor::Impl::lower_chain(size_t start, std::string* reason) {
  static const std::set<std::string> elementwise = {"Add",  "Sub",         "Mul",       "Div",  "Clip", "Relu",
                                                    "Max",  "Min",         "LeakyRelu", "Neg",  "Abs",  "Sigmoid",
                                                    "Tanh", "HardSigmoid", "HardSwish", "Identity"};
  const auto& nodes = model.graph.nodes;
  const Alias* root = nullptr;
  std::set<std::string> made;  // outputs of the chain's nodes
  // Whether node n can join: every input empty, a one-element constant, the root, or made by the chain.
  auto joins = [&](const Node& n) {
    if (!elementwise.count(n.op_type) || n.outputs.size() != 1 || n.outputs[0].empty()) return false;
    if (std::find(absorbed.begin(), absorbed.end(), index_of(&n)) != absorbed.end()) return false;
    bool reads_chain = false;
    for (const auto& v : n.inputs) {
      if (v.empty()) continue;
      if (const Tensor* c = constant(v)) {
        if (c->numel() != 1) return false;
        continue;
      }
      if (made.count(v)) {
        reads_chain = true;
        continue;
      }
      const Alias* a = alias_of(v);
      if (!a || (root && (a->q != root->q || !(a->params == root->params)))) return false;
      if (!root) root = a;
      reads_chain = true;
    }
    return reads_chain;
  };
  if (!joins(nodes[start])) return *reason = "not a chain of elementwise ops on one 8-bit value", false;
  std::vector<size_t> members{start};
  made.insert(nodes[start].outputs[0]);
  for (bool grew = true; grew;) {
    grew = false;
    for (size_t m = 0; m < members.size(); ++m)
      for (size_t ci : model.graph.consumers(nodes[members[m]].outputs[0])) {
        if (std::find(members.begin(), members.end(), ci) != members.end() || !joins(nodes[ci])) continue;
        members.push_back(ci);
        made.insert(nodes[ci].outputs[0]);
        grew = true;
      }
  }
  // The one value read outside the chain is its end; it must feed QuantizeLinear only.
  std::string end;
  for (size_t m : members) {
    const std::string& v = nodes[m].outputs[0];
    const auto cs = model.graph.consumers(v);
    const bool inside = !model.graph.is_graph_output(v) && std::all_of(cs.begin(), cs.end(), [&](size_t c) {
      return std::find(members.begin(), members.end(), c) != members.end();
    });
    if (inside) continue;
    if (!end.empty()) return *reason = "the chain's values are read outside it twice", false;
    end = v;
  }
  if (members.size() < 2 || end.empty()) return *reason = "no chain of two or more ops", false;
  std::optional<OutputQ> oq = output_q(end);
  if (!oq) return *reason = "the chain's end does not feed QuantizeLinear only", false;
  if (oq->params.type != root->params.type) return *reason = "mixed uint8/int8 input and output", false;

  // The table: the chain on the 256 dequantized codes, then the fused Relu/Clip and QuantizeLinear.
  const Tensor fx = code_values(root->params);
  std::map<std::string, Tensor> vals;
  Tensor f;
  try {
    for (size_t m : members) {
      const Node& n = nodes[m];
      std::vector<const Tensor*> args;
      for (const auto& v : n.inputs) {
        if (v.empty()) args.push_back(nullptr);
        else if (const Tensor* c = constant(v)) args.push_back(c);
        else if (vals.count(v)) args.push_back(&vals.at(v));
        else args.push_back(&fx);  // the root (joins() checked it)
      }
      vals[n.outputs[0]] = kernel(n)(n, args, model.opset()).at(0);
    }
    f = vals.at(end);
    f = through_output_q(*oq, f);
  } catch (const Error& e) {
    return *reason = std::string("chain table construction failed: ") + e.what(), false;
  }
  if (f.numel() != 256) return *reason = "the chain changes the element count", false;
  auto table = std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(f.raw()),
                                                      static_cast<const uint8_t*>(f.raw()) + 256);
  std::string ops;
  for (size_t m : members) {
    ops += (ops.empty() ? "" : ", ") + nodes[m].op_type;
    if (m != start) absorbed.push_back(m);
  }
  const std::string src = root->q, out = claim_output(*oq);
  steps.push_back([this, table, src, out](Ctx& c) {
    const Slot& s = slot(c, src);
    Tensor y = Tensor::uninitialized(s.t.dtype(), s.t.shape());
    int8::lut1(static_cast<const uint8_t*>(s.t.raw()), s.t.numel(), table->data(), static_cast<uint8_t*>(y.raw()));
    c.values[out] = Slot{std::move(y), s.layout};
  });
  report.nodes.push_back({nodes[start].describe(), true,
                          "int8 chain of " + std::to_string(members.size()) + " elementwise ops (" + ops +
                              (oq->act ? ", " + oq->act->op_type : "") +
                              ") as a 256-entry table of the simulation's result"});
  return true;
}

// Q(DQ(q)) with different parameters: requantization, as the 256-entry table of the simulation's result.
std::shared_ptr<std::vector<uint8_t>> Int8Executor::Impl::requant_table(const QParams& from, const Node& qn) const {
  const Tensor f = code_values(from);
  std::vector<const Tensor*> args{&f, constant(qn.input(1)), qn.input(2).empty() ? nullptr : constant(qn.input(2))};
  const Tensor t = kernel(qn)(qn, args, model.opset()).at(0);
  return std::make_shared<std::vector<uint8_t>>(static_cast<const uint8_t*>(t.raw()),
                                                static_cast<const uint8_t*>(t.raw()) + 256);
}

std::vector<Tensor> Int8Executor::Impl::run_named(const Node& n, const OpKernel& k,
                                                  const std::vector<const Tensor*>& args) const {
  try {
    return k(n, args, model.opset());
  } catch (const Error& e) {
    PERCH_FAIL(model.source, ": ", n.prefixed(e.what()));
  }
}

void Int8Executor::Impl::lower_requant_table(const Node& qn, const Alias& a, const QParams& p) {
  auto table = requant_table(a.params, qn);
  const std::string src = a.q, out = qn.outputs.at(0);
  qvalues[out] = p.type;
  const DType yt = p.type;
  steps.push_back([this, table, src, out, yt](Ctx& c) {
    const Slot& s = slot(c, src);
    Tensor y = Tensor::uninitialized(yt, s.t.shape());
    int8::lut1(static_cast<const uint8_t*>(s.t.raw()), s.t.numel(), table->data(), static_cast<uint8_t*>(y.raw()));
    c.values[out] = Slot{std::move(y), s.layout};
  });
  report.nodes.push_back({qn.describe(), true, "int8 requantization as a 256-entry table of the simulation's result"});
}

// ---------------------------------------------------------------------------------------------------------
// Lowering driver

Int8Executor::Impl::Impl(graph::Model m, Int8Mode md) : model(std::move(m)), mode(md) {
  // ONNX Runtime's QLinearAdd, QGemm, ... become DQ -> op -> Q, which the lowering below takes like any QDQ pattern.
  graph::expand_contrib_qops(model);
  // ONNX's QLinearConv / QLinearMatMul likewise, so they reach the packed kernels (docs/INTEGER.md, section 2).
  graph::qlinear_to_qdq(model);
  // Executor's checks (opset range, every op supported by the float kernels the fallback needs).
  { Executor check(model); }
  registry = &OpRegistry::global();
  for (const auto& [name, t] : model.graph.initializers) constants[name] = t;
  lower();
  check_per_sample();
}

// Per-sample ops: elementwise and activation ops, Q/DQ (per-axis only along axis >= 1), convolutions and pools
// (NCHW: axis 0 is the batch), Flatten with axis >= 1, Gemm/MatMul/integer variants whose only non-constant input
// is A (its rows are the samples). Constant inputs of elementwise ops must not have a leading axis other than 1
// (a rank-1 constant broadcasts along the last axis). Nodes whose inputs are all constant were folded at load.
void Int8Executor::Impl::check_per_sample() {
  static const std::set<std::string> elementwise = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
                                                    "HardSwish", "Identity", "Dropout", "Add", "Sub", "Mul"};
  static const std::set<std::string> spatial = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"};
  static const std::set<std::string> weighted = {"Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul",
                                                 "MatMulInteger", "QLinearMatMul"};
  for (const Node& n : model.graph.nodes) {
    bool all_const = true;
    for (const auto& in : n.inputs)
      if (!in.empty() && !constant(resolve(in)) && !constant(in)) all_const = false;
    if (all_const) continue;
    auto is_const = [&](size_t i) { return n.input(i).empty() || constant(n.input(i)) || constant(resolve(n.input(i))); };
    if (elementwise.count(n.op_type)) {
      for (size_t i = 0; i < n.inputs.size(); ++i) {
        if (n.inputs[i].empty() || !is_const(i)) continue;
        const Tensor* t = constant(n.input(i)) ? constant(n.input(i)) : constant(resolve(n.input(i)));
        if (t->rank() >= 2 && t->dim(0) != 1) return;
      }
    } else if (n.op_type == "QuantizeLinear" || n.op_type == "DequantizeLinear") {
      for (size_t i = 1; i < n.inputs.size(); ++i)
        if (!is_const(i)) return;
      const Tensor* sc = constant(n.input(1));
      if (sc && sc->numel() > 1 && n.attr_int("axis", 1) < 1) return;
    } else if (spatial.count(n.op_type)) {
      // per image
    } else if (n.op_type == "Flatten") {
      if (n.attr_int("axis", 1) < 1) return;
    } else if (weighted.count(n.op_type)) {
      if (n.op_type == "Gemm" && n.attr_int("transA", 0) != 0) return;
      if (is_const(0)) return;
      for (size_t i = 1; i < n.inputs.size(); ++i)
        if (!is_const(i)) return;
    } else {
      return;
    }
  }
  per_sample = true;
  report.sub_batch = kSubBatch;
}

void Int8Executor::Impl::lower() {
  const auto& nodes = model.graph.nodes;
  const int64_t opset = model.opset();
  std::set<std::string> graph_inputs;
  for (const auto& v : model.graph.inputs) {
    graph_inputs.insert(v.name);
    // An 8-bit graph input is an 8-bit value a DequantizeLinear can hand to integer ops directly.
    if (v.dtype == DType::kUInt8 || v.dtype == DType::kInt8) qvalues[v.name] = v.dtype;
  }
  // Every step is labelled with the node whose lowering added it and that node's report line (profiling).
  std::string cur_node, cur_how;
  size_t cur_report = 0;
  auto label_steps = [&] {
    if (report.nodes.size() > cur_report) cur_how = report.nodes.back().how;
    while (step_node.size() < steps.size()) {
      step_node.push_back(cur_node);
      step_what.push_back(cur_how);
    }
  };
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node& n = nodes[i];
    label_steps();
    cur_node = n.describe();
    cur_how.clear();
    cur_report = report.nodes.size();
    if (std::find(absorbed.begin(), absorbed.end(), i) != absorbed.end()) {
      report.nodes.push_back({n.describe(), true, "fused into the integer op before it"});
      continue;
    }
    // A node without outputs is refused before anything runs it (the constant folding below would, for a
    // node with no inputs: fuzz_int8_lower, finding 7 in docs/RELIABILITY.md).
    PERCH_CHECK(std::any_of(n.outputs.begin(), n.outputs.end(), [](const std::string& o) { return !o.empty(); }),
                model.source, ": ", n.describe(), " has no outputs (every ONNX operator produces at least one)");
    // Constant subgraphs (weight DequantizeLinear, shape arithmetic): folded once, here.
    const bool all_const = std::all_of(n.inputs.begin(), n.inputs.end(), [&](const std::string& v) {
      return v.empty() || (constant(v) && !graph_inputs.count(v));
    });
    if (all_const) {
      std::vector<const Tensor*> args;
      for (const auto& v : n.inputs) args.push_back(v.empty() ? nullptr : constant(v));
      std::vector<Tensor> outs;
      try {
        outs = kernel(n)(n, args, opset);
      } catch (const Error& e) {
        PERCH_FAIL(model.source, ": ", n.describe(), " (constant): ", e.what());
      }
      for (size_t o = 0; o < n.outputs.size() && o < outs.size(); ++o)
        if (!n.outputs[o].empty()) constants[n.outputs[o]] = std::move(outs[o]);
      report.nodes.push_back({n.describe(), true, "constant, folded at load"});
      continue;
    }
    std::string reason;
    bool done = false;
    const std::string& op = n.op_type;
    // Every lowering writes the node's first output (a hostile file can declare none: fuzz_int8_lower).
    if (n.outputs.empty() || n.outputs[0].empty()) {
      reason = "the node has no first output";
    } else if (op == "DequantizeLinear") {
      const std::string src = resolve(n.input(0));
      auto qt = qvalues.find(src);
      std::optional<QParams> p;
      if (qt != qvalues.end()) {
        // A DQ's zero point, when given, has the data's type (ONNX); a mismatch is left to the float kernel.
        const Tensor* z = n.input(2).empty() ? nullptr : constant(n.input(2));
        if (n.input(2).empty() || (z && z->dtype() == qt->second)) p = qdq_params(n, qt->second);
      }
      if (p) {
        aliases[n.outputs.at(0)] = Alias{src, *p};
        report.nodes.push_back({n.describe(), true, "absorbed: readers take the 8-bit values"});
        done = true;
      } else {
        reason = qt != qvalues.end() ? "per-axis or non-8-bit parameters" : "input is not an 8-bit activation";
      }
    } else if (op == "QuantizeLinear") {
      const Alias* a = alias_of(n.input(0));
      DType t = DType::kUInt8;
      if (!n.input(2).empty() && constant(n.input(2))) t = constant(n.input(2))->dtype();
      auto p = n.attr_int("output_dtype", 0) == 0 ? qdq_params(n, t) : std::nullopt;
      if (a && p && *p == a->params) {
        // Q(DQ(q)) with the same parameters is q: round(((q - zp) s) / s) = q - zp exactly in float.
        renames[n.outputs.at(0)] = a->q;
        report.nodes.push_back({n.describe(), true, "absorbed: Q(DQ(q)) with equal parameters is q"});
        done = true;
      } else if (a && p) {
        lower_requant_table(n, *a, *p);
        done = true;
      } else if (p) {
        // Float -> 8-bit boundary (e.g. the graph input): QuantizeLinear's formula (int8::quantize_f32).
        const QParams qp = *p;
        const std::string in_name = n.input(0), out = n.outputs.at(0);
        steps.push_back([this, qp, in_name, out](Ctx& c) {
          const Tensor x = float_value(c, in_name);
          PERCH_CHECK(x.dtype() == DType::kFloat32, model.source, ": QuantizeLinear input '", in_name, "' is ",
                      dtype_name(x.dtype()), ", expected float32");
          Tensor y = Tensor::uninitialized(qp.type, x.shape());
          int8::quantize_f32(x.data<float>(), x.numel(), qp.scale, qp.zero_point, qp.qmin(), qp.qmax(),
                             static_cast<uint8_t*>(y.raw()));
          c.values[out] = Slot{std::move(y), Layout::kPlain};
        });
        qvalues[out] = p->type;
        report.nodes.push_back({n.describe(), true, "quantize the float input (boundary)"});
        done = true;
      } else {
        reason = "per-axis, blocked or non-8-bit QuantizeLinear";
      }
    } else if (op == "Conv" || op == "Gemm" || op == "MatMul") {
      done = lower_conv_like(n, &reason);
    } else if (op == "MaxPool") {
      done = lower_maxpool(n, &reason);
    } else if (op == "AveragePool" || op == "GlobalAveragePool") {
      done = lower_avgpool(n, &reason);
    } else if (op == "Flatten" || op == "Reshape" || op == "Squeeze" || op == "Unsqueeze" || op == "Identity" ||
               op == "Dropout") {
      if (op == "Dropout" && n.outputs.size() > 1 && !n.outputs[1].empty()) reason = "Dropout mask output";
      else if (op == "Identity" || op == "Dropout") {
        if (alias_of(n.input(0))) {
          aliases[n.outputs[0]] = *alias_of(n.input(0));
          report.nodes.push_back({n.describe(), true, "absorbed (identity)"});
          done = true;
        } else {
          reason = "input is not an 8-bit activation";
        }
      } else {
        done = lower_reshape(n, &reason);
      }
    } else if (op == "QLinearConv" || op == "QLinearMatMul" || op == "ConvInteger" || op == "MatMulInteger") {
      // ONNX's integer ops: run by their own integer kernels (ops_qlinear.cpp) on the 8-bit tensors as they
      // are; QLinear* outputs are 8-bit values later DequantizeLinear nodes can read directly.
      add_float_step(n);
      if (op.rfind("QLinear", 0) == 0) {
        const Tensor* z = n.input(7).empty() ? nullptr : constant(n.input(7));
        if (z && (z->dtype() == DType::kUInt8 || z->dtype() == DType::kInt8)) qvalues[n.outputs.at(0)] = z->dtype();
      }
      report.nodes.push_back({n.describe(), true, "ONNX integer op, exact integer loops (ops_qlinear.cpp), not repacked"});
      done = true;
      continue;
    } else if (op == "Concat") {
      done = lower_concat(n, &reason);
    } else {
      // A single op, else a chain starting here (the single op's reason is the one reported when both fail).
      std::string chain_reason;
      done = lower_table(n, &reason) || lower_chain(i, &chain_reason);
    }
    if (!done) {
      add_float_step(n);
      report.nodes.push_back({n.describe(), false, "float (" + reason + ")"});
    }
  }
  label_steps();
}

// ---------------------------------------------------------------------------------------------------------

Int8Executor::Int8Executor(graph::Model model, Int8Mode mode) : impl_(std::make_unique<Impl>(std::move(model), mode)) {}
Int8Executor::~Int8Executor() = default;
Int8Executor::Int8Executor(Int8Executor&&) noexcept = default;
Int8Executor& Int8Executor::operator=(Int8Executor&&) noexcept = default;

void Int8Executor::enable_profiling() {
  PERCH_CHECK(impl_->step_node.size() == impl_->steps.size(), "Int8Executor: ", impl_->steps.size(), " steps but ",
              impl_->step_node.size(), " labels");
  impl_->profile = std::make_shared<StepProfile>(impl_->step_node, impl_->step_what);
}

std::vector<StepTime> Int8Executor::profile() const {
  return impl_->profile ? impl_->profile->entries() : std::vector<StepTime>{};
}

const Int8Report& Int8Executor::report() const { return impl_->report; }
const graph::Model& Int8Executor::model() const { return impl_->model; }
const std::string& Int8Executor::input_name() const { return impl_->model.graph.inputs.at(0).name; }
const std::string& Int8Executor::output_name() const { return impl_->model.graph.outputs.at(0).name; }

TensorMap Int8Executor::run(const TensorMap& inputs, const std::vector<std::string>& extra_outputs) const {
  const Impl& m = *impl_;
  // Sub-batches: every graph input split along axis 0, the graph run per slice, every output concatenated back.
  // Each output element depends on its own sample only (check_per_sample), and every integer kernel computes each
  // element by itself, so the result equals the whole-batch run's (the float fallback kernels, if any, may round
  // differently with another M). Falls back to one run when the inputs or outputs are not batch-shaped alike.
  int64_t batch = -1;
  bool split = m.per_sample && !inputs.empty() && inputs.size() == m.model.graph.inputs.size();
  // A model that fixes its batch (a static first dim) takes only that many rows: it runs whole.
  for (const auto& in : m.model.graph.inputs)
    if (in.has_shape && !in.shape.empty() && in.shape[0] >= 0) split = false;
  for (const auto& [name, t] : inputs) {
    if (!split) break;
    if (t.rank() < 1 || (batch >= 0 && t.dim(0) != batch)) split = false;
    else batch = t.dim(0);
  }
  if (!split || batch <= Impl::kSubBatch) return m.run_whole(inputs, extra_outputs);
  std::vector<TensorMap> parts;
  for (int64_t b0 = 0; b0 < batch; b0 += Impl::kSubBatch) {
    const int64_t nb = std::min(Impl::kSubBatch, batch - b0);
    TensorMap slice;
    for (const auto& [name, t] : inputs) {
      Shape sh = t.shape();
      sh[0] = nb;
      Tensor part = Tensor::uninitialized(t.dtype(), sh);
      const size_t row = static_cast<size_t>(t.numel() / batch) * dtype_size(t.dtype());
      std::memcpy(part.raw(), static_cast<const char*>(t.raw()) + static_cast<size_t>(b0) * row, row * static_cast<size_t>(nb));
      slice[name] = std::move(part);
    }
    parts.push_back(m.run_whole(slice, extra_outputs));
    for (const auto& [name, t] : parts.back()) {
      if (t.rank() < 1 || t.dim(0) != nb) return m.run_whole(inputs, extra_outputs);
      const Tensor& f = parts[0].at(name);
      if (f.dtype() != t.dtype() || !std::equal(f.shape().begin() + 1, f.shape().end(), t.shape().begin() + 1, t.shape().end()))
        return m.run_whole(inputs, extra_outputs);
    }
  }
  TensorMap out;
  for (const auto& [name, first] : parts[0]) {
    Shape sh = first.shape();
    sh[0] = batch;
    Tensor whole = Tensor::uninitialized(first.dtype(), sh);
    size_t at = 0;
    for (const auto& p : parts) {
      const Tensor& t = p.at(name);
      const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
      std::memcpy(static_cast<char*>(whole.raw()) + at, t.raw(), bytes);
      at += bytes;
    }
    out[name] = std::move(whole);
  }
  return out;
}

TensorMap Int8Executor::Impl::run_whole(const TensorMap& inputs, const std::vector<std::string>& extra_outputs) const {
  const Impl& m = *this;
  Ctx c;
  for (const auto& in : m.model.graph.inputs) {
    auto it = inputs.find(in.name);
    PERCH_CHECK(it != inputs.end(), m.model.source, ": input '", in.name, "' was not given");
    const Tensor& t = it->second;
    PERCH_CHECK(t.dtype() == in.dtype, m.model.source, ": input '", in.name, "' must be ", dtype_name(in.dtype), ", got ",
                dtype_name(t.dtype()));
    if (in.has_shape) {
      bool ok = t.rank() == static_cast<int64_t>(in.shape.size());
      for (size_t d = 0; ok && d < in.shape.size(); ++d) ok = in.shape[d] < 0 || in.shape[d] == t.shape()[d];
      PERCH_CHECK(ok, m.model.source, ": input '", in.name, "' has shape ", shape_str(t.shape()),
                  " but the model expects ", shape_str(in.shape), " (-1 = any)");
    }
    c.values[in.name] = Slot{t, Layout::kPlain};
  }
  if (m.profile) {
    for (size_t i = 0; i < m.steps.size(); ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      m.steps[i](c);
      m.profile->add(i, std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count());
    }
  } else {
    for (const auto& s : m.steps) s(c);
  }
  TensorMap out;
  auto get = [&](const std::string& name) {
    const std::string r = m.resolve(name);
    // An 8-bit value (a Q output) is returned as 8-bit; a float one as float.
    if (m.qvalues.count(r) && !m.alias_of(r)) return to_layout(m.slot(c, r), Layout::kPlain);
    return m.float_value(c, r);
  };
  for (const auto& o : m.model.graph.outputs) out[o.name] = get(o.name);
  for (const auto& e : extra_outputs) out[e] = get(e);
  return out;
}

Tensor Int8Executor::run1(const Tensor& input) const {
  PERCH_CHECK(!impl_->model.graph.inputs.empty(), impl_->model.source, ": run1 needs a graph input, the graph has none");
  TensorMap in{{input_name(), input}};
  return run(in).at(output_name());
}

}  // namespace perch::runtime
