// The reference models in ../shared/models evaluated by perch's float executor on the full Fashion-MNIST
// test set must reproduce the fp32 accuracy in ANCHORS.md exactly (PyTorch = ONNX Runtime), i.e. the same
// number of correct images out of 10 000. Skips visibly when ../shared or the dataset is absent.
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "perch/core/progress.h"
#include "perch/data/dataset.h"
#include "perch/graph/onnx_io.h"
#include "perch/ptq/evaluate.h"
#include "test_util.h"

namespace perch::runtime {
namespace {

struct Anchor {
  const char* file;
  int64_t correct;  // ANCHORS.md fp32 accuracy x 10 000
};

class SharedModelAccuracy : public testing::TestWithParam<Anchor> {
 protected:
  static void SetUpTestSuite() {
    const std::filesystem::path dir = fashion_mnist_dir();
    if (!std::filesystem::exists(dir / "t10k-images-idx3-ubyte.gz")) return;
    data_ = std::make_unique<Dataset>(load_dataset("fashion-mnist:test"));
  }
  static void TearDownTestSuite() { data_.reset(); }
  static std::unique_ptr<Dataset> data_;
};
std::unique_ptr<Dataset> SharedModelAccuracy::data_;

TEST_P(SharedModelAccuracy, MatchesAnchor) {
  PERCH_REQUIRE_SHARED_MODEL(path, GetParam().file);
  if (!data_) GTEST_SKIP() << "Fashion-MNIST test set not found in " << fashion_mnist_dir();
  ASSERT_EQ(data_->size(), 10000);
  set_quiet(true);
  Executor ex(graph::load_model(path));
  const ptq::EvalResult r = ptq::evaluate(ex, *data_, 500);
  EXPECT_EQ(r.count, 10000);
  EXPECT_EQ(r.correct, GetParam().correct) << path << ": accuracy " << r.accuracy() << ", anchor "
                                           << GetParam().correct / 10000.0 << " (" << r.seconds << " s)";
}

INSTANTIATE_TEST_SUITE_P(Anchors, SharedModelAccuracy,
                         testing::Values(Anchor{"fmnist_convnet.onnx", 9181}, Anchor{"fmnist_convnet_hard.onnx", 9181},
                                         Anchor{"fmnist_mbv2.onnx", 8878}),
                         [](const testing::TestParamInfo<Anchor>& info) {
                           std::string s = info.param.file;
                           return s.substr(0, s.find('.'));
                         });

}  // namespace
}  // namespace perch::runtime
