// Empirical bias correction (declared in perch/ptq/quantize.h).
//
// Analytic bias correction (calibrate() / build_quantized()) removes the mean output shift that *weight*
// rounding causes: E[(W_q - W) x] with E[x] from the float model. What it cannot see is the shift that
// quantized *activations* bring in — clipped ranges, rounding passed through nonlinear ops (hardswish,
// sigmoid), the shifts of earlier layers arriving at this one. The empirical correction measures the total:
//
//   delta_c = E[y_c | float model] - E[y_c | simulated quantized model],   c = output channel,
//
// the mean taken over the correction images and every spatial position (Conv: axis 1 of [N, C, ...];
// Gemm: axis 1 of [N, C]), in double, and adds it to the layer's bias: to an int32 bias (scale
// s_in * s_w[c], zero point 0) as nearbyint(delta_c / (s_in * s_w[c])) whole steps — rounding half to even,
// so the written layer's mean is within half a step of the float mean on these images —, to a float bias as
// it is.
//
// Sequential, in one pass: the simulated model runs on all correction images as one batch, node by node;
// when a corrected layer's output is computed its delta is measured, the correction the written model will
// hold (the rounded steps) added to that output, and only then do the layers after it run — so each layer's
// delta is measured with every earlier layer already corrected (as Nagel et al. 2019, "Data-Free
// Quantization", sec. 4.2, and AIMET's empirical bias correction do it layer by layer). The cost is one
// float and one simulated pass, and memory for one batch of all correction images (hence
// `options.empirical_bias_samples` and empirical_bias_images()).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "perch/core/error.h"
#include "perch/core/progress.h"
#include "perch/ptq/quantize.h"
#include "perch/runtime/executor.h"

namespace perch::ptq {
namespace {

using graph::Graph;
using graph::Model;
using graph::Node;

// Per-channel sums over axis 1 of [N, C, ...] (or [N, C]).
void add_channel_sums(const Tensor& t, std::vector<double>& sum, int64_t& count) {
  PERCH_CHECK(t.dtype() == DType::kFloat32 && t.rank() >= 2, "empirical bias correction: a layer output of shape ",
              shape_str(t.shape()), " is not [N, C, ...] float32");
  const int64_t n = t.dim(0), c = t.dim(1), inner = t.numel() / std::max<int64_t>(1, n * c);
  if (sum.empty()) sum.assign(static_cast<size_t>(c), 0.0);
  PERCH_CHECK(static_cast<int64_t>(sum.size()) == c, "empirical bias correction: a layer output has ", c,
              " channels, earlier ", sum.size());
  const float* d = t.data<float>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      double acc = 0;
      for (int64_t k = 0; k < inner; ++k) acc += d[(i * c + ch) * inner + k];
      sum[ch] += acc;
    }
  count += n * inner;
}

}  // namespace

int64_t empirical_bias_images(int64_t available, int64_t image_bytes, int64_t samples) {
  if (samples > 0) return std::min(samples, available);
  constexpr int64_t kMaxImages = 256, kBudget = int64_t{64} << 20;
  return std::max<int64_t>(1, std::min({available, kMaxImages, kBudget / std::max<int64_t>(1, image_bytes)}));
}

EmpiricalBiasReport correct_biases_empirically(Calibration& cal, const Dataset& data, const PtqOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  EmpiricalBiasReport rep;
  PERCH_CHECK(data.size() > 0, "empirical bias correction: no images in ", data.name);
  // The simulated pass below runs all its images as one batch: data of several shapes (SPEC+SPEC) lends it the
  // largest shape group.
  const auto [group_begin, group_rows] = data.largest_group_rows();
  const Dataset& group = *data.locate(group_begin, group_rows).first;  // its images and inputs hold group_rows rows
  if (!data.groups.empty() && !quiet())
    std::fprintf(stderr, "note: empirical bias correction: %s has %zu input shapes; measured on the %lld images of shape %s\n",
                 data.name.c_str(), data.groups.size() + 1, static_cast<long long>(group_rows),
                 shape_str(group.images.shape()).c_str());
  int64_t row_bytes = static_cast<int64_t>(group.images.nbytes()) / group_rows;
  for (const auto& [name, t] : group.inputs) row_bytes += static_cast<int64_t>(t.nbytes()) / group_rows;
  const int64_t count = empirical_bias_images(group_rows, row_bytes, opt.empirical_bias_samples);
  const Dataset part = take(data, group_begin, count);
  rep.images = count;

  // The layers to correct: Convs, ConvTransposes, and Gemms with beta 1 and a 1-D (or no) bias, whose weight the
  // options quantize (a per-channel output mean: the layer's geometry does not enter). A zero correction is seeded for each so that the model measured here has exactly the bias
  // layout of the final one (a layer without a bias gets a zero int32 bias, as the final build gives it).
  const Graph& fg = cal.model.graph;
  cal.output_shift.clear();
  for (const Node& n : fg.nodes) {
    if (n.op_type != "Conv" && n.op_type != "ConvTranspose" && n.op_type != "Gemm") continue;
    const Tensor* w = n.inputs.size() >= 2 ? fg.initializer(n.input(1)) : nullptr;
    if (!w || w->dtype() != DType::kFloat32 || w->rank() < 2) continue;
    if (n.op_type == "Gemm" && (n.attr_int("transA", 0) != 0 || n.attr_float("beta", 1.0f) != 1.0f)) continue;
    if (!n.input(2).empty()) {
      const Tensor* b = fg.initializer(n.input(2));
      if (!b || b->dtype() != DType::kFloat32 || b->rank() != 1) continue;
    }
    cal.output_shift[n.name].assign(static_cast<size_t>(weight_output_channels(n, *w)), 0.0);
  }
  const std::map<std::string, std::vector<double>> seeds = cal.output_shift;
  const Model qm = [&] {
    const ScopedQuiet hush;  // the build's notes and warnings come again from the caller's final build
    return build_quantized(cal, opt).model;
  }();
  cal.output_shift.clear();
  const Graph& qg = qm.graph;
  struct Layer {
    std::string node;
    std::vector<double> step;  // int32 bias step s_in * s_w[c] (one value: per-tensor); empty: a float bias
  };
  std::map<std::string, Layer> layer_of;  // output value -> layer
  for (const Node& n : qg.nodes) {
    if (!seeds.count(n.name) || n.outputs.size() != 1) continue;
    const int64_t wp = qg.producer(n.input(1));
    if (wp < 0 || qg.nodes[wp].op_type != "DequantizeLinear") continue;  // weights left float
    Layer l{n.name, {}};
    const int64_t bp = qg.producer(n.input(2));
    if (bp >= 0 && qg.nodes[bp].op_type == "DequantizeLinear") {
      const Tensor* s = qg.initializer(qg.nodes[bp].input(1));
      PERCH_CHECK(s && s->dtype() == DType::kFloat32, qm.source, ": ", n.describe(), ": bias scale is not a float initializer");
      for (float v : s->span<float>()) l.step.push_back(v);
    }
    layer_of[n.outputs[0]] = std::move(l);
  }
  if (layer_of.empty()) return rep;

  // Float means, in chunks (only observed, nothing kept).
  std::map<std::string, std::pair<std::vector<double>, int64_t>> float_sums;
  {
    const runtime::Executor fexec(cal.model);
    Progress progress("bias correction: float", count);
    for (int64_t b = 0; b < count; b += opt.batch) {
      const int64_t n = std::min(opt.batch, count - b);
      fexec.run(part.feeds(fexec.input_name(), b, n), [&](const std::string& v, const Tensor& t) {
        if (layer_of.count(v)) {
          auto& [sum, c] = float_sums[v];
          add_channel_sums(t, sum, c);
        }
      });
      progress.update(b + n);
    }
    progress.finish();
  }

  // Simulated pass, all images in one batch, correcting each layer's output as it is made.
  {
    const runtime::Executor sexec(qm);
    Progress progress("bias correction: simulated", static_cast<int64_t>(layer_of.size()));
    int64_t done = 0;
    sexec.run_adjusting(part.feeds(sexec.input_name(), 0, count), [&](const std::string& v, Tensor& t) {
      auto li = layer_of.find(v);
      if (li == layer_of.end()) return;
      auto fi = float_sums.find(v);
      PERCH_CHECK(fi != float_sums.end(), qm.source, ": empirical bias correction: '", v,
                  "' was not computed by the float model");
      std::vector<double> sim;
      int64_t sim_count = 0;
      add_channel_sums(t, sim, sim_count);
      const auto& [fsum, fcount] = fi->second;
      PERCH_CHECK(sim.size() == fsum.size() && sim_count == fcount, qm.source, ": empirical bias correction: '", v,
                  "' has different shapes in the float and the simulated model");
      std::vector<double> delta(sim.size());
      bool finite = true;
      for (size_t c = 0; c < sim.size(); ++c) {
        delta[c] = (fsum[c] - sim[c]) / static_cast<double>(fcount);
        finite &= std::isfinite(delta[c]);
      }
      progress.update(++done);
      if (!finite) return;  // NaN/Inf in the data: leave the layer as it is rather than write a NaN bias
      // What the final model will add: whole bias steps for an int32 bias (build_quantized rounds the same way).
      const std::vector<double>& step = li->second.step;
      std::vector<float> applied(delta.size());
      for (size_t c = 0; c < delta.size(); ++c) {
        const double s = step.empty() ? 0.0 : step[step.size() == 1 ? 0 : c];
        applied[c] = static_cast<float>(s > 0 ? std::nearbyint(delta[c] / s) * s : delta[c]);
      }
      const int64_t n = t.dim(0), c = t.dim(1), inner = t.numel() / (n * c);
      float* d = t.data<float>();
      for (int64_t i = 0; i < n; ++i)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t k = 0; k < inner; ++k) d[(i * c + ch) * inner + k] += applied[ch];
      for (double x : delta) rep.max_shift = std::max(rep.max_shift, std::fabs(x));
      cal.output_shift[li->second.node] = std::move(delta);
      ++rep.layers;
    });
    progress.finish();
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

}  // namespace perch::ptq
