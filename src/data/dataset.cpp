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

// Rows of one shape group's own `images` (not counting its `groups`).
int64_t own_rows(const Dataset& g) { return g.images.empty() || g.images.rank() == 0 ? 0 : g.images.dim(0); }

// Every further input of a shape group is a batch with its images' row count (a Dataset built in code may break
// that); `name`: the dataset's.
void check_inputs_aligned(const Dataset& g, const std::string& name) {
  for (const auto& [input, t] : g.inputs)
    PERCH_CHECK(t.rank() >= 1 && t.dim(0) == own_rows(g), "dataset '", name, "': input '", input, "' has shape ",
                shape_str(t.shape()), ", not a batch of ", own_rows(g), " rows like its images");
}

// The shape groups of `ds` in row order: ds itself, then ds.groups.
std::vector<const Dataset*> shape_groups(const Dataset& ds) {
  std::vector<const Dataset*> out = {&ds};
  for (const Dataset& g : ds.groups) out.push_back(&g);
  return out;
}

// Rows `rows` (any order, any groups) as a new dataset: within each shape group in the order given, the groups in
// their order (a single-group dataset keeps the order exactly); labels follow their rows.
Dataset gather(const Dataset& ds, const std::vector<int64_t>& rows, std::string name) {
  PERCH_CHECK(!ds.images.empty() && ds.images.rank() >= 1, "dataset '", ds.name, "' has no images");
  const std::vector<const Dataset*> parts = shape_groups(ds);
  std::vector<int64_t> start(parts.size() + 1, 0);
  for (size_t p = 0; p < parts.size(); ++p) {
    check_inputs_aligned(*parts[p], ds.name);
    start[p + 1] = start[p] + own_rows(*parts[p]);
  }
  std::vector<std::vector<int64_t>> local(parts.size());
  for (int64_t r : rows) {  // 0 <= r < size(): the last p with start[p] <= r is a group holding r
    const size_t p = static_cast<size_t>(std::upper_bound(start.begin(), start.end(), r) - start.begin()) - 1;
    local[p].push_back(r - start[p]);
  }
  Dataset out;
  out.name = std::move(name);
  out.images_input = ds.images_input;
  bool first = true;
  for (size_t p = 0; p < parts.size(); ++p) {
    if (local[p].empty() && !(first && p + 1 == parts.size())) continue;  // an empty result keeps a [0, ...] batch
    Dataset piece;
    piece.images = gather_rows(parts[p]->images, local[p]);
    for (const auto& [input, t] : parts[p]->inputs) piece.inputs.emplace_back(input, gather_rows(t, local[p]));
    if (ds.has_labels())
      for (int64_t r : local[p]) out.labels.push_back(ds.labels[static_cast<size_t>(start[p] + r)]);
    if (first) {
      out.images = std::move(piece.images);
      out.inputs = std::move(piece.inputs);
      first = false;
    } else {
      out.groups.push_back(std::move(piece));
    }
  }
  return out;
}

// a then b along dim 0 (the same dtype and shape after it).
Tensor concat_rows(const Tensor& a, const Tensor& b) {
  Shape shape = a.shape();
  shape[0] += b.dim(0);
  Tensor out = Tensor::uninitialized(a.dtype(), shape);
  std::memcpy(out.raw(), a.raw(), a.nbytes());
  std::memcpy(static_cast<std::byte*>(out.raw()) + a.nbytes(), b.raw(), b.nbytes());
  return out;
}

// Same dtype and dims after the batch dim, for the images and every input.
bool same_row_shape(const Dataset& a, const Dataset& b) {
  auto row = [](const Tensor& t) { return std::make_pair(t.dtype(), Shape(t.shape().begin() + 1, t.shape().end())); };
  if (row(a.images) != row(b.images) || a.inputs.size() != b.inputs.size()) return false;
  for (size_t i = 0; i < a.inputs.size(); ++i)
    if (row(a.inputs[i].second) != row(b.inputs[i].second)) return false;
  return true;
}

// SPEC+SPEC: the parts' rows in order, same-shaped parts concatenated into one shape group.
Dataset combine(std::vector<Dataset> parts, const std::string& spec) {
  auto names = [](const Dataset& d) {
    std::vector<std::string> n = {d.images_input};
    for (const auto& [input, t] : d.inputs) n.push_back(input);
    return n;
  };
  const std::vector<std::string> names0 = names(parts[0]);
  const std::string name0 = parts[0].name;
  const bool labels0 = parts[0].has_labels();
  std::vector<Dataset> groups;  // each with its own labels until the end
  for (size_t i = 0; i < parts.size(); ++i) {
    Dataset& p = parts[i];
    PERCH_CHECK(names(p) == names0, "dataset '", spec, "': part ", i + 1, " ('", p.name,
                "') does not name the same model inputs as part 1 ('", name0, "')");
    PERCH_CHECK(p.has_labels() == labels0, "dataset '", spec, "': part ", i + 1, " ('", p.name, "') ",
                p.has_labels() ? "has" : "has no", " labels but part 1 ('", name0, "') ", labels0 ? "has" : "has none");
    auto same = std::find_if(groups.begin(), groups.end(), [&](const Dataset& g) { return same_row_shape(g, p); });
    if (same == groups.end()) {
      groups.push_back(std::move(p));
      continue;
    }
    same->images = concat_rows(same->images, p.images);
    for (size_t k = 0; k < p.inputs.size(); ++k)
      same->inputs[k].second = concat_rows(same->inputs[k].second, p.inputs[k].second);
    same->labels.insert(same->labels.end(), p.labels.begin(), p.labels.end());
  }
  Dataset out = std::move(groups[0]);
  out.name = spec;
  for (size_t g = 1; g < groups.size(); ++g) {
    out.labels.insert(out.labels.end(), groups[g].labels.begin(), groups[g].labels.end());
    Dataset piece;
    piece.images = std::move(groups[g].images);
    piece.inputs = std::move(groups[g].inputs);
    out.groups.push_back(std::move(piece));
  }
  return out;
}

// Splits SPEC+SPEC at each '+' that a known scheme follows (a file name may hold a '+').
std::vector<std::string> split_parts(const std::string& spec) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t p = spec.find('+'); p != std::string::npos; p = spec.find('+', p + 1)) {
    const std::string next = spec.substr(p + 1);
    if (next.rfind("npy:", 0) == 0 || next.rfind("idx:", 0) == 0 || next.rfind("fashion-mnist:", 0) == 0) {
      out.push_back(spec.substr(start, p - start));
      start = p + 1;
    }
  }
  out.push_back(spec.substr(start));
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

int64_t Dataset::size() const {
  int64_t n = own_rows(*this);
  for (const Dataset& g : groups) n += own_rows(g);
  return n;
}

std::vector<std::pair<int64_t, int64_t>> Dataset::chunks(int64_t batch) const {
  PERCH_CHECK(batch > 0, "dataset '", name, "': batch size must be > 0, got ", batch);
  std::vector<std::pair<int64_t, int64_t>> out;
  int64_t start = 0;
  for (const Dataset* g : shape_groups(*this)) {
    const int64_t n = own_rows(*g);
    for (int64_t b = 0; b < n; b += batch) out.emplace_back(start + b, std::min(batch, n - b));
    start += n;
  }
  return out;
}

std::pair<const Dataset*, int64_t> Dataset::locate(int64_t begin, int64_t count) const {
  PERCH_CHECK(!images.empty() && images.rank() >= 1, "dataset '", name, "': batch of an empty dataset");
  check_range(*this, begin, count, "batch");
  int64_t start = 0;
  for (const Dataset* g : shape_groups(*this)) {
    const int64_t n = own_rows(*g);
    if (begin < start + n || (count == 0 && begin == start + n)) {
      PERCH_CHECK(begin + count <= start + n, "dataset '", name, "': rows [", begin, ", ", begin + count,
                  ") cross from a batch of shape ", shape_str(g->images.shape()),
                  " into the next shape group (loop over Dataset::chunks)");
      return {g, begin - start};
    }
    start += n;
  }
  return {this, 0};  // count 0 at 0 of an empty dataset
}

std::pair<int64_t, int64_t> Dataset::largest_group_rows() const {
  std::pair<int64_t, int64_t> best{0, 0};
  int64_t start = 0;
  for (const Dataset* g : shape_groups(*this)) {
    if (own_rows(*g) > best.second) best = {start, own_rows(*g)};
    start += own_rows(*g);
  }
  return best;
}

Tensor Dataset::batch(int64_t begin, int64_t count) const {
  const auto [g, at] = locate(begin, count);
  return slice_rows(g->images, at, count);
}

std::unordered_map<std::string, Tensor> Dataset::feeds(const std::string& first_input, int64_t begin,
                                                       int64_t count) const {
  const auto [g, at] = locate(begin, count);
  check_inputs_aligned(*g, name);
  std::unordered_map<std::string, Tensor> out;
  out.emplace(images_name(first_input), slice_rows(g->images, at, count));
  for (const auto& [input, t] : g->inputs) out.emplace(input, slice_rows(t, at, count));
  return out;
}

Dataset load_dataset(const std::string& spec, const DataOptions& options) {
  if (const std::vector<std::string> parts = split_parts(spec); parts.size() > 1) {
    std::vector<Dataset> loaded;
    for (const std::string& p : parts) loaded.push_back(load_dataset(p, options));
    return combine(std::move(loaded), spec);
  }
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

Dataset take_spread(const Dataset& ds, int64_t count) {
  check_range(ds, 0, count, "take_spread");
  if (ds.groups.empty()) return take(ds, 0, count);
  const std::vector<const Dataset*> parts = shape_groups(ds);
  const int64_t total = ds.size();
  std::vector<int64_t> share(parts.size());
  std::vector<std::pair<int64_t, size_t>> remainder;  // (count * n_g mod total, group), for the rounding
  int64_t given = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    const int64_t n = own_rows(*parts[p]);
    share[p] = count * n / total;  // count * n < 2^63 for any dataset that fits in memory
    given += share[p];
    remainder.emplace_back(count * n % total, p);
  }
  std::stable_sort(remainder.begin(), remainder.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t i = 0; given < count; ++i, ++given) ++share[remainder[i % remainder.size()].second];
  std::vector<int64_t> rows;
  int64_t start = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    for (int64_t r = 0; r < share[p]; ++r) rows.push_back(start + r);
    start += own_rows(*parts[p]);
  }
  return gather(ds, rows, ds.name + "[spread " + std::to_string(count) + "]");
}

std::pair<Dataset, Dataset> split_halves(const Dataset& ds) {
  std::vector<int64_t> first, second;
  int64_t start = 0;
  for (const Dataset* g : shape_groups(ds)) {
    const int64_t n = own_rows(*g);
    for (int64_t r = 0; r < n; ++r) (r < n / 2 ? first : second).push_back(start + r);
    start += n;
  }
  if (!ds.groups.empty() && !first.empty())
    return {gather(ds, first, ds.name + "[first halves]"), gather(ds, second, ds.name + "[second halves]")};
  // One shape (or every group a single row): the rows as they come, halved.
  const int64_t half = ds.size() / 2;
  return {take(ds, 0, half), take(ds, half, ds.size() - half)};
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
