// Adaptive rounding of weights (declared in perch/ptq/adaround.h, which has the objective).
#include "perch/ptq/adaround.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <memory>

#include "perch/core/error.h"
#include "perch/core/progress.h"
#include "perch/core/threads.h"
#include "perch/kernels/conv_f32.h"
#include "perch/kernels/gemm_f32.h"
#include "perch/runtime/executor.h"
#include "perch/runtime/op_geometry.h"

namespace perch::ptq {
namespace {

using graph::Graph;
using graph::Model;
using graph::Node;

constexpr double kZeta = 1.1, kGamma = -0.1;  // rectified sigmoid stretch (AdaRound sec. 3.3)
constexpr int64_t kRowBlock = 64;             // rows optimised together (fixed: results do not depend on threads)

// c (m x n, dense) = a (m x k) * (trans_b ? b^T : b), row-major.
void gemm(bool trans_b, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
          float* c) {
  kernels::GemmF32Args g;
  g.trans_b = trans_b;
  g.m = m;
  g.n = n;
  g.k = k;
  g.a = a;
  g.lda = lda;
  g.b = b;
  g.ldb = ldb;
  g.c = c;
  g.ldc = n;
  kernels::gemm_f32(g);
}

// The linear and constant parts of the objective for rows [r0, r1) of one group (adaround.h, quantized inputs):
// with d = w~ - w, row r's reconstruction term is d^T A d + 2 d^T e_r + const_r, e_r = A w_r - C w_r,
// const_r = w_r^T A w_r - 2 w_r^T C w_r + w_r^T H w_r (all zero when A = C = H). In double.
struct Linear {
  std::vector<double> e;      // (r1 - r0) x k
  std::vector<double> konst;  // r1 - r0
};
Linear linear_part(const AdaRoundProblem& p, int64_t grp, int64_t r0, int64_t r1) {
  const int64_t k = p.k;
  Linear l;
  l.e.assign(static_cast<size_t>((r1 - r0) * k), 0.0);
  l.konst.assign(static_cast<size_t>(r1 - r0), 0.0);
  if (!p.cross) return l;
  const double* a = p.gram + grp * k * k;
  const double* c = p.cross + grp * k * k;
  const double* h = p.target_gram + grp * k * k;
  for (int64_t r = r0; r < r1; ++r) {
    const float* w = p.w + r * k;
    double* e = l.e.data() + (r - r0) * k;
    double wcw = 0, waw = 0, whw = 0;
    for (int64_t i = 0; i < k; ++i) {
      double aw = 0, cw = 0, hw = 0;
      for (int64_t j = 0; j < k; ++j) {
        aw += a[i * k + j] * w[j];
        cw += c[i * k + j] * w[j];
        hw += h[i * k + j] * w[j];
      }
      e[i] = aw - cw;
      waw += w[i] * aw;
      wcw += w[i] * cw;
      whw += w[i] * hw;
    }
    l.konst[r - r0] = waw - 2 * wcw + whw;
  }
  return l;
}

// Reconstruction term summed over rows [r0, r1) of one group for integers q (d = s q - w), in double.
double reconstruction(const AdaRoundProblem& p, int64_t grp, int64_t r0, int64_t r1, const Linear& l, const int32_t* q) {
  const int64_t k = p.k;
  const double* a = p.gram + grp * k * k;
  std::vector<double> d(static_cast<size_t>(k));
  double total = 0;
  for (int64_t r = r0; r < r1; ++r) {
    for (int64_t i = 0; i < k; ++i) {
      const int64_t e = r * k + i;
      d[i] = static_cast<double>(p.scale[e]) * q[e] - static_cast<double>(p.w[e]);
    }
    double row = l.konst[r - r0];
    for (int64_t i = 0; i < k; ++i) {
      double ad = 0;
      for (int64_t j = 0; j < k; ++j) ad += a[i * k + j] * d[j];
      row += d[i] * (ad + 2.0 * l.e[(r - r0) * k + i]);
    }
    total += row;
  }
  return total;
}

// Adam on V for rows [r0, r1) of one group (second moments h as float hf); writes their integers.
// lin_e: the block's rows of the linear part e (rows x k).
void optimise_block(const AdaRoundProblem& p, const AdaRoundOptions& o, const float* hf, const double* lin_e, int64_t r0,
                    int64_t r1, int32_t* q) {
  const int64_t k = p.k, n = (r1 - r0) * k;
  const float* w = p.w + r0 * k;
  const float* s = p.scale + r0 * k;
  std::vector<float> fl(n), v(n), m1(n, 0.0f), m2(n, 0.0f), d(n), g(n);
  std::vector<double> sg(n);
  for (int64_t e = 0; e < n; ++e) {
    const float x = w[e] / s[e];  // the division quantize_value() makes
    fl[e] = std::floor(x);
    const double rest = std::clamp(static_cast<double>(x) - fl[e], 0.0, 1.0);
    // h(V) = rest: sigmoid(V) = (rest - gamma) / (zeta - gamma)
    v[e] = static_cast<float>(-std::log((kZeta - kGamma) / (rest - kGamma) - 1.0));
  }
  const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
  double b1t = 1, b2t = 1;
  const int64_t steps = std::max<int64_t>(0, o.iterations);
  const int64_t warm = static_cast<int64_t>(o.warm_start * static_cast<double>(steps));
  const float lo = static_cast<float>(p.qmin), hi = static_cast<float>(p.qmax);
  for (int64_t t = 0; t < steps; ++t) {
    for (int64_t e = 0; e < n; ++e) {
      const double sig = 1.0 / (1.0 + std::exp(-static_cast<double>(v[e])));
      sg[e] = sig;
      const double h = std::clamp(sig * (kZeta - kGamma) + kGamma, 0.0, 1.0);
      const double qs = std::clamp(fl[e] + h, static_cast<double>(lo), static_cast<double>(hi));
      d[e] = static_cast<float>(s[e] * qs - w[e]);
    }
    // g = d A + e (A symmetric): the reconstruction term's gradient / 2 with respect to the soft weights.
    gemm(false, r1 - r0, k, k, d.data(), k, hf, k, g.data());
    if (p.cross)
      for (int64_t e = 0; e < n; ++e) g[e] = static_cast<float>(g[e] + lin_e[e]);
    const bool reg = t >= warm;
    const double beta =
        o.beta_end + (o.beta_start - o.beta_end) *
                         std::max(0.0, 1.0 - static_cast<double>(t - warm) / static_cast<double>(std::max<int64_t>(1, steps - warm)));
    b1t *= b1;
    b2t *= b2;
    for (int64_t e = 0; e < n; ++e) {
      const double sig = sg[e];  // of this step's V, computed above
      const double hraw = sig * (kZeta - kGamma) + kGamma;
      if (hraw <= 0.0 || hraw >= 1.0) {  // clamped: no gradient (as torch.clamp), Adam's moments still decay
        m1[e] = static_cast<float>(b1 * m1[e]);
        m2[e] = static_cast<float>(b2 * m2[e]);
      } else {
        const double qs = fl[e] + hraw;
        double dh = qs > lo && qs < hi ? 2.0 * g[e] * s[e] : 0.0;
        if (reg) {  // d/dh of lambda (1 - |2h - 1|^beta)
          const double u = 2.0 * hraw - 1.0;
          dh -= o.regularization * beta * std::pow(std::fabs(u), beta - 1.0) * (u < 0 ? -2.0 : 2.0);
        }
        const double grad = dh * sig * (1.0 - sig) * (kZeta - kGamma);
        m1[e] = static_cast<float>(b1 * m1[e] + (1 - b1) * grad);
        m2[e] = static_cast<float>(b2 * m2[e] + (1 - b2) * grad * grad);
      }
      const double mh = m1[e] / (1 - b1t), vh = m2[e] / (1 - b2t);
      v[e] = static_cast<float>(v[e] - o.learning_rate * mh / (std::sqrt(vh) + eps));
    }
  }
  for (int64_t e = 0; e < n; ++e)
    q[r0 * k + e] = static_cast<int32_t>(std::clamp(fl[e] + (v[e] >= 0.0f ? 1.0f : 0.0f), lo, hi));
}

// Coordinate descent on the integers of rows [r0, r1) of group grp: each weight moves to the other of its two grid
// points (floor / ceil of w / s, clamped) when that lowers its row's reconstruction term; sweeps in element order
// until none moves (at most `sweeps`). With d = s q - w and g = A d + e_r, moving weight i by t (= +-s_i) changes
// the term by 2 t g_i + t^2 A_ii, and g by t A[:, i]. Never increases the objective.
void polish_rows(const AdaRoundProblem& p, int64_t grp, int64_t r0, int64_t r1, const double* lin_e, int64_t sweeps,
                 int32_t* q) {
  const int64_t k = p.k;
  const double* h = p.gram + grp * k * k;
  std::vector<double> d(static_cast<size_t>(k)), g(static_cast<size_t>(k));
  for (int64_t r = r0; r < r1; ++r) {
    const float* w = p.w + r * k;
    const float* s = p.scale + r * k;
    int32_t* qr = q + r * k;
    for (int64_t i = 0; i < k; ++i) d[i] = static_cast<double>(s[i]) * qr[i] - static_cast<double>(w[i]);
    for (int64_t i = 0; i < k; ++i) {
      double acc = lin_e[(r - r0) * k + i];
      for (int64_t j = 0; j < k; ++j) acc += h[i * k + j] * d[j];
      g[i] = acc;
    }
    for (int64_t sweep = 0; sweep < sweeps; ++sweep) {
      bool moved = false;
      for (int64_t i = 0; i < k; ++i) {
        const int32_t fl = static_cast<int32_t>(std::floor(w[i] / s[i]));
        const int32_t a = std::clamp(fl, p.qmin, p.qmax), b = std::clamp(fl + 1, p.qmin, p.qmax);
        const int32_t other = qr[i] == a ? b : a;
        if (other == qr[i]) continue;
        const double t = static_cast<double>(s[i]) * (other - qr[i]);
        if (2.0 * t * g[i] + t * t * h[i * k + i] >= 0.0) continue;
        qr[i] = other;
        d[i] += t;
        for (int64_t j = 0; j < k; ++j) g[j] += t * h[j * k + i];
        moved = true;
      }
      if (!moved) break;
    }
  }
}

}  // namespace

AdaRoundLayerStats adaround_rows(const AdaRoundProblem& p, const AdaRoundOptions& o, int32_t* q) {
  PERCH_CHECK(p.rows > 0 && p.k > 0 && p.w && p.scale && p.gram && p.qmin < p.qmax && !p.cross == !p.target_gram,
              "adaround: bad problem");
  const int64_t rpg = p.rows_per_group > 0 ? p.rows_per_group : p.rows;
  PERCH_CHECK(p.rows % rpg == 0, "adaround: ", p.rows, " rows are not a multiple of the group's ", rpg);
  const int64_t groups = p.rows / rpg, k = p.k;
  const int64_t blocks_per_group = (rpg + kRowBlock - 1) / kRowBlock;
  std::vector<float> hf(static_cast<size_t>(groups * k * k));
  for (size_t i = 0; i < hf.size(); ++i) hf[i] = static_cast<float>(p.gram[i]);
  std::vector<Linear> lin(static_cast<size_t>(groups));
  parallel_for(0, groups, [&](int64_t g0, int64_t g1) {
    for (int64_t grp = g0; grp < g1; ++grp) lin[grp] = linear_part(p, grp, grp * rpg, (grp + 1) * rpg);
  });
  parallel_for(0, groups * blocks_per_group, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t grp = b / blocks_per_group, r0 = grp * rpg + (b % blocks_per_group) * kRowBlock;
      const int64_t r1 = std::min(r0 + kRowBlock, (grp + 1) * rpg);
      const double* lin_e = lin[grp].e.data() + (r0 - grp * rpg) * k;  // this block's rows
      optimise_block(p, o, hf.data() + grp * k * k, lin_e, r0, r1, q);
      if (o.polish_sweeps > 0) polish_rows(p, grp, r0, r1, lin_e, o.polish_sweeps, q);
    }
  });
  // Against nearest rounding (the same division and rounding as quant::quantize_value).
  std::vector<int32_t> nearest(static_cast<size_t>(p.rows * k));
  AdaRoundLayerStats st;
  for (int64_t e = 0; e < p.rows * k; ++e) {
    nearest[e] = quant::quantize_value(p.w[e], p.scale[e], 0, p.qmin, p.qmax);
    st.changed += nearest[e] != q[e];
  }
  for (int64_t grp = 0; grp < groups; ++grp) {
    st.loss_nearest += reconstruction(p, grp, grp * rpg, (grp + 1) * rpg, lin[grp], nearest.data());
    st.loss += reconstruction(p, grp, grp * rpg, (grp + 1) * rpg, lin[grp], q);
  }
  if (!(st.loss < st.loss_nearest)) {
    std::copy(nearest.begin(), nearest.end(), q);
    st.loss = st.loss_nearest;
    st.changed = 0;
    st.kept_nearest = true;
  }
  return st;
}

namespace {

// A layer to round: its node, the weight laid out as rows x k (output channel rows), element scales, groups.
struct Target {
  size_t node = 0;
  std::string input;
  quant::QuantParams params;
  int64_t rows = 0, k = 0, groups = 1;
  bool transposed = false;  // weight stored [K, N] (Gemm transB 0, MatMul): rows are its columns
  std::string qinput;         // its input in the simulated model (quantized inputs)
  std::vector<double> gram;   // groups x k x k sums, then means: E[x~ x~^T]
  std::vector<double> cross, target_gram;  // quantized inputs only: E[x~ x^T], E[x x^T]
  int64_t count = 0;
  int64_t bytes(bool quantized_inputs) const {
    return (quantized_inputs ? 3 : 1) * groups * k * k * static_cast<int64_t>(sizeof(double));
  }
};

// m += a b^T for a, b: k x n (row-major), through a float GEMM into `tmp` (k x k).
void add_outer(const float* a, const float* b, int64_t k, int64_t n, std::vector<float>& tmp, double* m) {
  gemm(true, k, k, n, a, n, b, n, tmp.data());
  for (int64_t i = 0; i < k * k; ++i) m[i] += tmp[i];
}

// Adds, over the patches of Conv node `n` (geometry from the input shape), x~ x~^T to t.gram and, when xf (the
// float input) is given, x~ x^T to t.cross and x x^T to t.target_gram.
void add_conv_moments(const Node& n, const Tensor& xq, const Tensor* xf, const Tensor& w, Target& t) {
  // 1-D/2-D convs through the 2-D im2col, 3-D and higher through the N-d one; the same patch rows either way.
  int64_t batch, channels, group, in_plane = 1, pos = 1, k;
  std::function<void(const float*, float*)> im2col;
  if (xq.rank() >= 5) {
    const kernels::ConvNdShape s = runtime::conv_nd_shape(n, xq.shape(), w.shape());
    batch = s.batch, channels = s.in_channels, group = s.group, k = channels / group;
    const std::vector<int64_t> out = s.out();
    for (size_t j = 0; j < s.in.size(); ++j) in_plane *= s.in[j], pos *= out[j], k *= s.kernel[j];
    im2col = [s](const float* x, float* col) { kernels::im2col_nd_f32(s, x, col); };
  } else {
    const kernels::Conv2dShape s = runtime::conv2d_shape(n, xq.shape(), w.shape());
    batch = s.batch, channels = s.in_channels, group = s.group, in_plane = s.in_h * s.in_w, pos = s.out_h() * s.out_w();
    k = (channels / group) * s.kernel_h * s.kernel_w;
    im2col = [s](const float* x, float* col) { kernels::im2col_f32(s, x, col); };
  }
  PERCH_CHECK(k == t.k && group == t.groups, n.describe(), ": adaround: input does not fit the weight");
  PERCH_CHECK(!xf || xf->shape() == xq.shape(), n.describe(), ": adaround: float and quantized inputs differ in shape");
  std::vector<float> cq(static_cast<size_t>(k * pos)), cf(xf ? cq.size() : 0), tmp(static_cast<size_t>(k * k));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t grp = 0; grp < group; ++grp) {
      const int64_t off = grp * k * k;
      const int64_t plane = ((b * channels) + grp * (channels / group)) * in_plane;
      im2col(xq.data<float>() + plane, cq.data());
      add_outer(cq.data(), cq.data(), k, pos, tmp, t.gram.data() + off);
      if (!xf) continue;
      im2col(xf->data<float>() + plane, cf.data());
      add_outer(cq.data(), cf.data(), k, pos, tmp, t.cross.data() + off);
      add_outer(cf.data(), cf.data(), k, pos, tmp, t.target_gram.data() + off);
    }
  t.count += batch * pos;
}

// The same for Gemm / MatMul inputs viewed as [rows, K].
void add_row_moments(const Tensor& xq, const Tensor* xf, Target& t) {
  const int64_t k = t.k, rows = xq.numel() / k;
  PERCH_CHECK(xq.numel() % k == 0 && (!xf || xf->numel() == xq.numel()), "adaround: input of ", xq.numel(),
              " values is not rows of ", k);
  // a^T b for a, b: rows x k = (k x rows) (k x rows)^T: transpose once into k x rows.
  auto transposed = [&](const Tensor& x) {
    std::vector<float> tr(static_cast<size_t>(x.numel()));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < k; ++i) tr[i * rows + r] = x.data<float>()[r * k + i];
    return tr;
  };
  std::vector<float> tmp(static_cast<size_t>(k * k));
  const std::vector<float> tq = transposed(xq);
  add_outer(tq.data(), tq.data(), k, rows, tmp, t.gram.data());
  if (xf) {
    const std::vector<float> tf = transposed(*xf);
    add_outer(tq.data(), tf.data(), k, rows, tmp, t.cross.data());
    add_outer(tf.data(), tf.data(), k, rows, tmp, t.target_gram.data());
  }
  t.count += rows;
}

}  // namespace

AdaRoundReport round_weights_adaptively(Calibration& cal, const Dataset& data, const PtqOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  AdaRoundReport rep;
  PERCH_CHECK(data.size() > 0, "adaround: no images in ", data.name);
  const Model& m = cal.model;
  const Graph& g = m.graph;
  const auto aparams = quantized_activation_params(cal, opt);
  cal.rounded_weights.clear();

  std::vector<Target> targets;
  std::set<std::string> seen;  // a weight shared by several nodes: rounded for its first reader
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    if (n.op_type != "Conv" && n.op_type != "Gemm" && n.op_type != "MatMul") continue;
    if (opt.float_nodes.count(n.name) || n.inputs.size() < 2) continue;
    const Tensor* w = g.initializer(n.input(1));
    if (!w || w->dtype() != DType::kFloat32 || seen.count(n.input(1))) continue;
    if (n.op_type == "Gemm" && n.attr_int("transA", 0) != 0) continue;
    if (n.op_type == "MatMul" && w->rank() != 2) continue;
    if (n.op_type == "Conv" && w->rank() < 3) continue;
    const WeightOptions& wo = opt.layer_weights.count(n.name) ? opt.layer_weights.at(n.name) : opt.weights;
    Target t;
    t.node = ni;
    t.input = n.input(0);
    t.params = layer_weight_params(m, n, *w, wo, opt, aparams, nullptr);
    if (n.op_type == "Conv") {
      t.rows = w->dim(0);
      t.k = w->numel() / t.rows;
      t.groups = n.attr_int("group", 1);
    } else {
      t.transposed = n.op_type == "MatMul" || n.attr_int("transB", 0) == 0;
      t.rows = t.transposed ? w->dim(1) : w->dim(0);
      t.k = t.transposed ? w->dim(0) : w->dim(1);
    }
    seen.insert(n.input(1));
    targets.push_back(std::move(t));
  }
  if (targets.empty()) return rep;

  const int64_t images = opt.adaround_options.samples > 0 ? std::min(opt.adaround_options.samples, data.size()) : data.size();
  rep.images = images;
  const Dataset part = take_spread(data, images);
  const runtime::Executor exec(m);
  // Quantized inputs: layer by layer in graph order, each fitted on its input in the simulated model with the layers
  // before it already rounded adaptively (build_quantized uses cal.rounded_weights as they grow) and the ones after it
  // rounded to nearest — AIMET's sequential order, at the cost of a float and a simulated pass per layer.
  const bool qin = opt.adaround_options.quantized_inputs;
  std::unique_ptr<runtime::Executor> qexec;
  auto simulate_up_to_now = [&]() {
    graph::Model qm = [&] {
      const ScopedQuiet hush;  // the final build repeats its notes
      return build_quantized(cal, opt).model;
    }();
    std::map<std::string, std::string> qin_of;
    for (const Node& n : qm.graph.nodes) qin_of[n.name] = n.input(0);
    for (Target& t : targets) {
      auto it = qin_of.find(g.nodes[t.node].name);
      PERCH_CHECK(it != qin_of.end(), m.source, ": adaround: ", g.nodes[t.node].describe(), " is not in the quantized model");
      t.qinput = it->second;
    }
    qexec = std::make_unique<runtime::Executor>(std::move(qm));
  };
  const int64_t batch = opt.batch;  // quantized inputs: the fitted layer's float input is kept for one batch
  constexpr int64_t kBudget = int64_t{512} << 20;
  size_t next = 0;
  int64_t done = 0;
  Progress solving("adaround: layers", static_cast<int64_t>(targets.size()));
  while (next < targets.size()) {
    // One chunk of layers whose second moments fit the budget (at least one layer).
    size_t end = next;
    int64_t bytes = 0;
    while (end < targets.size() && (end == next || (!qin && bytes + targets[end].bytes(qin) <= kBudget)))
      bytes += targets[end++].bytes(qin);
    if (qin) simulate_up_to_now();
    std::map<std::string, std::vector<Target*>> by_input, by_qinput;
    for (size_t i = next; i < end; ++i) {
      Target& t = targets[i];
      const size_t sz = static_cast<size_t>(t.groups * t.k * t.k);
      t.gram.assign(sz, 0.0);
      if (qin) {
        t.cross.assign(sz, 0.0);
        t.target_gram.assign(sz, 0.0);
        by_qinput[t.qinput].push_back(&t);
      }
      by_input[t.input].push_back(&t);
    }
    std::map<std::string, Tensor> kept;  // quantized inputs: float inputs of this batch
    auto add = [&](Target& t, const Tensor& xq, const Tensor* xf) {
      PERCH_CHECK(xq.dtype() == DType::kFloat32, m.source, ": adaround: input of ", g.nodes[t.node].describe(),
                  " is not float32");
      const Node& n = g.nodes[t.node];
      if (n.op_type == "Conv") add_conv_moments(n, xq, xf, *g.initializer(n.input(1)), t);
      else add_row_moments(xq, xf, t);
    };
    auto observe = [&](const std::string& name, const Tensor& x) {
      auto it = by_input.find(name);
      if (it == by_input.end()) return;
      if (qin) kept[name] = x.clone();
      else
        for (Target* t : it->second) add(*t, x, nullptr);
    };
    auto observe_q = [&](const std::string& name, const Tensor& x) {
      auto it = by_qinput.find(name);
      if (it == by_qinput.end()) return;
      for (Target* t : it->second) add(*t, x, &kept.at(t->input));
    };
    for (const auto& chunk : part.chunks(batch)) {
      const int64_t b = chunk.first, nb = chunk.second;
      const runtime::TensorMap feeds = part.feeds(exec.input_name(), b, nb);
      kept.clear();
      for (const auto& [name, x] : feeds) observe(name, x);
      exec.run(feeds, observe);
      if (qin) {
        for (const auto& [name, x] : feeds) observe_q(name, x);
        qexec->run(feeds, observe_q);
      }
    }
    for (size_t i = next; i < end; ++i) {
      Target& t = targets[i];
      const Node& n = g.nodes[t.node];
      const Tensor& w = *g.initializer(n.input(1));
      PERCH_CHECK(t.count > 0, m.source, ": ", n.describe(), ": adaround: input '", t.input, "' was never computed");
      bool finite = true;
      for (auto* mat : {&t.gram, &t.cross, &t.target_gram})
        for (double& v : *mat) {
          v /= static_cast<double>(t.count);
          finite &= std::isfinite(v);
        }
      auto release = [&t] {
        for (auto* mat : {&t.gram, &t.cross, &t.target_gram}) std::vector<double>().swap(*mat);
      };
      if (!finite) {  // NaN/Inf inputs: nearest rounding for this layer
        release();
        solving.update(++done);
        continue;
      }
      // Element scales in the weight's layout, then both as rows x k.
      const quant::SlotLayout lay = quant::SlotLayout::make(t.params.spec, w.shape());
      std::vector<float> scale(static_cast<size_t>(w.numel())), wr(scale.size()), sr(scale.size());
      lay.for_each_run([&](int64_t begin, int64_t len, int64_t slot, int64_t step) {
        for (int64_t i = 0; i < len; ++i) scale[begin + i] = t.params.scale[slot + i * step];
      });
      for (int64_t r = 0; r < t.rows; ++r)
        for (int64_t j = 0; j < t.k; ++j) {
          const int64_t src = t.transposed ? j * t.rows + r : r * t.k + j;
          wr[r * t.k + j] = w.data<float>()[src];
          sr[r * t.k + j] = scale[src];
        }
      AdaRoundProblem p;
      p.w = wr.data();
      p.scale = sr.data();
      p.rows = t.rows;
      p.k = t.k;
      p.rows_per_group = t.rows / t.groups;
      p.gram = t.gram.data();
      if (qin) {
        p.cross = t.cross.data();
        p.target_gram = t.target_gram.data();
      }
      p.qmin = t.params.spec.qmin();
      p.qmax = t.params.spec.qmax();
      std::vector<int32_t> qr(scale.size());
      AdaRoundLayer layer{n.name, n.input(1), w.numel(), adaround_rows(p, opt.adaround_options, qr.data())};
      Tensor q(t.params.spec.storage_type(), w.shape());
      PERCH_CHECK(q.dtype() == DType::kInt8, n.describe(), ": adaround: weights of ", t.params.spec.bits, " bits are not int8");
      for (int64_t r = 0; r < t.rows; ++r)
        for (int64_t j = 0; j < t.k; ++j)
          q.data<int8_t>()[t.transposed ? j * t.rows + r : r * t.k + j] = static_cast<int8_t>(qr[r * t.k + j]);
      cal.rounded_weights[n.input(1)] = {t.params, std::move(q)};
      rep.layers.push_back(std::move(layer));
      release();
      solving.update(++done);
    }
    next = end;
  }
  solving.finish();
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace perch::ptq
