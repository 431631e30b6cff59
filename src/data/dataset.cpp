#include "perch/data/dataset.h"

#include "perch/core/random.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>

#include "perch/core/error.h"
#include "perch/data/idx.h"
#include "perch/data/npy.h"

namespace perch {

namespace fs = std::filesystem;

namespace {

constexpr const char* kDebianFashionMnistDir = "/usr/share/datasets/fashion-mnist";

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t p = s.find(sep, start);
    out.push_back(s.substr(start, p == std::string::npos ? std::string::npos : p - start));
    if (p == std::string::npos) break;
    start = p + 1;
  }
  return out;
}

void require_file(const fs::path& p, const std::string& spec, const char* role, const std::string& hint = "") {
  std::error_code ec;
  PERCH_CHECK(fs::exists(p, ec), "dataset '", spec, "': ", role, " file ", p.string(), " not found", hint);
}

// uint8 [N,H,W] or [N,C,H,W] pixels -> float32 [N,C,H,W], (p/255 - mean)/std.
Tensor normalize_pixels(const Tensor& raw, const std::string& what, const DataOptions& opt) {
  PERCH_CHECK(raw.dtype() == DType::kUInt8, what, ": images must be uint8 pixels, got ", dtype_name(raw.dtype()),
              " (use npy: for preprocessed float data)");
  PERCH_CHECK(raw.rank() == 3 || raw.rank() == 4, what, ": images must be [N,H,W] or [N,C,H,W], got shape ",
              shape_str(raw.shape()));
  const float mean = opt.mean.value_or(kFashionMnistMean);
  const float stdv = opt.std.value_or(kFashionMnistStd);
  PERCH_CHECK(std::isfinite(mean), what, ": normalization mean must be finite, got ", mean);
  PERCH_CHECK(std::isfinite(stdv) && stdv > 0, what, ": normalization std must be > 0, got ", stdv);
  Shape shape = raw.shape();
  if (shape.size() == 3) shape.insert(shape.begin() + 1, 1);
  Tensor out = Tensor::uninitialized(DType::kFloat32, shape);  // every element written below
  // A lookup table: every uint8 value maps to exactly the same float, computed the way the formula reads.
  float lut[256];
  for (int v = 0; v < 256; ++v) lut[v] = (static_cast<float>(v) / 255.0f - mean) / stdv;
  const uint8_t* src = raw.data<uint8_t>();
  float* dst = out.data<float>();
  for (int64_t i = 0; i < raw.numel(); ++i) dst[i] = lut[src[i]];
  return out;
}

std::vector<int64_t> labels_from(const Tensor& t, const std::string& what) {
  PERCH_CHECK(t.rank() == 1, what, ": labels must be 1-d [N], got shape ", shape_str(t.shape()));
  PERCH_CHECK(t.dtype() != DType::kFloat32 && t.dtype() != DType::kFloat64 && t.dtype() != DType::kBool, what,
              ": labels must be integers, got ", dtype_name(t.dtype()));
  return t.to_i64_vector();
}

void check_counts(const Dataset& ds, const std::string& images, const std::string& labels) {
  if (ds.labels.empty() && ds.size() == 0) return;
  PERCH_CHECK(static_cast<int64_t>(ds.labels.size()) == ds.size(), "dataset '", ds.name, "': ", ds.size(),
              " images in ", images, " but ", ds.labels.size(), " labels in ", labels);
}

Dataset load_idx_pair(const fs::path& images, const fs::path& labels, const std::string& spec, const DataOptions& opt,
                      const std::string& hint) {
  require_file(images, spec, "image", hint);
  require_file(labels, spec, "label", hint);
  Dataset ds;
  ds.name = spec;
  ds.images = normalize_pixels(read_idx(images), images.string(), opt);
  ds.labels = labels_from(read_idx(labels), labels.string());
  check_counts(ds, images.string(), labels.string());
  return ds;
}


// Rows `rows` of a batch tensor [N, ...] (any element type), copied.
Tensor gather_rows(const Tensor& t, const std::vector<int64_t>& rows) {
  Shape shape = t.shape();
  const int64_t n = shape[0];
  shape[0] = static_cast<int64_t>(rows.size());
  Tensor out(t.dtype(), shape);
  const size_t row_bytes = n ? t.nbytes() / static_cast<size_t>(n) : 0;
  const auto* src = static_cast<const std::byte*>(t.raw());
  auto* dst = static_cast<std::byte*>(out.raw());
  for (size_t i = 0; i < rows.size(); ++i)
    std::memcpy(dst + i * row_bytes, src + static_cast<size_t>(rows[i]) * row_bytes, row_bytes);
  return out;
}

// Rows [begin, begin + count) of a batch tensor, copied in one piece.
Tensor slice_rows(const Tensor& t, int64_t begin, int64_t count) {
  Shape shape = t.shape();
  const int64_t n = shape[0];
  shape[0] = count;
  Tensor out(t.dtype(), shape);
  const size_t row_bytes = n ? t.nbytes() / static_cast<size_t>(n) : 0;
  if (count)
    std::memcpy(out.raw(), static_cast<const std::byte*>(t.raw()) + static_cast<size_t>(begin) * row_bytes,
                static_cast<size_t>(count) * row_bytes);
  return out;
}

// Every further input is a batch with the images' row count (a Dataset built in code may break that).
void check_inputs_aligned(const Dataset& ds) {
  for (const auto& [input, t] : ds.inputs)
    PERCH_CHECK(t.rank() >= 1 && t.dim(0) == ds.size(), "dataset '", ds.name, "': input '", input, "' has shape ",
                shape_str(t.shape()), ", not a batch of ", ds.size(), " rows like its images");
}

Dataset gather(const Dataset& ds, const std::vector<int64_t>& rows, std::string name) {
  PERCH_CHECK(!ds.images.empty() && ds.images.rank() >= 1, "dataset '", ds.name, "' has no images");
  check_inputs_aligned(ds);
  Dataset out;
  out.name = std::move(name);
  out.images = gather_rows(ds.images, rows);
  out.images_input = ds.images_input;
  for (const auto& [input, t] : ds.inputs) out.inputs.emplace_back(input, gather_rows(t, rows));
  if (ds.has_labels()) {
    out.labels.reserve(rows.size());
    for (int64_t r : rows) out.labels.push_back(ds.labels[static_cast<size_t>(r)]);
  }
  return out;
}

// A preprocessed batch [N, ...] from an .npy file: float32 as it is, float64 converted.
Tensor read_float_batch(const std::string& file) {
  Tensor x = read_npy(file);
  PERCH_CHECK(x.rank() >= 1, file, ": npy dataset must be a batch [N,...], got a scalar");
  PERCH_CHECK(x.dtype() == DType::kFloat32 || x.dtype() == DType::kFloat64, file,
              ": npy dataset must be float32 (preprocessed), got ", dtype_name(x.dtype()));
  return x.dtype() == DType::kFloat32 ? x : x.to_f32();
}

// npy:NAME=FILE,NAME2=FILE2,...[,LABELS.npy]: one batch per model input, rows aligned.
Dataset load_named_npy(const std::vector<std::string>& parts, const std::string& spec) {
  Dataset ds;
  ds.name = spec;
  std::string labels_file, images_file;
  for (const std::string& e : parts) {
    const size_t eq = e.find('=');
    if (eq == std::string::npos) {
      PERCH_CHECK(!e.empty() && labels_file.empty(), "dataset spec '", spec,
                  "': expected NAME=FILE entries (one per model input) and at most one labels file");
      labels_file = e;
      continue;
    }
    const std::string input = e.substr(0, eq), file = e.substr(eq + 1);
    PERCH_CHECK(!input.empty() && !file.empty(), "dataset spec '", spec, "': entry '", e, "' is not NAME=FILE");
    PERCH_CHECK(input != ds.images_input && std::none_of(ds.inputs.begin(), ds.inputs.end(),
                                                         [&](const auto& p) { return p.first == input; }),
                "dataset spec '", spec, "': input '", input, "' is given twice");
    require_file(file, spec, ("input '" + input + "'").c_str());
    if (ds.images_input.empty()) {
      ds.images_input = input;
      ds.images = read_float_batch(file);
      images_file = file;
      continue;
    }
    Tensor t = read_npy(file);
    PERCH_CHECK(t.rank() >= 1, file, ": input '", input, "' must be a batch [N,...], got a scalar");
    if (t.dtype() == DType::kFloat64) t = t.to_f32();
    PERCH_CHECK(t.dim(0) == ds.images.dim(0), "dataset spec '", spec, "': input '", input, "' has ", t.dim(0),
                " rows in ", file, " but input '", ds.images_input, "' has ", ds.images.dim(0), " in ", images_file);
    ds.inputs.emplace_back(input, std::move(t));
  }
  if (!labels_file.empty()) {
    require_file(labels_file, spec, "label");
    ds.labels = labels_from(read_npy(labels_file), labels_file);
    check_counts(ds, images_file, labels_file);
  }
  return ds;
}

void check_range(const Dataset& ds, int64_t begin, int64_t count, const char* op) {
  PERCH_CHECK(begin >= 0 && count >= 0 && begin <= ds.size() && count <= ds.size() - begin, "dataset '", ds.name,
              "': ", op, " rows [", begin, ", ", begin, " + ", count, ") out of range (it has ", ds.size(), " rows)");
}

}  // namespace

std::string fashion_mnist_dir() {
  const char* env = std::getenv("PERCH_FASHION_MNIST_DIR");
  return env && *env ? std::string(env) : std::string(kDebianFashionMnistDir);
}

Tensor Dataset::batch(int64_t begin, int64_t count) const {
  PERCH_CHECK(!images.empty() && images.rank() >= 1, "dataset '", name, "': batch of an empty dataset");
  check_range(*this, begin, count, "batch");
  return slice_rows(images, begin, count);
}

std::unordered_map<std::string, Tensor> Dataset::feeds(const std::string& first_input, int64_t begin,
                                                       int64_t count) const {
  check_inputs_aligned(*this);
  std::unordered_map<std::string, Tensor> out;
  out.emplace(images_name(first_input), batch(begin, count));
  for (const auto& [input, t] : inputs) out.emplace(input, slice_rows(t, begin, count));
  return out;
}

Dataset load_dataset(const std::string& spec, const DataOptions& options) {
  const size_t colon = spec.find(':');
  PERCH_CHECK(colon != std::string::npos, "dataset spec '", spec,
              "' has no scheme (expected fashion-mnist:train, fashion-mnist:test, idx:IMAGES,LABELS or "
              "npy:FILE[,LABELS.npy] / npy:NAME=FILE,NAME2=FILE2[,LABELS.npy])");
  const std::string scheme = spec.substr(0, colon);
  const std::string rest = spec.substr(colon + 1);

  if (scheme == "fashion-mnist") {
    std::string prefix;
    if (rest == "train") prefix = "train";
    else if (rest == "test" || rest == "t10k") prefix = "t10k";
    else PERCH_FAIL("dataset spec '", spec, "': unknown fashion-mnist split '", rest, "' (expected train or test)");
    const fs::path dir = fashion_mnist_dir();
    const std::string hint = " (install Debian's dataset-fashion-mnist, or set PERCH_FASHION_MNIST_DIR to a folder "
                             "holding the *-ubyte.gz files)";
    return load_idx_pair(dir / (prefix + "-images-idx3-ubyte.gz"), dir / (prefix + "-labels-idx1-ubyte.gz"), spec,
                         options, hint);
  }
  if (scheme == "idx") {
    auto parts = split(rest, ',');
    PERCH_CHECK(parts.size() == 2 && !parts[0].empty() && !parts[1].empty(), "dataset spec '", spec,
                "': expected idx:IMAGES,LABELS (two IDX files separated by a comma)");
    return load_idx_pair(parts[0], parts[1], spec, options, "");
  }
  if (scheme == "npy") {
    auto parts = split(rest, ',');
    const bool named = std::any_of(parts.begin(), parts.end(), [](const std::string& e) { return e.find('=') != std::string::npos; });
    if (named) return load_named_npy(parts, spec);
    PERCH_CHECK((parts.size() == 1 || parts.size() == 2) && !parts[0].empty() && (parts.size() == 1 || !parts[1].empty()),
                "dataset spec '", spec, "': expected npy:FILE, npy:FILE,LABELS.npy or npy:NAME=FILE,NAME2=FILE2[,LABELS.npy]");
    require_file(parts[0], spec, "image");
    Dataset ds;
    ds.name = spec;
    ds.images = read_float_batch(parts[0]);
    if (parts.size() == 2) {
      require_file(parts[1], spec, "label");
      ds.labels = labels_from(read_npy(parts[1]), parts[1]);
      check_counts(ds, parts[0], parts[1]);
    }
    return ds;
  }
  PERCH_FAIL("dataset spec '", spec, "': unknown scheme '", scheme,
             "' (expected fashion-mnist:train, fashion-mnist:test, idx:IMAGES,LABELS or npy:FILE[,LABELS.npy] / npy:NAME=FILE,NAME2=FILE2[,LABELS.npy])");
}

Dataset take(const Dataset& ds, int64_t offset, int64_t count) {
  check_range(ds, offset, count, "take");
  std::vector<int64_t> rows(static_cast<size_t>(count));
  std::iota(rows.begin(), rows.end(), offset);
  return gather(ds, rows, ds.name + "[" + std::to_string(offset) + ":" + std::to_string(offset + count) + "]");
}

Dataset sample(const Dataset& ds, int64_t count, uint64_t seed) {
  PERCH_CHECK(count >= 0 && count <= ds.size(), "dataset '", ds.name, "': cannot sample ", count, " rows from ",
              ds.size());
  // Partial Fisher-Yates over the row indices: the first `count` entries are a uniform random sample.
  std::vector<int64_t> idx(static_cast<size_t>(ds.size()));
  std::iota(idx.begin(), idx.end(), 0);
  SplitMix64 rng{seed};
  for (int64_t i = 0; i < count; ++i) {
    const int64_t j = i + static_cast<int64_t>(rng.below(static_cast<uint64_t>(ds.size() - i)));
    std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(j)]);
  }
  idx.resize(static_cast<size_t>(count));
  return gather(ds, idx, ds.name + "[sample " + std::to_string(count) + " seed " + std::to_string(seed) + "]");
}

}  // namespace perch
