// Signal-processing ops of opset 17 for the float executor (audio front ends exported with their model), computed
// in double and stored in the output type:
//   HannWindow / HammingWindow / BlackmanWindow (size): with N = size (periodic, the default) or size − 1,
//     Hann 0.5 − 0.5·cos(2πn/N); Hamming α − (1 − α)·cos(2πn/N), α = 25/46; Blackman 0.42 − 0.5·cos(2πn/N) +
//     0.08·cos(4πn/N); output_datatype picks the type (float32 by default).
//   DFT (input [batch, …, 1 | 2] real or complex along `axis`, optional dft_length): X[k] = Σ_n x[n]·e^(∓2πikn/L)
//     (− forward, + inverse, which also divides by L); the signal is cut or zero-padded to L; `onesided` keeps
//     bins 0 … ⌊L/2⌋ (real forward transforms only). Output [..., 2] (real, imaginary). Opset 20 moved axis to an
//     input (default −2).
//   STFT (signal [batch, length, 1 | 2], frame_step, optional window and frame_length): frames t·frame_step of
//     frame_length samples, times the window (ones by default), each transformed as DFT; output
//     [batch, frames, bins, 2], frames = ⌊(length − frame_length) / frame_step⌋ + 1, bins ⌊frame_length/2⌋ + 1 when
//     `onesided` (the default) else frame_length.
//   MelWeightMatrix (num_mel_bins, dft_length, sample_rate, lower/upper_edge_hertz): [⌊dft_length/2⌋ + 1,
//     num_mel_bins] triangular filters between num_mel_bins + 2 mel-spaced points (mel = 2595·log10(1 + f/700), the
//     step (mel(upper) − mel(lower)) / (num_mel_bins + 2) as ONNX's reference has it), each point's bin
//     ⌊(dft_length + 1)·f / sample_rate⌋.
// The transforms are direct sums (O(L²) per signal) over a table of the L roots of unity.
#include <algorithm>
#include <cmath>
#include <numbers>

#include "ops_typed.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::in;
using detail::scalar_value;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

constexpr double kPi = std::numbers::pi;

DType output_type(const Node& n) { return detail::onnx_elem_type(n.attr_int("output_datatype", 1)); }

Tensor window(const Node& n, const Args& a, double (*f)(double, double)) {
  const auto size = static_cast<int64_t>(scalar_value(in(n, a, 0), "size"));
  PERCH_CHECK(size >= 0, "size must be >= 0, got ", size);
  const bool periodic = n.attr_int("periodic", 1) != 0;
  const double N = static_cast<double>(periodic ? size : size - 1);
  std::vector<double> v(static_cast<size_t>(size));
  for (int64_t i = 0; i < size; ++i) v[i] = f(static_cast<double>(i), N);
  return Tensor::from<double>({size}, v).to(output_type(n));
}

double hann(double i, double N) { return 0.5 - 0.5 * std::cos(2 * kPi * i / N); }
double hamming(double i, double N) {
  constexpr double alpha = 25.0 / 46.0;
  return alpha - (1 - alpha) * std::cos(2 * kPi * i / N);
}
double blackman(double i, double N) { return 0.42 - 0.5 * std::cos(2 * kPi * i / N) + 0.08 * std::cos(4 * kPi * i / N); }

// The transform of `len` complex samples (re, im: `stride` apart) into `bins` bins of length-L DFT.
void transform(const double* re, const double* im, int64_t stride, int64_t len, int64_t L, int64_t bins, bool inverse,
               const std::vector<double>& cos_t, const std::vector<double>& sin_t, double* out_re, double* out_im,
               int64_t out_stride) {
  const int64_t used = std::min(len, L);
  const double sign = inverse ? 1.0 : -1.0, norm = inverse ? 1.0 / static_cast<double>(L) : 1.0;
  for (int64_t k = 0; k < bins; ++k) {
    double sr = 0, si = 0;
    for (int64_t t = 0; t < used; ++t) {
      const int64_t w = (k * t) % L;
      const double c = cos_t[w], s = sign * sin_t[w], xr = re[t * stride], xi = im ? im[t * stride] : 0.0;
      sr += xr * c - xi * s, si += xr * s + xi * c;
    }
    out_re[k * out_stride] = sr * norm, out_im[k * out_stride] = si * norm;
  }
}

void roots(int64_t L, std::vector<double>& c, std::vector<double>& s) {
  c.resize(static_cast<size_t>(L)), s.resize(static_cast<size_t>(L));
  for (int64_t w = 0; w < L; ++w) c[w] = std::cos(2 * kPi * static_cast<double>(w) / static_cast<double>(L)),
                                  s[w] = std::sin(2 * kPi * static_cast<double>(w) / static_cast<double>(L));
}

void check_signal(const Tensor& x, const char* what) {
  detail::check_float(x, what);
  PERCH_CHECK(x.rank() >= 2 && (x.dim(-1) == 1 || x.dim(-1) == 2), what,
              " must end in a dim of 1 (real) or 2 (complex), got ", shape_str(x.shape()));
}

std::vector<Tensor> dft(const Node& n, const Args& a, int64_t opset) {
  const Tensor& x = in(n, a, 0);
  check_signal(x, "input");
  const int64_t r = x.rank();
  int64_t axis = opset >= 20 ? (has(a, 2) ? static_cast<int64_t>(scalar_value(*a[2], "axis")) : -2) : n.attr_int("axis", 1);
  PERCH_CHECK(axis >= -r && axis < r - 1 && axis != -1, "axis ", axis, " is outside the signal dims of rank ", r);
  if (axis < 0) axis += r;
  const int64_t len = x.dim(axis);
  const int64_t L = has(a, 1) ? static_cast<int64_t>(scalar_value(*a[1], "dft_length")) : len;
  PERCH_CHECK(L >= 1, "dft_length must be positive, got ", L);
  const bool inverse = n.attr_int("inverse", 0) != 0, onesided = n.attr_int("onesided", 0) != 0;
  PERCH_CHECK(!(inverse && onesided), "an inverse onesided DFT is not supported");
  const int64_t bins = onesided ? L / 2 + 1 : L;
  Shape ys = x.shape();
  ys[axis] = bins;
  ys.back() = 2;
  const Tensor xd = x.to(DType::kFloat64);
  const bool complex = x.dim(-1) == 2;
  const auto xs = detail::strides_of(x.shape()), os = detail::strides_of(ys);
  std::vector<double> out(static_cast<size_t>(checked_numel(ys)), 0.0), c, s;
  roots(L, c, s);
  // every position of the other dims
  Shape outer_shape = x.shape();
  outer_shape[axis] = 1;
  outer_shape.back() = 1;
  for (detail::Walker w(outer_shape, {xs, os}); w.valid(); w.next()) {
    const double* base = xd.data<double>() + w.offset(0);
    transform(base, complex ? base + 1 : nullptr, xs[axis], len, L, bins, inverse, c, s, out.data() + w.offset(1),
              out.data() + w.offset(1) + 1, os[axis]);
  }
  return {Tensor::from<double>(ys, out).to(x.dtype())};
}

std::vector<Tensor> stft(const Node& n, const Args& a, int64_t) {
  const Tensor& x = in(n, a, 0);
  check_signal(x, "signal");
  PERCH_CHECK(x.rank() == 3, "signal must be [batch, length, 1 | 2], got ", shape_str(x.shape()));
  const auto step = static_cast<int64_t>(scalar_value(in(n, a, 1), "frame_step"));
  PERCH_CHECK(step >= 1, "frame_step must be positive, got ", step);
  const Tensor* win = has(a, 2) ? a[2] : nullptr;
  int64_t L = has(a, 3) ? static_cast<int64_t>(scalar_value(*a[3], "frame_length")) : (win ? win->numel() : 0);
  PERCH_CHECK(L >= 1, "needs a window or a frame_length");
  if (win) PERCH_CHECK(win->numel() == L, "window has ", win->numel(), " values for frame_length ", L);
  const int64_t B = x.dim(0), len = x.dim(1);
  PERCH_CHECK(len >= L, "signal of ", len, " samples is shorter than one frame of ", L);
  const int64_t frames = (len - L) / step + 1;
  const bool onesided = n.attr_int("onesided", 1) != 0, complex = x.dim(2) == 2;
  const int64_t bins = onesided ? L / 2 + 1 : L;
  const Tensor xd = x.to(DType::kFloat64);
  std::vector<double> w(static_cast<size_t>(L), 1.0);
  if (win) {
    const Tensor wd = win->to(DType::kFloat64);
    std::copy_n(wd.data<double>(), L, w.begin());
  }
  std::vector<double> c, s, fr(static_cast<size_t>(L)), fi(static_cast<size_t>(L));
  roots(L, c, s);
  const Shape ys = {B, frames, bins, 2};
  std::vector<double> out(static_cast<size_t>(checked_numel(ys)));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t f = 0; f < frames; ++f) {
      const double* base = xd.data<double>() + (b * len + f * step) * x.dim(2);
      for (int64_t t = 0; t < L; ++t) {
        fr[t] = base[t * x.dim(2)] * w[t];
        fi[t] = complex ? base[t * x.dim(2) + 1] * w[t] : 0.0;
      }
      double* o = out.data() + ((b * frames + f) * bins) * 2;
      transform(fr.data(), fi.data(), 1, L, L, bins, false, c, s, o, o + 1, 2);
    }
  return {Tensor::from<double>(ys, out).to(x.dtype())};
}

std::vector<Tensor> mel_weight_matrix(const Node& n, const Args& a, int64_t) {
  const auto mels = static_cast<int64_t>(scalar_value(in(n, a, 0), "num_mel_bins"));
  const auto L = static_cast<int64_t>(scalar_value(in(n, a, 1), "dft_length"));
  const auto rate = static_cast<int64_t>(scalar_value(in(n, a, 2), "sample_rate"));
  const double lo = scalar_value(in(n, a, 3), "lower_edge_hertz"), hi = scalar_value(in(n, a, 4), "upper_edge_hertz");
  PERCH_CHECK(mels >= 1 && L >= 1 && rate >= 1 && lo >= 0 && hi > lo, "needs num_mel_bins, dft_length, sample_rate >= 1 and ",
              "0 <= lower_edge_hertz < upper_edge_hertz");
  const int64_t spec_bins = L / 2 + 1;
  auto to_mel = [](double f) { return 2595.0 * std::log10(1.0 + f / 700.0); };
  // num_mel_bins + 2 points, spaced by (mel(hi) − mel(lo)) / (num_mel_bins + 2) — the reference's step (one more
  // than the intervals between the points: the last lies below upper_edge_hertz), which ONNX Runtime follows too.
  const double mlo = to_mel(lo), step = (to_mel(hi) - mlo) / static_cast<double>(mels + 2);
  std::vector<int64_t> point(static_cast<size_t>(mels + 2));
  for (int64_t i = 0; i < mels + 2; ++i) {
    const double hz = 700.0 * (std::pow(10.0, (static_cast<double>(i) * step + mlo) / 2595.0) - 1.0);
    point[i] = static_cast<int64_t>(std::floor(static_cast<double>(L + 1) * hz / static_cast<double>(rate)));
    PERCH_CHECK(point[i] >= 0 && point[i] < spec_bins, "mel point ", i, " falls in bin ", point[i], ", outside the ",
                spec_bins, " spectrogram bins (upper_edge_hertz above the Nyquist frequency?)");
  }
  std::vector<double> m(static_cast<size_t>(spec_bins * mels), 0.0);
  for (int64_t i = 0; i < mels; ++i) {
    const int64_t left = point[i], centre = point[i + 1], right = point[i + 2];
    if (centre == left) {
      m[centre * mels + i] = 1.0;
    } else {
      for (int64_t j = left; j <= centre; ++j)
        m[j * mels + i] = static_cast<double>(j - left) / static_cast<double>(centre - left);
    }
    for (int64_t j = centre; j < right; ++j)
      m[j * mels + i] = static_cast<double>(right - j) / static_cast<double>(right - centre);
  }
  return {Tensor::from<double>({spec_bins, mels}, m).to(output_type(n))};
}

}  // namespace

void register_signal_ops(OpRegistry& r) {
  r.add("HannWindow", 17, [](const Node& n, const Args& a, int64_t) { return std::vector<Tensor>{window(n, a, hann)}; });
  r.add("HammingWindow", 17, [](const Node& n, const Args& a, int64_t) { return std::vector<Tensor>{window(n, a, hamming)}; });
  r.add("BlackmanWindow", 17, [](const Node& n, const Args& a, int64_t) { return std::vector<Tensor>{window(n, a, blackman)}; });
  r.add("DFT", 17, dft);
  r.add("STFT", 17, stft);
  r.add("MelWeightMatrix", 17, mel_weight_matrix);
}

}  // namespace perch::runtime
