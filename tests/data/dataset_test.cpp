#include "perch/data/dataset.h"

#include <gtest/gtest.h>

#include <array>
#include <cstdlib>
#include <set>

#include "data_test_util.h"
#include "perch/data/idx.h"
#include "perch/data/npy.h"

namespace perch {
namespace {

using test::ScratchDir;

float norm(uint8_t p, float mean = 0.2860f, float stdv = 0.3530f) { return (p / 255.0f - mean) / stdv; }

// Writes a small IDX pair: n images of 2x3 with pixel value (i*6 + k) % 256, labels i % 10.
void write_small_idx(const std::filesystem::path& images, const std::filesystem::path& labels, int n, int nlabels,
                     bool gz) {
  std::vector<uint8_t> px(static_cast<size_t>(n) * 6);
  for (size_t i = 0; i < px.size(); ++i) px[i] = static_cast<uint8_t>(i * 37 % 256);
  std::vector<uint8_t> lb(static_cast<size_t>(nlabels));
  for (int i = 0; i < nlabels; ++i) lb[static_cast<size_t>(i)] = static_cast<uint8_t>(i % 10);
  std::string ib = encode_idx(Tensor::from<uint8_t>({n, 2, 3}, px));
  std::string lbb = encode_idx(Tensor::from<uint8_t>({nlabels}, lb));
  if (gz) {
    test::write_gz(images, ib);
    test::write_gz(labels, lbb);
  } else {
    test::write_bytes(images, ib);
    test::write_bytes(labels, lbb);
  }
}

TEST(Dataset, IdxSpecNormalizesAndAddsChannel) {
  ScratchDir dir;
  write_small_idx(dir / "im.idx", dir / "lb.idx.gz", 5, 5, false);
  Dataset ds = load_dataset("idx:" + (dir / "im.idx").string() + "," + (dir / "lb.idx.gz").string());
  EXPECT_EQ(ds.size(), 5);
  EXPECT_EQ(ds.images.dtype(), DType::kFloat32);
  EXPECT_EQ(ds.images.shape(), (Shape{5, 1, 2, 3}));
  for (int i = 0; i < 30; ++i) EXPECT_FLOAT_EQ(ds.images.data<float>()[i], norm(static_cast<uint8_t>(i * 37 % 256))) << i;
  EXPECT_EQ(ds.labels, (std::vector<int64_t>{0, 1, 2, 3, 4}));
  // Exact endpoints of the default normalization.
  write_small_idx(dir / "im2.idx", dir / "lb2.idx", 1, 1, false);
  Tensor px = Tensor::from<uint8_t>({1, 1, 2}, {0, 255});
  test::write_bytes(dir / "im2.idx", encode_idx(px));
  Dataset e = load_dataset("idx:" + (dir / "im2.idx").string() + "," + (dir / "lb2.idx").string());
  EXPECT_FLOAT_EQ(e.images.data<float>()[0], -0.2860f / 0.3530f);
  EXPECT_FLOAT_EQ(e.images.data<float>()[1], (1.0f - 0.2860f) / 0.3530f);
}

TEST(Dataset, MeanStdOverride) {
  ScratchDir dir;
  write_small_idx(dir / "im", dir / "lb", 2, 2, true);
  DataOptions opt;
  opt.mean = 0.5f;
  opt.std = 0.25f;
  Dataset ds = load_dataset("idx:" + (dir / "im").string() + "," + (dir / "lb").string(), opt);
  EXPECT_FLOAT_EQ(ds.images.data<float>()[1], norm(37, 0.5f, 0.25f));
  opt.std = 0.0f;
  EXPECT_ERROR_HAS(load_dataset("idx:" + (dir / "im").string() + "," + (dir / "lb").string(), opt), "std must be > 0");
}

TEST(Dataset, CountMismatchNamesBothCounts) {
  ScratchDir dir;
  write_small_idx(dir / "im", dir / "lb", 4, 3, false);
  EXPECT_ERROR_HAS(load_dataset("idx:" + (dir / "im").string() + "," + (dir / "lb").string()), "4 images in",
                   "but 3 labels in", (dir / "lb").string());
}

TEST(Dataset, SpecErrors) {
  EXPECT_ERROR_HAS(load_dataset("mnist:train"), "unknown scheme 'mnist'");
  EXPECT_ERROR_HAS(load_dataset("train.npy"), "no scheme");
  EXPECT_ERROR_HAS(load_dataset("fashion-mnist:valid"), "unknown fashion-mnist split 'valid'");
  EXPECT_ERROR_HAS(load_dataset("idx:/only/one"), "expected idx:IMAGES,LABELS");
  EXPECT_ERROR_HAS(load_dataset("idx:/nonexistent/a,/nonexistent/b"), "/nonexistent/a", "not found");
  EXPECT_ERROR_HAS(load_dataset("npy:"), "expected npy:FILE");
  EXPECT_ERROR_HAS(load_dataset("npy:/nonexistent/x.npy"), "/nonexistent/x.npy", "not found");
}

TEST(Dataset, NpySpec) {
  ScratchDir dir;
  std::vector<float> v(4 * 3);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i) - 5.5f;
  write_npy(dir / "x.npy", Tensor::from<float>({4, 3}, v));
  write_npy(dir / "y.npy", Tensor::from<int32_t>({4}, {3, 1, 4, 1}));
  Dataset a = load_dataset("npy:" + (dir / "x.npy").string());
  EXPECT_EQ(a.images.shape(), (Shape{4, 3}));
  EXPECT_FALSE(a.has_labels());
  EXPECT_EQ(a.images.data<float>()[11], 5.5f);  // used as is: no normalization
  Dataset b = load_dataset("npy:" + (dir / "x.npy").string() + "," + (dir / "y.npy").string());
  EXPECT_EQ(b.labels, (std::vector<int64_t>{3, 1, 4, 1}));
  // float64 is converted; wrong label count / type refused.
  write_npy(dir / "d.npy", Tensor::from<double>({2, 1}, {0.25, -1.0}));
  EXPECT_EQ(load_dataset("npy:" + (dir / "d.npy").string()).images.data<float>()[1], -1.0f);
  write_npy(dir / "y3.npy", Tensor::from<int64_t>({3}, {0, 1, 2}));
  EXPECT_ERROR_HAS(load_dataset("npy:" + (dir / "x.npy").string() + "," + (dir / "y3.npy").string()), "4 images",
                   "3 labels");
  write_npy(dir / "yf.npy", Tensor::from<float>({4}, {0, 1, 2, 3}));
  EXPECT_ERROR_HAS(load_dataset("npy:" + (dir / "x.npy").string() + "," + (dir / "yf.npy").string()), "yf.npy",
                   "must be integers");
  write_npy(dir / "u8.npy", Tensor::from<uint8_t>({2}, {1, 2}));
  EXPECT_ERROR_HAS(load_dataset("npy:" + (dir / "u8.npy").string()), "u8.npy", "float32");
}

Dataset counting(int n);

// npy:NAME=FILE,...: one batch per model input, rows kept together by take / sample / feeds.
TEST(Dataset, NamedNpyInputsStayRowAligned) {
  ScratchDir dir;
  const int n = 50;
  std::vector<float> img(static_cast<size_t>(n) * 2);
  std::vector<double> aux(static_cast<size_t>(n) * 3);
  std::vector<int64_t> ids(static_cast<size_t>(n)), lab(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    img[2 * i] = img[2 * i + 1] = static_cast<float>(i);
    for (int k = 0; k < 3; ++k) aux[3 * i + k] = 0.5 * i + k;
    ids[static_cast<size_t>(i)] = 1000 + i;
    lab[static_cast<size_t>(i)] = i % 7;
  }
  write_npy(dir / "img.npy", Tensor::from<float>({n, 2}, img));
  write_npy(dir / "aux.npy", Tensor::from<double>({n, 3}, aux));
  write_npy(dir / "ids.npy", Tensor::from<int64_t>({n}, ids));
  write_npy(dir / "lab.npy", Tensor::from<int64_t>({n}, lab));
  const std::string d = dir.path().string() + "/";
  const Dataset ds = load_dataset("npy:image=" + d + "img.npy,aux=" + d + "aux.npy," + d + "lab.npy,id=" + d + "ids.npy");
  EXPECT_EQ(ds.images_input, "image");
  EXPECT_EQ(ds.images.shape(), (Shape{n, 2}));
  ASSERT_EQ(ds.inputs.size(), 2u);
  EXPECT_EQ(ds.inputs[0].first, "aux");
  EXPECT_EQ(ds.inputs[0].second.dtype(), DType::kFloat32);  // float64 converted, as images are
  EXPECT_EQ(ds.inputs[1].first, "id");
  EXPECT_EQ(ds.inputs[1].second.dtype(), DType::kInt64);  // integer inputs kept as they are
  EXPECT_EQ(ds.labels, lab);
  // The images feed their named input, not the model's first one.
  EXPECT_EQ(ds.images_name("x"), "image");
  // Every derived set keeps row i of each input together: row r holds sample k = images[r][0].
  auto check = [&](const Dataset& s) {
    for (int64_t r = 0; r < s.size(); ++r) {
      const float k = s.images.data<float>()[2 * r];
      EXPECT_EQ(s.inputs[0].second.data<float>()[3 * r + 2], 0.5f * k + 2) << s.name << " row " << r;
      EXPECT_EQ(s.inputs[1].second.data<int64_t>()[r], 1000 + static_cast<int64_t>(k)) << s.name << " row " << r;
      EXPECT_EQ(s.labels[static_cast<size_t>(r)], static_cast<int64_t>(k) % 7) << s.name << " row " << r;
    }
  };
  check(take(ds, 10, 5));
  const Dataset sm = sample(ds, 20, 3);
  check(sm);
  EXPECT_NE(sm.images.data<float>()[0], 0.0f);  // shuffled, not the first rows
  const auto f = sm.feeds("x", 4, 3);
  ASSERT_EQ(f.size(), 3u);
  for (int64_t r = 0; r < 3; ++r) {
    const float k = sm.images.data<float>()[2 * (4 + r)];
    EXPECT_EQ(f.at("image").data<float>()[2 * r], k);
    EXPECT_EQ(f.at("aux").data<float>()[3 * r], 0.5f * k);
    EXPECT_EQ(f.at("id").data<int64_t>()[r], 1000 + static_cast<int64_t>(k));
  }
  // Inputs built in code must be batches of the same rows: refused by name otherwise (a scalar used to crash).
  Dataset odd = ds;
  odd.inputs[0].second = Tensor::scalar_f32(1.0f);
  EXPECT_ERROR_HAS(odd.feeds("x", 0, 1), "input 'aux' has shape []", "not a batch of 50 rows");
  EXPECT_ERROR_HAS(take(odd, 0, 1), "input 'aux'");
  // A plain (unnamed) dataset feeds the model's first input under its name.
  Dataset plain = counting(4);
  EXPECT_EQ(plain.feeds("x", 0, 2).count("x"), 1u);
  // Errors name the entry and the files.
  write_npy(dir / "short.npy", Tensor::from<float>({3, 1}, {0, 1, 2}));
  EXPECT_ERROR_HAS(load_dataset("npy:image=" + d + "img.npy,aux=" + d + "short.npy"), "input 'aux' has 3 rows",
                   "short.npy", "input 'image' has 50", "img.npy");
  EXPECT_ERROR_HAS(load_dataset("npy:image=" + d + "img.npy,image=" + d + "img.npy"), "input 'image' is given twice");
  EXPECT_ERROR_HAS(load_dataset("npy:image=" + d + "img.npy,=" + d + "aux.npy"), "is not NAME=FILE");
  EXPECT_ERROR_HAS(load_dataset("npy:image=" + d + "img.npy," + d + "lab.npy," + d + "lab.npy"), "at most one labels file");
  EXPECT_ERROR_HAS(load_dataset("npy:image=" + d + "img.npy,aux=" + d + "missing.npy"), "input 'aux'", "missing.npy",
                   "not found");
  write_npy(dir / "lab3.npy", Tensor::from<int64_t>({3}, {0, 1, 2}));
  EXPECT_ERROR_HAS(load_dataset("npy:image=" + d + "img.npy," + d + "lab3.npy"), "50 images", "3 labels");
}

Dataset counting(int n) {
  Dataset ds;
  ds.name = "counting";
  std::vector<float> v(static_cast<size_t>(n) * 2);
  for (int i = 0; i < n; ++i) v[2 * i] = v[2 * i + 1] = static_cast<float>(i);
  ds.images = Tensor::from<float>({n, 2}, v);
  for (int i = 0; i < n; ++i) ds.labels.push_back(i);
  return ds;
}

TEST(Dataset, BatchAndTake) {
  Dataset ds = counting(10);
  Tensor b = ds.batch(3, 4);
  EXPECT_EQ(b.shape(), (Shape{4, 2}));
  EXPECT_EQ(b.data<float>()[0], 3.0f);
  EXPECT_EQ(b.data<float>()[7], 6.0f);
  b.data<float>()[0] = 99;  // a copy: the dataset is untouched
  EXPECT_EQ(ds.images.data<float>()[6], 3.0f);
  EXPECT_EQ(ds.batch(10, 0).shape(), (Shape{0, 2}));
  EXPECT_ERROR_HAS(ds.batch(8, 3), "counting", "out of range", "10 rows");
  EXPECT_ERROR_HAS(ds.batch(-1, 1), "out of range");
  Dataset t = take(ds, 7, 3);
  EXPECT_EQ(t.size(), 3);
  EXPECT_EQ(t.labels, (std::vector<int64_t>{7, 8, 9}));
  EXPECT_EQ(t.images.data<float>()[5], 9.0f);
  EXPECT_ERROR_HAS(take(ds, 7, 4), "out of range");
}

TEST(Dataset, SampleIsDeterministicDistinctAndConsistent) {
  Dataset ds = counting(1000);
  Dataset a = sample(ds, 100, 42), b = sample(ds, 100, 42), c = sample(ds, 100, 43);
  EXPECT_EQ(a.labels, b.labels);
  EXPECT_NE(a.labels, c.labels);
  std::set<int64_t> distinct(a.labels.begin(), a.labels.end());
  EXPECT_EQ(distinct.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.images.data<float>()[2 * i], static_cast<float>(a.labels[i]));
  // Not simply the first rows.
  EXPECT_GT(*distinct.rbegin(), 500);
  // Pinned: the same seed must give the same rows on every platform and in every future version.
  EXPECT_EQ(std::vector<int64_t>(a.labels.begin(), a.labels.begin() + 5), (std::vector<int64_t>{413, 182, 552, 26, 338}));
  EXPECT_EQ(sample(ds, 1000, 7).size(), 1000);
  EXPECT_ERROR_HAS(sample(ds, 1001, 7), "cannot sample 1001 rows from 1000");
}

TEST(Dataset, FashionMnistDirOverride) {
  ScratchDir dir;
  write_small_idx(dir / "t10k-images-idx3-ubyte.gz", dir / "t10k-labels-idx1-ubyte.gz", 3, 3, true);
  ::setenv("PERCH_FASHION_MNIST_DIR", dir.path().c_str(), 1);
  Dataset ds = load_dataset("fashion-mnist:test");
  EXPECT_EQ(ds.size(), 3);
  EXPECT_EQ(ds.name, "fashion-mnist:test");
  EXPECT_ERROR_HAS(load_dataset("fashion-mnist:train"), "train-images-idx3-ubyte.gz", "not found",
                   "PERCH_FASHION_MNIST_DIR");
  ::unsetenv("PERCH_FASHION_MNIST_DIR");
  EXPECT_EQ(fashion_mnist_dir(), "/usr/share/datasets/fashion-mnist");
}

// The real data from Debian's dataset-fashion-mnist, checked against the test's own zlib reading.
class FashionMnist : public ::testing::TestWithParam<std::tuple<const char*, const char*, int64_t>> {};

TEST_P(FashionMnist, LoadsAndMatchesIndependentReading) {
  const auto [split, prefix, n] = GetParam();
  const std::filesystem::path dir = "/usr/share/datasets/fashion-mnist";
  const auto images = dir / (std::string(prefix) + "-images-idx3-ubyte.gz");
  const auto labels = dir / (std::string(prefix) + "-labels-idx1-ubyte.gz");
  if (!std::filesystem::exists(images) || !std::filesystem::exists(labels))
    GTEST_SKIP() << dir << " is missing (Debian package dataset-fashion-mnist; scripts/setup.sh installs it)";
  ::unsetenv("PERCH_FASHION_MNIST_DIR");
  Dataset ds = load_dataset(std::string("fashion-mnist:") + split);
  ASSERT_EQ(ds.size(), n);
  ASSERT_EQ(ds.images.shape(), (Shape{n, 1, 28, 28}));
  ASSERT_EQ(static_cast<int64_t>(ds.labels.size()), n);

  const std::string lb = test::read_gz(labels);
  ASSERT_EQ(lb.size(), static_cast<size_t>(8 + n));
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(ds.labels[i], static_cast<unsigned char>(lb[8 + i])) << i;
  const std::string px = test::read_gz(images);
  ASSERT_EQ(px.size(), static_cast<size_t>(16 + n * 784));
  const float* x = ds.images.data<float>();
  for (int64_t i = 0; i < n * 784; i += 97)
    ASSERT_FLOAT_EQ(x[i], norm(static_cast<unsigned char>(px[16 + i]))) << i;

  std::vector<int64_t> first(ds.labels.begin(), ds.labels.begin() + 10);
  if (std::string(split) == "train")
    EXPECT_EQ(first, (std::vector<int64_t>{9, 0, 0, 3, 0, 2, 7, 2, 5, 5}));
  else
    EXPECT_EQ(first, (std::vector<int64_t>{9, 2, 1, 1, 6, 1, 4, 6, 5, 7}));
  // Ten balanced classes.
  std::vector<int64_t> hist(10);
  for (int64_t l : ds.labels) ++hist.at(static_cast<size_t>(l));
  for (int64_t h : hist) EXPECT_EQ(h, n / 10);
  // Normalization: the pixel value range maps to [-0.8102, 2.0227].
  float lo = 1e9f, hi = -1e9f;
  for (int64_t i = 0; i < ds.images.numel(); ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  EXPECT_NEAR(lo, -0.81020, 1e-4);
  EXPECT_NEAR(hi, 2.02266, 1e-4);
}

INSTANTIATE_TEST_SUITE_P(Splits, FashionMnist,
                         ::testing::Values(std::make_tuple("train", "train", int64_t{60000}),
                                           std::make_tuple("test", "t10k", int64_t{10000})),
                         [](const auto& info) { return std::string(std::get<0>(info.param)); });


// SPEC+SPEC: parts of the same row shape are concatenated, a part of another shape becomes a shape group; rows keep
// their labels and second inputs through chunks / feeds / take / sample, and no batch mixes shapes.
TEST(Dataset, SeveralShapesFormShapeGroups) {
  ScratchDir dir;
  // Part p (p = 0..3): n_p rows of [1, H_p, W_p] images filled with the sample id 100 p + i, an id input, labels.
  const std::vector<std::array<int64_t, 3>> parts = {{5, 2, 3}, {4, 3, 3}, {3, 2, 3}, {2, 3, 4}};  // n, H, W
  std::string spec;
  for (size_t p = 0; p < parts.size(); ++p) {
    const auto [n, h, w] = parts[p];
    std::vector<float> img(static_cast<size_t>(n * h * w));
    std::vector<int64_t> ids(static_cast<size_t>(n)), lab(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t k = 0; k < h * w; ++k) img[static_cast<size_t>(i * h * w + k)] = static_cast<float>(100 * p + i);
      ids[static_cast<size_t>(i)] = 100 * static_cast<int64_t>(p) + i;
      lab[static_cast<size_t>(i)] = (100 * static_cast<int64_t>(p) + i) % 9;
    }
    const std::string f = (dir / ("x" + std::to_string(p))).string();
    write_npy(f + ".npy", Tensor::from<float>({n, 1, h, w}, img));
    write_npy(f + "_id.npy", Tensor::from<int64_t>({n}, ids));
    write_npy(f + "_lab.npy", Tensor::from<int64_t>({n}, lab));
    spec += (p ? "+" : "") + std::string("npy:x=") + f + ".npy,id=" + f + "_id.npy," + f + "_lab.npy";
  }
  const Dataset ds = load_dataset(spec);
  EXPECT_EQ(ds.size(), 14);
  // Groups: [1,2,3] (parts 0 and 2: 8 rows), [1,3,3] (part 1), [1,3,4] (part 3).
  ASSERT_EQ(ds.groups.size(), 2u);
  EXPECT_EQ(ds.images.shape(), (Shape{8, 1, 2, 3}));
  EXPECT_EQ(ds.groups[0].images.shape(), (Shape{4, 1, 3, 3}));
  EXPECT_EQ(ds.groups[1].images.shape(), (Shape{2, 1, 3, 4}));
  EXPECT_EQ(ds.largest_group_rows(), (std::pair<int64_t, int64_t>{0, 8}));
  const std::vector<float> order = {0, 1, 2, 3, 4, 200, 201, 202, 100, 101, 102, 103, 300, 301};  // row -> id
  // Every row: image, id input and label agree, through feeds over chunks that never cross a group.
  auto check = [&](const Dataset& s, const std::vector<float>* want_ids) {
    int64_t row = 0;
    for (const auto& chunk : s.chunks(3)) {
      const int64_t b = chunk.first, n = chunk.second;
      EXPECT_EQ(b, row);
      const auto f = s.feeds("ignored", b, n);
      const Tensor& x = f.at("x");
      const Tensor& id = f.at("id");
      ASSERT_EQ(x.dim(0), n);
      for (int64_t i = 0; i < n; ++i) {
        const float v = x.data<float>()[i * (x.numel() / n)];
        EXPECT_EQ(id.data<int64_t>()[i], static_cast<int64_t>(v)) << s.name << " row " << b + i;
        EXPECT_EQ(s.labels[static_cast<size_t>(b + i)], static_cast<int64_t>(v) % 9) << s.name << " row " << b + i;
        // Height/width identify the part the row came from.
        const int64_t p = static_cast<int64_t>(v) / 100;
        EXPECT_EQ(x.dim(2), parts[static_cast<size_t>(p)][1]);
        EXPECT_EQ(x.dim(3), parts[static_cast<size_t>(p)][2]);
        if (want_ids) {
          EXPECT_EQ(v, (*want_ids)[static_cast<size_t>(b + i)]);
        }
      }
      row += n;
    }
    EXPECT_EQ(row, s.size());
  };
  check(ds, &order);
  EXPECT_EQ(ds.chunks(3).size(), 3u + 2u + 1u);  // 8 rows in 3 + 3 + 2, 4 in 3 + 1, 2 in 2
  // A batch across a group boundary is refused, naming the dataset.
  try {
    ds.batch(6, 4);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cross"), std::string::npos) << e.what();
  }
  const Dataset mid = take(ds, 6, 4);  // two rows of group 1 and two of group 2
  EXPECT_EQ(mid.size(), 4);
  EXPECT_EQ(mid.groups.size(), 1u);
  const std::vector<float> mid_ids = {201, 202, 100, 101};
  check(mid, &mid_ids);
  const Dataset sm = sample(ds, 9, 5);
  EXPECT_EQ(sm.size(), 9);
  check(sm, nullptr);
  // Parts that keep the mix of shapes: proportional heads (5 of 14 rows: 8, 4, 2 -> 2.9, 1.4, 0.7 -> 3, 1, 1) and
  // each group halved.
  const std::vector<float> spread7 = {0, 1, 2, 3, 100, 101, 300}, spread5 = {0, 1, 2, 100, 300};
  check(take_spread(ds, 7), &spread7);
  check(take_spread(ds, 5), &spread5);
  const auto [first, second] = split_halves(ds);
  const std::vector<float> first_ids = {0, 1, 2, 3, 100, 101, 300}, second_ids = {4, 200, 201, 202, 102, 103, 301};
  check(first, &first_ids);
  check(second, &second_ids);
  // One shape: the plain first rows and halves.
  const Dataset one = take(ds, 0, 8);
  EXPECT_TRUE(one.groups.empty());
  const std::vector<float> head3 = {0, 1, 2};
  check(take_spread(one, 3), &head3);
  const auto halves = split_halves(one);
  EXPECT_EQ(halves.first.size(), 4);
  const std::vector<float> back_half = {4, 200, 201, 202};
  check(halves.second, &back_half);
  // A plain spec with a '+' in its file name is one part; mismatched parts are refused by name.
  write_npy(dir / "a+b.npy", Tensor::from<float>({2, 2}, {1, 2, 3, 4}));
  EXPECT_EQ(load_dataset("npy:" + (dir / "a+b.npy").string()).size(), 2);
  const std::string x0 = (dir / "x0").string();
  for (const auto& [bad, why] :
       {std::pair{"npy:" + x0 + ".npy+npy:x=" + x0 + ".npy,id=" + x0 + "_id.npy", "does not name the same model inputs"},
        std::pair{"npy:" + x0 + ".npy," + x0 + "_lab.npy+npy:" + x0 + ".npy", "has no labels"}}) {
    try {
      load_dataset(bad);
      FAIL() << "expected an error for " << bad;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace perch
