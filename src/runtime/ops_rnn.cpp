// RNN, GRU and LSTM (one layer each, forward / reverse / bidirectional) for the float executor, float32 and float64.
//
// Shapes (layout 0; layout 1, opset 14+, swaps the sequence and batch dims of X, Y and the states):
//   X [S, B, I], W [D, G·H, I], R [D, G·H, H], B [D, 2·G·H] = (Wb, Rb), sequence_lens [B] (int32),
//   initial_h / initial_c [D, B, H], P [D, 3·H] (LSTM peepholes i, o, f);
//   Y [S, D, B, H], Y_h / Y_c [D, B, H].  D = 2 for "bidirectional", else 1; G = 1 (RNN), 3 (GRU), 4 (LSTM).
// Gate order in W, R, B: GRU z, r, h; LSTM i, o, f, c. Per step t (the ONNX definition):
//   RNN   H_t = f(X_t·Wi^T + H_{t-1}·Ri^T + Wbi + Rbi)
//   GRU   z = f(X_t·Wz^T + H_{t-1}·Rz^T + Wbz + Rbz),  r = f(… r …)
//         h = g(X_t·Wh^T + (r ⊙ H_{t-1})·Rh^T + Rbh + Wbh)          linear_before_reset = 0
//         h = g(X_t·Wh^T + r ⊙ (H_{t-1}·Rh^T + Rbh) + Wbh)          linear_before_reset ≠ 0
//         H_t = (1 − z) ⊙ h + z ⊙ H_{t-1}
//   LSTM  i = f(X_t·Wi^T + H_{t-1}·Ri^T + Pi ⊙ C_{t-1} + Wbi + Rbi),  f_t likewise with Pf (input_forget: f_t = 1 − i)
//         c = g(X_t·Wc^T + H_{t-1}·Rc^T + Wbc + Rbc),  C_t = f_t ⊙ C_{t-1} + i ⊙ c
//         o = f(X_t·Wo^T + H_{t-1}·Ro^T + Po ⊙ C_t + Wbo + Rbo),  H_t = o ⊙ h(C_t)
// `clip` bounds every gate's pre-activation to [−clip, clip] (not C_t before h). Activations default to f = Tanh
// (RNN), f = Sigmoid, g = Tanh (GRU), f = Sigmoid, g = h = Tanh (LSTM); `activations` lists them per direction
// (forward's, then reverse's; one direction's list serves both), and `activation_alpha` / `activation_beta` are
// consumed in that order by the activations that take the parameter (the others skip it), missing ones defaulting as
// the ONNX op of the same name does.
// sequence_lens: batch b runs its first len_b steps (the reverse direction from step len_b − 1 down to 0); Y is 0
// after them and Y_h / Y_c hold the state after the last step run — 0 when len_b is 0 (no step ran: ONNX Runtime's
// reading; the spec leaves it open).
// The matrix products X·W^T (all steps at once) and H·R^T (per step) run on kernels::gemm_f32 for float32 (float
// accumulation), in double for float64; the gate arithmetic is in double, stored in the tensor's type per step.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <variant>

#include "ops_typed.h"
#include "perch/kernels/gemm_f32.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

enum class Cell { kRnn, kGru, kLstm };

struct Activation {
  enum Kind { kRelu, kTanh, kSigmoid, kAffine, kLeakyRelu, kThresholdedRelu, kScaledTanh, kHardSigmoid, kElu,
              kSoftsign, kSoftplus } kind = kTanh;
  double alpha = 0, beta = 0;

  double operator()(double x) const {
    switch (kind) {
      case kRelu: return std::max(x, 0.0);
      case kTanh: return std::tanh(x);
      case kSigmoid: return 1.0 / (1.0 + std::exp(-x));
      case kAffine: return alpha * x + beta;
      case kLeakyRelu: return x >= 0 ? x : alpha * x;
      case kThresholdedRelu: return x > alpha ? x : 0.0;
      case kScaledTanh: return alpha * std::tanh(beta * x);
      case kHardSigmoid: return std::clamp(alpha * x + beta, 0.0, 1.0);
      case kElu: return x >= 0 ? x : alpha * (std::exp(x) - 1.0);
      case kSoftsign: return x / (1.0 + std::abs(x));
      case kSoftplus: return std::log1p(std::exp(-std::abs(x))) + std::max(x, 0.0);
    }
    return x;
  }
};

// Name → kind, and which of alpha / beta it takes with their defaults (those of the ONNX ops of the same name).
Activation make_activation(const std::string& name, const std::vector<float>& alphas, size_t& ai,
                           const std::vector<float>& betas, size_t& bi) {
  std::string low;
  for (char c : name) low += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  struct Spec {
    const char* name;
    Activation::Kind kind;
    bool has_alpha, has_beta;
    double alpha, beta;
  };
  static const Spec specs[] = {
      {"relu", Activation::kRelu, false, false, 0, 0},
      {"tanh", Activation::kTanh, false, false, 0, 0},
      {"sigmoid", Activation::kSigmoid, false, false, 0, 0},
      {"affine", Activation::kAffine, true, true, 1.0, 0.0},
      {"leakyrelu", Activation::kLeakyRelu, true, false, 0.01, 0},
      {"thresholdedrelu", Activation::kThresholdedRelu, true, false, 1.0, 0},
      {"scaledtanh", Activation::kScaledTanh, true, true, 1.0, 1.0},
      {"hardsigmoid", Activation::kHardSigmoid, true, true, 0.2, 0.5},
      {"elu", Activation::kElu, true, false, 1.0, 0},
      {"softsign", Activation::kSoftsign, false, false, 0, 0},
      {"softplus", Activation::kSoftplus, false, false, 0, 0},
  };
  for (const Spec& s : specs) {
    if (low != s.name) continue;
    Activation a{s.kind, s.alpha, s.beta};
    if (s.has_alpha && ai < alphas.size()) a.alpha = alphas[ai++];
    if (s.has_beta && bi < betas.size()) a.beta = betas[bi++];
    return a;
  }
  PERCH_FAIL("unknown activation '", name, "' (Relu, Tanh, Sigmoid, Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, ",
             "HardSigmoid, Elu, Softsign, Softplus)");
}

// The activations of each direction: `per_dir` of them, from the attribute or the defaults.
std::vector<std::vector<Activation>> activations(const Node& n, Cell cell, int64_t dirs) {
  std::vector<std::string> names;
  if (n.has_attr("activations")) {
    const auto* v = std::get_if<std::vector<std::string>>(&n.attrs.at("activations"));
    PERCH_CHECK(v, "attribute 'activations' must be a list of strings");
    names = *v;
  }
  const std::vector<std::string> dflt = cell == Cell::kRnn   ? std::vector<std::string>{"Tanh"}
                                        : cell == Cell::kGru ? std::vector<std::string>{"Sigmoid", "Tanh"}
                                                             : std::vector<std::string>{"Sigmoid", "Tanh", "Tanh"};
  const size_t per_dir = dflt.size();
  if (names.empty())
    for (int64_t d = 0; d < dirs; ++d) names.insert(names.end(), dflt.begin(), dflt.end());
  if (names.size() == per_dir && dirs == 2) {
    const std::vector<std::string> one = names;  // one direction's list serves both
    names.insert(names.end(), one.begin(), one.end());
  }
  PERCH_CHECK(names.size() == per_dir * static_cast<size_t>(dirs), "attribute 'activations' has ", names.size(),
              " entries; ", per_dir * dirs, " expected (", per_dir, " per direction)");
  const auto alphas = n.attr_floats("activation_alpha"), betas = n.attr_floats("activation_beta");
  size_t ai = 0, bi = 0;
  std::vector<std::vector<Activation>> out(static_cast<size_t>(dirs));
  for (size_t k = 0; k < names.size(); ++k) out[k / per_dir].push_back(make_activation(names[k], alphas, ai, betas, bi));
  return out;
}

// c[m × n] = a[m × k] · b[n × k]^T, c's rows `ldc` apart.
template <typename T>
void matmul_nt(const T* a, const T* b, T* c, int64_t m, int64_t n, int64_t k, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    if (k == 0) {
      for (int64_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, 0.0f);
      return;
    }
    kernels::GemmF32Args g;
    g.trans_b = true;
    g.m = m, g.n = n, g.k = k;
    g.a = a, g.lda = k, g.b = b, g.ldb = k, g.c = c, g.ldc = ldc;
    kernels::gemm_f32(g);
  } else {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (int64_t p = 0; p < k; ++p) s += static_cast<double>(a[i * k + p]) * static_cast<double>(b[j * k + p]);
        c[i * ldc + j] = static_cast<T>(s);
      }
  }
}

template <typename T>
std::vector<Tensor> recurrent_typed(const Node& n, const Args& a, Cell cell) {
  const Tensor &x = in(n, a, 0), &w = in(n, a, 1), &r = in(n, a, 2);
  const int64_t G = cell == Cell::kRnn ? 1 : cell == Cell::kGru ? 3 : 4;
  const std::string direction = n.attr_string("direction", "forward");
  PERCH_CHECK(direction == "forward" || direction == "reverse" || direction == "bidirectional", "direction '",
              direction, "' is not forward, reverse or bidirectional");
  const int64_t D = direction == "bidirectional" ? 2 : 1;
  const int64_t layout = n.attr_int("layout", 0);
  PERCH_CHECK(layout == 0 || layout == 1, "layout must be 0 or 1, got ", layout);
  PERCH_CHECK(x.rank() == 3, "X must be 3-D, got ", shape_str(x.shape()));
  const int64_t S = x.dim(layout == 0 ? 0 : 1), Bt = x.dim(layout == 0 ? 1 : 0), I = x.dim(2);
  PERCH_CHECK(w.rank() == 3 && w.dim(0) == D && w.dim(2) == I && w.dim(1) % G == 0, "W must be [", D, ", ", G,
              "·hidden_size, ", I, "], got ", shape_str(w.shape()));
  const int64_t H = n.attr_int("hidden_size", w.dim(1) / G);
  PERCH_CHECK(H > 0 && w.dim(1) == G * H, "W has ", w.dim(1), " rows; hidden_size ", H, " needs ", G * H);
  PERCH_CHECK(r.rank() == 3 && r.dim(0) == D && r.dim(1) == G * H && r.dim(2) == H, "R must be [", D, ", ", G * H, ", ",
              H, "], got ", shape_str(r.shape()));
  for (const Tensor* t : {&w, &r}) PERCH_CHECK(t->dtype() == x.dtype(), "W and R must have X's type");
  const Tensor* bias = has(a, 3) ? a[3] : nullptr;
  if (bias)
    PERCH_CHECK(bias->dtype() == x.dtype() && bias->rank() == 2 && bias->dim(0) == D && bias->dim(1) == 2 * G * H,
                "B must be [", D, ", ", 2 * G * H, "] of X's type, got ", shape_str(bias->shape()));
  std::vector<int64_t> lens(static_cast<size_t>(Bt), S);
  if (has(a, 4)) {
    const Tensor& sl = *a[4];
    PERCH_CHECK(sl.numel() == Bt, "sequence_lens has ", sl.numel(), " values for batch ", Bt);
    lens = sl.to_i64_vector();
    for (int64_t v : lens) PERCH_CHECK(v >= 0 && v <= S, "sequence_lens value ", v, " outside [0, ", S, "]");
  }
  const Shape state_shape = layout == 0 ? Shape{D, Bt, H} : Shape{Bt, D, H};
  auto state_input = [&](size_t i, const char* what) -> const Tensor* {
    if (!has(a, i)) return nullptr;
    PERCH_CHECK(a[i]->shape() == state_shape && a[i]->dtype() == x.dtype(), what, " must be ", shape_str(state_shape),
                " of X's type, got ", shape_str(a[i]->shape()));
    return a[i];
  };
  const Tensor* h0 = state_input(5, "initial_h");
  const Tensor* c0 = cell == Cell::kLstm ? state_input(6, "initial_c") : nullptr;
  const Tensor* peep = cell == Cell::kLstm && has(a, 7) ? a[7] : nullptr;
  if (peep)
    PERCH_CHECK(peep->dtype() == x.dtype() && peep->rank() == 2 && peep->dim(0) == D && peep->dim(1) == 3 * H,
                "P must be [", D, ", ", 3 * H, "] of X's type, got ", shape_str(peep->shape()));
  const bool has_clip = n.has_attr("clip");
  const double clip = has_clip ? n.attr_float("clip", 0.0f) : 0.0;
  PERCH_CHECK(!has_clip || clip > 0, "clip must be positive, got ", clip);
  const bool lbr = n.attr_int("linear_before_reset", 0) != 0, input_forget = n.attr_int("input_forget", 0) != 0;
  const auto acts = activations(n, cell, D);

  // X as rows ordered (step, batch): layout 0 already is; layout 1 is copied into that order.
  std::vector<T> xs;
  if (layout == 1) {
    xs.resize(static_cast<size_t>(S * Bt * I));
    for (int64_t t = 0; t < S; ++t)
      for (int64_t b = 0; b < Bt; ++b) std::copy_n(x.data<T>() + (b * S + t) * I, I, xs.data() + (t * Bt + b) * I);
  }
  const T* x_rows = layout == 1 ? xs.data() : x.data<T>();
  const Shape y_shape = layout == 0 ? Shape{S, D, Bt, H} : Shape{Bt, S, D, H};
  Tensor y(x.dtype(), y_shape), yh = Tensor::uninitialized(x.dtype(), state_shape), yc = Tensor::uninitialized(x.dtype(), state_shape);
  T* yd = y.data<T>();
  auto y_at = [&](int64_t t, int64_t d, int64_t b) {
    return yd + (layout == 0 ? ((t * D + d) * Bt + b) : ((b * S + t) * D + d)) * H;
  };
  auto state_at = [&](Tensor& s, int64_t d, int64_t b) { return s.data<T>() + (layout == 0 ? (d * Bt + b) : (b * D + d)) * H; };
  auto state_in = [&](const Tensor* s, int64_t d, int64_t b) {
    return s->data<T>() + (layout == 0 ? (d * Bt + b) : (b * D + d)) * H;
  };

  const int64_t GH = G * H;
  std::vector<T> xw(static_cast<size_t>(S * Bt * GH)), hr(static_cast<size_t>(Bt * GH)), h(static_cast<size_t>(Bt * H)),
      rh(static_cast<size_t>(Bt * H));
  std::vector<double> c(static_cast<size_t>(Bt * H));
  for (int64_t d = 0; d < D; ++d) {
    const bool reverse = direction == "reverse" || d == 1;
    const T* wd = w.data<T>() + d * GH * I;
    const T* rd = r.data<T>() + d * GH * H;
    const T* wb = bias ? bias->data<T>() + d * 2 * GH : nullptr;
    const T* rb = wb ? wb + GH : nullptr;
    const T* pd = peep ? peep->data<T>() + d * 3 * H : nullptr;
    const auto& act = acts[static_cast<size_t>(d)];
    matmul_nt(x_rows, wd, xw.data(), S * Bt, GH, I, GH);  // X·W^T for every step
    for (int64_t b = 0; b < Bt; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        h[b * H + j] = h0 ? state_in(h0, d, b)[j] : T(0);
        c[b * H + j] = c0 ? static_cast<double>(state_in(c0, d, b)[j]) : 0.0;
      }
    }
    auto pre = [&](double v) { return has_clip ? std::clamp(v, -clip, clip) : v; };
    auto bias_of = [&](int64_t g, int64_t j, bool with_r) {
      if (!wb) return 0.0;
      return static_cast<double>(wb[g * H + j]) + (with_r ? static_cast<double>(rb[g * H + j]) : 0.0);
    };
    for (int64_t s = 0; s < S; ++s) {
      // H_{t-1}·R^T for every batch row (rows already finished compute too and are ignored). GRU without
      // linear_before_reset multiplies Rh after the reset gate, below.
      matmul_nt(h.data(), rd, hr.data(), Bt, cell == Cell::kGru && !lbr ? 2 * H : GH, H, GH);
      if (cell == Cell::kGru && !lbr) {
        for (int64_t b = 0; b < Bt; ++b) {
          if (s >= lens[b]) continue;
          const int64_t t = reverse ? lens[b] - 1 - s : s;
          const T* xr = xw.data() + (t * Bt + b) * GH;
          for (int64_t j = 0; j < H; ++j) {
            const double rg = act[0](pre(static_cast<double>(xr[H + j]) + static_cast<double>(hr[b * GH + H + j]) + bias_of(1, j, true)));
            rh[b * H + j] = static_cast<T>(rg * static_cast<double>(h[b * H + j]));
          }
        }
        matmul_nt(rh.data(), rd + 2 * H * H, hr.data() + 2 * H, Bt, H, H, GH);
      }
      for (int64_t b = 0; b < Bt; ++b) {
        if (s >= lens[b]) continue;
        const int64_t t = reverse ? lens[b] - 1 - s : s;
        const T* xr = xw.data() + (t * Bt + b) * GH;
        const T* hrb = hr.data() + b * GH;
        T* hb = h.data() + b * H;
        double* cb = c.data() + b * H;
        auto gate = [&](int64_t g, int64_t j) { return static_cast<double>(xr[g * H + j]) + static_cast<double>(hrb[g * H + j]) + bias_of(g, j, true); };
        for (int64_t j = 0; j < H; ++j) {
          double hn;
          if (cell == Cell::kRnn) {
            hn = act[0](pre(gate(0, j)));
          } else if (cell == Cell::kGru) {
            const double z = act[0](pre(gate(0, j)));
            double hh;
            if (lbr) {  // without it, the reset gate r was applied before Rh, above
              const double rg = act[0](pre(gate(1, j)));
              hh = act[1](pre(static_cast<double>(xr[2 * H + j]) + bias_of(2, j, false) +
                              rg * (static_cast<double>(hrb[2 * H + j]) + static_cast<double>(rb ? rb[2 * H + j] : T(0)))));
            } else {
              hh = act[1](pre(gate(2, j)));
            }
            hn = (1.0 - z) * hh + z * static_cast<double>(hb[j]);
          } else {
            const double cp = cb[j];
            const double ig = act[0](pre(gate(0, j) + (pd ? static_cast<double>(pd[j]) * cp : 0.0)));
            const double fg = input_forget ? 1.0 - ig : act[0](pre(gate(2, j) + (pd ? static_cast<double>(pd[2 * H + j]) * cp : 0.0)));
            const double cg = act[1](pre(gate(3, j)));
            const double cn = fg * cp + ig * cg;
            const double og = act[0](pre(gate(1, j) + (pd ? static_cast<double>(pd[H + j]) * cn : 0.0)));
            cb[j] = static_cast<double>(static_cast<T>(cn));
            hn = og * act[2](cn);
          }
          hb[j] = static_cast<T>(hn);
        }
        std::copy_n(hb, H, y_at(t, d, b));
      }
    }
    for (int64_t b = 0; b < Bt; ++b) {
      const bool ran = lens[b] > 0;
      T* hs = state_at(yh, d, b);
      T* cs = state_at(yc, d, b);
      for (int64_t j = 0; j < H; ++j) {
        hs[j] = ran ? h[b * H + j] : T(0);
        cs[j] = ran ? static_cast<T>(c[b * H + j]) : T(0);
      }
    }
  }
  if (cell == Cell::kLstm) return {y, yh, yc};
  return {y, yh};
}

std::vector<Tensor> recurrent(const Node& n, const Args& a, Cell cell) {
  const Tensor& x = in(n, a, 0);
  detail::check_float(x, "X");
  if (x.dtype() == DType::kFloat64) return recurrent_typed<double>(n, a, cell);
  return recurrent_typed<float>(n, a, cell);
}

}  // namespace

void register_rnn_ops(OpRegistry& r) {
  r.add("RNN", 1, [](const Node& n, const Args& a, int64_t) { return recurrent(n, a, Cell::kRnn); });
  r.add("GRU", 1, [](const Node& n, const Args& a, int64_t) { return recurrent(n, a, Cell::kGru); });
  r.add("LSTM", 1, [](const Node& n, const Args& a, int64_t) { return recurrent(n, a, Cell::kLstm); });
}

}  // namespace perch::runtime
