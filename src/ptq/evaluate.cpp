#include "perch/ptq/evaluate.h"

#include <chrono>

#include "perch/core/progress.h"

namespace perch::ptq {

EvalResult evaluate(const runtime::Executor& exec, const Dataset& data, int64_t batch, const std::string& label) {
  return evaluate([&](const Tensor& x) { return exec.run1(x); }, exec.model().source, data, batch, label);
}

EvalResult evaluate(const std::function<Tensor(const Tensor&)>& run, const std::string& source, const Dataset& data,
                    int64_t batch, const std::string& label) {
  PERCH_CHECK(data.has_labels(), data.name, ": evaluation needs labels");
  PERCH_CHECK(static_cast<int64_t>(data.labels.size()) == data.size(), data.name, ": ", data.size(), " images but ",
              data.labels.size(), " labels");
  EvalResult r;
  const auto t0 = std::chrono::steady_clock::now();
  Progress progress(label, data.size());
  for (int64_t b = 0; b < data.size(); b += batch) {
    const int64_t n = std::min(batch, data.size() - b);
    const Tensor out = run(data.batch(b, n)).to_f32();
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
