// Distillation from the float model (perch/train/distill.h).
#include "perch/train/distill.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include "perch/core/error.h"
#include "perch/core/progress.h"

namespace perch::train {

OutputCut cut_before_output_softmax(graph::Model& m) {
  auto& g = m.graph;
  OutputCut cut;
  cut.opset = m.opset();
  if (g.outputs.empty()) return cut;
  // Walk back from the first output through perch's fake-quant nodes to the node that makes it.
  std::string v = g.outputs[0].name;
  const graph::Node* softmax = nullptr;
  for (;;) {
    const int64_t pi = g.producer(v);
    if (pi < 0) break;
    const graph::Node* p = &g.nodes[static_cast<size_t>(pi)];
    if (p->inputs.empty()) break;
    if (p->domain == "perch") {
      v = p->inputs[0];
      continue;
    }
    if (p->op_type == "Softmax" && (p->domain.empty() || p->domain == "ai.onnx")) softmax = p;
    break;
  }
  if (!softmax) return cut;
  cut.softmax = true;
  cut.axis = softmax->attr_int("axis", cut.opset >= 13 ? -1 : 1);
  const std::string logits = softmax->inputs[0];
  // Keep the nodes the logits need (the graph is topologically ordered: walk it backward).
  std::set<std::string> needed{logits};
  std::vector<bool> keep(g.nodes.size(), false);
  for (size_t i = g.nodes.size(); i-- > 0;) {
    const auto& n = g.nodes[i];
    if (std::none_of(n.outputs.begin(), n.outputs.end(), [&](const std::string& o) { return needed.count(o) > 0; })) continue;
    keep[i] = true;
    for (const auto& in : n.inputs)
      if (!in.empty()) needed.insert(in);
  }
  std::vector<graph::Node> kept;
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (keep[i]) kept.push_back(std::move(g.nodes[i]));
  g.nodes = std::move(kept);
  graph::ValueInfo out;
  out.name = logits;
  g.outputs = {out};
  return cut;
}

int64_t softmax_row_length(const OutputCut& cut, const Shape& s) {
  const auto r = static_cast<int64_t>(s.size());
  PERCH_CHECK(r >= 1, "distillation: the logits are a scalar");
  const int64_t axis = cut.axis < 0 ? cut.axis + r : cut.axis;
  PERCH_CHECK(axis >= 0 && axis < r, "distillation: softmax axis ", cut.axis, " is out of range for logits ", shape_str(s));
  PERCH_CHECK(cut.opset < 13 || axis == r - 1, "distillation: the output Softmax normalizes over axis ", cut.axis,
              " of ", shape_str(s), "; only the last axis is supported");
  int64_t row = 1;
  for (int64_t d = axis; d < r; ++d) row *= s[static_cast<size_t>(d)];
  return row;
}

double distillation_loss(const Tensor& t, const Tensor& s, bool softmax_rows, int64_t row, Tensor* grad, int64_t* agree) {
  PERCH_CHECK(t.shape() == s.shape(), "distillation: teacher output ", shape_str(t.shape()), " and student output ",
              shape_str(s.shape()), " differ");
  const int64_t n = s.numel();
  const float *td = t.data<float>(), *sd = s.data<float>();
  if (grad) *grad = Tensor::uninitialized(DType::kFloat32, s.shape());
  float* gd = grad ? grad->data<float>() : nullptr;
  if (!softmax_rows) {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = static_cast<double>(sd[i]) - td[i];
      sum += d * d;
      if (gd) gd[i] = static_cast<float>(2.0 * d / static_cast<double>(n));
    }
    return n ? sum / static_cast<double>(n) : 0.0;
  }
  PERCH_CHECK(row > 0 && n % row == 0, "distillation: softmax rows of ", row, " do not divide ", shape_str(s.shape()));
  const int64_t rows = n / row;
  double total = 0;
  int64_t same = 0;
  std::vector<double> p(static_cast<size_t>(row)), q(static_cast<size_t>(row));
  // softmax in double with the row maximum subtracted; log p_c = t_c - tmax - log Z_t.
  for (int64_t r = 0; r < rows; ++r) {
    const float *tr = td + r * row, *sr = sd + r * row;
    const int64_t top = std::max_element(tr, tr + row) - tr;
    const double tmax = tr[top], smax = *std::max_element(sr, sr + row);
    double zt = 0, zs = 0;
    for (int64_t c = 0; c < row; ++c) {
      zt += p[static_cast<size_t>(c)] = std::exp(tr[c] - tmax);
      zs += q[static_cast<size_t>(c)] = std::exp(sr[c] - smax);
    }
    const double lzt = std::log(zt), lzs = std::log(zs);
    double kl = 0;
    for (int64_t c = 0; c < row; ++c) {
      const double pc = p[static_cast<size_t>(c)] / zt, qc = q[static_cast<size_t>(c)] / zs;
      if (pc > 0) kl += pc * ((tr[c] - tmax - lzt) - (sr[c] - smax - lzs));
      if (gd) gd[r * row + c] = static_cast<float>((qc - pc) / static_cast<double>(rows));
    }
    total += kl;
    same += top == (std::max_element(sr, sr + row) - sr);
  }
  if (agree) *agree = same;
  return rows ? total / static_cast<double>(rows) : 0.0;
}

Objective distillation_objective(graph::Model teacher, const OutputCut& cut) {
  PERCH_CHECK(!teacher.graph.inputs.empty() && !teacher.graph.outputs.empty(), teacher.source,
              ": the teacher model has no input or output");
  const std::string in = teacher.graph.inputs[0].name, out = teacher.graph.outputs[0].name;
  auto ex = std::make_shared<const runtime::Executor>(std::move(teacher));
  return [ex, in, out, cut](const Tensor& x, const Tensor& s, Tensor& grad) {
    const TensorMap t = ex->run({{in, x}});
    const Tensor& tl = t.at(out);
    BatchLoss b;
    const int64_t row = cut.softmax ? softmax_row_length(cut, s.shape()) : 1;
    b.loss = distillation_loss(tl, s, cut.softmax, row, &grad, &b.correct);
    b.count = cut.softmax ? s.numel() / row : 0;
    return b;
  };
}

Fidelity fidelity(graph::Model teacher, graph::Model model, const Dataset& data, int64_t batch, const std::string& label) {
  const OutputCut ct = cut_before_output_softmax(teacher), cm = cut_before_output_softmax(model);
  PERCH_CHECK(ct.softmax == cm.softmax, model.source, ": ends ", cm.softmax ? "" : "not ", "in a Softmax, ", teacher.source,
              ct.softmax ? " does" : " does not");
  PERCH_CHECK(batch > 0, "fidelity: batch must be positive");
  const runtime::Executor et(std::move(teacher)), em(std::move(model));
  Fidelity f;
  double sum = 0;
  Progress bar(label, data.size());
  int64_t agree = 0;
  for (const auto& chunk : data.chunks(batch)) {
    const int64_t b = chunk.first, nb = chunk.second;
    const runtime::TensorMap x = data.feeds(et.input_name(), b, nb);
    const Tensor t = et.run(x).at(et.output_name()), s = em.run(x).at(em.output_name());
    const int64_t row = ct.softmax ? softmax_row_length(ct, t.shape()) : 1;
    const int64_t n = ct.softmax ? t.numel() / row : t.numel();
    int64_t same = 0;
    sum += distillation_loss(t, s, ct.softmax, row, nullptr, &same) * static_cast<double>(n);
    agree += same, f.rows += n;
    bar.update(b + nb);
  }
  bar.finish();
  f.loss = f.rows ? sum / static_cast<double>(f.rows) : 0.0;
  if (ct.softmax) f.agreement = f.rows ? static_cast<double>(agree) / static_cast<double>(f.rows) : 0.0;
  return f;
}

}  // namespace perch::train
