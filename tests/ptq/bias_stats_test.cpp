// Bias-correction statistics: calibrate() records, per Conv, E[patch] — the mean over images and output
// positions of every im2col element (zeros in the padding) —, computed from row/column window sums
// (quantize.cpp add_patch_sums). Checked against the definition, summed in double by brute force, over
// geometries with padding, strides, dilations, groups (depthwise with a channel multiplier) and a 1-D conv.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "perch/ptq/quantize.h"

using namespace perch;

namespace {

struct Geometry {
  int64_t n, c, h, w, m, kh, kw, group, sh, sw, dh, dw, pt, pl, pb, pr;
  bool one_d = false;  // input [N, C, W], kernel [M, C/g, KW] (h, kh must be 1)
};

TEST(PtqBiasStats, ConvPatchMeansMatchTheDefinition) {
  const Geometry cases[] = {
      {2, 3, 7, 9, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1},        // 3x3 same padding
      {3, 4, 9, 8, 8, 3, 2, 2, 2, 3, 1, 1, 0, 1, 2, 0},        // groups, strides, asymmetric pads
      {1, 6, 10, 11, 12, 5, 5, 6, 2, 1, 1, 1, 2, 2, 2, 2},     // depthwise, multiplier 2, 5x5
      {2, 2, 8, 12, 3, 3, 3, 1, 1, 2, 2, 2, 2, 0, 1, 3},       // dilation
      {2, 5, 6, 6, 5, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0},        // pointwise
      {2, 4, 1, 13, 4, 1, 3, 4, 1, 2, 1, 1, 0, 1, 0, 1, true}, // 1-D depthwise, stride 2
  };
  for (const Geometry& s : cases) {
    SCOPED_TRACE("case c=" + std::to_string(s.c) + " k=" + std::to_string(s.kh) + "x" + std::to_string(s.kw) +
                 " group=" + std::to_string(s.group));
    const int64_t cg = s.c / s.group;
    graph::Model model;
    model.opsets = {{"", 13}};
    const Shape xs = s.one_d ? Shape{-1, s.c, s.w} : Shape{-1, s.c, s.h, s.w};
    model.graph.inputs.push_back({"x", DType::kFloat32, xs, {}, true});
    model.graph.outputs.push_back({"y", DType::kFloat32, {}, {}, false});
    std::mt19937 rng(static_cast<uint32_t>(s.c * 131 + s.kh * 7 + s.w));
    std::normal_distribution<float> nd(0.3f, 1.0f);  // nonzero mean: padding zeros visibly change E[patch]
    Tensor w(DType::kFloat32, s.one_d ? Shape{s.m, cg, s.kw} : Shape{s.m, cg, s.kh, s.kw});
    for (auto& v : w.span<float>()) v = nd(rng);
    model.graph.initializers["w"] = w;
    graph::Node conv;
    conv.op_type = "Conv";
    conv.name = "conv";
    conv.inputs = {"x", "w"};
    conv.outputs = {"y"};
    conv.attrs["group"] = s.group;
    if (s.one_d) {
      conv.attrs["strides"] = std::vector<int64_t>{s.sw};
      conv.attrs["dilations"] = std::vector<int64_t>{s.dw};
      conv.attrs["pads"] = std::vector<int64_t>{s.pl, s.pr};
    } else {
      conv.attrs["strides"] = std::vector<int64_t>{s.sh, s.sw};
      conv.attrs["dilations"] = std::vector<int64_t>{s.dh, s.dw};
      conv.attrs["pads"] = std::vector<int64_t>{s.pt, s.pl, s.pb, s.pr};
    }
    model.graph.nodes.push_back(conv);

    Dataset data;
    data.name = "normal";
    data.images = Tensor(DType::kFloat32, s.one_d ? Shape{s.n, s.c, s.w} : Shape{s.n, s.c, s.h, s.w});
    for (auto& v : data.images.span<float>()) v = nd(rng);

    ptq::PtqOptions opt;
    opt.equalize = false;
    opt.bias_correction = true;
    opt.batch = 1;  // sums accumulate over batches
    const ptq::Calibration cal = ptq::calibrate(model, data, opt);
    ASSERT_TRUE(cal.input_means.count("conv"));
    const auto& [mean, groups] = cal.input_means.at("conv");
    EXPECT_EQ(groups, s.group);
    const int64_t kk = s.kh * s.kw, per_group = cg * kk;
    ASSERT_EQ(static_cast<int64_t>(mean.size()), s.group * per_group);

    // The definition: output position (oh, ow) reads x[c, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw].
    const int64_t oh_n = (s.h + s.pt + s.pb - s.dh * (s.kh - 1) - 1) / s.sh + 1;
    const int64_t ow_n = (s.w + s.pl + s.pr - s.dw * (s.kw - 1) - 1) / s.sw + 1;
    const float* x = data.images.data<float>();
    for (int64_t g = 0; g < s.group; ++g)
      for (int64_t j = 0; j < per_group; ++j) {
        const int64_t c = g * cg + j / kk, kh = (j % kk) / s.kw, kw = j % s.kw;
        double sum = 0;
        for (int64_t n = 0; n < s.n; ++n)
          for (int64_t oh = 0; oh < oh_n; ++oh)
            for (int64_t ow = 0; ow < ow_n; ++ow) {
              const int64_t ih = oh * s.sh - s.pt + kh * s.dh, iw = ow * s.sw - s.pl + kw * s.dw;
              if (ih >= 0 && ih < s.h && iw >= 0 && iw < s.w) sum += x[((n * s.c + c) * s.h + ih) * s.w + iw];
            }
        const double want = sum / static_cast<double>(s.n * oh_n * ow_n);
        EXPECT_NEAR(mean[g * per_group + j], want, 1e-9) << "group " << g << " element " << j;
      }
  }
}

}  // namespace
