// Sampling ops of detection and segmentation heads for the float executor (float32 / float64, computed in double):
// GridSample (2-D), RoiAlign and MaxUnpool.
//
// GridSample: X [N, C, H, W], grid [N, Ho, Wo, 2] of (x, y) in [−1, 1] → Y [N, C, Ho, Wo]. A grid value g maps to
// the pixel coordinate ((g + 1)/2)·(L − 1) with align_corners, else ((g + 1)·L − 1)/2 (−1 and 1 the outer edges of the
// edge pixels). padding_mode: zeros reads 0 outside the image; border clamps the coordinate to [0, L − 1];
// reflection mirrors it at the image's edges (the edge pixels' centres with align_corners, their outer edges
// without) and then clamps. mode: bilinear ("linear" from opset 20), nearest (round half to even), bicubic
// ("cubic": the 4×4 Keys kernel with a = −0.75, each tap's coordinate padded as above, as PyTorch's grid_sample).
// RoiAlign: X [N, C, H, W], rois [R, 4] (x1, y1, x2, y2 in input units × 1 / spatial_scale), batch_indices [R] →
// Y [R, C, output_height, output_width]; each bin averages (mode avg) or takes the largest of (max) its
// sampling_ratio² bilinear samples (sampling_ratio 0: ceil(bin size) per axis); coordinate_transformation_mode
// half_pixel (opset 16's default) shifts the box by −0.5 pixel, output_half_pixel (opset 10's behaviour) does not;
// boxes narrower than a pixel are widened to one without half_pixel. Samples more than one pixel outside are 0, those
// within clamp to the edge (ONNX Runtime's and the reference's rule). Max mode takes the largest weighted corner
// term of each sample, as ONNX Runtime and the ONNX reference compute it.
// MaxUnpool: X [N, C, …] and I (flat indices over the whole N·C·spatial unpooled tensor, as MaxPool's Indices give
// them) scatter into zeros of the unpooled shape (from kernel/strides/pads); an output_shape input places that shape
// at the start of a larger one.
#include <algorithm>
#include <cmath>

#include "ops_typed.h"
#include "perch/runtime/executor.h"

namespace perch::runtime {

using detail::has;
using detail::check_float;
using detail::in;
using graph::Node;
using Args = std::vector<const Tensor*>;

namespace {

std::vector<double> as_double(const Tensor& t) {
  const Tensor d = t.to(DType::kFloat64);
  return {d.data<double>(), d.data<double>() + d.numel()};
}

Tensor from_double(DType dt, const Shape& s, const std::vector<double>& v) { return Tensor::from<double>(s, v).to(dt); }

// ---- GridSample --------------------------------------------------------------------------------------

enum class Pad { kZeros, kBorder, kReflection };

// Mirrors x into [lo2 / 2, hi2 / 2] (the bounds given doubled, to stay integral).
double reflect(double x, double lo2, double hi2) {
  if (lo2 == hi2) return 0;
  const double lo = lo2 / 2, span = (hi2 - lo2) / 2;
  x = std::abs(x - lo);
  const double extra = std::fmod(x, span);
  const auto flips = static_cast<int64_t>(std::floor(x / span));
  return flips % 2 == 0 ? extra + lo : span - extra + lo;
}

double pad_coordinate(double x, int64_t len, Pad pad, bool align) {
  if (pad == Pad::kBorder) return std::clamp(x, 0.0, static_cast<double>(len - 1));
  if (pad == Pad::kReflection) {
    x = align ? reflect(x, 0, 2.0 * static_cast<double>(len - 1)) : reflect(x, -1, 2.0 * static_cast<double>(len) - 1);
    return std::clamp(x, 0.0, static_cast<double>(len - 1));
  }
  return x;
}

double cubic_weight(double t, int k) {  // Keys' kernel, a = −0.75, for tap k ∈ {0, 1, 2, 3} at offset t ∈ [0, 1)
  constexpr double a = -0.75;
  auto near = [](double x) { return ((a + 2) * x - (a + 3)) * x * x + 1; };         // |x| <= 1
  auto far = [](double x) { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a; };  // 1 < |x| < 2
  switch (k) {
    case 0: return far(t + 1);
    case 1: return near(t);
    case 2: return near(1 - t);
    default: return far(2 - t);
  }
}

std::vector<Tensor> grid_sample(const Node& n, const Args& a, int64_t) {
  const Tensor &x = in(n, a, 0), &grid = in(n, a, 1);
  check_float(x, "X");
  check_float(grid, "grid");
  PERCH_CHECK(x.rank() == 4, "only 2-D sampling (X [N, C, H, W]) is supported, got X ", shape_str(x.shape()));
  PERCH_CHECK(grid.rank() == 4 && grid.dim(0) == x.dim(0) && grid.dim(3) == 2, "grid must be [", x.dim(0),
              ", H_out, W_out, 2], got ", shape_str(grid.shape()));
  std::string mode = n.attr_string("mode", "bilinear");
  if (mode == "linear") mode = "bilinear";
  if (mode == "cubic") mode = "bicubic";
  PERCH_CHECK(mode == "bilinear" || mode == "nearest" || mode == "bicubic", "mode '", mode, "' is not supported");
  const std::string pm = n.attr_string("padding_mode", "zeros");
  PERCH_CHECK(pm == "zeros" || pm == "border" || pm == "reflection", "padding_mode '", pm, "' is not supported");
  const Pad pad = pm == "zeros" ? Pad::kZeros : pm == "border" ? Pad::kBorder : Pad::kReflection;
  const bool align = n.attr_int("align_corners", 0) != 0;
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), Ho = grid.dim(1), Wo = grid.dim(2);
  const auto xv = as_double(x), gv = as_double(grid);
  std::vector<double> y(static_cast<size_t>(checked_numel({N, C, Ho, Wo})), 0.0);
  auto unnormalize = [&](double g, int64_t len) {
    return align ? (g + 1) / 2 * static_cast<double>(len - 1) : ((g + 1) * static_cast<double>(len) - 1) / 2;
  };
  for (int64_t b = 0; b < N; ++b)
    for (int64_t i = 0; i < Ho; ++i)
      for (int64_t j = 0; j < Wo; ++j) {
        const double* g = gv.data() + ((b * Ho + i) * Wo + j) * 2;
        const double ux = unnormalize(g[0], W), uy = unnormalize(g[1], H);
        for (int64_t c = 0; c < C; ++c) {
          const double* plane = xv.data() + (b * C + c) * H * W;
          auto at = [&](int64_t yy, int64_t xx) {
            return yy >= 0 && yy < H && xx >= 0 && xx < W ? plane[yy * W + xx] : 0.0;
          };
          double v = 0;
          if (mode == "bicubic") {
            const double fx = std::floor(ux), fy = std::floor(uy), tx = ux - fx, ty = uy - fy;
            for (int ky = 0; ky < 4; ++ky) {
              double row = 0;
              for (int kx = 0; kx < 4; ++kx) {
                const double px = pad_coordinate(fx - 1 + kx, W, pad, align), py = pad_coordinate(fy - 1 + ky, H, pad, align);
                row += cubic_weight(tx, kx) * at(static_cast<int64_t>(py), static_cast<int64_t>(px));
              }
              v += cubic_weight(ty, ky) * row;
            }
          } else {
            const double px = pad_coordinate(ux, W, pad, align), py = pad_coordinate(uy, H, pad, align);
            if (mode == "nearest") {
              v = at(static_cast<int64_t>(std::nearbyint(py)), static_cast<int64_t>(std::nearbyint(px)));
            } else {
              const double fx = std::floor(px), fy = std::floor(py), tx = px - fx, ty = py - fy;
              const auto x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
              v = (1 - ty) * ((1 - tx) * at(y0, x0) + tx * at(y0, x0 + 1)) +
                  ty * ((1 - tx) * at(y0 + 1, x0) + tx * at(y0 + 1, x0 + 1));
            }
          }
          y[static_cast<size_t>(((b * C + c) * Ho + i) * Wo + j)] = v;
        }
      }
  return {from_double(x.dtype(), {N, C, Ho, Wo}, y)};
}

// ---- RoiAlign ----------------------------------------------------------------------------------------

std::vector<Tensor> roi_align(const Node& n, const Args& a, int64_t opset) {
  const Tensor &x = in(n, a, 0), &rois = in(n, a, 1), &bidx = in(n, a, 2);
  check_float(x, "X");
  PERCH_CHECK(x.rank() == 4, "X must be [N, C, H, W], got ", shape_str(x.shape()));
  PERCH_CHECK(rois.rank() == 2 && rois.dim(1) == 4, "rois must be [num_rois, 4], got ", shape_str(rois.shape()));
  PERCH_CHECK(bidx.numel() == rois.dim(0), "batch_indices has ", bidx.numel(), " values for ", rois.dim(0), " rois");
  const std::string mode = n.attr_string("mode", "avg");
  PERCH_CHECK(mode == "avg" || mode == "max", "mode '", mode, "' is not avg or max");
  const std::string ctm = n.attr_string("coordinate_transformation_mode", opset >= 16 ? "half_pixel" : "output_half_pixel");
  PERCH_CHECK(ctm == "half_pixel" || ctm == "output_half_pixel", "coordinate_transformation_mode '", ctm, "' unknown");
  const bool half = ctm == "half_pixel";
  const int64_t oh = n.attr_int("output_height", 1), ow = n.attr_int("output_width", 1), ratio = n.attr_int("sampling_ratio", 0);
  PERCH_CHECK(oh > 0 && ow > 0 && ratio >= 0, "output_height/output_width must be positive and sampling_ratio >= 0");
  const double scale = n.attr_float("spatial_scale", 1.0f);
  const int64_t N = x.dim(0), C = x.dim(1), H = x.dim(2), W = x.dim(3), R = rois.dim(0);
  const auto xv = as_double(x), rv = as_double(rois);
  const auto bi = bidx.to_i64_vector();
  std::vector<double> y(static_cast<size_t>(checked_numel({R, C, oh, ow})), 0.0);
  struct Sample {
    int64_t y0, x0, y1, x1;
    double w[4];
    bool valid;
  };
  for (int64_t r = 0; r < R; ++r) {
    PERCH_CHECK(bi[r] >= 0 && bi[r] < N, "batch index ", bi[r], " of roi ", r, " outside [0, ", N, ")");
    const double off = half ? 0.5 : 0.0;
    const double* box = rv.data() + r * 4;
    const double x1 = box[0] * scale - off, y1 = box[1] * scale - off, x2 = box[2] * scale - off, y2 = box[3] * scale - off;
    double rw = x2 - x1, rh = y2 - y1;
    if (!half) rw = std::max(rw, 1.0), rh = std::max(rh, 1.0);
    const double bw = rw / static_cast<double>(ow), bh = rh / static_cast<double>(oh);
    const int64_t gy = ratio > 0 ? ratio : static_cast<int64_t>(std::ceil(rh / static_cast<double>(oh)));
    const int64_t gx = ratio > 0 ? ratio : static_cast<int64_t>(std::ceil(rw / static_cast<double>(ow)));
    const double count = static_cast<double>(std::max<int64_t>(gx * gy, 1));
    // Every sample's corners and weights, shared by the channels.
    std::vector<Sample> samples;
    for (int64_t ph = 0; ph < oh; ++ph)
      for (int64_t pw = 0; pw < ow; ++pw)
        for (int64_t iy = 0; iy < gy; ++iy)
          for (int64_t ix = 0; ix < gx; ++ix) {
            double yy = y1 + static_cast<double>(ph) * bh + (static_cast<double>(iy) + 0.5) * bh / static_cast<double>(gy);
            double xx = x1 + static_cast<double>(pw) * bw + (static_cast<double>(ix) + 0.5) * bw / static_cast<double>(gx);
            Sample s{};
            if (yy < -1.0 || yy > static_cast<double>(H) || xx < -1.0 || xx > static_cast<double>(W)) {
              samples.push_back(s);  // outside: contributes 0
              continue;
            }
            yy = std::max(yy, 0.0), xx = std::max(xx, 0.0);
            s.y0 = static_cast<int64_t>(yy), s.x0 = static_cast<int64_t>(xx);
            if (s.y0 >= H - 1) s.y0 = s.y1 = H - 1, yy = static_cast<double>(s.y0);
            else s.y1 = s.y0 + 1;
            if (s.x0 >= W - 1) s.x0 = s.x1 = W - 1, xx = static_cast<double>(s.x0);
            else s.x1 = s.x0 + 1;
            const double ly = yy - static_cast<double>(s.y0), lx = xx - static_cast<double>(s.x0), hy = 1 - ly, hx = 1 - lx;
            s.w[0] = hy * hx, s.w[1] = hy * lx, s.w[2] = ly * hx, s.w[3] = ly * lx;
            s.valid = true;
            samples.push_back(s);
          }
    for (int64_t c = 0; c < C; ++c) {
      const double* plane = xv.data() + (bi[r] * C + c) * H * W;
      size_t k = 0;
      for (int64_t ph = 0; ph < oh; ++ph)
        for (int64_t pw = 0; pw < ow; ++pw) {
          double acc = 0;
          bool first = true;
          for (int64_t s_i = 0; s_i < gx * gy; ++s_i, ++k) {
            const Sample& s = samples[k];
            if (mode == "avg") {
              if (s.valid)
                acc += s.w[0] * plane[s.y0 * W + s.x0] + s.w[1] * plane[s.y0 * W + s.x1] + s.w[2] * plane[s.y1 * W + s.x0] +
                       s.w[3] * plane[s.y1 * W + s.x1];
            } else {
              double m = 0;
              if (s.valid)
                m = std::max({s.w[0] * plane[s.y0 * W + s.x0], s.w[1] * plane[s.y0 * W + s.x1],
                              s.w[2] * plane[s.y1 * W + s.x0], s.w[3] * plane[s.y1 * W + s.x1]});
              acc = first ? m : std::max(acc, m);
              first = false;
            }
          }
          y[static_cast<size_t>(((r * C + c) * oh + ph) * ow + pw)] = mode == "avg" ? acc / count : acc;
        }
    }
  }
  return {from_double(x.dtype(), {R, C, oh, ow}, y)};
}

// ---- MaxUnpool ---------------------------------------------------------------------------------------

std::vector<Tensor> max_unpool(const Node& n, const Args& a, int64_t) {
  const Tensor &x = in(n, a, 0), &idx = in(n, a, 1);
  check_float(x, "X");
  PERCH_CHECK(idx.shape() == x.shape(), "I must have X's shape ", shape_str(x.shape()), ", got ", shape_str(idx.shape()));
  const int64_t r = x.rank() - 2;
  PERCH_CHECK(r >= 1, "X must be [N, C, spatial...], got ", shape_str(x.shape()));
  // The indices address the unpooled shape the kernel, strides and pads give; an output_shape (at least that
  // large) receives it at its start, zeros after (the ONNX reference's and ONNX Runtime's reading).
  const auto k = n.attr_ints("kernel_shape");
  PERCH_CHECK(static_cast<int64_t>(k.size()) == r, "kernel_shape must have ", r, " values");
  const auto st = n.attr_ints("strides", std::vector<int64_t>(static_cast<size_t>(r), 1));
  const auto p = n.attr_ints("pads", std::vector<int64_t>(static_cast<size_t>(2 * r), 0));
  PERCH_CHECK(static_cast<int64_t>(st.size()) == r && static_cast<int64_t>(p.size()) == 2 * r, "strides must have ", r,
              " values and pads ", 2 * r);
  Shape inferred = {x.dim(0), x.dim(1)};
  for (int64_t d = 0; d < r; ++d) inferred.push_back((x.dim(2 + d) - 1) * st[d] + k[d] - p[d] - p[r + d]);
  Shape out = inferred;
  if (has(a, 2)) {
    const auto s = a[2]->to_i64_vector();
    PERCH_CHECK(static_cast<int64_t>(s.size()) == x.rank(), "output_shape must have ", x.rank(), " values");
    for (int64_t d = 0; d < x.rank(); ++d)
      PERCH_CHECK(s[d] >= inferred[d] && (d >= 2 || s[d] == inferred[d]), "output_shape ", shape_str(Shape(s.begin(), s.end())),
                  " is smaller than the unpooled shape ", shape_str(inferred));
    out = Shape(s.begin(), s.end());
  }
  const int64_t total = checked_numel(inferred, "MaxUnpool output");
  const auto iv = idx.to_i64_vector();
  const auto xv = as_double(x);
  std::vector<double> y(static_cast<size_t>(checked_numel(out, "MaxUnpool output")), 0.0);
  const auto in_strides = detail::strides_of(inferred), out_strides = detail::strides_of(out);
  for (size_t i = 0; i < iv.size(); ++i) {
    PERCH_CHECK(iv[i] >= 0 && iv[i] < total, "index ", iv[i], " outside the unpooled shape's ", total, " elements");
    int64_t rest = iv[i], at = 0;
    for (size_t d = 0; d < inferred.size(); ++d) at += rest / in_strides[d] * out_strides[d], rest %= in_strides[d];
    y[static_cast<size_t>(at)] = xv[i];
  }
  return {from_double(x.dtype(), out, y)};
}

}  // namespace

void register_sampling_ops(OpRegistry& r) {
  r.add("GridSample", 16, grid_sample);
  r.add("RoiAlign", 10, roi_align);
  r.add("MaxUnpool", 9, max_unpool);
}

}  // namespace perch::runtime
