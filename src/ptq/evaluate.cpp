#include "perch/ptq/evaluate.h"

#include <algorithm>
#include <chrono>

#include "perch/core/progress.h"

namespace perch::ptq {

void check_feeds(const graph::Model& model, const Dataset& data) {
  const auto& ins = model.graph.inputs;
  PERCH_CHECK(!ins.empty(), model.source, ": the model has no graph input");
  std::string names;
  for (const auto& in : ins) names += (names.empty() ? "'" : ", '") + in.name + "'";
  const std::string first = data.images_name(ins[0].name);
  std::vector<std::string> fed = {first};
  for (const auto& [name, t] : data.inputs) fed.push_back(name);
  for (const std::string& f : fed)
    PERCH_CHECK(std::any_of(ins.begin(), ins.end(), [&](const auto& in) { return in.name == f; }), data.name,
                ": feeds input '", f, "', which ", model.source, " does not have (its inputs: ", names, ")");
  for (const auto& in : ins)
    PERCH_CHECK(std::find(fed.begin(), fed.end(), in.name) != fed.end(), model.source, " has inputs ", names, "; ",
                data.name, " does not feed '", in.name, "' (give one .npy batch per input: npy:",
                ins[0].name, "=FILE,", in.name == ins[0].name ? ins[1].name : in.name, "=FILE2,...)");
}

EvalResult evaluate(const runtime::Executor& exec, const Dataset& data, int64_t batch, const std::string& label) {
  return evaluate([&](const runtime::TensorMap& in) { return exec.run(in).at(exec.output_name()); },
                  exec.model(), data, batch, label);
}

EvalResult evaluate(const FeedsRun& run, const graph::Model& model, const Dataset& data, int64_t batch,
                    const std::string& label) {
  const std::string& source = model.source;
  check_feeds(model, data);
  PERCH_CHECK(data.has_labels(), data.name, ": evaluation needs labels");
  PERCH_CHECK(static_cast<int64_t>(data.labels.size()) == data.size(), data.name, ": ", data.size(), " images but ",
              data.labels.size(), " labels");
  EvalResult r;
  const auto t0 = std::chrono::steady_clock::now();
  Progress progress(label, data.size());
  for (const auto& chunk : data.chunks(batch)) {
    const int64_t b = chunk.first, n = chunk.second;
    runtime::TensorMap feeds = data.feeds(model.graph.inputs[0].name, b, n);
    for (const auto& in : model.graph.inputs)  // a float16 model reads the (float32) data rounded to float16
      if (auto f = feeds.find(in.name); f != feeds.end() && is_half_type(in.dtype)) f->second = f->second.to(in.dtype);
    const Tensor out = run(feeds).to_f32();
    PERCH_CHECK(out.rank() >= 1 && out.dim(0) == n, source, ": output shape ", shape_str(out.shape()),
                " does not have the batch size ", n, " in front");
    const int64_t classes = out.numel() / n;
    const float* o = out.data<float>();
    for (int64_t i = 0; i < n; ++i) {
      int64_t best = 0;
      for (int64_t c = 1; c < classes; ++c)
        if (o[i * classes + c] > o[i * classes + best]) best = c;
      r.correct += best == data.labels[b + i];
    }
    r.count += n;
    progress.update(r.count);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  progress.finish();
  return r;
}

}  // namespace perch::ptq
