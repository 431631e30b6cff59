#include "perch/ptq/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "perch/ptq/quantize.h"

namespace perch::ptq {

namespace {

std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// Per-output-channel [min, max] of a weight layer, drawn as vertical bars around a zero line: the
// picture of why one scale for the whole tensor fails when the bars differ by orders of magnitude.
std::string channel_range_svg(const Tensor& w, int64_t axis) {
  quant::QuantSpec spec;
  spec.granularity = quant::Granularity::kPerChannel;
  spec.axis = axis;
  const auto l = quant::SlotLayout::make(spec, w.shape());
  const auto r = quant::slot_ranges(l, w.data<float>());
  std::vector<float> lo(r.min), hi(r.max);
  for (int64_t s = 0; s < l.slots; ++s) lo[s] = std::min(lo[s], 0.0f), hi[s] = std::max(hi[s], 0.0f);  // bars from 0
  float m = 1e-30f;
  for (int64_t s = 0; s < l.slots; ++s) m = std::max({m, -lo[s], hi[s]});
  const int W = 420, H = 90;
  const double bw = static_cast<double>(W) / static_cast<double>(std::max<int64_t>(l.slots, 1));
  std::ostringstream os;
  os << "<svg class=\"ranges\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W << " " << H
     << "\" xmlns=\"http://www.w3.org/2000/svg\"><rect width=\"100%\" height=\"100%\" fill=\"#f7f7f2\"/>";
  for (int64_t s = 0; s < l.slots; ++s) {
    const double y0 = H / 2.0 - hi[s] / m * (H / 2.0 - 4), y1 = H / 2.0 - lo[s] / m * (H / 2.0 - 4);
    os << "<rect x=\"" << fmt("%.2f", s * bw) << "\" y=\"" << fmt("%.2f", y0) << "\" width=\"" << fmt("%.2f", std::max(bw - 0.5, 0.5))
       << "\" height=\"" << fmt("%.2f", std::max(y1 - y0, 0.5)) << "\" fill=\"#2b6cb0\"/>";
  }
  os << "<line x1=\"0\" x2=\"" << W << "\" y1=\"" << H / 2 << "\" y2=\"" << H / 2 << "\" stroke=\"#999\"/></svg>";
  return os.str();
}

// Cell colour for an accuracy drop (points): green 0, yellow 1, red >= 5.
std::string drop_colour(double pts) {
  const double t = std::clamp(pts / 5.0, 0.0, 1.0);
  const int r = static_cast<int>(80 + 175 * std::min(1.0, 2 * t)), g = static_cast<int>(200 - 150 * std::max(0.0, 2 * t - 1));
  char b[16];
  std::snprintf(b, sizeof b, "#%02x%02x70", r, g);
  return b;
}

}  // namespace

std::string render_report_html(const ReportInput& in) {
  std::ostringstream os;
  os << "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>" << esc(in.title) << "</title><style>"
     << "body{font-family:sans-serif;margin:24px;color:#222}h1{font-size:22px}h2{font-size:18px;margin-top:28px}"
     << "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}"
     << "th{background:#eee}td.l{text-align:left}.bar{display:inline-block;height:10px;background:#2b6cb0}"
     << "</style></head><body><h1>" << esc(in.title) << "</h1>";

  os << "<section id=\"summary\"><h2>Accuracy summary</h2><table><tr><th>configuration</th><th>top-1</th><th>vs first row</th></tr>";
  for (const auto& [label, acc] : in.accuracy)
    os << "<tr><td class=\"l\">" << esc(label) << "</td><td>" << fmt("%.4f", acc) << "</td><td>"
       << fmt("%+.2f pt", 100 * (acc - in.accuracy.front().second)) << "</td></tr>";
  os << "</table></section>";

  if (in.model) {
    os << "<section id=\"ranges\"><h2>Per-channel weight ranges</h2><p>Each bar is one output channel's [min, max]; "
          "a per-tensor scale must cover the tallest bar, leaving the short ones few integer levels. Shown as the "
          "model was given (BatchNormalization folded), before cross-layer equalization.</p><table>"
       << "<tr><th>layer</th><th>op</th><th>shape</th><th>spread</th><th>output channels</th></tr>";
    for (const auto& n : in.model->graph.nodes) {
      if (!quantizes_weights(n.op_type)) continue;
      const Tensor* w = in.model->graph.initializer(n.input(1));
      if (!w || w->dtype() != DType::kFloat32) continue;
      const int64_t axis = weight_channel_axis(n, w->rank());
      os << "<tr><td class=\"l\">" << esc(n.name) << "</td><td>" << n.op_type << "</td><td>" << shape_str(w->shape())
         << "</td><td>" << fmt("%.1f", channel_spread(*w, axis)) << "</td><td>" << channel_range_svg(*w, axis) << "</td></tr>";
    }
    os << "</table></section>";
  }

  if (in.sensitivity) {
    const auto& s = *in.sensitivity;
    const bool agreement = s.metric == "agreement";
    os << "<section id=\"sensitivity\"><h2>Sensitivity</h2><p>" << (agreement ? "Agreement" : "Accuracy")
       << " drop (points) with only this layer quantized "
       << "(&ldquo;alone&rdquo;) and with everything but this layer quantized (&ldquo;all-but&rdquo;); SQNR of the "
       << "output in dB. " << s.eval_images << " images, ";
    if (!agreement) os << "fp32 accuracy " << fmt("%.4f", s.fp32_accuracy) << ".";
    else if (std::isfinite(s.threshold))
      os << "no labels: agreement with the fp32 model of output &gt; " << fmt("%g", s.threshold) << " over " << s.positions << " positions.";
    else
      os << "no labels: agreement with the fp32 model's argmax along axis " << s.class_axis << " over " << s.positions << " positions.";
    os << "</p><table><tr><th>layer</th><th>kind</th>";
    for (const auto& c : s.configs) os << "<th>" << esc(c) << "<br>alone / all-but</th>";
    os << "</tr><tr><td class=\"l\">(every layer)</td><td></td>";
    for (const auto& m : s.all_quantized)
      os << "<td style=\"background:" << drop_colour(100 * m.accuracy_drop) << "\">" << fmt("%.2f", 100 * m.accuracy_drop)
         << " (" << fmt("%.1f dB", m.sqnr_db) << ")</td>";
    os << "</tr>";
    for (const auto& l : s.layers) {
      os << "<tr><td class=\"l\">" << esc(l.name) << "</td><td>" << l.kind << "</td>";
      for (size_t i = 0; i < l.configs.size(); ++i)
        os << "<td style=\"background:" << drop_colour(100 * l.alone[i].accuracy_drop) << "\">"
           << fmt("%.2f", 100 * l.alone[i].accuracy_drop) << " / " << fmt("%.2f", 100 * l.all_but[i].accuracy_drop) << "<br>"
           << fmt("%.1f dB", l.alone[i].sqnr_db) << "</td>";
      os << "</tr>";
    }
    os << "</table></section>";
  }

  if (in.selection) {
    const auto& sel = *in.selection;
    os << "<section id=\"choice\"><h2>Chosen configuration</h2><p>Selection split: fp32 " << fmt("%.4f", sel.fp32_select)
       << ", quantized " << fmt("%.4f", sel.quant_select) << "; verification split: fp32 " << fmt("%.4f", sel.fp32_verify)
       << ", quantized " << fmt("%.4f", sel.quant_verify) << ". Weight bytes " << fmt("%.0f", sel.weight_bytes) << " of "
       << fmt("%.0f", sel.fp32_weight_bytes) << " (fp32); int4 share " << fmt("%.1f%%", 100 * sel.int4_byte_fraction)
       << "; per-tensor layers " << fmt("%.0f%%", 100 * sel.per_tensor_layer_fraction) << ".</p><table><tr><th>layer</th><th>weights</th></tr>";
    for (const auto& [node, c] : sel.weights) os << "<tr><td class=\"l\">" << esc(node) << "</td><td class=\"l\">" << esc(c.label()) << "</td></tr>";
    os << "</table><ol>";
    for (const auto& line : sel.log) os << "<li>" << esc(line) << "</li>";
    os << "</ol></section>";
  }
  os << "</body></html>\n";
  return os.str();
}

}  // namespace perch::ptq
